//! Kernel registry: each WGSL kernel is compiled into a pipeline once, on first use, and kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Every kernel the crate can run: a name, its WGSL source (from `shaders/`) and entry point.
/// Sources that share helpers are assembled here so that each `.wgsl` file holds one family.
pub(crate) fn kernel_source(name: &str) -> Option<(String, &'static str)> {
    let src = match name {
        "matmul_f32" => include_str!("../../../../shaders/matmul_f32.wgsl").to_string(),
        _ => {
            if let Some(format) = name.strip_prefix("matmul_q:") {
                return quant_matmul_source(format).map(|s| (s, "main"));
            }
            if let Some(format) = name.strip_prefix("matmul_q_tiled:") {
                return quant_matmul_source(format).map(|s| (s, "main_tiled"));
            }
            if let Some(format) = name.strip_prefix("matmul_q_rows:") {
                return quant_matmul_source(format).map(|s| (s, "main_rows"));
            }
            let src = match name {
                "rmsnorm" => include_str!("../../../../shaders/rmsnorm.wgsl"),
                "rope" => include_str!("../../../../shaders/rope.wgsl"),
                "attention" => include_str!("../../../../shaders/attention.wgsl"),
                "adam" => include_str!("../../../../shaders/adam.wgsl"),
                "silu_mul" | "add" | "add_into" | "argmax" | "row_logprob" => include_str!("../../../../shaders/elementwise.wgsl"),
                _ => return None,
            };
            let entry: &'static str = match name {
                "silu_mul" => "silu_mul",
                "add" => "add",
                "add_into" => "add_into",
                "argmax" => "argmax",
                "row_logprob" => "row_logprob",
                _ => "main",
            };
            return Some((src.to_string(), entry));
        }
    };
    Some((src, "main"))
}

/// The quantized matmul for one GGML format: the shared body plus that format's `dq32`.
fn quant_matmul_source(format: &str) -> Option<String> {
    let formats = include_str!("../../../../shaders/matmul_quant_formats.wgsl");
    let section = |name: &str| -> Option<&str> {
        let marker = format!("//@format {name}\n");
        let start = formats.find(&marker)? + marker.len();
        let end = formats[start..].find("//@format ").map(|e| start + e).unwrap_or(formats.len());
        Some(&formats[start..end])
    };
    let mut src = include_str!("../../../../shaders/matmul_quant.wgsl").to_string();
    if format.ends_with("_K") {
        src.push_str(section("K_SCALES")?);
    }
    src.push_str(section(format)?);
    Some(src)
}

pub(crate) struct KernelRegistry {
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
}

impl KernelRegistry {
    pub(crate) fn new(_device: &wgpu::Device) -> Self {
        KernelRegistry { pipelines: Mutex::new(HashMap::new()) }
    }

    pub(crate) fn get(&self, gpu: &super::Gpu, name: &str) -> Arc<wgpu::ComputePipeline> {
        let mut map = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(name) {
            return p.clone();
        }
        let (src, entry) = kernel_source(name).unwrap_or_else(|| panic!("unknown kernel '{name}' (a bug in creme-core)"));
        let pipeline = Arc::new(gpu.new_pipeline(name, src, entry));
        map.insert(name.to_string(), pipeline.clone());
        pipeline
    }
}

impl super::Gpu {
    /// Record one dispatch of kernel `name` with `buffers` bound at 0.. of group 0.
    pub(crate) fn dispatch(
        &self,
        enc: &mut wgpu::CommandEncoder,
        name: &str,
        buffers: &[wgpu::BindingResource<'_>],
        groups: [u32; 3],
    ) {
        // A binding over the adapter's limit would be a wgpu validation error: refuse it by name.
        let limit = self.limits.max_storage_buffer_binding_size as u64;
        for (i, r) in buffers.iter().enumerate() {
            if let wgpu::BindingResource::Buffer(b) = r {
                let size = b.size.map(|s| s.get()).unwrap_or_else(|| b.buffer.size() - b.offset);
                if size > limit && b.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
                    self.set_fault(crate::GpuError::TooLarge { tensor: format!("binding {i} of kernel {name}"), bytes: size, limit });
                    return;
                }
            }
        }
        let pipeline = self.kernels.get(self, name);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry { binding: i as u32, resource: r.clone() })
            .collect();
        let bind = self.new_bind_group(&wgpu::BindGroupDescriptor { label: Some(name), layout: &layout, entries: &entries });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(name), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        self.count_dispatch();
    }

    /// Split `total` workgroups into a 2-D grid within the per-dimension limit.
    pub(crate) fn grid(&self, total: u32) -> [u32; 3] {
        let max = self.limits.max_compute_workgroups_per_dimension.max(1);
        if total <= max {
            [total.max(1), 1, 1]
        } else {
            [max, total.div_ceil(max), 1]
        }
    }
}
