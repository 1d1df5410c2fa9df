//! The report's interval table: per number of shots, each method's accuracy over all tasks with a
//! bootstrap interval, the share of generations cut by the token budget, and each method's paired
//! difference from the first. Items are resampled within tasks, each carrying all its runs
//! ([`crate::eval::compare`]); files without per-item results (older or foreign ones) get no
//! interval. A second table does the same for the reference answers' loss, which still ranks
//! methods when accuracy sits at the floor.

use std::fmt::Write as _;

use crate::eval::compare::{item_accuracy, item_loss, paired_bootstrap, stratified_bootstrap, Comparison, Interval};
use crate::eval::fewshot::{RunResult, TaskResults};

const RESAMPLES: usize = 4000;
const LEVEL: f64 = 0.95;

/// A method's label and its per-item results, when its file has them.
pub(super) struct Detailed<'a> {
    pub label: &'a str,
    pub results: Option<&'a [TaskResults]>,
}

fn shot_counts(methods: &[Detailed]) -> Vec<usize> {
    let mut shots: Vec<usize> = methods
        .iter()
        .flat_map(|m| m.results.into_iter().flatten())
        .flat_map(|t| t.by_shots.iter().map(|s| s.0))
        .collect();
    shots.sort_unstable();
    shots.dedup();
    shots
}

/// A per-item quantity at `n` shots over every task that has it, with its interval.
fn mean_at(results: &[TaskResults], n: usize, per_item: fn(&[RunResult]) -> Option<Vec<f64>>) -> Option<Interval> {
    let mut strata = Vec::new();
    for task in results {
        let Some((_, shot)) = task.by_shots.iter().find(|(m, _)| *m == n) else { continue };
        strata.push(per_item(&shot.runs)?);
    }
    (!strata.iter().all(Vec::is_empty)).then(|| stratified_bootstrap(&strata, RESAMPLES, LEVEL, n as u64))
}

/// The share of generations at `n` shots that reached the token budget.
fn cut_at(results: &[TaskResults], n: usize) -> Option<f64> {
    let runs = results.iter().flat_map(|t| t.by_shots.iter().filter(|(m, _)| *m == n)).flat_map(|(_, s)| &s.runs);
    let judged: Vec<bool> = runs.flat_map(|r| r.truncated.iter().copied()).collect();
    (!judged.is_empty()).then(|| judged.iter().filter(|t| **t).count() as f64 / judged.len() as f64)
}

fn percent(i: Interval) -> String {
    format!("{:.1}% [{:.1}, {:.1}]", 100.0 * i.mean, 100.0 * i.low, 100.0 * i.high)
}

fn points(i: Interval) -> String {
    format!("{:+.1} [{:+.1}, {:+.1}]", 100.0 * i.mean, 100.0 * i.low, 100.0 * i.high)
}

/// The section, or None when no method's file has per-item results.
pub(super) fn section(methods: &[Detailed]) -> Option<String> {
    if methods.iter().all(|m| m.results.is_none()) {
        return None;
    }
    let mut out = String::from("\n## Accuracy over all tasks, with intervals\n\n");
    let _ = writeln!(
        out,
        "Accuracy over every evaluated item of every task; an item's accuracy is the mean over its runs. \
         Intervals are {:.0}% percentile bootstrap intervals ({RESAMPLES} resamples) that resample items \
         within each task, each item carrying all its runs. \"cut\" is the share of generations that reached \
         the token budget (scored as generated). \"− {}\" is the paired difference from the first method over \
         the items both evaluated, in percentage points.\n",
        100.0 * LEVEL,
        super::md(methods[0].label)
    );
    out.push_str("| Shots |");
    for (i, m) in methods.iter().enumerate() {
        let l = super::md(m.label);
        let _ = write!(out, " {l} accuracy | {l} cut |");
        if i > 0 {
            let _ = write!(out, " {l} − {} |", super::md(methods[0].label));
        }
    }
    let columns = 2 * methods.len() + methods.len().saturating_sub(1);
    let _ = writeln!(out, "\n|---:|{}", "---:|".repeat(columns));
    let differences: Vec<Vec<Comparison>> = methods
        .iter()
        .map(|m| match (methods[0].results, m.results) {
            (Some(a), Some(b)) => paired_bootstrap(a, b, RESAMPLES, LEVEL, 0).unwrap_or_default(),
            _ => Vec::new(),
        })
        .collect();
    for n in shot_counts(methods) {
        let _ = write!(out, "| {n} |");
        for (i, m) in methods.iter().enumerate() {
            match m.results.and_then(|r| Some((mean_at(r, n, item_accuracy)?, cut_at(r, n)))) {
                Some((acc, cut)) => {
                    let cut = cut.map_or("–".into(), |c| format!("{:.1}%", 100.0 * c));
                    let _ = write!(out, " {} | {cut} |", percent(acc));
                }
                None => out.push_str(" – | – |"),
            }
            if i > 0 {
                let difference = differences[i].iter().find(|r| r.shots == n).map(|r| points(r.difference));
                let _ = write!(out, " {} |", difference.unwrap_or("–".into()));
            }
        }
        out.push('\n');
    }
    out.push_str(&loss_table(methods, &differences).unwrap_or_default());
    Some(out)
}

/// The reference answers' loss at each number of shots, as the accuracy table has it; None when
/// no file records per-item losses.
fn loss_table(methods: &[Detailed], differences: &[Vec<Comparison>]) -> Option<String> {
    let shots = shot_counts(methods);
    let with_losses = |m: &Detailed| shots.iter().any(|&n| m.results.and_then(|r| mean_at(r, n, item_loss)).is_some());
    if !methods.iter().any(with_losses) {
        return None;
    }
    let mut out = String::from("\n### Loss of the reference answers, with intervals\n\n");
    out.push_str(
        "Each item's mean loss per token of its reference response (teacher-forced, after adaptation), \
         averaged over its runs and over items; lower is better. Intervals and paired differences as above.\n\n| Shots |",
    );
    for (i, m) in methods.iter().enumerate() {
        let l = super::md(m.label);
        let _ = write!(out, " {l} loss |");
        if i > 0 {
            let _ = write!(out, " {l} − {} |", super::md(methods[0].label));
        }
    }
    let _ = writeln!(out, "\n|---:|{}", "---:|".repeat(2 * methods.len() - 1));
    let loss = |i: Interval| format!("{:.3} [{:.3}, {:.3}]", i.mean, i.low, i.high);
    let signed = |i: Interval| format!("{:+.3} [{:+.3}, {:+.3}]", i.mean, i.low, i.high);
    for n in shots {
        let _ = write!(out, "| {n} |");
        for (i, m) in methods.iter().enumerate() {
            let mean = m.results.and_then(|r| mean_at(r, n, item_loss));
            let _ = write!(out, " {} |", mean.map_or("–".into(), loss));
            if i > 0 {
                let paired = differences[i].iter().find(|r| r.shots == n).and_then(|r| r.loss);
                let _ = write!(out, " {} |", paired.map_or("–".into(), |p| signed(p.difference)));
            }
        }
        out.push('\n');
    }
    Some(out)
}
