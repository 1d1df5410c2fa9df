//! FSDP-style sharding against the whole model: the same run, sharded on 1, 2 and 4 CPU ranks,
//! ends with the same θ (and the same losses) as one unsharded process on the same global batches.
//! Multi-rank runs go through `fomaml-launch`, as a user starts them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::train::{synthetic_run, SyntheticRun};
use fomaml::checkpoint;
use fomaml::config::schema::{Algorithm, InnerOptimizerType, Sharding};
use fomaml::data::synthetic::SyntheticSpec;
use fomaml::metrics::read_jsonl;
use fomaml::train::Trainer;
use tch::Tensor;

/// The sharded runs below compute in fp64 (`model.dtype: f64`), where they may differ from the
/// whole model only in summation order. The bound on θ follows from that. A gradient entry's
/// rounding error is at most ~1e-15 in absolute terms (fp64's 1.1e-16 times the magnitude of the
/// summed terms, O(1) for this model). Adam turns a gradient difference δ into an update
/// difference of at most lr·δ/eps_adam (the slope of g/(|g|+eps) at g = 0): 1e-2 · 1e-15 / 1e-8
/// = 1e-9 per step, for the largest rate used here (Reptile's and META-LoRA's inner Adam), and
/// the three steps below add up to 3e-9. In fp32 the same bound is 1e-3, which is why these
/// tests cannot run in fp32: on some CPUs fp32 runs differed by 1.1e-5.
const TOLERANCE: f64 = 1e-8;
/// Relative difference of logged losses and norms, which Adam's per-element steps cannot amplify
/// the way they can a near-zero gradient entry: fp64 rounding with ample room.
const LOSS_TOLERANCE: f64 = 1e-9;

fn small_run(algorithm: Algorithm, lora: bool) -> SyntheticRun {
    let spec = SyntheticSpec { train_tasks: 4, eval_tasks: 2, support: 12, query: 12, test: 12, seed: 42 };
    let mut run = synthetic_run(&spec);
    let c = &mut run.config;
    c.model.dtype = "f64".into();
    c.meta.algorithm = algorithm;
    c.meta.meta_batch_size = 2;
    c.meta.num_inner_steps = 2;
    c.meta.inner_batch_size = 5;
    c.meta.query_batch_size = 6;
    c.trainer.total_steps = 3;
    c.trainer.test_freq = 3;
    c.trainer.num_threads = Some(1);
    c.checkpoint.save_freq = 0;
    if algorithm == Algorithm::Reptile {
        // An Adam rate: at the embedded default's SGD rate (0.05) Adam's per-element steps turn
        // rounding-level differences between the sharded and whole gradients into 1e-4 ones.
        (c.meta.inner_optimizer, c.meta.inner_lr) = (InnerOptimizerType::Adam, 1e-2);
    }
    if algorithm == Algorithm::MetaLora {
        // configs/bins/meta_lora.yaml's AdamW rate (the embedded default's 0.05 is an SGD rate).
        c.meta.inner_lr = 1e-2;
    }
    if lora {
        (c.model.lora_rank, c.model.lora_alpha, c.model.lora_dropout) = (4, 8.0, 0.0);
    }
    run
}

/// θ of a checkpoint by name.
fn theta(checkpoint_dir: &Path) -> Vec<(String, Tensor)> {
    checkpoint::shards::read_params(checkpoint_dir).unwrap().1
}

/// Max-abs difference of two θ's, logged with what was compared (the margin to the bound is the
/// evidence that the bound is not tuned to the outcome).
fn compare(what: &str, a: &[(String, Tensor)], b: &[(String, Tensor)], bound: f64) {
    let diff = max_abs_diff(a, b);
    eprintln!("{what}: max |Δθ| = {diff:.3e} (bound {bound:.1e})");
    assert!(diff <= bound, "{what}: θ differs by {diff}, more than {bound}");
}

fn max_abs_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

/// Every logged loss of a run (timings dropped).
fn losses(run_dir: &Path) -> Vec<(u64, String, f64)> {
    let mut out = Vec::new();
    for record in read_jsonl(run_dir.join("metrics.jsonl")).unwrap() {
        for (name, value) in record.scalars {
            if name.contains("loss") || name.contains("exact_match") || name == "meta/grad_norm" {
                out.push((record.step, name, value));
            }
        }
    }
    out
}

fn assert_same_losses(a: &[(u64, String, f64)], b: &[(u64, String, f64)]) {
    assert_eq!(a.len(), b.len());
    for ((sa, na, va), (sb, nb, vb)) in a.iter().zip(b) {
        assert_eq!((sa, na), (sb, nb));
        assert!((va - vb).abs() <= LOSS_TOLERANCE * va.abs().max(1.0), "step {sa} {na}: {va} vs {vb}");
    }
}

fn train(run: &SyntheticRun, name: &str, sharding: Sharding) -> PathBuf {
    let mut config = run.config.clone();
    config.trainer.default_local_dir = run.run_dir(name).display().to_string();
    config.trainer.sharding = sharding;
    Trainer::new(config).unwrap().run().unwrap().last_checkpoint.unwrap()
}

/// The sharded runner on one rank (units gathered, recomputed and reduced one at a time, the
/// tied head's gradient added to the embeddings') against the whole model's autograd.
#[test]
fn one_rank_sharded_matches_the_whole_model_for_every_algorithm() {
    for (algorithm, lora) in [
        (Algorithm::Fomaml, false),
        (Algorithm::Fomaml, true),
        (Algorithm::MetaLora, true),
        (Algorithm::Reptile, false),
        (Algorithm::Sft, false),
    ] {
        let run = small_run(algorithm, lora);
        let whole = train(&run, "whole", Sharding::Auto);
        let sharded = train(&run, "sharded", Sharding::Fsdp);
        let loaded = checkpoint::load(&sharded).unwrap();
        assert!(loaded.meta.layout.is_some(), "{algorithm:?}: the sharded run wrote a whole checkpoint");
        compare(
            &format!("{algorithm:?} lora={lora}, 1 rank sharded vs whole"),
            &theta(&whole),
            &theta(&sharded),
            TOLERANCE,
        );
        assert_same_losses(&losses(&run.run_dir("whole")), &losses(&run.run_dir("sharded")));
    }
}

/// `fomaml-launch`, next to the test's `fomaml` binary, brought up to date first (it never
/// links libtorch, so that is quick; `cargo test --test sharded` alone would not build it).
pub fn launcher() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status =
                Command::new(env!("CARGO")).args(["build", "--quiet", "-p", "fomaml-launch"]).status().unwrap();
            assert!(status.success(), "cannot build fomaml-launch");
            PathBuf::from(env!("CARGO_BIN_EXE_fomaml")).with_file_name("fomaml-launch")
        })
        .clone()
}

fn launch(nproc: usize, config: &Path, extra: &[&str]) -> std::process::Output {
    let out = Command::new(launcher())
        .args(["--standalone", "--nproc", &nproc.to_string(), "--"])
        .arg(env!("CARGO_BIN_EXE_fomaml"))
        .args(["train", "--config"])
        .arg(config)
        .args(extra)
        .env("FOMAML_COLLECTIVE_TIMEOUT_S", "60")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fomaml-launch --nproc {nproc} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_config(run: &SyntheticRun, name: &str) -> PathBuf {
    let mut config = run.config.clone();
    config.trainer.default_local_dir = run.run_dir(name).display().to_string();
    let path = run.path().join(format!("{name}.yaml"));
    std::fs::write(&path, config.to_yaml()).unwrap();
    path
}

fn newest(run_dir: &Path) -> PathBuf {
    checkpoint::newest(&run_dir.join("checkpoints")).unwrap().expect("a checkpoint")
}

/// Issue: world sizes 1, 2 and 4 give the same θ after 3 meta-steps as one unsharded process on
/// the same global batch. Batches of 5 and 6 rows split unevenly over 4 ranks.
#[test]
fn two_and_four_ranks_match_one_process() {
    let run = small_run(Algorithm::Fomaml, false);
    let whole = train(&run, "whole", Sharding::Auto);
    for nproc in [2, 4] {
        let name = format!("ranks{nproc}");
        launch(nproc, &write_config(&run, &name), &[]);
        let dir = newest(&run.run_dir(&name));
        let loaded = checkpoint::load(&dir).unwrap();
        assert_eq!(loaded.meta.world_size, nproc);
        assert_eq!(loaded.files.len(), nproc, "one file per rank");
        compare(&format!("FOMAML, {nproc} ranks vs whole"), &theta(&whole), &theta(&dir), TOLERANCE);
        assert_same_losses(&losses(&run.run_dir("whole")), &losses(&run.run_dir(&name)));
        // `fomaml plan`'s per-rank state is what the ranks hold.
        let measured = rank_state_mib(&run.run_dir(&name));
        let planned = planned_state_mib(&run, nproc);
        assert!((measured - planned).abs() < 1e-9, "{nproc} ranks: measured {measured} MiB, planned {planned}");
    }
}

fn rank_state_mib(run_dir: &Path) -> f64 {
    let records = read_jsonl(run_dir.join("metrics.jsonl")).unwrap();
    records[0].scalars.iter().find(|(n, _)| n == "perf/rank_state_mib").expect("logged").1
}

fn planned_state_mib(run: &SyntheticRun, gpus: usize) -> f64 {
    use fomaml::plan::{plan, Workload};
    let model = fomaml::model::ModelConfig::from_dir(Path::new(&run.config.model.partial_pretrain)).unwrap();
    let work =
        Workload { gpus, seq_len: 64, scored_fraction: 0.5, mfu: 0.4, overhead_bytes: 0.0, measured_row_tokens: None };
    plan(&run.config, &model, &work, None).unwrap().rank_state_bytes / (1 << 20) as f64
}

/// A checkpoint written by 4 ranks resumes on 2 and one by 2 ranks on 4 (θ and Adam's moments
/// resharded on read); either run then ends where the uninterrupted run does. The 4-rank
/// checkpoint also resumes as a whole model, and exports (consolidated) to an HF directory that
/// transformers loads with our logits.
#[test]
fn checkpoints_reshard_between_world_sizes_and_export_consolidated() {
    let run = small_run(Algorithm::Fomaml, false);
    let whole = train(&run, "whole", Sharding::Auto);
    for (first, second) in [(4, 2), (2, 4)] {
        let name = format!("from{first}to{second}");
        let config = write_config(&run, &name);
        launch(first, &config, &["--stop-at-step", "2"]);
        let stopped = newest(&run.run_dir(&name));
        assert_eq!(checkpoint::load(&stopped).unwrap().meta.world_size, first);
        let out = launch(second, &config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("resuming from"), "{stderr}");
        let dir = newest(&run.run_dir(&name));
        assert_eq!(checkpoint::load(&dir).unwrap().meta.world_size, second);
        compare(&format!("FOMAML, {first} → {second} ranks vs whole"), &theta(&whole), &theta(&dir), TOLERANCE);
    }

    // 4 ranks → one whole process, resumed in-process from a copy of the step-2 checkpoint.
    let mut config = run.config.clone();
    config.trainer.default_local_dir = run.run_dir("from4to1").display().to_string();
    config.checkpoint.resume_mode = fomaml::config::schema::ResumeMode::ResumePath;
    let four = run.run_dir("from4to2").join("checkpoints").join(checkpoint::step_dir_name(2));
    config.checkpoint.resume_path = Some(four.display().to_string());
    let summary = Trainer::new(config).unwrap().run().unwrap();
    assert_eq!(summary.resumed_from.as_deref(), Some(four.as_path()));
    compare(
        "FOMAML, 4 ranks → whole vs whole",
        &theta(&whole),
        &theta(summary.last_checkpoint.as_ref().unwrap()),
        TOLERANCE,
    );

    // Export of a sharded checkpoint: the ranks' slices joined back into HF tensors.
    let sharded = newest(&run.run_dir("from2to4"));
    let exported = run.path().join("exported");
    let status = Command::new(env!("CARGO_BIN_EXE_fomaml"))
        .args(["export", sharded.to_str().unwrap(), exported.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let weights = common::assert_transformers_logits_match(&exported, run.path());
    let mut named: Vec<(String, Tensor)> = weights.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    // The export is fp32: θ rounded to the nearest fp32, half an ulp of its largest entry.
    let whole = theta(&whole);
    let largest = whole.iter().map(|(_, t)| t.abs().max().double_value(&[])).fold(0.0, f64::max);
    let rounding = largest * f64::from(f32::EPSILON) / 2.0;
    compare("fp32 export of 4 ranks vs whole", &whole, &named, TOLERANCE + rounding);
}

fn launcher_args(nproc: usize, extra: &[&str]) -> Command {
    let mut cmd = Command::new(launcher());
    cmd.args(["--standalone", "--nproc", &nproc.to_string()]).args(extra).env("FOMAML_COLLECTIVE_TIMEOUT_S", "60");
    cmd
}

/// Process ids of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn rank_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| kv.strip_prefix(b"RANK=").map(|r| String::from_utf8_lossy(r).into_owned()))
}

/// Both runs ended with the same θ and optimizer state at `step`, file by file, and logged the
/// same metrics (timings aside).
fn assert_same_end(a: &Path, b: &Path, step: u64) {
    let last = checkpoint::step_dir_name(step);
    for rank in 0..2 {
        let file = checkpoint::shards::rank_file(rank);
        let read = |run: &Path| std::fs::read(run.join("checkpoints").join(&last).join(&file)).unwrap();
        assert!(read(a) == read(b), "{file} of {} differs from {}'s", b.display(), a.display());
    }
    let timing = |r: &(u64, String, f64)| !r.1.starts_with("perf/");
    let a_losses: Vec<_> = losses(a).into_iter().filter(timing).collect();
    let b_losses: Vec<_> = losses(b).into_iter().filter(timing).collect();
    assert_eq!(a_losses, b_losses, "metrics of {} differ from {}'s", b.display(), a.display());
}

fn spawn_launcher(nproc: usize, extra: &[&str], config: &Path) -> std::process::Child {
    launcher_args(nproc, extra)
        .arg("--")
        .args([env!("CARGO_BIN_EXE_fomaml"), "train", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_checkpoint(launcher: &mut std::process::Child, run_dir: &Path, step: u64) {
    let started = std::time::Instant::now();
    while !run_dir.join("checkpoints").join(checkpoint::step_dir_name(step)).exists() {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint of step {step} after 120 s");
        assert!(launcher.try_wait().unwrap().is_none(), "the run ended before it could be interrupted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn rank_pid(launcher: &std::process::Child, rank: &str) -> u32 {
    let pid = children(launcher.id()).into_iter().find(|pid| rank_of(*pid).as_deref() == Some(rank));
    pid.unwrap_or_else(|| panic!("rank {rank} is running"))
}

/// Issue: kill -9 one rank mid-run; the launcher restarts the group, which resumes from the last
/// checkpoint and ends with the same θ (bit for bit: same world size, fixed summation order) and
/// the same logged metrics as an uninterrupted run. And a preemption signal to one rank alone:
/// every rank stops after the same meta-step, saved; the launcher exits with code 75, and the
/// same command resumes to the same end.
#[test]
fn interrupted_runs_end_as_if_uninterrupted() {
    let mut run = small_run(Algorithm::Fomaml, false);
    // Same world size, same order of operations: bit for bit in the default fp32.
    run.config.model.dtype = "f32".into();
    (run.config.trainer.total_steps, run.config.trainer.test_freq, run.config.checkpoint.save_freq) = (60, 20, 10);
    let uninterrupted = write_config(&run, "uninterrupted");
    launch(2, &uninterrupted, &[]);

    let config = write_config(&run, "killed");
    let killed = run.run_dir("killed");
    let mut launcher = spawn_launcher(2, &["--max-restarts", "1"], &config);
    wait_for_checkpoint(&mut launcher, &killed, 10);
    let rank1 = rank_pid(&launcher, "1");
    assert!(Command::new("kill").args(["-9", &rank1.to_string()]).status().unwrap().success());
    assert!(!killed.join("checkpoints").join(checkpoint::step_dir_name(60)).exists(), "finished before the kill");
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the restarted group failed:\n{stderr}");
    assert!(stderr.contains("restarting the group") && stderr.contains("resuming from"), "{stderr}");
    assert_same_end(&run.run_dir("uninterrupted"), &killed, 60);

    let config = write_config(&run, "preempted");
    let preempted = run.run_dir("preempted");
    let mut launcher = spawn_launcher(2, &[], &config);
    wait_for_checkpoint(&mut launcher, &preempted, 10);
    let rank0 = rank_pid(&launcher, "0");
    assert!(Command::new("kill").args(["-USR1", &rank0.to_string()]).status().unwrap().success());
    let out = launcher.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(fomaml::train::preempt::EXIT_PREEMPTED as i32), "{stderr}");
    assert!(stderr.contains("on SIGUSR1") && stderr.contains("on a signal to another rank"), "{stderr}");
    assert!(stderr.contains("saved a checkpoint and stopped on request"), "{stderr}");
    let stopped = checkpoint::newest(&preempted.join("checkpoints")).unwrap().unwrap();
    let step = checkpoint::read_meta(&stopped).unwrap().step;
    assert!(step < 60, "stopped only at the end");
    assert_eq!(losses(&preempted).last().unwrap().0, step, "the last logged step is the one saved");
    launch(2, &config, &[]);
    assert_same_end(&run.run_dir("uninterrupted"), &preempted, 60);
}

/// Two "nodes" on one machine whose run directories differ (as on hosts without a shared file
/// system): the run stops at start, within seconds, saying what it needs.
#[test]
fn nodes_that_do_not_share_the_run_directory_stop_at_start() {
    let run = small_run(Algorithm::Fomaml, false);
    let config = write_config(&run, "node0");
    let node = |rank: usize, port: u16, dir: &str| {
        let mut cmd = Command::new(launcher());
        let (rank, port) = (rank.to_string(), port.to_string());
        cmd.args(["--nnodes", "2", "--node-rank", &rank, "--nproc", "1", "--master-addr", "127.0.0.1"]);
        cmd.args(["--master-port", &port, "--rdzv-id", "fs-check", "--"]);
        cmd.args([env!("CARGO_BIN_EXE_fomaml"), "train", "--config", config.to_str().unwrap()]);
        cmd.arg(format!("trainer.default_local_dir={}", run.run_dir(dir).display()));
        cmd.env("FOMAML_COLLECTIVE_TIMEOUT_S", "300").stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd
    };
    let started = std::time::Instant::now();
    let mut node0 = node(0, 0, "node0").spawn().unwrap();
    // Node 0 reports the free port its store took.
    let mut stderr0 = std::io::BufReader::new(node0.stderr.take().unwrap());
    let mut seen = String::new();
    let port = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr0, &mut line).unwrap() > 0, "node 0 ended:\n{seen}");
        seen.push_str(&line);
        if let Some(at) = line.trim().strip_prefix("fomaml-launch: the store listens on ") {
            break at.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
        }
    };
    let node1 = node(1, port, "node1").output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr0, &mut rest).unwrap();
    let status0 = node0.wait().unwrap();
    let (stderr0, stderr1) = (seen + &rest, String::from_utf8_lossy(&node1.stderr).into_owned());
    assert!(!status0.success() && !node1.status.success(), "node 0:\n{stderr0}\nnode 1:\n{stderr1}");
    assert!(
        stderr1.contains("rank 1 (host") && stderr1.contains("cannot read") && stderr1.contains("shared-fs-token"),
        "{stderr1}"
    );
    assert!(stderr0.contains("rank 1 cannot see the run directory rank 0 created"), "{stderr0}");
    assert!(stderr0.contains("file system every node mounts at the same path"), "{stderr0}");
    // Well inside the collective timeout (300 s): nothing waited for it.
    assert!(started.elapsed().as_secs() < 60, "took {:?}", started.elapsed());
}

/// What a new user meets: a rank that fails on start is reported with its own message first and
/// a non-zero exit, promptly; second-order MAML refuses several ranks.
#[test]
fn failures_on_start_are_reported_promptly_with_the_cause() {
    let run = small_run(Algorithm::Fomaml, false);
    let started = std::time::Instant::now();
    let out = launcher_args(2, &["--"])
        .args([env!("CARGO_BIN_EXE_fomaml"), "train", "--config", "/no/such/config.yaml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("/no/such/config.yaml") && stderr.contains("rank"), "{stderr}");
    assert!(started.elapsed().as_secs() < 30, "took {:?}", started.elapsed());

    let mut maml = run.config.clone();
    maml.meta.algorithm = Algorithm::Maml;
    maml.trainer.default_local_dir = run.run_dir("maml").display().to_string();
    let path = run.path().join("maml.yaml");
    std::fs::write(&path, maml.to_yaml()).unwrap();
    let out = launcher_args(2, &["--"])
        .args([env!("CARGO_BIN_EXE_fomaml"), "train", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("one process only") && stderr.contains("2 ranks"), "{stderr}");
}

/// The rest of the family through the launcher: FOMAML-LoRA and META-LoRA (frozen base sharded too),
/// Reptile and SFT on 2 ranks against one whole process.
#[test]
fn every_other_algorithm_runs_on_two_ranks_like_one_process() {
    for (algorithm, lora) in
        [(Algorithm::Fomaml, true), (Algorithm::MetaLora, true), (Algorithm::Reptile, false), (Algorithm::Sft, false)]
    {
        let run = small_run(algorithm, lora);
        let whole = train(&run, "whole", Sharding::Auto);
        launch(2, &write_config(&run, "ranks2"), &[]);
        let two = theta(&newest(&run.run_dir("ranks2")));
        compare(&format!("{algorithm:?} lora={lora}, 2 ranks vs whole"), &theta(&whole), &two, TOLERANCE);
        assert_same_losses(&losses(&run.run_dir("whole")), &losses(&run.run_dir("ranks2")));
    }
}

/// The original trainer's documented launch, `torchrun --nproc_per_node=4 maml_sft_trainer.py
/// --config-path data/math_science_meta --config-name config_fomaml_math_science`, with
/// fomaml-launch for torchrun and `fomaml train` for the script (2 ranks on this CPU, and
/// `--standalone` so that tests running at once do not share torchrun's default port).
#[test]
fn the_original_trainers_torchrun_command_line_runs() {
    let run = small_run(Algorithm::Fomaml, false);
    let config = write_config(&run, "torchrun");
    let (dir, name) = (config.parent().unwrap(), config.file_stem().unwrap());
    let out = Command::new(launcher())
        .args(["--standalone", "--nproc_per_node=2"])
        .arg(env!("CARGO_BIN_EXE_fomaml"))
        .args(["train", "--config-path"])
        .arg(dir)
        .arg("--config-name")
        .arg(name)
        .env("FOMAML_COLLECTIVE_TIMEOUT_S", "60")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loaded = checkpoint::load(&newest(&run.run_dir("torchrun"))).unwrap();
    assert_eq!(loaded.meta.world_size, 2);
}
