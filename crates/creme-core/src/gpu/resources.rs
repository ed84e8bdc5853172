//! The one place GPU objects are made and work is submitted: buffers, bind groups, pipelines,
//! command encoders, submissions, and the dispatch count. Everything else goes through these
//! methods, so the counters cannot miss one (a test below scans the sources for direct calls).
//! `creme bench --json` reports them per decoded token: the measure of how much a forward pass
//! re-creates instead of reusing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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
        }
    }
}

/// Kernel parameters live in one uniform buffer, a slot per dispatch written with
/// `queue.write_buffer`, instead of a new buffer per dispatch. Such writes take effect at the next
/// submission, before its commands; so slots are handed out from the start again only after the
/// pending encoder has been submitted ([`Gpu::flush`]), never while commands that read them wait.
/// Encoders submitted on their own (ops.rs) are recorded and submitted without a flush between.
#[derive(Default)]
pub(crate) struct ParamArena(Mutex<ArenaState>);

#[derive(Default)]
struct ArenaState {
    buffer: Option<wgpu::Buffer>,
    next: u64,
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
    pub fn binding(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: &self.buffer, offset: self.offset, size: std::num::NonZeroU64::new(self.size) })
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
            // Slots already handed out stay valid: their bind groups keep the old buffer alive.
            let bytes = (capacity * 2).max(ARENA_BYTES).max(stride);
            let usage = wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST;
            arena.buffer = Some(self.new_buffer(&wgpu::BufferDescriptor { label: Some("kernel parameters"), size: bytes, usage, mapped_at_creation: false }));
            arena.next = 0;
        }
        let buffer = arena.buffer.clone().expect("made above");
        let offset = arena.next;
        arena.next += stride;
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        self.queue.write_buffer(&buffer, offset, &padded);
        ParamSlot { buffer, offset, size }
    }

    /// Hand out slots from the start of the arena again (after the pending encoder's submission).
    pub(crate) fn reset_param_slots(&self) {
        self.params.0.lock().unwrap_or_else(|e| e.into_inner()).next = 0;
    }

    pub(crate) fn new_buffer(&self, desc: &wgpu::BufferDescriptor<'_>) -> wgpu::Buffer {
        bump(&self.counters.buffers);
        self.device.create_buffer(desc)
    }

    pub(crate) fn new_buffer_init(&self, desc: &wgpu::util::BufferInitDescriptor<'_>) -> wgpu::Buffer {
        bump(&self.counters.buffers);
        self.device.create_buffer_init(desc)
    }

    pub(crate) fn new_bind_group(&self, desc: &wgpu::BindGroupDescriptor<'_>) -> wgpu::BindGroup {
        bump(&self.counters.bind_groups);
        self.device.create_bind_group(desc)
    }

    /// A compute pipeline from WGSL source (its layout derived from the shader).
    pub(crate) fn new_pipeline(&self, label: &str, wgsl: String, entry: &str) -> wgpu::ComputePipeline {
        bump(&self.counters.pipelines);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(wgsl.into()) });
        self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    }

    pub(crate) fn new_encoder(&self, label: &str) -> wgpu::CommandEncoder {
        bump(&self.counters.encoders);
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
    }

    pub(crate) fn submit(&self, enc: wgpu::CommandEncoder) {
        bump(&self.counters.submissions);
        self.queue.submit([enc.finish()]);
    }

    pub(crate) fn count_dispatch(&self) {
        bump(&self.counters.dispatches);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Direct calls that would bypass the counters.
    const DIRECT: [&str; 7] = [
        ".create_buffer(",
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
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("gpu/resources.rs") {
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
        assert!(found.is_empty(), "GPU objects made outside gpu/resources.rs (the counters miss them):\n{}", found.join("\n"));
    }
}
