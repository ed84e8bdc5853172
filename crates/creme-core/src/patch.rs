//! The CREME patch format: an edited W_down (f32) in safetensors under its Hugging Face name and
//! shape, with metadata; read, written, applied to a loaded model and reverted. The model loaders
//! (HF export) and the edit pipeline both use it from here.

use crate::backend::Device;
use crate::error::ModelError;
use crate::model::Model;

/// An edit as a file: the edited W_down (f32) in safetensors under its HF name and shape, with
/// metadata (GGUF name, base model sha256, layer, solver, settings, loss curve). Any tool that
/// reads safetensors can apply it; here it replaces the layer's weight without touching the file.
#[derive(Clone, Debug)]
pub struct EditPatch {
    pub layer: usize,
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f32>,
    pub metadata: std::collections::BTreeMap<String, String>,
}

pub const PATCH_FORMAT: &str = "creme-patch/1";

impl EditPatch {
    pub fn hf_name(layer: usize) -> String {
        format!("model.layers.{layer}.mlp.down_proj.weight")
    }

    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.w);
        let view = safetensors::tensor::TensorView::new(
            safetensors::Dtype::F32,
            vec![self.rows, self.cols],
            bytes,
        )
        .map_err(|e| ModelError::Format(e.to_string()))?;
        let mut meta: std::collections::HashMap<String, String> =
            self.metadata.clone().into_iter().collect();
        meta.insert("format".into(), PATCH_FORMAT.into());
        meta.insert("layer".into(), self.layer.to_string());
        meta.insert(
            "gguf_name".into(),
            format!("blk.{}.ffn_down.weight", self.layer),
        );
        safetensors::serialize([(Self::hf_name(self.layer), view)], Some(meta))
            .map_err(|e| ModelError::Format(e.to_string()))
    }

    pub fn from_safetensors(bytes: &[u8]) -> Result<EditPatch, ModelError> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| ModelError::Format(format!("patch: {e}")))?;
        let metadata: std::collections::BTreeMap<String, String> = header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if metadata.get("format").map(String::as_str) != Some(PATCH_FORMAT) {
            return Err(ModelError::Format(format!(
                "not a CREME patch (metadata format is {:?}, expected {PATCH_FORMAT})",
                metadata.get("format")
            )));
        }
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ModelError::Format(format!("patch: {e}")))?;
        let (name, view) = st
            .tensors()
            .into_iter()
            .next()
            .ok_or_else(|| ModelError::Format("patch holds no tensor".into()))?;
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.strip_suffix(".mlp.down_proj.weight"))
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                ModelError::Format(format!(
                    "patch tensor '{name}' is not a model.layers.N.mlp.down_proj.weight"
                ))
            })?;
        if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
            return Err(ModelError::Format(format!(
                "patch tensor '{name}' must be 2-D f32, is {:?} {:?}",
                view.dtype(),
                view.shape()
            )));
        }
        let w = bytemuck::pod_collect_to_vec::<u8, f32>(view.data());
        Ok(EditPatch {
            layer,
            rows: view.shape()[0],
            cols: view.shape()[1],
            w,
            metadata,
        })
    }

    /// Apply to a model (revert with `model.revert_ffn_down(patch.layer)`).
    pub fn apply(&self, dev: &Device, model: &mut Model) -> Result<(), ModelError> {
        if (self.rows, self.cols) != (model.cfg.d_model, model.cfg.d_ff) {
            return Err(ModelError::Format(format!(
                "patch is {}x{}, the model's W_down is {}x{}",
                self.rows, self.cols, model.cfg.d_model, model.cfg.d_ff
            )));
        }
        model.set_ffn_down(dev, self.layer, &self.w)
    }
}

/// Undo an applied patch (the file's weight comes back).
pub fn revert(model: &mut Model, patch: &EditPatch) {
    model.revert_ffn_down(patch.layer);
}
