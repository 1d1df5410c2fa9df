//! Loading the YAML config: this project's layout, and the original Python/verl trainer's files
//! as they are ([`original`] maps or explains each of its keys). Every unknown key is refused at
//! once, each with a did-you-mean; `a.b.c=value` overrides apply from the command line; errors
//! name the key and where its value came from (file, override); [`Resolved::sources`] keeps that
//! for `fomaml config show --sources`.

pub mod original;
pub mod schema;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

pub use schema::Config;

const EMBEDDED_DEFAULT: &str = include_str!("../../configs/embedded_default.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Yaml { path: PathBuf, reason: String },
    #[error("{}", unknown_keys_message(origin, keys))]
    UnknownKeys { origin: String, keys: Vec<UnknownKey> },
    #[error("override `{0}`: expected KEY=VALUE, e.g. meta.inner_lr=1e-4")]
    BadOverride(String),
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct UnknownKey {
    pub key: String,
    pub suggestion: Option<String>,
}

fn unknown_keys_message(origin: &str, keys: &[UnknownKey]) -> String {
    let describe = |k: &UnknownKey| {
        format!("`{}`{}", k.key, k.suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())
    };
    match keys {
        [one] => format!("{origin}: unknown key {}", describe(one)),
        many => {
            let lines: Vec<String> = many.iter().map(|k| format!("\n  {}", describe(k))).collect();
            format!("{origin}: {} unknown keys:{}", many.len(), lines.concat())
        }
    }
}

/// Where a value of the resolved config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(String),
    Override(String),
    /// A file's key in the original Python/verl trainer's spelling.
    Translated {
        origin: String,
        key: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(origin) => f.write_str(origin),
            Source::Override(item) => write!(f, "override `{item}`"),
            Source::Translated { origin, key } => write!(f, "{origin} (original key `{key}`)"),
        }
    }
}

/// A loaded config with what was learnt on the way.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub config: Config,
    /// One line per original-trainer key accepted without effect here, saying why.
    pub notices: Vec<String>,
    /// Where each key set by a file or an override came from (the rest are defaults).
    pub sources: BTreeMap<String, Source>,
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

/// Every key of `value` the schema does not have.
fn unknown_keys(value: &Json, schema: &Json, prefix: &str, out: &mut Vec<UnknownKey>) {
    match (value, schema) {
        (Json::Object(given), Json::Object(known)) if !known.is_empty() => {
            for (key, v) in given {
                match known.get(key) {
                    Some(s) => unknown_keys(v, s, &join(prefix, key), out),
                    None => out.push(UnknownKey {
                        key: join(prefix, key),
                        suggestion: closest(key, known.keys()).map(|s| join(prefix, &s)),
                    }),
                }
            }
        }
        (Json::Array(items), Json::Array(element)) if element.len() == 1 => {
            for (i, item) in items.iter().enumerate() {
                unknown_keys(item, &element[0], &join(prefix, &i.to_string()), out);
            }
        }
        _ => {}
    }
}

fn check_keys(value: &Json, origin: &str) -> Result<(), ConfigError> {
    let mut keys = Vec::new();
    unknown_keys(value, &schema(), "", &mut keys);
    if keys.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::UnknownKeys { origin: origin.to_string(), keys })
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

/// The leaf key paths of `tree` (a list's elements by index; an empty map or list is a leaf).
fn leaves(tree: &Json, prefix: &str, out: &mut Vec<String>) {
    match tree {
        Json::Object(map) if !map.is_empty() => map.iter().for_each(|(k, v)| leaves(v, &join(prefix, k), out)),
        Json::Array(items) if !items.is_empty() => {
            items.iter().enumerate().for_each(|(i, v)| leaves(v, &join(prefix, &i.to_string()), out))
        }
        _ if !prefix.is_empty() => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Records `source` for every leaf of `tree` under `prefix`, replacing what was recorded under
/// the lists it sets (a list is replaced whole, not merged).
fn record(sources: &mut BTreeMap<String, Source>, tree: &Json, prefix: &str, source: &dyn Fn(&str) -> Source) {
    forget_replaced(sources, tree, prefix);
    let mut keys = Vec::new();
    leaves(tree, prefix, &mut keys);
    for key in keys {
        let s = source(&key);
        sources.insert(key, s);
    }
}

/// Drops the sources of what `tree`, laid at `prefix`, replaces whole: the value at `prefix`
/// itself (unless it is the root) and every list it sets.
fn forget_replaced(sources: &mut BTreeMap<String, Source>, tree: &Json, prefix: &str) {
    let mut replaced = Vec::new();
    list_paths(tree, prefix, &mut replaced);
    replaced.extend((!prefix.is_empty()).then(|| prefix.to_string()));
    for path in replaced {
        let under = format!("{path}.");
        sources.retain(|k, _| !k.starts_with(&under) && *k != path);
    }
}

fn list_paths(tree: &Json, prefix: &str, out: &mut Vec<String>) {
    match tree {
        Json::Object(map) => map.iter().for_each(|(k, v)| list_paths(v, &join(prefix, k), out)),
        Json::Array(_) => out.push(prefix.to_string()),
        _ => {}
    }
}

/// Where the value at `key` came from: the source recorded for it or for the nearest key above
/// or below it (serde names a list element `a[0]`, sources `a.0`); None for a default.
fn source_of<'a>(sources: &'a BTreeMap<String, Source>, key: &str) -> Option<&'a Source> {
    let key = key.replace('[', ".").replace(']', "");
    let mut probe = key.as_str();
    loop {
        if let Some(s) = sources.get(probe) {
            return Some(s);
        }
        match probe.rsplit_once('.') {
            Some((parent, _)) => probe = parent,
            None => break,
        }
    }
    let below = format!("{key}.");
    sources.iter().find(|(k, _)| k.starts_with(&below)).map(|(_, s)| s)
}

fn describe(sources: &BTreeMap<String, Source>, key: &str) -> String {
    source_of(sources, key).map_or("the defaults".into(), ToString::to_string)
}

impl Resolved {
    /// Where the value at `key` (dotted) came from; None for a default.
    pub fn source_of(&self, key: &str) -> Option<&Source> {
        source_of(&self.sources, key)
    }
}

/// One config file's tree (the original trainer's keys translated), checked for unknown keys.
struct FileTree {
    tree: Json,
    sources: BTreeMap<String, Source>,
    notices: Vec<String>,
}

impl Config {
    /// Reads a YAML file and applies `overrides` (`a.b.c=value`, value parsed as YAML).
    ///
    /// A top-level `base: other.yaml` (relative to this file) loads that config first and lays this
    /// one over it: mappings merge key by key, anything else (lists included) is replaced.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::resolve(path, overrides).map(|r| r.config)
    }

    /// [`Config::load`], keeping the notices and where every value came from.
    pub fn resolve(path: &Path, overrides: &[String]) -> Result<Resolved, ConfigError> {
        let file = read_tree(path, &mut Vec::new())?;
        finish(file, overrides)
    }

    /// `origin` names the text in errors (usually the file path).
    pub fn from_yaml(text: &str, origin: &str, overrides: &[String]) -> Result<Self, ConfigError> {
        Self::resolve_yaml(text, origin, overrides).map(|r| r.config)
    }

    pub fn resolve_yaml(text: &str, origin: &str, overrides: &[String]) -> Result<Resolved, ConfigError> {
        finish(file_tree(parse_tree(text, origin)?, origin)?, overrides)
    }

    /// configs/embedded_default.yaml, compiled in: the demo's hyperparameters (no tasks or model).
    pub fn embedded_default() -> Self {
        Self::from_yaml(EMBEDDED_DEFAULT, "configs/embedded_default.yaml", &[]).expect("the embedded default parses")
    }

    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).expect("config serialises")
    }
}

/// A parsed file's tree with the original trainer's keys translated and every key checked.
fn file_tree(mut tree: Json, origin: &str) -> Result<FileTree, ConfigError> {
    let translation = original::translate(&mut tree, origin)?;
    check_keys(&tree, origin)?;
    let mut sources = BTreeMap::new();
    record(&mut sources, &tree, "", &|key| match translation.renamed.get(key) {
        Some(from) => Source::Translated { origin: origin.to_string(), key: from.clone() },
        None => Source::File(origin.to_string()),
    });
    Ok(FileTree { tree, sources, notices: translation.notices })
}

/// Applies the overrides to a file's tree, then deserialises and validates the result.
fn finish(file: FileTree, overrides: &[String]) -> Result<Resolved, ConfigError> {
    let FileTree { mut tree, mut sources, mut notices } = file;
    for item in overrides {
        let origin = format!("override `{item}`");
        let (key, raw) = item.split_once('=').ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
        let value = yaml::parse(raw).map_err(|reason| ConfigError::Invalid { origin: origin.clone(), reason })?;
        let mut probe = Json::Object(Map::new());
        set_path(&mut probe, key, value, &origin)?;
        let translation = original::translate(&mut probe, &origin)?;
        notices.extend(translation.notices);
        let mut set = Vec::new();
        leaves(&probe, "", &mut set);
        if set.is_empty() && lookup(&probe, key).is_none() {
            continue; // an original key without effect here: its notice says so
        }
        // The key as translated (an original spelling becomes ours).
        let key = translation.renamed.keys().next().cloned().unwrap_or_else(|| key.to_string());
        let value = lookup(&probe, &key).cloned().unwrap_or(Json::Null);
        set_path(&mut tree, &key, value.clone(), &origin)?;
        // Checked in place, so a key inside a list element (meta.tasks.0.x) is checked too.
        check_keys(&tree, &origin)?;
        record(&mut sources, &value, &key, &|_| Source::Override(item.clone()));
    }
    take_tasks_from(&mut tree, &mut sources)?;
    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::Invalid { origin: describe(&sources, &key), reason: format!("`{key}`: {}", e.inner()) }
    })?;
    let (problems, warnings) = validate::check(&config);
    notices.extend(warnings.into_iter().map(|(key, why)| format!("{}: `{key}`: {why}", describe(&sources, &key))));
    if let Some((key, reason)) = problems.into_iter().next() {
        return Err(ConfigError::Invalid { origin: describe(&sources, &key), reason: format!("`{key}`: {reason}") });
    }
    Ok(Resolved { config, notices, sources })
}

/// `meta.tasks_from: FILE`: FILE's task lists replace the empty ones here, and the key is unset.
fn take_tasks_from(tree: &mut Json, sources: &mut BTreeMap<String, Source>) -> Result<(), ConfigError> {
    const KEY: &str = "meta.tasks_from";
    let Some(Json::String(file)) = lookup(tree, KEY).cloned() else { return Ok(()) };
    let origin = describe(sources, KEY);
    for list in ["tasks", "eval_tasks"] {
        if lookup(tree, &format!("meta.{list}")).and_then(Json::as_array).is_some_and(|l| !l.is_empty()) {
            let here = describe(sources, &format!("meta.{list}"));
            return Err(ConfigError::Invalid {
                origin,
                reason: format!(
                    "`{KEY}: {file}` and meta.{list} ({here}) both give tasks; set {KEY}: null to list them here"
                ),
            });
        }
    }
    let from = Config::load(Path::new(&file), &[])
        .map_err(|e| ConfigError::Invalid { origin: origin.clone(), reason: format!("`{KEY}: {file}`: {e}") })?;
    if from.meta.tasks.is_empty() {
        return Err(ConfigError::Invalid { origin, reason: format!("`{KEY}`: {file} lists no meta.tasks") });
    }
    for (list, tasks) in [("tasks", &from.meta.tasks), ("eval_tasks", &from.meta.eval_tasks)] {
        let value = serde_json::to_value(tasks).expect("task sections serialise");
        set_path(tree, &format!("meta.{list}"), value.clone(), &origin)?;
        record(sources, &value, &format!("meta.{list}"), &|_| Source::File(format!("{file} (meta.tasks_from)")));
    }
    set_path(tree, KEY, Json::Null, &origin)?;
    Ok(())
}

fn lookup<'a>(tree: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(tree, |node, segment| match node {
        Json::Array(items) => items.get(segment.parse::<usize>().ok()?),
        other => other.get(segment),
    })
}

/// A YAML mapping as a JSON tree.
fn parse_tree(text: &str, origin: &str) -> Result<Json, ConfigError> {
    let tree: Json = if text.trim().is_empty() {
        Json::Object(Map::new())
    } else {
        yaml::parse(text).map_err(|reason| ConfigError::Yaml { path: PathBuf::from(origin), reason })?
    };
    if !tree.is_object() {
        return Err(ConfigError::Invalid { origin: origin.into(), reason: "the top level must be a mapping".into() });
    }
    Ok(tree)
}

/// The tree of the config file at `path` with its `base` chain merged in; `chain` holds the
/// files being read, to refuse a cycle.
fn read_tree(path: &Path, chain: &mut Vec<PathBuf>) -> Result<FileTree, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    let origin = path.display().to_string();
    let mut tree = parse_tree(&text, &origin)?;
    let base = tree.as_object_mut().and_then(|m| m.remove(BASE_KEY));
    // Unknown keys are named against the file that has them.
    let file = file_tree(tree, &origin)?;
    let Some(base) = base else { return Ok(file) };
    let Some(base) = base.as_str() else {
        return Err(ConfigError::Invalid { origin, reason: "`base` must be the path of another config file".into() });
    };
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if chain.contains(&key) {
        return Err(ConfigError::Invalid { origin, reason: format!("`base: {base}` makes a cycle") });
    }
    chain.push(key);
    let mut merged = read_tree(&base_path, chain).map_err(|e| match e {
        ConfigError::Io { path, source } => ConfigError::Invalid {
            origin: origin.clone(),
            reason: format!("`base: {base}`: cannot read {}: {source}", path.display()),
        },
        other => other,
    })?;
    // The file's own values win over the base's, lists replaced whole.
    forget_replaced(&mut merged.sources, &file.tree, "");
    merge(&mut merged.tree, file.tree);
    merged.sources.extend(file.sources);
    merged.notices.extend(file.notices);
    Ok(merged)
}

/// Lays `over` onto `into`: mappings key by key, anything else replaced.
fn merge(into: &mut Json, over: Json) {
    match (into, over) {
        (Json::Object(a), Json::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Json::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

/// The top-level key naming the config file another one extends.
const BASE_KEY: &str = "base";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_file_is_merged_under_the_config_and_its_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            path
        };
        write("data/base.yaml", "meta:\n  inner_lr: 0.1\n  num_inner_steps: 3\n  tasks:\n  - name: a\n  - name: b\n");
        let top = write("configs/x.yaml", "base: ../data/base.yaml\nmeta:\n  inner_lr: 0.2\n  tasks:\n  - name: c\n");
        let c = Config::load(&top, &["meta.num_inner_steps=4".into()]).unwrap();
        assert_eq!((c.meta.inner_lr, c.meta.num_inner_steps), (0.2, 4));
        let names: Vec<&str> = c.meta.tasks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["c"], "lists are replaced, not merged");

        write("data/bad.yaml", "meta:\n  inner_lrr: 0.1\n");
        let bad = write("configs/y.yaml", "base: ../data/bad.yaml\n");
        let e = Config::load(&bad, &[]).unwrap_err().to_string();
        assert!(e.contains("bad.yaml") && e.contains("inner_lrr") && e.contains("inner_lr"), "{e}");

        let cycle = write("configs/z.yaml", "base: z.yaml\n");
        assert!(Config::load(&cycle, &[]).unwrap_err().to_string().contains("cycle"));
        let missing = write("configs/w.yaml", "base: nowhere.yaml\n");
        let e = Config::load(&missing, &[]).unwrap_err().to_string();
        assert!(e.contains("w.yaml") && e.contains("nowhere.yaml"), "{e}");
    }

    #[test]
    fn tasks_from_takes_another_configs_task_lists() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let data = write(
            "data.yaml",
            "meta:\n  inner_lr: 0.5\n  tasks:\n  - name: a\n    support_files: [s.parquet]\n  eval_tasks:\n  - name: h\n",
        );
        let top = write("x.yaml", &format!("meta:\n  inner_lr: 0.2\n  tasks_from: {data}\n"));
        let resolved = Config::resolve(Path::new(&top), &[]).unwrap();
        let c = &resolved.config;
        assert_eq!((c.meta.tasks[0].name.as_str(), c.meta.eval_tasks[0].name.as_str()), ("a", "h"));
        assert_eq!(c.meta.tasks[0].support_files, ["s.parquet"]);
        assert_eq!(c.meta.inner_lr, 0.2, "only the task lists come from the other file");
        assert!(c.meta.tasks_from.is_none(), "consumed, so the saved config loads again as it is");
        assert!(resolved.source_of("meta.tasks.0.name").unwrap().to_string().contains("(meta.tasks_from)"));
        Config::from_yaml(&c.to_yaml(), "saved", &[]).unwrap();

        // An override picks other data; a config listing tasks too is refused, naming both.
        let other = write("other.yaml", "meta:\n  tasks:\n  - name: b\n");
        let c = Config::load(Path::new(&top), &[format!("meta.tasks_from={other}")]).unwrap();
        assert_eq!((c.meta.tasks[0].name.as_str(), c.meta.eval_tasks.len()), ("b", 0));
        let both = write("both.yaml", &format!("meta:\n  tasks_from: {data}\n  tasks:\n  - name: c\n"));
        let e = Config::load(Path::new(&both), &[]).unwrap_err().to_string();
        assert!(e.contains("both.yaml") && e.contains("both give tasks") && e.contains("null"), "{e}");
        let c = Config::load(Path::new(&both), &["meta.tasks_from=null".into()]).unwrap();
        assert_eq!(c.meta.tasks[0].name, "c");
        let e = Config::load(Path::new(&top), &["meta.tasks_from=/no/such.yaml".into()]).unwrap_err().to_string();
        assert!(e.contains("/no/such.yaml"), "{e}");
    }

    const ORIGINAL_STYLE: &str = r#"
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
    fn the_original_layout_loads_with_defaults_for_the_rest() {
        let cfg = Config::from_yaml(ORIGINAL_STYLE, "original.yaml", &[]).unwrap();
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
        let cfg = Config::from_yaml(ORIGINAL_STYLE, "original.yaml", &overrides).unwrap();
        assert_eq!(cfg.meta.inner_lr, 1e-3);
        assert_eq!(cfg.data.truncation, crate::data::Truncation::Left);
        assert_eq!(cfg.meta.tasks[0].name, "law");
        let err =
            Config::from_yaml(ORIGINAL_STYLE, "original.yaml", &["meta.inner_steps=3".into()]).unwrap_err().to_string();
        assert!(err.contains("override `meta.inner_steps=3`") && err.contains("unknown key"), "{err}");
        let err = Config::from_yaml(ORIGINAL_STYLE, "original.yaml", &["meta.tasks.5.name=x".into()])
            .unwrap_err()
            .to_string();
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
