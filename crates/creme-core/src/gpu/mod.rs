//! GPU side: context (adapter, features, limits), buffers, the kernel registry and the ops
//! that dispatch them. Every op has a CPU reference in [`crate::cpu`].

mod buffers;
mod context;
mod profile;
mod resources;
pub(crate) mod kernels;
pub mod ops;
mod weight;
pub(crate) mod layers;

pub use weight::{GpuWeight, WeightChunk, WeightUpload};
pub use context::{list_adapters, AdapterReport, Gpu, GpuOptions, QmmPolicy};
pub use profile::KernelTime;
pub use resources::{GpuCounts, ParamSlot, PooledBuffer, Recorder};
