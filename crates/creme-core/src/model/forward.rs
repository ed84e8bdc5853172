//! The transformer (qwen2 and llama families) and the one forward pass that generation, tracing
//! and editing all call, with hooks. It is written once over the backend ops; it never knows
//! which backend runs them.

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::tokenizer::Tokenizer;
// The table is the backend's type now; loader.rs still names it from here.
use crate::backend::Embedding;
use crate::backend::{AttnStep, Backend, BlockShape, DType, Device, LayerWeights, Tensor, Weight};
use crate::error::ModelError;
use crate::hooks::{Captured, Hooks, Site};

/// What a layer's W_down holds: the model file's weight, or an edit's f32 weights (by their
/// SHA-256). A patch names the state it was made on, so that patches stack only in the order
/// they were made (a patch holds the whole W_down: applied onto another edit, it would silently
/// drop that edit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownState {
    File,
    Edited { sha256: String },
}

impl std::fmt::Display for DownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownState::File => write!(f, "file"),
            DownState::Edited { sha256 } => write!(f, "f32:{sha256}"),
        }
    }
}

impl DownState {
    /// The state after applying `w` (the f32 weights of an edit).
    pub fn of_edit(w: &[f32]) -> DownState {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(bytemuck::cast_slice::<f32, u8>(w));
        DownState::Edited {
            sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

pub(crate) struct Layer {
    pub(crate) w: LayerWeights,
    /// The W_down each applied edit replaced, oldest first, with what it was (so that an edit
    /// reverts to the weights before it, and the file's come back when all are reverted).
    pub(crate) down_replaced: Vec<(Weight, DownState)>,
    /// What W_down holds now: the file's weight or an applied edit.
    pub(crate) down_state: DownState,
}

/// A loaded model: config, tokenizer, and weights on one backend.
pub struct Model {
    pub cfg: ModelConfig,
    pub(crate) shape: BlockShape,
    pub tokenizer: Tokenizer,
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<Layer>,
    pub(crate) out_norm: Tensor,
    pub(crate) head: Weight,
    /// cos/sin for every position < max_positions: [pos][head_dim/2][2].
    pub(crate) rope: Tensor,
    pub max_positions: usize,
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
    /// One token id per sequence (T = 1) in a U32 tensor [batch, 1] on the device, as
    /// [`crate::backend::Backend::pick`] leaves them: decoding feeds a step's picks back unread.
    /// Ids are not range-checked on the device (a pick is always below the vocabulary): on the
    /// GPU an id outside the table leaves its row zero, the CPU backend reports it.
    Ids(&'a Tensor),
    /// Residual streams [batch * T, d_model]; sequence b enters at layer start[b].
    Resume {
        x: &'a Tensor,
        start: &'a [usize],
        t: usize,
    },
}

/// What a forward call returns: logits (if asked) and captured activations.
pub struct ForwardOut {
    pub logits: Option<Tensor>,
    pub logit_rows: usize,
    pub captured: Captured,
}

impl Model {
    /// Load from a whole GGUF file in memory (native callers; the browser streams through
    /// [`super::ModelLoader`]). Checks the file holds every tensor before uploading anything.
    pub fn from_gguf_bytes(
        dev: &Device,
        file: &[u8],
        max_positions: usize,
    ) -> Result<Model, ModelError> {
        let header = super::GgufHeader::parse(file)?;
        header.check_len(file.len() as u64)?;
        let mut loader = super::ModelLoader::new(&header)?;
        for t in &header.tensors {
            loader.add_tensor(dev, &t.name, header.tensor_bytes(file, t)?)?;
        }
        loader.finish(dev, max_positions)
    }

    /// An empty KV cache for `pad.len()` sequences (left-padded by `pad`) of up to `capacity`
    /// positions.
    pub fn new_cache(
        &self,
        dev: &Device,
        pad: Vec<u32>,
        capacity: usize,
    ) -> Result<KvCache, ModelError> {
        KvCache::new(dev, &self.cfg, self.max_positions, pad, capacity)
    }

    /// Width of the activation at a hook site.
    pub fn site_width(&self, site: Site) -> usize {
        match site {
            Site::MlpAct(_) => self.cfg.d_ff,
            Site::ResidMid(_) | Site::ResidOut(_) => self.cfg.d_model,
        }
    }

    /// Run `tokens` ([batch][T], the same T for every sequence) through the model, appending to the
    /// cache. Hooks capture or overwrite activations.
    pub fn forward(
        &self,
        dev: &Device,
        cache: &mut KvCache,
        tokens: &[Vec<u32>],
        hooks: &Hooks,
        logits: Logits,
    ) -> Result<ForwardOut, ModelError> {
        self.forward_ex(dev, cache, Input::Tokens(tokens), hooks, logits)
    }

    /// The forward pass. With [`Input::Resume`], sequence b enters at layer `start[b]` with the
    /// given residual stream (the output of layer start[b] - 1); layers below are not computed
    /// for it (their cache rows are left as they are). Starts must be ascending, so at each layer
    /// the active sequences are a prefix of the batch and the ops run on that prefix only.
    pub fn forward_ex(
        &self,
        dev: &Device,
        cache: &mut KvCache,
        input: Input<'_>,
        hooks: &Hooks,
        logits: Logits,
    ) -> Result<ForwardOut, ModelError> {
        let (b, t) = self.check_input(&input, cache)?;
        let rows = b * t;
        let wanted = logit_rows(&logits, b, t);
        if let Some(&bad) = wanted.iter().find(|&&r| r >= rows) {
            return Err(ModelError::Format(format!(
                "forward: logits row {bad} of {rows}"
            )));
        }
        let pos = dev.upload_u32("pos", &positions(cache, b, t))?;
        let (mut x, start) = self.input_states(dev, input, rows)?;
        let mut act = dev.zeros("act", rows, self.cfg.d_ff)?;
        let mut captured = Captured::default();
        for (l, layer) in self.layers.iter().enumerate() {
            let active = start.iter().filter(|&&s| s <= l).count();
            if active == 0 {
                continue;
            }
            let ar = active * t;
            let step = AttnStep {
                active,
                t,
                cache_len: cache.len,
                capacity: cache.capacity,
                pos: &pos,
                pad: &cache.pad_tensor,
                rope: &self.rope,
            };
            dev.attention_block(&layer.w, &self.shape, &mut x, &mut cache.layers[l], &step)?;
            self.hook(dev, hooks, Site::ResidMid(l), &mut x, ar, &mut captured)?;
            dev.mlp_act(&layer.w, &self.shape, &x, &mut act, ar)?;
            self.hook(dev, hooks, Site::MlpAct(l), &mut act, ar, &mut captured)?;
            dev.mlp_down_add(&layer.w, &act, &mut x, ar)?;
            self.hook(dev, hooks, Site::ResidOut(l), &mut x, ar, &mut captured)?;
        }
        let out = if wanted.is_empty() {
            None
        } else {
            Some(dev.head(&self.out_norm, &self.head, self.cfg.rms_eps, &x, &wanted)?)
        };
        cache.len += t;
        Ok(ForwardOut {
            logits: out,
            logit_rows: wanted.len(),
            captured,
        })
    }

    /// Batch size and chunk length of a forward call, checked against the cache.
    fn check_input(
        &self,
        input: &Input<'_>,
        cache: &KvCache,
    ) -> Result<(usize, usize), ModelError> {
        let (b, t) = match input {
            Input::Tokens(tokens) => {
                let t = tokens.first().map(|r| r.len()).unwrap_or(0);
                if tokens.iter().any(|r| r.len() != t) {
                    return Err(ModelError::Format(
                        "forward: sequences must have equal lengths (left-pad them)".into(),
                    ));
                }
                (tokens.len(), t)
            }
            Input::Ids(ids) => {
                ids.check("forward: token ids", ids.rows, 1)?;
                if ids.dtype != DType::U32 {
                    return Err(ModelError::Format(
                        "forward: token ids must be a U32 tensor".into(),
                    ));
                }
                (ids.rows, 1)
            }
            Input::Resume { t, start, x } => {
                let n = self.cfg.n_layers;
                if start.windows(2).any(|w| w[0] > w[1]) || start.iter().any(|&s| s > n) {
                    return Err(ModelError::Format(format!(
                        "forward: resume layers {start:?} must be ascending and <= {n}"
                    )));
                }
                x.check("forward: resume state", start.len() * t, self.cfg.d_model)?;
                (start.len(), *t)
            }
        };
        if b != cache.batch || t == 0 {
            return Err(ModelError::Format(format!(
                "forward: {b} sequences of {t} tokens (cache holds {})",
                cache.batch
            )));
        }
        if cache.len + t > cache.capacity {
            return Err(ModelError::Format(format!(
                "forward: {} + {t} tokens overflow the cache of {}",
                cache.len, cache.capacity
            )));
        }
        Ok((b, t))
    }

    /// The residual stream entering layer 0 (embedded tokens) or the given resume states (copied,
    /// the forward updates its stream in place), and the layer each sequence starts at.
    fn input_states(
        &self,
        dev: &Device,
        input: Input<'_>,
        rows: usize,
    ) -> Result<(Tensor, Vec<usize>), ModelError> {
        let d = self.cfg.d_model;
        match input {
            Input::Tokens(tokens) => {
                let ids: Vec<u32> = tokens.iter().flatten().copied().collect();
                if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.embed.rows) {
                    return Err(ModelError::Format(format!(
                        "token id {bad} is outside the vocabulary of {}",
                        self.embed.rows
                    )));
                }
                let ids = dev.upload_ids("token ids", &ids)?;
                let mut x = dev.zeros("x", rows, d)?;
                dev.embed(&self.embed, &ids, &mut x)?;
                Ok((x, vec![0; tokens.len()]))
            }
            Input::Ids(ids) => {
                let mut x = dev.zeros("x", rows, d)?;
                dev.embed(&self.embed, ids, &mut x)?;
                Ok((x, vec![0; rows]))
            }
            Input::Resume { x, start, .. } => {
                let mut own = dev.zeros("x", rows, d)?;
                dev.copy_rows(x, 0, &mut own, 0, rows)?;
                Ok((own, start.to_vec()))
            }
        }
    }

    /// Apply the patches for `site`, then capture it if asked.
    fn hook(
        &self,
        dev: &Device,
        hooks: &Hooks,
        site: Site,
        t: &mut Tensor,
        rows: usize,
        captured: &mut Captured,
    ) -> Result<(), ModelError> {
        if !hooks.wants(site) {
            return Ok(());
        }
        for p in hooks.patches.iter().filter(|p| p.site == site) {
            for (&s, &dr) in p.src_rows.iter().zip(&p.dst_rows) {
                if (dr as usize) < rows {
                    dev.copy_rows(&p.values, s as usize, t, dr as usize, 1)?;
                }
            }
        }
        if hooks.capture.contains(&site) {
            let mut c = dev.zeros("captured", rows, t.width)?;
            dev.copy_rows(t, 0, &mut c, 0, rows)?;
            captured.items.push((site, c, rows, t.width));
        }
        Ok(())
    }
}

/// Rope position of each row. Pad rows get 1, as HF's cumsum(mask) - 1 with masked_fill(1) does.
fn positions(cache: &KvCache, b: usize, t: usize) -> Vec<u32> {
    let mut pos = Vec::with_capacity(b * t);
    for bi in 0..b {
        for ti in 0..t {
            let (j, p) = (cache.len + ti, cache.pad[bi] as usize);
            pos.push(if j >= p { (j - p) as u32 } else { 1 });
        }
    }
    pos
}

fn logit_rows(logits: &Logits, b: usize, t: usize) -> Vec<usize> {
    match logits {
        Logits::None => Vec::new(),
        Logits::Last => (0..b).map(|bi| (bi + 1) * t - 1).collect(),
        Logits::All => (0..b * t).collect(),
        Logits::Rows(r) => r.clone(),
    }
}
