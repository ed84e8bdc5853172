//! Typed errors at the crate boundary: each says what went wrong and where.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum GpuError {
    #[error("no GPU adapter: {detail}")]
    NoAdapter { detail: String },
    #[error("could not open the GPU device: {0}")]
    Device(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU error: {0}")]
    Validation(String),
    #[error("the GPU ran out of memory: {0}")]
    OutOfMemory(String),
    #[error("reading back a GPU buffer failed: {0}")]
    Readback(String),
    #[error("'{tensor}' needs {bytes} bytes in one buffer or binding, over this adapter's limit of {limit} bytes")]
    TooLarge {
        tensor: String,
        bytes: u64,
        limit: u64,
    },
    #[error("shape error in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
}

/// Problems with model files (GGUF, safetensors, config, tokenizer): each names the file part.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("not a GGUF file: the first bytes are {0:?}, expected \"GGUF\"")]
    NotGguf([u8; 4]),
    #[error("unsupported GGUF version {0} (this reader supports 2 and 3)")]
    Version(u32),
    #[error("file truncated: {what} needs {need} bytes, only {have} available")]
    Truncated { what: String, need: u64, have: u64 },
    #[error("unsupported tensor type {name} (ggml type id {id})")]
    UnsupportedType { id: u32, name: &'static str },
    #[error("malformed model file: {0}")]
    Format(String),
    #[error("missing {0}")]
    Missing(String),
    #[error("unsupported architecture '{0}' (supported: qwen2, llama)")]
    Architecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A benchmark dataset file (the variant lives here because datasets are read by the same
    /// untrusted-input entry points as models).
    #[error("dataset {0}")]
    Dataset(String),
    #[error(transparent)]
    Gpu(#[from] GpuError),
}
