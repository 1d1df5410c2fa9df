//! Comparison report over several methods' few-shot results and training logs: a markdown file plus PNG plots that
//! reproduce the original trainer's experiment guide's three-panel figure (few-shot curve, compute cost, accuracy vs cost).

mod intervals;
mod plot;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct MethodInput {
    pub label: String,
    pub results: PathBuf,
    pub metrics: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct ShotStats {
    shots: usize,
    acc_mean: f64,
    acc_std: Option<f64>,
    loss_mean: Option<f64>,
    loss_std: Option<f64>,
}

#[derive(Debug)]
struct TaskResults {
    name: String,
    /// Sorted by shots, whatever order the evaluator wrote them in.
    shots: Vec<ShotStats>,
}

#[derive(Debug, Default)]
struct TrainStats {
    /// None when no line carried a step time: a zero would read as "free" training.
    seconds: Option<f64>,
    peak_mib: Option<(f64, &'static str)>,
    truncated_tail: bool,
}

struct Method<'a> {
    input: &'a MethodInput,
    tasks: Vec<TaskResults>,
    /// The per-item results, when the file is `fomaml eval`'s (for intervals).
    detailed: Option<Vec<crate::eval::fewshot::TaskResults>>,
    train: Option<TrainStats>,
}

/// Writes report.md, comparison.png (3 panels) and fewshot_<task>.png (one per task) into out_dir; returns the report
/// path. `summary_shots`: the number of shots of the summary columns and of the scatter (e.g. 10; if a method lacks
/// it, the largest n <= it is used and the table says so).
pub fn write_report(methods: &[MethodInput], out_dir: &Path, summary_shots: usize) -> Result<PathBuf> {
    if methods.is_empty() {
        bail!("write_report: no methods given");
    }
    for (i, m) in methods.iter().enumerate() {
        if methods[..i].iter().any(|o| o.label == m.label) {
            bail!("write_report: duplicate method label `{}`", m.label);
        }
    }
    let mut loaded = Vec::with_capacity(methods.len());
    for input in methods {
        let tasks = parse_results(&input.results)?;
        let detailed = per_item_results(&input.results);
        let train = input.metrics.as_deref().map(parse_metrics).transpose()?;
        loaded.push(Method { input, tasks, detailed, train });
    }
    fs::create_dir_all(out_dir).with_context(|| format!("creating output directory {}", out_dir.display()))?;
    // Everything is rendered into a staging directory first, so a failure part-way leaves the previous report intact.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let staging = Staging(out_dir.join(format!(".report-staging-{}-{nanos}", std::process::id())));
    fs::create_dir(&staging.0).with_context(|| format!("creating {}", staging.0.display()))?;
    let files = render(&loaded, &staging.0, summary_shots)?;
    // render() lists report.md last: once it is in place, every image it links is too.
    for name in &files {
        let (from, to) = (staging.0.join(name), out_dir.join(name));
        fs::rename(&from, &to).with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    Ok(out_dir.join("report.md"))
}

struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Accepts JSON numbers and the strings Python-side loggers use for non-finite values ("NaN", "inf"); Err means the
/// value is of some other kind.
fn number(v: Option<&Value>) -> Result<Option<f64>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| ()),
        Some(_) => Err(()),
    }
}

fn parse_results(path: &Path) -> Result<Vec<TaskResults>> {
    let p = path.display();
    let text = fs::read_to_string(path).with_context(|| format!("reading results file {p}"))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| anyhow!("{p}: invalid JSON: {e}"))?;
    let root = root.as_object().ok_or_else(|| anyhow!("{p}: expected an object keyed by task name"))?;
    if root.is_empty() {
        bail!("{p}: results file has no tasks");
    }
    let mut tasks = Vec::with_capacity(root.len());
    for (task, per_shot) in root {
        let per_shot =
            per_shot.as_object().ok_or_else(|| anyhow!("{p}: task `{task}`: expected an object keyed by shots"))?;
        if per_shot.is_empty() {
            bail!("{p}: task `{task}` has no shot entries");
        }
        let mut shots = Vec::with_capacity(per_shot.len());
        for (key, entry) in per_shot {
            let n: usize =
                key.trim().parse().map_err(|_| anyhow!("{p}: task `{task}`: key `{key}` is not a number of shots"))?;
            let entry =
                entry.as_object().ok_or_else(|| anyhow!("{p}: task `{task}`, shots `{key}`: expected an object"))?;
            let field = |name: &str| {
                number(entry.get(name))
                    .map_err(|_| anyhow!("{p}: task `{task}`, shots `{key}`: `{name}` is not a number"))
            };
            let acc_mean = field("accuracy_mean")?
                .ok_or_else(|| anyhow!("{p}: task `{task}`, shots `{key}`: missing `accuracy_mean`"))?;
            if !(0.0..=1.0).contains(&acc_mean) {
                bail!("{p}: task `{task}`, shots `{key}`: accuracy_mean {acc_mean} is outside 0..1");
            }
            if shots.iter().any(|s: &ShotStats| s.shots == n) {
                bail!("{p}: task `{task}`: {n} shots appears twice");
            }
            let (acc_std, loss_mean, loss_std) = (field("accuracy_std")?, field("loss_mean")?, field("loss_std")?);
            shots.push(ShotStats { shots: n, acc_mean, acc_std, loss_mean, loss_std });
        }
        shots.sort_by_key(|s| s.shots);
        tasks.push(TaskResults { name: task.clone(), shots });
    }
    Ok(tasks)
}

/// `fomaml eval`'s per-item verdicts, or None for a file without them (parse_results has
/// already checked what the report needs).
fn per_item_results(path: &Path) -> Option<Vec<crate::eval::fewshot::TaskResults>> {
    let value: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
    let results = crate::eval::fewshot::from_json(&value, &path.display().to_string()).ok()?;
    let has_items = results.iter().flat_map(|t| &t.by_shots).all(|(_, s)| s.runs.iter().any(|r| !r.correct.is_empty()));
    has_items.then_some(results)
}

fn parse_metrics(path: &Path) -> Result<TrainStats> {
    let p = path.display();
    let text = fs::read_to_string(path).with_context(|| format!("reading training log {p}"))?;
    let lines: Vec<&str> = text.lines().collect();
    let mut stats = TrainStats::default();
    let (mut gpu, mut rss) = (None::<f64>, None::<f64>);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Map<String, Value> = match serde_json::from_str(line) {
            Ok(r) => r,
            // A run killed (or still running) mid-write leaves a partial last line; that must not sink the report.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                stats.truncated_tail = true;
                continue;
            }
            Err(e) => bail!("{p}:{}: not a JSON object: {e}", i + 1),
        };
        let field = |key: &str| number(record.get(key)).map_err(|_| anyhow!("{p}:{}: `{key}` is not a number", i + 1));
        if let Some(t) = field("perf/step_time_s")?.filter(|t| t.is_finite()) {
            stats.seconds = Some(stats.seconds.unwrap_or(0.0) + t);
        }
        for (key, peak) in [("perf/peak_gpu_mib", &mut gpu), ("perf/peak_rss_mib", &mut rss)] {
            if let Some(v) = field(key)?.filter(|v| v.is_finite()) {
                *peak = Some(peak.map_or(v, |p| p.max(v)));
            }
        }
    }
    stats.peak_mib = gpu.map(|g| (g, "GPU")).or(rss.map(|r| (r, "host RSS")));
    Ok(stats)
}

/// The largest evaluated shots <= `target` for every task, or the first task that has none.
fn summary_points(tasks: &[TaskResults], target: usize) -> Result<Vec<(&str, ShotStats)>, &str> {
    tasks
        .iter()
        .map(|t| t.shots.iter().rev().find(|s| s.shots <= target).map(|s| (t.name.as_str(), *s)).ok_or(t.name.as_str()))
        .collect()
}

/// Mean over tasks at the shot counts every task has, so each point averages the same tasks.
fn mean_curve(tasks: &[TaskResults]) -> Vec<(f64, f64, f64)> {
    let k = tasks.len() as f64;
    tasks[0]
        .shots
        .iter()
        .filter_map(|s0| {
            let at: Vec<ShotStats> =
                tasks.iter().filter_map(|t| t.shots.iter().find(|s| s.shots == s0.shots).copied()).collect();
            (at.len() == tasks.len()).then(|| {
                let acc = at.iter().map(|s| s.acc_mean).sum::<f64>() / k * 100.0;
                let err = at.iter().map(|s| s.acc_std.unwrap_or(0.0)).sum::<f64>() / k * 100.0;
                (s0.shots as f64, acc, err)
            })
        })
        .collect()
}

fn fmt_duration(seconds: f64) -> String {
    if seconds < 3600.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.2} h", seconds / 3600.0)
    }
}

fn fmt_pm(mean: Option<f64>, std: Option<f64>, scale: f64, digits: usize, suffix: &str) -> String {
    match (mean, std) {
        (None, _) => "n/a".into(),
        (Some(m), None) => format!("{:.digits$}{suffix}", m * scale),
        (Some(m), Some(s)) => format!("{:.digits$}{suffix} ± {:.digits$}", m * scale, s * scale),
    }
}

// Labels and task names come from users; a stray pipe would split a table cell.
fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

fn file_stem(task: &str, taken: &[String]) -> String {
    let clean: String =
        task.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let mut stem = format!("fewshot_{clean}");
    // Distinct task names may sanitise to the same file name.
    for k in 2.. {
        if !taken.contains(&stem) {
            break;
        }
        stem = format!("fewshot_{clean}_{k}");
    }
    stem
}

/// Writes every output into `dir` and returns the file names written.
fn render(methods: &[Method], dir: &Path, summary_shots: usize) -> Result<Vec<String>> {
    // 1. What the report is made of.
    let mut out = String::from("# Few-shot evaluation report\n\n");
    for m in methods {
        let log = m.input.metrics.as_ref().map_or("none".into(), |p| format!("`{}`", p.display()));
        writeln!(out, "- **{}**: results `{}`, training log {log}", md(&m.input.label), m.input.results.display())?;
    }

    // 2. The summary table, and the cost points of the comparison figure.
    let mut notes = Vec::new();
    let max_seconds = methods.iter().filter_map(|m| m.train.as_ref()?.seconds).fold(0.0, f64::max);
    let (unit, unit_s) = if max_seconds < 3600.0 { ("min", 60.0) } else { ("h", 3600.0) };
    let costs = summary_section(methods, summary_shots, unit_s, &mut out, &mut notes)?;

    // 3. Notes, then accuracy over all tasks with intervals.
    notes.extend(comparability_notes(methods));
    let detailed: Vec<intervals::Detailed> =
        methods.iter().map(|m| intervals::Detailed { label: &m.input.label, results: m.detailed.as_deref() }).collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        for n in &notes {
            writeln!(out, "- {n}")?;
        }
    }
    out.push_str(&intervals::section(&detailed).unwrap_or_default());

    // 4. The comparison figure.
    let curves: Vec<plot::Curve> = methods
        .iter()
        .enumerate()
        .map(|(i, m)| plot::Curve { label: m.input.label.clone(), color: i, points: mean_curve(&m.tasks) })
        .collect();
    plot::comparison_png(&dir.join("comparison.png"), &curves, &costs, unit, summary_shots)?;
    out.push_str("\n![Comparison: few-shot curve, computational cost, accuracy vs training time](comparison.png)\n");
    let mut files = vec!["comparison.png".to_string()];

    // 5. A section and a figure per task; report.md last, once every image it links exists.
    files.extend(task_sections(methods, dir, &mut out)?);
    fs::write(dir.join("report.md"), out).with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    files.push("report.md".into());
    Ok(files)
}

/// The summary table at `summary_shots` (appended to `out`); returns the methods' cost points.
fn summary_section(
    methods: &[Method],
    summary_shots: usize,
    unit_s: f64,
    out: &mut String,
    notes: &mut Vec<String>,
) -> Result<Vec<plot::Cost>> {
    let mut costs = Vec::new();
    writeln!(out, "\n## Summary ({summary_shots}-shot)\n")?;
    out.push_str("| Method | Mean accuracy over tasks | Shots used | Training time | Peak memory | Memory source |\n");
    out.push_str("|---|---:|---|---:|---:|---|\n");
    for (i, m) in methods.iter().enumerate() {
        let label = md(&m.input.label);
        let (acc, shots_used) = summary_accuracy(m, summary_shots, notes);
        let train = m.train.as_ref();
        let time = train.and_then(|t| t.seconds);
        let peak = train.and_then(|t| t.peak_mib);
        match (train, time) {
            (None, _) => notes.push(format!("{label}: no training log, so it is left out of the cost panels.")),
            (Some(_), None) => {
                notes.push(format!("{label}: training log has no `perf/step_time_s`; left out of the cost panels."))
            }
            (Some(_), Some(t)) => costs.push(plot::Cost {
                label: m.input.label.clone(),
                color: i,
                time: t / unit_s,
                mem_gib: peak.map(|p| p.0 / 1024.0),
                mem_src: peak.map_or("", |p| if p.1 == "GPU" { "GPU" } else { "RSS" }),
                acc,
            }),
        }
        if train.is_some_and(|t| t.truncated_tail) {
            notes.push(format!("{label}: the last line of the training log is incomplete and was skipped."));
        }
        writeln!(
            out,
            "| {label} | {} | {shots_used} | {} | {} | {} |",
            acc.map_or("n/a".into(), |a| format!("{a:.1}%")),
            time.map_or("n/a".into(), fmt_duration),
            peak.map_or("n/a".into(), |p| format!("{:.1} GiB", p.0 / 1024.0)),
            peak.map_or(if train.is_some() { "not logged" } else { "no training log" }, |p| p.1),
        )?;
    }
    out.push_str(
        "\nAccuracy cells are mean ± std as given in the results files, in percent (std in percentage points); \
         training time is the sum of `perf/step_time_s`; peak memory is the max of `perf/peak_gpu_mib`, else of \
         `perf/peak_rss_mib`.\n",
    );
    Ok(costs)
}

/// A method's mean accuracy over tasks at `summary_shots` (or the largest fewer a task has), and
/// the shots it used, as the summary shows them.
fn summary_accuracy(m: &Method, summary_shots: usize, notes: &mut Vec<String>) -> (Option<f64>, String) {
    match summary_points(&m.tasks, summary_shots) {
        Ok(pts) => {
            let acc = pts.iter().map(|p| p.1.acc_mean).sum::<f64>() / pts.len() as f64 * 100.0;
            let fallback: Vec<String> = pts
                .iter()
                .filter(|p| p.1.shots != summary_shots)
                .map(|(t, s)| format!("{} for `{}`", s.shots, md(t)))
                .collect();
            let used = if fallback.is_empty() {
                summary_shots.to_string()
            } else {
                format!("{} (no {summary_shots}-shot result)", fallback.join(", "))
            };
            (Some(acc), used)
        }
        Err(task) => {
            let label = md(&m.input.label);
            notes.push(format!("{label}: task `{}` has no result with ≤ {summary_shots} shots.", md(task)));
            (None, "none".into())
        }
    }
}

/// Why the methods' numbers may not compare: different task sets, files without per-item verdicts.
fn comparability_notes(methods: &[Method]) -> Vec<String> {
    let mut notes = Vec::new();
    let task_sets: Vec<Vec<&str>> =
        methods.iter().map(|m| m.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()).collect();
    if task_sets.iter().any(|s| s.len() != task_sets[0].len() || s.iter().any(|t| !task_sets[0].contains(t))) {
        notes.push(
            "Methods were evaluated on different task sets, so their mean accuracies are not directly comparable."
                .into(),
        );
    }
    for m in methods.iter().filter(|m| m.detailed.is_none()) {
        let label = md(&m.input.label);
        notes.push(format!("{label}: the results file has no per-item verdicts, so it has no intervals."));
    }
    notes
}

/// Per task: its figure (written into `dir`) and its table of every method at every shot count,
/// appended to `out`; returns the figures' file names.
fn task_sections(methods: &[Method], dir: &Path, out: &mut String) -> Result<Vec<String>> {
    let mut task_names: Vec<&str> = Vec::new();
    for t in methods.iter().flat_map(|m| &m.tasks) {
        if !task_names.contains(&t.name.as_str()) {
            task_names.push(&t.name);
        }
    }
    let mut stems = Vec::new();
    for task in task_names {
        let per_method: Vec<Option<&TaskResults>> =
            methods.iter().map(|m| m.tasks.iter().find(|t| t.name == task)).collect();
        let stem = file_stem(task, &stems);
        let curves: Vec<plot::Curve> = methods
            .iter()
            .zip(&per_method)
            .enumerate()
            .filter_map(|(i, (m, t))| {
                let points =
                    (*t)?.shots.iter().map(|s| (s.shots as f64, s.acc_mean * 100.0, s.acc_std.unwrap_or(0.0) * 100.0));
                Some(plot::Curve { label: m.input.label.clone(), color: i, points: points.collect() })
            })
            .collect();
        plot::fewshot_png(&dir.join(format!("{stem}.png")), task, &curves)?;
        writeln!(out, "\n## Task `{}`\n\n![{}]({stem}.png)\n", md(task), md(task))?;
        task_table(methods, &per_method, out)?;
        stems.push(stem);
    }
    Ok(stems.iter().map(|s| format!("{s}.png")).collect())
}

/// One task's table: accuracy and loss of every method at every shot count any method has.
fn task_table(methods: &[Method], per_method: &[Option<&TaskResults>], out: &mut String) -> Result<()> {
    out.push_str("| Shots |");
    for m in methods {
        let l = md(&m.input.label);
        write!(out, " {l} accuracy | {l} loss |")?;
    }
    writeln!(out, "\n|---:|{}", "---:|---:|".repeat(methods.len()))?;
    let mut shots: Vec<usize> = per_method.iter().flatten().flat_map(|t| t.shots.iter().map(|s| s.shots)).collect();
    shots.sort_unstable();
    shots.dedup();
    for n in shots {
        write!(out, "| {n} |")?;
        for t in per_method {
            match t.and_then(|t| t.shots.iter().find(|s| s.shots == n)) {
                Some(s) => write!(
                    out,
                    " {} | {} |",
                    fmt_pm(Some(s.acc_mean), s.acc_std, 100.0, 1, "%"),
                    fmt_pm(s.loss_mean, s.loss_std, 1.0, 3, "")
                )?,
                None => out.push_str(" – | – |"),
            }
        }
        out.push('\n');
    }
    Ok(())
}

#[cfg(test)]
mod tests;
