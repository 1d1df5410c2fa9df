//! Loading the YAML config: unknown keys refused with a did-you-mean, `a.b.c=value` overrides from
//! the command line, type errors naming the key path.

pub mod schema;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

pub use schema::Config;

const EMBEDDED_DEFAULT: &str = include_str!("../../configs/embedded_default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("{origin}: unknown key `{key}`{}", suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())]
    UnknownKey { origin: String, key: String, suggestion: Option<String> },
    #[error("override `{0}`: expected KEY=VALUE, e.g. meta.inner_lr=1e-4")]
    BadOverride(String),
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

/// Every key the config knows, as a tree of defaults. Lists of tasks hold one example element,
/// and free-form values (null defaults, empty maps) accept anything below them.
fn schema() -> Json {
    let mut tree = serde_json::to_value(Config::default()).expect("defaults serialise");
    let task = serde_json::to_value(schema::TaskSection::default()).expect("defaults serialise");
    tree["meta"]["tasks"] = Json::Array(vec![task.clone()]);
    tree["meta"]["eval_tasks"] = Json::Array(vec![task]);
    tree
}

fn closest<'a>(key: &str, candidates: impl Iterator<Item = &'a String>) -> Option<String> {
    candidates
        .map(|c| (strsim::levenshtein(key, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Walks `value` against `schema`, failing on the first key the schema does not have.
fn check_keys(value: &Json, schema: &Json, prefix: &str, origin: &str) -> Result<(), ConfigError> {
    match (value, schema) {
        (Json::Object(given), Json::Object(known)) if !known.is_empty() => {
            for (key, v) in given {
                match known.get(key) {
                    Some(s) => check_keys(v, s, &join(prefix, key), origin)?,
                    None => {
                        return Err(ConfigError::UnknownKey {
                            origin: origin.to_string(),
                            key: join(prefix, key),
                            suggestion: closest(key, known.keys()).map(|s| join(prefix, &s)),
                        })
                    }
                }
            }
            Ok(())
        }
        (Json::Array(items), Json::Array(element)) if element.len() == 1 => {
            for (i, item) in items.iter().enumerate() {
                check_keys(item, &element[0], &join(prefix, &i.to_string()), origin)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Sets `path` (dot separated; numeric segments index lists) to `value`, creating maps as needed.
fn set_path(tree: &mut Json, path: &str, value: Json, origin: &str) -> Result<(), ConfigError> {
    let mut node = tree;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        node = match node {
            Json::Array(items) => {
                let index: usize = segment.parse().map_err(|_| ConfigError::Invalid {
                    origin: origin.to_string(),
                    reason: format!("`{}` is a list: index it with a number", segments[..i].join(".")),
                })?;
                let len = items.len();
                items.get_mut(index).ok_or_else(|| ConfigError::Invalid {
                    origin: origin.to_string(),
                    reason: format!("`{}` has {len} entries, no index {index}", segments[..i].join(".")),
                })?
            }
            other => {
                if !other.is_object() {
                    *other = Json::Object(Map::new());
                }
                let map = other.as_object_mut().expect("made an object above");
                if last {
                    map.insert(segment.to_string(), value);
                    return Ok(());
                }
                map.entry(segment.to_string()).or_insert(Json::Null)
            }
        };
        if last {
            *node = value;
            return Ok(());
        }
    }
    Ok(())
}

impl Config {
    /// Reads a YAML file and applies `overrides` (`a.b.c=value`, value parsed as YAML).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text, &path.display().to_string(), overrides)
    }

    /// `origin` names the text in errors (usually the file path).
    pub fn from_yaml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut tree: Json = if text.trim().is_empty() {
            Json::Object(Map::new())
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| ConfigError::Yaml { path: PathBuf::from(origin), reason: e.to_string() })?
        };
        if !tree.is_object() {
            return Err(ConfigError::Invalid {
                origin: origin.into(),
                reason: "the top level must be a mapping".into(),
            });
        }
        let schema = schema();
        check_keys(&tree, &schema, "", origin)?;
        for item in overrides {
            let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
            let value: Json = serde_yaml_ng::from_str(raw)
                .map_err(|e| ConfigError::Invalid { origin: format!("override `{item}`"), reason: e.to_string() })?;
            let origin = format!("override `{item}`");
            let mut probe = Json::Object(Map::new());
            set_path(&mut probe, key, value.clone(), &origin)?;
            check_keys(&probe, &schema, "", &origin)?;
            set_path(&mut tree, key, value, &origin)?;
        }
        serde_path_to_error::deserialize(tree).map_err(|e| ConfigError::Invalid {
            origin: origin.to_string(),
            reason: format!("`{}`: {}", e.path(), e.inner()),
        })
    }

    /// configs/embedded_default.yaml, compiled in: the demo's hyperparameters (no tasks or model).
    pub fn embedded_default() -> Self {
        Self::from_yaml(EMBEDDED_DEFAULT, "configs/embedded_default.yaml", &[]).expect("the embedded default parses")
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_STYLE: &str = r#"
model:
  partial_pretrain: "./models/Qwen3-4B-Instruct-2507"
  fsdp_config:
    transformer_layer_cls_to_wrap: "Qwen2DecoderLayer"
meta:
  use_fomaml: true
  inner_lr: 1.0e-4
  num_inner_steps: 5
  inner_batch_size: 4
  outer_lr: 3e-5
  meta_batch_size: 4
  query_batch_size: 4
  tasks:
    - name: "medical"
      support_files: ["data/maml/medical/support.parquet"]
      query_files: ["data/maml/medical/query.parquet"]
optim:
  clip_grad: 1.0
"#;

    #[test]
    fn the_seeds_layout_loads_with_defaults_for_the_rest() {
        let cfg = Config::from_yaml(SEED_STYLE, "seed.yaml", &[]).unwrap();
        assert_eq!(cfg.meta.inner_lr, 1e-4);
        assert_eq!(cfg.meta.outer_lr, 3e-5);
        assert_eq!(cfg.meta.tasks[0].name, "medical");
        assert_eq!(cfg.meta.tasks[0].query_files, ["data/maml/medical/query.parquet"]);
        assert_eq!(cfg.optim.optimizer_type, schema::OptimizerType::AdamW);
        assert_eq!(cfg.data.truncation, crate::data::Truncation::Error);
        // What `config show` prints loads back to the same config.
        let again = Config::from_yaml(&cfg.to_yaml(), "shown", &[]).unwrap();
        assert_eq!(again.to_yaml(), cfg.to_yaml());
    }

    #[test]
    fn unknown_keys_are_refused_with_a_suggestion() {
        let err = Config::from_yaml("meta:\n  inner_lrr: 0.1\n", "x.yaml", &[]).unwrap_err().to_string();
        assert_eq!(err, "x.yaml: unknown key `meta.inner_lrr` (did you mean `meta.inner_lr`?)");
        let err =
            Config::from_yaml("meta:\n  tasks:\n    - name: a\n      suport_files: []\n", "x.yaml", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.yaml: unknown key `meta.tasks.0.suport_files` (did you mean `meta.tasks.0.support_files`?)"
        );
        let err = Config::from_yaml("opitm: {}\n", "x.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("did you mean `optim`"), "{err}");
        let err = Config::from_yaml("trainer:\n  zzz: 1\n", "x.yaml", &[]).unwrap_err().to_string();
        assert_eq!(err, "x.yaml: unknown key `trainer.zzz`");
    }

    #[test]
    fn overrides_apply_after_the_file_and_are_checked() {
        let overrides =
            ["meta.inner_lr=1e-3".to_string(), "data.truncation=left".into(), "meta.tasks.0.name=law".into()];
        let cfg = Config::from_yaml(SEED_STYLE, "seed.yaml", &overrides).unwrap();
        assert_eq!(cfg.meta.inner_lr, 1e-3);
        assert_eq!(cfg.data.truncation, crate::data::Truncation::Left);
        assert_eq!(cfg.meta.tasks[0].name, "law");
        let err = Config::from_yaml(SEED_STYLE, "seed.yaml", &["meta.inner_steps=3".into()]).unwrap_err().to_string();
        assert!(err.contains("override `meta.inner_steps=3`") && err.contains("unknown key"), "{err}");
        let err = Config::from_yaml(SEED_STYLE, "seed.yaml", &["meta.tasks.5.name=x".into()]).unwrap_err().to_string();
        assert!(err.contains("no index 5"), "{err}");
        assert!(matches!(Config::from_yaml("", "e", &["novalue".into()]), Err(ConfigError::BadOverride(_))));
    }

    #[test]
    fn type_errors_name_the_key() {
        let err = Config::from_yaml("meta:\n  inner_lr: fast\n", "x.yaml", &[]).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: `meta.inner_lr`: invalid type: string \"fast\""), "{err}");
        let err = Config::from_yaml("data:\n  truncation: middle\n", "x.yaml", &[]).unwrap_err().to_string();
        assert!(err.contains("`data.truncation`") && err.contains("middle"), "{err}");
        let err = Config::from_yaml("optim:\n  lr_scheduler: cosin\n", "x.yaml", &[]).unwrap_err().to_string();
        assert!(
            err.contains("`optim.lr_scheduler`") && err.contains("expected one of `cosine`, `linear`, `constant`"),
            "{err}"
        );
        let err = Config::from_yaml("meta: [\n", "x.yaml", &[]).unwrap_err().to_string();
        assert!(err.starts_with("x.yaml: "), "{err}");
    }
}
