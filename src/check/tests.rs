//! Table tests for the checker, plus randomized tests against the model and against a brute-force
//! reference checker.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

// ---------------------------------------------------------------------------------------------
// History builders: `client, key, ..., invoke_ns, complete_ns`.

fn op(client: u64, key: &str, call: Call, ret: Ret, invoke_ns: u64, complete_ns: u64) -> Operation {
    Operation {
        client,
        key: key.as_bytes().to_vec(),
        call,
        ret: Some(ret),
        invoke_ns,
        complete_ns,
    }
}

fn put(client: u64, key: &str, value: &str, version: u64, t0: u64, t1: u64) -> Operation {
    let call = Call::Put {
        value: value.into(),
    };
    op(client, key, call, Ret::Put { version }, t0, t1)
}

fn get(client: u64, key: &str, value: Option<&str>, version: u64, t0: u64, t1: u64) -> Operation {
    let ret = Ret::Get {
        value: value.map(Into::into),
        version,
    };
    op(client, key, Call::Get, ret, t0, t1)
}

fn delete(client: u64, key: &str, existed: bool, t0: u64, t1: u64) -> Operation {
    op(client, key, Call::Delete, Ret::Delete { existed }, t0, t1)
}

#[allow(clippy::too_many_arguments)]
fn cas(
    client: u64,
    key: &str,
    expected_version: u64,
    value: &str,
    ok: bool,
    version: u64,
    t0: u64,
    t1: u64,
) -> Operation {
    let call = Call::Cas {
        expected_version,
        value: value.into(),
    };
    op(client, key, call, Ret::Cas { ok, version }, t0, t1)
}

/// The same operation, but it never completed.
fn pending(mut op: Operation) -> Operation {
    op.ret = None;
    op.complete_ns = 0; // Must be ignored.
    op
}

fn assert_linearizable(history: &[Operation]) {
    let outcome = check(history);
    assert!(
        outcome.is_linearizable(),
        "{outcome}\nhistory: {history:#?}"
    );
}

fn assert_violation(history: &[Operation], key: &str) -> Violation {
    match check(history) {
        Outcome::NotLinearizable(violation) => {
            assert_eq!(violation.key, key.as_bytes(), "{violation}");
            violation
        }
        other => panic!("expected a violation on key {key:?}, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Linearizable histories.

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        get(1, "x", None, 0, 0, 1),
        put(1, "x", "a", 1, 2, 3),
        get(2, "x", Some("a"), 1, 4, 5),
        cas(3, "x", 1, "b", true, 2, 6, 7),
        cas(1, "x", 1, "c", false, 2, 8, 9),
        get(2, "x", Some("b"), 2, 10, 11),
        put(3, "x", "d", 3, 12, 13),
    ]);
}

#[test]
fn overlapping_put_and_get_are_linearizable_either_way() {
    let write = put(1, "x", "a", 1, 0, 10);
    assert_linearizable(&[write.clone(), get(2, "x", None, 0, 2, 8)]);
    assert_linearizable(&[write, get(2, "x", Some("a"), 1, 2, 8)]);
}

#[test]
fn equal_timestamps_count_as_concurrent() {
    // The get is invoked at the instant the put completes; the clock cannot order them.
    assert_linearizable(&[put(1, "x", "a", 1, 0, 10), get(2, "x", None, 0, 10, 20)]);
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    assert_linearizable(&[
        put(1, "x", "a", 2, 0, 10),
        put(2, "x", "b", 1, 0, 10),
        get(3, "x", Some("a"), 2, 11, 12),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Classic anomalies.

#[test]
fn stale_read_of_absent_key_after_completed_put() {
    assert_violation(
        &[put(1, "x", "a", 1, 0, 10), get(2, "x", None, 0, 20, 30)],
        "x",
    );
}

#[test]
fn stale_read_of_older_value() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 10),
            put(1, "x", "b", 2, 20, 30),
            get(2, "x", Some("a"), 1, 40, 50),
        ],
        "x",
    );
}

#[test]
fn lost_update_two_cas_with_same_expected_version_both_succeed() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 5),
            cas(2, "x", 1, "b", true, 2, 10, 20),
            cas(3, "x", 1, "c", true, 2, 10, 20),
        ],
        "x",
    );
}

#[test]
fn lost_update_two_cas_on_absent_key_both_succeed() {
    assert_violation(
        &[
            cas(2, "x", 0, "b", true, 1, 10, 20),
            cas(3, "x", 0, "c", true, 1, 12, 22),
        ],
        "x",
    );
}

#[test]
fn two_puts_returning_the_same_version() {
    assert_violation(
        &[put(1, "x", "a", 1, 0, 10), put(2, "x", "b", 1, 5, 15)],
        "x",
    );
}

#[test]
fn read_of_a_value_never_written() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 10),
            get(2, "x", Some("zzz"), 1, 5, 15),
        ],
        "x",
    );
}

#[test]
fn read_of_right_value_with_wrong_version() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 10),
            get(2, "x", Some("a"), 7, 20, 30),
        ],
        "x",
    );
}

// ---------------------------------------------------------------------------------------------
// Incomplete operations.

#[test]
fn incomplete_put_whose_value_is_later_read() {
    assert_linearizable(&[
        put(1, "x", "a", 1, 0, 10),
        pending(put(2, "x", "b", 2, 20, 0)),
        get(3, "x", Some("b"), 2, 100, 110),
        get(3, "x", Some("b"), 2, 120, 130),
    ]);
}

#[test]
fn incomplete_put_that_never_took_effect() {
    assert_linearizable(&[
        put(1, "x", "a", 1, 0, 10),
        pending(put(2, "x", "b", 2, 20, 0)),
        get(3, "x", Some("a"), 1, 100, 110),
        put(3, "x", "c", 2, 120, 130),
    ]);
}

#[test]
fn incomplete_put_read_then_unread_is_a_flip_flop() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 10),
            pending(put(2, "x", "b", 2, 20, 0)),
            get(3, "x", Some("b"), 2, 100, 110),
            get(3, "x", Some("a"), 1, 120, 130),
        ],
        "x",
    );
}

#[test]
fn incomplete_put_cannot_be_read_before_it_was_invoked() {
    assert_violation(
        &[
            get(3, "x", Some("b"), 1, 0, 10),
            pending(put(2, "x", "b", 1, 20, 0)),
        ],
        "x",
    );
}

#[test]
fn incomplete_cas_may_succeed_later() {
    assert_linearizable(&[
        put(1, "x", "a", 1, 0, 10),
        pending(cas(2, "x", 1, "b", true, 2, 20, 0)),
        put(1, "x", "c", 2, 30, 40),
        // The CAS expected version 1, so once "c" is at version 2 it can only fail.
        get(3, "x", Some("c"), 2, 50, 60),
    ]);
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 10),
            pending(cas(2, "x", 1, "b", true, 2, 20, 0)),
            put(1, "x", "c", 2, 30, 40),
            get(3, "x", Some("b"), 3, 50, 60),
        ],
        "x",
    );
}

#[test]
fn incomplete_get_is_ignored() {
    assert_linearizable(&[
        pending(get(1, "x", Some("never"), 9, 0, 0)),
        put(2, "x", "a", 1, 5, 10),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Delete semantics.

#[test]
fn delete_reports_existence_and_resets_the_version() {
    assert_linearizable(&[
        delete(1, "x", false, 0, 1),
        put(1, "x", "a", 1, 2, 3),
        put(1, "x", "b", 2, 4, 5),
        delete(2, "x", true, 6, 7),
        get(3, "x", None, 0, 8, 9),
        cas(3, "x", 0, "c", true, 1, 10, 11),
        delete(2, "x", true, 12, 13),
        put(1, "x", "d", 1, 14, 15),
    ]);
}

#[test]
fn put_after_delete_cannot_continue_the_old_version() {
    assert_violation(
        &[
            put(1, "x", "a", 1, 0, 1),
            delete(2, "x", true, 2, 3),
            put(1, "x", "b", 2, 4, 5),
        ],
        "x",
    );
}

#[test]
fn delete_of_absent_key_cannot_report_existed() {
    assert_violation(&[delete(1, "x", true, 0, 1)], "x");
}

// ---------------------------------------------------------------------------------------------
// Partitioning, budget, malformed input, explanations.

#[test]
fn violation_is_reported_on_its_own_key() {
    let violation = assert_violation(
        &[
            put(1, "a", "1", 1, 0, 10),
            put(2, "b", "1", 1, 0, 10),
            get(1, "a", Some("1"), 1, 20, 30),
            get(2, "b", None, 0, 20, 30),
            put(3, "c", "1", 1, 0, 10),
        ],
        "b",
    );
    assert!(
        violation.to_string().starts_with("key \"b\": "),
        "{violation}"
    );
}

#[test]
fn first_violating_key_in_sorted_order_is_reported() {
    let history = [
        get(1, "zeta", Some("x"), 1, 0, 1),
        get(1, "alpha", Some("x"), 1, 0, 1),
    ];
    assert_violation(&history, "alpha");
}

#[test]
fn a_violation_wins_over_an_exhausted_budget() {
    let mut history = many_concurrent_writes_then_impossible_read("a", 8);
    history.push(get(1, "b", Some("x"), 1, 0, 1));
    match check_with_budget(&history, 100) {
        Outcome::NotLinearizable(v) => assert_eq!(v.key, b"b"),
        other => panic!("expected a violation on b, got {other}"),
    }
}

/// Concurrent puts (each returning version 1) and deletes (each finding the key present) can
/// pair up in any order, so the search must visit every balanced pair of subsets before it can
/// conclude that the final read is impossible. Reads would not do: they commute, and the search
/// exploits that.
fn many_concurrent_writes_then_impossible_read(key: &str, pairs: u64) -> Vec<Operation> {
    let mut history = Vec::new();
    for c in 0..pairs {
        history.push(put(c, key, "v", 1, 0, 100));
        history.push(delete(pairs + c, key, true, 0, 100));
    }
    history.push(get(2 * pairs, key, Some("never written"), 1, 200, 210));
    history
}

#[test]
fn exhausted_budget_is_unknown_not_a_verdict() {
    let history = many_concurrent_writes_then_impossible_read("k", 8);
    match check_with_budget(&history, 1_000) {
        Outcome::Unknown { key, reason } => {
            assert_eq!(key, b"k");
            assert!(reason.contains("budget"), "{reason}");
        }
        other => panic!("expected Unknown, got {other}"),
    }
    // With enough budget the same search concludes.
    assert_violation(&history, "k");
}

#[test]
fn malformed_histories_are_unknown() {
    let backwards = [put(1, "x", "a", 1, 10, 5)];
    let mismatched = [op(1, "x", Call::Get, Ret::Put { version: 1 }, 0, 1)];
    for history in [&backwards[..], &mismatched[..]] {
        match check(history) {
            Outcome::Unknown { key, reason } => {
                assert_eq!(key, b"x");
                assert!(reason.contains("malformed"), "{reason}");
            }
            other => panic!("expected Unknown, got {other}"),
        }
    }
}

#[test]
fn explanation_names_the_prefix_and_the_stuck_operation() {
    let history = [
        put(1, "x", "a", 1, 0, 10),
        put(1, "x", "b", 2, 20, 30),
        get(2, "x", Some("a"), 1, 40, 50),
    ];
    let violation = assert_violation(&history, "x");
    let text = &violation.explanation;
    assert!(
        text.contains("Longest linearizable prefix found (2 operations)"),
        "{text}"
    );
    assert!(
        text.contains("State after the prefix: \"b\" (version 2)"),
        "{text}"
    );
    assert!(text.contains("Could not place: #2 client 2 get"), "{text}");
    assert!(
        text.contains("#2: the model would return \"b\" (version 2)"),
        "{text}"
    );
    // Deterministic: the same history gives the same words.
    assert_eq!(check(&history), Outcome::NotLinearizable(violation));
}

// ---------------------------------------------------------------------------------------------
// Randomized tests.

/// An independent, deliberately naive model on the public types, for the reference checkers.
fn reference_step(state: &(Option<Value>, u64), call: &Call) -> (Ret, (Option<Value>, u64)) {
    let (value, version) = state.clone();
    match call {
        Call::Get => (Ret::Get { value, version }, state.clone()),
        Call::Put { value } => (
            Ret::Put {
                version: version + 1,
            },
            (Some(value.clone()), version + 1),
        ),
        Call::Delete => (
            Ret::Delete {
                existed: value.is_some(),
            },
            (None, 0),
        ),
        Call::Cas {
            expected_version,
            value: new,
        } if *expected_version == version => (
            Ret::Cas {
                ok: true,
                version: version + 1,
            },
            (Some(new.clone()), version + 1),
        ),
        Call::Cas { .. } => (Ret::Cas { ok: false, version }, state.clone()),
    }
}

fn random_call(rng: &mut ChaCha8Rng, values: &[&str], max_expected_version: u64) -> Call {
    let value = values[rng.gen_range(0..values.len())].as_bytes().to_vec();
    match rng.gen_range(0..10) {
        0..=3 => Call::Get,
        4..=6 => Call::Put { value },
        7 => Call::Delete,
        _ => Call::Cas {
            expected_version: rng.gen_range(0..=max_expected_version),
            value,
        },
    }
}

/// A history that is linearizable by construction: operation i takes effect at instant 100*i,
/// and its interval is stretched around that instant by up to `stretch_ns` each way. One
/// operation in `incomplete_one_in` never completes (it still took effect).
fn random_linearizable_history(
    rng: &mut ChaCha8Rng,
    keys: &[&str],
    ops: usize,
    stretch_ns: u64,
    incomplete_one_in: u32,
) -> Vec<Operation> {
    let mut states: BTreeMap<&str, (Option<Value>, u64)> = BTreeMap::new();
    let mut history = Vec::with_capacity(ops);
    for i in 0..ops {
        let key = keys[rng.gen_range(0..keys.len())];
        let state = states.entry(key).or_insert((None, 0));
        let call = random_call(rng, &["a", "b", "c"], state.1 + 1);
        let (ret, next) = reference_step(state, &call);
        *state = next;
        let effect_ns = 1_000_000 + 100 * i as u64;
        let complete = rng.gen_range(0..incomplete_one_in) != 0;
        history.push(Operation {
            client: rng.gen_range(0..8),
            key: key.as_bytes().to_vec(),
            call,
            ret: complete.then_some(ret),
            invoke_ns: effect_ns - rng.gen_range(0..=stretch_ns),
            complete_ns: effect_ns + rng.gen_range(0..=stretch_ns),
        });
    }
    history
}

/// Makes one completed operation report a version its key can never reach (versions grow by at
/// most one per write), so the history is certainly not linearizable. Returns the key touched,
/// or None when no operation qualifies.
fn make_one_version_impossible(rng: &mut ChaCha8Rng, history: &mut [Operation]) -> Option<Key> {
    let candidates: Vec<usize> = (0..history.len())
        .filter(|&i| matches!(history[i].ret, Some(ref r) if !matches!(r, Ret::Delete { .. })))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let victim = candidates[rng.gen_range(0..candidates.len())];
    let key = history[victim].key.clone();
    let writes = history
        .iter()
        .filter(|op| op.key == key && matches!(op.call, Call::Put { .. } | Call::Cas { .. }))
        .count() as u64;
    let impossible = writes + 1;
    match history[victim].ret.as_mut().expect("filtered to completed") {
        Ret::Get { value, version } => {
            *value = Some(b"a".to_vec());
            *version = impossible;
        }
        Ret::Put { version } | Ret::Cas { version, .. } => *version = impossible,
        Ret::Delete { .. } => unreachable!("filtered out"),
    }
    Some(key)
}

#[test]
fn random_stretched_sequential_histories_are_linearizable() {
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stretch_ns = [0, 50, 150, 400][seed as usize % 4];
        let history =
            random_linearizable_history(&mut rng, &["k1", "k2", "k3"], 150, stretch_ns, 20);
        let outcome = check(&history);
        assert!(outcome.is_linearizable(), "seed {seed}: {outcome}");
    }
}

#[test]
fn random_histories_with_an_impossible_version_are_not_linearizable() {
    for seed in 0..200 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let stretch_ns = [0, 50, 150, 400][seed as usize % 4];
        let mut history = random_linearizable_history(&mut rng, &["k1", "k2"], 100, stretch_ns, 20);
        let Some(key) = make_one_version_impossible(&mut rng, &mut history) else {
            continue;
        };
        match check(&history) {
            Outcome::NotLinearizable(v) => assert_eq!(v.key, key, "seed {seed}"),
            other => panic!("seed {seed}: expected a violation, got {other}"),
        }
    }
}

/// Linearizability by its definition: try every order that respects real time, with incomplete
/// operations free to be left out. Exponential, so only for tiny histories.
fn brute_force_linearizable(history: &[Operation]) -> bool {
    fn extend(history: &[Operation], used: &mut [bool], state: &(Option<Value>, u64)) -> bool {
        let all_completed_used = (0..history.len()).all(|i| used[i] || history[i].ret.is_none());
        if all_completed_used {
            return true;
        }
        for i in 0..history.len() {
            let must_wait = (0..history.len()).any(|j| {
                !used[j]
                    && j != i
                    && history[j].ret.is_some()
                    && history[j].complete_ns < history[i].invoke_ns
            });
            if used[i] || must_wait {
                continue;
            }
            let (ret, next) = reference_step(state, &history[i].call);
            if history[i].ret.as_ref().is_some_and(|r| *r != ret) {
                continue;
            }
            used[i] = true;
            if extend(history, used, &next) {
                return true;
            }
            used[i] = false;
        }
        false
    }
    extend(history, &mut vec![false; history.len()], &(None, 0))
}

/// A small single-key history whose results are partly made up, so both verdicts occur. Many
/// operations are incomplete, so that identical pending calls (which the search treats
/// specially) are common.
fn random_small_history(rng: &mut ChaCha8Rng) -> Vec<Operation> {
    let ops = rng.gen_range(1..=8);
    let mut history = random_linearizable_history(rng, &["k"], ops, 150, 4);
    for op in history.iter_mut() {
        if rng.gen_range(0..4) != 0 {
            continue;
        }
        let version = rng.gen_range(0..4);
        op.ret = match op.call {
            Call::Get => Some(Ret::Get {
                value: [None, Some(b"a".to_vec()), Some(b"b".to_vec())][rng.gen_range(0..3)]
                    .clone(),
                version,
            }),
            Call::Put { .. } => Some(Ret::Put { version }),
            Call::Delete => Some(Ret::Delete { existed: rng.gen() }),
            Call::Cas { .. } => Some(Ret::Cas {
                ok: rng.gen(),
                version,
            }),
        };
    }
    history
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut verdicts = [0usize; 2];
    for seed in 0..4_000 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let history = random_small_history(&mut rng);
        let expected = brute_force_linearizable(&history);
        let outcome = check(&history);
        assert_eq!(
            outcome.is_linearizable(),
            expected,
            "seed {seed}: checker says {outcome}\nhistory: {history:#?}"
        );
        verdicts[usize::from(expected)] += 1;
    }
    // Both verdicts must be well represented, or the comparison proves little.
    assert!(verdicts.iter().all(|&n| n > 500), "{verdicts:?}");
}

/// The size the checker is built for: a couple of thousand operations on one key from ten
/// clients, one operation at a time each, with retries stretching some intervals and one
/// operation in fifty never completing. Written values are unique unless `value_pool` is given.
fn simulator_like_history(
    rng: &mut ChaCha8Rng,
    ops: usize,
    value_pool: Option<&[&str]>,
) -> Vec<Operation> {
    const CLIENTS: u64 = 10;
    let mut state: (Option<Value>, u64) = (None, 0);
    let mut client_free_ns = [0u64; CLIENTS as usize];
    let mut history = Vec::with_capacity(ops);
    for i in 0..ops {
        let effect_ns = 1_000 + 100 * i as u64;
        // Each client's operations must not overlap each other.
        let Some(client) = (0..CLIENTS).find(|&c| client_free_ns[c as usize] < effect_ns) else {
            continue;
        };
        let unique = format!("v{i}");
        let call = random_call(rng, value_pool.unwrap_or(&[&unique]), state.1 + 1);
        let (ret, next) = reference_step(&state, &call);
        state = next;
        let retried = rng.gen_range(0..10) == 0;
        let stretch_ns = if retried { 2_000 } else { 300 };
        let invoke_ns =
            (effect_ns - rng.gen_range(0..100)).max(client_free_ns[client as usize] + 1);
        let complete_ns = effect_ns + rng.gen_range(0..=stretch_ns);
        client_free_ns[client as usize] = complete_ns;
        history.push(Operation {
            client,
            key: b"hot".to_vec(),
            call,
            ret: (rng.gen_range(0..50) != 0).then_some(ret),
            invoke_ns,
            complete_ns,
        });
    }
    history
}

/// Checks a single-key history, returning the search steps taken too.
fn steps_for(history: &[Operation], max_steps: u64) -> (Outcome, u64) {
    let indices: Vec<usize> = (0..history.len()).collect();
    assert!(history.iter().all(|op| op.key == history[0].key));
    check_key_counting_steps(history, &history[0].key, &indices, max_steps)
}

#[test]
fn simulator_sized_histories_are_checked_quickly() {
    for value_pool in [None, Some(&["a", "b", "c", "d"][..])] {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut history = simulator_like_history(&mut rng, 2_000, value_pool);
        assert!(history.len() > 1_900);
        let (outcome, steps) = steps_for(&history, DEFAULT_MAX_STEPS_PER_KEY);
        assert!(outcome.is_linearizable(), "{outcome}");
        // A linearizable history should cost little more than one step per operation.
        assert!(steps < 2 * history.len() as u64, "{steps} steps");

        make_one_version_impossible(&mut rng, &mut history).expect("has candidates");
        let (outcome, steps) = steps_for(&history, DEFAULT_MAX_STEPS_PER_KEY);
        assert!(matches!(outcome, Outcome::NotLinearizable(_)), "{outcome}");
        // Refuting takes exhausting the search; measured ~20k-35k steps for these seeds.
        assert!(steps < 200_000, "{steps} steps");
    }
}

#[test]
fn concurrent_reads_are_not_interleaved_every_way() {
    // 2^16 subsets of reads without the partial-order reduction.
    let mut history: Vec<Operation> = (0..16).map(|c| get(c, "k", None, 0, 0, 100)).collect();
    history.push(get(16, "k", Some("never written"), 1, 200, 210));
    let (outcome, steps) = steps_for(&history, DEFAULT_MAX_STEPS_PER_KEY);
    assert!(matches!(outcome, Outcome::NotLinearizable(_)), "{outcome}");
    assert!(steps < 1_000, "{steps} steps");
}

#[test]
fn identical_pending_writes_are_not_tried_every_way() {
    // Each pending put could be linearized or not: 2^16 subsets without the symmetry and
    // dominance reductions.
    let mut history = vec![put(0, "k", "a", 1, 0, 10)];
    history.extend((1..=16).map(|c| pending(put(c, "k", "b", 0, 20, 0))));
    history.push(get(17, "k", Some("b"), 2, 30, 40));
    history.push(get(17, "k", Some("a"), 1, 50, 60));
    let (outcome, steps) = steps_for(&history, DEFAULT_MAX_STEPS_PER_KEY);
    assert!(matches!(outcome, Outcome::NotLinearizable(_)), "{outcome}");
    assert!(steps < 1_000, "{steps} steps");
}
