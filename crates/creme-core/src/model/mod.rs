//! Models: the GGUF reader, weight formats, configuration, tokenizer and the transformer.

pub mod config;
pub mod gguf;
pub mod gguf_write;
pub mod quant;
pub mod safetensors;
pub mod tokenizer;
pub mod transformer;

pub use config::{ModelConfig, RopeStyle};
pub use gguf::{GgufHeader, TensorInfo};
pub use quant::GgmlType;
pub use tokenizer::Tokenizer;
pub use transformer::{ForwardOut, Input, KvCache, Logits, Model, ModelLoader};
