//! Link flags a binary needs so that libtorch's CUDA backend actually loads (tch-rs #907, #980):
//! without `--no-as-needed` the linker drops libtorch_cuda (no symbol of it is referenced
//! directly) and `Cuda::is_available()` is false on GPU machines. The rpath lets binaries run
//! here without LD_LIBRARY_PATH; elsewhere (a GPU machine) LD_LIBRARY_PATH points at its torch/lib.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let lib_dir = env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from);
    let version = lib_dir.as_deref().and_then(libtorch_version).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FOMAML_LIBTORCH_BUILD_VERSION={version}");
    if os != "linux" {
        return;
    }
    if let Some(dir) = &lib_dir {
        println!("cargo:rustc-link-arg=-Wl,-rpath={}", dir.display());
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    if lib_dir.as_ref().is_some_and(|d| d.join("libtorch_cuda.so").exists()) {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
}

/// `torch/version.py` of a pip install (`__version__ = '2.11.0+cu130'`), or libtorch's build-version.
fn libtorch_version(lib_dir: &std::path::Path) -> Option<String> {
    let root = lib_dir.parent()?;
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    std::fs::read_to_string(root.join("build-version")).ok().map(|s| s.trim().to_string())
}
