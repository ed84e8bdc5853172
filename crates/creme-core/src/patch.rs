//! The CREME patch format: an edited W_down (f32) in safetensors under its Hugging Face name and
//! shape, with metadata; read, written, applied to a loaded model and reverted. The model loaders
//! (HF export) and the edit pipeline both use it from here.

use crate::backend::Device;
use crate::error::ModelError;
use crate::model::{DownState, Model};

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

    /// The W_down state this patch was made on (metadata [`MADE_ON`]; None: a patch written
    /// before patches said, taken as made on the file's weights).
    pub fn made_on(&self) -> Option<&str> {
        self.metadata.get(MADE_ON).map(String::as_str)
    }

    /// Whether this patch may go onto a layer holding `now`: only onto the state it was made on
    /// (a patch holds the whole W_down, so onto another edit it would silently drop that edit).
    pub fn check_onto(&self, now: &DownState) -> Result<(), ModelError> {
        let now = now.to_string();
        let made_on = self.made_on().unwrap_or("file");
        if made_on == now {
            return Ok(());
        }
        let pair = self.metadata.get("pair").map_or("", String::as_str);
        Err(ModelError::Format(format!(
            "the patch of layer {} ({pair}) was made on W_down {}, but the layer holds {} now: \
             a patch holds the whole W_down, so it would silently replace the edit there; apply \
             the patches of one layer in the order they were made, each made on the one before",
            self.layer,
            short(made_on),
            short(&now)
        )))
    }

    /// Apply to a model (revert with [`revert`], which restores the weights before it). Refused
    /// where the layer holds other weights than the patch was made on (see [`check_onto`]).
    pub fn apply(&self, dev: &Device, model: &mut Model) -> Result<(), ModelError> {
        if (self.rows, self.cols) != (model.cfg.d_model, model.cfg.d_ff) {
            return Err(ModelError::Format(format!(
                "patch is {}x{}, the model's W_down is {}x{}",
                self.rows, self.cols, model.cfg.d_model, model.cfg.d_ff
            )));
        }
        let n = model.cfg.n_layers;
        let now = model
            .ffn_down_state(self.layer)
            .ok_or_else(|| ModelError::Format(format!("patch of layer {} of {n}", self.layer)))?;
        self.check_onto(now)?;
        model.set_ffn_down(dev, self.layer, &self.w)
    }
}

/// A state for messages: "file", or the start of an edit's hash.
fn short(state: &str) -> String {
    state.chars().take(17).collect()
}

/// The metadata key naming the W_down state a patch was made on ([`DownState`]'s text).
pub const MADE_ON: &str = "made_on";

/// Check that `patches`, applied in order to the model file, stack: each onto the state it was
/// made on. Exports use it, as [`EditPatch::apply`] does on a loaded model.
pub fn check_stack(patches: &[EditPatch]) -> Result<(), ModelError> {
    let mut state: std::collections::BTreeMap<usize, DownState> = Default::default();
    for p in patches {
        let now = state.entry(p.layer).or_insert(DownState::File);
        p.check_onto(now)?;
        *now = DownState::of_edit(&p.w);
    }
    Ok(())
}

/// Undo an applied patch: the layer's weights before it come back.
pub fn revert(model: &mut Model, patch: &EditPatch) {
    model.revert_ffn_down(patch.layer);
}
