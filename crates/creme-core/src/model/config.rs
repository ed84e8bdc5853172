//! Model hyper-parameters, read from GGUF metadata (or an HF config.json).

use serde::Serialize;

use super::gguf::GgufHeader;
use crate::error::ModelError;

/// How rotary embeddings pair up dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RopeStyle {
    /// Rotate halves: (x[i], x[i + d/2]). Qwen2 in GGUF and every HF model.
    NeoX,
    /// Rotate adjacent pairs: (x[2i], x[2i+1]). Llama in GGUF, whose Q/K rows llama.cpp permuted
    /// at conversion so that this pairing equals HF's half rotation.
    Interleaved,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelConfig {
    pub arch: String,
    pub name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context_len: usize,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub rms_eps: f32,
    pub qkv_bias: bool,
    /// Token ids that end generation (the GGUF eos and `<|endoftext|>` where present).
    pub eos_ids: Vec<u32>,
    pub pad_id: u32,
}

impl ModelConfig {
    /// The model in a few words, as a load reports it: its name ("model" where the file names
    /// none), architecture and layer count.
    pub fn summary(&self) -> String {
        let name = if self.name.is_empty() {
            "model"
        } else {
            &self.name
        };
        format!("{name} ({}, {} layers)", self.arch, self.n_layers)
    }

    pub fn from_gguf(h: &GgufHeader) -> Result<ModelConfig, ModelError> {
        let arch = h
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| ModelError::Missing("GGUF metadata general.architecture".into()))?
            .to_string();
        let rope_style = match arch.as_str() {
            "qwen2" => RopeStyle::NeoX,
            "llama" => RopeStyle::Interleaved,
            other => return Err(ModelError::Architecture(other.into())),
        };
        let num = |key: &str| -> Result<u64, ModelError> {
            h.get(&format!("{arch}.{key}"))
                .and_then(|v| v.as_u64())
                .ok_or_else(|| ModelError::Missing(format!("GGUF metadata {arch}.{key}")))
        };
        let flt = |key: &str, default: f64| -> f64 {
            h.get(&format!("{arch}.{key}"))
                .and_then(|v| v.as_f64())
                .unwrap_or(default)
        };
        let n_layers = num("block_count")? as usize;
        let d_model = num("embedding_length")? as usize;
        let n_heads = num("attention.head_count")? as usize;
        let n_kv_heads = num("attention.head_count_kv").unwrap_or(n_heads as u64) as usize;
        if n_heads == 0 || n_kv_heads == 0 || d_model % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::Format(format!(
                "bad head counts: d_model {d_model}, heads {n_heads}, kv heads {n_kv_heads}"
            )));
        }
        let vocab = match h.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(t) => t.len(),
            None => h
                .tensor("token_embd.weight")
                .map(|t| t.rows_cols().0 as usize)
                .ok_or_else(|| ModelError::Missing("token_embd.weight".into()))?,
        };
        let tok_id = |k: &str| h.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let mut eos_ids = Vec::new();
        if let Some(e) = tok_id("tokenizer.ggml.eos_token_id") {
            eos_ids.push(e);
        }
        let eot = find_token(h, "<|endoftext|>");
        if let Some(e) = eot {
            if !eos_ids.contains(&e) {
                eos_ids.push(e);
            }
        }
        let pad_id = tok_id("tokenizer.ggml.padding_token_id")
            .or(eot)
            .or(eos_ids.first().copied())
            .unwrap_or(0);
        Ok(ModelConfig {
            name: h
                .get("general.name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string(),
            n_layers,
            d_model,
            d_ff: num("feed_forward_length")? as usize,
            n_heads,
            n_kv_heads,
            head_dim: d_model / n_heads,
            vocab,
            context_len: num("context_length").unwrap_or(2048) as usize,
            rope_base: flt("rope.freq_base", 10000.0) as f32,
            rope_style,
            rms_eps: flt("attention.layer_norm_rms_epsilon", 1e-6) as f32,
            qkv_bias: h.tensor("blk.0.attn_q.bias").is_some(),
            eos_ids,
            pad_id,
            arch,
        })
    }
}

/// Id of a token by its text in the GGUF vocabulary.
pub fn find_token(h: &GgufHeader, text: &str) -> Option<u32> {
    h.get("tokenizer.ggml.tokens")?
        .as_array()?
        .iter()
        .position(|t| t.as_str() == Some(text))
        .map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_an_unnamed_model_model() {
        let mut c = ModelConfig {
            arch: "qwen2".into(),
            name: String::new(),
            n_layers: 24,
            d_model: 896,
            d_ff: 4864,
            n_heads: 14,
            n_kv_heads: 2,
            head_dim: 64,
            vocab: 151936,
            context_len: 32768,
            rope_base: 1e6,
            rope_style: RopeStyle::NeoX,
            rms_eps: 1e-6,
            qkv_bias: true,
            eos_ids: vec![],
            pad_id: 0,
        };
        assert_eq!(c.summary(), "model (qwen2, 24 layers)");
        c.name = "Qwen2.5 Coder".into();
        assert_eq!(c.summary(), "Qwen2.5 Coder (qwen2, 24 layers)");
    }
}
