//! GPU side: context (adapter, features, limits), buffers, the kernel registry and the ops
//! that dispatch them. Every op has a CPU reference in [`crate::cpu`].

mod bindings;
mod buffers;
pub use buffers::PendingRead;
mod context;
pub(crate) mod kernels;
pub(crate) mod key;
pub(crate) mod layers;
pub mod ops;
mod profile;
mod resources;
#[cfg(test)]
mod shader_tests;
mod weight;
pub(crate) mod wgsl;

pub use context::{list_adapters, AdapterReport, Gpu, GpuOptions, QmmPolicy};
pub use profile::KernelTime;
pub use resources::{GpuCounts, ParamSlot, PooledBuffer, Recorder};
pub use weight::{GpuWeight, WeightChunk, WeightUpload};
