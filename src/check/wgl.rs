//! The Wing–Gong–Lowe search over one key's history.
//!
//! Events (invocations and completions) sit in a doubly linked list in time order. The search
//! repeatedly picks a pending invocation that precedes the first completion still in the list,
//! applies it to the model, and — if the model's answer matches the recorded one — removes the
//! operation from the list ("lifts" it) and pushes it on an undo stack. Hitting a completion
//! means the operation it belongs to had to take effect already but cannot: backtrack. Lowe's
//! memoization of (linearized set, model state) prunes configurations already known to fail.
//!
//! Incomplete operations have an invocation but no completion event: they never block the
//! search, and the search succeeds once every *completed* operation is linearized. Leaving an
//! incomplete operation out is the same as linearizing it after everything else, which is always
//! allowed because nobody observed its result. They live in a second list, scanned after the
//! completed operations' invocations.
//!
//! Three reductions keep the search small, each sound by an exchange argument given where it is
//! implemented: the memo also prunes configurations *dominated* by one already seen (same state
//! and completed operations, a superset of incomplete ones: [`Memo`]); a read-only operation
//! that fits is linearized at once with no alternatives ([`Search::force_observer`]); and of
//! several identical pending calls only one is tried ([`Search::later_twin_available`]).
//! Without them, concurrent reads or a few dozen incomplete writes make the search exponential.

use std::collections::HashMap;

use super::model::{step, ICall, IRet, State};

/// One operation on the key being checked, with interned values.
#[derive(Clone, Debug)]
pub(super) struct KeyOp {
    /// Position in the caller's history, for explanations.
    pub history_index: usize,
    pub call: ICall,
    pub ret: Option<IRet>,
    pub invoke_ns: u64,
    /// None when the operation never completed.
    pub complete_ns: Option<u64>,
}

impl KeyOp {
    /// Whether the recorded result says the operation left the state unchanged.
    pub fn is_observer(&self) -> bool {
        matches!(
            self.ret,
            Some(IRet::Get { .. } | IRet::Cas { ok: false, .. } | IRet::Delete { existed: false })
        )
    }

    /// The state after applying this operation to `state`, or None when the model's answer
    /// contradicts the recorded one. An unknown answer matches anything.
    pub fn try_apply(&self, state: State) -> Option<State> {
        let (ret, next) = step(state, self.call);
        match self.ret {
            Some(recorded) if recorded != ret => None,
            _ => Some(next),
        }
    }
}

pub(super) enum SearchResult {
    Linearizable,
    /// `longest_prefix` indexes the ops slice, in linearization order.
    NotLinearizable {
        longest_prefix: Vec<usize>,
    },
    BudgetExceeded {
        longest_prefix_len: usize,
    },
}

/// Checks one key's operations, which must be sorted by invocation: that keeps the unlinearized
/// operations below the highest linearized one few, which is what makes [`MemoKey`] small.
/// Also returns the steps taken (one per candidate considered, roughly).
pub(super) fn search(ops: &[KeyOp], max_steps: u64) -> (SearchResult, u64) {
    assert!(
        ops.windows(2).all(|w| w[0].invoke_ns <= w[1].invoke_ns),
        "ops must be sorted by invocation"
    );
    let mut search = Search::new(ops);
    let mut steps: u64 = 0;
    let mut cursor = CONFIG_START;
    loop {
        if search.completed_pending == 0 {
            return (SearchResult::Linearizable, steps);
        }
        if steps >= max_steps {
            let longest_prefix_len = search.longest_prefix.len();
            return (SearchResult::BudgetExceeded { longest_prefix_len }, steps);
        }
        steps += 1;
        match search.advance(cursor) {
            Some(next) => cursor = next,
            None => {
                let longest_prefix = search.longest_prefix;
                return (SearchResult::NotLinearizable { longest_prefix }, steps);
            }
        }
    }
}

/// Where an operation's bit lives: completed and incomplete operations are tracked apart so
/// that the memo can compare the incomplete ones by set inclusion (see [`Memo`]).
#[derive(Clone, Copy)]
enum Slot {
    Completed(usize),
    Incomplete(usize),
}

struct Frame {
    invoke_event: usize,
    state_before: State,
    deadline_ns_before: u64,
    /// Linearized as the only child of its configuration (see [`Search::force_observer`]).
    forced: bool,
}

struct Search<'o> {
    ops: &'o [KeyOp],
    slots: Vec<Slot>,
    /// For an incomplete op, the next-invoked incomplete op with the identical call, or NIL.
    later_twin: Vec<usize>,
    events: EventList,
    state: State,
    /// Completion time of the first completion left in the list: incomplete operations invoked
    /// after it cannot be linearized yet. Valid while scanning the incomplete list.
    deadline_ns: u64,
    linearized_completed: Bitset,
    linearized_incomplete: Bitset,
    stack: Vec<Frame>,
    memo: Memo,
    completed_pending: usize,
    longest_prefix: Vec<usize>,
}

impl<'o> Search<'o> {
    fn new(ops: &'o [KeyOp]) -> Self {
        let mut completed = 0;
        let mut incomplete = 0;
        let slots: Vec<Slot> = ops
            .iter()
            .map(|op| {
                if op.complete_ns.is_some() {
                    completed += 1;
                    Slot::Completed(completed - 1)
                } else {
                    incomplete += 1;
                    Slot::Incomplete(incomplete - 1)
                }
            })
            .collect();
        let mut search = Search {
            ops,
            slots,
            later_twin: later_twins(ops),
            events: EventList::new(ops),
            state: State::INITIAL,
            deadline_ns: 0,
            linearized_completed: Bitset::new(completed),
            linearized_incomplete: Bitset::new(incomplete),
            stack: Vec::new(),
            memo: Memo::default(),
            completed_pending: completed,
            longest_prefix: Vec::new(),
        };
        // The empty configuration dominates "only incomplete operations linearized" ones.
        let fresh = search.memo.insert(
            State::INITIAL,
            &search.linearized_completed,
            &search.linearized_incomplete,
        );
        assert!(fresh);
        search
    }

    /// One step at `cursor`; returns the next cursor, or None when the history is not
    /// linearizable. Completed operations are tried before incomplete ones so that the
    /// configurations with fewer incomplete operations, which dominate, are memoized first.
    fn advance(&mut self, cursor: usize) -> Option<usize> {
        if cursor == CONFIG_START {
            return self.force_observer();
        }
        if cursor == NIL {
            // End of the incomplete list. The completed list always reaches a completion first.
            return self.backtrack();
        }
        let event = self.events.nodes[cursor];
        match event.kind {
            EventKind::Invoke => Some(self.try_linearize(cursor, false)),
            EventKind::Complete => {
                let op = &self.ops[event.op];
                self.deadline_ns = op.complete_ns.expect("completion event of a completed op");
                Some(self.events.first(INCOMPLETE_HEAD))
            }
            EventKind::InvokeIncomplete => {
                if self.ops[event.op].invoke_ns > self.deadline_ns {
                    return self.backtrack();
                }
                if self.later_twin_available(event.op) {
                    return Some(event.next);
                }
                Some(self.try_linearize(cursor, false))
            }
        }
    }

    /// Symmetry reduction for incomplete operations with identical calls: once two such twins
    /// have both been invoked (by the deadline, hence by every later deadline too), they are
    /// interchangeable for the rest of the search, so trying one of them suffices. The one tried
    /// is the latest available, which makes the choice canonical.
    fn later_twin_available(&self, op_index: usize) -> bool {
        let mut twin = self.later_twin[op_index];
        while twin != NIL && self.ops[twin].invoke_ns <= self.deadline_ns {
            let Slot::Incomplete(bit) = self.slots[twin] else {
                unreachable!("twins are incomplete");
            };
            if !self.linearized_incomplete.contains(bit) {
                return true;
            }
            twin = self.later_twin[twin];
        }
        false
    }

    /// Partial-order reduction, at a configuration reached for the first time. A completed
    /// operation whose recorded result says it changed nothing (a get, a failed CAS, a delete of
    /// an absent key) and which fits the current state can be moved to the front of any
    /// linearization from here: it is a candidate, so nothing must precede it, and it leaves the
    /// state alone for the operations it jumps over. So if one fits, it is the only child worth
    /// trying — which spares the search every interleaving of concurrent reads.
    fn force_observer(&mut self) -> Option<usize> {
        let mut cursor = self.events.first(COMPLETED_HEAD);
        while self.events.nodes[cursor].kind == EventKind::Invoke {
            let op = &self.ops[self.events.nodes[cursor].op];
            if op.is_observer() && op.try_apply(self.state) == Some(self.state) {
                let next = self.try_linearize(cursor, true);
                // Not lifted means the memo already refuted the only child worth trying.
                return if next == CONFIG_START {
                    Some(next)
                } else {
                    self.backtrack()
                };
            }
            cursor = self.events.nodes[cursor].next;
        }
        Some(self.events.first(COMPLETED_HEAD))
    }

    /// Tries to linearize the operation invoked at `event`. Returns CONFIG_START if it did,
    /// else the next event to look at.
    fn try_linearize(&mut self, event: usize, forced: bool) -> usize {
        let op_index = self.events.nodes[event].op;
        let op = &self.ops[op_index];
        let skip = self.events.nodes[event].next;
        let Some(next_state) = op.try_apply(self.state) else {
            return skip;
        };
        if op.complete_ns.is_none() && next_state == self.state {
            // Dominated by the current configuration (see [`Memo`]); skip the hashing.
            return skip;
        }
        self.set_linearized(op_index, true);
        let fresh = self.memo.insert(
            next_state,
            &self.linearized_completed,
            &self.linearized_incomplete,
        );
        if !fresh {
            // Explored before (and failed), or dominated by something explored.
            self.set_linearized(op_index, false);
            return skip;
        }
        self.stack.push(Frame {
            invoke_event: event,
            state_before: self.state,
            deadline_ns_before: self.deadline_ns,
            forced,
        });
        self.state = next_state;
        self.events.lift(event);
        if self.stack.len() > self.longest_prefix.len() {
            // Grows at most ops.len() times, so copying is O(n^2) overall at worst.
            self.longest_prefix = self
                .stack
                .iter()
                .map(|frame| self.events.nodes[frame.invoke_event].op)
                .collect();
        }
        CONFIG_START
    }

    /// Undoes linearizations until one leaves an alternative to try; returns the event after
    /// it, or None when there is nothing left to undo (the history is not linearizable).
    fn backtrack(&mut self) -> Option<usize> {
        loop {
            let frame = self.stack.pop()?;
            let op_index = self.events.nodes[frame.invoke_event].op;
            self.events.unlift(frame.invoke_event);
            self.set_linearized(op_index, false);
            self.state = frame.state_before;
            self.deadline_ns = frame.deadline_ns_before;
            if !frame.forced {
                return Some(self.events.nodes[frame.invoke_event].next);
            }
            // A forced child was the configuration's only one: it failed too.
        }
    }

    fn set_linearized(&mut self, op_index: usize, linearized: bool) {
        match (self.slots[op_index], linearized) {
            (Slot::Completed(bit), true) => {
                self.linearized_completed.insert(bit);
                self.completed_pending -= 1;
            }
            (Slot::Completed(bit), false) => {
                self.linearized_completed.remove(bit);
                self.completed_pending += 1;
            }
            (Slot::Incomplete(bit), true) => self.linearized_incomplete.insert(bit),
            (Slot::Incomplete(bit), false) => self.linearized_incomplete.remove(bit),
        }
    }
}

/// See [`Search::later_twin_available`]. Quadratic in the incomplete operations, which are few.
fn later_twins(ops: &[KeyOp]) -> Vec<usize> {
    let incomplete: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].complete_ns.is_none())
        .collect();
    let mut later_twin = vec![NIL; ops.len()];
    for (position, &i) in incomplete.iter().enumerate() {
        if let Some(&twin) = incomplete[position + 1..]
            .iter()
            .find(|&&j| ops[j].call == ops[i].call)
        {
            later_twin[i] = twin;
        }
    }
    later_twin
}

const NIL: usize = usize::MAX;
/// Sentinel heading the completed operations' invocations and completions, in time order.
const COMPLETED_HEAD: usize = 0;
/// Sentinel heading the incomplete operations' invocations, in time order.
const INCOMPLETE_HEAD: usize = 1;
/// Cursor value meaning "a configuration just reached: look for a forced observer first".
/// Never a real event's index, since sentinels are never visited.
const CONFIG_START: usize = COMPLETED_HEAD;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Invoke,
    Complete,
    InvokeIncomplete,
}

#[derive(Clone, Copy, Debug)]
struct EventNode {
    op: usize,
    kind: EventKind,
    /// For an invocation, its completion event (NIL if the operation never completed).
    completion: usize,
    prev: usize,
    next: usize,
}

/// Two event lists sharing one node array, with O(1) removal and LIFO re-insertion (dancing
/// links).
struct EventList {
    nodes: Vec<EventNode>,
}

impl EventList {
    fn new(ops: &[KeyOp]) -> Self {
        // Invocations sort before completions at the same instant: equal timestamps count as
        // concurrent, so the checker never invents a real-time order the clock did not show.
        let mut completed_events: Vec<(u64, EventKind, usize)> = Vec::new();
        let mut incomplete_events: Vec<(u64, EventKind, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some(complete_ns) = op.complete_ns {
                assert!(complete_ns >= op.invoke_ns, "validated by the caller");
                completed_events.push((op.invoke_ns, EventKind::Invoke, i));
                completed_events.push((complete_ns, EventKind::Complete, i));
            } else {
                incomplete_events.push((op.invoke_ns, EventKind::InvokeIncomplete, i));
            }
        }
        completed_events.sort_unstable_by_key(|&(t, kind, i)| (t, kind == EventKind::Complete, i));
        incomplete_events.sort_unstable_by_key(|&(t, _, i)| (t, i));

        let sentinel = |op| EventNode {
            op,
            kind: EventKind::Complete,
            completion: NIL,
            prev: NIL,
            next: NIL,
        };
        let mut list = EventList {
            nodes: vec![sentinel(usize::MAX), sentinel(usize::MAX)],
        };
        let mut completion_of_op = vec![NIL; ops.len()];
        for (head, events) in [
            (COMPLETED_HEAD, completed_events),
            (INCOMPLETE_HEAD, incomplete_events),
        ] {
            let mut tail = head;
            for (_, kind, op) in events {
                let index = list.nodes.len();
                if kind == EventKind::Complete {
                    completion_of_op[op] = index;
                }
                list.nodes.push(EventNode {
                    op,
                    kind,
                    completion: NIL,
                    prev: tail,
                    next: NIL,
                });
                list.nodes[tail].next = index;
                tail = index;
            }
        }
        for node in list.nodes.iter_mut().skip(2) {
            if node.kind == EventKind::Invoke {
                node.completion = completion_of_op[node.op];
                assert_ne!(node.completion, NIL);
            }
        }
        list
    }

    fn first(&self, head: usize) -> usize {
        self.nodes[head].next
    }

    fn lift(&mut self, invoke: usize) {
        assert_ne!(self.nodes[invoke].kind, EventKind::Complete);
        self.unlink(invoke);
        let completion = self.nodes[invoke].completion;
        if completion != NIL {
            self.unlink(completion);
        }
    }

    /// Exactly reverses [`Self::lift`]; valid only in LIFO order.
    fn unlift(&mut self, invoke: usize) {
        let completion = self.nodes[invoke].completion;
        if completion != NIL {
            self.relink(completion);
        }
        self.relink(invoke);
    }

    fn unlink(&mut self, n: usize) {
        let EventNode { prev, next, .. } = self.nodes[n];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, n: usize) {
        let EventNode { prev, next, .. } = self.nodes[n];
        assert_eq!(self.nodes[prev].next, next, "relink out of LIFO order");
        self.nodes[prev].next = n;
        if next != NIL {
            self.nodes[next].prev = n;
        }
    }
}

struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn insert(&mut self, i: usize) {
        assert!(!self.contains(i), "op {i} linearized twice");
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn remove(&mut self, i: usize) {
        assert!(
            self.contains(i),
            "op {i} un-linearized but was not linearized"
        );
        self.words[i / 64] &= !(1 << (i % 64));
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }
}

fn is_subset(small: &[u64], large: &[u64]) -> bool {
    assert_eq!(small.len(), large.len());
    small.iter().zip(large).all(|(s, l)| s & !l == 0)
}

/// Configurations already explored (Lowe's memoization), with a dominance rule for incomplete
/// operations.
///
/// Configuration A dominates B when both have the same state and the same completed operations
/// linearized, and A's linearized incomplete operations are a subset of B's: every continuation
/// of B is also a continuation of A, which may simply never linearize the extra operations. So a
/// configuration dominated by one already explored (or being explored) can be skipped. Without
/// this, every subset of pending no-op writes (a CAS with a stale version, say) is a distinct
/// configuration, and a non-linearizable history with a dozen of them takes millions of steps.
#[derive(Default)]
struct Memo {
    /// Per (state, completed set): the incomplete sets seen, none a subset of another.
    seen: HashMap<MemoKey, Vec<Box<[u64]>>>,
}

impl Memo {
    /// Records a configuration; false when it, or one dominating it, was recorded before.
    fn insert(&mut self, state: State, completed: &Bitset, incomplete: &Bitset) -> bool {
        let incomplete = incomplete.words.as_slice();
        let seen = self.seen.entry(MemoKey::new(state, completed)).or_default();
        if seen.iter().any(|smaller| is_subset(smaller, incomplete)) {
            return false;
        }
        // Entries this one dominates can go: anything they would prune, it prunes too.
        seen.retain(|larger| !is_subset(incomplete, larger));
        seen.push(incomplete.into());
        true
    }
}

/// The state and the linearized completed operations of a configuration.
///
/// The set is stored as "everything below `linearized_end` except `holes`". Because ops are
/// sorted by invocation, an unlinearized completed op below the highest linearized one must be
/// concurrent with it, so `holes` stays short where a plain bitset would grow with the history.
#[derive(PartialEq, Eq, Hash)]
struct MemoKey {
    state: State,
    linearized_end: u32,
    holes: Box<[u32]>,
}

impl MemoKey {
    fn new(state: State, linearized: &Bitset) -> Self {
        let end_bit = linearized
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |word| {
                word * 64 + 64 - linearized.words[word].leading_zeros() as usize
            });
        let mut holes = Vec::new();
        for (word_index, &word) in linearized.words.iter().enumerate() {
            let base = word_index * 64;
            if base >= end_bit {
                break;
            }
            let valid_mask = if end_bit - base >= 64 {
                u64::MAX
            } else {
                (1u64 << (end_bit - base)) - 1
            };
            let mut missing = !word & valid_mask;
            while missing != 0 {
                holes.push((base + missing.trailing_zeros() as usize) as u32);
                missing &= missing - 1;
            }
        }
        MemoKey {
            state,
            linearized_end: u32::try_from(end_bit).expect("fewer than 2^32 ops per key"),
            holes: holes.into_boxed_slice(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_key_lists_holes_below_highest_linearized_op() {
        let mut set = Bitset::new(200);
        for i in (0..130).filter(|i| ![3, 64, 127].contains(i)) {
            set.insert(i);
        }
        let key = MemoKey::new(State::INITIAL, &set);
        assert_eq!(key.linearized_end, 130);
        assert_eq!(&*key.holes, &[3, 64, 127]);

        let empty = MemoKey::new(State::INITIAL, &Bitset::new(70));
        assert_eq!(empty.linearized_end, 0);
        assert!(empty.holes.is_empty());
    }

    #[test]
    fn memo_prunes_configurations_with_more_incomplete_operations() {
        let completed = Bitset::new(3);
        let incomplete_set = |bits: &[usize]| {
            let mut set = Bitset::new(100);
            bits.iter().for_each(|&bit| set.insert(bit));
            set
        };
        let mut memo = Memo::default();
        assert!(memo.insert(State::INITIAL, &completed, &incomplete_set(&[1, 70])));
        assert!(!memo.insert(State::INITIAL, &completed, &incomplete_set(&[1, 70])));
        assert!(!memo.insert(State::INITIAL, &completed, &incomplete_set(&[1, 2, 70])));
        // Fewer incomplete operations linearized leaves more options: not dominated.
        assert!(memo.insert(State::INITIAL, &completed, &incomplete_set(&[70])));
        assert!(!memo.insert(State::INITIAL, &completed, &incomplete_set(&[1, 70])));
        // Incomparable sets are both kept.
        assert!(memo.insert(State::INITIAL, &completed, &incomplete_set(&[2])));
        assert_eq!(memo.seen.values().map(Vec::len).sum::<usize>(), 2);
    }
}
