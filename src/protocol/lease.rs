//! Read leases: the leader lease (DESIGN §5) and its bookkeeping, kept apart from the
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
use super::types::{Nanos, ReplicaId};

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
    fn grantor_hold_covers_drift() {
        assert_eq!(grantor_hold_ms(120, 0), 120);
        assert_eq!(grantor_hold_ms(120, 10), 147); // 120 × 110 / 90, rounded up
        assert_eq!(grantor_hold_ms(100, 80), grantor_hold_ms(100, 49));
    }
}
