//! Per-group metrics, named like etcd's under `mpaxos_` (architecture §2: no shared lock on the
//! hot path).
//!
//! Counters and gauges are atomics written only by the group's thread. Histograms in
//! prometheus-client sit behind a mutex, so the group thread records observations into a
//! bounded local buffer and moves them into the shared histogram on a timer, off the
//! per-message path.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct GroupMetrics {
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub leader_changes_seen_total: Counter,
    pub proposals_committed_total: Counter,
    pub proposals_applied_total: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed_total: Counter,
    pub wal_fsync_duration_seconds: Histogram,
    pub batch_size: Histogram,
    /// Per peer (index = replica id; our own slot is unused): heartbeat round trips.
    pub peer_round_trip_time_seconds: Vec<Histogram>,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    /// Quorum leases (`read_mode = "quorum-lease"`), at this replica.
    pub lease_reads_local_total: Counter,
    pub lease_reads_waited_total: Counter,
    pub lease_reads_forwarded_total: Counter,
    pub lease_reads_gave_up_total: Counter,
    pub writes_held_for_lease_holders_total: Counter,
    /// Lease configuration changes this replica switched to (applied from the log, or from
    /// an installed or restored snapshot).
    pub lease_config_changes_total: Counter,
    /// Fast Paxos (`protocol = "fast-paxos"`), counted by the leader.
    pub fast_chosen_total: Counter,
    pub classic_chosen_total: Counter,
    pub fast_collisions_total: Counter,
    pub fast_recovery_timeouts_total: Counter,
    pub fast_recovered_total: Counter,
    pub fast_recovery_seconds_total: Counter<f64, AtomicU64>,
    pub fast_mode_switches_total: Counter,
    /// Fast Paxos: client writes held until their deadline, and voted past it.
    pub fast_held_total: Counter,
    pub fast_late_total: Counter,
    /// Snapshots: taken here and durable, installed from a peer; the log floor; slots and
    /// client sessions held in memory.
    pub snapshots_total: Counter,
    pub snapshots_installed_total: Counter,
    pub log_floor: Gauge,
    pub log_slots: Gauge,
    pub sessions: Gauge,
    /// Bytes of WAL a restart would read (oldest retained segment to the last write).
    pub wal_retained_bytes: Gauge,
}

impl GroupMetrics {
    /// Creates the metrics of group `group` and registers them (labelled `group="g"`; peer
    /// round trips also `peer="p"`).
    pub fn register(registry: &mut Registry, group: u32, replicas: u32, me: u32) -> GroupMetrics {
        let m = GroupMetrics {
            has_leader: Gauge::default(),
            is_leader: Gauge::default(),
            leader_changes_seen_total: Counter::default(),
            proposals_committed_total: Counter::default(),
            proposals_applied_total: Counter::default(),
            proposals_pending: Gauge::default(),
            proposals_failed_total: Counter::default(),
            wal_fsync_duration_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            peer_round_trip_time_seconds: (0..replicas)
                .map(|_| Histogram::new(exponential_buckets(0.000_01, 2.0, 20)))
                .collect(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            lease_reads_local_total: Counter::default(),
            lease_reads_waited_total: Counter::default(),
            lease_reads_forwarded_total: Counter::default(),
            lease_reads_gave_up_total: Counter::default(),
            writes_held_for_lease_holders_total: Counter::default(),
            lease_config_changes_total: Counter::default(),
            fast_chosen_total: Counter::default(),
            classic_chosen_total: Counter::default(),
            fast_collisions_total: Counter::default(),
            fast_recovery_timeouts_total: Counter::default(),
            fast_recovered_total: Counter::default(),
            fast_recovery_seconds_total: Counter::default(),
            fast_mode_switches_total: Counter::default(),
            fast_held_total: Counter::default(),
            fast_late_total: Counter::default(),
            snapshots_total: Counter::default(),
            snapshots_installed_total: Counter::default(),
            log_floor: Gauge::default(),
            log_slots: Gauge::default(),
            wal_retained_bytes: Gauge::default(),
            sessions: Gauge::default(),
        };
        let sub = registry.sub_registry_with_label(("group".into(), group.to_string().into()));
        sub.register(
            "snapshots",
            "Snapshots of the state machine this replica took and made durable",
            m.snapshots_total.clone(),
        );
        sub.register(
            "snapshots_installed",
            "Snapshots this replica installed from a peer",
            m.snapshots_installed_total.clone(),
        );
        sub.register(
            "log_floor",
            "Log floor: the slot of the newest snapshot; slots up to it are released",
            m.log_floor.clone(),
        );
        sub.register(
            "log_slots",
            "Slots held in memory above the log floor",
            m.log_slots.clone(),
        );
        sub.register(
            "wal_retained_bytes",
            "Bytes of WAL a restart would read: from the oldest segment not yet released to the last write",
            m.wal_retained_bytes.clone(),
        );
        sub.register(
            "sessions",
            "Client sessions in the exactly-once table",
            m.sessions.clone(),
        );
        sub.register(
            "has_leader",
            "1 if this group knows a leader",
            m.has_leader.clone(),
        );
        sub.register(
            "is_leader",
            "1 if this replica leads this group",
            m.is_leader.clone(),
        );
        sub.register(
            "leader_changes_seen",
            "Leader changes this replica has seen",
            m.leader_changes_seen_total.clone(),
        );
        sub.register(
            "proposals_committed",
            "Commands committed (chosen) in this group",
            m.proposals_committed_total.clone(),
        );
        sub.register(
            "proposals_applied",
            "Commands applied to the state machine",
            m.proposals_applied_total.clone(),
        );
        sub.register(
            "proposals_pending",
            "Client commands waiting for commit at this replica",
            m.proposals_pending.clone(),
        );
        sub.register(
            "proposals_failed",
            "Client commands refused or dropped (not leader, queue full, leadership lost)",
            m.proposals_failed_total.clone(),
        );
        sub.register(
            "wal_fsync_duration_seconds",
            "Time from handing a group commit to the WAL until it is durable",
            m.wal_fsync_duration_seconds.clone(),
        );
        sub.register(
            "batch_size",
            "Commands per committed slot",
            m.batch_size.clone(),
        );
        sub.register(
            "commit_index",
            "Highest committed slot",
            m.commit_index.clone(),
        );
        sub.register(
            "applied_index",
            "Highest applied slot",
            m.applied_index.clone(),
        );
        sub.register(
            "lease_reads_local",
            "Linearizable reads a non-leader served from its quorum lease",
            m.lease_reads_local_total.clone(),
        );
        sub.register(
            "lease_reads_waited",
            "Quorum-lease local reads that waited for an accepted slot to be applied",
            m.lease_reads_waited_total.clone(),
        );
        sub.register(
            "lease_reads_forwarded",
            "Linearizable reads a non-leader redirected to the leader: no valid quorum lease, or (lease_pending = forward) a slot to apply first",
            m.lease_reads_forwarded_total.clone(),
        );
        sub.register(
            "lease_config_changes",
            "Quorum-lease configuration changes this replica switched to (from the log or a snapshot)",
            m.lease_config_changes_total.clone(),
        );
        sub.register(
            "lease_reads_gave_up",
            "Quorum-lease local reads redirected after waiting an election timeout",
            m.lease_reads_gave_up_total.clone(),
        );
        sub.register(
            "writes_held_for_lease_holders",
            "Leader: slots that had a majority but still waited for a quorum-lease holder's vote (a slow or dead holder)",
            m.writes_held_for_lease_holders_total.clone(),
        );
        sub.register(
            "fast_chosen",
            "Fast Paxos, leader: slots chosen by a fast quorum of matching votes",
            m.fast_chosen_total.clone(),
        );
        sub.register(
            "classic_chosen",
            "Leader: slots chosen in a classic round (every slot with Multi-Paxos; recoveries and fallback with Fast Paxos)",
            m.classic_chosen_total.clone(),
        );
        sub.register(
            "fast_collisions",
            "Fast Paxos, leader: slots recovered because their votes collided",
            m.fast_collisions_total.clone(),
        );
        sub.register(
            "fast_recovery_timeouts",
            "Fast Paxos, leader: slots recovered because they stayed undecided too long",
            m.fast_recovery_timeouts_total.clone(),
        );
        sub.register(
            "fast_recovered",
            "Fast Paxos, leader: recovered slots that have been chosen",
            m.fast_recovered_total.clone(),
        );
        sub.register(
            "fast_recovery_seconds",
            "Fast Paxos, leader: time from a recovered slot's first known vote to its choice, summed",
            m.fast_recovery_seconds_total.clone(),
        );
        sub.register(
            "fast_mode_switches",
            "Fast Paxos, leader: fast rounds opened or closed (closed when no fast quorum answers)",
            m.fast_mode_switches_total.clone(),
        );
        sub.register(
            "fast_held",
            "Fast Paxos: client writes held until their deadline (fast_order = deadline)",
            m.fast_held_total.clone(),
        );
        sub.register(
            "fast_late",
            "Fast Paxos: client writes that arrived past their deadline (voted at once)",
            m.fast_late_total.clone(),
        );
        for (peer, h) in m.peer_round_trip_time_seconds.iter().enumerate() {
            if peer as u32 == me {
                continue;
            }
            registry
                .sub_registry_with_labels(
                    [
                        ("group".into(), group.to_string().into()),
                        ("peer".into(), peer.to_string().into()),
                    ]
                    .into_iter(),
                )
                .register(
                    "peer_round_trip_time_seconds",
                    "Heartbeat round trips to a peer",
                    h.clone(),
                );
        }
        m
    }
}

/// Observations buffered by the group thread, flushed into shared histograms on a timer.
pub struct LocalHistogram {
    target: Histogram,
    pending: Vec<f64>,
}

/// Observations kept between flushes, at most; beyond it new ones are dropped (metrics are
/// a sample, the hot path must not grow).
const LOCAL_HISTOGRAM_MAX: usize = 4096;

impl LocalHistogram {
    pub fn new(target: Histogram) -> LocalHistogram {
        LocalHistogram {
            target,
            pending: Vec::with_capacity(LOCAL_HISTOGRAM_MAX),
        }
    }

    pub fn observe(&mut self, v: f64) {
        if self.pending.len() < LOCAL_HISTOGRAM_MAX {
            self.pending.push(v);
        }
    }

    pub fn flush(&mut self) {
        for v in self.pending.drain(..) {
            self.target.observe(v);
        }
    }
}
