//! Peak-RSS measurement for the memory tests, each alone in its test binary (peak RSS is per
//! process).

use fomaml::runtime::{peak_rss_bytes, reset_peak_rss};

/// glibc keeps freed large blocks for reuse once its mmap threshold has grown, which would hide
/// later allocations from the peak; a fixed threshold hands every large block back when freed.
pub fn fixed_mmap_threshold() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: a glibc tuning call with a valid parameter, made before the allocations it affects.
    assert_eq!(unsafe { mallopt(M_MMAP_THRESHOLD, 1 << 20) }, 1, "mallopt(M_MMAP_THRESHOLD) failed");
}

pub fn resident_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS is readable on Linux");
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() * 1024.0
}

/// How far above the resident size at its start `f` takes the peak.
pub fn peak_growth<T>(f: impl FnOnce() -> T) -> (f64, T) {
    reset_peak_rss();
    let before = resident_bytes();
    let out = f();
    (peak_rss_bytes().unwrap() as f64 - before, out)
}
