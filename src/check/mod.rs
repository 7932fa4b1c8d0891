//! A Wing–Gong–Lowe linearizability checker for key-value histories, partitioned per key.
//!
//! Linearizability is compositional (Herlihy & Wing), so a history is linearizable exactly when
//! each key's sub-history is; checking keys separately turns one exponential search into many
//! small ones. Keys are checked in sorted order so the reported violation is deterministic.
//!
//! The model of one key is an etcd-like versioned register (see `model.rs`); the search is in
//! `wgl.rs`; `docs/internals/check.md` describes both.
//!
//! Conventions the caller should know:
//! - Operation A precedes B only if `A.complete_ns < B.invoke_ns`; equal timestamps count as
//!   concurrent, so a coarse clock can hide a violation but never invent one.
//! - An operation with `ret: None` may have taken effect at any instant after its invocation,
//!   or never; incomplete reads are ignored outright.
//! - Operations are named `#i` in explanations, `i` being their index in the checked slice.
//! - A malformed record (completion before invocation, a return of the wrong kind) makes its
//!   key `Unknown` rather than panicking.

mod explain;
mod model;
mod wgl;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use model::{ret_matches_call, Interner};
use wgl::{KeyOp, SearchResult};

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Get,
    Put {
        value: Value,
    },
    Delete,
    /// Compare-and-swap on the key's version; expected_version 0 means "key must be absent".
    Cas {
        expected_version: u64,
        value: Value,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// value None = absent (then version is 0).
    Get { value: Option<Value>, version: u64 },
    /// version after the put.
    Put { version: u64 },
    /// whether the key existed before the delete.
    Delete { existed: bool },
    /// ok: whether the swap happened; version: the key's version after the op (new version if
    /// ok, current version if not).
    Cas { ok: bool, version: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: u64,
    pub key: Key,
    pub call: Call,
    /// None: the operation never completed (it may or may not have taken effect).
    pub ret: Option<Ret>,
    pub invoke_ns: u64,
    /// Ignored when ret is None (treat as +infinity).
    pub complete_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Linearizable,
    NotLinearizable(Violation),
    /// The search for this key exceeded its budget, or the history is malformed (a completion
    /// before its invocation, or a return that does not answer its call); `reason` says which.
    Unknown {
        key: Key,
        reason: String,
    },
}

impl Outcome {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Outcome::Linearizable)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Linearizable => write!(f, "linearizable"),
            Outcome::NotLinearizable(violation) => write!(f, "NOT linearizable: {violation}"),
            Outcome::Unknown { key, reason } => write!(
                f,
                "unknown for key {}: {reason}",
                explain::describe_bytes(key)
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: Key,
    /// Human readable: the longest linearizable prefix found and the operations that could not
    /// follow it, with their recorded and model answers. Operations are named `#i`, their index
    /// in the checked history.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {}: {}",
            explain::describe_bytes(&self.key),
            self.explanation
        )
    }
}

/// Search steps allowed per key by [`check`] (a step is roughly one candidate considered; a few
/// microseconds in a debug build). A linearizable history costs about 1.5 steps per operation.
/// Refuting one means exhausting the search: for 2,000 simulator-like operations on one key that
/// took 1k–800k steps with unique values, but up to ~14M when every write draws from four values
/// and ~25 writes never completed. The memo gains at most one entry per step, so this also
/// bounds memory (to a few hundred MB).
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 10_000_000;

/// Checks `history` with [`DEFAULT_MAX_STEPS_PER_KEY`].
pub fn check(history: &[Operation]) -> Outcome {
    check_with_budget(history, DEFAULT_MAX_STEPS_PER_KEY)
}

/// Checks each key independently, in sorted key order. A definite violation on any key wins
/// over an Unknown on another; otherwise the first Unknown (in key order) is returned.
pub fn check_with_budget(history: &[Operation], max_steps_per_key: u64) -> Outcome {
    let mut first_unknown = None;
    for (key, indices) in partition_by_key(history) {
        match check_key(history, key, &indices, max_steps_per_key) {
            Outcome::Linearizable => {}
            violation @ Outcome::NotLinearizable(_) => return violation,
            unknown @ Outcome::Unknown { .. } => {
                first_unknown.get_or_insert(unknown);
            }
        }
    }
    first_unknown.unwrap_or(Outcome::Linearizable)
}

/// History indices per key, keys sorted so that results do not depend on hash order.
fn partition_by_key(history: &[Operation]) -> BTreeMap<&[u8], Vec<usize>> {
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(i);
    }
    by_key
}

fn check_key(history: &[Operation], key: &[u8], indices: &[usize], max_steps: u64) -> Outcome {
    check_key_counting_steps(history, key, indices, max_steps).0
}

/// Also returns the search steps taken, which tests use to catch performance regressions.
fn check_key_counting_steps(
    history: &[Operation],
    key: &[u8],
    indices: &[usize],
    max_steps: u64,
) -> (Outcome, u64) {
    if let Err(reason) = validate(history, indices) {
        let key = key.to_vec();
        return (Outcome::Unknown { key, reason }, 0);
    }
    let ops = key_ops(history, indices);
    let (result, steps) = wgl::search(&ops, max_steps);
    let outcome = match result {
        SearchResult::Linearizable => Outcome::Linearizable,
        SearchResult::NotLinearizable { longest_prefix } => Outcome::NotLinearizable(Violation {
            key: key.to_vec(),
            explanation: explain::explain(history, &ops, &longest_prefix),
        }),
        SearchResult::BudgetExceeded { longest_prefix_len } => Outcome::Unknown {
            key: key.to_vec(),
            reason: format!(
                "search budget of {max_steps} steps exceeded after linearizing at most \
                 {longest_prefix_len} of {} operations",
                ops.len()
            ),
        },
    };
    (outcome, steps)
}

/// Rejects records that no correct recorder produces; checking them would give a meaningless
/// verdict either way.
fn validate(history: &[Operation], indices: &[usize]) -> Result<(), String> {
    for &i in indices {
        let op = &history[i];
        let Some(ret) = &op.ret else { continue };
        if !ret_matches_call(&op.call, ret) {
            return Err(format!(
                "malformed history: operation #{i} (client {}) has call {:?} but return {:?}",
                op.client, op.call, ret
            ));
        }
        if op.complete_ns < op.invoke_ns {
            return Err(format!(
                "malformed history: operation #{i} (client {}) completes at {} ns, before its \
                 invocation at {} ns",
                op.client, op.complete_ns, op.invoke_ns
            ));
        }
    }
    Ok(())
}

/// The key's operations in invocation order, values interned. Incomplete reads are dropped:
/// they change nothing and nobody saw their result, so they cannot affect the verdict.
fn key_ops(history: &[Operation], indices: &[usize]) -> Vec<KeyOp> {
    let mut values = Interner::default();
    for &i in indices {
        if let Some(Ret::Get {
            value: Some(value), ..
        }) = &history[i].ret
        {
            values.add_read(value);
        }
    }
    let mut ops: Vec<KeyOp> = indices
        .iter()
        .map(|&i| (i, &history[i]))
        .filter(|(_, op)| op.ret.is_some() || op.call != Call::Get)
        .map(|(i, op)| KeyOp {
            history_index: i,
            call: values.call(&op.call),
            ret: op.ret.as_ref().map(|ret| values.ret(ret)),
            invoke_ns: op.invoke_ns,
            complete_ns: op.ret.as_ref().map(|_| op.complete_ns),
        })
        .collect();
    // Stable: ties keep history order, so the search (and its explanation) is deterministic.
    ops.sort_by_key(|op| op.invoke_ns);
    ops
}
