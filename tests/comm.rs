//! The rendezvous store and the CPU (TCP) communicator: results against a single-process
//! reference computed with plain Rust arithmetic, bitwise identical across ranks and runs; ranks as
//! threads (2 and 4) and as processes; wrong run id, a silent rank, a dead rank, mismatched calls.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use fomaml::distributed::{
    Communicator, Dist, DistEnv, SingleRank, StoreClient, StoreError, StoreServer, StoreServerHandle, TcpComm,
};
use half::bf16;
use tch::{Kind, Tensor};

const RUN: &str = "test-run";

fn server(run: &str) -> (StoreServerHandle, String) {
    let s = StoreServer::bind("127.0.0.1:0", run).unwrap().spawn().unwrap();
    let addr = s.local_addr().to_string();
    (s, addr)
}

/// Runs `f` on `world` ranks, each a thread with its own store client and communicator.
fn on_ranks<T: Send>(world: usize, timeout: Duration, f: impl Fn(&mut TcpComm) -> T + Sync) -> Vec<T> {
    let (_server, addr) = server(RUN);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let (addr, f) = (&addr, &f);
                s.spawn(move || {
                    let mut store = StoreClient::connect(addr, RUN, Duration::from_secs(20)).unwrap();
                    let mut comm = TcpComm::connect(&mut store, rank, world, "test", timeout).unwrap();
                    f(&mut comm)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Rank-specific values spread over six orders of magnitude, so that summation order shows.
fn values(rank: usize, n: usize, salt: u64) -> Vec<f32> {
    let mut state = (rank as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..n)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            (unit * 10f64.powi((z % 7) as i32 - 3)) as f32
        })
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let mut out = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, t.numel());
    out
}

const N_F32: usize = 1003;
const N_BIG: usize = 1 << 20;
const N_BF16: usize = 257;
const N_TINY: usize = 3;
const N_GATHER: usize = 5;
const N_SCATTER: usize = 7;
const N_BCAST: usize = 11;

/// Every collective once on rank-specific inputs; the results' bytes by name.
fn script(comm: &mut dyn Communicator) -> Vec<(String, Vec<u8>)> {
    let (r, w) = (comm.rank(), comm.world_size());
    let mut out = Vec::new();
    let mut record = |name: &str, t: &Tensor| out.push((name.to_string(), tensor_bytes(t)));

    let t = Tensor::from_slice(&values(r, N_F32, 1));
    comm.all_reduce_sum(&t).unwrap();
    record("all_reduce_f32", &t);
    // 4 MiB: more than socket buffers hold, so sends and receives must overlap.
    let t = Tensor::from_slice(&values(r, N_BIG, 2));
    comm.all_reduce_sum(&t).unwrap();
    record("all_reduce_big", &t);
    let t = Tensor::from_slice(&values(r, N_BF16, 3)).to_kind(Kind::BFloat16);
    comm.all_reduce_sum(&t).unwrap();
    record("all_reduce_bf16", &t);
    // Fewer elements than ranks: some chunks are empty.
    let t = Tensor::from_slice(&values(r, N_TINY, 4)).to_kind(Kind::Double).view([1, 3]);
    comm.all_reduce_sum(&t).unwrap();
    record("all_reduce_tiny_f64", &t);

    let input = Tensor::from_slice(&values(r, N_GATHER, 5));
    let output = Tensor::full([w as i64, N_GATHER as i64], f64::NAN, (Kind::Float, tch::Device::Cpu));
    comm.all_gather(&input, &output).unwrap();
    record("all_gather", &output);

    let input = Tensor::from_slice(&values(r, w * N_SCATTER, 6));
    let output = Tensor::full([N_SCATTER as i64], f64::NAN, (Kind::Float, tch::Device::Cpu));
    comm.reduce_scatter_sum(&input, &output).unwrap();
    record("reduce_scatter", &output);

    let t = Tensor::from_slice(&values(r, N_BCAST, 7));
    comm.broadcast(&t, w - 1).unwrap();
    record("broadcast", &t);
    comm.barrier().unwrap();
    out
}

/// Left fold in rank order, element by element, in f32: the documented reduction order.
fn fold_f32(w: usize, n: usize, salt: u64) -> Vec<f32> {
    let mut acc = values(0, n, salt);
    for q in 1..w {
        for (a, x) in acc.iter_mut().zip(values(q, n, salt)) {
            *a += x;
        }
    }
    acc
}

/// What rank `r` of `w` must hold after `script`, computed without libtorch.
fn reference(w: usize, r: usize) -> Vec<(String, Vec<u8>)> {
    let to_bf16 = |v: Vec<f32>| v.into_iter().map(bf16::from_f32).collect::<Vec<_>>();
    let mut bf = to_bf16(values(0, N_BF16, 3));
    for q in 1..w {
        for (a, x) in bf.iter_mut().zip(to_bf16(values(q, N_BF16, 3))) {
            *a = bf16::from_f32(a.to_f32() + x.to_f32());
        }
    }
    let mut tiny: Vec<f64> = values(0, N_TINY, 4).into_iter().map(f64::from).collect();
    for q in 1..w {
        for (a, x) in tiny.iter_mut().zip(values(q, N_TINY, 4)) {
            *a += f64::from(x);
        }
    }
    let gathered: Vec<f32> = (0..w).flat_map(|q| values(q, N_GATHER, 5)).collect();
    let scattered = fold_f32(w, w * N_SCATTER, 6)[r * N_SCATTER..(r + 1) * N_SCATTER].to_vec();
    vec![
        ("all_reduce_f32".into(), f32_bytes(&fold_f32(w, N_F32, 1))),
        ("all_reduce_big".into(), f32_bytes(&fold_f32(w, N_BIG, 2))),
        ("all_reduce_bf16".into(), bf.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ("all_reduce_tiny_f64".into(), tiny.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ("all_gather".into(), f32_bytes(&gathered)),
        ("reduce_scatter".into(), f32_bytes(&scattered)),
        ("broadcast".into(), f32_bytes(&values(w - 1, N_BCAST, 7))),
    ]
}

fn assert_matches_reference(w: usize, results: &[Vec<(String, Vec<u8>)>]) {
    for (r, got) in results.iter().enumerate() {
        let want = reference(w, r);
        assert_eq!(got.len(), want.len());
        for ((name, g), (wname, wv)) in got.iter().zip(&want) {
            assert_eq!(name, wname);
            assert!(g == wv, "{w} ranks: rank {r}'s {name} differs from the reference");
        }
    }
}

#[test]
fn collectives_on_2_and_4_thread_ranks_match_the_reference_bitwise() {
    // The reference order matters: with 4 ranks another association of the f32 sum differs.
    let rev = {
        let mut acc = values(3, N_F32, 1);
        for q in (0..3).rev() {
            for (a, x) in acc.iter_mut().zip(values(q, N_F32, 1)) {
                *a += x;
            }
        }
        acc
    };
    assert_ne!(f32_bytes(&rev), f32_bytes(&fold_f32(4, N_F32, 1)), "test inputs too tame to show order");

    for w in [2, 4] {
        let t0 = Instant::now();
        let first = on_ranks(w, Duration::from_secs(30), |c| script(c));
        let second = on_ranks(w, Duration::from_secs(30), |c| script(c));
        assert_matches_reference(w, &first);
        assert!(first == second, "{w} ranks: two runs differ");
        eprintln!("{w} ranks: two runs of every collective in {:.2} s", t0.elapsed().as_secs_f64());
    }
}

#[test]
fn single_rank_collectives_are_the_identity() {
    let mut c = SingleRank::new();
    let results = script(&mut c);
    assert_matches_reference(1, &[results]);
    let bad = c.all_gather(&Tensor::zeros([4], tch::kind::FLOAT_CPU), &Tensor::zeros([3], tch::kind::FLOAT_CPU));
    assert!(bad.unwrap_err().to_string().contains("output has 3 elements, expected world size 1 × input 4"));
}

#[test]
fn dist_env_parsing() {
    let env = |pairs: &[(&str, &str)]| {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DistEnv::from_lookup(move |k| m.get(k).cloned())
    };
    assert_eq!(env(&[]).unwrap(), None);
    assert_eq!(env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap(), None);
    let e = env(&[("WORLD_SIZE", "2")]).unwrap_err();
    assert_eq!(e.to_string(), "RANK is not set but WORLD_SIZE=2 is");
    let e = env(&[("FOMAML_COLLECTIVE_TIMEOUT_S", "soon")]).unwrap_err();
    assert!(e.to_string().contains("expected a positive number of seconds"), "{e}");
    let full = [
        ("WORLD_SIZE", "4"),
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "::1"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_RUN_ID", "abc"),
        ("FOMAML_COLLECTIVE_TIMEOUT_S", "2.5"),
    ];
    let e = env(&full).unwrap().unwrap();
    assert_eq!((e.rank, e.world_size, e.local_rank, e.run_id.as_str()), (3, 4, 1, "abc"));
    assert_eq!(e.timeout, Duration::from_millis(2500));
    assert_eq!(e.store_addr(), "[::1]:29500");
    assert_eq!((e.agent_store, e.attempt), (false, 0), "rank 0 hosts the store without a launcher");
    let launched =
        [&full[..], &[("TORCHELASTIC_USE_AGENT_STORE", "True"), ("TORCHELASTIC_RESTART_COUNT", "2")]].concat();
    let e = env(&launched).unwrap().unwrap();
    assert_eq!((e.agent_store, e.attempt), (true, 2));
    // No variables at all: a single rank that does nothing (the test runner sets none of them).
    if std::env::var_os("WORLD_SIZE").is_none() {
        let d = Dist::from_env().unwrap();
        assert_eq!((d.rank, d.world_size, d.comm.borrow().world_size()), (0, 1, 1));
    }
}

#[test]
fn store_set_get_add_wait_barrier_and_late_server() {
    let (_server, addr) = server(RUN);
    let t = Duration::from_secs(10);
    let mut a = StoreClient::connect(&addr, RUN, t).unwrap();
    let mut b = StoreClient::connect(&addr, RUN, t).unwrap();
    a.set("k", b"v1").unwrap();
    assert_eq!(b.get("k").unwrap(), b"v1");
    assert_eq!(a.add("n", 5).unwrap(), 5);
    assert_eq!(b.add("n", -2).unwrap(), 3);
    assert_eq!(a.get("n").unwrap(), b"3");
    let e = b.get_timeout("never", Duration::from_millis(100)).unwrap_err();
    assert_eq!(e.to_string(), format!("the store at {addr}: get(\"never\") timed out after 0.1 s (missing: never)"));
    // Blocking get and wait are released by another client's set; barrier by the last arrival.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let mut c = StoreClient::connect(&addr, RUN, t).unwrap();
            c.wait(&["late", "k"]).unwrap();
            let v = c.get("late").unwrap();
            c.barrier("b1", 3).unwrap();
            v
        });
        std::thread::sleep(Duration::from_millis(50));
        a.set("late", b"here").unwrap();
        s.spawn(|| b.barrier("b1", 3).unwrap());
        a.barrier("b1", 3).unwrap();
        assert_eq!(waiter.join().unwrap(), b"here");
    });
    a.set_timeout(Duration::from_millis(200));
    let e = a.barrier("b2", 2).unwrap_err();
    assert!(matches!(e, StoreError::BarrierTimeout { arrived: 1, world_size: 2, .. }), "{e}");

    // A client that starts before the server keeps trying until it is up. Here the port must be
    // known before anything listens on it: should another process take it in between (the
    // server's bind fails), the check is repeated on another.
    for attempt in 1.. {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            StoreServer::bind(("127.0.0.1", port), RUN).map(|s| s.spawn().unwrap())
        });
        let t0 = Instant::now();
        let client = StoreClient::connect(&format!("127.0.0.1:{port}"), RUN, t);
        match late.join().unwrap() {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 3 => continue,
            server => {
                let _server = server.unwrap();
                assert!(t0.elapsed() >= Duration::from_millis(300));
                client.unwrap().set("x", b"y").unwrap();
                break;
            }
        }
    }
}

#[test]
fn store_refuses_another_run() {
    let (_server, addr) = server("run-a");
    let t0 = Instant::now();
    let e = StoreClient::connect(&addr, "run-b", Duration::from_secs(10)).err().unwrap();
    assert_eq!(e.to_string(), format!("the store at {addr} belongs to run run-a, this process is run run-b"));
    assert!(t0.elapsed() < Duration::from_secs(2), "a refusal is final, not retried");
}

#[test]
fn a_rank_that_never_calls_fails_the_others_within_the_timeout() {
    let world = 4;
    let done = Barrier::new(world);
    let t0 = Instant::now();
    let errors = on_ranks(world, Duration::from_secs(2), |c| {
        c.barrier().unwrap();
        let result = if c.rank() == 2 {
            None
        } else {
            let out = Tensor::zeros([world as i64 * 3], tch::kind::FLOAT_CPU);
            let e = c.all_gather(&Tensor::ones([3], tch::kind::FLOAT_CPU), &out).unwrap_err();
            Some((e.to_string(), t0.elapsed()))
        };
        // Rank 2 stays connected until the others have failed: it is silent, not dead.
        done.wait();
        result
    });
    for (r, e) in errors.into_iter().enumerate() {
        let Some((msg, elapsed)) = e else { continue };
        assert_eq!(msg, "all_gather #2 timed out after 2 s waiting for rank 2 (ranks 0,1,3 arrived)", "rank {r}");
        assert!(elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(5), "rank {r}: {elapsed:?}");
    }
}

#[test]
fn a_rank_that_drops_its_connection_is_named_at_once() {
    let t0 = Instant::now();
    let errors = on_ranks(3, Duration::from_secs(60), |c| {
        c.barrier().unwrap();
        if c.rank() == 1 {
            return None; // drops the communicator
        }
        let e = c.all_reduce_sum(&Tensor::ones([100], tch::kind::FLOAT_CPU)).unwrap_err();
        let again = c.barrier().unwrap_err().to_string();
        Some((e.to_string(), again))
    });
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    for (r, e) in errors.into_iter().enumerate() {
        let Some((msg, again)) = e else { continue };
        let want =
            format!("all_reduce #2 on rank {r}: rank 1 closed its connection (it exited or dropped its communicator)");
        assert_eq!(msg, want);
        assert_eq!(
            again,
            format!("barrier on rank {r}: the communicator is unusable after an earlier failure ({want})")
        );
    }
}

#[test]
fn mismatched_collectives_are_named_on_both_sides() {
    let t = Duration::from_secs(30);
    let f = |n| Tensor::zeros([n], tch::kind::FLOAT_CPU);
    let errs = on_ranks(2, t, |c| {
        if c.rank() == 0 {
            c.all_reduce_sum(&f(8)).unwrap_err().to_string()
        } else {
            c.all_gather(&f(8), &f(16)).unwrap_err().to_string()
        }
    });
    assert_eq!(
        errs,
        [
            "all_reduce #1 (32 bytes of Float) on rank 0 does not match rank 1, which called all_gather #1 (32 bytes of Float)",
            "all_gather #1 (32 bytes of Float) on rank 1 does not match rank 0, which called all_reduce #1 (32 bytes of Float)",
        ]
    );

    let errs = on_ranks(2, t, |c| c.all_reduce_sum(&f(8 - 4 * c.rank() as i64)).unwrap_err().to_string());
    assert_eq!(
        errs[0],
        "all_reduce #1 (32 bytes of Float) on rank 0 does not match rank 1, which called all_reduce #1 (16 bytes of Float)"
    );

    let errs = on_ranks(2, t, |c| c.broadcast(&f(2), c.rank()).unwrap_err().to_string());
    assert_eq!(
        errs[1],
        "broadcast #1 from rank 1 (8 bytes of Float) on rank 1 does not match rank 0, which called broadcast #1 from rank 0 (8 bytes of Float)"
    );

    // A rank whose arguments are wrong tells the others why instead of leaving them to time out.
    let t0 = Instant::now();
    let errs = on_ranks(2, t, |c| {
        let out = f(if c.rank() == 0 { 3 } else { 16 });
        c.all_gather(&f(8), &out).unwrap_err().to_string()
    });
    assert_eq!(errs[0], "all_gather #1 on rank 0: output has 3 elements, expected world size 2 × input 8 = 16");
    assert_eq!(errs[1], format!("all_gather #1 on rank 1: rank 0 aborted: {}", errs[0]));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

const CHILD_ENV: &str = "FOMAML_COMM_TEST_CHILD";

/// Starts `world` copies of this test binary running `child_rank` with torchrun's variables. The
/// store is served from here, as the launcher serves it, on a port the system picked (a port
/// picked free and bound later could be taken in between).
fn spawn_ranks(world: usize, mode: &str, out: &Path, timeout_s: &str) -> (StoreServerHandle, Vec<std::process::Child>) {
    let (store, addr) = server("proc-test");
    let port = addr.rsplit_once(':').unwrap().1.to_string();
    let children = (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "child_rank", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, mode)
                .env("FOMAML_COMM_TEST_OUT", out)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("TORCHELASTIC_RUN_ID", "proc-test")
                .env("TORCHELASTIC_USE_AGENT_STORE", "True")
                .env("FOMAML_COLLECTIVE_TIMEOUT_S", timeout_s)
                .env("OMP_NUM_THREADS", "1")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    (store, children)
}

/// The body of a rank process (a no-op unless started by `spawn_ranks`).
#[test]
fn child_rank() {
    let Ok(mode) = std::env::var(CHILD_ENV) else { return };
    let out = std::path::PathBuf::from(std::env::var("FOMAML_COMM_TEST_OUT").unwrap());
    let dist = Dist::from_env().unwrap();
    match mode.as_str() {
        "script" => {
            for (name, bytes) in script(dist.comm.borrow_mut().as_mut()) {
                std::fs::write(out.join(format!("{}.{name}", dist.rank)), bytes).unwrap();
            }
        }
        "die" => {
            dist.comm.borrow_mut().barrier().unwrap();
            if dist.rank == 1 {
                std::process::exit(3);
            }
            let t0 = Instant::now();
            let e = dist.comm.borrow_mut().all_reduce_sum(&Tensor::ones([10], tch::kind::FLOAT_CPU)).unwrap_err();
            let report = format!("{e}\n{}", t0.elapsed().as_millis());
            std::fs::write(out.join(format!("{}.error", dist.rank)), report).unwrap();
        }
        m => panic!("unknown child mode {m}"),
    }
}

#[test]
fn ranks_as_processes_match_the_reference_and_a_dead_rank_is_named() {
    let world = 3;
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let (_store, children) = spawn_ranks(world, "script", dir.path(), "60");
    for child in children {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let results: Vec<Vec<(String, Vec<u8>)>> = (0..world)
        .map(|r| {
            reference(world, r)
                .into_iter()
                .map(|(name, _)| {
                    let bytes = std::fs::read(dir.path().join(format!("{r}.{name}"))).unwrap();
                    (name, bytes)
                })
                .collect()
        })
        .collect();
    assert_matches_reference(world, &results);
    eprintln!("{world} rank processes: every collective in {:.2} s", t0.elapsed().as_secs_f64());

    let dir = tempfile::tempdir().unwrap();
    let (_store, children) = spawn_ranks(2, "die", dir.path(), "60");
    let statuses: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert_eq!(statuses[1].status.code(), Some(3));
    assert!(statuses[0].status.success(), "{}", String::from_utf8_lossy(&statuses[0].stderr));
    let report = std::fs::read_to_string(dir.path().join("0.error")).unwrap();
    let (msg, ms) = report.split_once('\n').unwrap();
    assert_eq!(msg, "all_reduce #2 on rank 0: rank 1 closed its connection (it exited or dropped its communicator)");
    assert!(ms.parse::<u64>().unwrap() < 5000, "noticed after {ms} ms");
}
