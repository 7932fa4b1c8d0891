//! The sequential specification of one key: an etcd-like versioned register.
//!
//! Values are interned per key so that a model state is two machine words: the search hashes and
//! copies states on every step, and cloning byte vectors there would dominate its cost.

use std::collections::HashMap;

use super::{Call, Ret, Value};

/// Index of a distinct value in one key's history (see [`Interner`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct ValueId(u32);

/// The state of one key. Invariant: the key is absent exactly when its version is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct State {
    pub value: Option<ValueId>,
    pub version: u64,
}

impl State {
    pub const INITIAL: State = State {
        value: None,
        version: 0,
    };

    fn assert_valid(self) {
        assert_eq!(
            self.value.is_none(),
            self.version == 0,
            "a key is absent exactly when its version is 0: {self:?}"
        );
    }
}

/// A [`Call`] with its value interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ICall {
    Get,
    Put {
        value: ValueId,
    },
    Delete,
    Cas {
        expected_version: u64,
        value: ValueId,
    },
}

/// A [`Ret`] with its value interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum IRet {
    Get {
        value: Option<ValueId>,
        version: u64,
    },
    Put {
        version: u64,
    },
    Delete {
        existed: bool,
    },
    Cas {
        ok: bool,
        version: u64,
    },
}

/// Applies `call` to `state`: the only definition of the model's semantics.
pub(super) fn step(state: State, call: ICall) -> (IRet, State) {
    state.assert_valid();
    let (ret, next) = match call {
        ICall::Get => (
            IRet::Get {
                value: state.value,
                version: state.version,
            },
            state,
        ),
        ICall::Put { value } => {
            let next = State {
                value: Some(value),
                version: state.version + 1,
            };
            (
                IRet::Put {
                    version: next.version,
                },
                next,
            )
        }
        ICall::Delete => (
            IRet::Delete {
                existed: state.value.is_some(),
            },
            State::INITIAL,
        ),
        ICall::Cas {
            expected_version,
            value,
        } => {
            // Version 0 matches only an absent key, because of the State invariant.
            if state.version == expected_version {
                let next = State {
                    value: Some(value),
                    version: state.version + 1,
                };
                let ret = IRet::Cas {
                    ok: true,
                    version: next.version,
                };
                (ret, next)
            } else {
                let ret = IRet::Cas {
                    ok: false,
                    version: state.version,
                };
                (ret, state)
            }
        }
    };
    next.assert_valid();
    (ret, next)
}

/// Gives each value a key's completed reads returned a dense id, in order of first appearance
/// so that ids are deterministic. Every other value shares [`ValueId::UNREAD`]: states that
/// differ only in which never-read value they hold behave identically towards every recorded
/// result, and merging them lets the memo recognise them as one configuration.
#[derive(Default)]
pub(super) struct Interner<'h> {
    ids: HashMap<&'h [u8], ValueId>,
    read_count: u32,
}

impl ValueId {
    pub const UNREAD: ValueId = ValueId(u32::MAX);
}

impl<'h> Interner<'h> {
    /// Registers a value returned by a completed read. Call for all reads before any `call`.
    pub fn add_read(&mut self, value: &'h Value) {
        if !self.ids.contains_key(value.as_slice()) {
            assert!(self.read_count < u32::MAX, "fewer than 2^32 values per key");
            self.ids.insert(value, ValueId(self.read_count));
            self.read_count += 1;
        }
    }

    fn id(&self, value: &Value) -> ValueId {
        self.ids
            .get(value.as_slice())
            .copied()
            .unwrap_or(ValueId::UNREAD)
    }

    pub fn call(&self, call: &Call) -> ICall {
        match call {
            Call::Get => ICall::Get,
            Call::Put { value } => ICall::Put {
                value: self.id(value),
            },
            Call::Delete => ICall::Delete,
            Call::Cas {
                expected_version,
                value,
            } => ICall::Cas {
                expected_version: *expected_version,
                value: self.id(value),
            },
        }
    }

    /// A value that was read but never written has an id no write produces, so the model can
    /// never return it and the read is (correctly) impossible to linearize.
    pub fn ret(&self, ret: &Ret) -> IRet {
        match ret {
            Ret::Get { value, version } => IRet::Get {
                value: value.as_ref().map(|v| {
                    let id = self.id(v);
                    assert_ne!(id, ValueId::UNREAD, "reads are registered first");
                    id
                }),
                version: *version,
            },
            Ret::Put { version } => IRet::Put { version: *version },
            Ret::Delete { existed } => IRet::Delete { existed: *existed },
            Ret::Cas { ok, version } => IRet::Cas {
                ok: *ok,
                version: *version,
            },
        }
    }
}

/// Whether a return of this shape can answer this call at all (a recorder bug otherwise).
pub(super) fn ret_matches_call(call: &Call, ret: &Ret) -> bool {
    matches!(
        (call, ret),
        (Call::Get, Ret::Get { .. })
            | (Call::Put { .. }, Ret::Put { .. })
            | (Call::Delete, Ret::Delete { .. })
            | (Call::Cas { .. }, Ret::Cas { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ValueId = ValueId(0);
    const B: ValueId = ValueId(1);

    #[test]
    fn put_increments_version_and_delete_resets_it() {
        let (ret, s1) = step(State::INITIAL, ICall::Put { value: A });
        assert_eq!(ret, IRet::Put { version: 1 });
        let (ret, s2) = step(s1, ICall::Put { value: B });
        assert_eq!(ret, IRet::Put { version: 2 });
        let (ret, s3) = step(s2, ICall::Delete);
        assert_eq!(ret, IRet::Delete { existed: true });
        assert_eq!(s3, State::INITIAL);
        let (ret, _) = step(s3, ICall::Delete);
        assert_eq!(ret, IRet::Delete { existed: false });
    }

    #[test]
    fn cas_compares_versions_and_zero_means_absent() {
        let cas = |expected_version, value| ICall::Cas {
            expected_version,
            value,
        };
        let (ret, s1) = step(State::INITIAL, cas(0, A));
        assert_eq!(
            ret,
            IRet::Cas {
                ok: true,
                version: 1
            }
        );
        let (ret, s1_again) = step(s1, cas(0, B));
        assert_eq!(
            ret,
            IRet::Cas {
                ok: false,
                version: 1
            }
        );
        assert_eq!(s1_again, s1);
        let (ret, s2) = step(s1, cas(1, B));
        assert_eq!(
            ret,
            IRet::Cas {
                ok: true,
                version: 2
            }
        );
        assert_eq!(
            step(s2, ICall::Get).0,
            IRet::Get {
                value: Some(B),
                version: 2
            }
        );
    }
}
