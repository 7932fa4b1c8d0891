//! Nemeses on real processes: the fault schedule a seed generates, and running it against a
//! [`LocalCluster`].
//!
//! The schedule is fixed by the seed before the run starts: what happens, when, for how long, and
//! which follower (by its rank among the followers at that moment). Which replica is the leader
//! is only known when a fault starts, so "the leader" is resolved then (from the replicas'
//! status) and the executed log records the replica that was hit.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::netns::NetNs;
use crate::client::{Client, ClientOptions};
use crate::fault::{Control, DiskMode};
use crate::server::local::LocalCluster;

/// A nemesis family, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// kill -9 of the leader, of a follower or of every replica, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT, of the leader or a follower, shorter or longer than the
    /// election timeout.
    Pause,
    /// Cut the network between one side and the rest (the leader alone, one follower, or a
    /// minority), then heal it; needs network namespaces (`netns.rs`).
    Partition,
    /// A replica's clock runs fast or slow, within the configured drift bound
    /// (`timeouts.clock_drift_percent`); needs the `fault-injection` build.
    Clock,
    /// Stall, EIO or ENOSPC on a replica's WAL; needs the `fault-injection` build.
    Disk,
    /// Opt-in (not in `all`): clock faults beyond the drift bound (a much faster or slower
    /// clock, forward jumps, backward jumps that stop the clock); with leases, stale reads are
    /// expected to be possible.
    ClockBeyond,
    /// Opt-in (not in `all`): an fsync that lies (writes acknowledged, kept in memory), then
    /// kill -9 of the lying replicas; acknowledged writes may be lost, by design.
    DiskLie,
    /// Opt-in (not in `all`): the leader's clock at 10 % speed while a partition cuts it off
    /// from the other replicas (clients still reach it): the case a lease exists for, with
    /// the clock the lease trusts broken. Stale reads are expected. Needs namespaces too.
    ClockBeyondIsolated,
    /// Opt-in (not in `all`): the target side cannot send to the rest, which can still send
    /// to it.
    PartitionOneWay,
    /// Opt-in (not in `all`): a two-way partition that comes and goes every 50-400 ms for
    /// the length of the fault.
    PartitionFlap,
}

impl Nemesis {
    pub const ALL: [Nemesis; 5] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Clock,
        Nemesis::Disk,
    ];

    /// Every name `--nemesis` accepts besides `all` (which is [`Nemesis::ALL`], the issue's
    /// five families; the partition variants below are named one by one).
    pub const NAMED: [Nemesis; 10] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Clock,
        Nemesis::Disk,
        Nemesis::ClockBeyond,
        Nemesis::DiskLie,
        Nemesis::ClockBeyondIsolated,
        Nemesis::PartitionOneWay,
        Nemesis::PartitionFlap,
    ];

    /// Whether it needs network namespaces.
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Nemesis::Partition
                | Nemesis::PartitionOneWay
                | Nemesis::PartitionFlap
                | Nemesis::ClockBeyondIsolated
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::Pause => "pause",
            Nemesis::Partition => "partition",
            Nemesis::Clock => "clock",
            Nemesis::Disk => "disk",
            Nemesis::ClockBeyond => "clock-beyond",
            Nemesis::DiskLie => "disk-lie",
            Nemesis::ClockBeyondIsolated => "clock-beyond-isolated",
            Nemesis::PartitionOneWay => "partition-one-way",
            Nemesis::PartitionFlap => "partition-flap",
        }
    }

    /// Whether it needs the `fault-injection` build (servers that obey a control file).
    pub fn needs_fault_injection(self) -> bool {
        matches!(
            self,
            Nemesis::Clock
                | Nemesis::Disk
                | Nemesis::ClockBeyond
                | Nemesis::DiskLie
                | Nemesis::ClockBeyondIsolated
        )
    }

    /// Why this nemesis cannot run with this binary (None: it can).
    pub fn unsupported(self) -> Option<&'static str> {
        if self.needs_fault_injection() && !crate::fault::ENABLED {
            return Some(
                "this mpaxos binary was built without the fault-injection feature, so its \
                 servers cannot fault their clock or disk; run the test build: \
                 cargo run --features fault-injection -- chaos ...",
            );
        }
        None
    }
}

/// Parses `kill,pause,...` or `all`.
pub fn parse_nemeses(list: &str) -> Result<Vec<Nemesis>, String> {
    let mut out = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word == "all" {
            out.extend(Nemesis::ALL);
            continue;
        }
        match Nemesis::NAMED.into_iter().find(|n| n.name() == word) {
            Some(n) => out.push(n),
            None => {
                return Err(format!(
                    "unknown nemesis {word:?}: use kill, pause, partition, clock, disk, all, \
                     partition-one-way, partition-flap, clock-beyond, clock-beyond-isolated or disk-lie"
                ))
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Who a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Leader,
    /// The follower of this rank (modulo their number) among the replicas that are not the
    /// leader when the fault starts.
    Follower(u32),
    All,
    /// A minority of floor(N/2) replicas, chosen by this number.
    Minority(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL, restart after `heal_after_ms`.
    Kill,
    /// SIGSTOP, SIGCONT after `heal_after_ms`.
    Pause,
    /// The target replicas can neither send to nor receive from the others until
    /// `heal_after_ms` (clients still reach everyone).
    Partition,
    /// The target replicas cannot send to the others; the others can still send to them.
    PartitionOneWay,
    /// A two-way partition, healed and cut again every `flap_ms`.
    PartitionFlap,
    /// The clock runs at (1 + `amount`/10⁶) × real speed until the heal, within the drift
    /// bound.
    ClockSkew,
    /// The same, beyond the drift bound.
    ClockSkewBeyond,
    /// The clock jumps by `amount` ms at the start (backward: it stands still that long);
    /// beyond the drift bound. The heal changes nothing.
    ClockJump,
    /// WAL completions reported `amount` ms late until the heal.
    DiskStall,
    /// WAL writes fail with EIO; the heal restarts the replica with a good disk.
    DiskEio,
    /// WAL writes fail with ENOSPC; the heal restarts the replica with a good disk.
    DiskEnospc,
    /// The clock at (1 + `amount`/10⁶) × real speed and a two-way partition of the target
    /// from the other replicas, both until the heal; beyond the drift bound.
    ClockSlowIsolated,
    /// fsync lies (writes kept in memory) until the heal, which kill -9s the replica and
    /// restarts it with a truthful disk.
    DiskLie,
}

impl FaultKind {
    pub fn is_partition(self) -> bool {
        matches!(
            self,
            FaultKind::Partition
                | FaultKind::PartitionOneWay
                | FaultKind::PartitionFlap
                | FaultKind::ClockSlowIsolated
        )
    }

    /// Faults outside what the protocol promises to survive.
    pub fn beyond_bound(self) -> bool {
        matches!(
            self,
            FaultKind::ClockSkewBeyond
                | FaultKind::ClockJump
                | FaultKind::ClockSlowIsolated
                | FaultKind::DiskLie
        )
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// Since the workload started.
    pub at_ms: u64,
    pub kind: FaultKind,
    pub target: Target,
    pub heal_after_ms: u64,
    /// Why this length: e.g. "shorter than the election timeout".
    pub note: String,
    /// For a flapping partition: how long each cut and each heal lasts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub flap_ms: u64,
    /// Clock and disk faults: the rate in ppm, the jump in ms, the stall in ms.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub amount: i64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

/// Timing the schedule is built around (the cluster's own settings).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    pub lease_ms: u64,
    pub clock_drift_percent: u64,
}

/// The first fault starts this long after the workload (a baseline of healthy operations).
const FIRST_FAULT_MS: u64 = 1000;
/// Quiet time between a heal and the next fault, at least.
const QUIET_MIN_MS: u64 = 800;
const QUIET_MAX_MS: u64 = 2000;

/// The schedule `seed` generates for faults of the given families over `duration_ms`. Every
/// fault heals before `duration_ms`.
pub fn schedule(
    seed: u64,
    nemeses: &[Nemesis],
    replicas: u32,
    duration_ms: u64,
    timing: Timing,
) -> Vec<Fault> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
    let usable: Vec<Nemesis> = nemeses
        .iter()
        .copied()
        .filter(|n| n.unsupported().is_none())
        .collect();
    let mut faults = Vec::new();
    if usable.is_empty() {
        return faults;
    }
    let mut t = FIRST_FAULT_MS;
    loop {
        let nemesis = usable[rng.gen_range(0..usable.len())];
        let follower = Target::Follower(rng.gen_range(0..replicas.max(1)));
        let fault = match nemesis {
            Nemesis::Kill => {
                let target = match rng.gen_range(0..10) {
                    0..=3 => Target::Leader,
                    4..=7 => follower,
                    _ => Target::All,
                };
                Fault {
                    at_ms: t,
                    kind: FaultKind::Kill,
                    target,
                    heal_after_ms: rng.gen_range(200..=2000),
                    note: "kill -9, then restart".into(),
                    flap_ms: 0,
                    amount: 0,
                }
            }
            Nemesis::Partition => {
                let target = match rng.gen_range(0..10) {
                    0..=3 => Target::Leader,
                    4..=6 => follower,
                    _ => Target::Minority(rng.gen()),
                };
                Fault {
                    at_ms: t,
                    kind: FaultKind::Partition,
                    target,
                    heal_after_ms: rng.gen_range(300..=3000),
                    note: "partition: the target against the rest".into(),
                    flap_ms: 0,
                    amount: 0,
                }
            }
            Nemesis::PartitionOneWay | Nemesis::PartitionFlap => {
                let target = if rng.gen_bool(0.5) {
                    Target::Leader
                } else {
                    Target::Minority(rng.gen())
                };
                let one_way = nemesis == Nemesis::PartitionOneWay;
                Fault {
                    at_ms: t,
                    kind: if one_way {
                        FaultKind::PartitionOneWay
                    } else {
                        FaultKind::PartitionFlap
                    },
                    target,
                    heal_after_ms: rng.gen_range(500..=4000),
                    note: if one_way {
                        "one-way partition: the target cannot send to the rest".into()
                    } else {
                        "flapping partition: the target against the rest, on and off".into()
                    },
                    flap_ms: if one_way { 0 } else { rng.gen_range(50..=400) },
                    amount: 0,
                }
            }
            Nemesis::Clock => {
                // Rate differences up to the bound: one replica's clock against the rest.
                let bound = timing.clock_drift_percent as i64 * 10_000;
                let mag = rng.gen_range(bound / 5..=bound);
                let rate = if rng.gen_bool(0.5) { mag } else { -mag };
                Fault {
                    at_ms: t,
                    kind: FaultKind::ClockSkew,
                    target: if rng.gen_bool(0.5) {
                        Target::Leader
                    } else {
                        follower
                    },
                    heal_after_ms: rng.gen_range(1000..=4000),
                    note: format!(
                        "clock rate {:+.1}% (bound {}%)",
                        rate as f64 / 1e4,
                        timing.clock_drift_percent
                    ),
                    flap_ms: 0,
                    amount: rate,
                }
            }
            Nemesis::ClockBeyond => {
                let (kind, target, amount, heal_after_ms, note) = match rng.gen_range(0..4) {
                    0 => {
                        let r = -rng.gen_range(500_000..=900_000);
                        (
                            FaultKind::ClockSkewBeyond,
                            Target::Leader,
                            r,
                            rng.gen_range(1000..=4000),
                            format!("leader clock at {:.0}% speed: its lease outlasts the others' promises", 100.0 + r as f64 / 1e4),
                        )
                    }
                    1 => {
                        let r = rng.gen_range(1_000_000..=3_000_000);
                        (
                            FaultKind::ClockSkewBeyond,
                            follower,
                            r,
                            rng.gen_range(1000..=4000),
                            format!(
                                "follower clock at {:.0}% speed: its promises expire early",
                                100.0 + r as f64 / 1e4
                            ),
                        )
                    }
                    2 => {
                        let j = rng.gen_range(100..=2000);
                        (
                            FaultKind::ClockJump,
                            follower,
                            j,
                            500,
                            format!("follower clock jumps {j} ms forward"),
                        )
                    }
                    _ => {
                        let j: i64 = rng.gen_range(100..=2000);
                        (
                            FaultKind::ClockJump,
                            Target::Leader,
                            -j,
                            j as u64 + 200,
                            format!("leader clock jumps {j} ms back (stands still {j} ms)"),
                        )
                    }
                };
                Fault {
                    at_ms: t,
                    kind,
                    target,
                    heal_after_ms,
                    note,
                    flap_ms: 0,
                    amount,
                }
            }
            Nemesis::ClockBeyondIsolated => Fault {
                at_ms: t,
                kind: FaultKind::ClockSlowIsolated,
                target: Target::Leader,
                heal_after_ms: rng.gen_range(1000..=3000),
                note: "leader clock at 10% speed, cut off from the other replicas".into(),
                flap_ms: 0,
                amount: -900_000,
            },
            Nemesis::Disk => {
                let target = if rng.gen_bool(0.5) {
                    Target::Leader
                } else {
                    follower
                };
                let (kind, amount, heal_after_ms, note) = match rng.gen_range(0..4) {
                    0 | 1 => {
                        let ms = rng.gen_range(20..=500);
                        (
                            FaultKind::DiskStall,
                            ms,
                            rng.gen_range(1000..=4000),
                            format!("WAL completions {ms} ms late"),
                        )
                    }
                    2 => (
                        FaultKind::DiskEio,
                        0,
                        rng.gen_range(500..=3000),
                        "WAL writes fail with EIO, then restart on a good disk".to_string(),
                    ),
                    _ => (
                        FaultKind::DiskEnospc,
                        0,
                        rng.gen_range(500..=3000),
                        "WAL writes fail with ENOSPC, then restart on a good disk".to_string(),
                    ),
                };
                Fault {
                    at_ms: t,
                    kind,
                    target,
                    heal_after_ms,
                    note,
                    flap_ms: 0,
                    amount,
                }
            }
            Nemesis::DiskLie => {
                let target = match rng.gen_range(0..4) {
                    0 | 1 => Target::All,
                    2 => Target::Leader,
                    _ => follower,
                };
                Fault {
                    at_ms: t,
                    kind: FaultKind::DiskLie,
                    target,
                    heal_after_ms: rng.gen_range(300..=2000),
                    note: "fsync lies, then kill -9 and restart with a truthful disk".into(),
                    flap_ms: 0,
                    amount: 0,
                }
            }
            Nemesis::Pause => {
                let target = if rng.gen_bool(0.6) {
                    Target::Leader
                } else {
                    follower
                };
                let min = timing.election_timeout_min_ms;
                let max = timing.election_timeout_max_ms;
                let (heal_after_ms, note) = if rng.gen_bool(0.5) {
                    let below = timing.lease_ms.min(min).max(20);
                    (
                        rng.gen_range(10..below),
                        format!("SIGSTOP shorter than the lease ({} ms)", timing.lease_ms),
                    )
                } else {
                    (
                        rng.gen_range(max + 200..=max + 2000),
                        format!("SIGSTOP longer than the election timeout ({min}-{max} ms)"),
                    )
                };
                Fault {
                    at_ms: t,
                    kind: FaultKind::Pause,
                    target,
                    heal_after_ms,
                    note,
                    flap_ms: 0,
                    amount: 0,
                }
            }
        };
        if fault.at_ms + fault.heal_after_ms >= duration_ms {
            break;
        }
        t = fault.at_ms + fault.heal_after_ms + rng.gen_range(QUIET_MIN_MS..=QUIET_MAX_MS);
        faults.push(fault);
    }
    faults
}

/// What the nemesis did, on the workload's clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Executed {
    pub fault: Fault,
    /// The replicas hit.
    pub replicas: Vec<u32>,
    /// The leader the status said, if any replica claimed to lead.
    pub leader_seen: Option<u32>,
    pub start_ns: u64,
    pub heal_ns: u64,
    /// Anything that went wrong healing (a replica that would not restart, ...).
    pub problems: Vec<String>,
}

/// The replica that claims leadership at the highest ballot (None: nobody answered as leader).
pub fn current_leader(cluster: &LocalCluster) -> Option<u32> {
    let mut opts = ClientOptions::new(cluster.endpoints());
    opts.attempt_timeout = Duration::from_millis(300);
    opts.op_timeout = Duration::from_millis(600);
    let mut client = Client::connect(opts).ok()?;
    client
        .status_all()
        .into_iter()
        .filter_map(|(_, g, s)| s.ok().filter(|s| g == 0 && s.role == "leader"))
        .max_by_key(|s| (s.ballot.round, s.ballot.replica))
        .map(|s| s.replica)
}

/// The replicas `target` names now.
pub fn resolve(target: Target, replicas: u32, leader: Option<u32>) -> Vec<u32> {
    match target {
        Target::All => (0..replicas).collect(),
        Target::Minority(pick) => {
            let mut order: Vec<u32> = (0..replicas).collect();
            order.sort_by_key(|&r| {
                (pick ^ u64::from(r).wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .wrapping_mul(0xff51_afd7_ed55_8ccd)
            });
            order.truncate((replicas / 2).max(1) as usize);
            order.sort_unstable();
            order
        }
        Target::Leader => vec![leader.unwrap_or(0)],
        Target::Follower(rank) => {
            let followers: Vec<u32> = (0..replicas).filter(|&r| Some(r) != leader).collect();
            if followers.is_empty() {
                vec![0]
            } else {
                vec![followers[rank as usize % followers.len()]]
            }
        }
    }
}

/// Rewrites replica `r`'s fault control file (its clock and disk faults, test builds only).
fn set_control(
    cluster: &LocalCluster,
    r: u32,
    change: &dyn Fn(&mut Control),
) -> Result<(), String> {
    let dir = cluster.config.replica_data_dir(r);
    let mut control = crate::fault::read_control(&dir)?;
    change(&mut control);
    crate::fault::write_control(&dir, &control)
}

/// Starts `fault` on `who`; returns what went wrong.
pub fn inject(
    cluster: &mut LocalCluster,
    net: Option<&NetNs>,
    kind: FaultKind,
    amount: i64,
    who: &[u32],
) -> Vec<String> {
    let mut problems = Vec::new();
    for &r in who {
        let control = |f: &dyn Fn(&mut Control)| set_control(cluster, r, f);
        let done = match kind {
            FaultKind::Kill => {
                cluster.signal(r, libc::SIGKILL);
                Ok(())
            }
            FaultKind::Pause => {
                cluster.signal(r, libc::SIGSTOP);
                Ok(())
            }
            FaultKind::ClockSkew | FaultKind::ClockSkewBeyond | FaultKind::ClockSlowIsolated => {
                control(&|c| c.rate_ppm = amount)
            }
            FaultKind::ClockJump => control(&|c| c.offset_ns += amount * 1_000_000),
            FaultKind::DiskStall => control(&|c| {
                c.disk = DiskMode::Stall;
                c.stall_ms = amount.max(0) as u64;
            }),
            FaultKind::DiskEio => control(&|c| c.disk = DiskMode::Eio),
            FaultKind::DiskEnospc => control(&|c| c.disk = DiskMode::Enospc),
            FaultKind::DiskLie => control(&|c| c.disk = DiskMode::Lie),
            FaultKind::Partition | FaultKind::PartitionOneWay | FaultKind::PartitionFlap => Ok(()),
        };
        if let Err(e) = done {
            problems.push(format!("replica {r}: {e}"));
        }
    }
    if kind.is_partition() {
        match net {
            Some(net) => {
                let cut = if kind == FaultKind::PartitionOneWay {
                    net.partition_one_way(who)
                } else {
                    net.partition(who)
                };
                if let Err(e) = cut {
                    problems.push(format!("partition failed: {e}"));
                }
            }
            None => problems.push("a partition without network namespaces".into()),
        }
    }
    problems
}

/// Ends `fault` on `who`; returns what went wrong.
pub fn heal(
    cluster: &mut LocalCluster,
    net: Option<&NetNs>,
    kind: FaultKind,
    who: &[u32],
) -> Vec<String> {
    let mut problems = Vec::new();
    for &r in who {
        match kind {
            FaultKind::Kill => {
                if let Err(e) = cluster.start(r) {
                    problems.push(format!("replica {r} did not restart: {e}"));
                }
            }
            FaultKind::Pause => cluster.signal(r, libc::SIGCONT),
            FaultKind::ClockSkew | FaultKind::ClockSkewBeyond | FaultKind::ClockSlowIsolated => {
                if let Err(e) = set_control(cluster, r, &|c| c.rate_ppm = 0) {
                    problems.push(format!("replica {r}: {e}"));
                }
            }
            FaultKind::DiskStall => {
                if let Err(e) = set_control(cluster, r, &|c| c.disk = DiskMode::Ok) {
                    problems.push(format!("replica {r}: {e}"));
                }
            }
            FaultKind::DiskEio | FaultKind::DiskEnospc | FaultKind::DiskLie => {
                // The operator's fix: a good disk and a restart (which recovers from what is
                // durable; with a lying disk, the writes it held in memory are gone).
                cluster.signal(r, libc::SIGKILL);
                if let Err(e) = set_control(cluster, r, &|c| c.disk = DiskMode::Ok) {
                    problems.push(format!("replica {r}: {e}"));
                }
            }
            FaultKind::ClockJump
            | FaultKind::Partition
            | FaultKind::PartitionOneWay
            | FaultKind::PartitionFlap => {}
        }
    }
    if matches!(
        kind,
        FaultKind::DiskEio | FaultKind::DiskEnospc | FaultKind::DiskLie
    ) {
        std::thread::sleep(Duration::from_millis(200));
        for &r in who {
            if let Err(e) = cluster.start(r) {
                problems.push(format!("replica {r} did not restart: {e}"));
            }
        }
    }
    if kind.is_partition() {
        if let Some(Err(e)) = net.map(NetNs::heal) {
            problems.push(format!("healing the partition failed: {e}"));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        election_timeout_min_ms: 150,
        election_timeout_max_ms: 300,
        lease_ms: 120,
        clock_drift_percent: 10,
    };

    #[test]
    fn a_seed_fixes_the_schedule_and_every_fault_heals_in_time() {
        let n = [Nemesis::Kill, Nemesis::Pause];
        let a = schedule(7, &n, 3, 30_000, TIMING);
        assert_eq!(a, schedule(7, &n, 3, 30_000, TIMING));
        assert_ne!(a, schedule(8, &n, 3, 30_000, TIMING));
        assert!(a.len() >= 5, "{a:?}");
        for f in &a {
            assert!(f.at_ms + f.heal_after_ms < 30_000);
            if f.kind == FaultKind::Pause {
                assert!(
                    f.heal_after_ms < TIMING.lease_ms || f.heal_after_ms > 300,
                    "{f:?}"
                );
            }
        }
        for w in a.windows(2) {
            assert!(w[0].at_ms + w[0].heal_after_ms + QUIET_MIN_MS <= w[1].at_ms);
        }
        assert!(a.iter().any(|f| f.kind == FaultKind::Kill));
        assert!(a.iter().any(|f| f.kind == FaultKind::Pause));
    }

    #[test]
    fn unsupported_nemeses_schedule_nothing() {
        // Clock and disk faults need the fault-injection build.
        assert_eq!(
            schedule(1, &[Nemesis::Clock, Nemesis::Disk], 3, 30_000, TIMING).is_empty(),
            !crate::fault::ENABLED
        );
        assert!(!schedule(1, &[Nemesis::Partition], 3, 30_000, TIMING).is_empty());
        assert_eq!(
            parse_nemeses("pause,kill,kill").unwrap(),
            vec![Nemesis::Kill, Nemesis::Pause]
        );
        assert_eq!(parse_nemeses("all").unwrap().len(), 5);
        assert_eq!(
            parse_nemeses("partition-flap,partition-one-way").unwrap(),
            vec![Nemesis::PartitionOneWay, Nemesis::PartitionFlap]
        );
        assert!(parse_nemeses("flood").is_err());
        assert_eq!(
            parse_nemeses("clock-beyond,disk-lie").unwrap(),
            vec![Nemesis::ClockBeyond, Nemesis::DiskLie]
        );
    }

    #[test]
    fn clock_faults_stay_within_the_drift_bound_unless_beyond() {
        for seed in 0..50 {
            for f in schedule(seed, &[Nemesis::Clock], 3, 60_000, TIMING) {
                assert_eq!(f.kind, FaultKind::ClockSkew);
                assert!(f.amount.abs() <= 100_000 && f.amount != 0, "{f:?}");
                assert!(!f.kind.beyond_bound());
            }
            for f in schedule(
                seed,
                &[Nemesis::ClockBeyond, Nemesis::DiskLie],
                3,
                60_000,
                TIMING,
            ) {
                assert!(f.kind.beyond_bound(), "{f:?}");
            }
        }
    }

    #[test]
    fn targets_resolve_against_the_leader_of_the_moment() {
        assert_eq!(resolve(Target::Leader, 3, Some(2)), vec![2]);
        assert_eq!(resolve(Target::Follower(0), 3, Some(0)), vec![1]);
        assert_eq!(resolve(Target::Follower(1), 3, Some(0)), vec![2]);
        assert_eq!(resolve(Target::Follower(2), 3, Some(0)), vec![1]);
        assert_eq!(resolve(Target::All, 3, None), vec![0, 1, 2]);
        for pick in 0..20 {
            let m = resolve(Target::Minority(pick), 5, None);
            assert_eq!(m.len(), 2);
            assert!(m[0] < m[1] && m[1] < 5);
        }
    }
}
