//! Weights on the GPU, kept in their GGUF format with the blocks laid out so that what a kernel
//! reads together lies in aligned 16 bytes (see [`crate::quant::to_gpu_layout`]: the kernels read
//! quants with vec4 loads). A tensor larger than one storage binding (Qwen's
//! 138 MiB output head) is split by rows into several buffers; the attention projections of a
//! layer share one buffer, so that one matmul can compute all three (see [`Gpu::upload_weight_group`]).

use super::Gpu;
use crate::error::GpuError;
use crate::quant::{repack_as_q8_0, to_gpu_layout, GgmlType};

/// One row-range of a weight in a buffer, from byte `byte_off`.
#[derive(Clone)]
pub struct WeightChunk {
    pub buffer: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
    pub byte_off: u64,
}

/// A 2-D weight [rows, cols] (rows = output features) in GGUF blocks. A clone shares the buffers.
#[derive(Clone)]
pub struct GpuWeight {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Rows lie in groups of this many with their units interleaved (see
    /// [`crate::quant::to_gpu_layout`]; `Gpu::weight_row_group`).
    pub row_group: usize,
    pub chunks: Vec<WeightChunk>,
}

impl GpuWeight {
    /// Bytes of one row in the buffer (the GPU's layout).
    pub fn row_bytes(&self) -> usize {
        self.dtype.gpu_row_bytes(self.cols)
    }

    /// `parts` as one weight of all their rows, where they lie back to back in one buffer in that
    /// order with the same format and width (as [`Gpu::upload_weight_group`] puts them), and all but
    /// the last in whole row groups (else a padded group would fall between them).
    pub fn joined(parts: &[&GpuWeight]) -> Option<GpuWeight> {
        let first = parts.first()?;
        let c0 = match first.chunks.as_slice() {
            [c] => c,
            _ => return None,
        };
        let mut next = c0.byte_off;
        for (i, w) in parts.iter().enumerate() {
            let [c] = w.chunks.as_slice() else {
                return None;
            };
            if w.dtype != first.dtype
                || w.cols != first.cols
                || w.row_group != first.row_group
                || c.buffer != c0.buffer
                || c.byte_off != next
            {
                return None;
            }
            if i + 1 < parts.len() && !w.rows.is_multiple_of(w.row_group) {
                return None;
            }
            next += w.dtype.gpu_bytes(w.rows, w.cols, w.row_group) as u64;
        }
        let rows = parts.iter().map(|w| w.rows).sum();
        let chunk = WeightChunk {
            buffer: c0.buffer.clone(),
            row0: 0,
            rows,
            byte_off: c0.byte_off,
        };
        let name = parts
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join("+");
        Some(GpuWeight {
            name,
            dtype: first.dtype,
            rows,
            cols: first.cols,
            row_group: first.row_group,
            chunks: vec![chunk],
        })
    }
}

/// One weight of a group to upload: GGUF name, format, shape and bytes.
pub struct WeightUpload<'a> {
    pub name: &'a str,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub bytes: &'a [u8],
}

impl Gpu {
    /// Upload a weight's GGUF bytes in the GPU's layout, split by rows so that no buffer
    /// exceeds the binding limit.
    pub fn upload_weight(
        &self,
        name: &str,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<GpuWeight, GpuError> {
        // A chunk holds whole row groups.
        let group_bytes = dtype.gpu_row_bytes(cols) * self.weight_row_group;
        let limit = self.max_binding_bytes() as usize;
        if group_bytes + 4 > limit {
            return Err(GpuError::TooLarge {
                tensor: name.into(),
                bytes: group_bytes as u64,
                limit: limit as u64,
            });
        }
        let rows_per_chunk = (limit - 4) / group_bytes * self.weight_row_group;
        let part = WeightUpload {
            name,
            dtype,
            rows,
            cols,
            bytes,
        };
        self.upload_weight_in_chunks(&part, rows_per_chunk)
    }

    /// [`Gpu::upload_weight`] with `rows_per_chunk` rows in each buffer, rounded up to whole row
    /// groups (tests split small weights with it the way a weight over the binding limit is
    /// split).
    pub fn upload_weight_in_chunks(
        &self,
        part: &WeightUpload<'_>,
        rows_per_chunk: usize,
    ) -> Result<GpuWeight, GpuError> {
        let (t, rows, rg) = (part.dtype, part.rows, self.weight_row_group);
        check_bytes(part.name, t, rows, part.cols, part.bytes)?;
        let gguf_row_bytes = t.row_bytes(part.cols);
        let rows_per_chunk = rows_per_chunk.max(1).next_multiple_of(rg);
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let data = &part.bytes[row0 * gguf_row_bytes..(row0 + n) * gguf_row_bytes];
            let label = format!("{}[{row0}..]", part.name);
            chunks.push(WeightChunk {
                buffer: self.upload(&label, &to_gpu_layout(t, part.cols, rg, data)),
                row0,
                rows: n,
                byte_off: 0,
            });
            row0 += n;
        }
        Ok(GpuWeight {
            name: part.name.into(),
            dtype: t,
            rows,
            cols: part.cols,
            row_group: rg,
            chunks,
        })
    }

    /// Upload weights that one matmul may compute together (a layer's query, key and value
    /// projections) back to back in one buffer, in one format: theirs if they share it, Q8_0 if
    /// they are a mix of Q4_0, Q5_0 and Q8_0 (lossless, see [`repack_as_q8_0`]). Where neither
    /// holds, or the group passes one binding, each is uploaded on its own.
    pub fn upload_weight_group(
        &self,
        parts: &[WeightUpload<'_>],
    ) -> Result<Vec<GpuWeight>, GpuError> {
        for p in parts {
            check_bytes(p.name, p.dtype, p.rows, p.cols, p.bytes)?;
        }
        let separately = || {
            parts
                .iter()
                .map(|p| self.upload_weight(p.name, p.dtype, p.rows, p.cols, p.bytes))
                .collect()
        };
        let Some(first) = parts.first() else {
            return Ok(Vec::new());
        };
        let dtype = if parts.iter().all(|p| p.dtype == first.dtype) {
            first.dtype
        } else {
            GgmlType::Q8_0
        };
        if parts.iter().any(|p| p.cols != first.cols) {
            return separately();
        }
        let rg = self.weight_row_group;
        let mut packed = Vec::new();
        let mut offsets = Vec::new();
        for p in parts {
            let bytes = &p.bytes[..p.rows * p.dtype.row_bytes(p.cols)];
            let Some(repacked) = (if p.dtype == dtype {
                Some(bytes.to_vec())
            } else {
                repack_as_q8_0(p.dtype, bytes)
            }) else {
                return separately();
            };
            offsets.push(packed.len() as u64);
            packed.extend_from_slice(&to_gpu_layout(dtype, p.cols, rg, &repacked));
        }
        if packed.len() as u64 + 4 > self.max_binding_bytes() || packed.len() % 16 != 0 {
            return separately();
        }
        let buffer = self.upload(&format!("{} ..", first.name), &packed);
        Ok(parts
            .iter()
            .zip(offsets)
            .map(|(p, byte_off)| GpuWeight {
                name: p.name.into(),
                dtype,
                rows: p.rows,
                cols: p.cols,
                row_group: rg,
                chunks: vec![WeightChunk {
                    buffer: buffer.clone(),
                    row0: 0,
                    rows: p.rows,
                    byte_off,
                }],
            })
            .collect())
    }
}

fn check_bytes(
    name: &str,
    dtype: GgmlType,
    rows: usize,
    cols: usize,
    bytes: &[u8],
) -> Result<(), GpuError> {
    // The matmul kernels walk a row in pieces of 32 values (one block of the 32-value formats).
    if cols % 32 != 0 {
        return Err(GpuError::Shape {
            op: "upload_weight",
            detail: format!(
                "'{name}': rows of {cols} values; the GPU kernels need a multiple of 32"
            ),
        });
    }
    if cols % dtype.block_elems() != 0 || bytes.len() < rows * dtype.row_bytes(cols) {
        return Err(GpuError::Shape {
            op: "upload_weight",
            detail: format!(
                "'{name}': {} bytes for {rows}x{cols} {}",
                bytes.len(),
                dtype.name()
            ),
        });
    }
    Ok(())
}
