//! The few CUDA driver calls that tch does not expose, through cudarc (loaded at run time): making
//! a device's primary context current (NCCL picks its device from it), events that say when the
//! default stream has passed a point, and the device memory in use.
//!
//! libtorch works in the same primary contexts through the runtime API, so the default stream
//! (the null stream) seen here is the one libtorch launches its kernels on.

use std::ffi::c_int;

use cudarc::driver::{result, sys};

/// A CUDA driver error as text (`CUDA_ERROR_...: description`).
fn describe(e: result::DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// The primary context of one device, as an address so it can cross threads.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    ordinal: usize,
    raw: usize,
}

impl Context {
    /// Retains `ordinal`'s primary context (the one libtorch uses) and makes it current here.
    pub fn primary(ordinal: usize) -> Result<Context, String> {
        // SAFETY: is_culib_present only tries to open the driver library.
        if !unsafe { sys::is_culib_present() } {
            return Err("the CUDA driver library (libcuda.so.1) cannot be loaded".into());
        }
        result::init().map_err(describe)?;
        let device =
            result::device::get(ordinal as c_int).map_err(|e| format!("CUDA device {ordinal}: {}", describe(e)))?;
        // SAFETY: `device` came from device::get. The retained reference is kept for the process's
        // lifetime, as libtorch keeps its own.
        let ctx = unsafe { result::primary_ctx::retain(device) }.map_err(describe)?;
        let context = Context { ordinal, raw: ctx as usize };
        context.make_current()?;
        Ok(context)
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Makes this context current on the calling thread.
    pub fn make_current(&self) -> Result<(), String> {
        // SAFETY: `raw` is a retained primary context.
        unsafe { result::ctx::set_current(self.raw as sys::CUcontext) }.map_err(describe)
    }
}

/// A point on the default stream; `done` says whether the stream has passed it.
pub struct Marker(sys::CUevent);

// SAFETY: CUDA events may be queried and destroyed from any thread of the process.
unsafe impl Send for Marker {}

impl Marker {
    /// Records a marker after everything enqueued so far on the default stream.
    pub fn record() -> Result<Marker, String> {
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map_err(describe)?;
        // SAFETY: a fresh event; the null stream is the legacy default stream libtorch uses.
        if let Err(e) = unsafe { result::event::record(event, std::ptr::null_mut()) } {
            // SAFETY: the event was created above and is not used again.
            let _ = unsafe { result::event::destroy(event) };
            return Err(describe(e));
        }
        Ok(Marker(event))
    }

    pub fn done(&self) -> Result<bool, String> {
        // SAFETY: the event is alive until drop.
        match unsafe { result::event::query(self.0) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(describe(e)),
        }
    }
}

impl Drop for Marker {
    fn drop(&mut self) {
        // SAFETY: destroying an event that has not completed is allowed (released on completion).
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

impl super::watchdog::Completion for Marker {
    fn poll(&mut self) -> Result<bool, String> {
        self.done()
    }
}

/// Device memory in use on `ordinal` (total − free: libtorch's cached blocks, the CUDA context and
/// any other process on that GPU), in bytes.
pub fn memory_in_use(ordinal: usize) -> Result<u64, String> {
    // Retained once per device: each retain is a reference that is never released.
    static CONTEXTS: std::sync::Mutex<Vec<Context>> = std::sync::Mutex::new(Vec::new());
    let mut known = CONTEXTS.lock().unwrap_or_else(|e| e.into_inner());
    match known.iter().find(|c| c.ordinal == ordinal) {
        Some(c) => c.make_current()?,
        None => known.push(Context::primary(ordinal)?),
    }
    let (free, total) = result::mem_get_info().map_err(describe)?;
    Ok((total - free) as u64)
}
