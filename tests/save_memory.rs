//! A checkpoint is streamed to its file: each tensor goes from its device to the file a chunk at a
//! time, hashed as written, so a save holds at most one chunk beyond the state itself (at 4B scale
//! a rank's state is 12 GB; holding it two or three times over, as a save that serialises in
//! memory does, is more than many hosts have). Alone in its test binary, because peak RSS is per
//! process.
//!
//! The negative control, the same state serialised into one buffer before writing, is measured
//! the same way and must come near the state's size.

mod common;

use std::io::Write;

use common::memory::{fixed_mmap_threshold, peak_growth};
use fomaml::checkpoint::{self, CheckpointMeta};
use fomaml::tensor_io::{CHUNK_BYTES, WRITE_BUFFER_BYTES};
use tch::{Device, Kind, Tensor};

const MIB: f64 = (1 << 20) as f64;

#[test]
fn a_save_holds_one_chunk_beyond_the_state() {
    fixed_mmap_threshold();
    // θ and two moments of a 32M-parameter model, in tensors of 8 MiB to 64 MiB, one of them a
    // non-contiguous view (copied whole before it is written: the "one tensor" of the bound).
    let sizes = [16 << 20, 8 << 20, 4 << 20, 2 << 20, 2 << 20];
    let mut state: Vec<(String, Tensor)> = Vec::new();
    for kind in ["", "exp_avg/", "exp_avg_sq/"] {
        for (i, n) in sizes.iter().enumerate() {
            state.push((format!("{kind}w{i}"), Tensor::randn([*n], (Kind::Float, Device::Cpu))));
        }
    }
    let transposed = Tensor::randn([1024, 1024], (Kind::Float, Device::Cpu)).transpose(0, 1);
    state.push(("transposed".into(), transposed));
    let state_bytes: f64 = state.iter().map(|(_, t)| (t.numel() * 4) as f64).sum();
    let largest_view = (1 << 20) as f64 * 4.0;
    let refs: Vec<(&str, &Tensor)> = state.iter().map(|(n, t)| (n.as_str(), t)).collect();

    let root = tempfile::tempdir().unwrap();
    let meta = CheckpointMeta::new(1, 1, "m".into(), "c".into(), serde_json::json!({}));
    let (streamed, dir) = peak_growth(|| checkpoint::save(root.path(), meta, &[("state.safetensors", refs)], None));
    let dir = dir.unwrap();
    let written = std::fs::metadata(dir.join("state.safetensors")).unwrap().len() as f64;
    assert!(written > state_bytes, "the whole state was written");
    checkpoint::load(&dir).expect("the streamed file reads back and matches its sha256");

    // The control: the same bytes gathered in memory first.
    let control_path = root.path().join("control.bin");
    let (buffered, ()) = peak_growth(|| {
        let mut buffer = Vec::with_capacity(state_bytes as usize);
        for (_, t) in &state {
            let t = t.contiguous();
            let mut bytes = vec![0u8; t.numel() * 4];
            t.copy_data_u8(&mut bytes, t.numel());
            buffer.extend_from_slice(&bytes);
        }
        std::fs::File::create(&control_path).unwrap().write_all(&buffer).unwrap();
    });

    let bound = 0.10 * state_bytes + largest_view + (CHUNK_BYTES + WRITE_BUFFER_BYTES) as f64;
    eprintln!(
        "state {:.0} MiB: streamed save peak +{:.1} MiB (bound {:.1} MiB), buffered control +{:.1} MiB",
        state_bytes / MIB,
        streamed / MIB,
        bound / MIB,
        buffered / MIB
    );
    assert!(buffered >= 0.9 * state_bytes, "the control must show the whole state held: +{:.1} MiB", buffered / MIB);
    assert!(
        streamed <= bound,
        "a save held +{:.1} MiB beyond the state (bound {:.1} MiB)",
        streamed / MIB,
        bound / MIB
    );
}
