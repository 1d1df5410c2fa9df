//! `fomaml doctor`: what this machine offers and whether fomaml can run on it.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::distributed::nccl_lib;
use crate::runtime::{
    cuda_backend_loaded, loaded_libtorch_dir, loaded_libtorch_version, major_minor, BUILD_LIBTORCH_VERSION,
};

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Fail unless CUDA, at least one GPU and NCCL are usable (for GPU training machines).
    #[arg(long)]
    pub require_gpu: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

struct Report {
    rows: Vec<(String, String, Status)>,
}

impl Report {
    fn row(&mut self, name: &str, value: impl Into<String>, status: Status) {
        self.rows.push((name.to_string(), value.into(), status));
    }

    fn print(&self) {
        for (name, value, status) in &self.rows {
            let mark = match status {
                Status::Ok => "ok",
                Status::Info => "",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            println!("  {name:<12} {value:<64} {mark}");
        }
    }

    fn failures(&self) -> Vec<String> {
        self.rows.iter().filter(|r| r.2 == Status::Fail).map(|r| format!("{}: {}", r.0, r.1)).collect()
    }
}

/// Attention through SDPA against an explicit softmax: exercises the kernels training uses.
fn compute_check(device: Device) -> Result<f64, tch::TchError> {
    let opts = (Kind::Float, device);
    let q = Tensor::f_randn([2, 4, 8, 16], opts)?;
    let k = Tensor::f_randn([2, 4, 8, 16], opts)?;
    let v = Tensor::f_randn([2, 4, 8, 16], opts)?;
    let fused = Tensor::f_scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false)?;
    let causal = Tensor::f_ones([8, 8], (Kind::Bool, device))?.f_tril(0)?;
    let scores = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_div_scalar(4.0)?;
    let probs = scores.f_masked_fill(&causal.f_logical_not()?, f64::NEG_INFINITY)?.f_softmax(-1, Kind::Float)?;
    let explicit = probs.f_matmul(&v)?;
    fused.f_sub(&explicit)?.f_abs()?.f_max()?.f_double_value(&[])
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    let mut r = Report { rows: Vec::new() };
    println!("fomaml {} (built against libtorch {BUILD_LIBTORCH_VERSION})", env!("CARGO_PKG_VERSION"));

    // libtorch: the version actually loaded must be the one the bindings were generated for.
    let loaded = loaded_libtorch_version();
    let where_ = loaded_libtorch_dir().map(|d| format!(" at {}", d.display())).unwrap_or_default();
    match &loaded {
        Some(v) if major_minor(v) != major_minor(BUILD_LIBTORCH_VERSION) && BUILD_LIBTORCH_VERSION != "unknown" => r
            .row(
                "libtorch",
                format!("{v}{where_}: built for {BUILD_LIBTORCH_VERSION}, rebuild or fix LD_LIBRARY_PATH"),
                Status::Fail,
            ),
        Some(v) => r.row("libtorch", format!("{v}{where_}"), Status::Ok),
        None => r.row("libtorch", format!("version unknown{where_}"), Status::Warn),
    }

    let omp = std::env::var("OMP_NUM_THREADS")
        .map(|v| format!("OMP_NUM_THREADS={v}"))
        .unwrap_or("OMP_NUM_THREADS unset".into());
    r.row("threads", format!("{} intra-op ({omp})", tch::get_num_threads()), Status::Info);

    match compute_check(Device::Cpu) {
        Ok(err) if err < 1e-5 => {
            r.row("cpu compute", format!("attention kernels agree (max diff {err:.1e})"), Status::Ok)
        }
        Ok(err) => r.row("cpu compute", format!("SDPA differs from explicit attention by {err:.1e}"), Status::Fail),
        Err(e) => r.row("cpu compute", format!("failed: {e}"), Status::Fail),
    }

    let cuda = tch::Cuda::is_available();
    let gpus = if cuda { tch::Cuda::device_count() } else { 0 };
    let gpu_status = |ok: bool| {
        if ok {
            Status::Ok
        } else if args.require_gpu {
            Status::Fail
        } else {
            Status::Info
        }
    };
    if cuda {
        r.row(
            "cuda",
            format!("available, {gpus} device(s), cuda runtime {}", tch::utils::version_cudart()),
            Status::Ok,
        );
        match compute_check(Device::Cuda(0)) {
            Ok(err) if err < 1e-3 => {
                r.row("gpu compute", format!("cuda:0 attention kernels agree (max diff {err:.1e})"), Status::Ok)
            }
            Ok(err) => {
                r.row("gpu compute", format!("cuda:0 SDPA differs from explicit attention by {err:.1e}"), Status::Fail)
            }
            Err(e) => r.row("gpu compute", format!("cuda:0 failed: {e}"), Status::Fail),
        }
        let cudnn = if tch::Cuda::cudnn_is_available() {
            format!("{}", tch::utils::version_cudnn())
        } else {
            "not available".into()
        };
        r.row("cudnn", cudnn, Status::Info);
    } else {
        let why = if cuda_backend_loaded() {
            "libtorch_cuda is loaded, but no GPU or driver is visible"
        } else {
            "libtorch_cuda.so is not loaded: a CPU-only libtorch, or a binary linked without --no-as-needed"
        };
        r.row("cuda", format!("not available ({why})"), gpu_status(false));
    }

    // Every entry point the NCCL backend calls must resolve, not only the library.
    match nccl_lib::NcclApi::load() {
        Ok(api) => r.row("nccl", format!("{} ({})", api.version, api.source), Status::Ok),
        Err(e) => {
            let status = if args.require_gpu {
                Status::Fail
            } else if cuda {
                Status::Warn
            } else {
                Status::Info
            };
            r.row("nccl", e, status)
        }
    }

    r.print();
    let failures = r.failures();
    if !failures.is_empty() {
        bail!("doctor found {} problem(s): {}", failures.len(), failures.join("; "));
    }
    println!("ready{}", if gpus > 0 { format!(" ({gpus} GPU)") } else { " (CPU only)".into() });
    Ok(())
}
