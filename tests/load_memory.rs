//! A sharded rank never holds the whole model: `Learner::load_sharded` reads only the tensors that
//! overlap its slices, one at a time, so a rank of four peaks near its quarter; resuming, it reads
//! only its slices of the checkpoint (`read_shard`). Alone in its test binary, because peak RSS is per
//! process.
//!
//! The negative controls, the whole model loaded as the unsharded trainer loads it and the whole
//! checkpoint read as every rank read it before, are measured the same way and must come near the
//! model's size (measured: 84%; the sharded rank: 48 MiB of a 324 MiB model, see
//! docs/PERFORMANCE.md).

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use common::memory::{fixed_mmap_threshold, peak_growth};
use fomaml::checkpoint::shards::{rank_file, read_shard};
use fomaml::checkpoint::{self, CheckpointMeta};
use fomaml::data::synthetic::{tiny_config, write_model};
use fomaml::distributed::fsdp::SharedComm;
use fomaml::distributed::{CommError, Communicator};
use fomaml::meta::core::Learner;
use fomaml::model::loader::MappedWeights;
use fomaml::model::{load_weights, ModelConfig};
use tch::{Device, Kind, Tensor};

const LAYERS: i64 = 16;

/// Rank `rank` of a world of `world` that is never asked for a collective: loading runs none.
struct Pretend {
    rank: usize,
    world: usize,
}

impl Communicator for Pretend {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&mut self, _: &Tensor) -> Result<(), CommError> {
        unreachable!("loading runs no collective")
    }
    fn all_gather(&mut self, _: &Tensor, _: &Tensor) -> Result<(), CommError> {
        unreachable!("loading runs no collective")
    }
    fn reduce_scatter_sum(&mut self, _: &Tensor, _: &Tensor) -> Result<(), CommError> {
        unreachable!("loading runs no collective")
    }
    fn broadcast(&mut self, _: &Tensor, _: usize) -> Result<(), CommError> {
        unreachable!("loading runs no collective")
    }
    fn barrier(&mut self) -> Result<(), CommError> {
        unreachable!("loading runs no collective")
    }
}

#[test]
fn a_rank_of_four_loads_and_resumes_a_quarter_plus_one_unit() {
    fixed_mmap_threshold();
    let dir = tempfile::tempdir().unwrap();
    let mut shape = tiny_config();
    for (key, value) in
        [("hidden_size", 768), ("intermediate_size", 2048), ("num_hidden_layers", LAYERS), ("head_dim", 64)]
    {
        shape[key] = value.into();
    }
    let model_dir = dir.path().join("model");
    write_model(&model_dir, &shape, 1).unwrap();
    let cfg = ModelConfig::from_dir(&model_dir).unwrap();
    let model_bytes = 4.0 * cfg.parameter_shapes().iter().map(|(_, s)| s.iter().product::<i64>()).sum::<i64>() as f64;
    let layer_bytes = model_bytes / LAYERS as f64;

    let rank = |rank: usize| {
        let comm: SharedComm = Rc::new(RefCell::new(Box::new(Pretend { rank, world: 4 })));
        let checkpoint = MappedWeights::open(&model_dir, &cfg).unwrap();
        Learner::load_sharded(cfg.clone(), &checkpoint, None, Device::Cpu, Kind::Float, 0, comm).unwrap()
    };
    let (sharded, learner) = peak_growth(|| rank(1));
    let kept: i64 = learner.params().iter().map(Tensor::numel).sum::<usize>() as i64;
    assert!((4 * kept) as f64 * 4.0 >= model_bytes, "rank 1 keeps a quarter of every unit");
    drop(learner);

    let (whole, weights) = peak_growth(|| load_weights(&model_dir, &cfg, Kind::Float, Device::Cpu).unwrap());
    drop(weights);

    // A checkpoint of the four ranks' slices, then rank 1 resuming from it.
    let layout = rank(0).layout();
    let mut meta = CheckpointMeta::new(1, 4, "model".into(), "config".into(), serde_json::json!({}));
    meta.layout = Some(layout.clone());
    let slices: Vec<(String, Vec<(String, Tensor)>)> = (0..4)
        .map(|r| {
            let learner = rank(r);
            let named = learner.names().iter().cloned().zip(learner.params().iter().map(Tensor::detach)).collect();
            (rank_file(r), named)
        })
        .collect();
    let files: Vec<(&str, Vec<(&str, &Tensor)>)> =
        slices.iter().map(|(f, ts)| (f.as_str(), ts.iter().map(|(n, t)| (n.as_str(), t)).collect())).collect();
    let dir = checkpoint::save(&dir.path().join("checkpoints"), meta, &files, None).unwrap();
    drop(files);
    drop(slices);
    let (resumed, slices) =
        peak_growth(|| read_shard(&checkpoint::CheckpointReader::open(&dir).unwrap(), &layout, "", 1, 4).unwrap());
    drop(slices);
    let (read_all, loaded) = peak_growth(|| checkpoint::load(&dir).unwrap());
    drop(loaded);

    let mib = |b: f64| b / (1 << 20) as f64;
    println!(
        "peak growth: rank 1 of 4 loading {:.0} MiB, whole model {:.0} MiB; rank 1 of 4 resuming {:.0} MiB, \
         whole checkpoint {:.0} MiB (model {:.0} MiB, one layer {:.0} MiB)",
        mib(sharded),
        mib(whole),
        mib(resumed),
        mib(read_all),
        mib(model_bytes),
        mib(layer_bytes)
    );
    // A quarter of the model, and one unit at a time: its tensors, their flat buffer, the source
    // copies and pages before they are released.
    let bound = model_bytes / 4.0 + 4.0 * layer_bytes;
    for (what, growth) in [("loading", sharded), ("resuming", resumed)] {
        assert!(
            growth <= bound,
            "rank 1 of 4 {what} peaked {:.0} MiB above its start, over {:.0} MiB",
            mib(growth),
            mib(bound)
        );
    }
    for (what, growth) in [("the whole model", whole), ("the whole checkpoint", read_all)] {
        assert!(
            growth >= 0.75 * model_bytes,
            "the control, {what} ({:.0} MiB), should reach the model's {:.0} MiB; the measurement is not sensitive",
            mib(growth),
            mib(model_bytes)
        );
    }
}
