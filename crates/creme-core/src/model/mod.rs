//! Models: the GGUF reader, weight formats, configuration, tokenizer, and the transformer
//! (loader, KV cache, forward pass, weight edits).

pub mod config;
pub mod forward;
pub mod gguf;
mod gguf_value;
pub mod gguf_write;
pub mod kv_cache;
pub mod loader;
pub mod safetensors;
pub mod tokenizer;
mod weight_edit;

pub use crate::backend::Embedding;
pub use crate::quant::{self, GgmlType};
pub use config::{ModelConfig, RopeStyle};
pub use forward::{DownState, ForwardOut, Input, Logits, Model};
pub use gguf::{GgufHeader, TensorInfo};
pub use kv_cache::{KvCache, KvPrefix};
pub use loader::{check_tensor_table, ModelLoader};
pub use tokenizer::Tokenizer;

/// The old home of the forward pass's types (kept so existing paths resolve).
pub mod transformer {
    pub use super::forward::{ForwardOut, Input, Logits, Model};
    pub use super::kv_cache::KvCache;
    pub use super::loader::{check_tensor_table, ModelLoader};
}
