//! Read leases: the leader lease (architecture §5) and its bookkeeping, kept apart from the
//! `leader` hint (which drives redirects and catch-up, not reads).
//!
//! A lease is built from [`Grant`]s. A grant is recorded by its *grantee* (the replica that
//! will read on it): who granted it, which lease number it answers, and the grantee's own
//! clock reading when it sent the request the grant answers (`granted_at`). Measuring from
//! the send time, never the receive time, is what makes a grant safe to trust on the
//! grantee's clock: the grantor's promise started later than that, on any clock.
//!
//! The rules and their safety argument are in `docs/internals/protocol.md` §8.

use std::collections::VecDeque;

use super::quorum::{QuorumSpec, VoteSet};
use super::types::{Ballot, Nanos, ReplicaId, Slot};

pub(crate) const NS_PER_MS: u64 = 1_000_000;

/// How a replica serves linearizable reads (serializable reads are always local).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// The leader confirms its ballot with a quorum round (no disk write) per batch of reads.
    ReadIndex,
    /// The leader reads locally while a majority's heartbeat acks are fresh; else a round.
    #[default]
    LeaderLease,
    /// Every replica holds a read lease from a majority of grantors and reads locally; writes
    /// wait for every live holder's Accepted. The leader keeps its leader lease too.
    QuorumLease,
}

impl ReadMode {
    pub const ALL: [ReadMode; 3] = [
        ReadMode::ReadIndex,
        ReadMode::LeaderLease,
        ReadMode::QuorumLease,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ReadMode::ReadIndex => "read-index",
            ReadMode::LeaderLease => "leader-lease",
            ReadMode::QuorumLease => "quorum-lease",
        }
    }

    /// A stable number for settings digests.
    pub fn code(self) -> u64 {
        match self {
            ReadMode::ReadIndex => 1,
            ReadMode::LeaderLease => 2,
            ReadMode::QuorumLease => 3,
        }
    }
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a quorum-lease holder does with a linearizable read it may serve locally only after
/// applying slots it has not applied yet (an accepted write, or one its grantors held).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum LeasePending {
    /// Keep the read until those slots are applied (the commit notice arrives), then answer.
    #[default]
    Wait,
    /// Redirect the read to the leader at once.
    Forward,
}

impl LeasePending {
    pub fn name(self) -> &'static str {
        match self {
            LeasePending::Wait => "wait",
            LeasePending::Forward => "forward",
        }
    }
}

impl std::fmt::Display for LeasePending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One grant, as its grantee records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub grantor: ReplicaId,
    pub grantee: ReplicaId,
    /// The lease number (for the leader lease: the heartbeat round) the grant answers.
    pub lease_num: u64,
    /// The grantee's clock when it sent the request this grant answers.
    pub granted_at: Nanos,
}

/// How long a restarted acceptor must keep every promise it may have made before the crash:
/// `lease_ms` on the grantee's clock, stretched to cover the worst clock-rate difference
/// (`drift_percent`, capped below 50) on the grantor's.
pub fn grantor_hold_ms(lease_ms: u64, drift_percent: u64) -> u64 {
    let d = drift_percent.min(49);
    (lease_ms * (100 + d)).div_ceil(100 - d)
}

/// The leader's side of the leader lease: every heartbeat is its own round (lease number);
/// a follower's ack of round r is a grant measured from r's send time. The grantor's promise
/// is stickiness (`election_timeout_min_ms` of refusing other candidates).
pub(crate) struct LeaderLease {
    /// When each round went out, oldest first, pruned past the lease.
    rounds: VecDeque<(u64, Nanos)>,
    /// Per grantor, the newest grant (the newest acknowledged round's send time).
    grants: Vec<Option<Grant>>,
    grantee: ReplicaId,
}

impl LeaderLease {
    pub(crate) fn new(replicas: u32, grantee: ReplicaId) -> Self {
        LeaderLease {
            rounds: VecDeque::new(),
            grants: vec![None; replicas as usize],
            grantee,
        }
    }

    /// Round `round` of heartbeats goes out at `now`.
    pub(crate) fn round_sent(&mut self, round: u64, now: Nanos, lease_ms: u64) {
        let lease_ns = lease_ms * NS_PER_MS;
        while self
            .rounds
            .front()
            .is_some_and(|(_, at)| now >= at + lease_ns)
        {
            self.rounds.pop_front();
        }
        self.rounds.push_back((round, now));
    }

    /// `from` acknowledged round `round` at our ballot: it refuses other leaders for a
    /// stickiness window from when it received that heartbeat, which is after we sent it.
    pub(crate) fn on_ack(&mut self, from: ReplicaId, round: u64) {
        let Ok(i) = self.rounds.binary_search_by_key(&round, |(r, _)| *r) else {
            return;
        };
        let sent_at = self.rounds[i].1;
        let grant = &mut self.grants[from as usize];
        if !grant.is_some_and(|g| g.granted_at >= sent_at) {
            *grant = Some(Grant {
                grantor: from,
                grantee: self.grantee,
                lease_num: round,
                granted_at: sent_at,
            });
        }
    }

    /// The newest grant from `grantor`, if any.
    #[cfg(test)]
    pub(crate) fn grant(&self, grantor: ReplicaId) -> Option<Grant> {
        self.grants[grantor as usize]
    }

    /// Whether the lease holds at `now`: a classic quorum (the grantee included) granted
    /// less than `lease_ms` ago.
    pub(crate) fn holds(&self, now: Nanos, lease_ms: u64, quorum: &QuorumSpec) -> bool {
        if lease_ms == 0 {
            return false;
        }
        let lease_ns = lease_ms * NS_PER_MS;
        let mut live = VoteSet::EMPTY;
        live.insert(self.grantee);
        for grant in self.grants.iter().flatten() {
            if now < grant.granted_at + lease_ns {
                live.insert(grant.grantor);
            }
        }
        quorum.is_phase1_quorum(live)
    }
}

/// A quorum-lease grant as its holder records it: the grant, and the highest slot the
/// grantor held when it granted (PQL's `LatestAcceptedInst`, Bodega's `accept_bar`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HolderGrant {
    pub grant: Grant,
    pub latest_accepted: Slot,
    /// The grantor's promised ballot when it granted.
    pub promised: Ballot,
}

/// One replica's quorum-lease state, as holder and as grantor. Every holder of the lease
/// configuration holds leases on the whole key space of its group; every replica grants them
/// to the holders of the configuration it has applied (itself included). A configuration
/// change ([`QuorumLease::set_configured`]) never cuts an obligation or a grant short.
///
/// Holder: every `heartbeat_ms` it sends `LeaseRequest { lease_num: now }` to every
/// replica; a `LeaseGrant` answering it is a grant valid for `lease_ms` from that send time.
/// It may read locally while grants from a classic quorum are valid, once it applied every
/// slot it holds itself and every slot those grantors held when they granted.
///
/// Grantor: on a request it owes the requester, for `grantor_hold_ms` from receipt on its
/// own clock, a place in the `holders` of every Accepted it sends (so no write commits
/// without the holder's vote); after a restart it owes every replica that much, since it
/// forgot whom it promised (and which configuration it had applied).
pub(crate) struct QuorumLease {
    me: ReplicaId,
    n: u32,
    /// The lease configuration: only these replicas are granted leases.
    configured: VoteSet,
    /// Request send times (= lease numbers) still young enough to yield a valid grant.
    requests: VecDeque<Nanos>,
    grants: Vec<Option<HolderGrant>>,
    request_due: Nanos,
    /// Per holder, until when (own clock) it must be named in our Accepteds; 0: never.
    owed_until: Vec<Nanos>,
    /// After a restart every replica counts as a holder until then (whatever the
    /// configuration: the one in effect before the crash may be newer than what is known now).
    owe_all_until: Nanos,
    /// Per holder, until when (own clock) its requests go unanswered: the leader said it
    /// keeps writes waiting (`Heartbeat::revoke`). Refusing a grant is always safe.
    revoked_until: Vec<Nanos>,
}

impl QuorumLease {
    /// A replica (re)starting at `now`; `hold_ms` = [`grantor_hold_ms`].
    pub(crate) fn new(
        replicas: u32,
        me: ReplicaId,
        configured: VoteSet,
        now: Nanos,
        hold_ms: u64,
    ) -> Self {
        QuorumLease {
            me,
            n: replicas,
            configured,
            requests: VecDeque::new(),
            grants: vec![None; replicas as usize],
            request_due: now,
            owed_until: vec![0; replicas as usize],
            owe_all_until: now + hold_ms * NS_PER_MS,
            revoked_until: vec![0; replicas as usize],
        }
    }

    pub(crate) fn request_due(&self) -> Nanos {
        self.request_due
    }

    /// The lease configuration in effect here.
    pub(crate) fn configured(&self) -> VoteSet {
        self.configured
    }

    /// Whether this replica is a holder in the configuration in effect here.
    pub(crate) fn is_holder(&self) -> bool {
        self.configured.contains(self.me)
    }

    /// A lease configuration change applied here (docs/internals/protocol.md §8, "Lease
    /// configuration"). It only decides whom new requests are granted to and whether this
    /// replica asks and reads as a holder; obligations already made are kept to their end, so
    /// a removed holder is still named in Accepteds until its grants must have expired.
    /// `drop_early` is the injected bug `QleaseConfigDropEarly`: forget them at once.
    /// Returns whether the configuration changed.
    pub(crate) fn set_configured(&mut self, holders: VoteSet, drop_early: bool) -> bool {
        let holders = VoteSet::from_bits(holders.bits() & VoteSet::all(self.n).bits());
        if holders == self.configured {
            return false;
        }
        self.configured = holders;
        if drop_early {
            for id in 0..self.n {
                if !holders.contains(id) {
                    self.owed_until[id as usize] = 0;
                }
            }
        }
        if !self.is_holder() {
            // A holder no more: it asks for no further grants (and takes none answering an
            // earlier request). The grants it holds stay valid to their end, as their
            // grantors' obligations do: removal never relies on the removed holder (it may
            // be cut off and apply the change late), so it is not made to stop at once.
            self.requests.clear();
        }
        true
    }

    /// Time to renew: records the request and returns its lease number (the send time).
    pub(crate) fn next_request(&mut self, now: Nanos, lease_ms: u64, heartbeat_ms: u64) -> Nanos {
        let lease_ns = lease_ms * NS_PER_MS;
        while self.requests.front().is_some_and(|at| now >= at + lease_ns) {
            self.requests.pop_front();
        }
        if !self.requests.back().is_some_and(|last| *last >= now) {
            self.requests.push_back(now);
        }
        self.request_due = now + heartbeat_ms * NS_PER_MS;
        now
    }

    /// As grantor: `from` asked for a lease at `now`. Returns whether to grant it (not while
    /// it is revoked); a grant is owed from now on.
    pub(crate) fn on_request(&mut self, from: ReplicaId, now: Nanos, hold_ms: u64) -> bool {
        if !self.configured.contains(from) || now < self.revoked_until[from as usize] {
            return false;
        }
        let until = now + hold_ms * NS_PER_MS;
        let owed = &mut self.owed_until[from as usize];
        *owed = (*owed).max(until);
        true
    }

    /// As grantor: the leader asks not to renew these holders' grants until `until`.
    pub(crate) fn revoke(&mut self, holders: VoteSet, until: Nanos) {
        for id in 0..self.n {
            if holders.contains(id) {
                let r = &mut self.revoked_until[id as usize];
                *r = (*r).max(until);
            }
        }
    }

    /// As holder: `from` granted the request numbered `lease_num`. A grant for a request we
    /// did not send (or sent too long ago to matter) is ignored.
    pub(crate) fn on_grant(
        &mut self,
        from: ReplicaId,
        lease_num: Nanos,
        latest_accepted: Slot,
        promised: Ballot,
    ) {
        if self.requests.binary_search(&lease_num).is_err() {
            return;
        }
        let slot = &mut self.grants[from as usize];
        if slot.is_some_and(|g| g.grant.granted_at >= lease_num) {
            return;
        }
        *slot = Some(HolderGrant {
            grant: Grant {
                grantor: from,
                grantee: self.me,
                lease_num,
                granted_at: lease_num,
            },
            latest_accepted,
            promised,
        });
    }

    /// As grantor: the replicas it must name in an Accepted sent now.
    pub(crate) fn holders(&self, now: Nanos) -> VoteSet {
        let mut set = VoteSet::EMPTY;
        for id in 0..self.n {
            if now < self.owe_all_until || now < self.owed_until[id as usize] {
                set.insert(id);
            }
        }
        set
    }

    /// As holder: if grants from a classic quorum are valid at `now`, the highest slot any
    /// valid grantor held when it granted (a local read must wait until it is applied).
    /// `ignore_expiry` is the injected bug `QleaseReadAfterExpiry`.
    pub(crate) fn read_bar(
        &self,
        now: Nanos,
        lease_ms: u64,
        quorum: &QuorumSpec,
        ignore_expiry: bool,
    ) -> Option<Slot> {
        let lease_ns = lease_ms * NS_PER_MS;
        let mut live = VoteSet::EMPTY;
        let mut bar = 0;
        for g in self.grants.iter().flatten() {
            if ignore_expiry || now < g.grant.granted_at + lease_ns {
                live.insert(g.grant.grantor);
                bar = bar.max(g.latest_accepted);
            }
        }
        quorum.is_phase1_quorum(live).then_some(bar)
    }

    /// As holder: the highest ballot any grantor had promised when it made a grant valid at
    /// `now`. A value this replica holds for an unapplied slot at a lower ballot may not be the
    /// one chosen there (protocol.md §8, R3′).
    pub(crate) fn grants_ballot(&self, now: Nanos, lease_ms: u64) -> Ballot {
        let lease_ns = lease_ms * NS_PER_MS;
        self.grants
            .iter()
            .flatten()
            .filter(|g| now < g.grant.granted_at + lease_ns)
            .map(|g| g.promised)
            .max()
            .unwrap_or(Ballot::ZERO)
    }

    /// The newest grant from `grantor`, if any.
    #[cfg(test)]
    pub(crate) fn grant(&self, grantor: ReplicaId) -> Option<HolderGrant> {
        self.grants[grantor as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = NS_PER_MS;

    #[test]
    fn leader_lease_is_measured_from_the_acked_rounds_send_time() {
        let quorum = QuorumSpec::new(3);
        let mut lease = LeaderLease::new(3, 0);
        lease.round_sent(1, 100 * MS, 50);
        lease.round_sent(2, 120 * MS, 50);
        assert!(!lease.holds(121 * MS, 50, &quorum), "no grant yet");
        // Replica 2 acks round 1 late: the grant still dates from round 1's send time.
        lease.on_ack(2, 1);
        let g = lease.grant(2).expect("recorded");
        assert_eq!((g.grantor, g.grantee, g.lease_num), (2, 0, 1));
        assert_eq!(g.granted_at, 100 * MS);
        assert!(lease.holds(149 * MS, 50, &quorum));
        assert!(
            !lease.holds(150 * MS, 50, &quorum),
            "expired 50 ms after the send"
        );
        // An older round acked after a newer one does not move the grant back.
        lease.on_ack(2, 2);
        lease.on_ack(2, 1);
        assert_eq!(lease.grant(2).unwrap().granted_at, 120 * MS);
        // A round pruned past the lease grants nothing; lease 0 is off.
        lease.round_sent(3, 200 * MS, 50);
        lease.on_ack(1, 1);
        assert_eq!(lease.grant(1), None);
        assert!(!lease.holds(121 * MS, 0, &quorum));
    }

    #[test]
    fn quorum_lease_grant_is_measured_from_the_request() {
        let quorum = QuorumSpec::new(3);
        let mut q = QuorumLease::new(3, 1, VoteSet::all(3), 0, 147);
        let num = q.next_request(200 * MS, 120, 20);
        assert_eq!(num, 200 * MS);
        assert_eq!(q.request_due(), 220 * MS);
        // A grant for a request never sent (a stale one from before a restart) is ignored.
        q.on_grant(0, 190 * MS, 9, Ballot::ZERO);
        assert_eq!(q.grant(0), None);
        q.on_grant(0, num, 4, Ballot::ZERO);
        let g = q.grant(0).unwrap();
        assert_eq!((g.grant.grantor, g.grant.grantee), (0, 1));
        assert_eq!((g.grant.lease_num, g.grant.granted_at), (num, 200 * MS));
        assert_eq!(
            q.read_bar(210 * MS, 120, &quorum, false),
            None,
            "one of three"
        );
        q.on_grant(1, num, 7, Ballot::ZERO);
        assert_eq!(q.read_bar(210 * MS, 120, &quorum, false), Some(7));
        // Valid for lease_ms from the send, however late the grant arrived.
        assert_eq!(q.read_bar(319 * MS, 120, &quorum, false), Some(7));
        assert_eq!(q.read_bar(320 * MS, 120, &quorum, false), None);
        assert_eq!(q.read_bar(320 * MS, 120, &quorum, true), Some(7), "the bug");
    }

    #[test]
    fn quorum_lease_grantor_owes_holders_until_the_hold_ends() {
        let mut q = QuorumLease::new(3, 0, VoteSet::all(3), 1_000 * MS, 147);
        // Restarted: it forgot whom it promised, so it owes everyone for a whole hold.
        assert_eq!(q.holders(1_146 * MS).len(), 3);
        assert_eq!(q.holders(1_147 * MS), VoteSet::EMPTY);
        assert!(q.on_request(2, 1_200 * MS, 147));
        assert!(q.on_request(2, 1_190 * MS, 147)); // a delayed duplicate does not shorten it
        assert!(q.holders(1_346 * MS).contains(2));
        assert_eq!(q.holders(1_347 * MS), VoteSet::EMPTY);
        // Revoked: requests go unanswered and owe nothing, until the revocation lapses.
        let mut two = VoteSet::EMPTY;
        two.insert(2);
        q.revoke(two, 1_440 * MS);
        assert!(!q.on_request(2, 1_400 * MS, 147));
        assert_eq!(q.holders(1_400 * MS), VoteSet::EMPTY);
        assert!(q.on_request(1, 1_400 * MS, 147), "only 2 is revoked");
        assert!(q.on_request(2, 1_440 * MS, 147));
        assert!(q.holders(1_440 * MS).contains(2));
    }

    #[test]
    fn quorum_lease_grants_only_to_configured_holders() {
        let mut holders = VoteSet::EMPTY;
        holders.insert(0);
        holders.insert(2);
        let mut q = QuorumLease::new(3, 0, holders, 0, 147);
        assert_eq!(
            q.holders(10 * MS),
            VoteSet::all(3),
            "after a restart: everyone (the configuration before the crash may be newer)"
        );
        assert!(!q.on_request(1, 200 * MS, 147), "1 is not a holder");
        assert!(q.on_request(2, 200 * MS, 147));
        let mut two = VoteSet::EMPTY;
        two.insert(2);
        assert_eq!(q.holders(210 * MS), two);
    }

    /// The configuration rule (protocol.md §8, "Lease configuration"): a change decides
    /// only whom new requests are granted to; a removed holder stays owed (named in every
    /// Accepted) until its last grant's hold ends, and an added one is owed from its first
    /// request granted under the new configuration.
    #[test]
    fn quorum_lease_config_change_keeps_obligations_until_they_end() {
        let set = |ids: &[u32]| {
            let mut s = VoteSet::EMPTY;
            for &i in ids {
                s.insert(i);
            }
            s
        };
        let quorum = QuorumSpec::new(3);
        // Grantor 0, past its restart hold; holders {1, 2}.
        let mut g = QuorumLease::new(3, 0, set(&[1, 2]), 0, 147);
        assert!(g.on_request(2, 1_000 * MS, 147));
        assert!(!g.on_request(0, 1_000 * MS, 147), "0 is not a holder yet");
        // Slot c sets the holders to {0, 1}: 2 is removed, 0 added.
        assert!(g.set_configured(set(&[0, 1]), false));
        assert!(!g.set_configured(set(&[0, 1]), false), "no change");
        assert_eq!(g.configured(), set(&[0, 1]));
        assert!(
            !g.on_request(2, 1_010 * MS, 147),
            "no new grant to a removed holder"
        );
        assert!(
            g.holders(1_146 * MS).contains(2),
            "still owed until the hold ends"
        );
        assert!(!g.holders(1_147 * MS).contains(2));
        assert!(g.on_request(0, 1_010 * MS, 147), "0 is a holder now");
        assert!(g.holders(1_156 * MS).contains(0));
        // The injected bug forgets the removed holder at the config slot.
        let mut bug = QuorumLease::new(3, 0, set(&[1, 2]), 0, 147);
        assert!(bug.on_request(2, 1_000 * MS, 147));
        bug.set_configured(set(&[0, 1]), true);
        assert!(!bug.holders(1_001 * MS).contains(2), "the bug");
        // The removed holder asks for nothing more; the grants it holds run to their end
        // (their grantors still owe it), then it reads locally no more.
        let mut h = QuorumLease::new(3, 2, set(&[1, 2]), 0, 147);
        assert!(h.is_holder());
        let num = h.next_request(1_000 * MS, 120, 20);
        h.on_grant(0, num, 5, Ballot::ZERO);
        h.on_grant(1, num, 5, Ballot::ZERO);
        assert_eq!(h.read_bar(1_010 * MS, 120, &quorum, false), Some(5));
        h.set_configured(set(&[0, 1]), false);
        assert!(!h.is_holder());
        assert_eq!(h.read_bar(1_010 * MS, 120, &quorum, false), Some(5));
        assert_eq!(h.read_bar(1_120 * MS, 120, &quorum, false), None);
        h.on_grant(2, num, 5, Ballot::ZERO);
        assert_eq!(
            h.grant(2),
            None,
            "a late grant of an old request is ignored"
        );
        // Ids past the group are ignored.
        assert!(h.set_configured(VoteSet::from_bits(u64::MAX), false));
        assert_eq!(h.configured(), VoteSet::all(3));
    }

    #[test]
    fn grantor_hold_covers_drift() {
        assert_eq!(grantor_hold_ms(120, 0), 120);
        assert_eq!(grantor_hold_ms(120, 10), 147); // 120 × 110 / 90, rounded up
        assert_eq!(grantor_hold_ms(100, 80), grantor_hold_ms(100, 49));
    }
}
