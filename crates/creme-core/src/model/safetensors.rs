//! HF checkpoints: config.json + tokenizer.json + model*.safetensors (f32/f16/bf16). Tensors are
//! renamed to their GGUF names and uploaded in their own encoding; HF's Q/K layout pairs with
//! the NeoX (half-split) rotary embedding for both qwen2 and llama.

use serde_json::Value as Json;

use super::config::{ModelConfig, RopeStyle};
use super::gguf::TensorInfo;
use super::tokenizer::Tokenizer;
use super::{Model, ModelLoader};
use crate::backend::Device;
use crate::error::ModelError;
use crate::quant::GgmlType;

/// HF and GGUF names of the tensors the runtime uses: whole-model ones, then per-layer suffixes
/// (`model.layers.N.` + HF suffix <-> `blk.N.` + GGUF suffix).
const MODEL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];
const LAYER_NAMES: [(&str, &str); 12] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// The GGUF name of an HF tensor name (None for tensors the model does not use).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some((_, g)) = MODEL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_string());
    }
    let (layer, part) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER_NAMES
        .iter()
        .find(|(h, _)| *h == part)
        .map(|(_, g)| format!("blk.{layer}.{g}"))
}

/// The HF name of a GGUF tensor name (None for tensors HF checkpoints do not have).
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some((h, _)) = MODEL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_string());
    }
    let (layer, part) = gguf.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    LAYER_NAMES
        .iter()
        .find(|(_, g)| *g == part)
        .map(|(h, _)| format!("model.layers.{layer}.{h}"))
}

/// A whole model as an HF checkpoint: (model.safetensors, config.json, tokenizer.json), from a
/// GGUF file with CREME patches applied, every tensor dequantized to f32. llama GGUFs store Q/K
/// rows permuted for the interleaved rotary embedding; they are put back in HF's order.
pub fn export_hf(
    file: &[u8],
    patches: &[crate::patch::EditPatch],
) -> Result<(Vec<u8>, String, String), ModelError> {
    use super::gguf::GgufHeader;
    crate::patch::check_stack(patches)?;
    let h = GgufHeader::parse(file)?;
    h.check_len(file.len() as u64)?;
    let cfg = ModelConfig::from_gguf(&h)?;
    super::check_tensor_table(&cfg, &h.tensors)?;
    let tokenizer = Tokenizer::from_gguf(&h)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for t in &h.tensors {
        let Some(name) = hf_name(&t.name) else {
            continue;
        };
        let mut x =
            super::quant::dequantize(t.dtype, h.tensor_bytes(file, t)?, t.elems() as usize)?;
        let (rows, cols) = t.rows_cols();
        let shape: Vec<usize> = if t.dims.len() == 1 {
            vec![cols as usize]
        } else {
            vec![rows as usize, cols as usize]
        };
        let qk = [
            "attn_q.weight",
            "attn_k.weight",
            "attn_q.bias",
            "attn_k.bias",
        ]
        .iter()
        .find(|s| t.name.ends_with(*s));
        if let (RopeStyle::Interleaved, Some(which)) = (cfg.rope_style, qk) {
            let heads = if which.starts_with("attn_q") {
                cfg.n_heads
            } else {
                cfg.n_kv_heads
            };
            // A bias is one column of as many rows as the weight has.
            let (r, c) = if t.dims.len() == 1 {
                (x.len(), 1)
            } else {
                (rows as usize, cols as usize)
            };
            x = unpermute_rows(&x, heads, r, c);
        }
        for p in patches
            .iter()
            .filter(|p| t.name == format!("blk.{}.ffn_down.weight", p.layer))
        {
            if (p.rows, p.cols) != (rows as usize, cols as usize) {
                return Err(ModelError::Format(format!(
                    "patch for layer {} is {}x{}, the model's W_down is {rows}x{cols}",
                    p.layer, p.rows, p.cols
                )));
            }
            x = p.w.clone();
        }
        tensors.push((name, shape, x));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, x)| {
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(x),
            )
            .map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| ModelError::Format(e.to_string()))?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "creme_patches".to_string(),
        patches
            .iter()
            .map(|p| p.layer.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    let st =
        safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Format(e.to_string()))?;
    let tied = h.tensor("output.weight").is_none();
    let (model_type, class) = if cfg.arch == "llama" {
        ("llama", "LlamaForCausalLM")
    } else {
        ("qwen2", "Qwen2ForCausalLM")
    };
    let config = serde_json::json!({
        "architectures": [class], "model_type": model_type, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads, "num_hidden_layers": cfg.n_layers,
        "head_dim": cfg.head_dim, "vocab_size": cfg.vocab, "max_position_embeddings": cfg.context_len, "rope_theta": cfg.rope_base,
        "rms_norm_eps": cfg.rms_eps, "tie_word_embeddings": tied, "torch_dtype": "float32", "hidden_act": "silu",
        "attention_bias": cfg.qkv_bias, "eos_token_id": cfg.eos_ids, "pad_token_id": cfg.pad_id, "_name_or_path": cfg.name,
    });
    Ok((
        st,
        serde_json::to_string_pretty(&config).unwrap_or_default(),
        tokenizer.to_json()?,
    ))
}

/// GGUF's llama Q/K row order (per head: pairs interleaved) back to HF's (per head: two halves).
fn unpermute_rows(x: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let per = rows / heads;
    let half = per / 2;
    let mut out = vec![0f32; x.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds HF row (h, j, i).
                let src = h * per + i * 2 + j;
                let dst = h * per + j * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&x[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Model hyper-parameters from an HF config.json.
pub fn config_from_json(config_json: &[u8], has_qkv_bias: bool) -> Result<ModelConfig, ModelError> {
    let c: Json = serde_json::from_slice(config_json)
        .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
    let arch = c["model_type"].as_str().unwrap_or("").to_string();
    if arch != "qwen2" && arch != "llama" {
        return Err(ModelError::Architecture(arch));
    }
    let num = |k: &str| {
        c[k].as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::Missing(format!("config.json {k}")))
    };
    let n_heads = num("num_attention_heads")?;
    let d_model = num("hidden_size")?;
    let eos_ids: Vec<u32> = match &c["eos_token_id"] {
        Json::Array(a) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect(),
        v => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
    };
    Ok(ModelConfig {
        name: c["_name_or_path"].as_str().unwrap_or("").to_string(),
        n_layers: num("num_hidden_layers")?,
        d_model,
        d_ff: num("intermediate_size")?,
        n_heads,
        n_kv_heads: num("num_key_value_heads").unwrap_or(n_heads),
        head_dim: c["head_dim"]
            .as_u64()
            .map(|v| v as usize)
            .unwrap_or(d_model / n_heads.max(1)),
        vocab: num("vocab_size")?,
        context_len: num("max_position_embeddings").unwrap_or(2048),
        rope_base: c["rope_theta"].as_f64().unwrap_or(10000.0) as f32,
        rope_style: RopeStyle::NeoX,
        rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        qkv_bias: has_qkv_bias,
        pad_id: c["pad_token_id"]
            .as_u64()
            .map(|v| v as u32)
            .or(eos_ids.first().copied())
            .unwrap_or(0),
        eos_ids,
        arch,
    })
}

/// The tensor table (under GGUF names, dims reversed) of parsed HF shards, and each tensor's
/// bytes. Tensors the runtime does not use are skipped; unsupported dtypes are errors.
pub fn hf_tensor_table<'a>(
    parsed: &'a [safetensors::SafeTensors<'a>],
) -> Result<(Vec<TensorInfo>, Vec<(String, &'a [u8])>), ModelError> {
    let mut table = Vec::new();
    let mut views = Vec::new();
    for st in parsed {
        for (name, view) in st.tensors() {
            let Some(g) = gguf_name(&name) else { continue };
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => GgmlType::F32,
                safetensors::Dtype::F16 => GgmlType::F16,
                safetensors::Dtype::BF16 => GgmlType::BF16,
                other => {
                    return Err(ModelError::Format(format!(
                        "tensor '{name}' has dtype {other:?} (f32, f16, bf16 supported)"
                    )))
                }
            };
            // GGUF dims are reversed (contiguous first).
            let dims: Vec<u64> = view.shape().iter().rev().map(|&d| d as u64).collect();
            table.push(TensorInfo {
                name: g.clone(),
                dims,
                dtype,
                offset: 0,
            });
            views.push((g, view.data()));
        }
    }
    Ok((table, views))
}

impl Model {
    /// Load an HF checkpoint from its files' bytes (one or more safetensors shards).
    pub fn from_safetensors(
        dev: &Device,
        config_json: &[u8],
        tokenizer_json: &[u8],
        shards: &[&[u8]],
        max_positions: usize,
    ) -> Result<Model, ModelError> {
        let parsed: Vec<safetensors::SafeTensors> = shards
            .iter()
            .enumerate()
            .map(|(i, b)| {
                safetensors::SafeTensors::deserialize(b)
                    .map_err(|e| ModelError::Format(format!("safetensors shard {i}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let (table, views) = hf_tensor_table(&parsed)?;
        let has_bias = table.iter().any(|t| t.name == "blk.0.attn_q.bias");
        let cfg = config_from_json(config_json, has_bias)?;
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        let mut loader = ModelLoader::from_parts(cfg, tokenizer, table)?;
        for (name, data) in views {
            loader.add_tensor(dev, &name, data)?;
        }
        loader.finish(dev, max_positions)
    }
}
