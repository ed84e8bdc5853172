//! Keys and values of every layer for a batch of sequences, left-padded to a common length.

use super::config::ModelConfig;
use crate::backend::{Backend, Device, KvLayer, Tensor};
use crate::error::{GpuError, ModelError};

pub struct KvCache {
    pub(crate) layers: Vec<KvLayer>,
    pub batch: usize,
    pub capacity: usize,
    /// Left-pad length of each sequence.
    pub pad: Vec<u32>,
    pub(crate) pad_tensor: Tensor,
    /// Positions filled so far (same for every sequence).
    pub len: usize,
}

impl KvCache {
    /// Copy keys/values of `layers` at cache positions `positions` from `src`'s sequence
    /// `src_slot` into this cache's sequence `dst_slot` (both caches of the same model).
    pub fn copy_from(
        &mut self,
        dev: &Device,
        src: &KvCache,
        src_slot: usize,
        dst_slot: usize,
        layers: std::ops::Range<usize>,
        positions: std::ops::Range<usize>,
    ) -> Result<(), ModelError> {
        let n = positions.len();
        let (s0, d0) = (
            src_slot * src.capacity + positions.start,
            dst_slot * self.capacity + positions.start,
        );
        for l in layers {
            dev.copy_rows(&src.layers[l].k, s0, &mut self.layers[l].k, d0, n)?;
            dev.copy_rows(&src.layers[l].v, s0, &mut self.layers[l].v, d0, n)?;
        }
        Ok(())
    }
}

impl KvCache {
    /// An empty cache for `pad.len()` sequences of up to `capacity` positions of a model with
    /// `cfg`, whose positions end at `max_positions` ([`super::Model::new_cache`]).
    pub(crate) fn new(
        dev: &Device,
        cfg: &ModelConfig,
        max_positions: usize,
        pad: Vec<u32>,
        capacity: usize,
    ) -> Result<KvCache, ModelError> {
        if capacity > max_positions {
            return Err(ModelError::Format(format!(
                "context of {capacity} tokens is over this model's limit of {max_positions} here"
            )));
        }
        let kvw = cfg.n_kv_heads * cfg.head_dim;
        let rows = pad.len() * capacity;
        let bytes = (rows * kvw * dev.kv_dtype().bytes()) as u64;
        if bytes > dev.max_tensor_bytes() {
            return Err(GpuError::TooLarge {
                tensor: "kv cache".into(),
                bytes,
                limit: dev.max_tensor_bytes(),
            }
            .into());
        }
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(KvLayer {
                k: dev.kv_tensor("k cache", rows, kvw, None)?,
                v: dev.kv_tensor("v cache", rows, kvw, None)?,
            });
        }
        Ok(KvCache {
            layers,
            batch: pad.len(),
            capacity,
            pad_tensor: dev.upload_u32("pad", &pad)?,
            pad,
            len: 0,
        })
    }
}
