//! mpaxos: a thread-per-core Multi-Paxos replicated log and key-value store.
//!
//! Module map (see `docs/` and architecture §1):
//! - [`protocol`]: the sans-IO Multi-Paxos state machine (no clocks, sockets, files or threads).
//! - [`kv`]: the replicated state machine applied to committed batches.
//! - [`check`]: a Wing–Gong–Lowe linearizability checker, partitioned per key.
//! - [`sim`]: the deterministic fault-injecting simulator around `protocol` + `kv`.
pub mod bench;
pub mod chaos;
pub mod check;
pub mod client;
pub mod fault;
pub mod kv;
pub mod net;
pub mod protocol;
pub mod runtime;
pub mod server;
pub mod sim;
pub mod wal;
