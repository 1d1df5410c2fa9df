//! From text to training batches: tokenizer and chat template, SFT example encoding.

pub mod chat_template;
pub mod sft;
pub mod tokenizer;

pub use sft::{encode_example, EncodedExample, Truncation};
pub use tokenizer::ChatTokenizer;
