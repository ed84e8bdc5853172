//! Keys and values of every layer for a batch of sequences, left-padded to a common length.

use super::config::ModelConfig;
use crate::backend::{Backend, DType, Device, KvLayer, Tensor};
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
    /// Copy every layer's keys and values at positions `positions` of `src`'s first sequence
    /// into this cache's sequence `dst_slot`, `shift` positions later (a sequence moved into a
    /// left-padded batch: its pad grows by `shift`, its positions stay).
    pub fn copy_shifted(
        &mut self,
        dev: &Device,
        src: &KvCache,
        dst_slot: usize,
        positions: std::ops::Range<usize>,
        shift: usize,
    ) -> Result<(), ModelError> {
        let n = positions.len();
        let (s0, d0) = (
            positions.start,
            dst_slot * self.capacity + positions.start + shift,
        );
        if positions.end > src.capacity || positions.end + shift > self.capacity {
            return Err(ModelError::Format(format!(
                "positions {positions:?} shifted by {shift} do not fit caches of {} and {}",
                src.capacity, self.capacity
            )));
        }
        for (s, d) in src.layers.iter().zip(&mut self.layers) {
            dev.copy_rows(&s.k, s0, &mut d.k, d0, n)?;
            dev.copy_rows(&s.v, s0, &mut d.v, d0, n)?;
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

/// Keys and values of the first `layers.len()` layers over positions `0..rows` of a cache's first
/// sequence, on the host: what a forward resumed at a deeper layer leaves uncomputed
/// ([`KvCache::write_prefix`]). `width` floats per row (n_kv_heads * head_dim).
#[derive(Debug)]
pub struct KvPrefix {
    pub rows: usize,
    pub width: usize,
    /// Per layer, (keys, values), [rows, width] each.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl KvPrefix {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.len() * 2 * self.rows * self.width * std::mem::size_of::<f32>()
    }
}

impl KvCache {
    /// The keys and values of layers `0..layers`, positions `0..rows`, of sequence 0. None where
    /// the cache does not hold them in f32 (an f16 cache would round them on the way back).
    pub async fn read_prefix(
        &self,
        dev: &Device,
        layers: usize,
        rows: usize,
    ) -> Result<Option<KvPrefix>, ModelError> {
        let Some(first) = self.layers.first() else {
            return Ok(None);
        };
        if dev.kv_dtype() != DType::F32 || rows > self.capacity || layers > self.layers.len() {
            return Ok(None);
        }
        let width = first.k.width;
        let mut out = Vec::with_capacity(layers);
        for l in &self.layers[..layers] {
            let k = dev.read(&l.k, rows * width).await?;
            let v = dev.read(&l.v, rows * width).await?;
            out.push((k, v));
        }
        Ok(Some(KvPrefix {
            rows,
            width,
            layers: out,
        }))
    }

    /// Put `p` back at positions `0..p.rows` of sequence 0 (the cache's `len` is the caller's).
    pub fn write_prefix(&mut self, dev: &Device, p: &KvPrefix) -> Result<(), ModelError> {
        if p.rows > self.capacity || p.layers.len() > self.layers.len() {
            return Err(ModelError::Format(format!(
                "a key/value prefix of {} layers x {} positions does not fit a cache of {} x {}",
                p.layers.len(),
                p.rows,
                self.layers.len(),
                self.capacity
            )));
        }
        for ((k, v), layer) in p.layers.iter().zip(&mut self.layers) {
            let k = dev.upload("k prefix", p.rows, p.width, k)?;
            let v = dev.upload("v prefix", p.rows, p.width, v)?;
            dev.copy_rows(&k, 0, &mut layer.k, 0, p.rows)?;
            dev.copy_rows(&v, 0, &mut layer.v, 0, p.rows)?;
        }
        Ok(())
    }
}
