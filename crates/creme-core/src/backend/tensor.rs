//! The typed tensor every backend op takes: dtype, shape, and the backend's own storage. Shapes
//! are checked here, in one place, before any backend touches the data.

use crate::error::ModelError;
use crate::gpu::GpuWeight;
use crate::quant::GgmlType;

/// Element type of an activation tensor (weights carry a [`GgmlType`] instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Indices (positions, pads). Stored as the same 4-byte words as f32.
    U32,
    /// Half floats: the wgpu backend's KV cache with `--kv-f16` on an adapter with shader-f16
    /// (see [`super::Backend::kv_dtype`]). The host writes and reads f32s, converted on the way.
    F16,
}

impl DType {
    /// Bytes per element in device memory.
    pub fn bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

/// Where a tensor's data lives.
pub enum Storage {
    /// A buffer from the device's pool, returned to it when the tensor is dropped.
    Wgpu(crate::gpu::PooledBuffer),
    /// Host memory; U32 tensors keep their bits in the f32 words.
    Cpu(Vec<f32>),
}

/// A row-major tensor of 4-byte elements: `rows` x `width` (every op here is on row blocks).
pub struct Tensor {
    pub dtype: DType,
    pub rows: usize,
    pub width: usize,
    pub storage: Storage,
}

impl Tensor {
    pub fn len(&self) -> usize {
        self.rows * self.width
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn wgpu(&self) -> Result<&wgpu::Buffer, ModelError> {
        match &self.storage {
            Storage::Wgpu(b) => Ok(&**b),
            Storage::Cpu(_) => Err(mismatch("a CPU tensor given to the wgpu backend")),
        }
    }
    pub fn cpu(&self) -> Result<&[f32], ModelError> {
        match &self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Wgpu(_) => Err(mismatch("a GPU tensor given to the CPU backend")),
        }
    }
    pub fn cpu_mut(&mut self) -> Result<&mut [f32], ModelError> {
        match &mut self.storage {
            Storage::Cpu(v) => Ok(v),
            Storage::Wgpu(_) => Err(mismatch("a GPU tensor given to the CPU backend")),
        }
    }
    /// The op `op` needs at least `rows` rows of `width`.
    pub fn check(&self, op: &str, rows: usize, width: usize) -> Result<(), ModelError> {
        if self.width != width || self.rows < rows {
            return Err(ModelError::Format(format!(
                "{op}: tensor is [{} x {}], needs [{rows} x {width}]",
                self.rows, self.width
            )));
        }
        Ok(())
    }
}

fn mismatch(what: &str) -> ModelError {
    ModelError::Format(format!("backend mismatch: {what} (a bug in creme-core)"))
}

/// A 2-D weight [rows, cols] (rows = output features), kept in its GGUF format by each backend.
pub enum Weight {
    Wgpu(GpuWeight),
    #[cfg(not(target_arch = "wasm32"))]
    Cpu(super::cpu::qmatmul::CpuWeight),
}

impl Weight {
    pub fn dtype(&self) -> GgmlType {
        match self {
            Weight::Wgpu(w) => w.dtype,
            #[cfg(not(target_arch = "wasm32"))]
            Weight::Cpu(w) => w.dtype(),
        }
    }
    pub fn rows(&self) -> usize {
        match self {
            Weight::Wgpu(w) => w.rows,
            #[cfg(not(target_arch = "wasm32"))]
            Weight::Cpu(w) => w.rows(),
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            Weight::Wgpu(w) => w.cols,
            #[cfg(not(target_arch = "wasm32"))]
            Weight::Cpu(w) => w.cols(),
        }
    }
    pub fn wgpu(&self) -> Result<&GpuWeight, ModelError> {
        match self {
            Weight::Wgpu(w) => Ok(w),
            #[cfg(not(target_arch = "wasm32"))]
            Weight::Cpu(_) => Err(mismatch("a CPU weight given to the wgpu backend")),
        }
    }
    #[cfg(not(target_arch = "wasm32"))]
    pub fn cpu(&self) -> Result<&super::cpu::qmatmul::CpuWeight, ModelError> {
        match self {
            Weight::Cpu(w) => Ok(w),
            Weight::Wgpu(_) => Err(mismatch("a GPU weight given to the CPU backend")),
        }
    }
}
