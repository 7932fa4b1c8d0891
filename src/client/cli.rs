//! Store commands of the `mpaxos` binary: put, get, del, cas, status.
//!
//! Exit codes ([`EXIT_CODES`], also in `--help` and README.md): 0 ok, 1 error (unreachable,
//! refused, or a timeout with the operation definitely not applied), 2 usage, 3 CAS conflict,
//! 4 key not found, 5 `status` found a replica unreachable, 6 outcome unknown (a write reached
//! a replica but no definite answer came back: it may or may not have been applied).

use std::process::ExitCode;
use std::time::Duration;

use crate::net::wire::Outcome;

use super::{Client, ClientError, ClientOptions};

/// Shown after each store command's `--help`.
pub const EXIT_CODES: &str =
    "Exit codes: 0 ok; 1 error (unreachable, refused, or timed out with the \
operation definitely not applied); 2 usage; 3 CAS conflict; 4 key not found; 5 `status` found a \
replica unreachable; 6 outcome unknown (the write reached a replica but no definite answer came \
back: it may or may not have been applied; read the key to find out).";

/// Exit code of a write whose outcome is unknown.
pub const EXIT_UNKNOWN: u8 = 6;

#[derive(clap::Args, Clone, Debug)]
pub struct Endpoints {
    /// Comma-separated `host:port` client endpoints (any replica's first client port).
    #[arg(long, env = "MPAXOS_ENDPOINTS", value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    /// Give up on an operation after this many milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Store VALUE under KEY.
    #[command(after_help = EXIT_CODES)]
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Read KEY (linearizable unless --serializable).
    #[command(after_help = EXIT_CODES)]
    Get {
        key: String,
        /// Read the local replica's state without confirming leadership (may be stale).
        #[arg(long)]
        serializable: bool,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Delete KEY.
    #[command(after_help = EXIT_CODES)]
    Del {
        key: String,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Store VALUE under KEY only if KEY's version is EXPECTED_VERSION (0 = absent).
    #[command(after_help = EXIT_CODES)]
    Cas {
        key: String,
        expected_version: u64,
        value: String,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Quorum leases: which replicas hold read leases (`set`, through each group's log;
    /// `get`, as each replica has applied it).
    #[command(subcommand)]
    LeaseHolders(LeaseHoldersCommand),
    /// Replicas, groups, leaders and commit/applied indexes.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t)]
        format: OutputFormat,
        #[command(flatten)]
        ep: Endpoints,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum LeaseHoldersCommand {
    /// Set the lease holders (needs `read_mode = "quorum-lease"`): a log entry per group;
    /// every replica switches as it applies it. HOLDERS: comma-separated replica ids, or `all`.
    #[command(after_help = EXIT_CODES)]
    Set {
        holders: String,
        /// Only this group (default: every group).
        #[arg(long)]
        group: Option<u32>,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Show the lease holders each replica has applied, per group.
    #[command(after_help = EXIT_CODES)]
    Get {
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t)]
        format: OutputFormat,
        #[command(flatten)]
        ep: Endpoints,
    },
}

/// Parses `lease-holders set`'s HOLDERS for a cluster of `replicas`: `all`, or
/// comma-separated distinct replica ids. Returns the bit mask (`u64::MAX` for `all`).
pub fn parse_lease_holders(text: &str, replicas: u32) -> Result<u64, String> {
    let text = text.trim();
    if text == "all" {
        return Ok(crate::kv::LEASE_HOLDERS_ALL);
    }
    let mut mask = 0u64;
    for part in text.split(',').map(str::trim) {
        let id: u32 = part.parse().map_err(|_| {
            format!("lease holders: {part:?} is not a replica id (give ids like 0,2, or all)")
        })?;
        if id >= replicas {
            return Err(format!(
                "lease holders: replica {id} does not exist (this cluster has replicas 0..={})",
                replicas.saturating_sub(1)
            ));
        }
        if mask & (1 << id) != 0 {
            return Err(format!("lease holders: replica {id} is named twice"));
        }
        mask |= 1 << id;
    }
    Ok(mask)
}

/// A lease-holder mask for people: `all` or the ids.
pub fn lease_holders_text(mask: u64, replicas: u32) -> String {
    let all = if replicas >= 64 {
        u64::MAX
    } else {
        (1u64 << replicas) - 1
    };
    if mask == crate::kv::LEASE_HOLDERS_ALL || (mask != 0 && mask & all == all) {
        return "all".into();
    }
    if mask == 0 {
        return "-".into();
    }
    let ids: Vec<String> = (0..64)
        .filter(|i| mask & (1 << i) != 0)
        .map(|i: u32| i.to_string())
        .collect();
    ids.join(",")
}

fn lease_holders(cmd: &LeaseHoldersCommand) -> Result<ExitCode, Failure> {
    match cmd {
        LeaseHoldersCommand::Set { holders, group, ep } => {
            let mut client = connect(ep)?;
            let topology = client.topology().clone();
            let replicas = topology.replicas.len() as u32;
            let mask = parse_lease_holders(holders, replicas)
                .map_err(|message| Failure { code: 2, message })?;
            let groups: Vec<u32> = match group {
                Some(g) if *g >= topology.groups => {
                    return Err(Failure {
                        code: 2,
                        message: format!(
                            "group {g} does not exist (this cluster has groups 0..={})",
                            topology.groups - 1
                        ),
                    })
                }
                Some(g) => vec![*g],
                None => (0..topology.groups).collect(),
            };
            for g in groups {
                let op = crate::net::wire::Op::SetLeaseHolders {
                    group: g,
                    holders: mask,
                };
                match client.execute(op)? {
                    Outcome::LeaseHolders { holders } => println!(
                        "OK group={g} lease_holders={}",
                        lease_holders_text(holders, replicas)
                    ),
                    Outcome::Invalid { reason } => {
                        return Err(format!("group {g}: {reason}").into())
                    }
                    other => return Err(format!("group {g}: unexpected answer {other:?}").into()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        LeaseHoldersCommand::Get { format, ep } => {
            let mut client = connect(ep)?;
            let rows = client.status_all();
            let replicas = client.topology().replicas.len() as u32;
            if *format == OutputFormat::Json {
                let json: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(r, g, res)| match res {
                        Ok(s) => serde_json::json!({
                            "replica": r, "group": g, "role": s.role, "applied": s.applied,
                            "lease_holders": (0..64u32).filter(|i| s.lease_holders & (1 << i) != 0).collect::<Vec<_>>(),
                        }),
                        Err(e) => serde_json::json!({ "replica": r, "group": g, "error": e }),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&json).expect("json"));
            } else {
                println!(
                    "{:<8} {:<6} {:<10} {:>10} LEASE_HOLDERS",
                    "REPLICA", "GROUP", "ROLE", "APPLIED"
                );
                for (r, g, res) in &rows {
                    match res {
                        Ok(s) => println!(
                            "{r:<8} {g:<6} {:<10} {:>10} {}",
                            s.role,
                            s.applied,
                            lease_holders_text(s.lease_holders, replicas)
                        ),
                        Err(e) => println!("{r:<8} {g:<6} unreachable: {e}"),
                    }
                }
            }
            let down = rows.iter().filter(|r| r.2.is_err()).count();
            Ok(if down == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(5)
            })
        }
    }
}

/// A failed command: its message and exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure { code: 1, message }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: if e.maybe_applied() { EXIT_UNKNOWN } else { 1 },
            message: e.to_string(),
        }
    }
}

fn connect(ep: &Endpoints) -> Result<Client, Failure> {
    let mut opts = ClientOptions::new(ep.endpoints.clone());
    opts.op_timeout = Duration::from_millis(ep.timeout_ms);
    Ok(Client::connect(opts)?)
}

pub fn run(cmd: StoreCommand) -> ExitCode {
    match run_inner(cmd) {
        Ok(code) => code,
        Err(f) => {
            if f.code == EXIT_UNKNOWN {
                eprintln!("unknown: {}", f.message);
            } else {
                eprintln!("error: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn run_inner(cmd: StoreCommand) -> Result<ExitCode, Failure> {
    let outcome = match &cmd {
        StoreCommand::Put { key, value, ep } => connect(ep)?.put(key.as_bytes(), value.as_bytes()),
        StoreCommand::Get {
            key,
            serializable,
            ep,
        } => connect(ep)?.get(key.as_bytes(), !serializable),
        StoreCommand::Del { key, ep } => connect(ep)?.delete(key.as_bytes()),
        StoreCommand::Cas {
            key,
            expected_version,
            value,
            ep,
        } => connect(ep)?.cas(key.as_bytes(), *expected_version, value.as_bytes()),
        StoreCommand::Status { format, ep } => return status(ep, *format),
        StoreCommand::LeaseHolders(cmd) => return lease_holders(cmd),
    }?;
    match outcome {
        Outcome::Put { revision, version } => println!("OK revision={revision} version={version}"),
        Outcome::Delete { revision, existed } => {
            println!(
                "{} revision={revision}",
                if existed { "DELETED" } else { "ABSENT" }
            )
        }
        Outcome::Cas {
            ok,
            revision,
            version,
        } => {
            println!(
                "{} revision={revision} version={version}",
                if ok { "OK" } else { "CONFLICT" }
            );
            if !ok {
                return Ok(ExitCode::from(3));
            }
        }
        Outcome::Get {
            value: Some(v),
            version,
            mod_revision,
        } => {
            println!("{}", String::from_utf8_lossy(&v));
            eprintln!("version={version} mod_revision={mod_revision}");
        }
        Outcome::Get { value: None, .. } => {
            eprintln!("key not found");
            return Ok(ExitCode::from(4));
        }
        Outcome::Invalid { reason } => return Err(format!("invalid request: {reason}").into()),
        other => return Err(format!("unexpected answer {other:?}").into()),
    }
    Ok(ExitCode::SUCCESS)
}

fn status(ep: &Endpoints, format: OutputFormat) -> Result<ExitCode, Failure> {
    let mut client = connect(ep)?;
    let rows = client.status_all();
    let topology = client.topology().clone();
    if format == OutputFormat::Json {
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, g, res)| {
                let info = &topology.replicas[*r as usize];
                let endpoint = format!("{}:{}", info.host, info.client_port_base + *g as u16);
                match res {
                    Ok(s) => serde_json::json!({
                        "replica": r, "group": g, "endpoint": endpoint, "region": info.region,
                        "role": s.role, "leader": s.leader,
                        "ballot": format!("{}.{}", s.ballot.round, s.ballot.replica),
                        "commit": s.commit, "applied": s.applied,
                        "proposals_pending": s.proposals_pending, "wal_backend": s.wal_backend,
                    }),
                    Err(e) => serde_json::json!({
                        "replica": r, "group": g, "endpoint": endpoint, "region": info.region,
                        "error": e,
                    }),
                }
            })
            .collect();
        let doc = serde_json::json!({ "cluster_id": format!("{:#x}", topology.cluster_id), "groups": topology.groups, "members": json });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
    } else {
        println!(
            "cluster {:#x}, {} replicas, {} groups",
            topology.cluster_id,
            topology.replicas.len(),
            topology.groups
        );
        println!(
            "{:<8} {:<6} {:<22} {:<10} {:<7} {:<10} {:>10} {:>10} {:>8} {:<7}",
            "REPLICA",
            "GROUP",
            "ENDPOINT",
            "ROLE",
            "LEADER",
            "BALLOT",
            "COMMIT",
            "APPLIED",
            "PENDING",
            "WAL"
        );
        for (r, g, res) in &rows {
            let info = &topology.replicas[*r as usize];
            let endpoint = format!("{}:{}", info.host, info.client_port_base + *g as u16);
            match res {
                Ok(s) => println!(
                    "{:<8} {:<6} {:<22} {:<10} {:<7} {:<10} {:>10} {:>10} {:>8} {:<7}",
                    r,
                    g,
                    endpoint,
                    s.role,
                    s.leader.map_or("-".into(), |l| l.to_string()),
                    format!("{}.{}", s.ballot.round, s.ballot.replica),
                    s.commit,
                    s.applied,
                    s.proposals_pending,
                    s.wal_backend
                ),
                Err(e) => println!("{r:<8} {g:<6} {endpoint:<22} unreachable: {e}"),
            }
        }
    }
    let down = rows.iter().filter(|r| r.2.is_err()).count();
    Ok(if down == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(5)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_holder_lists_parse_with_clear_errors() {
        assert_eq!(parse_lease_holders("0,2", 3), Ok(0b101));
        assert_eq!(parse_lease_holders(" 1 ", 3), Ok(0b10));
        assert_eq!(parse_lease_holders("all", 3), Ok(u64::MAX));
        let e = parse_lease_holders("0,3", 3).unwrap_err();
        assert!(
            e.contains("replica 3 does not exist") && e.contains("0..=2"),
            "{e}"
        );
        assert!(parse_lease_holders("0,x", 3)
            .unwrap_err()
            .contains("not a replica id"));
        assert!(parse_lease_holders("", 3)
            .unwrap_err()
            .contains("not a replica id"));
        assert!(parse_lease_holders("1,1", 3).unwrap_err().contains("twice"));
        assert_eq!(lease_holders_text(0b101, 3), "0,2");
        assert_eq!(lease_holders_text(0b111, 3), "all");
        assert_eq!(lease_holders_text(u64::MAX, 3), "all");
        assert_eq!(lease_holders_text(0, 3), "-");
    }
}
