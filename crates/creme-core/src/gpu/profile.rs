//! Per-kernel GPU time from timestamp queries, for `creme bench`: while profiling is on, every
//! compute pass writes a timestamp at its start and its end; each submission resolves them and the
//! host adds the differences up per kernel. Reading them back blocks after every submission, so it
//! is off unless asked for, and native only (the browser cannot block).

use std::collections::BTreeMap;
use std::sync::mpsc;

use serde::Serialize;

use super::Gpu;

/// Queries in the set: wgpu's limit for one query set (two per pass).
const QUERIES: u32 = 4096;

/// GPU time of one kernel over a profiled stretch.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTime {
    pub kernel: String,
    pub dispatches: u64,
    pub gpu_ns: f64,
}

pub(crate) struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Kernel of each pass recorded since the last resolve: pass i wrote queries 2i and 2i + 1.
    passes: Vec<String>,
    /// Kernel name -> (dispatches, nanoseconds).
    totals: BTreeMap<String, (u64, f64)>,
    /// Passes past the set's capacity before a submission: run, not timed.
    untimed: u64,
}

impl Gpu {
    /// Switch per-kernel timing on; false where the adapter has no timestamp queries (or in the
    /// browser), and then nothing changes.
    pub fn start_profiling(&self) -> bool {
        if cfg!(target_arch = "wasm32") || !self.report.timestamp_query {
            return false;
        }
        self.flush();
        let set = self.new_query_set("kernel timestamps", QUERIES);
        let bytes = QUERIES as u64 * 8;
        let usage = wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC;
        let resolve = self.new_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        let usage = wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST;
        let readback = self.new_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: bytes,
            usage,
            mapped_at_creation: false,
        });
        let profiler = Profiler {
            set,
            resolve,
            readback,
            passes: Vec::new(),
            totals: BTreeMap::new(),
            untimed: 0,
        };
        *self.profiler.lock().unwrap_or_else(|e| e.into_inner()) = Some(profiler);
        true
    }

    /// Switch timing off and return the time per kernel since [`Gpu::start_profiling`], the
    /// slowest first, and the number of passes that ran untimed.
    pub fn stop_profiling(&self) -> (Vec<KernelTime>, u64) {
        self.flush();
        let Some(p) = self
            .profiler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return (Vec::new(), 0);
        };
        let mut times: Vec<KernelTime> = p
            .totals
            .into_iter()
            .map(|(kernel, (dispatches, gpu_ns))| KernelTime {
                kernel,
                dispatches,
                gpu_ns,
            })
            .collect();
        times.sort_by(|a, b| b.gpu_ns.total_cmp(&a.gpu_ns));
        (times, p.untimed)
    }

    /// Where the next compute pass (of kernel `name`, for weight `role`) writes its timestamps,
    /// while profiling.
    pub(crate) fn pass_timestamps(
        &self,
        name: &str,
        role: Option<&str>,
    ) -> Option<(wgpu::QuerySet, u32)> {
        let mut guard = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let p = guard.as_mut()?;
        if p.passes.len() as u32 * 2 >= QUERIES {
            p.untimed += 1;
            return None;
        }
        p.passes.push(match role {
            Some(r) => format!(
                "{name} {}",
                r.split('+').map(weight_role).collect::<Vec<_>>().join("+")
            ),
            None => name.to_string(),
        });
        Some((p.set.clone(), (p.passes.len() as u32 - 1) * 2))
    }

    /// Before a submission: resolve the timestamps written so far into the readback buffer.
    /// True when there are some (then [`Gpu::collect_timestamps`] follows the submission).
    pub(crate) fn resolve_timestamps(&self, enc: &mut wgpu::CommandEncoder) -> bool {
        let guard = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = guard.as_ref().filter(|p| !p.passes.is_empty()) else {
            return false;
        };
        let n = p.passes.len() as u32 * 2;
        enc.resolve_query_set(&p.set, 0..n, &p.resolve, 0);
        enc.copy_buffer_to_buffer(&p.resolve, 0, &p.readback, 0, n as u64 * 8);
        true
    }

    /// After that submission: wait for it, and add each pass's time to its kernel.
    pub(crate) fn collect_timestamps(&self) {
        let mut guard = self.profiler.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = guard.as_mut() else { return };
        let n = p.passes.len() * 2;
        let slice = p.readback.slice(..n as u64 * 8);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        // A failed readback (device lost) is reported by the next check; these passes go untimed.
        let mut ticks: Vec<u64> = Vec::new();
        if let Ok(Ok(())) = rx.recv() {
            if let Ok(view) = slice.get_mapped_range() {
                ticks = bytemuck::pod_collect_to_vec(&view[..]);
            }
            p.readback.unmap();
        }
        let period = self.queue.get_timestamp_period() as f64;
        for (i, name) in p.passes.drain(..).enumerate() {
            let Some(&[start, end]) = ticks
                .get(2 * i..2 * i + 2)
                .map(|s| <&[u64; 2]>::try_from(s).expect("two"))
            else {
                p.untimed += 1;
                continue;
            };
            let entry = p.totals.entry(name).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += end.saturating_sub(start) as f64 * period;
        }
    }
}

/// "blk.3.ffn_down.weight" -> "ffn_down": one entry per kind of weight, not per layer.
/// (A joined weight's name is its parts' names joined by '+'.)
fn weight_role(name: &str) -> &str {
    let name = name.strip_suffix(".weight").unwrap_or(name);
    match name.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map_or(rest, |(_, r)| r),
        None => name,
    }
}
