//! The GPU context: one adapter, one device, the features we use and the adapter's real limits.

use serde::{Deserialize, Serialize};

use crate::error::GpuError;

/// How to pick an adapter. Every field can also come from the environment (see [`GpuOptions::from_env`]),
/// so a driver problem can be side-stepped without a rebuild.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Comma list of backends: `vulkan`, `gl`, `metal`, `dx12`, `webgpu`. None = all of this platform's.
    pub backends: Option<String>,
    /// Substring of the adapter name to require (case-insensitive), e.g. `llvmpipe` or `nvidia`.
    pub adapter: Option<String>,
    /// Prefer a low-power adapter (default: high performance).
    pub low_power: bool,
    /// Do not use shader-f16 even where the adapter has it (`CREME_FORCE_F32=1`).
    pub force_f32: bool,
    /// Do not use subgroup operations (`CREME_NO_SUBGROUPS=1`).
    pub no_subgroups: bool,
    /// Quantized matmul kernel (`CREME_QMM`): `rows` (a thread per weight row) or `wg` (a
    /// workgroup per row) for every m, `mv` (8 rows per workgroup, for m <= 4), `tiled` (tiled for
    /// m >= 16); default `auto` (`Gpu::qmm_kernel`).
    pub qmm: Option<String>,
    /// Decode attention split over the context (`CREME_SPLIT_ATTENTION=0|1`); default: on for
    /// GPUs, off for CPU adapters (which run workgroups one at a time per core anyway).
    pub split_attention: Option<bool>,
    /// Keep the KV cache in f16 where the adapter has shader-f16 (`CREME_KV_F16=1`): half the
    /// memory and attention reads, at f16 rounding of keys and values. Off by default, because
    /// causal-trace scores are sensitive to it: on a 6-layer SmolLM2 whose clean and perturbed
    /// log-probabilities differ by 0.24, restoration scores moved by up to 4e-2.
    pub kv_f16: bool,
    /// Weight rows per interleaved group (`CREME_WEIGHT_ROW_GROUP`, 1 to 64; see
    /// [`crate::quant::to_gpu_layout`]); default 8 on CPU adapters (the SIMD width of their
    /// lanes), 1 on GPUs.
    pub weight_row_group: Option<usize>,
    /// Kernels whose result for a row does not depend on the batch, the chunk or the number of
    /// rows it is computed with (`CREME_BATCH_INVARIANT=0|1`; default off, and on for `creme
    /// eval` and `creme experiment`): one quantized matmul kernel for every m and unsplit decode
    /// attention. Then draft-verified generation equals plain generation on wgpu too
    /// (`crate::draft`), at the cost of slower decode.
    pub batch_invariant: Option<bool>,
}

impl GpuOptions {
    /// Options from `CREME_BACKEND`, `CREME_ADAPTER`, `CREME_LOW_POWER`, `CREME_FORCE_F32`,
    /// `CREME_NO_SUBGROUPS`. In the browser there is no environment: the defaults apply.
    pub fn from_env() -> Self {
        let var = |k: &str| -> Option<String> {
            #[cfg(not(target_arch = "wasm32"))]
            {
                std::env::var(k).ok().filter(|v| !v.is_empty())
            }
            #[cfg(target_arch = "wasm32")]
            {
                let _ = k;
                None
            }
        };
        let flag = |k: &str| {
            var(k)
                .map(|v| v != "0" && v.to_lowercase() != "false")
                .unwrap_or(false)
        };
        GpuOptions {
            backends: var("CREME_BACKEND"),
            adapter: var("CREME_ADAPTER"),
            low_power: flag("CREME_LOW_POWER"),
            force_f32: flag("CREME_FORCE_F32"),
            no_subgroups: flag("CREME_NO_SUBGROUPS"),
            qmm: var("CREME_QMM"),
            split_attention: var("CREME_SPLIT_ATTENTION").map(|v| v != "0" && v != "false"),
            kv_f16: flag("CREME_KV_F16"),
            weight_row_group: var("CREME_WEIGHT_ROW_GROUP").map(|v| v.parse().unwrap_or(0)),
            batch_invariant: var("CREME_BATCH_INVARIANT").map(|v| v != "0" && v != "false"),
        }
    }

    /// These options with batch-invariant kernels unless they were turned off explicitly (what
    /// the commands that evaluate use: their drafts are exact only then).
    pub fn invariant_by_default(mut self) -> Self {
        self.batch_invariant.get_or_insert(true);
        self
    }
}

/// What `creme info` prints: the adapter, what it can do, and the limits we asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdapterReport {
    pub name: String,
    pub vendor: u32,
    pub device: u32,
    pub device_type: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub timestamp_query: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_uniform_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
    pub max_storage_buffers_per_shader_stage: u32,
}

impl AdapterReport {
    pub fn to_text(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        format!(
            "adapter: {}\nbackend: {}\ndevice type: {}\ndriver: {} {}\nvendor/device: {:#06x}/{:#06x}\n\
             features: shader-f16 {}, subgroups {} (size {}..{}), timestamp-query {}\n\
             limits: max storage binding {} MiB, max uniform binding {} KiB, max buffer {} MiB, workgroups/dim {}, \
             invocations/workgroup {}, workgroup storage {} KiB, storage buffers/stage {}",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.driver_info,
            self.vendor,
            self.device,
            yn(self.shader_f16),
            yn(self.subgroups),
            self.subgroup_min_size,
            self.subgroup_max_size,
            yn(self.timestamp_query),
            self.max_storage_buffer_binding_size >> 20,
            self.max_uniform_buffer_binding_size >> 10,
            self.max_buffer_size >> 20,
            self.max_compute_workgroups_per_dimension,
            self.max_compute_invocations_per_workgroup,
            self.max_compute_workgroup_storage_size >> 10,
            self.max_storage_buffers_per_shader_stage,
        )
    }
}

/// A device with its queue, the features switched on, and the limits granted.
/// Which quantized matmul kernel runs a product of m rows (`CREME_QMM` forces one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QmmPolicy {
    Auto,
    Rows,
    /// The row-per-thread kernel with x shared through subgroup broadcasts (falls back to `Rows`
    /// where the adapter's subgroups do not have one fixed size of 4 to 32 lanes).
    RowsSubgroup,
    Workgroup,
    Matvec,
    Tiled,
    Gemm,
}

impl QmmPolicy {
    fn parse(v: Option<&str>) -> Result<Self, GpuError> {
        Ok(match v {
            None | Some("auto") => QmmPolicy::Auto,
            Some("rows") => QmmPolicy::Rows,
            Some("rows_sg") => QmmPolicy::RowsSubgroup,
            Some("wg") => QmmPolicy::Workgroup,
            Some("mv") => QmmPolicy::Matvec,
            Some("tiled") => QmmPolicy::Tiled,
            Some("gemm") => QmmPolicy::Gemm,
            Some(other) => {
                return Err(GpuError::Device(format!(
                    "CREME_QMM='{other}': expected auto, rows, rows_sg, wg, mv, tiled or gemm"
                )))
            }
        })
    }
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub(crate) kernels: super::kernels::KernelRegistry,
    /// Which quantized matmul kernel runs a product (`CREME_QMM`; see `Gpu::qmm_kernel`).
    pub qmm: QmmPolicy,
    /// The adapter is a CPU emulation (lavapipe, SwiftShader): kernels are chosen for it.
    pub cpu_adapter: bool,
    /// Decode attention runs split over the context (see `GpuOptions::split_attention`).
    pub split_attention: bool,
    /// A row's results do not depend on the batch (see `GpuOptions::batch_invariant`).
    pub batch_invariant: bool,
    /// The KV cache holds f16s (`GpuOptions::kv_f16` on an adapter with shader-f16).
    pub kv_f16: bool,
    /// Weight rows per interleaved group of the weights' layout (`GpuOptions::weight_row_group`).
    pub weight_row_group: usize,
    /// The first fault since the last [`Gpu::check`]: an uncaptured wgpu error, out of memory, a
    /// buffer over the adapter's limits, or the device lost (which stays).
    pub(crate) fault: std::sync::Arc<std::sync::Mutex<Option<GpuError>>>,
    /// Commands recorded by backend ops and not yet submitted (see [`Gpu::flush`]).
    pub(crate) pending: std::sync::Mutex<Option<super::Recorder>>,
    /// Scratch buffers of the backend ops by name, reused across layers and tokens.
    pub(crate) workspaces: std::sync::Mutex<std::collections::HashMap<&'static str, wgpu::Buffer>>,
    /// Objects made, dispatches and submissions so far (see [`Gpu::counts`]).
    pub(crate) counters: super::resources::Counters,
    /// The uniform buffer kernel parameters are written to (see [`Gpu::uniform`]).
    pub(crate) params: super::resources::ParamArena,
    /// Storage buffers of dropped tensors, reused (see [`Gpu::pooled`]).
    pub(crate) pool: std::sync::Arc<super::resources::BufferPool>,
    /// Bind groups by kernel and buffers (see [`Gpu::bind_group`]).
    pub(crate) bind_groups: super::resources::BindGroupCache,
    /// Readback buffers not in use.
    pub(crate) staging: std::sync::Mutex<Vec<wgpu::Buffer>>,
    /// Per-kernel timestamps while `creme bench` profiles (see `profile.rs`).
    pub(crate) profiler: std::sync::Mutex<Option<super::profile::Profiler>>,
}

/// Whether decode attention runs split, and whether the kernels are batch-invariant: a split
/// attention and the matvec kernel (decode only) are not, so they conflict with asking for it.
fn attention_and_invariance(
    opts: &GpuOptions,
    qmm: QmmPolicy,
    cpu_adapter: bool,
) -> Result<(bool, bool), GpuError> {
    let invariant = opts.batch_invariant.unwrap_or(false);
    if invariant && opts.split_attention == Some(true) {
        return Err(GpuError::Device(
            "split decode attention is not batch-invariant: CREME_SPLIT_ATTENTION=1 conflicts with CREME_BATCH_INVARIANT".into(),
        ));
    }
    if invariant && qmm == QmmPolicy::Matvec {
        return Err(GpuError::Device(
            "CREME_QMM=mv serves decode only; batch-invariant kernels need one kernel for every m"
                .into(),
        ));
    }
    let split = !invariant && opts.split_attention.unwrap_or(!cpu_adapter);
    Ok((split, invariant))
}

fn backends_from(opts: &GpuOptions) -> wgpu::Backends {
    match &opts.backends {
        Some(list) => wgpu::Backends::from_comma_list(list),
        None => wgpu::Backends::PRIMARY | wgpu::Backends::SECONDARY,
    }
}

/// Names of the adapters this platform exposes (for error messages and `creme info --all`).
pub async fn list_adapters(opts: &GpuOptions) -> Vec<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: backends_from(opts),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    instance
        .enumerate_adapters(backends_from(opts))
        .await
        .into_iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect()
}

impl Gpu {
    /// Request an adapter and a device with the adapter's own limits (never the small defaults:
    /// model tensors need the large storage bindings real adapters offer).
    pub async fn new(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        let backends = backends_from(opts);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let adapter = match &opts.adapter {
            Some(want) => {
                let want_lc = want.to_lowercase();
                let all = instance.enumerate_adapters(backends).await;
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want_lc))
                    .ok_or_else(|| GpuError::NoAdapter {
                        detail: format!(
                            "no adapter name contains '{want}' (backends {backends:?}); adapters found: [{}]",
                            names.join(", ")
                        ),
                    })?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: if opts.low_power {
                        wgpu::PowerPreference::LowPower
                    } else {
                        wgpu::PowerPreference::HighPerformance
                    },
                    force_fallback_adapter: false,
                    compatible_surface: None,
                    apply_limit_buckets: false,
                })
                .await
                .map_err(|e| GpuError::NoAdapter {
                    detail: format!(
                        "{e} (backends {backends:?}); on Linux without a GPU install Mesa's lavapipe: \
                         apt-get install mesa-vulkan-drivers libvulkan1"
                    ),
                })?,
        };

        let info = adapter.get_info();
        let adapter_features = adapter.features();
        let mut wanted = wgpu::Features::TIMESTAMP_QUERY;
        if !opts.force_f32 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        if !opts.no_subgroups {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let features = adapter_features & wanted;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("creme"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::Device(format!("request_device on '{}': {e}", info.name)))?;
        // Faults surface as errors at the next readback (every result passes through one), never
        // as a panic in wgpu's default handler or a hang.
        let fault: std::sync::Arc<std::sync::Mutex<Option<GpuError>>> = Default::default();
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            log_device_lost(&format!("{reason:?}: {msg}"));
            *f.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(GpuError::DeviceLost(format!("{reason:?}: {msg}")));
        });
        let f = fault.clone();
        device.on_uncaptured_error(std::sync::Arc::new(move |e: wgpu::Error| {
            let err = match &e {
                wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
                _ => GpuError::Validation(e.to_string()),
            };
            f.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(err);
        }));

        let report = AdapterReport {
            name: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            device_type: format!("{:?}", info.device_type),
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            timestamp_query: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size as u64,
            max_uniform_buffer_binding_size: limits.max_uniform_buffer_binding_size as u64,
            max_buffer_size: limits.max_buffer_size,
            max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
            max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
            max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        };
        let kernels = super::kernels::KernelRegistry::new();
        let qmm = QmmPolicy::parse(opts.qmm.as_deref())?;
        let cpu_adapter = info.device_type == wgpu::DeviceType::Cpu;
        let kv_f16 = opts.kv_f16 && report.shader_f16;
        let weight_row_group = match opts.weight_row_group {
            Some(g @ 1..=64) => g,
            Some(g) => {
                return Err(GpuError::Device(format!(
                    "weight row group {g}: expected 1 to 64 (CREME_WEIGHT_ROW_GROUP)"
                )))
            }
            None if cpu_adapter => 8,
            None => 1,
        };
        let (split_attention, batch_invariant) = attention_and_invariance(opts, qmm, cpu_adapter)?;
        Ok(Gpu {
            device,
            queue,
            report,
            limits,
            features,
            kernels,
            qmm,
            split_attention,
            batch_invariant,
            kv_f16,
            weight_row_group,
            cpu_adapter,
            fault,
            pending: Default::default(),
            workspaces: Default::default(),
            counters: Default::default(),
            params: Default::default(),
            pool: Default::default(),
            bind_groups: Default::default(),
            staging: Default::default(),
            profiler: Default::default(),
        })
    }

    /// Native callers that are not async: block on [`Gpu::new`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(opts: &GpuOptions) -> Result<Gpu, GpuError> {
        pollster::block_on(Self::new(opts))
    }

    /// Record a fault (the first one wins; a lost device is never replaced).
    pub(crate) fn set_fault(&self, e: GpuError) {
        self.fault
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(e);
    }

    /// The first fault since the last check, as an error. A lost device stays lost.
    pub fn check(&self) -> Result<(), GpuError> {
        let mut f = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        match f.take() {
            None => Ok(()),
            Some(GpuError::DeviceLost(m)) => {
                *f = Some(GpuError::DeviceLost(m.clone()));
                Err(GpuError::DeviceLost(m))
            }
            Some(e) => Err(e),
        }
    }

    /// Record into the pending encoder (created on first use); [`Gpu::flush`] submits it.
    pub(crate) fn record<R>(&self, f: impl FnOnce(&mut super::Recorder) -> R) -> R {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let enc = p.get_or_insert_with(|| self.new_recorder("ops"));
        f(enc)
    }

    /// Submit everything recorded so far (every readback does this first); the submission's
    /// index, where there was anything to submit.
    pub fn flush(&self) -> Option<wgpu::SubmissionIndex> {
        let enc = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let index = enc.map(|enc| self.submit(enc));
        // The pending commands are submitted: the parameter slots and pooled buffers they used
        // can be handed out again.
        self.end_epoch();
        index
    }

    /// Wait until the GPU has done everything submitted, so that wgpu has released what that
    /// work held (counts of live objects are then comparable). Native only: a no-op in browsers.
    pub fn wait_idle(&self) {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
    }

    /// Largest byte size one storage binding may have on this device.
    pub fn max_binding_bytes(&self) -> u64 {
        (self.limits.max_storage_buffer_binding_size as u64).min(self.limits.max_buffer_size)
    }
}

fn log_device_lost(msg: &str) {
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("creme: GPU device lost: {msg}");
    #[cfg(target_arch = "wasm32")]
    let _ = msg;
}
