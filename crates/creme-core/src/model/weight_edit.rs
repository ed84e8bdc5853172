//! Replacing and restoring one layer's W_down (a CREME edit applied to a loaded model).

use super::forward::{DownState, Model};
use crate::backend::{Backend, Device};
use crate::error::ModelError;
use crate::quant::GgmlType;

impl Model {
    /// W_down of layer `l` as f32 [d_model, d_ff] (dequantized from the file's blocks, or the
    /// applied edit).
    pub async fn ffn_down_f32(&self, dev: &Device, l: usize) -> Result<Vec<f32>, ModelError> {
        let layer = self
            .layers
            .get(l)
            .ok_or_else(|| ModelError::Format(format!("layer {l} of {}", self.cfg.n_layers)))?;
        dev.weight_f32(&layer.w.down).await
    }

    /// Replace W_down of layer `l` by an f32 matrix [d_model, d_ff] (an edit). The file's weight is
    /// kept so that [`Model::revert_ffn_down`] restores it.
    pub fn set_ffn_down(&mut self, dev: &Device, l: usize, w: &[f32]) -> Result<(), ModelError> {
        let (d, f) = (self.cfg.d_model, self.cfg.d_ff);
        if w.len() != d * f {
            return Err(ModelError::Format(format!(
                "edited W_down has {} values, expected {d} x {f}",
                w.len()
            )));
        }
        let n = self.cfg.n_layers;
        let layer = self
            .layers
            .get_mut(l)
            .ok_or_else(|| ModelError::Format(format!("layer {l} of {n}")))?;
        let new = dev.upload_weight(
            &format!("blk.{l}.ffn_down.weight (edited)"),
            GgmlType::F32,
            d,
            f,
            bytemuck::cast_slice(w),
        )?;
        let old = std::mem::replace(&mut layer.w.down, new);
        let was = std::mem::replace(&mut layer.down_state, DownState::of_edit(w));
        layer.down_replaced.push((old, was));
        Ok(())
    }

    /// Undo the last [`Model::set_ffn_down`] on layer `l`: the weights before it come back (no-op
    /// when it is not edited).
    pub fn revert_ffn_down(&mut self, l: usize) {
        if let Some(layer) = self.layers.get_mut(l) {
            if let Some((w, state)) = layer.down_replaced.pop() {
                layer.w.down = w;
                layer.down_state = state;
            }
        }
    }

    /// Undo every edit of every layer: the model file's weights again.
    pub fn revert_all_edits(&mut self) {
        for l in 0..self.layers.len() {
            while !self.layers[l].down_replaced.is_empty() {
                self.revert_ffn_down(l);
            }
        }
    }

    /// What W_down of layer `l` holds now (None: no such layer).
    pub fn ffn_down_state(&self, l: usize) -> Option<&DownState> {
        self.layers.get(l).map(|layer| &layer.down_state)
    }

    /// Layers whose W_down is currently edited.
    pub fn edited_layers(&self) -> Vec<usize> {
        self.layers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.down_state != DownState::File)
            .map(|(i, _)| i)
            .collect()
    }
}
