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

/// Random GGUF blocks of type `t` whose f16 scale fields hold small positive values (random bytes
/// there could be NaN/Inf), so dequantized weights are finite.
pub fn random_blocks(t: creme_core::model::GgmlType, nblocks: usize, rng: &mut creme_core::cpu::SplitMix64) -> Vec<u8> {
    use creme_core::model::GgmlType as G;
    let bb = t.block_bytes();
    let mut out: Vec<u8> = (0..nblocks * bb).map(|_| rng.next_u64() as u8).collect();
    let f16_fields: &[usize] = match t {
        G::F32 => {
            for (i, v) in out.chunks_mut(4).enumerate() {
                v.copy_from_slice(&(((i * 7919) % 2001) as f32 / 1000.0 - 1.0).to_le_bytes());
            }
            return out;
        }
        G::F16 | G::BF16 => {
            for v in out.chunks_mut(2) {
                let x = (rng.next_f32()) as f32;
                let bits = if t == G::F16 { half::f16::from_f32(x).to_bits() } else { half::bf16::from_f32(x).to_bits() };
                v.copy_from_slice(&bits.to_le_bytes());
            }
            return out;
        }
        G::Q4_0 | G::Q5_0 | G::Q8_0 => &[0],
        G::Q4_1 | G::Q5_1 | G::Q4K | G::Q5K => &[0, 2],
        G::Q6K => &[208],
    };
    for b in 0..nblocks {
        for &off in f16_fields {
            let v = half::f16::from_f32(0.001 + (rng.next_u64() % 1000) as f32 * 0.00005);
            out[b * bb + off..b * bb + off + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub const ALL_TYPES: [creme_core::model::GgmlType; 11] = {
    use creme_core::model::GgmlType as G;
    [G::F32, G::F16, G::BF16, G::Q4_0, G::Q4_1, G::Q5_0, G::Q5_1, G::Q8_0, G::Q4K, G::Q5K, G::Q6K]
};
