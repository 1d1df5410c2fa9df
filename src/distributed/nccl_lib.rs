//! Finds and loads NCCL with no user action, and resolves the entry points the NCCL backend calls.
//!
//! The torch wheel ships NCCL as `site-packages/nvidia/nccl/lib/libnccl.so.2`, a path the system
//! loader does not search and a name cudarc's loader never tries (it asks for `libnccl.so`,
//! `libnccl.so.13`, …), so cudarc's `nccl::result` layer would panic on a machine where torch
//! itself uses NCCL. We open the library ourselves and bind NCCL's stable C API with cudarc's ABI
//! types (`nccl::sys`). Order: `FOMAML_NCCL_LIBRARY`, the copy libtorch_cuda already mapped, the
//! wheel's copy beside the loaded libtorch, then the system's `libnccl.so.2` / `libnccl.so`.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cudarc::nccl::sys::{cudaStream_t, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use libloading::Library;

use crate::runtime::{loaded_libtorch_dir, mapped_library};

pub struct NcclLibrary {
    pub library: Library,
    /// What was opened: a path, or a bare name resolved by the system loader.
    pub source: String,
}

/// Candidate locations, most specific first.
pub fn candidates() -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os("FOMAML_NCCL_LIBRARY") {
        out.push(PathBuf::from(p).display().to_string());
    }
    if let Some(p) = mapped_library("libnccl.so.2") {
        out.push(p.display().to_string());
    }
    // <site-packages>/torch/lib -> <site-packages>/nvidia/{nccl,cu13}/lib
    if let Some(site) = loaded_libtorch_dir().and_then(|d| d.parent()?.parent().map(PathBuf::from)) {
        for sub in ["nvidia/nccl/lib", "nvidia/cu13/lib"] {
            out.push(site.join(sub).join("libnccl.so.2").display().to_string());
        }
    }
    out.push("libnccl.so.2".into());
    out.push("libnccl.so".into());
    out.dedup();
    out
}

/// Opens the first candidate that loads; the error lists what was tried.
pub fn open() -> Result<NcclLibrary, String> {
    let mut tried = Vec::new();
    for c in candidates() {
        // SAFETY: loading NCCL runs only its (side-effect free) initialisers.
        match unsafe { Library::new(&c) } {
            Ok(library) => return Ok(NcclLibrary { library, source: c }),
            Err(e) => tried.push(format!("{c} ({e})")),
        }
    }
    Err(format!("NCCL not found; tried: {} (set FOMAML_NCCL_LIBRARY to its path)", tried.join("; ")))
}

/// `ncclResult_t` as the C int NCCL returns: a newer NCCL may return codes the bindings' enum lacks.
pub type Status = c_int;
pub const SUCCESS: Status = 0;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> Status;
type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> Status;
type CommInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> Status;
type CommEnd = unsafe extern "C" fn(ncclComm_t) -> Status;
type CommGetAsyncError = unsafe extern "C" fn(ncclComm_t, *mut Status) -> Status;
type GetErrorString = unsafe extern "C" fn(Status) -> *const c_char;
type GetLastError = unsafe extern "C" fn(ncclComm_t) -> *const c_char;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudaStream_t,
) -> Status;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, ncclComm_t, cudaStream_t) -> Status;
type ReduceScatter = AllReduce;
type Broadcast =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, ncclDataType_t, c_int, ncclComm_t, cudaStream_t) -> Status;

/// NCCL's entry points, resolved once; the library stays loaded as long as this lives.
pub struct NcclApi {
    pub get_unique_id: GetUniqueId,
    pub comm_init_rank: CommInitRank,
    pub comm_abort: CommEnd,
    pub comm_destroy: CommEnd,
    pub comm_get_async_error: CommGetAsyncError,
    get_error_string: GetErrorString,
    get_last_error: Option<GetLastError>,
    pub all_reduce: AllReduce,
    pub all_gather: AllGather,
    pub reduce_scatter: ReduceScatter,
    pub broadcast: Broadcast,
    pub version: String,
    pub source: String,
    _library: Library,
}

// SAFETY: the fields are plain C function pointers into a library that stays loaded; NCCL's API
// is callable from any thread (ncclCommAbort is meant to be called from a watchdog thread).
unsafe impl Send for NcclApi {}
unsafe impl Sync for NcclApi {}

impl NcclLibrary {
    /// NCCL's version as `major.minor.patch` from `ncclGetVersion`.
    pub fn version(&self) -> Result<String, String> {
        // SAFETY: ncclGetVersion(int*) is part of NCCL's stable C API.
        let code = unsafe {
            let f = self.symbol::<GetVersion>("ncclGetVersion")?;
            let mut v = 0;
            let status = f(&mut v);
            if status != SUCCESS {
                return Err(format!("ncclGetVersion failed with status {status}"));
            }
            v
        };
        // Since 2.9 NCCL encodes major*10000 + minor*100 + patch.
        Ok(format!("{}.{}.{}", code / 10000, (code % 10000) / 100, code % 100))
    }

    /// # Safety
    /// `T` must be the C signature of `name` in NCCL's API.
    unsafe fn symbol<T: Copy>(&self, name: &str) -> Result<T, String> {
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        self.library.get::<T>(&bytes).map(|s| *s).map_err(|e| format!("{}: no symbol {name} ({e})", self.source))
    }

    /// Resolves every entry point the backend uses, naming the first that is missing.
    pub fn api(self) -> Result<NcclApi, String> {
        let version = self.version()?;
        // SAFETY: each type above is the C declaration of that function in nccl.h (2.18 and later).
        unsafe {
            Ok(NcclApi {
                get_unique_id: self.symbol("ncclGetUniqueId")?,
                comm_init_rank: self.symbol("ncclCommInitRank")?,
                comm_abort: self.symbol("ncclCommAbort")?,
                comm_destroy: self.symbol("ncclCommDestroy")?,
                comm_get_async_error: self.symbol("ncclCommGetAsyncError")?,
                get_error_string: self.symbol("ncclGetErrorString")?,
                get_last_error: self.symbol("ncclGetLastError").ok(),
                all_reduce: self.symbol("ncclAllReduce")?,
                all_gather: self.symbol("ncclAllGather")?,
                reduce_scatter: self.symbol("ncclReduceScatter")?,
                broadcast: self.symbol("ncclBroadcast")?,
                version,
                source: self.source.clone(),
                _library: self.library,
            })
        }
    }
}

impl NcclApi {
    /// Opens NCCL (see [`open`]) and resolves its entry points.
    pub fn load() -> Result<NcclApi, String> {
        open()?.api()
    }

    /// The process's one NCCL, loaded on first use and never unloaded: since 2.24 NCCL starts a
    /// thread per process at the first communicator's initialisation that lives as long as the
    /// process, so its code must stay mapped.
    pub fn shared() -> Result<Arc<NcclApi>, String> {
        static API: OnceLock<Result<Arc<NcclApi>, String>> = OnceLock::new();
        API.get_or_init(|| NcclApi::load().map(Arc::new)).clone()
    }

    /// "unhandled cuda error (run with NCCL_DEBUG=INFO for details): <NCCL's last message>".
    pub fn describe(&self, status: Status, comm: Option<ncclComm_t>) -> String {
        // SAFETY: both return pointers to static (or per-comm, long-lived) NUL-terminated strings.
        let text =
            |p: *const c_char| (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned());
        let mut out =
            text(unsafe { (self.get_error_string)(status) }).unwrap_or_else(|| format!("NCCL status {status}"));
        // ncclGetLastError ignores its argument in current NCCL; null asks before any communicator.
        if let Some(last) = self.get_last_error {
            if let Some(detail) = text(unsafe { last(comm.unwrap_or(std::ptr::null_mut())) }).filter(|d| !d.is_empty())
            {
                out.push_str(": ");
                out.push_str(&detail);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_comes_first_and_every_attempt_is_named() {
        std::env::set_var("FOMAML_NCCL_LIBRARY", "/nonexistent/libnccl-test.so.2");
        let c = candidates();
        assert_eq!(c[0], "/nonexistent/libnccl-test.so.2");
        assert!(c.contains(&"libnccl.so.2".to_string()), "{c:?}");
        if let Err(e) = open() {
            // No NCCL on this machine (the CPU wheel has none): the message lists every place.
            assert!(e.contains("/nonexistent/libnccl-test.so.2") && e.contains("FOMAML_NCCL_LIBRARY"), "{e}");
        }
        std::env::remove_var("FOMAML_NCCL_LIBRARY");
    }
}
