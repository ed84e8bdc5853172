//! Buffer creation and readback. Readback is async: in the browser nothing may block on the GPU.

use super::Gpu;
use crate::error::GpuError;

impl Gpu {
    /// A storage buffer holding `data`, readable and writable by kernels and copyable both ways.
    pub fn upload<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if !self.fits(label, bytes.len() as u64) {
            return self.storage_unchecked(label, 16);
        }
        // wgpu rejects zero-sized bindings, and kernels may view a buffer as vec4s: keep at least
        // 16 bytes.
        let padded;
        let contents = if bytes.len() % 4 != 0 || bytes.len() < 16 {
            let mut v = bytes.to_vec();
            v.resize(bytes.len().next_multiple_of(4).max(16), 0);
            padded = v;
            &padded[..]
        } else {
            bytes
        };
        self.new_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: self.tensor_usage(),
        })
    }

    /// A zeroed storage buffer of `bytes` bytes (rounded up to a word).
    pub fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        if !self.fits(label, bytes) {
            return self.storage_unchecked(label, 16);
        }
        self.storage_unchecked(label, bytes)
    }

    /// Whether a buffer of `bytes` is within the adapter's limits; if not, the fault names it and
    /// the caller gets a placeholder (the error surfaces at the next readback or check).
    fn fits(&self, label: &str, bytes: u64) -> bool {
        let limit = self.limits.max_buffer_size;
        if bytes > limit {
            self.set_fault(GpuError::TooLarge {
                tensor: label.to_string(),
                bytes,
                limit,
            });
            return false;
        }
        true
    }

    fn storage_unchecked(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.new_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.next_multiple_of(4).max(16),
            usage: self.tensor_usage(),
            mapped_at_creation: false,
        })
    }

    /// Kernel parameters: a slot in the uniform arena (no buffer made per dispatch).
    pub fn uniform<T: bytemuck::Pod>(&self, _label: &str, data: &T) -> super::resources::ParamSlot {
        self.param_slot(bytemuck::bytes_of(data))
    }

    /// Copy `len` elements of type T from the start of `src` back to the CPU.
    pub async fn read<T: bytemuck::Pod>(
        &self,
        src: &wgpu::Buffer,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        self.read_from(src, 0, len).await
    }

    /// Copy `len` bytes of `src` from byte `offset` (any alignment) back to the CPU.
    pub async fn read_bytes(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, GpuError> {
        let start = offset & !3;
        let skip = (offset - start) as usize;
        let mut bytes: Vec<u8> = self.read_from(src, start, skip + len).await?;
        bytes.drain(..skip);
        Ok(bytes)
    }

    /// Copy `len` elements of type T of `src` from byte `offset` (a multiple of 4) back to the CPU.
    async fn read_from<T: bytemuck::Pod>(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<Vec<T>, GpuError> {
        if len == 0 {
            return self.check().map(|_| Vec::new());
        }
        let bytes = self.start_read(src, offset, len * std::mem::size_of::<T>())?;
        Ok(bytemuck::pod_collect_to_vec(
            &self.finish_read(bytes).await?,
        ))
    }

    /// Start copying `len` bytes of `src` from byte `offset` (a multiple of 4) back to the CPU:
    /// the copy is submitted with the pending commands that produce `src`, and commands recorded
    /// after this run while the CPU waits in [`Gpu::finish_read`] (decoding reads a step's token
    /// ids while the next step runs).
    pub fn start_read(
        &self,
        src: &wgpu::Buffer,
        offset: u64,
        len: usize,
    ) -> Result<PendingRead, GpuError> {
        self.check()?;
        let bytes = len as u64;
        let size = bytes.div_ceil(4).max(1) * 4;
        let staging = self.staging(size);
        // Never past the buffer's end (a length in bytes that is not a multiple of 4 rounds up).
        let size = size.min(src.size().saturating_sub(offset));
        if bytes > 0 {
            self.record(|enc| {
                enc.encoder()
                    .copy_buffer_to_buffer(src, offset, &staging, 0, size)
            });
        }
        let submission = self.flush();
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        Ok(PendingRead {
            staging,
            bytes: len,
            submission,
            mapped: rx,
        })
    }

    /// The bytes of a read started by [`Gpu::start_read`], once the GPU has done the work
    /// submitted before it (natively this blocks until then; in the browser it awaits).
    pub async fn finish_read(&self, read: PendingRead) -> Result<Vec<u8>, GpuError> {
        let PendingRead {
            staging,
            bytes,
            submission,
            mapped,
        } = read;
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: submission,
                timeout: None,
            })
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        #[cfg(target_arch = "wasm32")]
        let _ = submission;
        mapped
            .await
            .map_err(|_| GpuError::Readback("the map callback was dropped (device lost?)".into()))?
            .map_err(|e| GpuError::Readback(e.to_string()))?;
        let out = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| GpuError::Readback(e.to_string()))?;
            view[..bytes].to_vec()
        };
        staging.unmap();
        self.return_staging(staging);
        // Anything that went wrong while producing the result (it may be garbage then).
        self.check()?;
        Ok(out)
    }
}

/// A readback under way (see [`Gpu::start_read`]).
pub struct PendingRead {
    staging: wgpu::Buffer,
    bytes: usize,
    submission: Option<wgpu::SubmissionIndex>,
    mapped: futures_channel::oneshot::Receiver<Result<(), wgpu::BufferAsyncError>>,
}
