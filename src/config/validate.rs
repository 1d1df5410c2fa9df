//! Settings that parse but cannot be meant, checked when a config loads: each is named by its key
//! (the loader adds where its value came from). Checks that depend on the run (world size,
//! files on disk) are the trainer's.

use super::schema::{Algorithm, ResumeMode};
use super::Config;

/// A key and what is wrong with its value.
pub type Finding = (String, String);

fn finite_at_least(key: &str, value: f64, min: f64, inclusive: bool, out: &mut Vec<Finding>) {
    let ok = value.is_finite() && if inclusive { value >= min } else { value > min };
    if !ok {
        let bound = if inclusive { "≥" } else { ">" };
        out.push((key.to_string(), format!("{value} is out of range: expected a finite number {bound} {min}")));
    }
}

fn fraction(key: &str, value: f64, out: &mut Vec<Finding>) {
    if !(0.0..=1.0).contains(&value) {
        out.push((key.to_string(), format!("{value} is out of range: expected a fraction in [0, 1]")));
    }
}

/// Problems (the config is refused; the first is reported) and warnings (it loads, with a notice).
pub fn check(config: &Config) -> (Vec<Finding>, Vec<Finding>) {
    let (mut problems, mut warnings) = (Vec::new(), Vec::new());
    let (meta, optim, model) = (&config.meta, &config.optim, &config.model);

    finite_at_least("meta.inner_lr", meta.inner_lr, 0.0, true, &mut problems);
    finite_at_least("meta.outer_lr", meta.outer_lr, 0.0, false, &mut problems);
    for (i, beta) in optim.betas.iter().enumerate() {
        if !(0.0..1.0).contains(beta) {
            problems.push((format!("optim.betas.{i}"), format!("{beta} is out of range: expected [0, 1)")));
        }
    }
    finite_at_least("optim.eps", optim.eps, 0.0, false, &mut problems);
    finite_at_least("optim.weight_decay", optim.weight_decay, 0.0, true, &mut problems);
    if !optim.clip_grad.is_finite() {
        problems.push((
            "optim.clip_grad".into(),
            format!("{} is not a finite number (0 turns clipping off)", optim.clip_grad),
        ));
    }
    fraction("optim.warmup_steps_ratio", optim.warmup_steps_ratio, &mut problems);
    fraction("optim.min_lr_ratio", optim.min_lr_ratio, &mut problems);
    if model.lora_rank > 0 {
        finite_at_least("model.lora_alpha", model.lora_alpha, 0.0, false, &mut problems);
    }
    if !(0.0..1.0).contains(&model.lora_dropout) {
        problems
            .push(("model.lora_dropout".into(), format!("{} is out of range: expected [0, 1)", model.lora_dropout)));
    }

    let checkpoint = &config.checkpoint;
    match (checkpoint.resume_mode, &checkpoint.resume_path) {
        (ResumeMode::ResumePath, None) => problems.push((
            "checkpoint.resume_mode".into(),
            "resume_path needs checkpoint.resume_path, the checkpoint directory to resume from".into(),
        )),
        (mode @ (ResumeMode::Auto | ResumeMode::Disable), Some(path)) => problems.push((
            "checkpoint.resume_path".into(),
            format!(
                "`{path}` is set, but checkpoint.resume_mode is {} and would ignore it: set \
                 checkpoint.resume_mode: resume_path to resume from it, or remove resume_path",
                if mode == ResumeMode::Auto { "auto" } else { "disable" }
            ),
        )),
        _ => {}
    }

    if meta.num_inner_steps == 0 {
        match meta.algorithm {
            Algorithm::Reptile => problems.push((
                "meta.num_inner_steps".into(),
                "0 with algorithm reptile: Reptile moves θ toward the adapted θ′, which without inner steps \
                 is θ itself, so it would never train (use at least 1; for multi-task training without \
                 adaptation use algorithm fomaml with num_inner_steps 0, or sft)"
                    .into(),
            )),
            Algorithm::Sft => {}
            _ => warnings.push((
                "meta.num_inner_steps".into(),
                "0: no adaptation in training, so each meta-step follows the query loss's gradient at θ \
                 (multi-task training on the query batches); support losses and the adaptation gap are \
                 not logged"
                    .into(),
            )),
        }
    }
    (problems, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(yaml: &str) -> Vec<Finding> {
        let tree = super::super::yaml::parse(if yaml.is_empty() { "{}" } else { yaml }).unwrap();
        check(&serde_json::from_value(tree).unwrap()).0
    }

    #[test]
    fn impossible_settings_are_named() {
        assert_eq!(problems("meta: {outer_lr: -0.001}")[0].0, "meta.outer_lr");
        assert_eq!(problems("meta: {inner_lr: -1}")[0].0, "meta.inner_lr");
        assert_eq!(problems("optim: {betas: [0.9, 1.5]}")[0].0, "optim.betas.1");
        assert_eq!(problems("optim: {warmup_steps_ratio: 2}")[0].0, "optim.warmup_steps_ratio");
        assert_eq!(problems("checkpoint: {resume_path: /x}")[0].0, "checkpoint.resume_path");
        assert_eq!(problems("checkpoint: {resume_mode: resume_path}")[0].0, "checkpoint.resume_mode");
        assert_eq!(problems("meta: {algorithm: reptile, num_inner_steps: 0}")[0].0, "meta.num_inner_steps");
        assert!(problems("meta: {num_inner_steps: 0}").is_empty(), "K = 0 is valid for FOMAML");
        assert!(problems("checkpoint: {resume_mode: resume_path, resume_path: /x}").is_empty());
        assert!(problems("").is_empty(), "the defaults are valid");
    }
}
