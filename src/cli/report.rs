//! `fomaml report`: few-shot result files and training logs of several methods as a markdown report
//! with the original trainer's comparison plots.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::report::{write_report, MethodInput};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// One method: LABEL=RESULTS.json (from `fomaml eval`), optionally ,METRICS.jsonl (its training
    /// log: time and peak memory). Repeat for each method.
    #[arg(long = "method", required = true, value_name = "LABEL=RESULTS[,METRICS]")]
    pub methods: Vec<String>,
    /// Directory for report.md, comparison.png and fewshot_<task>.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Shots of the summary columns and of the accuracy-vs-time panel.
    #[arg(long, default_value_t = 10)]
    pub summary_shots: usize,
}

/// `LABEL=RESULTS[,METRICS]`.
pub fn parse_method(spec: &str) -> Result<MethodInput> {
    let Some((label, files)) = spec.split_once('=') else {
        bail!("--method {spec:?}: expected LABEL=RESULTS.json[,METRICS.jsonl]");
    };
    let (results, metrics) = match files.split_once(',') {
        Some((r, m)) => (r, Some(PathBuf::from(m))),
        None => (files, None),
    };
    if label.trim().is_empty() || results.is_empty() {
        bail!("--method {spec:?}: expected LABEL=RESULTS.json[,METRICS.jsonl]");
    }
    Ok(MethodInput { label: label.trim().to_string(), results: PathBuf::from(results), metrics })
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let methods = args.methods.iter().map(|m| parse_method(m)).collect::<Result<Vec<_>>>()?;
    let report = write_report(&methods, &args.out, args.summary_shots)?;
    println!("report -> {}", report.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_specs_parse_and_bad_ones_are_named() {
        let m = parse_method("META-LoRA 100=results/a.json,runs/a/metrics.jsonl").unwrap();
        assert_eq!(m.label, "META-LoRA 100");
        assert_eq!(m.results, PathBuf::from("results/a.json"));
        assert_eq!(m.metrics, Some(PathBuf::from("runs/a/metrics.jsonl")));
        assert_eq!(parse_method("SFT=b.json").unwrap().metrics, None);
        for bad in ["b.json", "=b.json", "SFT="] {
            assert!(parse_method(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }
}
