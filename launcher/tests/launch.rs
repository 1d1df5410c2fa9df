//! fomaml-launch with shell scripts as workers on one node: environment, logs, failure handling,
//! restarts, the store it hosts.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{launch, launcher, reported_port, stderr, wait_for, Running};
use fomaml_store::{StoreClient, StoreError};

#[test]
fn every_rank_gets_torchruns_environment_and_its_own_logs() {
    let logs = tempfile::tempdir().unwrap();
    let script = "echo $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK $GROUP_WORLD_SIZE $MASTER_ADDR \
                  $MASTER_PORT $TORCHELASTIC_RUN_ID $TORCHELASTIC_RESTART_COUNT $TORCHELASTIC_USE_AGENT_STORE \
                  $OMP_NUM_THREADS; echo oops-$RANK >&2";
    let log_dir = logs.path().to_str().unwrap();
    let out = launch(&[
        "--nproc",
        "3",
        "--master-port",
        "0",
        "--rdzv-id",
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
    let port = reported_port(&stderr(&out)).expect("node 0 reports the port it got").to_string();
    for rank in 0..3 {
        let dir = logs.path().join(format!("r1/attempt_0/{rank}"));
        let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap();
        let fields: Vec<&str> = stdout.split_whitespace().collect();
        let r = rank.to_string();
        assert_eq!(&fields[..11], [&r, &r, "3", "3", "0", "1", "127.0.0.1", &port, "r1", "0", "True"]);
        assert!(fields[11].parse::<usize>().unwrap() >= 1, "OMP_NUM_THREADS is set when unset");
        assert_eq!(std::fs::read_to_string(dir.join("stderr.log")).unwrap().trim(), format!("oops-{rank}"));
    }
}

#[test]
fn a_failing_rank_stops_the_others_and_is_reported_as_the_root_cause() {
    let logs = tempfile::tempdir().unwrap();
    let script = r#"if [ "$RANK" = 1 ]; then sleep 0.2; printf '{"message": {"message": "CUDA out of memory"}}' > "$TORCHELASTIC_ERROR_FILE"; exit 3; fi; sleep 60"#;
    let started = Instant::now();
    let out = launch(&[
        "--standalone",
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
    let out = launch(&["--standalone", "--nproc", "2", "--stop-grace", "1", "--", "sh", "-c", script]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("SIGKILL"), "{}", stderr(&out));
}

#[test]
fn the_group_restarts_while_restarts_remain() {
    // Fails on the first attempt only.
    let script = r#"[ "$TORCHELASTIC_RESTART_COUNT" = 0 ] && [ "$RANK" = 1 ] && exit 7; exit 0"#;
    let args = |restarts| ["--standalone", "--nproc", "2", "--max-restarts", restarts, "--", "sh", "-c", script];
    let out = launch(&args("1"));
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = "rank 1 (local_rank 1) exited with code 7; restarting the group (attempt 1 of 1 restarts)";
    assert!(stderr(&out).contains(expected), "{}", stderr(&out));

    let out = launch(&args("0"));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_invocations_are_refused_clearly() {
    let cases: &[(&[&str], &str)] = &[
        (&["--nnodes", "2", "--", "true"], "--nnodes 2 needs the same --rdzv-id on every node"),
        (
            &["--nnodes", "2", "--node-rank", "2", "--rdzv-id", "x", "--", "true"],
            "--node-rank 2 must be below --nnodes 2",
        ),
        (&["--nnodes", "2", "--standalone", "--rdzv-id", "x", "--", "true"], "--standalone is for a single node"),
        (&["--rdzv-timeout", "0", "--", "true"], "--rdzv-timeout 0 must be a positive"),
        (&["--tee", "3", "--", "true"], "--log-dir"),
        (&["--standalone", "--nproc", "2", "--", "/no/such/program"], "/no/such/program"),
        (
            &["--nnodes", "2", "--node-rank", "1", "--master-port", "0", "--rdzv-id", "x", "--", "true"],
            "--master-port 0 picks a free port on node 0, which prints it: give node 1 that port",
        ),
    ];
    for (args, expected) in cases {
        let out = launch(args);
        assert!(!out.status.success() && stderr(&out).contains(expected), "{args:?}: {}", stderr(&out));
    }
    let out = launch(&["--nproc", "2"]);
    assert!(!out.status.success(), "a command is required");
}

#[test]
fn standalone_serves_the_store_on_a_free_port() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo $MASTER_ADDR $MASTER_PORT > "$OUT/port.tmp"; mv "$OUT/port.tmp" "$OUT/port"
        until [ -e "$OUT/go" ]; do sleep 0.05; done"#;
    // --run-id: the older spelling of --rdzv-id, still accepted.
    let mut cmd = launcher(&["--standalone", "--run-id", "solo", "--", "sh", "-c", script]);
    cmd.env("OUT", dir.path());
    let running = Running::spawn(cmd);
    wait_for(&dir.path().join("port"), Duration::from_secs(10));
    let told = std::fs::read_to_string(dir.path().join("port")).unwrap();
    let (addr, port) = told.trim().split_once(' ').unwrap();
    let port: u16 = port.parse().unwrap();
    assert!(addr == "127.0.0.1" && port != 29500, "{told}");
    StoreClient::connect(&format!("{addr}:{port}"), "solo", Duration::from_secs(5))
        .expect("the store is at MASTER_PORT");
    std::fs::write(dir.path().join("go"), "").unwrap();
    let done = running.finish(Duration::from_secs(10));
    assert!(done.status.success(), "{}", done.stderr);
}

#[test]
fn a_busy_port_fails_before_any_worker_starts_naming_the_port() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let script = format!("touch {}", marker.display());
    // One node binds the master address itself, several bind every interface: both collide.
    for extra in [&["--nnodes", "1"][..], &["--nnodes", "2", "--rdzv-id", "busy"]] {
        let mut args = vec!["--master-port", &port, "--nproc", "2"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", &script]);
        let started = Instant::now();
        let out = launch(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(&format!("port {port} is already in use")), "{err}");
        assert!(err.contains("--master-port") && err.contains("--standalone"), "{err}");
        assert!(!marker.exists(), "no worker may start on a busy port");
    }
    drop(taken);
}

#[test]
fn the_launcher_hosts_the_store_across_restarts_and_tells_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"echo $TORCHELASTIC_USE_AGENT_STORE > "$OUT/agent_$TORCHELASTIC_RESTART_COUNT"
        if [ "$TORCHELASTIC_RESTART_COUNT" = 0 ]; then until [ -e "$OUT/fail" ]; do sleep 0.05; done; exit 1; fi
        until [ -e "$OUT/go" ]; do sleep 0.05; done"#;
    let mut cmd = launcher(&[
        "--master-port",
        "0",
        "--rdzv-id",
        "store-test",
        "--max-restarts",
        "1",
        "--stop-grace",
        "1",
        "--",
        "sh",
        "-c",
        script,
    ]);
    cmd.env("OUT", dir.path());
    let mut running = Running::spawn(cmd);
    let path = |name: &str| dir.path().join(name);
    let timeout = Duration::from_secs(10);
    let addr = format!("127.0.0.1:{}", running.store_port(timeout));

    wait_for(&path("agent_0"), timeout);
    let mut client = StoreClient::connect(&addr, "store-test", timeout).expect("the launcher serves the store");
    client.set("before-restart", b"kept").unwrap();
    match StoreClient::connect(&addr, "another-run", timeout) {
        Err(StoreError::WrongRun { theirs, .. }) => assert_eq!(theirs, "store-test"),
        Err(e) => panic!("expected a refusal of the wrong run id, got {e}"),
        Ok(_) => panic!("the store accepted another run id"),
    }

    std::fs::write(path("fail"), "").unwrap();
    wait_for(&path("agent_1"), timeout);
    let mut again = StoreClient::connect(&addr, "store-test", timeout).expect("the store outlives a restart");
    assert_eq!(again.get("before-restart").unwrap(), b"kept");

    std::fs::write(path("go"), "").unwrap();
    let done = running.finish(timeout);
    assert!(done.status.success(), "{}", done.stderr);
    for attempt in 0..2 {
        assert_eq!(std::fs::read_to_string(path(&format!("agent_{attempt}"))).unwrap().trim(), "True");
    }
    let gone = StoreClient::connect(&addr, "store-test", Duration::from_millis(300));
    assert!(gone.is_err(), "the store ends with the launcher");
}

#[test]
fn the_launcher_does_not_link_libtorch() {
    let binary = std::fs::read(env!("CARGO_BIN_EXE_fomaml-launch")).unwrap();
    let needle = b"libtorch";
    assert!(!binary.windows(needle.len()).any(|w| w == needle), "fomaml-launch must not depend on libtorch");
}

#[test]
fn torchruns_spellings_are_accepted_and_help_explains_every_flag() {
    let logs = tempfile::tempdir().unwrap();
    let out = launch(&[
        "--nproc_per_node=2",
        "--node_rank=0",
        "--master_addr=127.0.0.1",
        "--master_port=0",
        "--max_restarts=0",
        "--monitor_interval=0.05",
        "--rdzv_timeout=5",
        "--rdzv_id=spelt",
        &format!("--log_dir={}", logs.path().display()),
        "--",
        "sh",
        "-c",
        "echo $LOCAL_WORLD_SIZE $MASTER_PORT $TORCHELASTIC_RUN_ID",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let port = reported_port(&stderr(&out)).expect("the port is reported");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = format!("2 {port} spelt");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), [line.as_str(), line.as_str()]);
    assert!(logs.path().join("spelt/attempt_0/1").is_dir());

    let help = launch(&["--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--nproc-per-node",
        "--nnodes",
        "--rdzv-endpoint",
        "--rdzv-backend",
        "--local-ranks-filter",
        "Not elastic",
        "--node-rank",
        "--master-addr",
        "--master-port",
        "--standalone",
        "--rdzv-timeout",
        "--max-restarts",
        "--monitor-interval",
        "--stop-grace",
        "--log-dir",
        "--redirects",
        "--tee",
        "--rdzv-id",
        "TORCHELASTIC_USE_AGENT_STORE=True",
        "SLURM_JOB_NODELIST",
        "--nproc_per_node",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
}

/// A torchrun command line runs as it is: `--nproc-per-node auto`, `--rdzv-endpoint` and
/// `--rdzv-backend`, per-rank `-r` / `-t` maps, `--local-ranks-filter`, the command without `--`;
/// an elastic `--nnodes` is refused saying why.
#[test]
fn torchrun_command_lines_run_as_they_are() {
    let logs = tempfile::tempdir().unwrap();
    let log_dir = format!("--log_dir={}", logs.path().display());
    let script = "echo out-$LOCAL_RANK $LOCAL_WORLD_SIZE; echo err-$LOCAL_RANK >&2";
    let out = launch(&[
        "--nproc_per_node=2",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:0",
        "--rdzv_id=tr",
        &log_dir,
        "-r",
        "0:1",
        "-t",
        "1:2",
        "--local_ranks_filter=1",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(reported_port(&stderr(&out)).is_some(), "port 0 from --rdzv-endpoint: {}", stderr(&out));
    let read =
        |rank: usize, name: &str| std::fs::read_to_string(logs.path().join(format!("tr/attempt_0/{rank}/{name}")));
    // Rank 0: stdout redirected to its file only; its stderr would reach the console, but the
    // filter keeps rank 0 off it. Rank 1: stderr teed (file and console), stdout on the console.
    assert_eq!(read(0, "stdout.log").unwrap().trim(), "out-0 2");
    assert_eq!(read(1, "stderr.log").unwrap().trim(), "err-1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "out-1 2", "{stdout}");
    assert!(stderr(&out).contains("[1]:err-1") && !stderr(&out).contains("err-0"), "{}", stderr(&out));

    let auto = launch(&["--nproc-per-node", "auto", "--standalone", "sh", "-c", "echo $LOCAL_WORLD_SIZE"]);
    assert!(auto.status.success(), "{}", stderr(&auto));
    let n: usize = String::from_utf8_lossy(&auto.stdout).lines().next().unwrap().parse().unwrap();
    assert!(n >= 1, "auto: {n} processes");

    let elastic = launch(&["--nnodes", "1:4", "--", "true"]);
    assert!(!elastic.status.success() && stderr(&elastic).contains("not elastic"), "{}", stderr(&elastic));
    let etcd = launch(&["--rdzv-backend", "etcd", "true"]);
    assert!(!etcd.status.success() && stderr(&etcd).contains("not supported"), "{}", stderr(&etcd));
    let clash = launch(&["--rdzv-endpoint", "n1:29500", "--master-addr", "n2", "true"]);
    assert!(!clash.status.success() && stderr(&clash).contains("name different hosts"), "{}", stderr(&clash));
}

/// Issue: SIGKILL to the launcher (an OOM kill, `scancel -s KILL`) must not leave its ranks training.
#[test]
fn ranks_die_with_a_killed_launcher() {
    let dir = tempfile::tempdir().unwrap();
    // `exec`: the rank process itself sleeps (a shell's own children are not the launcher's ranks).
    let script = r#"echo $$ > "$OUT/pid.$RANK.tmp"; mv "$OUT/pid.$RANK.tmp" "$OUT/pid.$RANK"; exec sleep 60"#;
    let mut cmd = launcher(&["--nproc", "2", "--", "sh", "-c", script]);
    cmd.env("OUT", dir.path());
    let mut running = Running::spawn(cmd);
    let pids: Vec<i32> = (0..2)
        .map(|rank| {
            let path = dir.path().join(format!("pid.{rank}"));
            wait_for(&path, Duration::from_secs(10));
            std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
        })
        .collect();
    // A killed rank may stay a zombie until something reaps it: only a running one counts.
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    assert!(pids.iter().all(|&p| alive(p)), "ranks run");
    running.kill_hard();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let orphans: Vec<&i32> = pids.iter().filter(|&&p| alive(p)).collect();
    for &&p in &orphans {
        // SAFETY: cleaning up the orphan this test made.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    assert!(orphans.is_empty(), "ranks {orphans:?} outlived their SIGKILLed launcher");
}
