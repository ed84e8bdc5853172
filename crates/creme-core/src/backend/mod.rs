//! The backend trait the one forward pass is written over, and [`Device`], the backend a run
//! uses: wgpu (GPUs, browsers) or the native SIMD CPU backend (machines whose only adapters are
//! CPU emulations such as lavapipe). Trace, edit, generation and evaluation call [`Device`]'s ops
//! and never know which backend runs them.
//!
//! The block ops are coarse (a whole attention block, the MLP up to its activation, the down
//! projection with its residual add, the head) so that a backend can fuse inside them.

#[cfg(not(target_arch = "wasm32"))]
pub mod cpu;
mod embedding;
pub mod tensor;
mod wgpu_ops;

pub use embedding::Embedding;
pub use tensor::{DType, Storage, Tensor, Weight};

use crate::error::ModelError;
use crate::gpu::{Gpu, WeightUpload};
use crate::quant::GgmlType;

/// One transformer layer's weights, as the block ops read them.
pub struct LayerWeights {
    pub attn_norm: Tensor,
    pub q: Weight,
    pub k: Weight,
    pub v: Weight,
    pub o: Weight,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    /// The three biases back to back (where the projections have them), for a backend that
    /// computes the three projections as one.
    pub qkv_bias: Option<Tensor>,
    pub ffn_norm: Tensor,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
}

/// The model dimensions a block op needs.
#[derive(Clone, Copy, Debug)]
pub struct BlockShape {
    pub d_model: usize,
    pub d_ff: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    /// Rope pairs adjacent elements (llama GGUFs) instead of the two halves (NeoX, qwen2).
    pub interleaved_rope: bool,
}

/// The keys and values of one layer for a batch of sequences: [batch * capacity, kv_heads * head_dim].
pub struct KvLayer {
    pub k: Tensor,
    pub v: Tensor,
}

/// What an attention block needs to know about the chunk it processes: `active` sequences of
/// `t` new tokens each, entering the cache at position `cache_len`.
pub struct AttnStep<'a> {
    pub active: usize,
    pub t: usize,
    pub cache_len: usize,
    pub capacity: usize,
    /// Rope position of each row (U32, [batch * t]).
    pub pos: &'a Tensor,
    /// Left-pad length of each sequence (U32, [batch]): keys before it are masked.
    pub pad: &'a Tensor,
    /// cos/sin per position and frequency ([positions, head_dim]).
    pub rope: &'a Tensor,
}

/// The 4-byte words of a U32 tensor's values as integers.
pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// How a token is picked from each row of logits.
#[derive(Clone, Copy, Debug)]
pub enum PickRule<'a> {
    /// The first maximum.
    Greedy,
    /// Temperature and top-p sampling with the uniform draw `u[row]` (the rule of
    /// [`crate::sampling::sample_row`]).
    Sample {
        temperature: f32,
        top_p: f32,
        u: &'a [f32],
    },
}

/// A readback under way (see [`Backend::start_read`]).
pub enum PendingRead {
    /// The values (a backend whose tensors live in host memory has them at once).
    Ready(Vec<f32>),
    Wgpu(crate::gpu::PendingRead),
    /// An F16 tensor's halves, `n` of them, to widen to f32.
    WgpuF16(crate::gpu::PendingRead, usize),
}

/// One Adam update (the edit's solver): w -= lr * m̂ / (sqrt(v̂) + eps) with the gradient scaled.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep {
    pub lr: f32,
    pub b1: f64,
    pub b2: f64,
    pub eps: f32,
    /// Multiplies the raw gradient (e.g. the MSE's 2 / count).
    pub scale: f32,
    /// Update number, from 1 (bias corrections).
    pub t: u32,
}

/// Which backend a [`Device`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BackendKind {
    Wgpu,
    Cpu,
}

/// The operations of the forward pass and of trace/edit. Ops may be recorded and run later (wgpu
/// records into one submission); every `read`-like op returns finished results.
#[allow(async_fn_in_trait)]
pub trait Backend {
    fn kind(&self) -> BackendKind;
    /// One line naming the device (adapter name and API, or CPU and its SIMD kernels).
    fn describe(&self) -> String;
    /// Largest single tensor, in bytes (batching of trace probes is sized by it).
    fn max_tensor_bytes(&self) -> u64;
    /// The element type of the KV cache: F16 on wgpu adapters with shader-f16 when asked for
    /// (`--kv-f16`, [`crate::GpuOptions::kv_f16`]), which halves the cache's memory and the
    /// attention's reads; else F32.
    fn kv_dtype(&self) -> DType {
        DType::F32
    }

    /// A new tensor, zeroed or holding `data` (f32 values; for U32 tensors their bits).
    fn tensor(
        &self,
        label: &str,
        dtype: DType,
        rows: usize,
        width: usize,
        data: Option<&[f32]>,
    ) -> Result<Tensor, ModelError>;
    /// Overwrite a tensor's leading values.
    fn write(&self, t: &mut Tensor, data: &[f32]) -> Result<(), ModelError>;
    /// Start reading the first `n` values of a tensor back: ops recorded after this call may run
    /// on the device while [`Backend::finish_read`] waits for the values (decoding feeds a step's
    /// picks to the next step on the device and reads them a step behind).
    fn start_read(&self, t: &Tensor, n: usize) -> Result<PendingRead, ModelError>;
    /// The values of a read begun by [`Backend::start_read`] (U32 tensors keep their bits).
    async fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>, ModelError>;
    /// The first `n` values of a tensor.
    async fn read(&self, t: &Tensor, n: usize) -> Result<Vec<f32>, ModelError> {
        let read = self.start_read(t, n)?;
        self.finish_read(read).await
    }
    /// Copy `n` rows from `src` (from row `src_row`) into `dst` (from row `dst_row`); same width.
    fn copy_rows(
        &self,
        src: &Tensor,
        src_row: usize,
        dst: &mut Tensor,
        dst_row: usize,
        n: usize,
    ) -> Result<(), ModelError>;

    fn upload_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Weight, ModelError>;
    /// Weights that are multiplied with the same input (a layer's query, key and value
    /// projections); a backend may store them so that one matmul computes all (wgpu does).
    fn upload_weight_group(&self, parts: &[WeightUpload<'_>]) -> Result<Vec<Weight>, ModelError> {
        parts
            .iter()
            .map(|p| self.upload_weight(p.name, p.dtype, p.rows, p.cols, p.bytes))
            .collect()
    }
    /// A weight's values dequantized to f32 [rows * cols].
    async fn weight_f32(&self, w: &Weight) -> Result<Vec<f32>, ModelError>;

    /// y[m, w.rows] = x[m, w.cols] · Wᵀ for a weight in its file's format.
    fn matmul_q(&self, x: &Tensor, w: &Weight, y: &mut Tensor, m: usize) -> Result<(), ModelError>;
    /// x[..rows] += Attention(RmsNorm(x)) over the cache, after writing this chunk's keys and
    /// values into it. `rows` = step.active * step.t.
    fn attention_block(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &mut Tensor,
        kv: &mut KvLayer,
        step: &AttnStep<'_>,
    ) -> Result<(), ModelError>;
    /// act[..rows] = silu(RmsNorm(x) · gateᵀ) * (RmsNorm(x) · upᵀ).
    fn mlp_act(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &Tensor,
        act: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError>;
    /// x[..rows] += act · downᵀ.
    fn mlp_down_add(
        &self,
        w: &LayerWeights,
        act: &Tensor,
        x: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError>;
    /// Logits [rows.len(), vocab] of the listed rows of x: final norm, then the output head.
    fn head(
        &self,
        norm: &Tensor,
        head: &Weight,
        eps: f32,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor, ModelError>;

    /// x[i] = the embedding table's row ids[i], for the token ids in `ids` (U32, [rows, 1]) on
    /// this device: the ids a step picked feed the next step without a trip through the host.
    fn embed(&self, table: &Embedding, ids: &Tensor, x: &mut Tensor) -> Result<(), ModelError>;
    /// A token per row of logits, picked by `rule`, left on the device: U32 [rows, 1].
    fn pick(&self, logits: &Tensor, rule: PickRule<'_>) -> Result<Tensor, ModelError>;
    /// Index of the first maximum of each row.
    async fn argmax(&self, logits: &Tensor) -> Result<Vec<u32>, ModelError> {
        let ids = self.pick(logits, PickRule::Greedy)?;
        Ok(bits(&self.read(&ids, logits.rows).await?))
    }
    /// A token per row by temperature and top-p sampling, with the uniform draw `u[row]`
    /// (the rule of [`crate::sampling::sample_row`]); only the picks come back.
    async fn sample(
        &self,
        logits: &Tensor,
        temperature: f32,
        top_p: f32,
        u: &[f32],
    ) -> Result<Vec<u32>, ModelError> {
        let rule = PickRule::Sample {
            temperature,
            top_p,
            u,
        };
        let ids = self.pick(logits, rule)?;
        Ok(bits(&self.read(&ids, logits.rows).await?))
    }
    /// log_softmax(logits[i])[targets[i]] for each row i.
    async fn token_logprobs(
        &self,
        logits: &Tensor,
        targets: &[u32],
    ) -> Result<Vec<f32>, ModelError>;

    /// y[m, n] = x[m, k] · w[n, k]ᵀ in f32 (the edit's solver).
    fn matmul_f32(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), ModelError>;
    /// One Adam update of w from grad with moments m and v (all the same length).
    fn adam(
        &self,
        w: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamStep,
    ) -> Result<(), ModelError>;
}

/// The backend a run uses.
pub enum Device {
    Wgpu(Gpu),
    #[cfg(not(target_arch = "wasm32"))]
    Cpu(cpu::CpuBackend),
}

macro_rules! on_backend {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Device::Wgpu($b) => $e,
            #[cfg(not(target_arch = "wasm32"))]
            Device::Cpu($b) => $e,
        }
    };
}

impl Backend for Device {
    fn kind(&self) -> BackendKind {
        on_backend!(self, b => Backend::kind(b))
    }
    fn describe(&self) -> String {
        on_backend!(self, b => Backend::describe(b))
    }
    fn max_tensor_bytes(&self) -> u64 {
        on_backend!(self, b => Backend::max_tensor_bytes(b))
    }
    fn kv_dtype(&self) -> DType {
        on_backend!(self, b => Backend::kv_dtype(b))
    }
    fn tensor(
        &self,
        label: &str,
        dtype: DType,
        rows: usize,
        width: usize,
        data: Option<&[f32]>,
    ) -> Result<Tensor, ModelError> {
        on_backend!(self, b => Backend::tensor(b, label, dtype, rows, width, data))
    }
    fn write(&self, t: &mut Tensor, data: &[f32]) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::write(b, t, data))
    }
    fn start_read(&self, t: &Tensor, n: usize) -> Result<PendingRead, ModelError> {
        on_backend!(self, b => Backend::start_read(b, t, n))
    }
    async fn finish_read(&self, read: PendingRead) -> Result<Vec<f32>, ModelError> {
        on_backend!(self, b => Backend::finish_read(b, read).await)
    }
    fn copy_rows(
        &self,
        src: &Tensor,
        src_row: usize,
        dst: &mut Tensor,
        dst_row: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::copy_rows(b, src, src_row, dst, dst_row, n))
    }
    fn upload_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<Weight, ModelError> {
        on_backend!(self, b => Backend::upload_weight(b, name, dtype, rows, cols, bytes))
    }
    fn upload_weight_group(&self, parts: &[WeightUpload<'_>]) -> Result<Vec<Weight>, ModelError> {
        on_backend!(self, b => Backend::upload_weight_group(b, parts))
    }
    async fn weight_f32(&self, w: &Weight) -> Result<Vec<f32>, ModelError> {
        on_backend!(self, b => Backend::weight_f32(b, w).await)
    }
    fn matmul_q(&self, x: &Tensor, w: &Weight, y: &mut Tensor, m: usize) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::matmul_q(b, x, w, y, m))
    }
    fn attention_block(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &mut Tensor,
        kv: &mut KvLayer,
        step: &AttnStep<'_>,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::attention_block(b, w, s, x, kv, step))
    }
    fn mlp_act(
        &self,
        w: &LayerWeights,
        s: &BlockShape,
        x: &Tensor,
        act: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::mlp_act(b, w, s, x, act, rows))
    }
    fn mlp_down_add(
        &self,
        w: &LayerWeights,
        act: &Tensor,
        x: &mut Tensor,
        rows: usize,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::mlp_down_add(b, w, act, x, rows))
    }
    fn head(
        &self,
        norm: &Tensor,
        head: &Weight,
        eps: f32,
        x: &Tensor,
        rows: &[usize],
    ) -> Result<Tensor, ModelError> {
        on_backend!(self, b => Backend::head(b, norm, head, eps, x, rows))
    }
    fn embed(&self, table: &Embedding, ids: &Tensor, x: &mut Tensor) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::embed(b, table, ids, x))
    }
    fn pick(&self, logits: &Tensor, rule: PickRule<'_>) -> Result<Tensor, ModelError> {
        on_backend!(self, b => Backend::pick(b, logits, rule))
    }
    async fn token_logprobs(
        &self,
        logits: &Tensor,
        targets: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        on_backend!(self, b => Backend::token_logprobs(b, logits, targets).await)
    }
    fn matmul_f32(
        &self,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::matmul_f32(b, x, w, y, m, n, k))
    }
    fn adam(
        &self,
        w: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        p: AdamStep,
    ) -> Result<(), ModelError> {
        on_backend!(self, b => Backend::adam(b, w, grad, m, v, p))
    }
}

impl Device {
    /// Whether a row's result is bit-identical whatever batch, padding or chunk it is computed in
    /// (the CPU backend's guarantee; on wgpu only with batch-invariant kernels, since the
    /// default kernels depend on the batch shape). Draft-verified generation equals plain
    /// generation only on such a device.
    pub fn batch_invariant(&self) -> bool {
        match self {
            Device::Wgpu(g) => g.batch_invariant,
            #[cfg(not(target_arch = "wasm32"))]
            Device::Cpu(_) => true,
        }
    }

    /// What `creme info` shows: the backend and, on wgpu, the adapter's report (else the
    /// device's description); as JSON, or as text.
    pub fn info(&self, json: bool) -> Result<String, serde_json::Error> {
        match (self.gpu(), json) {
            (Some(g), true) => serde_json::to_string_pretty(
                &serde_json::json!({"backend": "wgpu", "adapter": g.report}),
            ),
            (Some(g), false) => Ok(format!("backend: wgpu\n{}", g.report.to_text())),
            (None, true) => serde_json::to_string_pretty(
                &serde_json::json!({"backend": "cpu", "device": self.describe()}),
            ),
            (None, false) => Ok(format!("backend: {}", self.describe())),
        }
    }

    /// The wgpu context, where this device is one (GPU-only tools: kernel checks, adapter report).
    pub fn gpu(&self) -> Option<&Gpu> {
        match self {
            Device::Wgpu(g) => Some(g),
            #[cfg(not(target_arch = "wasm32"))]
            Device::Cpu(_) => None,
        }
    }

    /// Upload f32 values as a [rows, width] tensor.
    pub fn upload(
        &self,
        label: &str,
        rows: usize,
        width: usize,
        data: &[f32],
    ) -> Result<Tensor, ModelError> {
        self.tensor(label, DType::F32, rows, width, Some(data))
    }
    /// A zeroed f32 [rows, width] tensor.
    pub fn zeros(&self, label: &str, rows: usize, width: usize) -> Result<Tensor, ModelError> {
        self.tensor(label, DType::F32, rows, width, None)
    }
    /// A [rows, width] tensor of keys or values in the backend's KV-cache type
    /// ([`Backend::kv_dtype`]), zeroed or from f32 `data`.
    pub fn kv_tensor(
        &self,
        label: &str,
        rows: usize,
        width: usize,
        data: Option<&[f32]>,
    ) -> Result<Tensor, ModelError> {
        self.tensor(label, self.kv_dtype(), rows, width, data)
    }
    /// Upload indices as a U32 tensor of one row.
    /// Token ids, one per row: U32 [ids.len(), 1] (what [`Backend::embed`] and
    /// [`Backend::pick`] take and give).
    pub fn upload_ids(&self, label: &str, ids: &[u32]) -> Result<Tensor, ModelError> {
        let words: Vec<f32> = ids.iter().map(|&u| f32::from_bits(u)).collect();
        self.tensor(label, DType::U32, ids.len(), 1, Some(&words))
    }
    pub fn upload_u32(&self, label: &str, data: &[u32]) -> Result<Tensor, ModelError> {
        let words: Vec<f32> = data.iter().map(|&u| f32::from_bits(u)).collect();
        self.tensor(
            label,
            DType::U32,
            1,
            data.len().max(1),
            if data.is_empty() { None } else { Some(&words) },
        )
    }
    /// A whole tensor read back.
    pub async fn read_all(&self, t: &Tensor) -> Result<Vec<f32>, ModelError> {
        self.read(t, t.len()).await
    }
}

/// Which backend to open: `auto` (a real GPU if there is one, else the CPU), `cpu`, `cpu-exact`,
/// or a comma list of wgpu backends (`vulkan`, `gl`, `metal`, `dx12`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    #[default]
    Auto,
    Cpu,
    /// The CPU backend in its exact-activation mode (f32 activations and weights).
    CpuExact,
    Wgpu(String),
}

impl BackendChoice {
    pub fn parse(s: &str) -> BackendChoice {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => BackendChoice::Auto,
            "cpu" => BackendChoice::Cpu,
            "cpu-exact" => BackendChoice::CpuExact,
            other => BackendChoice::Wgpu(other.to_string()),
        }
    }
}

/// Whether an adapter is a CPU emulation of a GPU (lavapipe, llvmpipe, SwiftShader, WARP).
pub fn is_cpu_emulation(report: &crate::gpu::AdapterReport) -> bool {
    let name = report.name.to_ascii_lowercase();
    report.device_type == "Cpu"
        || ["llvmpipe", "lavapipe", "swiftshader", "softpipe", "warp"]
            .iter()
            .any(|n| name.contains(n))
}

#[cfg(not(target_arch = "wasm32"))]
impl Device {
    /// Open the backend `opts` asks for (`opts.backends` holds the choice; `CREME_BACKEND` when
    /// built from the environment). `auto` takes a real GPU when wgpu finds one and the CPU
    /// backend when the only adapters are CPU emulations or there is none.
    pub fn open(opts: &crate::GpuOptions) -> Result<Device, crate::GpuError> {
        let choice = BackendChoice::parse(opts.backends.as_deref().unwrap_or("auto"));
        match choice {
            BackendChoice::Cpu => Ok(Device::Cpu(cpu::CpuBackend::new())),
            BackendChoice::CpuExact => Ok(Device::Cpu(cpu::CpuBackend::exact())),
            BackendChoice::Wgpu(list) => {
                let mut o = opts.clone();
                o.backends = Some(list);
                Ok(Device::Wgpu(Gpu::new_blocking(&o)?))
            }
            BackendChoice::Auto => {
                let mut o = opts.clone();
                o.backends = None;
                match Gpu::new_blocking(&o) {
                    Ok(g) if !is_cpu_emulation(&g.report) || opts.adapter.is_some() => {
                        Ok(Device::Wgpu(g))
                    }
                    _ => Ok(Device::Cpu(cpu::CpuBackend::new())),
                }
            }
        }
    }
}

/// A sampling call's draws: one per row of logits, and a positive temperature.
pub(crate) fn check_draws(logits: &Tensor, u: &[f32]) -> Result<(), ModelError> {
    if u.len() != logits.rows {
        return Err(ModelError::Format(format!(
            "sample: {} draws for {} rows of logits",
            u.len(),
            logits.rows
        )));
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod info_tests {
    use super::*;

    #[test]
    fn the_cpu_backend_shows_its_description() {
        let dev = Device::Cpu(cpu::CpuBackend::new());
        let text = dev.info(false).unwrap();
        assert_eq!(text, format!("backend: {}", dev.describe()));
        let doc: serde_json::Value = serde_json::from_str(&dev.info(true).unwrap()).unwrap();
        assert_eq!(doc["backend"], "cpu");
        assert_eq!(doc["device"], dev.describe());
    }
}
