//! Weights on the GPU, kept in their GGUF format. A tensor larger than one storage binding (Qwen's
//! 138 MiB output head) is split by rows into several buffers.

use super::Gpu;
use crate::error::GpuError;
use crate::quant::GgmlType;

/// One row-range of a weight in its own buffer.
pub struct WeightChunk {
    pub buffer: wgpu::Buffer,
    pub row0: usize,
    pub rows: usize,
}

/// A 2-D weight [rows, cols] (rows = output features) in GGUF blocks.
pub struct GpuWeight {
    pub name: String,
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<WeightChunk>,
}

impl GpuWeight {
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.cols)
    }
}

impl Gpu {
    /// Upload a weight's raw GGUF bytes, split by rows so that no buffer exceeds the binding limit.
    pub fn upload_weight(&self, name: &str, dtype: GgmlType, rows: usize, cols: usize, bytes: &[u8]) -> Result<GpuWeight, GpuError> {
        if cols % dtype.block_elems() != 0 || bytes.len() < rows * dtype.row_bytes(cols) {
            return Err(GpuError::Shape {
                op: "upload_weight",
                detail: format!("'{name}': {} bytes for {rows}x{cols} {}", bytes.len(), dtype.name()),
            });
        }
        let row_bytes = dtype.row_bytes(cols);
        let limit = self.max_binding_bytes() as usize;
        let rows_per_chunk = (limit.saturating_sub(4) / row_bytes).min(rows).max(1);
        if row_bytes + 4 > limit {
            return Err(GpuError::TooLarge { tensor: name.into(), bytes: row_bytes as u64, limit: limit as u64 });
        }
        let mut chunks = Vec::new();
        let mut row0 = 0;
        while row0 < rows {
            let n = rows_per_chunk.min(rows - row0);
            let data = &bytes[row0 * row_bytes..(row0 + n) * row_bytes];
            chunks.push(WeightChunk { buffer: self.upload(&format!("{name}[{row0}..]"), data), row0, rows: n });
            row0 += n;
        }
        Ok(GpuWeight { name: name.into(), dtype, rows, cols, chunks })
    }
}
