//! What a run's history says: the linearizability verdict, acknowledged writes lost, writes
//! reported not applied that were applied anyway, and the unavailability after every fault.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::history::{to_operations, RecCall, RecRet, Record, Status, UNIQUE_PREFIX};
use super::nemesis::Executed;
use crate::check::{self, Outcome};

/// Per status, how many operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

pub fn counts(history: &[Record]) -> Counts {
    let mut c = Counts::default();
    for r in history {
        c.ops += 1;
        match r.status {
            Status::Ok => c.ok += 1,
            Status::Fail => c.fail += 1,
            Status::Info => c.info += 1,
        }
    }
    c
}

/// The unique-key check: every acknowledged write-once put must be read back with its value
/// at the end (else it is `lost`); one the client called not applied must be absent (else it is
/// a `phantom`: the client lied about the outcome). Indeterminate ones may be either.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durability {
    pub acknowledged: u64,
    pub lost: Vec<String>,
    pub phantom: Vec<String>,
    /// Keys whose final read failed (no verdict for them).
    pub unread: Vec<String>,
}

/// `finals`: the final read of every unique key written (value None: absent; a missing entry:
/// the read failed).
pub fn durability(history: &[Record], finals: &HashMap<String, Option<String>>) -> Durability {
    let mut d = Durability::default();
    for r in history {
        if !r.key.starts_with(UNIQUE_PREFIX) {
            continue;
        }
        let RecCall::Put { value } = &r.call else {
            continue;
        };
        if r.status == Status::Ok {
            d.acknowledged += 1;
        }
        let Some(found) = finals.get(&r.key) else {
            if r.status != Status::Info {
                d.unread.push(r.key.clone());
            }
            continue;
        };
        match r.status {
            Status::Ok if found.as_deref() != Some(value) => d
                .lost
                .push(format!("{} (wrote {value:?}, read {found:?})", r.key)),
            Status::Fail if found.is_some() => d.phantom.push(format!(
                "{} (reported not applied: {}; read {found:?})",
                r.key,
                r.error.as_deref().unwrap_or("?")
            )),
            _ => {}
        }
    }
    d
}

/// The checker's verdict on the register keys (final reads included).
pub fn linearizability(history: &[Record]) -> Outcome {
    let ops: Vec<_> = to_operations(history)
        .into_iter()
        .filter(|op| !op.key.starts_with(UNIQUE_PREFIX.as_bytes()))
        .collect();
    check::check(&ops)
}

/// How long the cluster served nothing around one fault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub fault: usize,
    pub what: String,
    pub start_ms: f64,
    pub heal_ms: f64,
    /// From the heal to the first operation that completed `ok` after it (None: none did).
    pub after_heal_ms: Option<f64>,
    /// The longest stretch without an `ok` completion from the fault's start to that first
    /// operation after the heal.
    pub longest_gap_ms: f64,
}

pub fn windows(history: &[Record], executed: &[Executed]) -> Vec<Window> {
    let mut oks: Vec<u64> = history
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.complete_ns)
        .collect();
    oks.sort_unstable();
    let ms = |ns: u64| ns as f64 / 1e6;
    executed
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let first_after = oks[oks.partition_point(|&t| t < e.heal_ns)..]
                .first()
                .copied();
            let end = first_after.unwrap_or(oks.last().copied().unwrap_or(e.heal_ns));
            let mut last = e.start_ns;
            let mut gap = 0;
            for &t in &oks[oks.partition_point(|&t| t < e.start_ns)..] {
                if t > end {
                    break;
                }
                gap = gap.max(t - last);
                last = t;
            }
            gap = gap.max(end.saturating_sub(last));
            Window {
                fault: i,
                what: format!(
                    "{:?} {:?} -> replicas {:?}",
                    e.fault.kind, e.fault.target, e.replicas
                ),
                start_ms: ms(e.start_ns),
                heal_ms: ms(e.heal_ns),
                after_heal_ms: first_after.map(|t| ms(t - e.heal_ns)),
                longest_gap_ms: ms(gap),
            }
        })
        .collect()
}

/// The values `reader`'s reads of write-once keys returned (the final reads of a history).
pub fn final_values(history: &[Record], reader: u64) -> HashMap<String, Option<String>> {
    history
        .iter()
        .filter(|r| r.client == reader && r.key.starts_with(UNIQUE_PREFIX))
        .filter_map(|r| read_value(r).map(|v| (r.key.clone(), v)))
        .collect()
}

/// A read's value, for the final reads.
pub fn read_value(r: &Record) -> Option<Option<String>> {
    match (&r.status, &r.ret) {
        (Status::Ok, Some(RecRet::Get { value, .. })) => Some(value.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::nemesis::{Fault, FaultKind, Target};

    fn rec(key: &str, call: RecCall, status: Status, ret: Option<RecRet>, t: (u64, u64)) -> Record {
        Record {
            client: 1,
            key: key.into(),
            call,
            status,
            ret,
            invoke_ns: t.0,
            complete_ns: t.1,
            error: None,
        }
    }

    fn put(v: &str) -> RecCall {
        RecCall::Put { value: v.into() }
    }

    #[test]
    fn a_stale_read_is_an_anomaly_and_an_indeterminate_write_is_not() {
        let get = |v: Option<&str>, version, t| {
            rec(
                "r/0",
                RecCall::Get,
                Status::Ok,
                Some(RecRet::Get {
                    value: v.map(String::from),
                    version,
                }),
                t,
            )
        };
        let ok_put =
            |v, version, t| rec("r/0", put(v), Status::Ok, Some(RecRet::Put { version }), t);
        // a written, then b written, then a read: stale.
        let stale = vec![
            ok_put("a", 1, (0, 10)),
            ok_put("b", 2, (20, 30)),
            get(Some("a"), 1, (40, 50)),
        ];
        assert!(!linearizability(&stale).is_linearizable());
        // An indeterminate write may show up later; a failed one must not.
        let mut maybe = vec![
            rec("r/0", put("x"), Status::Info, None, (0, 10)),
            get(Some("x"), 1, (40, 50)),
        ];
        assert!(linearizability(&maybe).is_linearizable());
        maybe[0].status = Status::Fail;
        assert!(!linearizability(&maybe).is_linearizable());
    }

    #[test]
    fn lost_and_phantom_unique_writes_are_counted() {
        let history = vec![
            rec(
                "u/1/1",
                put("1.1"),
                Status::Ok,
                Some(RecRet::Put { version: 1 }),
                (0, 1),
            ),
            rec(
                "u/1/2",
                put("1.2"),
                Status::Ok,
                Some(RecRet::Put { version: 1 }),
                (2, 3),
            ),
            rec("u/1/3", put("1.3"), Status::Fail, None, (4, 5)),
            rec("u/1/4", put("1.4"), Status::Info, None, (6, 7)),
        ];
        let finals: HashMap<String, Option<String>> = [
            ("u/1/1", Some("1.1")),
            ("u/1/2", None),
            ("u/1/3", Some("1.3")),
            ("u/1/4", None),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.map(String::from)))
        .collect();
        let d = durability(&history, &finals);
        assert_eq!(d.acknowledged, 2);
        assert_eq!(d.lost.len(), 1, "{d:?}");
        assert!(d.lost[0].starts_with("u/1/2"));
        assert_eq!(d.phantom.len(), 1, "{d:?}");
        assert!(d.unread.is_empty());
    }

    #[test]
    fn unavailability_is_measured_from_the_heal() {
        let ok = |t| {
            rec(
                "r/0",
                RecCall::Get,
                Status::Ok,
                Some(RecRet::Get {
                    value: None,
                    version: 0,
                }),
                (t - 1, t),
            )
        };
        let history = vec![ok(100), ok(1_000_000), ok(250_000_000), ok(260_000_000)];
        let executed = vec![Executed {
            fault: Fault {
                at_ms: 0,
                kind: FaultKind::Kill,
                target: Target::Leader,
                heal_after_ms: 200,
                note: String::new(),
                flap_ms: 0,
                amount: 0,
            },
            replicas: vec![0],
            leader_seen: Some(0),
            start_ns: 10_000_000,
            heal_ns: 200_000_000,
            problems: vec![],
        }];
        let w = windows(&history, &executed);
        assert_eq!(w[0].after_heal_ms, Some(50.0));
        assert_eq!(w[0].longest_gap_ms, 240.0);
    }
}
