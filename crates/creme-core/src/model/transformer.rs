//! The transformer (qwen2 and llama families): weights on the GPU in their GGUF formats, and the
//! one forward pass that generation, tracing and editing all call, with hooks.

use std::collections::HashMap;

use super::config::{ModelConfig, RopeStyle};
use super::gguf::{GgufHeader, TensorInfo};
use super::quant::{dequantize, GgmlType};
use super::tokenizer::Tokenizer;
use crate::error::{GpuError, ModelError};
use crate::gpu::layers::{AttentionParams, MAX_ATTENTION_CONTEXT};
use crate::gpu::{Gpu, GpuWeight};
use crate::hooks::{Captured, Hooks, Site};

struct Layer {
    attn_norm: wgpu::Buffer,
    q: GpuWeight,
    k: GpuWeight,
    v: GpuWeight,
    o: GpuWeight,
    q_bias: Option<wgpu::Buffer>,
    k_bias: Option<wgpu::Buffer>,
    v_bias: Option<wgpu::Buffer>,
    ffn_norm: wgpu::Buffer,
    gate: GpuWeight,
    up: GpuWeight,
    down: GpuWeight,
    /// The file's W_down while an edited one is applied (so the edit can be reverted).
    down_original: Option<GpuWeight>,
}

/// Token embedding rows, kept in their GGUF format on the CPU: a lookup dequantizes a few rows.
struct Embedding {
    dtype: GgmlType,
    cols: usize,
    rows: usize,
    bytes: Vec<u8>,
}

impl Embedding {
    fn row(&self, id: u32) -> Result<Vec<f32>, ModelError> {
        if id as usize >= self.rows {
            return Err(ModelError::Format(format!("token id {id} is outside the vocabulary of {}", self.rows)));
        }
        let rb = self.dtype.row_bytes(self.cols);
        dequantize(self.dtype, &self.bytes[id as usize * rb..(id as usize + 1) * rb], self.cols)
    }
}

/// A loaded model: config, tokenizer, and weights on one GPU.
pub struct Model {
    pub cfg: ModelConfig,
    pub tokenizer: Tokenizer,
    embed: Embedding,
    layers: Vec<Layer>,
    out_norm: wgpu::Buffer,
    head: GpuWeight,
    /// cos/sin for every position < max_positions: [pos][head_dim/2][2].
    rope_table: wgpu::Buffer,
    pub max_positions: usize,
}

/// Builds a [`Model`] from a GGUF header and then the tensors' bytes, one tensor at a time (so a
/// browser can stream the file and never hold all of it).
pub struct ModelLoader {
    /// Expected tensors by GGUF name.
    table: HashMap<String, TensorInfo>,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    weights: HashMap<String, GpuWeight>,
    vectors: HashMap<String, wgpu::Buffer>,
    embed: Option<Embedding>,
    tied_head_bytes: bool,
}

fn is_vector(t: &TensorInfo) -> bool {
    t.dims.len() == 1
}

impl ModelLoader {
    /// A loader for a GGUF file whose header has been read.
    pub fn new(header: &GgufHeader) -> Result<ModelLoader, ModelError> {
        let cfg = ModelConfig::from_gguf(header)?;
        let tokenizer = Tokenizer::from_gguf(header)?;
        Self::from_parts(cfg, tokenizer, header.tensors.clone())
    }

    /// A loader for any source: config, tokenizer and the tensor table under GGUF names. The
    /// table is checked against the config first (see [`check_tensor_table`]).
    pub fn from_parts(cfg: ModelConfig, tokenizer: Tokenizer, tensors: Vec<TensorInfo>) -> Result<ModelLoader, ModelError> {
        check_tensor_table(&cfg, &tensors)?;
        if tokenizer.vocab_size() > cfg.vocab {
            return Err(ModelError::Format(format!("the tokenizer has {} tokens but the embedding only {} rows", tokenizer.vocab_size(), cfg.vocab)));
        }
        let tied = !tensors.iter().any(|t| t.name == "output.weight");
        let table = tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
        Ok(ModelLoader { table, cfg, tokenizer, weights: HashMap::new(), vectors: HashMap::new(), embed: None, tied_head_bytes: tied })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Take one tensor's bytes (GGUF name and encoding).
    pub fn add_tensor(&mut self, gpu: &Gpu, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let info = self.table.get(name).ok_or_else(|| ModelError::Format(format!("tensor '{name}' is not in the model's tensor table")))?.clone();
        if (bytes.len() as u64) < info.bytes() {
            return Err(ModelError::Truncated { what: format!("tensor '{name}'"), need: info.bytes(), have: bytes.len() as u64 });
        }
        let bytes = &bytes[..info.bytes() as usize];
        if name == "token_embd.weight" {
            let (rows, cols) = info.rows_cols();
            self.embed = Some(Embedding { dtype: info.dtype, cols: cols as usize, rows: rows as usize, bytes: bytes.to_vec() });
            if self.tied_head_bytes {
                let w = gpu.upload_weight("output.weight (tied)", info.dtype, rows as usize, cols as usize, bytes)?;
                self.weights.insert("output.weight".into(), w);
            }
        } else if is_vector(&info) {
            let v = dequantize(info.dtype, bytes, info.elems() as usize)?;
            self.vectors.insert(name.to_string(), gpu.upload(name, &v));
        } else {
            let (rows, cols) = info.rows_cols();
            let w = gpu.upload_weight(name, info.dtype, rows as usize, cols as usize, bytes)?;
            self.weights.insert(name.to_string(), w);
        }
        Ok(())
    }

    /// Assemble the model once every tensor has arrived.
    pub fn finish(mut self, gpu: &Gpu, max_positions: usize) -> Result<Model, ModelError> {
        let cfg = self.cfg.clone();
        let mut w = |name: String| self.weights.remove(&name).ok_or(ModelError::Missing(format!("tensor {name}")));
        let mut layers_w = Vec::new();
        for l in 0..cfg.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            layers_w.push((w(p("attn_q.weight"))?, w(p("attn_k.weight"))?, w(p("attn_v.weight"))?, w(p("attn_output.weight"))?, w(p("ffn_gate.weight"))?, w(p("ffn_up.weight"))?, w(p("ffn_down.weight"))?));
        }
        let head = w("output.weight".into())?;
        let mut v = |name: String| self.vectors.remove(&name).ok_or(ModelError::Missing(format!("tensor {name}")));
        let mut layers = Vec::new();
        for (l, (q, k, vw, o, gate, up, down)) in layers_w.into_iter().enumerate() {
            let p = |s: &str| format!("blk.{l}.{s}");
            let (q_bias, k_bias, v_bias) = if cfg.qkv_bias {
                (Some(v(p("attn_q.bias"))?), Some(v(p("attn_k.bias"))?), Some(v(p("attn_v.bias"))?))
            } else {
                (None, None, None)
            };
            layers.push(Layer { attn_norm: v(p("attn_norm.weight"))?, ffn_norm: v(p("ffn_norm.weight"))?, q, k, v: vw, o, q_bias, k_bias, v_bias, gate, up, down, down_original: None });
        }
        let out_norm = v("output_norm.weight".into())?;
        let embed = self.embed.take().ok_or(ModelError::Missing("tensor token_embd.weight".into()))?;
        let max_positions = max_positions.min(MAX_ATTENTION_CONTEXT);
        let rope_table = gpu.upload("rope table", &rope_table(&cfg, max_positions));
        Ok(Model { cfg, tokenizer: self.tokenizer, embed, layers, out_norm, head, rope_table, max_positions })
    }
}

/// Every tensor the forward pass reads exists with the shape the config implies, and the config
/// itself is sane, so no kernel or CPU lookup can index past a buffer: a file whose header lies
/// gets an error naming the tensor, before any upload.
pub fn check_tensor_table(cfg: &ModelConfig, tensors: &[TensorInfo]) -> Result<(), ModelError> {
    let bad = |m: String| Err(ModelError::Format(m));
    let (d, ff, hd) = (cfg.d_model as u64, cfg.d_ff as u64, cfg.head_dim as u64);
    let (q, kv) = (cfg.n_heads as u64 * hd, cfg.n_kv_heads as u64 * hd);
    if cfg.n_layers == 0 || d == 0 || ff == 0 || cfg.vocab == 0 || hd == 0 || hd % 2 != 0 || hd > 256 {
        return bad(format!("implausible config: {} layers, d_model {d}, d_ff {ff}, head_dim {hd}, vocab {}", cfg.n_layers, cfg.vocab));
    }
    // Larger than any model this runtime is for: refuse before the loops below grow with it.
    if cfg.n_layers > 1024 || d > 65_536 || ff > 262_144 || cfg.vocab > 4_000_000 {
        return bad(format!("config out of range: {} layers, d_model {d}, d_ff {ff}, vocab {}", cfg.n_layers, cfg.vocab));
    }
    let by_name: HashMap<&str, &TensorInfo> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let want = |name: String, dims: &[u64]| -> Result<(), ModelError> {
        let t = by_name.get(name.as_str()).ok_or_else(|| ModelError::Missing(format!("tensor {name}")))?;
        // GGUF dims: contiguous (columns) first.
        if t.dims != dims {
            return Err(ModelError::Format(format!("tensor {name} has dims {:?}, the config implies {dims:?}", t.dims)));
        }
        if dims[0] % t.dtype.block_elems() as u64 != 0 {
            return Err(ModelError::Format(format!("tensor {name}: {} columns are not a whole number of {} blocks", dims[0], t.dtype.name())));
        }
        Ok(())
    };
    let vocab = by_name.get("token_embd.weight").map(|t| t.rows_cols().0).unwrap_or(0);
    if vocab < cfg.vocab as u64 {
        return bad(format!("token_embd.weight has {vocab} rows, fewer than the vocabulary's {}", cfg.vocab));
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
    let inv: Vec<f32> = (0..half).map(|i| (1.0 / (cfg.rope_base as f64).powf(2.0 * i as f64 / cfg.head_dim as f64)) as f32).collect();
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

/// Keys and values of every layer for a batch of sequences, left-padded to a common length.
pub struct KvCache {
    k: Vec<wgpu::Buffer>,
    v: Vec<wgpu::Buffer>,
    pub batch: usize,
    pub capacity: usize,
    /// Left-pad length of each sequence.
    pub pad: Vec<u32>,
    pad_buf: wgpu::Buffer,
    /// Positions filled so far (same for every sequence).
    pub len: usize,
}

impl KvCache {
    /// Copy keys/values of `layers` at cache positions `positions` from `src`'s sequence
    /// `src_slot` into this cache's sequence `dst_slot` (both caches of the same model).
    pub fn copy_from(&self, enc: &mut wgpu::CommandEncoder, src: &KvCache, src_slot: usize, dst_slot: usize, layers: std::ops::Range<usize>, positions: std::ops::Range<usize>) {
        let kvw = (self.k[0].size() as usize / 4) / (self.batch * self.capacity);
        let n = (positions.len() * kvw * 4) as u64;
        if n == 0 {
            return;
        }
        for l in layers {
            let so = ((src_slot * src.capacity + positions.start) * kvw * 4) as u64;
            let dof = ((dst_slot * self.capacity + positions.start) * kvw * 4) as u64;
            enc.copy_buffer_to_buffer(&src.k[l], so, &self.k[l], dof, n);
            enc.copy_buffer_to_buffer(&src.v[l], so, &self.v[l], dof, n);
        }
    }
}

/// Which logits a forward call computes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    /// The last row of each sequence: [batch, vocab].
    Last,
    /// Every row: [batch * T, vocab].
    All,
    /// The listed rows (b * T + t), in that order: [rows.len(), vocab].
    Rows(Vec<usize>),
}

/// What enters the forward pass.
pub enum Input<'a> {
    /// Token ids, [batch][T].
    Tokens(&'a [Vec<u32>]),
    /// Residual streams [batch * T, d_model] on the GPU; sequence b enters at layer start[b].
    Resume { x: &'a wgpu::Buffer, start: &'a [usize], t: usize },
}

/// What a forward call returns: logits on the GPU (if asked) and captured activations.
pub struct ForwardOut {
    pub logits: Option<wgpu::Buffer>,
    pub logit_rows: usize,
    pub captured: Captured,
}

impl Model {
    /// Load from a whole GGUF file in memory (native callers; the browser streams through
    /// [`ModelLoader`]). Checks the file holds every tensor before uploading anything.
    pub fn from_gguf_bytes(gpu: &Gpu, file: &[u8], max_positions: usize) -> Result<Model, ModelError> {
        let header = GgufHeader::parse(file)?;
        header.check_len(file.len() as u64)?;
        let mut loader = ModelLoader::new(&header)?;
        for t in &header.tensors {
            loader.add_tensor(gpu, &t.name, header.tensor_bytes(file, t)?)?;
        }
        loader.finish(gpu, max_positions)
    }

    pub fn new_cache(&self, gpu: &Gpu, pad: Vec<u32>, capacity: usize) -> Result<KvCache, ModelError> {
        if capacity > self.max_positions {
            return Err(ModelError::Format(format!("context of {capacity} tokens is over this model's limit of {} here", self.max_positions)));
        }
        let kvw = self.cfg.n_kv_heads * self.cfg.head_dim;
        let bytes = (pad.len() * capacity * kvw * 4) as u64;
        if bytes > gpu.max_binding_bytes() {
            return Err(GpuError::TooLarge { tensor: "kv cache".into(), bytes, limit: gpu.max_binding_bytes() }.into());
        }
        let n = self.cfg.n_layers;
        Ok(KvCache {
            k: (0..n).map(|_| gpu.storage("k cache", bytes)).collect(),
            v: (0..n).map(|_| gpu.storage("v cache", bytes)).collect(),
            batch: pad.len(),
            capacity,
            pad_buf: gpu.upload("pad", &pad),
            pad,
            len: 0,
        })
    }

    /// W_down of layer `l` as f32 [d_model, d_ff] (dequantized from the GPU copy of the file's
    /// blocks, or the applied edit).
    pub async fn ffn_down_f32(&self, gpu: &Gpu, l: usize) -> Result<Vec<f32>, ModelError> {
        let w = &self.layers.get(l).ok_or_else(|| ModelError::Format(format!("layer {l} of {}", self.cfg.n_layers)))?.down;
        let mut out = Vec::with_capacity(w.rows * w.cols);
        for c in &w.chunks {
            let bytes: Vec<u8> = gpu.read(&c.buffer, c.rows * w.row_bytes()).await?;
            out.extend(dequantize(w.dtype, &bytes, c.rows * w.cols)?);
        }
        Ok(out)
    }

    /// Replace W_down of layer `l` by an f32 matrix [d_model, d_ff] (an edit). The file's weight is
    /// kept so that [`Model::revert_ffn_down`] restores it.
    pub fn set_ffn_down(&mut self, gpu: &Gpu, l: usize, w: &[f32]) -> Result<(), ModelError> {
        let (d, f) = (self.cfg.d_model, self.cfg.d_ff);
        if w.len() != d * f {
            return Err(ModelError::Format(format!("edited W_down has {} values, expected {d} x {f}", w.len())));
        }
        let layer = self.layers.get_mut(l).ok_or_else(|| ModelError::Format(format!("layer {l} of {}", self.cfg.n_layers)))?;
        let new = gpu.upload_weight(&format!("blk.{l}.ffn_down.weight (edited)"), GgmlType::F32, d, f, bytemuck::cast_slice(w))?;
        let old = std::mem::replace(&mut layer.down, new);
        if layer.down_original.is_none() {
            layer.down_original = Some(old);
        }
        Ok(())
    }

    /// Undo [`Model::set_ffn_down`] on layer `l` (no-op when it is not edited).
    pub fn revert_ffn_down(&mut self, l: usize) {
        if let Some(layer) = self.layers.get_mut(l) {
            if let Some(orig) = layer.down_original.take() {
                layer.down = orig;
            }
        }
    }

    /// Layers whose W_down is currently edited.
    pub fn edited_layers(&self) -> Vec<usize> {
        self.layers.iter().enumerate().filter(|(_, l)| l.down_original.is_some()).map(|(i, _)| i).collect()
    }

    /// Width of the activation at a hook site.
    pub fn site_width(&self, site: Site) -> usize {
        match site {
            Site::MlpAct(_) => self.cfg.d_ff,
            Site::ResidMid(_) | Site::ResidOut(_) => self.cfg.d_model,
        }
    }

    /// Run `tokens` ([batch][T], the same T for every sequence) through the model, appending to the
    /// cache. Hooks capture or overwrite activations; everything is recorded into one submission.
    pub fn forward(&self, gpu: &Gpu, cache: &mut KvCache, tokens: &[Vec<u32>], hooks: &Hooks, logits: Logits) -> Result<ForwardOut, ModelError> {
        self.forward_ex(gpu, cache, Input::Tokens(tokens), hooks, logits)
    }

    /// The forward pass. With [`Input::Resume`], sequence b enters at layer `start[b]` with the
    /// given residual stream (the output of layer start[b] - 1); layers below are not computed
    /// for it (their cache rows are left as they are). Starts must be ascending, so at each layer
    /// the active sequences are a prefix of the batch and kernels run on that prefix only.
    pub fn forward_ex(&self, gpu: &Gpu, cache: &mut KvCache, input: Input<'_>, hooks: &Hooks, logits: Logits) -> Result<ForwardOut, ModelError> {
        let cfg = &self.cfg;
        let (b, t) = match &input {
            Input::Tokens(tokens) => {
                let t = tokens.first().map(|r| r.len()).unwrap_or(0);
                if tokens.iter().any(|r| r.len() != t) {
                    return Err(ModelError::Format("forward: sequences must have equal lengths (left-pad them)".into()));
                }
                (tokens.len(), t)
            }
            Input::Resume { t, start, x } => {
                if start.windows(2).any(|w| w[0] > w[1]) || start.iter().any(|&s| s > cfg.n_layers) {
                    return Err(ModelError::Format(format!("forward: resume layers {start:?} must be ascending and <= {}", cfg.n_layers)));
                }
                if x.size() < (start.len() * t * cfg.d_model * 4) as u64 {
                    return Err(ModelError::Format("forward: resume state is smaller than batch x T x d_model".into()));
                }
                (start.len(), *t)
            }
        };
        if b != cache.batch || t == 0 {
            return Err(ModelError::Format(format!("forward: {b} sequences of {t} tokens (cache holds {})", cache.batch)));
        }
        if cache.len + t > cache.capacity {
            return Err(ModelError::Format(format!("forward: {} + {t} tokens overflow the cache of {}", cache.len, cache.capacity)));
        }
        let rows = b * t;
        let (d, f, hd) = (cfg.d_model, cfg.d_ff, cfg.head_dim);
        let (qw, kvw) = (cfg.n_heads * hd, cfg.n_kv_heads * hd);

        // Positions: pad rows get 1, as HF's cumsum(mask) - 1 with masked_fill(1) does.
        let mut pos = Vec::with_capacity(rows);
        for bi in 0..b {
            for ti in 0..t {
                let (j, p) = (cache.len + ti, cache.pad[bi] as usize);
                pos.push(if j >= p { (j - p) as u32 } else { 1 });
            }
        }
        let buf = |label: &str, n: usize| gpu.storage(label, (n * 4) as u64);
        let x2 = buf("x2", rows * d);
        let (x, start): (wgpu::Buffer, Vec<usize>) = match input {
            // Embedding lookup on the CPU: a few rows of the quantized table.
            Input::Tokens(tokens) => {
                let mut x0 = Vec::with_capacity(rows * d);
                for &id in tokens.iter().flatten() {
                    x0.extend(self.embed.row(id)?);
                }
                (gpu.upload("x", &x0), vec![0; b])
            }
            Input::Resume { x, start, .. } => {
                let own = buf("x", rows * d);
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                enc.copy_buffer_to_buffer(x, 0, &own, 0, (rows * d * 4) as u64);
                gpu.queue.submit([enc.finish()]);
                (own, start.to_vec())
            }
        };
        let pos_buf = gpu.upload("pos", &pos);
        let (xn, q, k, v, att, tmp) = (buf("xn", rows * d), buf("q", rows * qw), buf("k", rows * kvw), buf("v", rows * kvw), buf("att", rows * qw), buf("tmp", rows * d));
        let (g, u, act) = (buf("gate", rows * f), buf("up", rows * f), buf("act", rows * f));

        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        let mut captured = Captured::default();
        let (d32, f32_) = (d as u32, f as u32);
        let interleaved = cfg.rope_style == RopeStyle::Interleaved;

        // `cur` holds the residual stream; each block writes the sum into the other buffer. Both
        // start equal so that rows not yet active are carried through unchanged.
        enc.copy_buffer_to_buffer(&x, 0, &x2, 0, (rows * d * 4) as u64);
        let (mut cur, mut other) = (&x, &x2);
        for (l, layer) in self.layers.iter().enumerate() {
            let active = start.iter().filter(|&&s| s <= l).count();
            if active == 0 {
                continue;
            }
            let ar = active * t;
            let r32 = ar as u32;
            gpu.encode_rmsnorm(&mut enc, cur, &layer.attn_norm, &xn, r32, d32, cfg.rms_eps);
            gpu.encode_matmul_quant(&mut enc, &xn, &layer.q, layer.q_bias.as_ref(), &q, r32, qw as u32, 0)?;
            gpu.encode_matmul_quant(&mut enc, &xn, &layer.k, layer.k_bias.as_ref(), &k, r32, kvw as u32, 0)?;
            gpu.encode_matmul_quant(&mut enc, &xn, &layer.v, layer.v_bias.as_ref(), &v, r32, kvw as u32, 0)?;
            gpu.encode_rope(&mut enc, &q, &pos_buf, &self.rope_table, r32, cfg.n_heads as u32, hd as u32, interleaved);
            gpu.encode_rope(&mut enc, &k, &pos_buf, &self.rope_table, r32, cfg.n_kv_heads as u32, hd as u32, interleaved);
            for bi in 0..active {
                let src = (bi * t * kvw * 4) as u64;
                let dst = ((bi * cache.capacity + cache.len) * kvw * 4) as u64;
                let n = (t * kvw * 4) as u64;
                enc.copy_buffer_to_buffer(&k, src, &cache.k[l], dst, n);
                enc.copy_buffer_to_buffer(&v, src, &cache.v[l], dst, n);
            }
            gpu.encode_attention(
                &mut enc,
                &q,
                &cache.k[l],
                &cache.v[l],
                &cache.pad_buf,
                &att,
                AttentionParams {
                    batch: active as u32,
                    t: t as u32,
                    heads: cfg.n_heads as u32,
                    kv_heads: cfg.n_kv_heads as u32,
                    head_dim: hd as u32,
                    ctx: cache.capacity as u32,
                    p0: cache.len as u32,
                    scale: 1.0 / (hd as f32).sqrt(),
                },
            );
            gpu.encode_matmul_quant(&mut enc, &att, &layer.o, None, &tmp, r32, d32, 0)?;
            gpu.encode_add(&mut enc, cur, &tmp, other, r32 * d32);
            std::mem::swap(&mut cur, &mut other);
            self.hook(gpu, &mut enc, hooks, Site::ResidMid(l), cur, ar, &mut captured);

            gpu.encode_rmsnorm(&mut enc, cur, &layer.ffn_norm, &xn, r32, d32, cfg.rms_eps);
            gpu.encode_matmul_quant(&mut enc, &xn, &layer.gate, None, &g, r32, f32_, 0)?;
            gpu.encode_matmul_quant(&mut enc, &xn, &layer.up, None, &u, r32, f32_, 0)?;
            gpu.encode_silu_mul(&mut enc, &g, &u, &act, r32 * f32_);
            self.hook(gpu, &mut enc, hooks, Site::MlpAct(l), &act, ar, &mut captured);
            gpu.encode_matmul_quant(&mut enc, &act, &layer.down, None, &tmp, r32, d32, 0)?;
            gpu.encode_add(&mut enc, cur, &tmp, other, r32 * d32);
            std::mem::swap(&mut cur, &mut other);
            self.hook(gpu, &mut enc, hooks, Site::ResidOut(l), cur, ar, &mut captured);
        }

        let rows_wanted: Vec<usize> = match &logits {
            Logits::None => Vec::new(),
            Logits::Last => (0..b).map(|bi| (bi + 1) * t - 1).collect(),
            Logits::All => (0..rows).collect(),
            Logits::Rows(r) => r.clone(),
        };
        if let Some(&bad) = rows_wanted.iter().find(|&&r| r >= rows) {
            return Err(ModelError::Format(format!("forward: logits row {bad} of {rows}")));
        }
        if rows_wanted.is_empty() {
            gpu.queue.submit([enc.finish()]);
            if let Some(e) = pop_scope_native(scope) {
                return Err(GpuError::Validation(e).into());
            }
            cache.len += t;
            return Ok(ForwardOut { logits: None, logit_rows: 0, captured });
        }
        let n = rows_wanted.len();
        if matches!(logits, Logits::All) {
            return self.finish_logits(gpu, enc, scope, cache, t, cur, n, captured);
        }
        let gathered = buf("logit rows", n * d);
        for (i, &r) in rows_wanted.iter().enumerate() {
            enc.copy_buffer_to_buffer(cur, (r * d * 4) as u64, &gathered, (i * d * 4) as u64, (d * 4) as u64);
        }
        self.finish_logits(gpu, enc, scope, cache, t, &gathered, n, captured)
    }

    /// Final norm and output head over `n` rows of `src`, then submit.
    #[allow(clippy::too_many_arguments)]
    fn finish_logits(
        &self,
        gpu: &Gpu,
        mut enc: wgpu::CommandEncoder,
        scope: wgpu::ErrorScopeGuard,
        cache: &mut KvCache,
        t: usize,
        src: &wgpu::Buffer,
        n: usize,
        captured: Captured,
    ) -> Result<ForwardOut, ModelError> {
        let d = self.cfg.d_model;
        let normed = gpu.storage("final norm", (n * d * 4) as u64);
        gpu.encode_rmsnorm(&mut enc, src, &self.out_norm, &normed, n as u32, d as u32, self.cfg.rms_eps);
        let lg = gpu.storage("logits", (n * self.cfg.vocab * 4) as u64);
        gpu.encode_matmul_quant(&mut enc, &normed, &self.head, None, &lg, n as u32, self.cfg.vocab as u32, 0)?;
        gpu.queue.submit([enc.finish()]);
        if let Some(e) = pop_scope_native(scope) {
            return Err(GpuError::Validation(e).into());
        }
        cache.len += t;
        Ok(ForwardOut { logits: Some(lg), logit_rows: n, captured })
    }

    /// Apply the patches for `site`, then capture it if asked.
    #[allow(clippy::too_many_arguments)]
    fn hook(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, hooks: &Hooks, site: Site, buf: &wgpu::Buffer, rows: usize, captured: &mut Captured) {
        if !hooks.wants(site) {
            return;
        }
        let width = self.site_width(site);
        let rb = (width * 4) as u64;
        for p in hooks.patches.iter().filter(|p| p.site == site) {
            for (&s, &dr) in p.src_rows.iter().zip(&p.dst_rows) {
                if (dr as usize) < rows {
                    enc.copy_buffer_to_buffer(&p.values, s as u64 * rb, buf, dr as u64 * rb, rb);
                }
            }
        }
        if hooks.capture.contains(&site) {
            let c = gpu.storage("captured", rows as u64 * rb);
            enc.copy_buffer_to_buffer(buf, 0, &c, 0, rows as u64 * rb);
            captured.items.push((site, c, rows, width));
        }
    }
}

/// Validation errors are reported asynchronously; on native the scope resolves at once after a
/// submit, so block on it there. In the browser an invalid op surfaces at readback instead.
fn pop_scope_native(scope: wgpu::ErrorScopeGuard) -> Option<String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        pollster::block_on(scope.pop()).map(|e| e.to_string())
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(scope.pop());
        None
    }
}
