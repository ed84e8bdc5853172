//! GGUF v3 writer: metadata and tensors (already in their GGML encoding) to bytes. Used by
//! `creme quantize` and by tests that need small or deliberately broken model files.

use super::gguf::GgufHeader;
use super::gguf_value::{put_str, put_value, type_id, Value};
use crate::error::ModelError;
use crate::quant::{dequantize, quantize_q4_0, quantize_q8_0, GgmlType};

/// One tensor to write: GGUF dims (dims[0] contiguous) and its encoded bytes.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub data: Vec<u8>,
}

/// Serialize a GGUF v3 file with 32-byte alignment.
pub fn write_gguf(metadata: &[(String, Value)], tensors: &[TensorOut]) -> Vec<u8> {
    const ALIGN: usize = 32;
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend(type_id(v).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.dtype.id().to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
    let data_start = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(data_start + off, 0);
        out.extend(&t.data);
    }
    out
}

/// Re-encode every 2-D weight of a GGUF file as `target` (Q8_0 or Q4_0; F16/F32 also allowed),
/// keeping 1-D tensors (norms, biases) and the metadata as they are. Returns the new file.
pub fn requantize(file: &[u8], target: GgmlType) -> Result<Vec<u8>, ModelError> {
    requantize_layers(file, target, None)
}

/// A file's metadata for a rewritten file, less `general.file_type`: the rewritten file mixes
/// tensor types, so the one type it names no longer holds.
fn metadata_but_file_type(h: &GgufHeader) -> Vec<(String, Value)> {
    h.metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The layer index of a per-block tensor name (`blk.<i>.…`).
fn block_index(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// [`requantize`], optionally keeping only the first `keep_layers` transformer blocks (a smaller,
/// faster model with the same tokenizer, embeddings and head: for quick experiments and tests).
pub fn requantize_layers(
    file: &[u8],
    target: GgmlType,
    keep_layers: Option<usize>,
) -> Result<Vec<u8>, ModelError> {
    let h = GgufHeader::parse(file)?;
    h.check_len(file.len() as u64)?;
    let arch = h
        .metadata
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama")
        .to_string();
    let block_key = format!("{arch}.block_count");
    if let Some(k) = keep_layers {
        let n = h
            .metadata
            .get(&block_key)
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        if k == 0 || k > n {
            return Err(ModelError::Format(format!(
                "--keep-layers {k}: the model has {n} layers"
            )));
        }
    }
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        if let (Some(k), Some(i)) = (keep_layers, block_index(&t.name)) {
            if i >= k {
                continue;
            }
        }
        let bytes = h.tensor_bytes(file, t)?;
        let convert =
            t.dims.len() == 2 && t.dims[0] % target.block_elems() as u64 == 0 && t.dtype != target;
        let (dtype, data) = if convert {
            let x = dequantize(t.dtype, bytes, t.elems() as usize)?;
            let data = match target {
                GgmlType::Q8_0 => quantize_q8_0(&x),
                GgmlType::Q4_0 => quantize_q4_0(&x),
                GgmlType::F16 => x
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
                other => {
                    return Err(ModelError::Format(format!(
                        "creme quantize writes q8_0, q4_0, f16 or f32, not {}",
                        other.name()
                    )))
                }
            };
            (target, data)
        } else {
            (t.dtype, bytes.to_vec())
        };
        tensors.push(TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype,
            data,
        });
    }
    let mut meta = metadata_but_file_type(&h);
    if let Some(k) = keep_layers {
        for (key, v) in meta.iter_mut() {
            if *key == block_key {
                *v = Value::U32(k as u32);
            }
        }
    }
    meta.push((
        "general.quantized_by".into(),
        Value::Str("creme quantize".into()),
    ));
    Ok(write_gguf(&meta, &tensors))
}

/// The model file with `patches` applied, as a GGUF that other runtimes (llama.cpp) load: every
/// tensor and metadata entry as in `file`, except each patched layer's `ffn_down.weight`, written
/// as F32 (the patch's exact weights; re-quantizing would move the edit). The patches must stack
/// ([`crate::patch::check_stack`]); the last patch of a layer holds that layer's weights.
/// `general.file_type` is dropped (the file mixes types) and `creme.patches` lists the patches.
pub fn export_gguf(
    file: &[u8],
    patches: &[crate::patch::EditPatch],
) -> Result<Vec<u8>, ModelError> {
    crate::patch::check_stack(patches)?;
    let h = GgufHeader::parse(file)?;
    h.check_len(file.len() as u64)?;
    let mut tensors = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        let patch = patches
            .iter()
            .rev()
            .find(|p| t.name == format!("blk.{}.ffn_down.weight", p.layer));
        let (dtype, data) = match patch {
            Some(p) => {
                let (rows, cols) = t.rows_cols();
                if (p.rows, p.cols) != (rows as usize, cols as usize) {
                    return Err(ModelError::Format(format!(
                        "patch for layer {} is {}x{}, the model's W_down is {rows}x{cols}",
                        p.layer, p.rows, p.cols
                    )));
                }
                (
                    GgmlType::F32,
                    bytemuck::cast_slice::<f32, u8>(&p.w).to_vec(),
                )
            }
            None => (t.dtype, h.tensor_bytes(file, t)?.to_vec()),
        };
        tensors.push(TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            dtype,
            data,
        });
    }
    let mut meta = metadata_but_file_type(&h);
    let listed: Vec<String> = patches
        .iter()
        .map(|p| {
            let pair = p.metadata.get("pair").map_or("", String::as_str);
            format!("layer {}: {pair}", p.layer)
        })
        .collect();
    meta.push(("creme.patches".into(), Value::Str(listed.join("; "))));
    Ok(write_gguf(&meta, &tensors))
}
