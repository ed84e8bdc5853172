//! GGUF v3 writer: metadata and tensors (already in their GGML encoding) to bytes. Used by
//! `creme quantize` and by tests that need small or deliberately broken model files.

use super::gguf::{ArrayValue, GgufHeader, Value};
use crate::error::ModelError;
use crate::quant::{dequantize, quantize_q4_0, quantize_q8_0, GgmlType};

/// One tensor to write: GGUF dims (dims[0] contiguous) and its encoded bytes.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    pub data: Vec<u8>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::Str(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::Str(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

fn put_nums<T: Copy, const N: usize>(out: &mut Vec<u8>, v: &[T], f: fn(T) -> [u8; N]) {
    out.extend(v.iter().flat_map(|&x| f(x)));
}

/// An array value as in a GGUF file: element type, count, items.
pub(crate) fn put_array(out: &mut Vec<u8>, a: &ArrayValue) {
    out.extend(a.elem_type().to_le_bytes());
    out.extend((a.len() as u64).to_le_bytes());
    match a {
        ArrayValue::U8(v) => out.extend(v),
        ArrayValue::I8(v) => put_nums(out, v, i8::to_le_bytes),
        ArrayValue::U16(v) => put_nums(out, v, u16::to_le_bytes),
        ArrayValue::I16(v) => put_nums(out, v, i16::to_le_bytes),
        ArrayValue::U32(v) => put_nums(out, v, u32::to_le_bytes),
        ArrayValue::I32(v) => put_nums(out, v, i32::to_le_bytes),
        ArrayValue::U64(v) => put_nums(out, v, u64::to_le_bytes),
        ArrayValue::I64(v) => put_nums(out, v, i64::to_le_bytes),
        ArrayValue::F32(v) => put_nums(out, v, f32::to_le_bytes),
        ArrayValue::F64(v) => put_nums(out, v, f64::to_le_bytes),
        ArrayValue::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
        ArrayValue::Str(s) => s.iter().for_each(|x| put_str(out, x)),
        // Already in file encoding (checked when read, or written by `put_array`).
        ArrayValue::Array(n) => out.extend(n.raw()),
    }
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
    let mut meta: Vec<(String, Value)> = h
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
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
