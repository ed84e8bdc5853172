//! GPU side: context (adapter, features, limits), buffers, the kernel registry and the ops
//! that dispatch them. Every op has a CPU reference in [`crate::cpu`].

mod buffers;
mod context;
mod resources;
pub(crate) mod kernels;
pub mod ops;
mod weight;
pub(crate) mod layers;

pub use weight::{GpuWeight, WeightChunk, WeightUpload};
pub use context::{list_adapters, AdapterReport, Gpu, GpuOptions};
pub use resources::{GpuCounts, ParamSlot, PooledBuffer};
