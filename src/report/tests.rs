use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system temp dir, removed when dropped (tests run in parallel, hence the counter).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("report-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(acc: f64, std: f64, loss: f64) -> String {
    format!(
        r#"{{"loss_mean": {loss}, "loss_std": 0.01, "accuracy_mean": {acc}, "accuracy_std": {std}, "runs": [1, 2]}}"#
    )
}

/// `accs[task][k]` is the accuracy at `shots[k]`.
fn results(shots: &[&str], accs: [&[f64]; 2]) -> String {
    let task = |a: &[f64]| {
        let cells: Vec<String> =
            shots.iter().zip(a).map(|(s, &a)| format!("\"{s}\": {}", entry(a, 0.02, 0.85))).collect();
        format!("{{{}}}", cells.join(", "))
    };
    format!(r#"{{"calculus": {}, "theorem_proving": {}}}"#, task(accs[0]), task(accs[1]))
}

fn input(label: &str, results: PathBuf, metrics: Option<PathBuf>) -> MethodInput {
    MethodInput { label: label.into(), results, metrics }
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

fn three_methods(dir: &TempDir) -> Vec<MethodInput> {
    let fomaml = dir.write("fomaml.json", &results(&["0", "5", "10"], [&[0.3, 0.5, 0.6], &[0.35, 0.55, 0.65]]));
    let fomaml_log = dir.write(
        "fomaml.jsonl",
        concat!(
            r#"{"step": 1, "meta/loss": "NaN", "perf/step_time_s": 1800, "perf/peak_gpu_mib": 30000, "#,
            r#""perf/peak_rss_mib": 900}"#,
            "\n",
            r#"{"step": 2, "perf/step_time_s": "NaN"}"#,
            "\n\n",
            r#"{"step": 3, "perf/step_time_s": 5400.0, "perf/peak_gpu_mib": 35840.0}"#,
            "\n",
        ),
    );
    // No 10-shot entry, so the summary must fall back to 5; keys deliberately out of order.
    let meta = dir.write("meta.json", &results(&["5", "0"], [&[0.5, 0.2], &[0.6, 0.25]]));
    let meta_log = dir.write(
        "meta.jsonl",
        concat!(
            r#"{"step": 1, "perf/step_time_s": 600, "perf/peak_rss_mib": 2048}"#,
            "\n",
            r#"{"step": 2, "perf/step_time_s": 600}"#,
            "\n",
            r#"{"step": 3, "perf/st"#,
        ),
    );
    let lora = dir.write("lora.json", &results(&["10", "0", "5"], [&[0.55, 0.3, 0.45], &[0.5, 0.3, 0.4]]));
    vec![
        input("FOMAML", fomaml, Some(fomaml_log)),
        input("META-LORA", meta, Some(meta_log)),
        input("Std LoRA", lora, None),
    ]
}

#[test]
fn report_has_tables_numbers_and_plots() {
    let dir = TempDir::new();
    let out = dir.0.join("out");
    let report = write_report(&three_methods(&dir), &out, 10).unwrap();
    assert_eq!(report, out.join("report.md"));
    let md = fs::read_to_string(&report).unwrap();
    for want in [
        "| FOMAML | 62.5% | 10 | 2.00 h | 35.0 GiB | GPU |",
        "| META-LORA | 55.0% | 5 for `calculus`, 5 for `theorem_proving` (no 10-shot result) | 20.0 min |",
        "| 20.0 min | 2.0 GiB | host RSS |",
        "| Std LoRA | 52.5% | 10 | n/a | n/a | no training log |",
        "Std LoRA: no training log",
        "META-LORA: the last line of the training log is incomplete",
        "## Task `calculus`",
        "![calculus](fewshot_calculus.png)",
        "| 10 | 60.0% ± 2.0 | 0.850 ± 0.010 | – | – | 55.0% ± 2.0 | 0.850 ± 0.010 |",
        "| 0 | 35.0% ± 2.0 |",
        "](comparison.png)",
    ] {
        assert!(md.contains(want), "report.md lacks {want:?}:\n{md}");
    }
    assert_eq!(png_size(&out.join("comparison.png")), plot::COMPARISON_SIZE);
    for task in ["calculus", "theorem_proving"] {
        assert_eq!(png_size(&out.join(format!("fewshot_{task}.png"))), plot::FEWSHOT_SIZE);
    }
    let leftovers: Vec<_> = fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 4, "unexpected files in the output: {leftovers:?}");
}

#[test]
fn without_any_training_log_the_cost_panels_are_placeholders() {
    let dir = TempDir::new();
    let a = dir.write("a.json", &results(&["0", "5", "10"], [&[0.1, 0.2, 0.3], &[0.2, 0.3, 0.4]]));
    let b = dir.write("b.json", &results(&["0", "5", "10"], [&[0.1, 0.4, 0.5], &[0.2, 0.5, 0.6]]));
    let report = write_report(&[input("A", a, None), input("B", b, None)], &dir.0, 10).unwrap();
    let md = fs::read_to_string(report).unwrap();
    assert!(md.contains("| A | 35.0% | 10 | n/a |") && md.contains("| B | 55.0% |"), "{md}");
    assert_eq!(png_size(&dir.0.join("comparison.png")), plot::COMPARISON_SIZE);
}

fn error_of(methods: &[MethodInput], out: &Path) -> String {
    format!("{:#}", write_report(methods, out, 10).unwrap_err())
}

#[test]
fn bad_inputs_name_the_file_and_leave_the_old_report() {
    let dir = TempDir::new();
    let out = dir.0.join("out");
    let good = three_methods(&dir);
    write_report(&good, &out, 10).unwrap();
    let before = fs::read_to_string(out.join("report.md")).unwrap();

    let missing = dir.0.join("missing.json");
    let e = error_of(&[input("X", missing.clone(), None)], &out);
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let cases = [
        ("bad.json", "{\"calculus\": {\"5\": ", "line 1"),
        ("empty.json", "{}", "no tasks"),
        ("shots.json", r#"{"calculus": {"five": {"accuracy_mean": 0.5}}}"#, "key `five`"),
        ("acc.json", r#"{"calculus": {"5": {"accuracy_mean": [0.5]}}}"#, "`accuracy_mean` is not a number"),
        ("pct.json", r#"{"calculus": {"5": {"accuracy_mean": 62.5}}}"#, "outside 0..1"),
        ("noacc.json", r#"{"calculus": {"5": {"loss_mean": 1.0}}}"#, "missing `accuracy_mean`"),
    ];
    for (name, text, want) in cases {
        let path = dir.write(name, text);
        let e = error_of(&[input("X", path.clone(), None)], &out);
        assert!(e.contains(&path.display().to_string()) && e.contains(want), "{name}: {e}");
    }

    let log = dir.write("bad.jsonl", "{\"perf/step_time_s\": 1}\n[1, 2\n{\"perf/step_time_s\": 1}\n");
    let e = error_of(&[input("X", good[0].results.clone(), Some(log.clone()))], &out);
    assert!(e.contains(&format!("{}:2:", log.display())), "{e}");
    let log = dir.write("key.jsonl", "{\"perf/step_time_s\": 1}\n{\"perf/peak_rss_mib\": true}\n");
    let e = error_of(&[input("X", good[0].results.clone(), Some(log.clone()))], &out);
    assert!(e.contains(&format!("{}:2:", log.display())) && e.contains("perf/peak_rss_mib"), "{e}");

    assert_eq!(fs::read_to_string(out.join("report.md")).unwrap(), before);
    assert_eq!(fs::read_dir(&out).unwrap().count(), 4, "a failed run left files behind");
}

/// `fomaml eval`'s file for one task: at 5 shots, `runs` runs over `items` items, item i correct
/// when `correct(i)` (its loss then 0.5, else 2.0), the first `cut` items cut by the token budget.
fn per_item_results(task: &str, items: usize, runs: usize, correct: impl Fn(usize) -> bool, cut: usize) -> String {
    let run = |_| {
        let c: Vec<bool> = (0..items).map(&correct).collect();
        let t: Vec<bool> = (0..items).map(|i| i < cut).collect();
        let acc = c.iter().filter(|x| **x).count() as f64 / items as f64;
        let item_loss: Vec<f64> = c.iter().map(|right| if *right { 0.5 } else { 2.0 }).collect();
        serde_json::json!({"loss": 1.0, "accuracy": acc, "correct": c, "truncated": t, "item_loss": item_loss})
    };
    let runs: Vec<Value> = (0..runs).map(run).collect();
    let acc = runs[0]["accuracy"].clone();
    serde_json::json!({task: {"5": {"loss_mean": 1.0, "loss_std": 0.0, "accuracy_mean": acc, "accuracy_std": 0.0, "runs": runs}}})
        .to_string()
}

/// Issue: the report shows accuracy with item-bootstrap intervals, the share of generations cut
/// by the token budget, and the paired difference from the first method; a file without per-item
/// verdicts gets a note instead of an interval.
#[test]
fn the_report_has_item_level_intervals_and_the_cut_fraction() {
    let dir = TempDir::new();
    let a = dir.write("a.json", &per_item_results("t", 200, 3, |i| i % 4 == 0, 50));
    let b = dir.write("b.json", &per_item_results("t", 200, 3, |i| i % 4 != 3, 0));
    let old = dir.write("old.json", &results(&["5"], [&[0.4], &[0.5]]));
    let methods = [input("A", a, None), input("B", b, None), input("old", old, None)];
    let report = fs::read_to_string(write_report(&methods, &dir.0.join("out"), 5).unwrap()).unwrap();
    assert!(report.contains("## Accuracy over all tasks, with intervals"), "{report}");
    let row = report.lines().find(|l| l.starts_with("| 5 |") && l.contains("25.0% [")).expect(&report);
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    // | 5 | A acc | A cut | B acc | B cut | B − A | old acc | old cut | old − A |
    assert!(cells[2].starts_with("25.0% [") && cells[3] == "25.0%", "{row}");
    assert!(cells[4].starts_with("75.0% [") && cells[5] == "0.0%", "{row}");
    assert!(cells[6].starts_with("+50.0 ["), "{row}");
    assert_eq!(&cells[7..10], ["–", "–", "–"], "{row}");
    assert!(report.contains("old: the results file has no per-item verdicts"), "{report}");

    // The loss table: | 5 | A loss | B loss | B − A | old loss | old − A |
    let (_, table) = report.split_once("### Loss of the reference answers").expect(&report);
    let row = table.lines().find(|l| l.starts_with("| 5 |")).expect(table);
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert!(cells[2].starts_with("1.625 [") && cells[3].starts_with("0.875 ["), "{row}");
    assert!(cells[4].starts_with("-0.750 [") && cells[5] == "–" && cells[6] == "–", "{row}");
}
