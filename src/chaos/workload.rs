//! The concurrent workload: client threads issuing get, put, cas and del on a few register keys
//! plus write-once puts on unique keys, each recording what it saw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::history::{RecCall, RecRet, Record, Status, REGISTER_PREFIX, UNIQUE_PREFIX};
use crate::client::{Client, ClientError, ClientOptions};
use crate::net::wire::Outcome;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub endpoints: Vec<String>,
    pub clients: u32,
    pub keys: u32,
    /// Each client waits up to this long (uniformly) between operations.
    pub think_max: Duration,
    pub op_timeout: Duration,
    pub attempt_timeout: Duration,
    pub seed: u64,
    /// Quorum leases: client `c` sends its linearizable reads first to replica `c mod N` (its
    /// "home"), which serves them locally while it holds a lease, else redirects.
    pub read_from_home: bool,
}

pub fn client_options(endpoints: &[String], attempt: Duration, op: Duration) -> ClientOptions {
    let mut opts = ClientOptions::new(endpoints.to_vec());
    opts.attempt_timeout = attempt;
    opts.op_timeout = op;
    opts
}

/// After each operation a client thread starts over with a new client (a new client id and
/// new connections) with this probability.
const RECONNECT_P: f64 = 0.05;

pub fn register_key(i: u32) -> String {
    format!("{REGISTER_PREFIX}{i}")
}

/// Runs one operation and turns what the client said into a record.
pub fn execute(client: &mut Client, id: u64, key: &str, call: RecCall, epoch: Instant) -> Record {
    let k = key.as_bytes();
    let invoke_ns = epoch.elapsed().as_nanos() as u64;
    let result = match &call {
        RecCall::Get => client.get(k, true),
        RecCall::Put { value } => client.put(k, value.as_bytes()),
        RecCall::Del => client.delete(k),
        RecCall::Cas {
            expected_version,
            value,
        } => client.cas(k, *expected_version, value.as_bytes()),
    };
    let complete_ns = epoch.elapsed().as_nanos() as u64;
    let is_write = !matches!(call, RecCall::Get);
    let (status, ret, error) = match result {
        Ok(outcome) => match (&call, outcome) {
            (RecCall::Get, Outcome::Get { value, version, .. }) => {
                let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                (Status::Ok, Some(RecRet::Get { value, version }), None)
            }
            (RecCall::Put { .. }, Outcome::Put { version, .. }) => {
                (Status::Ok, Some(RecRet::Put { version }), None)
            }
            (RecCall::Del, Outcome::Delete { existed, .. }) => {
                (Status::Ok, Some(RecRet::Del { existed }), None)
            }
            (RecCall::Cas { .. }, Outcome::Cas { ok, version, .. }) => {
                (Status::Ok, Some(RecRet::Cas { ok, version }), None)
            }
            (_, other) => {
                // Not an answer to this call: a write's fate is unknown.
                let status = if is_write { Status::Info } else { Status::Fail };
                (status, None, Some(format!("unexpected answer {other:?}")))
            }
        },
        Err(e) => {
            let status = if !is_write {
                Status::Fail
            } else if e.maybe_applied() || matches!(e, ClientError::Protocol(_)) {
                Status::Info
            } else {
                Status::Fail
            };
            (status, None, Some(e.to_string()))
        }
    };
    Record {
        client: id,
        key: key.to_string(),
        call,
        status,
        ret,
        invoke_ns,
        complete_ns,
        error,
    }
}

/// One client thread's loop until `stop`. Records go to `sink` as they complete.
pub fn client_loop(
    id: u64,
    cfg: WorkloadConfig,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    sink: Arc<Mutex<Vec<Record>>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut client: Option<Client> = None;
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => {
                // Start from any replica, as a fleet of clients would: a new client learns the
                // leader from whichever replica answers first (an isolated old leader, say).
                let mut endpoints = cfg.endpoints.clone();
                let first = rng.gen_range(0..endpoints.len().max(1));
                endpoints.rotate_left(first);
                let mut opts = client_options(&endpoints, cfg.attempt_timeout, cfg.op_timeout);
                if cfg.read_from_home {
                    opts.read_from = Some((id % cfg.endpoints.len().max(1) as u64) as u32);
                }
                match Client::connect(opts) {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        n += 1;
        let value = format!("{id}.{n}");
        let register = register_key(rng.gen_range(0..cfg.keys.max(1)));
        let (key, call) = match rng.gen_range(0..100) {
            0..=39 => (register, RecCall::Get),
            40..=64 => (register, RecCall::Put { value }),
            65..=84 => {
                // Mostly the version this client last saw; sometimes a guess.
                let expected_version = if rng.gen_bool(0.8) {
                    versions.get(&register).copied().unwrap_or(0)
                } else {
                    rng.gen_range(0..4)
                };
                (
                    register,
                    RecCall::Cas {
                        expected_version,
                        value,
                    },
                )
            }
            85..=89 => (register, RecCall::Del),
            _ => (format!("{UNIQUE_PREFIX}{id}/{n}"), RecCall::Put { value }),
        };
        let rec = execute(c, id, &key, call, epoch);
        match &rec.ret {
            Some(RecRet::Get { version, .. })
            | Some(RecRet::Put { version })
            | Some(RecRet::Cas { version, .. }) => {
                versions.insert(key, *version);
            }
            Some(RecRet::Del { .. }) => {
                versions.insert(key, 0);
            }
            None => {}
        }
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
        if rng.gen_bool(RECONNECT_P) {
            client = None;
        }
        let think = cfg.think_max.as_micros() as u64;
        if think > 0 {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..think)));
        }
    }
}
