//! The workload's history: one record per operation, with what the client saw.
//!
//! An operation is `ok` (a definite answer), `fail` (the client knows it was **not** applied:
//! it never reached a replica that could apply it, or it was a read) or `info` (indeterminate:
//! a write that reached a replica and got no definite answer; it may have been applied, now or
//! later). Only `info` writes go to the checker without a return; `fail` operations are left
//! out of it, which also tests the client's claim that they were not applied.

use serde::{Deserialize, Serialize};

use crate::check::{Call, Operation, Ret};

/// Registers the checker sees are under this prefix; `UNIQUE_PREFIX` keys are written once.
pub const REGISTER_PREFIX: &str = "r/";
pub const UNIQUE_PREFIX: &str = "u/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    Info,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "f")]
pub enum RecCall {
    Get,
    Put {
        value: String,
    },
    Del,
    Cas {
        expected_version: u64,
        value: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "f")]
pub enum RecRet {
    Get { value: Option<String>, version: u64 },
    Put { version: u64 },
    Del { existed: bool },
    Cas { ok: bool, version: u64 },
}

/// One operation as recorded (a line of `history.jsonl`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub client: u64,
    pub key: String,
    pub call: RecCall,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<RecRet>,
    /// Nanoseconds since the workload started.
    pub invoke_ns: u64,
    pub complete_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Record {
    pub fn is_write(&self) -> bool {
        !matches!(self.call, RecCall::Get)
    }

    /// The written value, if this is a write that carries one.
    pub fn value(&self) -> Option<&str> {
        match &self.call {
            RecCall::Put { value } | RecCall::Cas { value, .. } => Some(value),
            _ => None,
        }
    }
}

fn call_of(c: &RecCall) -> Call {
    match c {
        RecCall::Get => Call::Get,
        RecCall::Put { value } => Call::Put {
            value: value.as_bytes().to_vec(),
        },
        RecCall::Del => Call::Delete,
        RecCall::Cas {
            expected_version,
            value,
        } => Call::Cas {
            expected_version: *expected_version,
            value: value.as_bytes().to_vec(),
        },
    }
}

fn ret_of(r: &RecRet) -> Ret {
    match r {
        RecRet::Get { value, version } => Ret::Get {
            value: value.as_ref().map(|v| v.as_bytes().to_vec()),
            version: *version,
        },
        RecRet::Put { version } => Ret::Put { version: *version },
        RecRet::Del { existed } => Ret::Delete { existed: *existed },
        RecRet::Cas { ok, version } => Ret::Cas {
            ok: *ok,
            version: *version,
        },
    }
}

/// The checker's view of the history: `ok` operations with their returns, `info` writes
/// without one (they may take effect at any time after their invocation, or never); `fail`
/// operations and `info` reads are left out (neither changed anything nobody saw).
pub fn to_operations(history: &[Record]) -> Vec<Operation> {
    history
        .iter()
        .filter_map(|r| {
            let ret = match (r.status, &r.ret) {
                (Status::Ok, Some(ret)) => Some(ret_of(ret)),
                (Status::Info, _) if r.is_write() => None,
                _ => return None,
            };
            Some(Operation {
                client: r.client,
                key: r.key.as_bytes().to_vec(),
                call: call_of(&r.call),
                ret,
                invoke_ns: r.invoke_ns,
                complete_ns: r.complete_ns,
            })
        })
        .collect()
}
