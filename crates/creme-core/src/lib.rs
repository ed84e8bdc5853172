//! creme-core: run small code LLMs with WGSL kernels on wgpu (native and browser), trace where a
//! perturbed prompt goes wrong, and edit one layer to fix it (CREME, arXiv 2507.16407).
//!
//! No files, sockets or processes here: bytes in, results out. The API is async so the same code
//! runs in the browser; native callers use the `*_blocking` wrappers.

pub mod align;
pub mod backend;
pub mod bench;
pub mod calibration;
pub mod command_line;
pub mod covariance;
pub mod cpu;
pub mod dataset;
pub mod dataset_files;
pub mod diagnose;
pub mod draft;
pub mod edit;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod generate;
pub mod gpu;
pub mod hooks;
pub mod jsonl;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod pass_trace;
pub mod patch;
pub mod perturb;
pub mod perturb_check;
pub mod pipeline;
pub mod progress;
pub mod quant;
pub mod quant_check;
pub mod report;
pub mod sampling;
pub mod sets;
pub mod stats;
pub mod trace;
pub mod untrusted;
pub mod versioned;

pub use backend::{Backend, BackendKind, Device, Tensor};
pub use error::{GpuError, ModelError};
pub use gpu::{AdapterReport, Gpu, GpuOptions};
/// The wgpu version this crate is built on (its buffers appear in the hook and trace APIs).
pub use wgpu;
