//! Building a [`Model`] from a GGUF header and then the tensors' bytes, one tensor at a time (so a
//! browser can stream the file and never hold all of it), on any backend.

use std::collections::HashMap;

use super::config::{ModelConfig, RopeStyle};
use super::forward::{Layer, Model};
use super::gguf::{GgufHeader, TensorInfo};
use super::tokenizer::Tokenizer;
use crate::backend::Embedding;
use crate::backend::{Backend, BackendKind, BlockShape, Device, LayerWeights, Tensor, Weight};
use crate::error::ModelError;
use crate::gpu::layers::MAX_ATTENTION_HEAD_DIM;
use crate::gpu::WeightUpload;
use crate::quant::dequantize;

/// Longest context either backend runs (the rope table holds every position).
pub const MAX_CONTEXT: usize = 1 << 17;

/// Collects a model's tensors as they arrive.
pub struct ModelLoader {
    /// Expected tensors by GGUF name.
    table: HashMap<String, TensorInfo>,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    weights: HashMap<String, Weight>,
    vectors: HashMap<String, Tensor>,
    embed: Option<Embedding>,
    tied_head_bytes: bool,
    /// A layer's query, key and value projections, held until all three have arrived and are
    /// uploaded as a group (see [`Backend::upload_weight_group`]).
    pending_qkv: HashMap<usize, [Option<(TensorInfo, Vec<u8>)>; 3]>,
    /// The projection biases as values, joined per layer at the end.
    bias_values: HashMap<String, Vec<f32>>,
}

/// Which of a layer's attention projections a tensor is: (layer, 0 = q, 1 = k, 2 = v).
fn qkv_part(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let part = ["attn_q.weight", "attn_k.weight", "attn_v.weight"]
        .iter()
        .position(|p| *p == tail)?;
    Some((layer.parse().ok()?, part))
}

fn is_vector(t: &TensorInfo) -> bool {
    t.dims.len() == 1
}

impl ModelLoader {
    /// A loader for a GGUF file whose header has been read and checked against the file's length
    /// ([`GgufHeader::check_len`]). The tensor table is checked against the config (whose vocabulary
    /// is the token count) before the tokenizer is built: building it is the costliest thing the
    /// metadata asks for, and [`Tokenizer::from_gguf`] bounds it by the extent of that table.
    pub fn new(header: &GgufHeader) -> Result<ModelLoader, ModelError> {
        let cfg = ModelConfig::from_gguf(header)?;
        check_tensor_table(&cfg, &header.tensors)?;
        let tokenizer = Tokenizer::from_gguf(header)?;
        Self::from_parts(cfg, tokenizer, header.tensors.clone())
    }

    /// A loader for any source: config, tokenizer and the tensor table under GGUF names. The
    /// table is checked against the config first (see [`check_tensor_table`]).
    pub fn from_parts(
        cfg: ModelConfig,
        tokenizer: Tokenizer,
        tensors: Vec<TensorInfo>,
    ) -> Result<ModelLoader, ModelError> {
        check_tensor_table(&cfg, &tensors)?;
        if tokenizer.vocab_size() > cfg.vocab {
            return Err(ModelError::Format(format!(
                "the tokenizer has {} tokens but the embedding only {} rows",
                tokenizer.vocab_size(),
                cfg.vocab
            )));
        }
        let tied = !tensors.iter().any(|t| t.name == "output.weight");
        let table = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        Ok(ModelLoader {
            table,
            cfg,
            tokenizer,
            weights: HashMap::new(),
            vectors: HashMap::new(),
            embed: None,
            tied_head_bytes: tied,
            pending_qkv: HashMap::new(),
            bias_values: HashMap::new(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Take one tensor's bytes (GGUF name and encoding).
    pub fn add_tensor(&mut self, dev: &Device, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let info = self
            .table
            .get(name)
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "tensor '{name}' is not in the model's tensor table"
                ))
            })?
            .clone();
        if (bytes.len() as u64) < info.bytes() {
            return Err(ModelError::Truncated {
                what: format!("tensor '{name}'"),
                need: info.bytes(),
                have: bytes.len() as u64,
            });
        }
        let bytes = &bytes[..info.bytes() as usize];
        if name == "token_embd.weight" {
            let (rows, cols) = (info.rows_cols().0 as usize, info.rows_cols().1 as usize);
            let head = match self.tied_head_bytes {
                true => Some(dev.upload_weight(
                    "output.weight (tied)",
                    info.dtype,
                    rows,
                    cols,
                    bytes,
                )?),
                false => None,
            };
            self.embed = Some(Embedding::new(
                dev,
                info.dtype,
                rows,
                cols,
                bytes,
                head.as_ref(),
            )?);
            if let Some(head) = head {
                self.weights.insert("output.weight".into(), head);
            }
        } else if is_vector(&info) {
            let v = dequantize(info.dtype, bytes, info.elems() as usize)?;
            self.vectors
                .insert(name.to_string(), dev.upload(name, 1, v.len(), &v)?);
            if name.ends_with("_q.bias") || name.ends_with("_k.bias") || name.ends_with("_v.bias") {
                self.bias_values.insert(name.to_string(), v);
            }
        } else if let Some((layer, part)) = qkv_part(name) {
            let slots = self.pending_qkv.entry(layer).or_default();
            slots[part] = Some((info, bytes.to_vec()));
            if slots.iter().all(|s| s.is_some()) {
                let parts = self.pending_qkv.remove(&layer).expect("present");
                self.upload_qkv(dev, parts)?;
            }
        } else {
            let (rows, cols) = info.rows_cols();
            let w = dev.upload_weight(name, info.dtype, rows as usize, cols as usize, bytes)?;
            self.weights.insert(name.to_string(), w);
        }
        Ok(())
    }

    fn upload_qkv(
        &mut self,
        dev: &Device,
        parts: [Option<(TensorInfo, Vec<u8>)>; 3],
    ) -> Result<(), ModelError> {
        let parts: Vec<(TensorInfo, Vec<u8>)> = parts.into_iter().flatten().collect();
        let uploads: Vec<WeightUpload<'_>> = parts
            .iter()
            .map(|(info, bytes)| {
                let (rows, cols) = info.rows_cols();
                WeightUpload {
                    name: &info.name,
                    dtype: info.dtype,
                    rows: rows as usize,
                    cols: cols as usize,
                    bytes,
                }
            })
            .collect();
        for (w, (info, _)) in dev.upload_weight_group(&uploads)?.into_iter().zip(&parts) {
            self.weights.insert(info.name.clone(), w);
        }
        Ok(())
    }

    /// The q, k and v biases of layer `l` back to back.
    fn qkv_bias(&mut self, dev: &Device, l: usize) -> Result<Option<Tensor>, ModelError> {
        if !self.cfg.qkv_bias {
            return Ok(None);
        }
        let mut joined = Vec::new();
        for part in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
            let name = format!("blk.{l}.{part}");
            joined.extend(
                self.bias_values
                    .remove(&name)
                    .ok_or_else(|| ModelError::Missing(format!("tensor {name}")))?,
            );
        }
        Ok(Some(dev.upload("qkv bias", 1, joined.len(), &joined)?))
    }

    /// Assemble the model once every tensor has arrived.
    pub fn finish(mut self, dev: &Device, max_positions: usize) -> Result<Model, ModelError> {
        let cfg = self.cfg.clone();
        let mut layers = Vec::new();
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            let bias = |me: &mut Self, s: &str| {
                if cfg.qkv_bias {
                    me.vector(&p(s)).map(Some)
                } else {
                    Ok(None)
                }
            };
            let w = LayerWeights {
                q_bias: bias(&mut self, "attn_q.bias")?,
                k_bias: bias(&mut self, "attn_k.bias")?,
                v_bias: bias(&mut self, "attn_v.bias")?,
                qkv_bias: self.qkv_bias(dev, l)?,
                attn_norm: self.vector(&p("attn_norm.weight"))?,
                ffn_norm: self.vector(&p("ffn_norm.weight"))?,
                q: self.weight(&p("attn_q.weight"))?,
                k: self.weight(&p("attn_k.weight"))?,
                v: self.weight(&p("attn_v.weight"))?,
                o: self.weight(&p("attn_output.weight"))?,
                gate: self.weight(&p("ffn_gate.weight"))?,
                up: self.weight(&p("ffn_up.weight"))?,
                down: self.weight(&p("ffn_down.weight"))?,
            };
            layers.push(Layer {
                w,
                down_replaced: Vec::new(),
                down_state: super::forward::DownState::File,
            });
        }
        let head = self.weight("output.weight")?;
        let out_norm = self.vector("output_norm.weight")?;
        let embed = self
            .embed
            .take()
            .ok_or(ModelError::Missing("tensor token_embd.weight".into()))?;
        // Never past the trained context (the rope table is computed up front).
        if dev.kind() == BackendKind::Wgpu && cfg.head_dim > MAX_ATTENTION_HEAD_DIM {
            let detail = format!("head dimension {} is over the wgpu kernel's {MAX_ATTENTION_HEAD_DIM} (--backend cpu runs it)", cfg.head_dim);
            return Err(crate::GpuError::Shape {
                op: "attention",
                detail,
            }
            .into());
        }
        let max_positions = max_positions.min(cfg.context_len.max(1)).min(MAX_CONTEXT);
        let table = rope_table(&cfg, max_positions);
        let rope = dev.upload("rope table", max_positions, cfg.head_dim, &table)?;
        let shape = BlockShape {
            d_model: cfg.d_model,
            d_ff: cfg.d_ff,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            rms_eps: cfg.rms_eps,
            interleaved_rope: cfg.rope_style == RopeStyle::Interleaved,
        };
        Ok(Model {
            cfg,
            shape,
            tokenizer: self.tokenizer,
            embed,
            layers,
            out_norm,
            head,
            rope,
            max_positions,
        })
    }

    fn weight(&mut self, name: &str) -> Result<Weight, ModelError> {
        self.weights
            .remove(name)
            .ok_or_else(|| ModelError::Missing(format!("tensor {name}")))
    }

    fn vector(&mut self, name: &str) -> Result<Tensor, ModelError> {
        self.vectors
            .remove(name)
            .ok_or_else(|| ModelError::Missing(format!("tensor {name}")))
    }
}

/// Every tensor the forward pass reads exists with the shape the config implies, and the config
/// itself is sane, so no kernel or CPU lookup can index past a buffer: a file whose header lies
/// gets an error naming the tensor, before any upload.
pub fn check_tensor_table(cfg: &ModelConfig, tensors: &[TensorInfo]) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::Format(m));
    let (d, ff, hd) = (cfg.d_model as u64, cfg.d_ff as u64, cfg.head_dim as u64);
    let (q, kv) = (cfg.n_heads as u64 * hd, cfg.n_kv_heads as u64 * hd);
    if cfg.n_layers == 0
        || d == 0
        || ff == 0
        || cfg.vocab == 0
        || hd == 0
        || hd % 2 != 0
        || hd > 256
    {
        return bad(format!(
            "implausible config: {} layers, d_model {d}, d_ff {ff}, head_dim {hd}, vocab {}",
            cfg.n_layers, cfg.vocab
        ));
    }
    // Larger than any model this runtime is for: refuse before the loops below grow with it.
    if cfg.n_layers > 1024 || d > 65_536 || ff > 262_144 || cfg.vocab > 4_000_000 {
        return bad(format!(
            "config out of range: {} layers, d_model {d}, d_ff {ff}, vocab {}",
            cfg.n_layers, cfg.vocab
        ));
    }
    let by_name: HashMap<&str, &TensorInfo> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let want = |name: String, dims: &[u64]| -> Result<(), ModelError> {
        let t = by_name
            .get(name.as_str())
            .ok_or_else(|| ModelError::Missing(format!("tensor {name}")))?;
        // GGUF dims: contiguous (columns) first.
        if t.dims != dims {
            return Err(ModelError::Format(format!(
                "tensor {name} has dims {:?}, the config implies {dims:?}",
                t.dims
            )));
        }
        if dims[0] % t.dtype.block_elems() as u64 != 0 {
            return Err(ModelError::Format(format!(
                "tensor {name}: {} columns are not a whole number of {} blocks",
                dims[0],
                t.dtype.name()
            )));
        }
        Ok(())
    };
    let vocab = by_name
        .get("token_embd.weight")
        .map(|t| t.rows_cols().0)
        .unwrap_or(0);
    if vocab < cfg.vocab as u64 {
        return bad(format!(
            "token_embd.weight has {vocab} rows, fewer than the vocabulary's {}",
            cfg.vocab
        ));
    }
    want("token_embd.weight".into(), &[d, vocab])?;
    if by_name.contains_key("output.weight") {
        want("output.weight".into(), &[d, vocab])?;
    }
    want("output_norm.weight".into(), &[d])?;
    for l in 0..cfg.n_layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        want(p("attn_norm.weight"), &[d])?;
        want(p("ffn_norm.weight"), &[d])?;
        want(p("attn_q.weight"), &[d, q])?;
        want(p("attn_k.weight"), &[d, kv])?;
        want(p("attn_v.weight"), &[d, kv])?;
        want(p("attn_output.weight"), &[q, d])?;
        want(p("ffn_gate.weight"), &[d, ff])?;
        want(p("ffn_up.weight"), &[d, ff])?;
        want(p("ffn_down.weight"), &[ff, d])?;
        if cfg.qkv_bias {
            want(p("attn_q.bias"), &[q])?;
            want(p("attn_k.bias"), &[kv])?;
            want(p("attn_v.bias"), &[kv])?;
        }
    }
    Ok(())
}

/// cos/sin of pos * inv_freq in f32 as HF computes them (inv_freq = 1 / base^(2i/d) in f32).
fn rope_table(cfg: &ModelConfig, positions: usize) -> Vec<f32> {
    let half = cfg.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| (1.0 / (cfg.rope_base as f64).powf(2.0 * i as f64 / cfg.head_dim as f64)) as f32)
        .collect();
    let mut t = Vec::with_capacity(positions * half * 2);
    for p in 0..positions {
        for f in &inv {
            let a = p as f32 * f;
            t.push((a as f64).cos() as f32);
            t.push((a as f64).sin() as f32);
        }
    }
    t
}
