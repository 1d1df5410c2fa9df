//! tokenizer.json and tokenizer_config.json rebuilt from a GGUF's `tokenizer.*` metadata.
//!
//! GGUF keeps a byte-level BPE tokenizer as its vocabulary (already in GPT-2's byte-to-unicode
//! form), its merges as "left right" strings, a token type per id, and the name llama.cpp gives the
//! pre-tokenizer (`tokenizer.ggml.pre`). The pre-tokenizer itself is not stored, so each supported
//! name maps to the pre-tokenizer the original tokenizer.json had; a name we do not know is an
//! error rather than a guess, since a wrong split silently changes every token id.

use serde_json::{json, Map, Value as Json};

use super::{GgufError, GgufFile};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

pub const SUPPORTED_PRE: &str = "default, gpt2, smollm, llama-bpe, llama3, qwen2";

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files of the output directory and the special ids config.json repeats.
pub struct TokenizerFiles {
    pub tokenizer_json: Json,
    pub tokenizer_config: Json,
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub pad_id: Option<i64>,
}

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// (normalizer, pre_tokenizer, BPE `ignore_merges`) of the tokenizer llama.cpp calls `pre`.
fn pre_tokenizer(pre: &str) -> Option<(Json, Json, bool)> {
    Some(match pre {
        // GPT-2's own regex, applied by the ByteLevel pre-tokenizer.
        "default" | "gpt2" => (Json::Null, byte_level(true), false),
        // SmolLM / StarCoder: every digit alone, then GPT-2's regex.
        "smollm" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
            false,
        ),
        // Llama 3 looks a whole pre-token up in the vocabulary before merging (llama.cpp does too).
        "llama-bpe" | "llama3" => {
            (Json::Null, json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}), true)
        }
        "qwen2" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
            false,
        ),
        _ => return None,
    })
}

/// Builds the tokenizer files from the file's metadata.
pub fn build(file: &GgufFile) -> Result<TokenizerFiles, GgufError> {
    let err = |reason: String| GgufError::Tokenizer { path: file.path().to_path_buf(), reason };
    let model = file.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model `{model}` is not supported (only `gpt2`, byte-level BPE; `llama` is SentencePiece)"
        )));
    }
    let pre = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let (normalizer, pre_tokenizer, ignore_merges) = pre_tokenizer(pre)
        .ok_or_else(|| err(format!("tokenizer.ggml.pre `{pre}` is not supported (supported: {SUPPORTED_PRE})")))?;

    let tokens = file
        .opt_str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| GgufError::MissingKey { path: file.path().into(), key: "tokenizer.ggml.tokens".into() })?;
    let merges = file.opt_str_array("tokenizer.ggml.merges")?.unwrap_or_default();
    let types = file.opt_int_array("tokenizer.ggml.token_type")?.unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(err(format!("tokenizer.ggml.token_type has {} entries for {} tokens", types.len(), tokens.len())));
    }

    let mut vocab = Map::new();
    let mut added_tokens = Vec::new();
    for (id, (&token, &ty)) in tokens.iter().zip(&types).enumerate() {
        // A repeated string keeps its first id, as HF's vocabulary (a map) would.
        if !vocab.contains_key(token) {
            vocab.insert(token.to_string(), json!(id));
        }
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added_tokens.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty != TOKEN_CONTROL, "special": ty == TOKEN_CONTROL,
            }));
        }
    }
    let merges = merges
        .iter()
        .map(|m| {
            // Byte-level tokens never hold a space (it is `Ġ`), so the first space separates the pair.
            let (left, right) = m.split_once(' ').ok_or_else(|| err(format!("merge `{m}` is not `left right`")))?;
            Ok(json!([left, right]))
        })
        .collect::<Result<Vec<_>, GgufError>>()?;

    let id_key = |key: &str| -> Result<Option<i64>, GgufError> {
        match file.opt_usize(key)? {
            Some(id) if id >= tokens.len() => Err(err(format!("{key} {id} is outside the {} tokens", tokens.len()))),
            other => Ok(other.map(|i| i as i64)),
        }
    };
    let bos_id = id_key("tokenizer.ggml.bos_token_id")?;
    let eos_id = id_key("tokenizer.ggml.eos_token_id")?;
    let pad_id = id_key("tokenizer.ggml.padding_token_id")?;
    let unk_id = id_key("tokenizer.ggml.unknown_token_id")?;
    let add_bos = file.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = file.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let token_of = |id: Option<i64>| id.map(|i| tokens[i as usize].to_string());
    let post_processor = match (add_bos, token_of(bos_id)) {
        // transformers adds bos through the post-processor, as Llama 3's tokenizer.json does.
        (true, Some(bos)) => json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}}}),
        _ => json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true}),
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": token_of(unk_id), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": merges,
        },
    });

    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (key, id) in [("bos_token", bos_id), ("eos_token", eos_id), ("pad_token", pad_id), ("unk_token", unk_id)] {
        config.insert(key.into(), token_of(id).map_or(Json::Null, Json::String));
    }
    if let Some(n) = file.opt_usize(&format!("{}.context_length", file.str("general.architecture")?))? {
        config.insert("model_max_length".into(), json!(n));
    }
    if let Some(template) = file.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(template));
    }
    Ok(TokenizerFiles { tokenizer_json, tokenizer_config: Json::Object(config), bos_id, eos_id, pad_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_pre_tokenizer_loads_in_tokenizers() {
        for pre in SUPPORTED_PRE.split(", ") {
            let (normalizer, pre_tokenizer, ignore_merges) = pre_tokenizer(pre).unwrap();
            let vocab: Map<String, Json> = ["a", "b", "ab", "Ġ", "Ġab", "1", "2"]
                .iter()
                .enumerate()
                .map(|(i, t)| (t.to_string(), json!(i)))
                .collect();
            let doc = json!({
                "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                          "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                          "ignore_merges": ignore_merges, "vocab": vocab, "merges": [["a", "b"], ["Ġ", "ab"]]},
            });
            let tok: tokenizers::Tokenizer = doc.to_string().parse().unwrap_or_else(|e| panic!("{pre}: {e}"));
            let ids = tok.encode("ab ab12", false).unwrap().get_ids().to_vec();
            assert_eq!(ids, [2, 4, 5, 6], "{pre}");
            assert_eq!(tok.decode(&ids, false).unwrap(), "ab ab12", "{pre}");
        }
        assert!(pre_tokenizer("falcon").is_none());
    }
}
