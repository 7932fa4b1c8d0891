//! Human-readable explanations of a failed search: the longest linearizable prefix found, and
//! why nothing could follow it.

use std::fmt::Write;

use super::model::{step, ICall, IRet, Interner, State};
use super::wgl::KeyOp;

/// Prefix entries shown before eliding: the last few operations are where the trouble is.
const PREFIX_SHOWN_MAX: usize = 20;
/// Candidate operations shown at the point where the search got stuck.
const CANDIDATES_SHOWN_MAX: usize = 20;
const VALUE_SHOWN_BYTES_MAX: usize = 32;

/// Describes why `ops` (one key) has no linearization, given the longest prefix the search found.
pub(super) fn explain(ops: &[KeyOp], values: &Interner, longest_prefix: &[usize]) -> String {
    let mut out = String::new();
    let completed = ops.iter().filter(|op| op.complete_ns.is_some()).count();
    let _ = writeln!(
        out,
        "{} operations ({completed} completed) have no linearization.",
        ops.len()
    );
    let state = write_prefix(&mut out, ops, values, longest_prefix);
    write_stuck_point(&mut out, ops, values, longest_prefix, state);
    out
}

/// Writes the prefix and returns the model state after it.
fn write_prefix(out: &mut String, ops: &[KeyOp], values: &Interner, prefix: &[usize]) -> State {
    let _ = writeln!(
        out,
        "Longest linearizable prefix found ({} operations):",
        prefix.len()
    );
    let elided = prefix.len().saturating_sub(PREFIX_SHOWN_MAX);
    if elided > 0 {
        let _ = writeln!(out, "  ... {elided} earlier operations elided ...");
    }
    let mut state = State::INITIAL;
    for (position, &i) in prefix.iter().enumerate() {
        state = ops[i]
            .try_apply(state)
            .expect("the search only records prefixes the model accepts");
        if position >= elided {
            let _ = writeln!(out, "  {}", describe_op(&ops[i], values));
        }
    }
    let _ = writeln!(
        out,
        "State after the prefix: {}",
        describe_state(state, values)
    );
    state
}

/// The first completion left after the prefix marks where the search got stuck: that operation
/// (or one invoked before it completed) must come next, and none can.
fn write_stuck_point(
    out: &mut String,
    ops: &[KeyOp],
    values: &Interner,
    prefix: &[usize],
    state: State,
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
        describe_op(&ops[blocking], values)
    );
    let candidates: Vec<usize> = (0..ops.len())
        .filter(|&i| !in_prefix[i] && ops[i].invoke_ns <= deadline_ns)
        .collect();
    for &i in candidates.iter().take(CANDIDATES_SHOWN_MAX) {
        let (model_ret, _) = step(state, ops[i].call);
        let verdict = match ops[i].ret {
            Some(recorded) if recorded != model_ret => {
                format!("the model would return {}", describe_ret(model_ret, values))
            }
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

pub(super) fn describe_op(op: &KeyOp, values: &Interner) -> String {
    let call = describe_call(op.call, values);
    match (op.ret, op.complete_ns) {
        (Some(ret), Some(complete_ns)) => format!(
            "#{} client {} {call} -> {} [{}..{complete_ns} ns]",
            op.history_index,
            op.client,
            describe_ret(ret, values),
            op.invoke_ns
        ),
        _ => format!(
            "#{} client {} {call} -> (never completed) [{}.. ns]",
            op.history_index, op.client, op.invoke_ns
        ),
    }
}

fn describe_call(call: ICall, values: &Interner) -> String {
    match call {
        ICall::Get => "get".to_string(),
        ICall::Put { value } => format!("put({})", describe_bytes(values.value(value))),
        ICall::Delete => "delete".to_string(),
        ICall::Cas {
            expected_version,
            value,
        } => format!(
            "cas(expected_version {expected_version}, {})",
            describe_bytes(values.value(value))
        ),
    }
}

fn describe_ret(ret: IRet, values: &Interner) -> String {
    match ret {
        IRet::Get {
            value: None,
            version,
        } => format!("absent (version {version})"),
        IRet::Get {
            value: Some(value),
            version,
        } => format!(
            "{} (version {version})",
            describe_bytes(values.value(value))
        ),
        IRet::Put { version } => format!("version {version}"),
        IRet::Delete { existed } => format!("existed {existed}"),
        IRet::Cas { ok, version } => format!("ok {ok} (version {version})"),
    }
}

fn describe_state(state: State, values: &Interner) -> String {
    match state.value {
        None => format!("absent (version {})", state.version),
        Some(value) => format!(
            "{} (version {})",
            describe_bytes(values.value(value)),
            state.version
        ),
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
