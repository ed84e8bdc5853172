//! HF checkpoints: config.json + tokenizer.json + model*.safetensors (f32/f16/bf16). Tensors are
//! renamed to their GGUF names and uploaded in their own encoding; HF's Q/K layout pairs with
//! the NeoX (half-split) rotary embedding for both qwen2 and llama.

use serde_json::Value as Json;

use super::config::{ModelConfig, RopeStyle};
use super::gguf::TensorInfo;
use super::quant::GgmlType;
use super::tokenizer::Tokenizer;
use super::transformer::{Model, ModelLoader};
use crate::error::ModelError;
use crate::gpu::Gpu;

/// The GGUF name of an HF tensor name (None for tensors the model does not use).
pub fn gguf_name(hf: &str) -> Option<String> {
    let direct = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(d) = direct {
        return Some(d.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let mapped = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}

/// Model hyper-parameters from an HF config.json.
pub fn config_from_json(config_json: &[u8], has_qkv_bias: bool) -> Result<ModelConfig, ModelError> {
    let c: Json = serde_json::from_slice(config_json).map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
    let arch = c["model_type"].as_str().unwrap_or("").to_string();
    if arch != "qwen2" && arch != "llama" {
        return Err(ModelError::Architecture(arch));
    }
    let num = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or_else(|| ModelError::Missing(format!("config.json {k}")));
    let n_heads = num("num_attention_heads")?;
    let d_model = num("hidden_size")?;
    let eos_ids: Vec<u32> = match &c["eos_token_id"] {
        Json::Array(a) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
        v => v.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
    };
    Ok(ModelConfig {
        name: c["_name_or_path"].as_str().unwrap_or("").to_string(),
        n_layers: num("num_hidden_layers")?,
        d_model,
        d_ff: num("intermediate_size")?,
        n_heads,
        n_kv_heads: num("num_key_value_heads").unwrap_or(n_heads),
        head_dim: c["head_dim"].as_u64().map(|v| v as usize).unwrap_or(d_model / n_heads.max(1)),
        vocab: num("vocab_size")?,
        context_len: num("max_position_embeddings").unwrap_or(2048),
        rope_base: c["rope_theta"].as_f64().unwrap_or(10000.0) as f32,
        rope_style: RopeStyle::NeoX,
        rms_eps: c["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32,
        qkv_bias: has_qkv_bias,
        pad_id: c["pad_token_id"].as_u64().map(|v| v as u32).or(eos_ids.first().copied()).unwrap_or(0),
        eos_ids,
        arch,
    })
}

/// The tensor table (under GGUF names, dims reversed) of parsed HF shards, and each tensor's
/// bytes. Tensors the runtime does not use are skipped; unsupported dtypes are errors.
pub fn hf_tensor_table<'a>(parsed: &'a [safetensors::SafeTensors<'a>]) -> Result<(Vec<TensorInfo>, Vec<(String, &'a [u8])>), ModelError> {
    let mut table = Vec::new();
    let mut views = Vec::new();
    for st in parsed {
        for (name, view) in st.tensors() {
            let Some(g) = gguf_name(&name) else { continue };
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => GgmlType::F32,
                safetensors::Dtype::F16 => GgmlType::F16,
                safetensors::Dtype::BF16 => GgmlType::BF16,
                other => return Err(ModelError::Format(format!("tensor '{name}' has dtype {other:?} (f32, f16, bf16 supported)"))),
            };
            // GGUF dims are reversed (contiguous first).
            let dims: Vec<u64> = view.shape().iter().rev().map(|&d| d as u64).collect();
            table.push(TensorInfo { name: g.clone(), dims, dtype, offset: 0 });
            views.push((g, view.data()));
        }
    }
    Ok((table, views))
}

impl Model {
    /// Load an HF checkpoint from its files' bytes (one or more safetensors shards).
    pub fn from_safetensors(gpu: &Gpu, config_json: &[u8], tokenizer_json: &[u8], shards: &[&[u8]], max_positions: usize) -> Result<Model, ModelError> {
        let parsed: Vec<safetensors::SafeTensors> = shards
            .iter()
            .enumerate()
            .map(|(i, b)| safetensors::SafeTensors::deserialize(b).map_err(|e| ModelError::Format(format!("safetensors shard {i}: {e}"))))
            .collect::<Result<_, _>>()?;
        let (table, views) = hf_tensor_table(&parsed)?;
        let has_bias = table.iter().any(|t| t.name == "blk.0.attn_q.bias");
        let cfg = config_from_json(config_json, has_bias)?;
        let tokenizer = Tokenizer::from_json(tokenizer_json)?;
        let mut loader = ModelLoader::from_parts(cfg, tokenizer, table)?;
        for (name, data) in views {
            loader.add_tensor(gpu, &name, data)?;
        }
        loader.finish(gpu, max_positions)
    }
}
