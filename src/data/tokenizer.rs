//! A model directory's tokenizer: `tokenizer.json` (HF tokenizers) plus `tokenizer_config.json`
//! (special tokens, chat template; the template may also sit in `chat_template.jinja`).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use super::chat_template::ChatTemplate;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: the chat template does not render: {reason}")]
    Template { path: PathBuf, reason: String },
    #[error("{dir} has no chat template (tokenizer_config.json `chat_template` or chat_template.jinja)")]
    NoChatTemplate { dir: PathBuf },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("model directory {0} does not exist")]
    NoDir(PathBuf),
}

pub struct ChatTokenizer {
    tokenizer: tokenizers::Tokenizer,
    template: Option<(ChatTemplate, PathBuf)>,
    /// bos_token, eos_token, pad_token, unk_token as the template sees them.
    special_tokens: Map<String, Json>,
    dir: PathBuf,
    pub eos_token: String,
    pub eos_id: i64,
    /// The pad token's id; the eos token's when the model names none (as verl does).
    pub pad_id: i64,
}

/// A special token is a string or an AddedToken object `{"content": ...}`.
fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
}

impl ChatTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        if !dir.is_dir() {
            return Err(TokenizerError::NoDir(dir.to_path_buf()));
        }
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            let reason = "missing: fomaml reads the fast-tokenizer file tokenizer.json".to_string();
            return Err(TokenizerError::Invalid { path: tokenizer_path, reason });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| TokenizerError::Invalid { path: tokenizer_path.clone(), reason: e.to_string() })?;

        let config_path = dir.join("tokenizer_config.json");
        let config: Map<String, Json> = serde_json::from_str(&read(&config_path)?)
            .map_err(|e| TokenizerError::Invalid { path: config_path.clone(), reason: e.to_string() })?;
        let invalid = |reason: String| TokenizerError::Invalid { path: config_path.clone(), reason };

        let mut special_tokens = Map::new();
        for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
            if let Some(text) = config.get(key).and_then(token_text) {
                special_tokens.insert(key.into(), Json::String(text));
            }
        }
        let eos_token = special_tokens
            .get("eos_token")
            .and_then(Json::as_str)
            .ok_or_else(|| invalid("no `eos_token`: SFT appends it to every response".into()))?
            .to_string();
        let id_of = |token: &str| {
            tokenizer
                .token_to_id(token)
                .map(i64::from)
                .ok_or_else(|| invalid(format!("special token `{token}` is not in tokenizer.json's vocabulary")))
        };
        let eos_id = id_of(&eos_token)?;
        let pad_id = match special_tokens.get("pad_token").and_then(Json::as_str) {
            Some(pad) => id_of(pad)?,
            None => eos_id,
        };

        let template = match config.get("chat_template") {
            Some(Json::String(s)) => Some((s.clone(), config_path.clone())),
            // A list of named templates: the one called "default".
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Json::as_str))
                .map(|s| (s.to_string(), config_path.clone())),
            _ => {
                let file = dir.join("chat_template.jinja");
                file.is_file().then(|| read(&file).map(|s| (s, file))).transpose()?
            }
        };
        let template = template
            .map(|(source, path)| {
                ChatTemplate::new(&source)
                    .map(|t| (t, path.clone()))
                    .map_err(|e| TokenizerError::Template { path, reason: e.to_string() })
            })
            .transpose()?;
        Ok(Self { tokenizer, template, special_tokens, dir: dir.to_path_buf(), eos_token, eos_id, pad_id })
    }

    /// Token ids of `text` with no special tokens added (templates add their own).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> Result<String, TokenizerError> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer.decode(&ids, false).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The chat-template rendering of `messages`, as `apply_chat_template(..., tokenize=False)`.
    /// `variables` are passed to the template beside the special tokens (e.g. `enable_thinking`).
    pub fn apply_chat_template(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        variables: &Map<String, Json>,
    ) -> Result<String, TokenizerError> {
        let (template, path) =
            self.template.as_ref().ok_or_else(|| TokenizerError::NoChatTemplate { dir: self.dir.clone() })?;
        let mut context = self.special_tokens.clone();
        context.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        context.extend(variables.iter().map(|(k, v)| (k.clone(), v.clone())));
        template
            .render(messages, &context)
            .map_err(|e| TokenizerError::Template { path: path.clone(), reason: e.to_string() })
    }
}
