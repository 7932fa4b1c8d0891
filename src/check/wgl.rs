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
//! allowed because nobody observed its result.

use std::collections::HashSet;

use super::model::{step, ICall, IRet, State};

/// One operation on the key being checked, with interned values.
#[derive(Clone, Debug)]
pub(super) struct KeyOp {
    /// Position in the caller's history, for explanations.
    pub history_index: usize,
    pub client: u64,
    pub call: ICall,
    pub ret: Option<IRet>,
    pub invoke_ns: u64,
    /// None when the operation never completed.
    pub complete_ns: Option<u64>,
}

impl KeyOp {
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

/// Checks one key's operations. They must be sorted by invocation (ties in any fixed order):
/// that keeps the unlinearized operations below the highest linearized one few, which is what
/// makes [`MemoKey`] small.
pub(super) fn search(ops: &[KeyOp], max_steps: u64) -> SearchResult {
    assert!(
        ops.windows(2).all(|w| w[0].invoke_ns <= w[1].invoke_ns),
        "ops must be sorted by invocation"
    );
    let mut search = Search::new(ops);
    let mut steps: u64 = 0;
    let mut cursor = search.events.first();
    loop {
        if search.completed_pending == 0 {
            return SearchResult::Linearizable;
        }
        if steps >= max_steps {
            return SearchResult::BudgetExceeded {
                longest_prefix_len: search.longest_prefix.len(),
            };
        }
        steps += 1;
        // A completed operation is still pending, so its completion event lies ahead.
        assert_ne!(
            cursor, NIL,
            "ran off the event list with completions pending"
        );
        let event = search.events.nodes[cursor];
        cursor = if event.is_invoke {
            search.try_linearize(cursor)
        } else {
            match search.backtrack() {
                Some(next) => next,
                None => {
                    return SearchResult::NotLinearizable {
                        longest_prefix: search.longest_prefix,
                    }
                }
            }
        };
    }
}

struct Search<'o> {
    ops: &'o [KeyOp],
    events: EventList,
    state: State,
    linearized: Bitset,
    /// Undo stack: the invocation event lifted and the state before it.
    stack: Vec<(usize, State)>,
    memo: HashSet<MemoKey>,
    completed_pending: usize,
    longest_prefix: Vec<usize>,
}

impl<'o> Search<'o> {
    fn new(ops: &'o [KeyOp]) -> Self {
        Search {
            ops,
            events: EventList::new(ops),
            state: State::INITIAL,
            linearized: Bitset::new(ops.len()),
            stack: Vec::new(),
            memo: HashSet::new(),
            completed_pending: ops.iter().filter(|op| op.complete_ns.is_some()).count(),
            longest_prefix: Vec::new(),
        }
    }

    /// Tries to linearize the operation invoked at `event`; returns the next event to look at.
    fn try_linearize(&mut self, event: usize) -> usize {
        let op_index = self.events.nodes[event].op;
        let op = &self.ops[op_index];
        let Some(next_state) = op.try_apply(self.state) else {
            return self.events.nodes[event].next;
        };
        self.linearized.insert(op_index);
        if !self.memo.insert(MemoKey::new(next_state, &self.linearized)) {
            // This configuration was explored before and failed.
            self.linearized.remove(op_index);
            return self.events.nodes[event].next;
        }
        self.stack.push((event, self.state));
        self.state = next_state;
        self.events.lift(event);
        if op.complete_ns.is_some() {
            self.completed_pending -= 1;
        }
        if self.stack.len() > self.longest_prefix.len() {
            // Grows at most ops.len() times, so copying is O(n^2) overall at worst.
            self.longest_prefix = self
                .stack
                .iter()
                .map(|&(e, _)| self.events.nodes[e].op)
                .collect();
        }
        self.events.first()
    }

    /// Undoes the most recent linearization; returns the event after it, or None when there is
    /// nothing left to undo (the history is not linearizable).
    fn backtrack(&mut self) -> Option<usize> {
        let (event, state_before) = self.stack.pop()?;
        let op_index = self.events.nodes[event].op;
        self.events.unlift(event);
        self.linearized.remove(op_index);
        self.state = state_before;
        if self.ops[op_index].complete_ns.is_some() {
            self.completed_pending += 1;
        }
        Some(self.events.nodes[event].next)
    }
}

const NIL: usize = usize::MAX;
/// Index of the sentinel node that precedes the first event.
const HEAD: usize = 0;

#[derive(Clone, Copy, Debug)]
struct EventNode {
    op: usize,
    is_invoke: bool,
    /// For an invocation, its completion event (NIL if the operation never completed).
    completion: usize,
    prev: usize,
    next: usize,
}

/// Events in time order with O(1) removal and LIFO re-insertion (dancing links).
struct EventList {
    nodes: Vec<EventNode>,
}

impl EventList {
    fn new(ops: &[KeyOp]) -> Self {
        // Invocations sort before completions at the same instant: equal timestamps count as
        // concurrent, so the checker never invents a real-time order the clock did not show.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke_ns, false, i));
            if let Some(complete_ns) = op.complete_ns {
                assert!(complete_ns >= op.invoke_ns, "validated by the caller");
                events.push((complete_ns, true, i));
            }
        }
        events.sort_unstable();
        let sentinel = EventNode {
            op: usize::MAX,
            is_invoke: false,
            completion: NIL,
            prev: NIL,
            next: if events.is_empty() { NIL } else { 1 },
        };
        let mut nodes = vec![sentinel];
        let mut completion_of_op = vec![NIL; ops.len()];
        for (position, &(_, is_completion, op)) in events.iter().enumerate() {
            let index = position + 1;
            if is_completion {
                completion_of_op[op] = index;
            }
            nodes.push(EventNode {
                op,
                is_invoke: !is_completion,
                completion: NIL,
                prev: index - 1,
                next: if index == events.len() {
                    NIL
                } else {
                    index + 1
                },
            });
        }
        for node in nodes.iter_mut().skip(1).filter(|n| n.is_invoke) {
            node.completion = completion_of_op[node.op];
        }
        EventList { nodes }
    }

    fn first(&self) -> usize {
        self.nodes[HEAD].next
    }

    fn lift(&mut self, invoke: usize) {
        assert!(self.nodes[invoke].is_invoke);
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

/// A configuration already explored: the linearized set and the model state it led to.
///
/// The set is stored as "everything below `linearized_end` except `holes`". Because ops are
/// sorted by invocation, an unlinearized op below the highest linearized one is either concurrent
/// with it or incomplete, so `holes` stays short where a plain bitset would grow with the
/// history.
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
}
