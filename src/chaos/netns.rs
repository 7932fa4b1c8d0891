//! Network partitions between real replicas: one network namespace per replica, a veth link
//! between every pair of them, and one from each to the host namespace for the clients.
//!
//! Replica `i` owns address `10.79.S.(i+1)` (on its namespace's loopback) and reaches replica
//! `j` through a /32 route over the veth link `i`-`j`. A partition replaces that route with an
//! `unreachable` route on both sides, so packets between the two sides are refused at once
//! (ENETUNREACH / EHOSTUNREACH), never delivered; a heal puts the routes back. The clients, in
//! the host namespace, keep reaching every replica over its own link: a partition separates
//! replicas from each other, not from their clients (so an isolated old leader still hears
//! clients, which is what exposes a stale read). Needs root and iproute2 (`ip`); no iptables,
//! tc or netem. Everything is removed on drop (the namespaces, and with them every veth).

use std::process::Command;

/// One run's namespaces and links.
pub struct NetNs {
    tag: String,
    subnet: u8,
    replicas: u32,
    /// Whether every namespace was created (so drop removes them).
    up: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Whether this host can run the partition nemesis (None) or why not.
    pub fn unavailable() -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("needs root (network namespaces)".into());
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            _ => return Some("needs iproute2 (`ip`)".into()),
        }
        // Root is not always enough (a container may forbid namespaces): try it.
        match NetNs::create(2, 0x7072_6f62) {
            Ok(_) => None,
            Err(e) => Some(format!("cannot create network namespaces here: {e}")),
        }
    }

    /// Creates the namespaces and links for `replicas` replicas. `salt` keeps the names and
    /// subnet of concurrent runs apart.
    pub fn create(replicas: u32, salt: u32) -> Result<NetNs, String> {
        let salt = salt ^ std::process::id();
        let mut net = NetNs {
            tag: format!("mc{:04x}", salt & 0xffff),
            subnet: (salt % 250) as u8 + 1,
            replicas,
            up: false,
        };
        net.up = true;
        if let Err(e) = net.build() {
            drop(net);
            return Err(e);
        }
        Ok(net)
    }

    fn ns(&self, i: u32) -> String {
        format!("{}n{i}", self.tag)
    }

    /// Replica `i`'s address.
    pub fn addr(&self, i: u32) -> String {
        format!("10.79.{}.{}", self.subnet, i + 1)
    }

    /// The host namespace's end of replica `i`'s client link.
    fn host_addr(&self, i: u32) -> String {
        format!("10.79.{}.{}", self.subnet, 101 + i)
    }

    /// The link from `i` to `j` as seen in `i`'s namespace.
    fn link(&self, i: u32, j: u32) -> String {
        format!("{}p{i}{j}", self.tag)
    }

    /// The command prefix that runs a program in replica `i`'s namespace.
    pub fn launcher(&self, i: u32) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    fn build(&self) -> Result<(), String> {
        let n = self.replicas;
        for i in 0..n {
            let ns = self.ns(i);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/32", self.addr(i)),
                "dev",
                "lo",
            ])?;
            // The client link: host end in the host namespace, the other end in ns i.
            let host_end = format!("{}h{i}", self.tag);
            let ns_end = format!("{}c{i}", self.tag);
            ip(&[
                "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
            ])?;
            ip(&["link", "set", &ns_end, "netns", &ns])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["-n", &ns, "link", "set", &ns_end, "up"])?;
            ip(&[
                "addr",
                "add",
                &format!("{}/32", self.host_addr(i)),
                "dev",
                &host_end,
            ])?;
            ip(&[
                "route",
                "replace",
                &format!("{}/32", self.addr(i)),
                "dev",
                &host_end,
                "src",
                &self.host_addr(i),
            ])?;
            ip(&[
                "-n",
                &ns,
                "route",
                "replace",
                &format!("{}/32", self.host_addr(i)),
                "dev",
                &ns_end,
                "src",
                &self.addr(i),
            ])?;
        }
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = (self.link(i, j), self.link(j, i));
                ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
                ip(&["link", "set", &a, "netns", &self.ns(i)])?;
                ip(&["link", "set", &b, "netns", &self.ns(j)])?;
                ip(&["-n", &self.ns(i), "link", "set", &a, "up"])?;
                ip(&["-n", &self.ns(j), "link", "set", &b, "up"])?;
                self.connect(i, j)?;
                self.connect(j, i)?;
            }
        }
        Ok(())
    }

    /// `i` reaches `j` again.
    fn connect(&self, i: u32, j: u32) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(i),
            "route",
            "replace",
            &format!("{}/32", self.addr(j)),
            "dev",
            &self.link(i, j),
            "src",
            &self.addr(i),
        ])
    }

    /// `i` can no longer send to `j`.
    fn cut(&self, i: u32, j: u32) -> Result<(), String> {
        ip(&[
            "-n",
            &self.ns(i),
            "route",
            "replace",
            "unreachable",
            &format!("{}/32", self.addr(j)),
        ])
    }

    /// Separates `side` from the other replicas (both directions).
    pub fn partition(&self, side: &[u32]) -> Result<(), String> {
        for i in 0..self.replicas {
            for j in 0..self.replicas {
                if i != j && side.contains(&i) != side.contains(&j) {
                    self.cut(i, j)?;
                }
            }
        }
        Ok(())
    }

    /// `side` can no longer send to the other replicas; they can still send to it (their
    /// packets arrive; TCP's answers to them do not, so connections stall after a while).
    pub fn partition_one_way(&self, side: &[u32]) -> Result<(), String> {
        for &i in side {
            for j in (0..self.replicas).filter(|j| !side.contains(j)) {
                self.cut(i, j)?;
            }
        }
        Ok(())
    }

    /// Every replica reaches every other again.
    pub fn heal(&self) -> Result<(), String> {
        for i in 0..self.replicas {
            for j in 0..self.replicas {
                if i != j {
                    self.connect(i, j)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        // Deleting a namespace deletes the veth ends in it, and so their peers.
        for i in 0..self.replicas {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        for i in 0..self.replicas {
            let _ = ip(&["link", "del", &format!("{}h{i}", self.tag)]);
        }
    }
}
