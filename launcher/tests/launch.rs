//! fomaml-launch with shell scripts as workers: environment, logs, failure handling, restarts.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn launch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fomaml-launch")).args(args).output().expect("run fomaml-launch")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn every_rank_gets_torchruns_environment_and_its_own_logs() {
    let logs = tempfile::tempdir().unwrap();
    let script = "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR $MASTER_PORT \
                  $TORCHELASTIC_RUN_ID $TORCHELASTIC_RESTART_COUNT $OMP_NUM_THREADS; echo oops-$RANK >&2";
    let log_dir = logs.path().to_str().unwrap();
    let out = launch(&[
        "--nproc",
        "3",
        "--master-port",
        "29123",
        "--run-id",
        "r1",
        "--log-dir",
        log_dir,
        "--redirects",
        "3",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for rank in 0..3 {
        let dir = logs.path().join(format!("r1/attempt_0/{rank}"));
        let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
        let fields: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(
            &fields[..9],
            [&rank.to_string(), &rank.to_string(), "3", "3", "0", "127.0.0.1", "29123", "r1", "0"]
        );
        assert!(fields[9].parse::<usize>().unwrap() >= 1, "OMP_NUM_THREADS is set when unset");
        assert_eq!(std::fs::read_to_string(dir.join("stderr.log")).unwrap().trim(), format!("oops-{rank}"));
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_is_reported_as_the_root_cause() {
    let logs = tempfile::tempdir().unwrap();
    let script = r#"if [ "$RANK" = 1 ]; then sleep 0.2; printf '{"message": {"message": "CUDA out of memory"}}' > "$TORCHELASTIC_ERROR_FILE"; exit 3; fi; sleep 60"#;
    let started = Instant::now();
    let out = launch(&[
        "--nproc",
        "3",
        "--stop-grace",
        "2",
        "--log-dir",
        logs.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(took < Duration::from_secs(10), "the group must stop promptly, took {took:?}");
    let report = stderr(&out);
    let root = report.find("Root Cause").expect(&report);
    let after = &report[root..];
    assert!(after.contains("rank      : 1 (local_rank: 1)") && after.contains("exitcode  : 3"), "{report}");
    assert!(after.contains("message   : CUDA out of memory"), "{report}");
}

#[test]
fn a_killed_rank_names_the_signal() {
    let script = r#"if [ "$RANK" = 0 ]; then kill -9 $$; fi; sleep 60"#;
    let out = launch(&["--nproc", "2", "--stop-grace", "1", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SIGKILL"), "{}", stderr(&out));
}

#[test]
fn the_group_restarts_while_restarts_remain() {
    // Fails on the first attempt only.
    let script = r#"[ "$TORCHELASTIC_RESTART_COUNT" = 0 ] && [ "$RANK" = 1 ] && exit 7; exit 0"#;
    let out = launch(&["--nproc", "2", "--max-restarts", "1", "--stop-grace", "1", "--", "sh", "-c", script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("restarting the group"), "{}", stderr(&out));

    let out = launch(&["--nproc", "2", "--max-restarts", "0", "--stop-grace", "1", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_invocations_are_refused_clearly() {
    let out = launch(&["--nnodes", "2", "--", "true"]);
    assert!(!out.status.success() && stderr(&out).contains("multi-node"), "{}", stderr(&out));
    let out = launch(&["--tee", "3", "--", "true"]);
    assert!(!out.status.success() && stderr(&out).contains("--log-dir"), "{}", stderr(&out));
    let out = launch(&["--nproc", "2", "--", "/no/such/program"]);
    assert!(!out.status.success() && stderr(&out).contains("/no/such/program"), "{}", stderr(&out));
    let out = launch(&["--nproc", "2"]);
    assert!(!out.status.success(), "a command is required");
}

#[test]
fn standalone_picks_a_free_port() {
    let out = launch(&["--standalone", "--nproc", "1", "--", "sh", "-c", "echo $MASTER_PORT"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(port > 0 && port != 29500);
}

#[test]
fn the_launcher_does_not_link_libtorch() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_fomaml-launch")).unwrap();
    let needle = b"libtorch";
    assert!(!binary.windows(needle.len()).any(|w| w == needle), "fomaml-launch must not depend on libtorch");
}
