//! From files to training batches: task files, tokenizer and chat template, SFT example encoding,
//! and the resumable per-task samplers.

pub mod chat_template;
pub mod prepare;
pub mod sampler;
pub mod sft;
pub mod synthetic;
pub mod task_files;
pub mod tasks;
pub mod tokenizer;

pub use sft::{encode_example, EncodedExample, Truncation};
pub use tokenizer::ChatTokenizer;
