//! Human-readable explanations of a failed search: the longest linearizable prefix found, and
//! why nothing could follow it.
//!
//! Operations are described from the caller's history rather than the interned form, because
//! interning merges values nobody read (see `model::Interner`).

use std::fmt::Write;

use super::model::{step, IRet, State};
use super::wgl::KeyOp;
use super::{Call, Operation, Ret};

/// Prefix entries shown before eliding: the last few operations are where the trouble is.
const PREFIX_SHOWN_MAX: usize = 20;
/// Candidate operations shown at the point where the search got stuck.
const CANDIDATES_SHOWN_MAX: usize = 20;
const VALUE_SHOWN_BYTES_MAX: usize = 32;

/// A model state with the actual bytes of its value.
#[derive(Clone, Copy)]
struct Replayed<'h> {
    state: State,
    value: Option<&'h [u8]>,
}

/// Describes why `ops` (one key) has no linearization, given the longest prefix the search found.
pub(super) fn explain(history: &[Operation], ops: &[KeyOp], longest_prefix: &[usize]) -> String {
    let mut out = String::new();
    let completed = ops.iter().filter(|op| op.complete_ns.is_some()).count();
    let _ = writeln!(
        out,
        "{} operations ({completed} completed) have no linearization.",
        ops.len()
    );
    let after_prefix = write_prefix(&mut out, history, ops, longest_prefix);
    write_stuck_point(&mut out, history, ops, longest_prefix, after_prefix);
    out
}

/// Writes the prefix and returns the model state after it.
fn write_prefix<'h>(
    out: &mut String,
    history: &'h [Operation],
    ops: &[KeyOp],
    prefix: &[usize],
) -> Replayed<'h> {
    let _ = writeln!(
        out,
        "Longest linearizable prefix found ({} operations):",
        prefix.len()
    );
    let elided = prefix.len().saturating_sub(PREFIX_SHOWN_MAX);
    if elided > 0 {
        let _ = writeln!(out, "  ... {elided} earlier operations elided ...");
    }
    let mut replayed = Replayed {
        state: State::INITIAL,
        value: None,
    };
    for (position, &i) in prefix.iter().enumerate() {
        replayed = replay(history, &ops[i], replayed);
        if position >= elided {
            let _ = writeln!(out, "  {}", describe_op(history, &ops[i]));
        }
    }
    let _ = writeln!(
        out,
        "State after the prefix: {}",
        describe_state(replayed.state, replayed.value)
    );
    replayed
}

fn replay<'h>(history: &'h [Operation], op: &KeyOp, before: Replayed<'h>) -> Replayed<'h> {
    let state = op
        .try_apply(before.state)
        .expect("the search only records prefixes the model accepts");
    let written = match &history[op.history_index].call {
        Call::Put { value } | Call::Cas { value, .. } => Some(value.as_slice()),
        Call::Get | Call::Delete => None,
    };
    let value = match (state.value, written) {
        (None, _) => None,
        (Some(_), Some(new)) if state.version != before.state.version => Some(new),
        (Some(_), _) => before.value,
    };
    Replayed { state, value }
}

/// The first completion left after the prefix marks where the search got stuck: that operation
/// (or one invoked before it completed) must come next, and none can.
fn write_stuck_point(
    out: &mut String,
    history: &[Operation],
    ops: &[KeyOp],
    prefix: &[usize],
    after_prefix: Replayed,
) {
    let mut in_prefix = vec![false; ops.len()];
    for &i in prefix {
        in_prefix[i] = true;
    }
    let blocking = (0..ops.len())
        .filter(|&i| !in_prefix[i])
        .filter_map(|i| ops[i].complete_ns.map(|complete_ns| (complete_ns, i)))
        .min();
    let Some((deadline_ns, blocking)) = blocking else {
        // Unreachable for a failed search, but an explanation must never panic.
        return;
    };
    let _ = writeln!(
        out,
        "Could not place: {}\n  it completed at {deadline_ns} ns, so it or an operation invoked \
         by then must come next, and none of these can:",
        describe_op(history, &ops[blocking])
    );
    let candidates: Vec<usize> = (0..ops.len())
        .filter(|&i| !in_prefix[i] && ops[i].invoke_ns <= deadline_ns)
        .collect();
    for &i in candidates.iter().take(CANDIDATES_SHOWN_MAX) {
        let (model_ret, _) = step(after_prefix.state, ops[i].call);
        let verdict = match ops[i].ret {
            Some(recorded) if recorded != model_ret => format!(
                "the model would return {}",
                describe_model_ret(model_ret, after_prefix.value)
            ),
            _ => "its result fits, but no continuation after it is linearizable".to_string(),
        };
        let _ = writeln!(out, "  #{}: {verdict}", ops[i].history_index);
    }
    if candidates.len() > CANDIDATES_SHOWN_MAX {
        let _ = writeln!(
            out,
            "  ... {} more candidates elided ...",
            candidates.len() - CANDIDATES_SHOWN_MAX
        );
    }
}

fn describe_op(history: &[Operation], op: &KeyOp) -> String {
    let recorded = &history[op.history_index];
    let call = describe_call(&recorded.call);
    match &recorded.ret {
        Some(ret) => format!(
            "#{} client {} {call} -> {} [{}..{} ns]",
            op.history_index,
            recorded.client,
            describe_ret(ret),
            recorded.invoke_ns,
            recorded.complete_ns
        ),
        None => format!(
            "#{} client {} {call} -> (never completed) [{}.. ns]",
            op.history_index, recorded.client, recorded.invoke_ns
        ),
    }
}

fn describe_call(call: &Call) -> String {
    match call {
        Call::Get => "get".to_string(),
        Call::Put { value } => format!("put({})", describe_bytes(value)),
        Call::Delete => "delete".to_string(),
        Call::Cas {
            expected_version,
            value,
        } => format!(
            "cas(expected_version {expected_version}, {})",
            describe_bytes(value)
        ),
    }
}

fn describe_ret(ret: &Ret) -> String {
    match ret {
        Ret::Get {
            value: None,
            version,
        } => format!("absent (version {version})"),
        Ret::Get {
            value: Some(value),
            version,
        } => format!("{} (version {version})", describe_bytes(value)),
        Ret::Put { version } => format!("version {version}"),
        Ret::Delete { existed } => format!("existed {existed}"),
        Ret::Cas { ok, version } => format!("ok {ok} (version {version})"),
    }
}

/// The model's answer in the state after the prefix, whose value bytes are `value`.
fn describe_model_ret(ret: IRet, value: Option<&[u8]>) -> String {
    match ret {
        IRet::Get { version, .. } => describe_state(
            State {
                value: None,
                version,
            },
            value,
        ),
        IRet::Put { version } => format!("version {version}"),
        IRet::Delete { existed } => format!("existed {existed}"),
        IRet::Cas { ok, version } => format!("ok {ok} (version {version})"),
    }
}

fn describe_state(state: State, value: Option<&[u8]>) -> String {
    match value {
        None => format!("absent (version {})", state.version),
        Some(value) => format!("{} (version {})", describe_bytes(value), state.version),
    }
}

/// Printable ASCII as a quoted string, anything else as hex; long values are cut short.
pub(super) fn describe_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(VALUE_SHOWN_BYTES_MAX)];
    let mut text = if shown.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(shown))
    } else {
        let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    };
    if bytes.len() > shown.len() {
        let _ = write!(text, "...(+{} bytes)", bytes.len() - shown.len());
    }
    text
}
