//! Shared helpers for the workspace integration tests: where ../shared and the model cache are,
//! and how to open a GPU for a given backend.

use std::path::PathBuf;

use creme_core::{Gpu, GpuOptions};

/// Root of the repository (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `../shared` beside the repository, or `CREME_DATA_DIR`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("CREME_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("../shared"))
}

/// The model cache (`CREME_CACHE_DIR`, default `~/.cache/creme`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CREME_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/creme"))
}

/// A GPU on the given backend list (`vulkan`, `gl`), or the environment's choice for None.
pub fn gpu_on(backend: Option<&str>) -> Result<Gpu, creme_core::GpuError> {
    let mut o = GpuOptions::from_env();
    if let Some(b) = backend {
        o.backends = Some(b.to_string());
    }
    Gpu::new_blocking(&o)
}

/// Path of a cached model file (`qwen` or `smollm2`); the README's test command fetches them.
pub fn model_path(which: &str) -> PathBuf {
    let file = match which {
        "qwen" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "smollm2" => "smollm2-135m-instruct-q4_1.gguf",
        other => panic!("unknown model {other}"),
    };
    let p = std::env::var_os("CREME_MODEL_DIR").map(PathBuf::from).unwrap_or_else(|| cache_dir().join("models")).join(file);
    assert!(p.exists(), "{} is missing: run scripts/fetch-models.sh", p.display());
    p
}

/// Parse a GGUF header by reading growing prefixes of the file (as a streaming reader would).
pub fn read_header(path: &std::path::Path) -> creme_core::model::GgufHeader {
    use std::io::Read;
    let mut want = 1 << 20;
    loop {
        let mut buf = Vec::new();
        std::fs::File::open(path).unwrap().take(want as u64).read_to_end(&mut buf).unwrap();
        match creme_core::model::GgufHeader::parse(&buf) {
            Ok(h) => return h,
            Err(creme_core::ModelError::Truncated { need, .. }) if (buf.len() as u64) == want as u64 => {
                want = (need as usize).max(want * 2)
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}
