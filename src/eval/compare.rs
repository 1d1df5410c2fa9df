//! Paired comparison of two few-shot result files (`fomaml compare A.json B.json`): for each number
//! of shots, the accuracy of B minus A over the items both evaluated (same task, run and item), with
//! a percentile bootstrap confidence interval that resamples items within each task, so every task
//! keeps its weight.

use anyhow::{bail, Result};

use super::fewshot::TaskResults;
use crate::data::sampler::SplitMix64;

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub shots: usize,
    /// Paired observations (item × run) over all shared tasks.
    pub pairs: usize,
    pub tasks: usize,
    pub accuracy_a: f64,
    pub accuracy_b: f64,
    /// accuracy_b − accuracy_a and its confidence interval.
    pub difference: f64,
    pub low: f64,
    pub high: f64,
}

/// `level` is the interval's coverage (0.95); `resamples` bootstrap draws from `seed`.
pub fn paired_bootstrap(
    a: &[TaskResults],
    b: &[TaskResults],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Result<Vec<Comparison>> {
    let mut shots: Vec<usize> = a.iter().flat_map(|t| t.by_shots.iter().map(|(n, _)| *n)).collect();
    shots.sort_unstable();
    shots.dedup();
    let mut out = Vec::new();
    for n in shots {
        // Per task: the (a, b) correctness of each item in each run both files have.
        let mut per_task: Vec<Vec<(f64, f64)>> = Vec::new();
        for ta in a {
            let Some(tb) = b.iter().find(|t| t.task == ta.task) else { continue };
            let find = |t: &TaskResults| t.by_shots.iter().find(|(m, _)| *m == n).map(|(_, r)| r.clone());
            let (Some(ra), Some(rb)) = (find(ta), find(tb)) else { continue };
            let mut pairs = Vec::new();
            for (run_a, run_b) in ra.runs.iter().zip(&rb.runs) {
                if run_a.correct.len() != run_b.correct.len() {
                    bail!(
                        "task `{}`, {n} shots: {} items in one file, {} in the other (not the same evaluation)",
                        ta.task,
                        run_a.correct.len(),
                        run_b.correct.len()
                    );
                }
                pairs.extend(run_a.correct.iter().zip(&run_b.correct).map(|(x, y)| (f64::from(*x), f64::from(*y))));
            }
            if !pairs.is_empty() {
                per_task.push(pairs);
            }
        }
        if per_task.is_empty() {
            continue;
        }
        let mean_of = |f: &dyn Fn(&(f64, f64)) -> f64| {
            let total: usize = per_task.iter().map(Vec::len).sum();
            per_task.iter().flatten().map(f).sum::<f64>() / total as f64
        };
        let (accuracy_a, accuracy_b) = (mean_of(&|p| p.0), mean_of(&|p| p.1));
        let mut rng = SplitMix64::new(seed ^ n as u64);
        let mut diffs: Vec<f64> = (0..resamples.max(1))
            .map(|_| {
                let (mut sum, mut count) = (0.0, 0usize);
                for pairs in &per_task {
                    for _ in 0..pairs.len() {
                        let (x, y) = pairs[rng.below(pairs.len() as u64) as usize];
                        sum += y - x;
                    }
                    count += pairs.len();
                }
                sum / count as f64
            })
            .collect();
        diffs.sort_by(f64::total_cmp);
        let quantile = |q: f64| diffs[((q * (diffs.len() - 1) as f64).round() as usize).min(diffs.len() - 1)];
        let tail = (1.0 - level) / 2.0;
        out.push(Comparison {
            shots: n,
            pairs: per_task.iter().map(Vec::len).sum(),
            tasks: per_task.len(),
            accuracy_a,
            accuracy_b,
            difference: accuracy_b - accuracy_a,
            low: quantile(tail),
            high: quantile(1.0 - tail),
        });
    }
    if out.is_empty() {
        bail!("the two result files share no task and number of shots");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::fewshot::{RunResult, ShotResult};

    fn results(task: &str, correct: &[bool]) -> TaskResults {
        let accuracy = correct.iter().filter(|c| **c).count() as f64 / correct.len() as f64;
        let run = RunResult { loss: 0.0, accuracy, correct: correct.to_vec() };
        let shot =
            ShotResult { loss_mean: 0.0, loss_std: 0.0, accuracy_mean: accuracy, accuracy_std: 0.0, runs: vec![run] };
        TaskResults { task: task.into(), by_shots: vec![(5, shot)] }
    }

    #[test]
    fn a_clear_improvement_has_an_interval_above_zero_and_identical_files_sit_at_zero() {
        let a: Vec<bool> = (0..200).map(|i| i % 4 == 0).collect(); // 25%
        let b: Vec<bool> = (0..200).map(|i| i % 4 != 3).collect(); // 75%
        let c = paired_bootstrap(&[results("t", &a)], &[results("t", &b)], 2000, 0.95, 1).unwrap();
        assert_eq!((c[0].shots, c[0].pairs, c[0].tasks), (5, 200, 1));
        assert!((c[0].difference - 0.5).abs() < 1e-12);
        assert!(c[0].low > 0.35 && c[0].high < 0.65 && c[0].low < 0.5 && c[0].high > 0.5, "{:?}", c[0]);

        let same = paired_bootstrap(&[results("t", &a)], &[results("t", &a)], 500, 0.95, 1).unwrap();
        assert_eq!((same[0].difference, same[0].low, same[0].high), (0.0, 0.0, 0.0));

        // Noise of one flipped item in 200 keeps zero inside the interval.
        let mut flipped = a.clone();
        flipped[1] = !flipped[1];
        let small = paired_bootstrap(&[results("t", &a)], &[results("t", &flipped)], 2000, 0.95, 1).unwrap();
        assert!(small[0].low <= 0.0 && small[0].high >= 0.0, "{:?}", small[0]);

        let other = paired_bootstrap(&[results("t", &a)], &[results("u", &a)], 10, 0.95, 1);
        assert!(other.unwrap_err().to_string().contains("share no task"));
    }
}
