use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fomaml::cli;

/// Meta-trains Llama / Qwen2 / Qwen3 models with first-order MAML and its family, on libtorch.
#[derive(Parser)]
#[command(name = "fomaml", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
A first run (MATH from a local copy; any Hugging Face Llama / Qwen2 / Qwen3 directory):
  fomaml prepare-data math --source MATH/ --out data/math
  fomaml train --config data/math/config.yaml model.partial_pretrain=models/Qwen3-4B
  fomaml eval --checkpoint RUN_DIR/checkpoints/step_00005000 --out results/fomaml.json
  fomaml compare results/sft.json results/fomaml.json
  fomaml report --out report --method FOMAML=results/fomaml.json --method SFT=results/sft.json
On 4 GPUs: fomaml-launch --nproc-per-node 4 -- fomaml train --config CONFIG
Everything on the embedded default (tiny model, CPU, minutes): fomaml demo";

/// Subcommands in the order of a run: data, training, evaluation, export, then tools.
#[derive(Subcommand)]
enum Command {
    /// Turn raw datasets into per-task support / query / test files and a config template.
    #[command(subcommand)]
    PrepareData(cli::prepare_data::PrepareCommand),
    /// Meta-train from a config (meta.algorithm: fomaml, maml, reptile, meta_lora, sft); resumes from the newest checkpoint.
    #[command(after_help = cli::train::EXAMPLES)]
    Train(cli::train::TrainArgs),
    /// Few-shot curves: adapt on n support examples per task, then loss and generated-answer accuracy.
    Eval(cli::eval::EvalArgs),
    /// Compare two `fomaml eval` result files: accuracy B − A per number of shots, paired bootstrap over items.
    Compare(cli::eval::CompareArgs),
    /// Few-shot results and training logs of several methods as report.md with the original trainer's comparison plots.
    Report(cli::report::ReportArgs),
    /// Write a checkpoint's parameters as a Hugging Face model directory.
    Export(cli::export::ExportArgs),
    /// The embedded default end to end: synthetic tasks, tiny model, FOMAML vs SFT, few-shot report.
    Demo(cli::demo::DemoArgs),
    /// Inspect configuration files.
    #[command(subcommand)]
    Config(cli::config_show::ConfigCommand),
    /// Per-GPU memory and step time of a config on N GPUs, before renting them.
    Plan(cli::plan::PlanArgs),
    /// Check libtorch, CUDA, NCCL and threads; exits non-zero when something needed is missing.
    Doctor(cli::doctor::DoctorArgs),
    /// Convert a llama.cpp GGUF file (dequantized) into a Hugging Face model directory.
    ImportGguf(cli::import_gguf::ImportGgufArgs),
    /// Encode one prompt/response pair as the trainer will (ids, loss mask, positions) and print JSON.
    Encode(cli::encode::EncodeArgs),
    /// Run a model on token ids and write its logits to a safetensors file.
    Logits(cli::logits::LogitsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Doctor(args) => cli::doctor::run(args),
        Command::Logits(args) => cli::logits::run(args),
        Command::Encode(args) => cli::encode::run(args),
        Command::Train(args) => cli::train::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Export(args) => cli::export::run(args),
        Command::Eval(args) => cli::eval::run_eval(args),
        Command::Compare(args) => cli::eval::run_compare(args),
        Command::Plan(args) => cli::plan::run(args),
        Command::Report(args) => cli::report::run(args),
        Command::Config(command) => cli::config_show::run(command),
        Command::PrepareData(command) => cli::prepare_data::run(command),
        Command::ImportGguf(args) => cli::import_gguf::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<fomaml::train::preempt::Preempted>().is_some() => {
            eprintln!("{e:#}");
            ExitCode::from(fomaml::train::preempt::EXIT_PREEMPTED)
        }
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {message}");
            fomaml::runtime::write_error_file(&message);
            ExitCode::FAILURE
        }
    }
}
