//! Facts about the libtorch this process actually loaded (which may differ from the one it was built
//! against: on a GPU machine LD_LIBRARY_PATH points at that machine's torch).

use std::path::PathBuf;

/// The libtorch version the binary was built against.
pub const BUILD_LIBTORCH_VERSION: &str = env!("FOMAML_LIBTORCH_BUILD_VERSION");

/// Path of a shared library mapped into this process, e.g. `libtorch_cpu.so`.
pub fn mapped_library(file_name: &str) -> Option<PathBuf> {
    // Make sure libtorch is mapped before looking (any call into it does).
    let _ = tch::get_num_threads();
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let suffix = format!("/{file_name}");
    maps.lines().filter_map(|line| line.split_whitespace().nth(5)).find(|p| p.ends_with(&suffix)).map(PathBuf::from)
}

/// Directory of the loaded `libtorch_cpu.so`.
pub fn loaded_libtorch_dir() -> Option<PathBuf> {
    mapped_library("libtorch_cpu.so")?.parent().map(PathBuf::from)
}

/// Whether libtorch's CUDA backend was loaded (build.rs links it with `--no-as-needed`); without
/// it `Cuda::is_available()` is false even on a GPU machine.
pub fn cuda_backend_loaded() -> bool {
    mapped_library("libtorch_cuda.so").is_some()
}

/// The loaded libtorch's version, from `torch/version.py` (pip) or `build-version` (libtorch zip).
pub fn loaded_libtorch_version() -> Option<String> {
    let root = loaded_libtorch_dir()?.parent()?.to_path_buf();
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        let line = text.lines().find(|l| l.starts_with("__version__"))?;
        return Some(line.split(['\'', '"']).nth(1)?.to_string());
    }
    std::fs::read_to_string(root.join("build-version")).ok().map(|s| s.trim().to_string())
}

/// `2.11.0+cu130` -> `2.11`.
pub fn major_minor(version: &str) -> &str {
    let end = version.match_indices('.').nth(1).map_or(version.len(), |(i, _)| i);
    &version[..end]
}

/// Resets the process's peak resident set size (VmHWM), so the next reading covers only what runs
/// after this call (Linux >= 4.0; elsewhere a no-op).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Memory the host can still give without swapping (MemAvailable), in bytes.
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's peak resident set size in bytes since start or the last [`reset_peak_rss`].
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Under a launcher, the failure goes to TORCHELASTIC_ERROR_FILE in torchrun's layout too, so the
/// launcher's report can put this rank's own message first.
pub fn write_error_file(message: &str) {
    let Some(path) = std::env::var_os("TORCHELASTIC_ERROR_FILE") else { return };
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let json = serde_json::json!({
        "message": { "message": message, "extraInfo": { "py_callstack": "", "timestamp": timestamp.to_string() } }
    });
    // Best effort: the message is on stderr already.
    let _ = std::fs::write(path, json.to_string());
}
