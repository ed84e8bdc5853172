//! The token embedding table, which the backends look tokens up in.

use super::{Backend, BackendKind, Device, Weight};
use crate::error::ModelError;
use crate::quant::{dequantize, GgmlType};

/// The token embedding table in its GGUF format: on the host (a CPU lookup dequantizes a few
/// rows) and, for a backend that looks tokens up on the device, there too (the tied output head's
/// buffers where the model ties them, so nothing is uploaded twice).
// The host copy serves the CPU backend's lookups, which wasm32 does not build: there `dtype`,
// `bytes` and `row` go unused (and the copy could be dropped; not done yet).
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub struct Embedding {
    pub(crate) dtype: GgmlType,
    pub(crate) cols: usize,
    pub(crate) rows: usize,
    pub(crate) bytes: Vec<u8>,
    pub(crate) device: Option<Weight>,
}

impl Embedding {
    /// A table of `rows` x `cols` values in `dtype`: kept on the host, and on a wgpu device also
    /// on the GPU, where `shared` (the tied output head's weight) is used rather than a second
    /// upload of the same bytes.
    pub fn new(
        dev: &Device,
        dtype: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
        shared: Option<&Weight>,
    ) -> Result<Embedding, ModelError> {
        let need = rows * dtype.row_bytes(cols);
        if bytes.len() < need {
            return Err(ModelError::Truncated {
                what: "token embedding table".into(),
                need: need as u64,
                have: bytes.len() as u64,
            });
        }
        let device = match (dev.kind(), shared) {
            (BackendKind::Cpu, _) => None,
            (BackendKind::Wgpu, Some(w)) => Some(Weight::Wgpu(w.wgpu()?.clone())),
            (BackendKind::Wgpu, None) => {
                Some(dev.upload_weight("token_embd.weight", dtype, rows, cols, bytes)?)
            }
        };
        Ok(Embedding {
            dtype,
            cols,
            rows,
            bytes: bytes[..need].to_vec(),
            device,
        })
    }

    /// Row `id`, dequantized.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub(crate) fn row(&self, id: u32) -> Result<Vec<f32>, ModelError> {
        if id as usize >= self.rows {
            return Err(ModelError::Format(format!(
                "token id {id} is outside the vocabulary of {}",
                self.rows
            )));
        }
        let rb = self.dtype.row_bytes(self.cols);
        dequantize(
            self.dtype,
            &self.bytes[id as usize * rb..(id as usize + 1) * rb],
            self.cols,
        )
    }
}
