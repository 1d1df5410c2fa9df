//! Finds and loads NCCL with no user action.
//!
//! The torch wheel ships NCCL as `site-packages/nvidia/nccl/lib/libnccl.so.2`, a path and a name
//! the system loader (and cudarc's) does not search. Order: `FOMAML_NCCL_LIBRARY`, the wheel's copy
//! beside the loaded libtorch, then the system's `libnccl.so.2` / `libnccl.so`.

use std::path::PathBuf;

use libloading::Library;

use crate::runtime::loaded_libtorch_dir;

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
    // <site-packages>/torch/lib -> <site-packages>/nvidia/nccl/lib
    if let Some(site) = loaded_libtorch_dir().and_then(|d| d.parent()?.parent().map(PathBuf::from)) {
        out.push(site.join("nvidia/nccl/lib/libnccl.so.2").display().to_string());
    }
    out.push("libnccl.so.2".into());
    out.push("libnccl.so".into());
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
    Err(format!("NCCL not found; tried: {}", tried.join("; ")))
}

impl NcclLibrary {
    /// NCCL's version as `major.minor.patch` from `ncclGetVersion`.
    pub fn version(&self) -> Result<String, String> {
        type GetVersion = unsafe extern "C" fn(*mut i32) -> i32;
        // SAFETY: ncclGetVersion(int*) is part of NCCL's stable C API.
        let code = unsafe {
            let f = self.library.get::<GetVersion>(b"ncclGetVersion\0").map_err(|e| e.to_string())?;
            let mut v = 0i32;
            let status = f(&mut v);
            if status != 0 {
                return Err(format!("ncclGetVersion failed with status {status}"));
            }
            v
        };
        // Since 2.9 NCCL encodes major*10000 + minor*100 + patch.
        Ok(format!("{}.{}.{}", code / 10000, (code % 10000) / 100, code % 100))
    }
}
