//! Placements (architecture §9): which region each replica and client group is in, and the RTT
//! between regions, for in-process WAN emulation.
//!
//! Owns: loading and checking placement files and answering "how long does a message from
//! here to there take one way". The delay queues themselves live with the senders (the group
//! loop for peers, the load generator for clients).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementFile {
    name: String,
    #[serde(default)]
    rtt_csv: Option<PathBuf>,
    regions: Vec<String>,
    replicas: Vec<String>,
    clients: Vec<String>,
    #[serde(default)]
    leader: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Placement {
    pub name: String,
    pub path: PathBuf,
    pub regions: Vec<String>,
    /// Region of replica i is `replicas[i % len]`.
    pub replicas: Vec<String>,
    pub clients: Vec<String>,
    pub leader: Option<String>,
    rtt_ms: HashMap<(String, String), f64>,
}

impl Placement {
    pub fn load(path: &Path) -> Result<Placement, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read placement file {}: {e}", path.display()))?;
        let f: PlacementFile = toml::from_str(&text).map_err(|e| {
            format!(
                "placement file {} is not valid: {}",
                path.display(),
                e.message()
            )
        })?;
        let mut rtt_ms = HashMap::new();
        if let Some(csv) = &f.rtt_csv {
            let csv_path = path.parent().unwrap_or(Path::new(".")).join(csv);
            let text = std::fs::read_to_string(&csv_path)
                .map_err(|e| format!("cannot read RTT matrix {}: {e}", csv_path.display()))?;
            let mut lines = text.lines();
            let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
            let col = |name: &str| header.iter().position(|h| h.trim() == name);
            let (Some(from), Some(to), Some(avg)) = (col("from"), col("to"), col("rtt_avg_ms"))
            else {
                return Err(format!(
                    "RTT matrix {} needs the columns from,to,rtt_avg_ms",
                    csv_path.display()
                ));
            };
            for (n, line) in lines.enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let cells: Vec<&str> = line.split(',').collect();
                let bad = || {
                    format!(
                        "RTT matrix {} line {}: malformed",
                        csv_path.display(),
                        n + 2
                    )
                };
                let rtt: f64 = cells
                    .get(avg)
                    .ok_or_else(bad)?
                    .trim()
                    .parse()
                    .map_err(|_| bad())?;
                rtt_ms.insert(
                    (
                        cells.get(from).ok_or_else(bad)?.trim().to_string(),
                        cells[to].trim().to_string(),
                    ),
                    rtt,
                );
            }
        }
        let p = Placement {
            name: f.name,
            path: path.to_path_buf(),
            regions: f.regions,
            replicas: f.replicas,
            clients: f.clients,
            leader: f.leader,
            rtt_ms,
        };
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), String> {
        if self.replicas.is_empty() || self.clients.is_empty() {
            return Err(format!(
                "placement {}: replicas and clients must name at least one region",
                self.name
            ));
        }
        let all = self
            .replicas
            .iter()
            .chain(&self.clients)
            .chain(self.leader.iter());
        for r in all {
            if !self.regions.contains(r) {
                return Err(format!(
                    "placement {}: region {r:?} is not in `regions`",
                    self.name
                ));
            }
        }
        for a in &self.regions {
            for b in &self.regions {
                if a != b && self.rtt_ms(a, b).is_none() {
                    return Err(format!(
                        "placement {}: no RTT between {a} and {b} in its matrix",
                        self.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Round-trip time between two regions in ms (0 within a region without a measured row).
    pub fn rtt_ms(&self, a: &str, b: &str) -> Option<f64> {
        if let Some(v) = self.rtt_ms.get(&(a.to_string(), b.to_string())) {
            return Some(*v);
        }
        if let Some(v) = self.rtt_ms.get(&(b.to_string(), a.to_string())) {
            return Some(*v);
        }
        (a == b).then_some(0.0)
    }

    pub fn replica_region(&self, id: usize) -> &str {
        &self.replicas[id % self.replicas.len()]
    }

    /// One-way delay, ns, to add to messages between two regions (half the RTT). Within a
    /// region nothing is added: loopback already costs what a LAN does.
    pub fn one_way_ns(&self, a: &str, b: &str) -> u64 {
        if a == b {
            return 0;
        }
        (self.rtt_ms(a, b).unwrap_or(0.0) * 1e6 / 2.0) as u64
    }

    /// Per peer of replica `id`, the one-way delay of its outgoing messages.
    pub fn replica_delays_ns(&self, id: u32, replicas: usize) -> Result<Vec<u64>, String> {
        let me = self.replica_region(id as usize).to_string();
        Ok((0..replicas)
            .map(|p| self.one_way_ns(&me, self.replica_region(p)))
            .collect())
    }

    /// The replica the leader should be pinned to, if the placement names a leader region.
    pub fn leader_replica(&self, replicas: usize) -> Option<u32> {
        let want = self.leader.as_ref()?;
        (0..replicas)
            .find(|&i| self.replica_region(i) == want)
            .map(|i| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Placement {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/placements");
        Placement::load(&dir.join(name)).unwrap()
    }

    #[test]
    fn shipped_placements_load() {
        let lan = shipped("lan.toml");
        assert_eq!(lan.one_way_ns("local", "local"), 0);
        let p3 = shipped("3-regions.toml");
        assert_eq!(p3.rtt_ms("us-east-1", "eu-west-1"), Some(70.508));
        assert_eq!(p3.one_way_ns("us-east-1", "eu-west-1"), 35_254_000);
        assert_eq!(p3.leader_replica(3), Some(0));
        let p5 = shipped("5-regions.toml");
        let d = p5.replica_delays_ns(0, 5).unwrap();
        assert_eq!(d[0], 0);
        assert!(d.iter().skip(1).all(|&x| x > 10_000_000));
    }
}
