//! The one place GPU objects are made and work is submitted: buffers, bind groups, pipelines,
//! command encoders, submissions, and the dispatch count. Everything else goes through these
//! methods, so the counters cannot miss one (a test below scans the sources for direct calls).
//! `creme bench --json` reports them per decoded token: the measure of how much a forward pass
//! re-creates instead of reusing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use wgpu::util::DeviceExt;

use super::Gpu;

/// Running totals since the device was opened.
#[derive(Default)]
pub(crate) struct Counters {
    buffers: AtomicU64,
    bind_groups: AtomicU64,
    pipelines: AtomicU64,
    encoders: AtomicU64,
    dispatches: AtomicU64,
    submissions: AtomicU64,
    /// CPU time spent finishing and submitting command buffers (native only: 0 in the browser).
    submit_ns: AtomicU64,
}

/// A snapshot of the counters; subtract two with [`GpuCounts::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GpuCounts {
    pub buffers: u64,
    pub bind_groups: u64,
    pub pipelines: u64,
    pub encoders: u64,
    pub dispatches: u64,
    pub submissions: u64,
    pub submit_ns: u64,
}

impl GpuCounts {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &GpuCounts) -> GpuCounts {
        GpuCounts {
            buffers: self.buffers - earlier.buffers,
            bind_groups: self.bind_groups - earlier.bind_groups,
            pipelines: self.pipelines - earlier.pipelines,
            encoders: self.encoders - earlier.encoders,
            dispatches: self.dispatches - earlier.dispatches,
            submissions: self.submissions - earlier.submissions,
            submit_ns: self.submit_ns - earlier.submit_ns,
        }
    }
}

/// Commands being recorded: an encoder and one open compute pass shared by consecutive
/// dispatches. wgpu's CPU cost per pass (in `finish` and `submit`) is several times its cost per
/// dispatch within a pass: 220 one-dispatch passes took 0.75 ms to finish on lavapipe, one pass
/// of 220 dispatches 0.29 ms. Copies and clears end the open pass first ([`Recorder::encoder`]).
pub struct Recorder {
    // Declared first, so dropped first: the pass ends before its encoder goes.
    pass: Option<wgpu::ComputePass<'static>>,
    enc: wgpu::CommandEncoder,
}

impl Recorder {
    /// The encoder, for anything but a dispatch; ends the open pass.
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        &mut self.enc
    }

    /// The open compute pass, begun if there is none.
    pub(crate) fn pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        let enc = &mut self.enc;
        self.pass.get_or_insert_with(|| {
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            })
            .forget_lifetime()
        })
    }

    /// A new pass that writes timestamps `i` and `i + 1` of `set` at its start and end.
    pub(crate) fn timed_pass(
        &mut self,
        label: &str,
        set: &wgpu::QuerySet,
        i: u32,
    ) -> &mut wgpu::ComputePass<'static> {
        self.pass = None;
        let timestamp_writes = Some(wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        });
        let pass = self
            .enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(label),
                timestamp_writes,
            })
            .forget_lifetime();
        self.pass.insert(pass)
    }

    pub(crate) fn end_pass(&mut self) {
        self.pass = None;
    }

    /// The encoder with every pass ended, to finish and submit.
    pub fn into_encoder(mut self) -> wgpu::CommandEncoder {
        self.pass = None;
        self.enc
    }
}

/// Kernel parameters live in one uniform buffer, a slot per dispatch, staged on the CPU and written
/// with one `queue.write_buffer` per submission ([`Gpu::submit`]), instead of a new buffer per
/// dispatch. Such writes take effect at the next
/// submission, before its commands; so slots are handed out from the start again only after the
/// pending encoder has been submitted ([`Gpu::flush`]), never while commands that read them wait.
/// Encoders submitted on their own (ops.rs) are recorded and submitted without a flush between.
#[derive(Default)]
pub(crate) struct ParamArena(Mutex<ArenaState>);

#[derive(Default)]
struct ArenaState {
    buffer: Option<wgpu::Buffer>,
    next: u64,
    /// Slots written since the last submission, from byte `staged_from` of the buffer: copied in
    /// with one `write_buffer` at the submission (each `write_buffer` costs wgpu a staging
    /// buffer of its own).
    staged: Vec<u8>,
    staged_from: u64,
}

impl ArenaState {
    /// Hand the staged slots to the queue (they land before the next submission's commands).
    fn write_staged(&mut self, queue: &wgpu::Queue) {
        if let (Some(buffer), false) = (&self.buffer, self.staged.is_empty()) {
            queue.write_buffer(buffer, self.staged_from, &self.staged);
        }
        self.staged.clear();
        self.staged_from = self.next;
    }
}

/// The first arena; it doubles when a submission needs more slots.
const ARENA_BYTES: u64 = 256 << 10;

/// One dispatch's parameters: a range of the arena.
pub struct ParamSlot {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl ParamSlot {
    /// The dynamic offset of this slot in the arena.
    pub(crate) fn offset(&self) -> u32 {
        self.offset as u32
    }
}

/// Storage buffers of dropped tensors, by size class, handed out again instead of made anew: a
/// decoded token asks for the same sizes in the same order, so after warm-up it makes none. A
/// buffer dropped while commands recorded since the last submission may still use it is held
/// back until that submission ([`Gpu::flush`]): a `queue.write_buffer` into it would otherwise
/// take effect before those commands ran.
#[derive(Default)]
pub(crate) struct BufferPool(Mutex<PoolState>);

#[derive(Default)]
struct PoolState {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    /// Dropped since the last submission.
    held: Vec<wgpu::Buffer>,
    free_bytes: u64,
}

/// Free buffers the pool keeps at most; beyond that, dropped buffers are released to wgpu.
const POOL_MAX_BYTES: u64 = 1 << 30;

impl BufferPool {
    fn take(&self, class: u64) -> Option<wgpu::Buffer> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let b = p.free.get_mut(&class)?.pop()?;
        p.free_bytes -= class;
        Some(b)
    }

    /// The previous submission is out: buffers held back since are free to reuse.
    fn end_epoch(&self) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for b in std::mem::take(&mut p.held) {
            if p.free_bytes + b.size() <= POOL_MAX_BYTES {
                p.free_bytes += b.size();
                p.free.entry(b.size()).or_default().push(b);
            }
        }
    }
}

/// A tensor's storage buffer; it returns to the pool when dropped.
pub struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Option<Arc<BufferPool>>,
}

impl std::ops::Deref for PooledBuffer {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .held
                .push(self.buffer.clone());
        }
    }
}

/// Buffer sizes come in powers of two (at least 256 bytes) so that tensors of nearby lengths share
/// buffers; a size whose class would pass the binding limit stays exact.
fn size_class(bytes: u64, limit: u64) -> u64 {
    let class = bytes.max(256).next_power_of_two();
    if class <= limit {
        class
    } else {
        bytes.div_ceil(4) * 4
    }
}

/// Bind groups by kernel and bound buffers, made once and reused across layers and tokens. The
/// parameter slot is a dynamic offset, so one bind group serves every dispatch of a kernel on the
/// same buffers. Entries unused for [`BIND_GROUP_TTL`] submissions are dropped (their buffers with them).
#[derive(Default)]
pub(crate) struct BindGroupCache(Mutex<BindState>);

#[derive(Default)]
struct BindState {
    groups: HashMap<BindKey, (wgpu::BindGroup, u64)>,
    epoch: u64,
}

#[derive(PartialEq, Eq, Hash)]
struct BindKey {
    /// The kernel's address in the registry (kernels live as long as the device).
    kernel: usize,
    storage: Vec<wgpu::Buffer>,
    params: wgpu::Buffer,
    params_size: u64,
}

const BIND_GROUP_TTL: u64 = 32;

impl BindGroupCache {
    fn end_epoch(&self) {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.epoch += 1;
        if s.epoch % BIND_GROUP_TTL == 0 {
            let epoch = s.epoch;
            s.groups
                .retain(|_, (_, used)| epoch - *used < BIND_GROUP_TTL);
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Gpu {
    /// The counters now.
    pub fn counts(&self) -> GpuCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        GpuCounts {
            buffers: get(&c.buffers),
            bind_groups: get(&c.bind_groups),
            pipelines: get(&c.pipelines),
            encoders: get(&c.encoders),
            dispatches: get(&c.dispatches),
            submissions: get(&c.submissions),
            submit_ns: get(&c.submit_ns),
        }
    }

    /// wgpu's own count of live buffers and bind groups (native builds; zeros in the browser).
    pub fn live_objects(&self) -> (isize, isize) {
        let c = self.device.get_internal_counters();
        (c.hal.buffers.read(), c.hal.bind_groups.read())
    }

    /// Write `bytes` (kernel parameters) into a fresh slot of the arena.
    pub(crate) fn param_slot(&self, bytes: &[u8]) -> ParamSlot {
        let size = (bytes.len().div_ceil(16) * 16).max(16) as u64;
        let align = (self.limits.min_uniform_buffer_offset_alignment as u64).max(16);
        let stride = size.div_ceil(align) * align;
        let mut arena = self.params.0.lock().unwrap_or_else(|e| e.into_inner());
        let capacity = arena.buffer.as_ref().map_or(0, |b| b.size());
        if arena.next + stride > capacity {
            // Slots already handed out stay valid: their bind groups keep the old buffer alive,
            // and its staged slots are written to it first.
            arena.write_staged(&self.queue);
            let bytes = (capacity * 2).max(ARENA_BYTES).max(stride);
            let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
            arena.buffer = Some(self.new_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel parameters"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            }));
            arena.next = 0;
            arena.staged_from = 0;
        }
        let buffer = arena.buffer.clone().expect("made above");
        let offset = arena.next;
        arena.next += stride;
        let at = (offset - arena.staged_from) as usize;
        arena.staged.resize(at + stride as usize, 0);
        arena.staged[at..at + bytes.len()].copy_from_slice(bytes);
        ParamSlot {
            buffer,
            offset,
            size,
        }
    }

    /// Hand out slots from the start of the arena again (after the pending encoder's submission).
    pub(crate) fn reset_param_slots(&self) {
        let mut arena = self.params.0.lock().unwrap_or_else(|e| e.into_inner());
        arena.next = 0;
        arena.staged_from = 0;
    }

    /// How tensors' buffers may be used: bound as storage, copied both ways, and on CPU adapters
    /// also shown through uniform views (see [`super::bindings::UNIFORM_VIEW_BASE`]).
    pub(crate) fn tensor_usage(&self) -> wgpu::BufferUsages {
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        if self.cpu_adapter {
            usage | wgpu::BufferUsages::UNIFORM
        } else {
            usage
        }
    }

    pub(crate) fn new_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        bump(&self.counters.buffers);
        self.device.create_buffer(desc)
    }

    pub(crate) fn new_buffer_init(
        &self,
        desc: &wgpu::util::BufferInitDescriptor<'_>,
    ) -> wgpu::Buffer {
        bump(&self.counters.buffers);
        self.device.create_buffer_init(desc)
    }

    /// A compute pipeline from WGSL source, with the explicit layout its declarations give.
    pub(crate) fn new_pipeline(
        &self,
        label: &str,
        wgsl: String,
        entry: &str,
    ) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
        bump(&self.counters.pipelines);
        let entries = super::bindings::layout_entries(&wgsl);
        let bind_layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(label),
                entries: &entries,
            });
        let layout = self
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(label),
                bind_group_layouts: &[Some(&bind_layout)],
                immediate_size: 0,
            });
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(label),
                source: wgpu::ShaderSource::Wgsl(wgsl.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(label),
                layout: Some(&layout),
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        (pipeline, bind_layout)
    }

    /// The bind group of `kernel` over `storage` (bindings 0..), the parameter arena (the next
    /// binding) and the kernel's views of `storage`, from the cache or made once.
    pub(crate) fn bind_group(
        &self,
        kernel: &super::kernels::Kernel,
        storage: &[&wgpu::Buffer],
        params: &ParamSlot,
    ) -> wgpu::BindGroup {
        let key = BindKey {
            kernel: kernel as *const _ as usize,
            storage: storage.iter().map(|&b| b.clone()).collect(),
            params: params.buffer.clone(),
            params_size: params.size,
        };
        let mut cache = self.bind_groups.0.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = cache.epoch;
        if let Some((group, used)) = cache.groups.get_mut(&key) {
            *used = epoch;
            return group.clone();
        }
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let uniform = wgpu::BufferBinding {
            buffer: &params.buffer,
            offset: 0,
            size: std::num::NonZeroU64::new(params.size),
        };
        entries.push(wgpu::BindGroupEntry {
            binding: storage.len() as u32,
            resource: wgpu::BindingResource::Buffer(uniform),
        });
        entries.extend(kernel.views.iter().map(|view| wgpu::BindGroupEntry {
            binding: view.binding,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: storage[view.of],
                offset: 0,
                size: view.bytes.and_then(std::num::NonZeroU64::new),
            }),
        }));
        bump(&self.counters.bind_groups);
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&kernel.name),
            layout: &kernel.bind_layout,
            entries: &entries,
        });
        cache.groups.insert(key, (group.clone(), epoch));
        group
    }

    /// A storage buffer of at least `bytes` for a tensor, from the pool or made; zeroed if asked
    /// (recorded in order with the other commands).
    pub(crate) fn pooled(&self, label: &str, bytes: u64, zeroed: bool) -> PooledBuffer {
        let class = size_class(bytes, self.max_binding_bytes());
        if let Some(buffer) = self.pool.take(class) {
            if zeroed {
                self.record(|enc| enc.encoder().clear_buffer(&buffer, 0, None));
            }
            return PooledBuffer {
                buffer,
                pool: Some(self.pool.clone()),
            };
        }
        let usage = self.tensor_usage();
        if class > self.limits.max_buffer_size {
            // Over the limit: the fault names it; a placeholder stands in until the next check.
            self.set_fault(crate::GpuError::TooLarge {
                tensor: label.to_string(),
                bytes,
                limit: self.limits.max_buffer_size,
            });
            return PooledBuffer {
                buffer: self.new_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size: 4,
                    usage,
                    mapped_at_creation: false,
                }),
                pool: None,
            };
        }
        let buffer = self.new_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: class,
            usage,
            mapped_at_creation: false,
        });
        PooledBuffer {
            buffer,
            pool: Some(self.pool.clone()),
        }
    }

    /// A mappable buffer for reading back at least `bytes`, reused across readbacks.
    pub(crate) fn staging(&self, bytes: u64) -> wgpu::Buffer {
        let class = bytes.max(256).next_power_of_two();
        let mut free = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = free.iter().position(|b| b.size() == class) {
            return free.swap_remove(i);
        }
        drop(free);
        self.new_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: class,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A staging buffer, unmapped, back for the next readback (a few are kept).
    pub(crate) fn return_staging(&self, buffer: wgpu::Buffer) {
        let mut free = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < 8 {
            free.push(buffer);
        }
    }

    /// The pending commands were submitted: recycle what they held.
    pub(crate) fn end_epoch(&self) {
        self.reset_param_slots();
        self.pool.end_epoch();
        self.bind_groups.end_epoch();
    }

    /// A recorder over a new command encoder (public for tests that submit on their own).
    pub fn new_recorder(&self, label: &str) -> Recorder {
        bump(&self.counters.encoders);
        Recorder {
            pass: None,
            enc: self
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) }),
        }
    }

    /// Submit what `rec` recorded, with the kernel parameters it uses.
    pub fn submit(&self, rec: Recorder) -> wgpu::SubmissionIndex {
        self.params
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_staged(&self.queue);
        let mut enc = rec.into_encoder();
        let timed = self.resolve_timestamps(&mut enc);
        bump(&self.counters.submissions);
        #[cfg(not(target_arch = "wasm32"))]
        let t0 = std::time::Instant::now();
        let index = self.queue.submit([enc.finish()]);
        #[cfg(not(target_arch = "wasm32"))]
        self.counters
            .submit_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if timed {
            self.collect_timestamps();
        }
        index
    }

    /// A set of `count` timestamp queries (profiling only: not counted per token).
    pub(crate) fn new_query_set(&self, label: &str, count: u32) -> wgpu::QuerySet {
        self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some(label),
            ty: wgpu::QueryType::Timestamp,
            count,
        })
    }

    pub(crate) fn count_dispatch(&self) {
        bump(&self.counters.dispatches);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Direct calls that would bypass the counters.
    const DIRECT: [&str; 10] = [
        ".create_query_set(",
        ".create_buffer(",
        ".create_bind_group_layout(",
        ".create_pipeline_layout(",
        ".create_buffer_init(",
        ".create_bind_group(",
        ".create_compute_pipeline(",
        ".create_shader_module(",
        ".create_command_encoder(",
        "queue.submit(",
    ];

    fn scan(dir: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs")
                && !path.ends_with("gpu/resources.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    if DIRECT.iter().any(|d| code.contains(d)) {
                        found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
                    }
                }
            }
        }
    }

    #[test]
    fn only_the_resource_module_creates_gpu_objects_or_submits() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let mut found = Vec::new();
        for krate in ["creme-core", "creme-web", "creme-cli"] {
            scan(&crates.join(krate).join("src"), &mut found);
        }
        assert!(
            found.is_empty(),
            "GPU objects made outside gpu/resources.rs (the counters miss them):\n{}",
            found.join("\n")
        );
    }
}
