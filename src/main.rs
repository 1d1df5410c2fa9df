use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fomaml::cli;

/// Meta-trains Llama / Qwen2 / Qwen3 models with first-order MAML and its family, on libtorch.
#[derive(Parser)]
#[command(name = "fomaml", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check libtorch, CUDA, NCCL and threads; exits non-zero when something needed is missing.
    Doctor(cli::doctor::DoctorArgs),
    /// Run a model on token ids and write its logits to a safetensors file.
    Logits(cli::logits::LogitsArgs),
    /// Turn raw datasets into per-task support / query / test files and a config template.
    #[command(subcommand)]
    PrepareData(cli::prepare_data::PrepareCommand),
    /// Inspect configuration files.
    #[command(subcommand)]
    Config(cli::config_show::ConfigCommand),
    /// The embedded default end to end: synthetic tasks, tiny model, FOMAML vs SFT, few-shot report.
    Demo(cli::demo::DemoArgs),
    /// Meta-train from a config (meta.algorithm: fomaml, maml, reptile, sft); resumes from the newest checkpoint.
    Train(cli::train::TrainArgs),
    /// Write a checkpoint's parameters as a Hugging Face model directory.
    Export(cli::export::ExportArgs),
    /// Few-shot curves: adapt on n support examples per task, then loss and generated-answer accuracy.
    Eval(cli::eval::EvalArgs),
    /// Few-shot results and training logs of several methods as report.md with the original trainer's comparison plots.
    Report(cli::report::ReportArgs),
    /// Per-GPU memory and step time of a config on N GPUs, before renting them.
    Plan(cli::plan::PlanArgs),
    /// Compare two `fomaml eval` result files: accuracy B − A per number of shots, paired bootstrap.
    Compare(cli::eval::CompareArgs),
    /// Encode one prompt/response pair as the trainer will (ids, loss mask, positions) and print JSON.
    Encode(cli::encode::EncodeArgs),
    /// Convert a llama.cpp GGUF file (dequantized) into a Hugging Face model directory.
    ImportGguf(cli::import_gguf::ImportGgufArgs),
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
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {message}");
            fomaml::runtime::write_error_file(&message);
            ExitCode::FAILURE
        }
    }
}
