//! Tokenizer: byte-level BPE built from GGUF metadata (the same structure HF transformers builds
//! from a GGUF), or loaded from an HF tokenizer.json. The `tokenizers` crate does the work, with
//! the fancy-regex backend natively and in wasm, so both give the same ids.

use std::str::FromStr;

use serde_json::{json, Value as Json};

use super::gguf::GgufHeader;
use crate::error::ModelError;

/// Qwen2's pre-tokenizer split (HF `Qwen2Converter`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of special (control) tokens: left out of decoded text.
    special: Vec<u32>,
    /// Ids in the vocabulary, added tokens included, counted once: the tokenizers crate counts
    /// them by building the whole vocabulary as a map on every call.
    vocab: usize,
}

impl Tokenizer {
    /// Build from `tokenizer.ggml.*` metadata (model `gpt2`: byte-level BPE).
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer, ModelError> {
        let get = |k: &str| {
            h.get(k)
                .ok_or_else(|| ModelError::Missing(format!("GGUF metadata {k}")))
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer model '{model}' is not supported (byte-level BPE 'gpt2' is)"
            )));
        }
        let pre = h
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.as_str())
            .unwrap_or("default");
        let tokens = get("tokenizer.ggml.tokens")?
            .as_array()
            .ok_or_else(|| ModelError::Tokenizer("tokenizer.ggml.tokens is not an array".into()))?;
        let merges = get("tokenizer.ggml.merges")?
            .as_array()
            .ok_or_else(|| ModelError::Tokenizer("tokenizer.ggml.merges is not an array".into()))?;
        let types = h
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.as_array());

        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        let mut added = Vec::new();
        let mut special = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let s = t
                .as_str()
                .ok_or_else(|| ModelError::Tokenizer(format!("token #{i} is not a string")))?;
            vocab.insert(s.to_string(), json!(i));
            // ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
            let ty = types
                .and_then(|a| a.get(i))
                .and_then(|v| v.as_u64())
                .unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                                  "normalized": false, "special": true}));
                special.push(i as u32);
            }
        }
        let merges: Vec<Json> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = m
                    .as_str()
                    .ok_or_else(|| ModelError::Tokenizer(format!("merge #{i} is not a string")))?;
                let (a, b) = s.split_once(' ').ok_or_else(|| {
                    ModelError::Tokenizer(format!("merge #{i} '{s}' has no space"))
                })?;
                Ok(json!([a, b]))
            })
            .collect::<Result<_, ModelError>>()?;

        let (normalizer, pre_tokenizer) = match pre {
            "qwen2" => (
                json!({"type": "NFC"}),
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
                    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
            ),
            // GPT-2 style regex inside ByteLevel: what HF builds for llama-arch GGUFs with a gpt2 vocab.
            _ => (
                Json::Null,
                json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}),
            ),
        };
        let doc = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": merges}
        });
        let inner = tokenizers::Tokenizer::from_str(&doc.to_string())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Tokenizer::new(inner, special))
    }

    fn new(inner: tokenizers::Tokenizer, special: Vec<u32>) -> Tokenizer {
        let vocab = inner.get_vocab_size(true);
        Tokenizer {
            inner,
            special,
            vocab,
        }
    }

    /// Load an HF tokenizer.json.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let special = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| *i)
            .collect();
        Ok(Tokenizer::new(inner, special))
    }

    /// Token ids of `text`; no BOS is added (these models' `add_bos_token` is false).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The tokenizer as HF tokenizer.json text.
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }
}
