//! The original Python/verl trainer's config files, read as they are. Its keys either map onto
//! this project's (`optim.lr` is the outer learning rate, `trainer.save_freq` is
//! `checkpoint.save_freq`, a `logger` string is a one-element list, ...) or have no effect here and
//! are dropped with a one-line notice saying why (FSDP wrapping, shared-memory staging, HDFS).
//! Two spellings of one setting that disagree are an error naming both keys. Applied to every
//! config file and override before its keys are checked.

use std::collections::BTreeMap;

use serde_json::{Map, Value as Json};

use super::ConfigError;

/// What translating one tree did.
#[derive(Debug, Default)]
pub struct Translation {
    /// Keys set by translation, with the original key each came from.
    pub renamed: BTreeMap<String, String>,
    pub notices: Vec<String>,
}

/// Original keys with a home here: (original, ours).
const RENAMES: &[(&str, &str)] = &[
    // The FOMAML trainer's meta-optimizer is built from `optim` (its `meta.outer_lr` is read and
    // never used); META-LoRA's is `meta.meta_lr`.
    ("optim.lr", "meta.outer_lr"),
    ("meta.meta_lr", "meta.outer_lr"),
    ("optim.lr_warmup_steps_ratio", "optim.warmup_steps_ratio"),
    ("trainer.save_freq", "checkpoint.save_freq"),
    ("trainer.resume_mode", "checkpoint.resume_mode"),
    ("trainer.resume_from_path", "checkpoint.resume_path"),
    ("trainer.max_ckpt_to_keep", "checkpoint.max_ckpt_to_keep"),
    // It picks which rows a cap keeps, which trainer.seed does here.
    ("data.seed", "trainer.seed"),
];

/// META-LoRA's spelling of a task's keys: (original, ours).
const TASK_RENAMES: &[(&str, &str)] = &[
    ("train_files", "support_files"),
    ("val_files", "query_files"),
    ("train_max_samples", "support_max_samples"),
    ("val_max_samples", "query_max_samples"),
];

/// Original keys without effect here, and why.
const NO_EFFECT: &[(&str, &str)] = &[
    ("model.use_fsdp", "θ is sharded whenever a run has several ranks (trainer.sharding)"),
    ("model.fsdp_config", "the sharding units are fixed: the embeddings, each decoder layer, the norm and head"),
    ("model.enable_gradient_checkpointing", "sharded runs recompute each unit in the backward anyway"),
    ("model.trust_remote_code", "no Python model code is run: the decoder is built in"),
    ("model.attn_implementation", "attention is libtorch's scaled_dot_product_attention"),
    ("model.use_liger", "Liger kernels are Python/Triton"),
    ("model.external_lib", "no Python libraries are imported"),
    ("model.use_shm", "files are memory-mapped, not staged in /dev/shm"),
    ("data.use_shm", "files are memory-mapped, not staged in /dev/shm"),
    ("data.pad_mode", "training batches run without padding already (data.unpadded: true)"),
    ("data.use_dynamic_bsz", "batches have a fixed number of rows"),
    ("data.balance_dp_token", "ranks get token-balanced runs of each batch already (data.unpadded: true)"),
    ("data.micro_batch_size_per_gpu", "each rank takes its share of the batch's rows"),
    ("trainer.default_hdfs_dir", "checkpoints are written to the run directory only"),
    ("checkpoint.save_contents", "a checkpoint holds θ, the optimizer state and the trainer state"),
    ("checkpoint.load_contents", "a resume restores everything a checkpoint holds"),
];

/// verl's tracker names this trainer does not have; TensorBoard files are written instead.
const TRACKERS: &[&str] = &["wandb", "mlflow", "swanlab", "vemlp_wandb", "clearml", "trackio", "file", "tracking"];

fn take(tree: &mut Json, path: &str) -> Option<Json> {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (lookup_mut(tree, parent)?, key),
        None => (tree, path),
    };
    parent.as_object_mut()?.remove(key)
}

fn lookup_mut<'a>(tree: &'a mut Json, path: &str) -> Option<&'a mut Json> {
    path.split('.').try_fold(tree, |node, segment| node.get_mut(segment))
}

fn put(tree: &mut Json, path: &str, value: Json) {
    let mut node = tree;
    let segments: Vec<&str> = path.split('.').collect();
    for segment in &segments[..segments.len() - 1] {
        if !node.get(*segment).is_some_and(Json::is_object) {
            node.as_object_mut().expect("a mapping").insert(segment.to_string(), Json::Object(Map::new()));
        }
        node = node.get_mut(*segment).expect("inserted above");
    }
    node.as_object_mut().expect("a mapping").insert(segments[segments.len() - 1].to_string(), value);
}

/// Moves `from` to `to`; refused when `to` already holds a different value.
fn rename(tree: &mut Json, from: &str, to: &str, origin: &str, out: &mut Translation) -> Result<(), ConfigError> {
    let Some(value) = take(tree, from) else { return Ok(()) };
    let existing = lookup_mut(tree, to).map(|v| v.clone());
    match existing {
        Some(current) if current != value => {
            let current_from = out.renamed.get(to).cloned().unwrap_or_else(|| to.to_string());
            return Err(ConfigError::Invalid {
                origin: origin.to_string(),
                reason: format!(
                    "`{from}: {value}` and `{current_from}: {current}` set the same thing ({to}) to different \
                     values: keep one"
                ),
            });
        }
        _ => put(tree, to, value),
    }
    out.renamed.entry(to.to_string()).or_insert_with(|| from.to_string());
    Ok(())
}

/// `trainer.logger` as this trainer takes it: a list of console, jsonl, tensorboard.
fn translate_logger(tree: &mut Json, origin: &str, out: &mut Translation) {
    let Some(logger) = lookup_mut(tree, "trainer.logger") else { return };
    if let Json::String(one) = logger {
        *logger = Json::Array(vec![Json::String(one.clone())]);
    }
    let Json::Array(items) = logger else { return };
    let mut kept: Vec<Json> = Vec::new();
    for item in items.iter() {
        let name = item.as_str().unwrap_or_default();
        let replacement = if TRACKERS.contains(&name) { Json::String("tensorboard".into()) } else { item.clone() };
        if TRACKERS.contains(&name) {
            let how = if name.contains("wandb") || name == "tracking" {
                "; `wandb sync RUN_DIR/tensorboard` uploads them to W&B"
            } else {
                ""
            };
            out.notices.push(format!(
                "{origin}: trainer.logger `{name}`: not built in; TensorBoard event files are written to RUN_DIR/tensorboard \
                 instead{how}"
            ));
        }
        if !kept.contains(&replacement) {
            kept.push(replacement);
        }
    }
    *items = kept;
}

/// The META-LoRA trainer's task keys; such a file is META-LoRA's layout, so its algorithm and
/// its per-task caps (100 support, 200 query rows when unset) are the original's too.
fn translate_tasks(tree: &mut Json, origin: &str, out: &mut Translation) -> Result<bool, ConfigError> {
    let mut meta_lora_layout = false;
    for list in ["tasks", "eval_tasks"] {
        let Some(Json::Array(tasks)) = lookup_mut(tree, &format!("meta.{list}")) else { continue };
        for (i, task) in tasks.iter_mut().enumerate() {
            if !task.is_object() {
                continue;
            }
            let spelt_as_meta_lora = TASK_RENAMES.iter().any(|(from, _)| task.get(*from).is_some());
            for (from, to) in TASK_RENAMES {
                let mut sub = Translation::default();
                rename(task, from, to, origin, &mut sub)?;
                for (key, original) in sub.renamed {
                    out.renamed.insert(format!("meta.{list}.{i}.{key}"), format!("meta.{list}.{i}.{original}"));
                }
            }
            if spelt_as_meta_lora {
                meta_lora_layout = true;
                for (key, default) in [("support_max_samples", 100), ("query_max_samples", 200)] {
                    if task.get(key).is_none() {
                        put(task, key, Json::from(default));
                    }
                }
            }
        }
    }
    Ok(meta_lora_layout)
}

/// The FOMAML trainer's file (`meta.use_fomaml`, no `meta.algorithm`): that trainer never applied
/// its LoRA keys (the generated math-science config sets `lora_rank: 16`) and trained every
/// parameter, so they are dropped and the run is full-parameter, as the original's was.
fn drop_unapplied_lora(tree: &mut Json, origin: &str, out: &mut Translation) {
    let dropped: Vec<String> = ["model.lora_rank", "model.lora_alpha", "model.lora_dropout", "model.target_modules"]
        .into_iter()
        .filter_map(|key| take(tree, key).map(|v| format!("`{key}: {v}`")))
        .collect();
    if !dropped.is_empty() {
        out.notices.push(format!(
            "{origin}: {} dropped: the original FOMAML trainer never applied them and trained every parameter; \
             set meta.algorithm: fomaml with model.lora_rank for FOMAML-LoRA",
            dropped.join(", ")
        ));
    }
}

/// Rewrites the original trainer's keys in `tree` (one file, or one override) into this layout.
pub fn translate(tree: &mut Json, origin: &str) -> Result<Translation, ConfigError> {
    let mut out = Translation::default();
    for (key, why) in NO_EFFECT {
        if take(tree, key).is_some() {
            out.notices.push(format!("{origin}: `{key}` has no effect here: {why}"));
        }
    }
    let meta_lora_layout = tree.get("meta").is_some_and(|m| m.get("meta_lr").is_some());
    for (from, to) in RENAMES {
        rename(tree, from, to, origin, &mut out)?;
    }
    let meta_lora_layout = translate_tasks(tree, origin, &mut out)? || meta_lora_layout;
    if meta_lora_layout && lookup_mut(tree, "meta.algorithm").is_none() {
        put(tree, "meta.algorithm", Json::String("meta_lora".into()));
        out.notices.push(format!(
            "{origin}: META-LoRA's layout (meta.meta_lr, tasks' train_files / val_files): meta.algorithm is meta_lora, \
             tasks' caps default to 100 support and 200 query rows as in the original"
        ));
    }
    let fomaml_layout = !meta_lora_layout
        && lookup_mut(tree, "meta.use_fomaml").is_some()
        && lookup_mut(tree, "meta.algorithm").is_none();
    if fomaml_layout {
        drop_unapplied_lora(tree, origin, &mut out);
    }
    translate_logger(tree, origin, &mut out);
    // verl's `resume_mode: auto` resumes from resume_from_path when it is set; a null path is unset.
    if lookup_mut(tree, "checkpoint.resume_path").is_some_and(|p| p.is_null()) {
        take(tree, "checkpoint.resume_path");
        out.renamed.remove("checkpoint.resume_path");
    }
    let auto = lookup_mut(tree, "checkpoint.resume_mode").is_some_and(|m| m == "auto");
    if auto && out.renamed.contains_key("checkpoint.resume_path") {
        put(tree, "checkpoint.resume_mode", Json::String("resume_path".into()));
        out.notices.push(format!(
            "{origin}: `trainer.resume_mode: auto` with `trainer.resume_from_path` set resumes from that path, as verl \
             does (checkpoint.resume_mode: resume_path)"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_moved_explained_or_refused_when_they_disagree() {
        let mut tree = json!({
            "model": {"use_fsdp": true, "fsdp_config": {"cpu_offload": false}},
            "optim": {"lr": 3e-5, "lr_warmup_steps_ratio": 0.1},
            "meta": {"outer_lr": 3e-5},
            "trainer": {"save_freq": 500, "logger": "wandb", "resume_mode": "auto", "resume_from_path": null},
        });
        let t = translate(&mut tree, "x.yaml").unwrap();
        assert_eq!(
            tree,
            json!({
                "model": {},
                "optim": {"warmup_steps_ratio": 0.1},
                "meta": {"outer_lr": 3e-5},
                "trainer": {"logger": ["tensorboard"]},
                "checkpoint": {"save_freq": 500, "resume_mode": "auto"},
            })
        );
        assert_eq!(t.renamed["checkpoint.save_freq"], "trainer.save_freq");
        assert_eq!(t.notices.len(), 3, "{:?}", t.notices);
        assert!(t.notices.iter().any(|n| n.contains("wandb sync")), "{:?}", t.notices);

        let mut clash = json!({"optim": {"lr": 1e-4}, "meta": {"outer_lr": 3e-5}});
        let e = translate(&mut clash, "x.yaml").unwrap_err().to_string();
        assert!(e.contains("`optim.lr: 0.0001`") && e.contains("`meta.outer_lr: 0.00003`"), "{e}");
    }

    #[test]
    fn the_meta_lora_layout_picks_its_algorithm_and_caps() {
        let mut tree = json!({"meta": {"meta_lr": 5e-5, "tasks": [{"name": "a", "train_files": ["s"], "val_files": ["q"], "train_max_samples": 50}]}});
        let t = translate(&mut tree, "x.yaml").unwrap();
        assert_eq!(tree["meta"]["algorithm"], "meta_lora");
        assert_eq!(tree["meta"]["outer_lr"], 5e-5);
        assert_eq!(
            tree["meta"]["tasks"][0],
            json!({"name": "a", "support_files": ["s"], "query_files": ["q"], "support_max_samples": 50, "query_max_samples": 200})
        );
        assert_eq!(t.renamed["meta.tasks.0.support_files"], "meta.tasks.0.train_files");
    }
}
