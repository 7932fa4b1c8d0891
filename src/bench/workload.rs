//! What the load generator asks for: the operation mix, which keys, how big the values are,
//! and when requests are due (closed loop, or open loop at a Poisson or constant rate).

use rand::Rng;
use rand_distr::{Distribution, Exp, Zipf};

/// How keys are picked from `0..keys`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum KeyDist {
    Uniform,
    /// Zipfian with exponent THETA (0.99 is YCSB's default skew).
    Zipf(f64),
    /// A fraction P of operations go to one hot key (key 0), the rest uniformly: a knob for
    /// contention.
    Hot(f64),
}

impl std::str::FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let num = |v: &str, what: &str| -> Result<f64, String> {
            v.parse::<f64>()
                .map_err(|_| format!("{what} needs a number, got {v:?}"))
        };
        match s.split_once(':') {
            None if s == "uniform" => Ok(KeyDist::Uniform),
            Some(("zipf", t)) => {
                let t = num(t, "zipf:THETA")?;
                if t <= 0.0 {
                    return Err("zipf THETA must be positive".into());
                }
                Ok(KeyDist::Zipf(t))
            }
            Some(("hot", p)) => {
                let p = num(p, "hot:P")?;
                if !(0.0..=1.0).contains(&p) {
                    return Err("hot:P needs P between 0 and 1".into());
                }
                Ok(KeyDist::Hot(p))
            }
            _ => Err(format!(
                "unknown key distribution {s:?}; use uniform, zipf:THETA or hot:P"
            )),
        }
    }
}

impl std::fmt::Display for KeyDist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyDist::Uniform => write!(f, "uniform"),
            KeyDist::Zipf(t) => write!(f, "zipf:{t}"),
            KeyDist::Hot(p) => write!(f, "hot:{p}"),
        }
    }
}

pub struct KeyPicker {
    keys: u64,
    dist: KeyDist,
    zipf: Option<Zipf<f64>>,
}

impl KeyPicker {
    pub fn new(keys: u64, dist: KeyDist) -> Result<KeyPicker, String> {
        if keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        let zipf = match dist {
            KeyDist::Zipf(t) => {
                Some(Zipf::new(keys, t).map_err(|e| format!("bad zipf parameters: {e}"))?)
            }
            _ => None,
        };
        Ok(KeyPicker { keys, dist, zipf })
    }

    pub fn pick(&self, rng: &mut impl Rng) -> u64 {
        match &self.dist {
            KeyDist::Uniform => rng.gen_range(0..self.keys),
            // Zipf yields 1..=keys with 1 the most popular.
            KeyDist::Zipf(_) => self.zipf.as_ref().expect("zipf").sample(rng) as u64 - 1,
            KeyDist::Hot(p) => {
                if rng.gen_bool(*p) {
                    0
                } else {
                    rng.gen_range(0..self.keys)
                }
            }
        }
    }
}

/// Formats key number `k` as the bytes sent: `k` then the number zero-padded, `size` bytes in
/// all, so every key has the same size (wider only if the number does not fit).
pub fn key_bytes(k: u64, size: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    let digits = size.saturating_sub(1).max(1);
    let _ = write!(out, "k{k:0digits$}");
}

/// The smallest key size (see [`key_bytes`]) that holds `keys` distinct keys.
pub fn min_key_size(keys: u64) -> usize {
    1 + keys.saturating_sub(1).max(1).to_string().len()
}

/// Request arrivals of an open-loop run.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub enum Arrival {
    Poisson,
    Constant,
}

impl std::str::FromStr for Arrival {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "poisson" => Ok(Arrival::Poisson),
            "constant" => Ok(Arrival::Constant),
            _ => Err(format!(
                "unknown arrival process {s:?}; use poisson or constant"
            )),
        }
    }
}

/// Gaps between open-loop arrivals, in nanoseconds.
pub struct Arrivals {
    kind: Arrival,
    mean_ns: f64,
    exp: Exp<f64>,
}

impl Arrivals {
    pub fn new(kind: Arrival, rate_per_s: f64) -> Result<Arrivals, String> {
        if rate_per_s <= 0.0 || !rate_per_s.is_finite() {
            return Err("--rate must be positive".into());
        }
        let mean_ns = 1e9 / rate_per_s;
        Ok(Arrivals {
            kind,
            mean_ns,
            exp: Exp::new(1.0 / mean_ns).map_err(|e| e.to_string())?,
        })
    }

    pub fn next_gap_ns(&self, rng: &mut impl Rng) -> f64 {
        match self.kind {
            Arrival::Constant => self.mean_ns,
            Arrival::Poisson => self.exp.sample(rng),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn keys_have_the_asked_size() {
        let mut out = Vec::new();
        key_bytes(42, 8, &mut out);
        assert_eq!(out, b"k0000042");
        key_bytes(99_999, 8, &mut out);
        assert_eq!(out.len(), 8);
        assert_eq!(min_key_size(100_000), 6);
        assert_eq!(min_key_size(1), 2);
    }

    #[test]
    fn parses_distributions() {
        assert_eq!("uniform".parse::<KeyDist>().unwrap(), KeyDist::Uniform);
        assert_eq!("zipf:0.99".parse::<KeyDist>().unwrap(), KeyDist::Zipf(0.99));
        assert_eq!("hot:0.5".parse::<KeyDist>().unwrap(), KeyDist::Hot(0.5));
        assert!("hot:2".parse::<KeyDist>().is_err());
        assert!("bogus".parse::<KeyDist>().is_err());
    }

    #[test]
    fn hot_and_zipf_skew_as_configured() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let hot = KeyPicker::new(1000, KeyDist::Hot(0.5)).unwrap();
        let n = 20_000;
        let zeros = (0..n).filter(|_| hot.pick(&mut rng) == 0).count() as f64 / n as f64;
        assert!((zeros - 0.5005).abs() < 0.02, "hot key share {zeros}");
        let zipf = KeyPicker::new(1000, KeyDist::Zipf(0.99)).unwrap();
        let mut counts = vec![0u32; 1000];
        for _ in 0..n {
            counts[zipf.pick(&mut rng) as usize] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[500]);
    }

    #[test]
    fn poisson_gaps_have_the_configured_mean() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let a = Arrivals::new(Arrival::Poisson, 1000.0).unwrap();
        let n = 50_000;
        let mean = (0..n).map(|_| a.next_gap_ns(&mut rng)).sum::<f64>() / n as f64;
        assert!((mean / 1e6 - 1.0).abs() < 0.02, "mean gap {mean} ns");
        let c = Arrivals::new(Arrival::Constant, 1000.0).unwrap();
        assert_eq!(c.next_gap_ns(&mut rng), 1e6);
    }
}
