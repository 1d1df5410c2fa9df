//! Several nodes on one machine: one fomaml-launch per node, joined through node 0's store; and
//! the flags Slurm's variables fill in.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{launcher, wait_for, Finished, Running};

const LONG: Duration = Duration::from_secs(30);

/// The launcher of node `node` of 2, `nproc` ranks each, with `OUT` set for the workers. Node 0
/// takes port 0 (a free one, which it reports); the others are given what it reported.
fn node(node: usize, port: u16, nproc: usize, extra: &[&str], out: &Path, script: &str) -> Command {
    let (node, port, nproc) = (node.to_string(), port.to_string(), nproc.to_string());
    let mut args = vec!["--nnodes", "2", "--node-rank", &node, "--nproc", &nproc, "--master-port", &port];
    args.extend_from_slice(&["--master-addr", "127.0.0.1", "--stop-grace", "1"]);
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut cmd = launcher(&args);
    cmd.env("OUT", out);
    cmd
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Node 0 on a port the system picks, and that port.
fn start_node0(nproc: usize, extra: &[&str], out: &Path, script: &str) -> (Running, u16) {
    let mut node0 = Running::spawn(node(0, 0, nproc, extra, out, script));
    let port = node0.store_port(LONG);
    (node0, port)
}

fn assert_ok(f: &Finished, who: &str) {
    assert!(f.status.success(), "{who} failed:\n{}", f.stderr);
}

#[test]
fn two_nodes_get_global_ranks_and_node_0_outlasts_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo $RANK $LOCAL_RANK $WORLD_SIZE $GROUP_RANK $LOCAL_WORLD_SIZE $GROUP_WORLD_SIZE $ROLE_RANK \
        $MASTER_ADDR $MASTER_PORT $TORCHELASTIC_RUN_ID $TORCHELASTIC_USE_AGENT_STORE > "$OUT/rank_$RANK"
        echo "log of $RANK"
        if [ "$GROUP_RANK" = 1 ]; then until [ -e "$OUT/release" ]; do sleep 0.05; done; fi"#;
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().to_str().unwrap();
    let run = ["--rdzv-id", "mn", "--log-dir", log_dir, "--redirects", "1"];
    // (A node that starts before node 0's store waits for it: the store client's retries, tested
    // in tests/comm.rs.) A Slurm host list must not beat --master-addr.
    let (mut node0, port) = start_node0(2, &run, dir.path(), script);
    let mut cmd1 = node(1, port, 2, &run, dir.path(), script);
    cmd1.env("SLURM_JOB_NODELIST", "nosuchhost[1-2]");
    let node1 = Running::spawn(cmd1);

    for rank in 0..4 {
        wait_for(&dir.path().join(format!("rank_{rank}")), LONG);
    }
    // Node 0's workers are done, node 1's are not: node 0 must keep the store up for them.
    std::thread::sleep(Duration::from_millis(800));
    assert!(node0.is_running(), "node 0's launcher left before node 1 finished");
    std::fs::write(dir.path().join("release"), "").unwrap();
    assert_ok(&node1.finish(LONG), "node 1");
    assert_ok(&node0.finish(LONG), "node 0");

    for rank in 0..4 {
        let fields: Vec<String> =
            read(dir.path(), &format!("rank_{rank}")).split_whitespace().map(String::from).collect();
        let expected = [rank, rank % 2, 4, rank / 2, 2, 2, rank].map(|n| n.to_string());
        assert_eq!(fields[..7], expected, "rank {rank}");
        assert_eq!(fields[7..], ["127.0.0.1", &port.to_string(), "mn", "True"], "rank {rank}");
        // One directory per global rank, although both nodes share the log directory.
        let log = read(&logs.path().join(format!("mn/attempt_0/{rank}")), "stdout.log");
        assert_eq!(log.trim(), format!("log of {rank}"));
    }
}

#[test]
fn a_wrong_run_id_or_different_flags_are_refused_at_once_and_node_0_names_who_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"touch "$OUT/started_$RANK""#;
    let (node0, port) = start_node0(1, &["--rdzv-id", "job-alpha", "--rdzv-timeout", "4"], dir.path(), script);

    let refusals: [(&[&str], usize, &[&str]); 2] = [
        (&["--rdzv-id", "job-beta"], 1, &["\"job-alpha\"", "\"job-beta\""]),
        (&["--rdzv-id", "job-alpha"], 2, &["--nproc 2", "--nproc 1", "node 1 was started with"]),
    ];
    for (extra, nproc, expected) in refusals {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--rdzv-timeout", "60"]);
        let refused = Running::spawn(node(1, port, nproc, &args, dir.path(), script)).finish(LONG);
        assert!(!refused.status.success(), "{extra:?} was accepted");
        assert!(refused.took < Duration::from_secs(5), "{extra:?}: refused only after {:?}", refused.took);
        assert_eq!(refused.stderr.lines().count(), 1, "one line: {}", refused.stderr);
        for e in expected {
            assert!(refused.stderr.contains(e), "{extra:?}: {e} not in {}", refused.stderr);
        }
    }

    let timed_out = node0.finish(LONG);
    assert!(!timed_out.status.success());
    assert!(timed_out.stderr.contains("attempt 0: node 1 did not join within 4 s"), "{}", timed_out.stderr);
    assert!(timed_out.took < Duration::from_secs(15), "took {:?}", timed_out.took);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "no worker may start without every node");
}

/// Rank 3 (node 1) fails in attempt 0; everyone else would sleep for a minute.
const FAILS_ONCE: &str = r#"echo $TORCHELASTIC_RESTART_COUNT >> "$OUT/attempts_$RANK"
    if [ "$TORCHELASTIC_RESTART_COUNT" = 0 ]; then
        if [ "$RANK" = 3 ]; then sleep 0.3; exit 5; fi
        sleep 60
    fi"#;

#[test]
fn a_failure_on_one_node_restarts_every_node() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--rdzv-id", "restarts", "--max-restarts", "1"];
    let (node0, port) = start_node0(2, &extra, dir.path(), FAILS_ONCE);
    let node1 = Running::spawn(node(1, port, 2, &extra, dir.path(), FAILS_ONCE));
    let (done1, done0) = (node1.finish(LONG), node0.finish(LONG));
    assert_ok(&done0, "node 0");
    assert_ok(&done1, "node 1");
    assert!(done0.took < Duration::from_secs(15), "node 0 took {:?}: its workers were not stopped", done0.took);
    for rank in 0..4 {
        assert_eq!(read(dir.path(), &format!("attempts_{rank}")), "0\n1\n", "rank {rank}");
    }
    let restart = "node 1 failed: rank 3 (local_rank 1) exited with code 5; restarting the group (attempt 1 of 1";
    assert!(done0.stderr.contains(restart), "{}", done0.stderr);
    assert!(done1.stderr.contains(restart), "{}", done1.stderr);
}

#[test]
fn without_restarts_a_failure_on_one_node_stops_the_other_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--rdzv-id", "no-restarts"];
    let (node0, port) = start_node0(2, &extra, dir.path(), FAILS_ONCE);
    let node1 = Running::spawn(node(1, port, 2, &extra, dir.path(), FAILS_ONCE));
    let (done1, done0) = (node1.finish(LONG), node0.finish(LONG));
    assert_eq!(done1.status.code(), Some(1), "{}", done1.stderr);
    let root = done1.stderr.find("Root Cause").expect(&done1.stderr);
    assert!(done1.stderr[root..].contains("rank      : 3 (local_rank: 1)"), "{}", done1.stderr);
    assert_eq!(done0.status.code(), Some(1), "{}", done0.stderr);
    let why = "stopped this node's workers: node 1 failed: rank 3 (local_rank 1) exited with code 5";
    assert!(done0.stderr.contains(why), "{}", done0.stderr);
    assert!(done0.took < Duration::from_secs(15), "node 0 took {:?}", done0.took);
}

/// The launcher of node `id` as Slurm would start it: no flags but the port and `extra`.
fn slurm_node(id: &str, nodelist: (&str, &str), port: u16, extra: &[&str], out: &Path) -> Command {
    let script = r#"echo $RANK $WORLD_SIZE $GROUP_RANK $MASTER_ADDR $TORCHELASTIC_RUN_ID > "$OUT/rank_$RANK""#;
    let port = port.to_string();
    let mut args = vec!["--master-port", &port];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script]);
    let mut cmd = launcher(&args);
    cmd.env("SLURM_NNODES", "2").env("SLURM_NODEID", id).env(nodelist.0, nodelist.1).env("SLURM_JOB_ID", "4242");
    cmd.env("OUT", out);
    cmd
}

#[test]
fn slurm_variables_stand_in_for_absent_flags() {
    let dir = tempfile::tempdir().unwrap();
    let nodelist = ("SLURM_JOB_NODELIST", "127.0.0.[1-2]");
    let mut node0 = Running::spawn(slurm_node("0", nodelist, 0, &[], dir.path()));
    let port = node0.store_port(LONG);
    let node1 = Running::spawn(slurm_node("1", nodelist, port, &[], dir.path()));
    assert_ok(&node1.finish(LONG), "node 1");
    assert_ok(&node0.finish(LONG), "node 0");
    assert_eq!(read(dir.path(), "rank_0").trim(), "0 2 0 127.0.0.1 4242");
    assert_eq!(read(dir.path(), "rank_1").trim(), "1 2 1 127.0.0.1 4242");
}

#[test]
fn explicit_flags_beat_slurm_variables_and_a_bad_host_list_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = 0;
    // --nnodes 1: the whole run is this node, whatever SLURM_NODEID and the host list say.
    let cmd = slurm_node("1", ("SLURM_JOB_NODELIST", "nosuchhost[1-2]"), port, &["--nnodes", "1"], dir.path());
    assert_ok(&Running::spawn(cmd).finish(LONG), "--nnodes 1");
    assert_eq!(read(dir.path(), "rank_0").trim().split(' ').take(4).collect::<Vec<_>>(), ["0", "1", "0", "127.0.0.1"]);

    for var in ["SLURM_JOB_NODELIST", "SLURM_NODELIST"] {
        let bad = Running::spawn(slurm_node("1", (var, "gpu[1-"), port, &[], dir.path())).finish(LONG);
        assert!(!bad.status.success(), "{var}");
        assert!(bad.stderr.contains(&format!("{var}: host list \"gpu[1-\"")), "{}", bad.stderr);
        assert!(bad.stderr.contains("--master-addr") && bad.took < Duration::from_secs(5), "{}", bad.stderr);
    }
}

#[test]
fn a_node_that_already_finished_is_not_restarted_for() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"if [ "$GROUP_RANK" = 1 ]; then sleep 1; exit 4; fi"#;
    let extra = ["--rdzv-id", "late-failure", "--max-restarts", "3"];
    let (node0, port) = start_node0(1, &extra, dir.path(), script);
    let node1 = Running::spawn(node(1, port, 1, &extra, dir.path(), script));
    let (done1, done0) = (node1.finish(LONG), node0.finish(LONG));
    assert_eq!(done1.status.code(), Some(1), "{}", done1.stderr);
    assert!(done1.stderr.contains("not restarting: node 0 already finished and would not rejoin"), "{}", done1.stderr);
    assert!(!done1.stderr.contains("restarting the group"), "{}", done1.stderr);
    // Node 0's own workers succeeded: it says what happened elsewhere but does not fail.
    assert_ok(&done0, "node 0");
    assert!(
        done0.stderr.contains("succeeded, but node 1 failed: rank 1 (local_rank 0) exited with code 4"),
        "{}",
        done0.stderr
    );
    assert!(done0.took < Duration::from_secs(15), "node 0 took {:?}", done0.took);
}
