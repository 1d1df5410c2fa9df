//! A small synthetic run for the trainer tests: the tiny model and a few bins tasks on disk.

use std::path::{Path, PathBuf};

use fomaml::config::schema::TaskSection;
use fomaml::config::Config;
use fomaml::data::synthetic::{make_tasks, write_tiny_model, SyntheticSpec};
use fomaml::data::task_files::{write_parquet, Example};

pub struct SyntheticRun {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl SyntheticRun {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

fn write_split(dir: &Path, task: &str, split: &str, items: &[(Example, String)]) -> String {
    let path = dir.join(task).join(format!("{split}.parquet"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let examples: Vec<Example> = items.iter().map(|(e, _)| e.clone()).collect();
    write_parquet(&path, &examples, &[]).unwrap();
    path.display().to_string()
}

/// `spec`'s tasks and the tiny model under a temp dir, with the embedded default's settings, on
/// CPU, logging to JSONL only.
pub fn synthetic_run(spec: &SyntheticSpec) -> SyntheticRun {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(&dir.path().join("model"), spec.seed).unwrap();
    let tasks = make_tasks(spec).unwrap();
    let mut config = Config::embedded_default();
    config.model.partial_pretrain = dir.path().join("model").display().to_string();
    for (set, sections) in [(&tasks.train, &mut config.meta.tasks), (&tasks.eval, &mut config.meta.eval_tasks)] {
        for (name, splits) in set {
            let mut section = TaskSection { name: name.clone(), ..Default::default() };
            section.support_files.push(write_split(dir.path(), name, "support", &splits.support));
            section.query_files.push(write_split(dir.path(), name, "query", &splits.query));
            if !splits.test.is_empty() {
                section.test_files.push(write_split(dir.path(), name, "test", &splits.test));
            }
            sections.push(section);
        }
    }
    config.trainer.device = "cpu".into();
    config.trainer.logger = vec!["jsonl".into()];
    config.trainer.default_local_dir = dir.path().join("run").display().to_string();
    SyntheticRun { dir, config }
}
