//! The short form of `mpaxos chaos` that CI runs: three real replicas under kill -9, SIGSTOP
//! and network partitions (network namespaces; skipped with a printed reason where the kernel
//! or user does not allow them) for about 12 s, clock and disk faults when built with
//! `--features fault-injection` (CI runs this file with and without it), the history checked for linearizability and lost writes. It fails
//! when the checker finds a violation, an acknowledged write is lost, a write reported not
//! applied was applied, or the cluster stays unavailable past the recovery bound after a fault.
//! Long campaigns are README commands, not tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One campaign at a time: two at once on a small machine would stretch every recovery.
static LOCK: Mutex<()> = Mutex::new(());

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mpaxos"))
}

/// Runs `mpaxos chaos` with `args`; returns (success, stdout).
fn chaos(out: &Path, args: &[&str]) -> (bool, String) {
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(binary())
        .arg("chaos")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("RUST_LOG", "warn")
        .output()
        .expect("mpaxos runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("--- stdout\n{stdout}--- stderr\n{stderr}");
    (output.status.success(), stdout)
}

/// `name=value` from a line of `key=value` words.
fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")).map(String::from))
}

#[test]
fn kill_pause_and_partition_on_three_replicas_keep_the_history_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout) = chaos(
        dir.path(),
        &[
            "--replicas",
            "3",
            "--duration",
            "12",
            "--nemesis",
            "kill,pause,partition",
            // Its schedule (`--dry-run`): pause the leader, partition the leader away, two
            // more leader pauses, kill -9 a follower, kill -9 the leader.
            "--seed",
            "4",
        ],
    );
    let last = stdout.lines().last().unwrap_or("");
    assert_eq!(last, "runs=1 anomalies=0 lost=0", "{stdout}");
    assert!(ok, "mpaxos chaos failed:\n{stdout}");
    // The run did real work under real faults (a run that checked nothing would pass too).
    let run = stdout
        .lines()
        .find(|l| l.starts_with("run 1/1"))
        .expect("a run line");
    let num = |name: &str| -> f64 { field(run, name).unwrap().parse().unwrap() };
    assert!(num("ops") >= 500.0, "{run}");
    assert!(num("ok") >= 0.9 * num("ops"), "{run}");
    assert!(num("faults") >= 3.0, "{run}");
    assert!(num("acked_unique") >= 50.0, "{run}");
    assert_eq!(field(run, "linearizable").as_deref(), Some("yes"), "{run}");
    let kept = dir.path().join("seed-4");
    for f in [
        "history.jsonl",
        "schedule.json",
        "nemesis.jsonl",
        "summary.json",
    ] {
        assert!(kept.join(f).exists(), "{f} is kept");
    }
    let schedule = std::fs::read_to_string(kept.join("schedule.json")).unwrap();
    assert!(schedule.contains("\"kill\"") || schedule.contains("\"pause\""));
    // Partitions need root and iproute2; without them the run says so (never silently).
    let executed = std::fs::read_to_string(kept.join("nemesis.jsonl")).unwrap();
    assert!(
        executed.contains("\"partition\"") || stdout.contains("nemesis partition: skipped: "),
        "{stdout}"
    );
}

/// Quorum leases on real processes: every replica holds a read lease and each client reads
/// first from its own home replica, so followers answer linearizable reads locally while
/// replicas are killed and paused.
#[test]
fn quorum_lease_reads_at_followers_stay_linearizable_under_kill_and_pause() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout) = chaos(
        dir.path(),
        &[
            "--replicas",
            "3",
            "--duration",
            "8",
            "--nemesis",
            "kill,pause",
            "--read-mode",
            "quorum-lease",
            "--seed",
            "12",
        ],
    );
    assert_eq!(
        stdout.lines().last(),
        Some("runs=1 anomalies=0 lost=0"),
        "{stdout}"
    );
    assert!(ok, "{stdout}");
    let run = stdout
        .lines()
        .find(|l| l.starts_with("run 1/1"))
        .expect("a run line");
    assert!(
        field(run, "ops").unwrap().parse::<u64>().unwrap() >= 300,
        "{run}"
    );
    assert!(
        field(run, "faults").unwrap().parse::<u64>().unwrap() >= 2,
        "{run}"
    );
}

/// Clock and disk faults within what the protocol promises to survive (issue 14): a clock
/// 2-10 % fast or slow (the drift bound is 10 %), WAL completions stalled, and EIO on a
/// follower's and then the leader's WAL (the replica stops its group; the heal restarts it on a
/// good disk). Seed 1's 12 s schedule (`--dry-run`): a follower's clock at -6.1 %, EIO on a
/// follower, a 446 ms stall on a follower, EIO on the leader.
///
/// They need servers built with the test-only `fault-injection` feature (CI runs this file
/// again with `cargo test --features fault-injection --test chaos`). In a default build the
/// same command must skip both with the reason, and this test checks that instead.
#[test]
fn clock_and_disk_faults_within_bounds_keep_the_history_linearizable() {
    let dir = tempfile::tempdir().unwrap();
    if !cfg!(feature = "fault-injection") {
        let (ok, stdout) = chaos(
            dir.path(),
            &["--duration", "2", "--nemesis", "clock,disk", "--seed", "2"],
        );
        for n in ["clock", "disk"] {
            assert!(
                stdout.contains(&format!(
                    "nemesis {n}: skipped: this mpaxos binary was built without the fault-injection feature"
                )),
                "{stdout}"
            );
        }
        assert!(ok, "{stdout}");
        assert_eq!(stdout.lines().last(), Some("runs=1 anomalies=0 lost=0"));
        eprintln!(
            "clock and disk faults not run: this build lacks the fault-injection feature \
             (cargo test --features fault-injection --test chaos runs them)"
        );
        return;
    }
    let (ok, stdout) = chaos(
        dir.path(),
        &[
            "--replicas",
            "3",
            "--duration",
            "12",
            "--nemesis",
            "clock,disk",
            "--seed",
            "1",
        ],
    );
    assert_eq!(
        stdout.lines().last(),
        Some("runs=1 anomalies=0 lost=0"),
        "{stdout}"
    );
    assert!(ok, "{stdout}");
    let run = stdout
        .lines()
        .find(|l| l.starts_with("run 1/1"))
        .expect("a run line");
    assert!(
        field(run, "ops").unwrap().parse::<u64>().unwrap() >= 300,
        "{run}"
    );
    assert_eq!(field(run, "faults").as_deref(), Some("4"), "{run}");
    let kept = dir.path().join("seed-1");
    let executed = std::fs::read_to_string(kept.join("nemesis.jsonl")).unwrap();
    for kind in ["clock-skew", "disk-eio", "disk-stall"] {
        assert!(executed.contains(&format!("\"{kind}\"")), "{executed}");
    }
    // The replicas really obeyed: their logs say so.
    let logs: String = (0..3)
        .map(|i| std::fs::read_to_string(kept.join(format!("replica-{i}.log"))).unwrap())
        .collect();
    assert!(logs.contains("fault injection: clock changed"), "{logs}");
    assert!(
        logs.contains("this group stops taking part: injected fault"),
        "{logs}"
    );
}

/// An fsync that lies (`disk-lie`, opt-in): every replica acknowledges writes it only holds in
/// memory, then all are killed with SIGKILL (seed 2, 8 s: twice). Acknowledged writes can be
/// lost and the registers stop being linearizable — by design, so the run reports them as
/// expected, keeps its directory, and does not count them: the command succeeds. By hand the
/// run lost 231 acknowledged write-once keys and was not linearizable.
#[test]
fn a_lying_fsync_loses_writes_and_the_run_says_it_was_expected() {
    if !cfg!(feature = "fault-injection") {
        eprintln!("disk-lie not run: this build lacks the fault-injection feature");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout) = chaos(
        dir.path(),
        &["--duration", "8", "--nemesis", "disk-lie", "--seed", "2"],
    );
    assert!(ok, "{stdout}");
    assert_eq!(
        stdout.lines().last(),
        Some("runs=1 anomalies=0 lost=0"),
        "{stdout}"
    );
    let run = stdout
        .lines()
        .find(|l| l.starts_with("run 1/1"))
        .expect("a run line");
    let lost: u64 = field(run, "lost").unwrap().parse().unwrap();
    if lost > 0 || field(run, "linearizable").as_deref() == Some("NO") {
        assert!(
            stdout.contains("expected (faults beyond what the protocol promises to survive"),
            "{stdout}"
        );
        assert!(dir.path().join("seed-2/data").exists(), "{stdout}");
    }
    let executed = std::fs::read_to_string(dir.path().join("seed-2/nemesis.jsonl")).unwrap();
    assert!(executed.contains("\"disk-lie\""), "{executed}");
}

/// The harness can fail on real processes: with `skip-value-adoption` injected (a new leader
/// ignores the values phase 1 reports), killing the leader under load loses acknowledged
/// writes. Seed 102's schedule kills the leader twice in 10 s. By hand, with this load (4
/// clients, up to 10 ms between operations; a lighter load leaves a wider window between a
/// leader's reply and its followers learning the commit), the checker or the lost-write check
/// caught the bug in 3 of 3 runs of seed 102 and in each of seeds 103-105.
///
/// Real processes are not deterministic: on a loaded machine a run can miss the window (7 of 10
/// runs caught it under 8 clients with no think time). So the test tries seeds 102-105 in
/// turn and needs one of them to catch it; all four missing it fails the test.
#[test]
fn an_injected_protocol_bug_is_caught_on_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tried = String::new();
    let mut caught = None;
    for seed in ["102", "103", "104", "105"] {
        let (ok, stdout) = chaos(
            dir.path(),
            &[
                "--duration",
                "10",
                "--nemesis",
                "kill",
                "--seed",
                seed,
                "--inject-bug",
                "skip-value-adoption",
            ],
        );
        if !ok {
            caught = Some((seed, stdout));
            break;
        }
        tried += &stdout;
    }
    let Some((seed, stdout)) = caught else {
        panic!("the injected bug went unnoticed in four runs:\n{tried}");
    };
    let last = stdout.lines().last().unwrap_or("");
    let anomalies: u64 = field(last, "anomalies").unwrap().parse().unwrap();
    let lost: u64 = field(last, "lost").unwrap().parse().unwrap();
    assert!(anomalies + lost > 0, "{stdout}");
    assert!(stdout.contains("replay: mpaxos chaos"), "{stdout}");
    let kept = dir.path().join(format!("seed-{seed}"));
    for f in [
        "history.jsonl",
        "schedule.json",
        "nemesis.jsonl",
        "replica-0.log",
    ] {
        assert!(kept.join(f).exists(), "a failing run keeps {f}");
    }
    // The kept history alone is enough to see it again.
    let recheck = Command::new(binary())
        .args(["chaos", "--recheck"])
        .arg(kept.join("history.jsonl"))
        .output()
        .expect("mpaxos runs");
    let text = String::from_utf8_lossy(&recheck.stdout);
    assert!(!recheck.status.success(), "{text}");
    assert!(text.contains("unread=0"), "{text}");
}
