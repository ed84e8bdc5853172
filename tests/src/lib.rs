//! Shared helpers for the workspace integration tests: where ../shared and the model cache are,
//! and how to open a GPU for a given backend.

use std::path::{Path, PathBuf};

use creme_core::{Device, Gpu, GpuOptions};

/// Root of the repository (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `../shared` beside the repository, or `CREME_DATA_DIR`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("CREME_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared"))
}

/// The reference data dir for a test that reads `needs` (paths inside it), or None when one is
/// missing: then the test is skipped, not failed, so a clone without the data still runs every
/// other test. A skip is said on stderr and appended to the file `CREME_SKIP_LIST` names (the
/// test script lists them at the end). Where the data must be there (`CI=true`, or
/// `CREME_REQUIRE_SHARED=1`), a missing file fails the test instead.
///
/// `let Some(shared) = creme_tests::require_shared(&["datasets/humaneval-nlpert"]) else { return };`
pub fn require_shared(needs: &[&str]) -> Option<PathBuf> {
    let dir = shared_dir();
    let missing: Vec<String> = needs
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let test = current_test();
    let why = format!(
        "{test}: needs {} (put the reference data at ../shared beside the repository or set CREME_DATA_DIR)",
        missing.join(", ")
    );
    assert!(
        !shared_required(),
        "{why}; CI=true or CREME_REQUIRE_SHARED=1 requires it"
    );
    eprintln!("SKIPPED {why}");
    if let Some(list) = std::env::var_os("CREME_SKIP_LIST") {
        append_line(Path::new(&list), &test);
    }
    None
}

/// Whether a missing reference file fails a test rather than skipping it.
fn shared_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("CREME_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// `binary::test` of the running test: libtest names each test's thread after the test.
fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|e| e.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|s| match s.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_string(),
            _ => s,
        })
        .unwrap_or_default();
    let thread = std::thread::current();
    format!("{binary}::{}", thread.name().unwrap_or("?"))
}

/// Append one line in one write (tests run in parallel; O_APPEND keeps whole lines apart).
fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("could not list the skip in {}: {e}", path.display());
    }
}

/// The model cache (`CREME_CACHE_DIR`, default `~/.cache/creme`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CREME_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/creme")
        })
}

/// A GPU on the given backend list (`vulkan`, `gl`), or the environment's choice for None.
pub fn gpu_on(backend: Option<&str>) -> Result<Gpu, creme_core::GpuError> {
    let mut o = GpuOptions::from_env();
    if let Some(b) = backend {
        o.backends = Some(b.to_string());
    }
    Gpu::new_blocking(&o)
}

/// A device by backend name: `cpu` (the native backend), `cpu-exact` (its f32 mode) or a wgpu backend list (`vulkan`, `gl`).
pub fn device_on(backend: &str) -> Device {
    match backend {
        "cpu" => Device::Cpu(creme_core::backend::cpu::CpuBackend::new()),
        "cpu-exact" => Device::Cpu(creme_core::backend::cpu::CpuBackend::exact()),
        // wgpu on Vulkan with an f16 KV cache (lavapipe has shader-f16).
        "vulkan-kv16" => {
            let mut o = creme_core::GpuOptions::from_env();
            o.backends = Some("vulkan".into());
            o.kv_f16 = true;
            Device::Wgpu(creme_core::Gpu::new_blocking(&o).unwrap())
        }
        // wgpu on Vulkan with weight rows in groups of N (the default on lavapipe is 8; GPUs
        // take 1, and an odd N leaves the last group part-filled and the QKV weights apart).
        rg if rg.starts_with("vulkan-rg") => {
            let mut o = creme_core::GpuOptions::from_env();
            o.backends = Some("vulkan".into());
            o.weight_row_group = Some(rg["vulkan-rg".len()..].parse().unwrap());
            Device::Wgpu(creme_core::Gpu::new_blocking(&o).unwrap())
        }
        // wgpu on Vulkan with batch-invariant kernels: the adapter's own choice, or the GPUs'
        // tile kernel (`vulkan-invariant-gemm`).
        inv if inv.starts_with("vulkan-invariant") => {
            let mut o = creme_core::GpuOptions::from_env();
            o.backends = Some("vulkan".into());
            o.batch_invariant = Some(true);
            o.qmm = inv.strip_prefix("vulkan-invariant-").map(String::from);
            Device::Wgpu(creme_core::Gpu::new_blocking(&o).unwrap())
        }
        wgpu => {
            Device::Wgpu(gpu_on(Some(wgpu)).unwrap_or_else(|e| panic!("no {wgpu} adapter: {e}")))
        }
    }
}

/// `values` rounded to the nearest f16s: what an f16 KV cache holds of them, and an f32 one
/// exactly (so a CPU reference and a GPU with either cache start from the same keys and values).
pub fn f16_exact(values: Vec<f32>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Largest difference a test allows between a wgpu result and the CPU backend's (f32 mode)
/// after attention over `dev`'s KV cache: f32 rounding, or f16's (2^-11 relative) on keys and
/// values the GPU rounds as it writes them.
pub fn kv_tolerance(dev: &Device, f32_tolerance: f32) -> f32 {
    use creme_core::backend::{Backend, DType};
    match dev.kv_dtype() {
        DType::F16 => 1.5e-3,
        _ => f32_tolerance,
    }
}

/// The backends every model-level test runs on: the CPU backend and wgpu on Vulkan (lavapipe here).
pub const BACKENDS: [&str; 2] = ["cpu", "vulkan"];

/// Path of a cached model file (`qwen` or `smollm2`); the README's test command fetches them.
pub fn model_path(which: &str) -> PathBuf {
    let file = match which {
        "qwen" => "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "smollm2" => "smollm2-135m-instruct-q4_1.gguf",
        other => panic!("unknown model {other}"),
    };
    let p = std::env::var_os("CREME_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models"))
        .join(file);
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

/// Parse a GGUF header by reading growing prefixes of the file (as a streaming reader would).
pub fn read_header(path: &std::path::Path) -> creme_core::model::GgufHeader {
    use std::io::Read;
    let mut want = 1 << 20;
    loop {
        let mut buf = Vec::new();
        std::fs::File::open(path)
            .unwrap()
            .take(want as u64)
            .read_to_end(&mut buf)
            .unwrap();
        match creme_core::model::GgufHeader::parse(&buf) {
            Ok(h) => return h,
            Err(creme_core::ModelError::Truncated { need, .. })
                if (buf.len() as u64) == want as u64 =>
            {
                want = (need as usize).max(want * 2)
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

/// Random GGUF blocks of type `t` whose f16 scale fields hold small positive values (random bytes
/// there could be NaN/Inf), so dequantized weights are finite.
pub fn random_blocks(
    t: creme_core::model::GgmlType,
    nblocks: usize,
    rng: &mut creme_core::cpu::SplitMix64,
) -> Vec<u8> {
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
                let bits = if t == G::F16 {
                    half::f16::from_f32(x).to_bits()
                } else {
                    half::bf16::from_f32(x).to_bits()
                };
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
    [
        G::F32,
        G::F16,
        G::BF16,
        G::Q4_0,
        G::Q4_1,
        G::Q5_0,
        G::Q5_1,
        G::Q8_0,
        G::Q4K,
        G::Q5K,
        G::Q6K,
    ]
};

/// A tiny random qwen2-architecture model (2 layers, d_model 64, byte-level vocabulary of 257),
/// written as GGUF or as HF tensors, for fast tests of the model code.
pub mod tiny {
    use creme_core::cpu::SplitMix64;
    use creme_core::model::gguf::Value;
    use creme_core::model::gguf_write::{write_gguf, TensorOut};
    use creme_core::model::GgmlType;

    pub const D: usize = 64;
    pub const FF: usize = 96;
    pub const HEADS: usize = 4;
    pub const KV: usize = 2;
    pub const HD: usize = D / HEADS;
    pub const LAYERS: usize = 2;

    /// GPT-2's byte -> printable-char map (byte-level BPE alphabet).
    pub fn byte_chars() -> Vec<char> {
        let mut bs: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
        let mut cs = bs.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bs.contains(&b) {
                bs.push(b);
                cs.push(256 + n);
                n += 1;
            }
        }
        let mut pairs: Vec<(u32, u32)> = bs.into_iter().zip(cs).collect();
        pairs.sort();
        pairs
            .into_iter()
            .map(|(_, c)| char::from_u32(c).unwrap())
            .collect()
    }

    /// (HF name, GGUF name, HF shape [out, in] or [n], values)
    pub fn tiny_weights() -> Vec<(String, String, Vec<usize>, Vec<f32>)> {
        let mut rng = SplitMix64(77);
        let vocab = 257;
        let mut w = Vec::new();
        let mut add = |hf: String, gg: String, shape: Vec<usize>, scale: f32, offset: f32| {
            let n = shape.iter().product();
            let v = (0..n).map(|_| rng.next_f32() * scale + offset).collect();
            w.push((hf, gg, shape, v));
        };
        add(
            "model.embed_tokens.weight".into(),
            "token_embd.weight".into(),
            vec![vocab, D],
            1.0,
            0.0,
        );
        for l in 0..LAYERS {
            let hf = |s: &str| format!("model.layers.{l}.{s}");
            let gg = |s: &str| format!("blk.{l}.{s}");
            add(
                hf("input_layernorm.weight"),
                gg("attn_norm.weight"),
                vec![D],
                0.1,
                1.0,
            );
            add(
                hf("self_attn.q_proj.weight"),
                gg("attn_q.weight"),
                vec![D, D],
                0.2,
                0.0,
            );
            add(
                hf("self_attn.k_proj.weight"),
                gg("attn_k.weight"),
                vec![KV * HD, D],
                0.2,
                0.0,
            );
            add(
                hf("self_attn.v_proj.weight"),
                gg("attn_v.weight"),
                vec![KV * HD, D],
                0.2,
                0.0,
            );
            add(
                hf("self_attn.q_proj.bias"),
                gg("attn_q.bias"),
                vec![D],
                0.1,
                0.0,
            );
            add(
                hf("self_attn.k_proj.bias"),
                gg("attn_k.bias"),
                vec![KV * HD],
                0.1,
                0.0,
            );
            add(
                hf("self_attn.v_proj.bias"),
                gg("attn_v.bias"),
                vec![KV * HD],
                0.1,
                0.0,
            );
            add(
                hf("self_attn.o_proj.weight"),
                gg("attn_output.weight"),
                vec![D, D],
                0.2,
                0.0,
            );
            add(
                hf("post_attention_layernorm.weight"),
                gg("ffn_norm.weight"),
                vec![D],
                0.1,
                1.0,
            );
            add(
                hf("mlp.gate_proj.weight"),
                gg("ffn_gate.weight"),
                vec![FF, D],
                0.2,
                0.0,
            );
            add(
                hf("mlp.up_proj.weight"),
                gg("ffn_up.weight"),
                vec![FF, D],
                0.2,
                0.0,
            );
            add(
                hf("mlp.down_proj.weight"),
                gg("ffn_down.weight"),
                vec![D, FF],
                0.2,
                0.0,
            );
        }
        add(
            "model.norm.weight".into(),
            "output_norm.weight".into(),
            vec![D],
            0.1,
            1.0,
        );
        add(
            "lm_head.weight".into(),
            "output.weight".into(),
            vec![vocab, D],
            0.5,
            0.0,
        );
        w
    }

    pub fn metadata(arch: &str) -> Vec<(String, Value)> {
        let mut tokens: Vec<String> = byte_chars().into_iter().map(|c| c.to_string()).collect();
        tokens.push("<|endoftext|>".into());
        let mut types = vec![1i32; 256];
        types.push(3);
        let s = |v: &str| Value::Str(v.into());
        vec![
            ("general.architecture".into(), s(arch)),
            ("general.name".into(), s("tiny")),
            (format!("{arch}.block_count"), Value::U32(LAYERS as u32)),
            (format!("{arch}.embedding_length"), Value::U32(D as u32)),
            (format!("{arch}.feed_forward_length"), Value::U32(FF as u32)),
            (
                format!("{arch}.attention.head_count"),
                Value::U32(HEADS as u32),
            ),
            (
                format!("{arch}.attention.head_count_kv"),
                Value::U32(KV as u32),
            ),
            (format!("{arch}.context_length"), Value::U32(256)),
            (format!("{arch}.rope.freq_base"), Value::F32(10000.0)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(1e-6),
            ),
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s("qwen2")),
            ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into())),
            (
                "tokenizer.ggml.token_type".into(),
                Value::Array(types.into()),
            ),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(Vec::<String>::new().into()),
            ),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(256)),
        ]
    }

    pub fn tiny_gguf() -> Vec<u8> {
        tiny_gguf_arch("qwen2")
    }

    /// The tiny model's tensors under another architecture's metadata (e.g. llama, whose GGUF
    /// Q/K rows are read as interleaved for the rotary embedding).
    pub fn tiny_gguf_arch(arch: &str) -> Vec<u8> {
        write_gguf(&metadata(arch), &tiny_tensors())
    }

    /// The tiny model's tensors as F32 GGUF tensors (GGUF lists dims innermost first).
    pub fn tiny_tensors() -> Vec<TensorOut> {
        tiny_weights()
            .into_iter()
            .map(|(_, gg, shape, v)| TensorOut {
                name: gg,
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                dtype: GgmlType::F32,
                data: bytemuck_f32(&v),
            })
            .collect()
    }

    pub fn bytemuck_f32(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
}
