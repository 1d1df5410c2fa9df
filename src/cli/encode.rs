//! `fomaml encode`: one SFT example as the trainer will see it, printed as JSON — for users checking
//! their data, and for tests.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{Map, Value as Json};

use crate::data::{encode_example, ChatTokenizer, Truncation};

#[derive(Debug, clap::Args)]
pub struct EncodeArgs {
    /// Model directory with tokenizer.json and tokenizer_config.json.
    #[arg(long)]
    pub model: PathBuf,
    /// The user prompt (rendered through the model's chat template with the generation prompt).
    #[arg(long)]
    pub prompt: String,
    /// The response (eos is appended).
    #[arg(long)]
    pub response: String,
    /// Longest example in tokens; longer ones follow --truncation.
    #[arg(long)]
    pub max_length: Option<usize>,
    #[arg(long, value_enum, default_value = "error")]
    pub truncation: Truncation,
    /// A chat-template variable, KEY=VALUE with VALUE as JSON when it parses (true, 3, "x") else a
    /// string; repeatable. E.g. --chat-var enable_thinking=false
    #[arg(long = "chat-var", value_name = "KEY=VALUE")]
    pub chat_vars: Vec<String>,
    /// Also print the rendered text of the prompt and the decoded tokens.
    #[arg(long)]
    pub verbose: bool,
}

pub fn parse_chat_vars(pairs: &[String]) -> Result<Map<String, Json>> {
    pairs
        .iter()
        .map(|pair| {
            let (key, value) =
                pair.split_once('=').with_context(|| format!("--chat-var `{pair}`: expected KEY=VALUE"))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.to_string()));
            Ok((key.to_string(), value))
        })
        .collect()
}

pub fn run(args: &EncodeArgs) -> Result<()> {
    let vars = parse_chat_vars(&args.chat_vars)?;
    let tokenizer = ChatTokenizer::from_dir(&args.model)?;
    let example = encode_example(&tokenizer, &args.prompt, &args.response, args.max_length, args.truncation, &vars)?;
    let mut out = serde_json::to_value(&example)?;
    if args.verbose {
        let scored: Vec<i64> =
            example.input_ids.iter().zip(&example.loss_mask).filter(|(_, &m)| m == 1).map(|(&id, _)| id).collect();
        out["text"] = Json::String(tokenizer.decode(&example.input_ids)?);
        out["scored_text"] = Json::String(tokenizer.decode(&scored)?);
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
