//! GGUF reader over bytes (v2 and v3): metadata of every value type, the tensor table and the
//! data offset. The header can be parsed from a prefix of the file, so a browser can stream it:
//! `Truncated` says how many bytes are needed. No allocation is sized from the header beyond
//! what the bytes at hand can hold.

use std::collections::BTreeMap;

use crate::quant::{ggml_type_name, GgmlType};
use crate::error::ModelError;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(v) => v as u64,
            Value::U16(v) => v as u64,
            Value::U32(v) => v as u64,
            Value::U64(v) => v,
            Value::I8(v) if v >= 0 => v as u64,
            Value::I16(v) if v >= 0 => v as u64,
            Value::I32(v) if v >= 0 => v as u64,
            Value::I64(v) if v >= 0 => v as u64,
            _ => return None,
        })
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: dims[0] is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elems(&self) -> u64 {
        self.dims.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        self.elems() / self.dtype.block_elems() as u64 * self.dtype.block_bytes() as u64
    }
    /// (rows, cols) of a 2-D weight: rows = dims[1], cols = dims[0]; 1-D tensors are one row.
    pub fn rows_cols(&self) -> (u64, u64) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.elems() / cols.max(1), cols)
    }
}

/// Metadata and tensor table of a GGUF file.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| ModelError::Truncated {
            what: format!("GGUF header ({what} at byte {})", self.pos),
            need: self.pos as u64 + n as u64,
            have: self.b.len() as u64,
        })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, w: &str) -> Result<u8, ModelError> {
        Ok(self.take(1, w)?[0])
    }
    fn u16(&mut self, w: &str) -> Result<u16, ModelError> {
        Ok(u16::from_le_bytes(self.take(2, w)?.try_into().unwrap()))
    }
    fn u32(&mut self, w: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    fn u64(&mut self, w: &str) -> Result<u64, ModelError> {
        Ok(u64::from_le_bytes(self.take(8, w)?.try_into().unwrap()))
    }
    /// A length that must fit in what is left of the buffer, given at least `min_each` bytes per item.
    fn count(&mut self, w: &str, min_each: usize) -> Result<usize, ModelError> {
        let n = self.u64(w)?;
        let left = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(min_each as u64) > left {
            return Err(ModelError::Truncated {
                what: format!("GGUF header ({w}: {n} items at byte {})", self.pos),
                need: (self.pos as u64).saturating_add(n.saturating_mul(min_each as u64)),
                have: self.b.len() as u64,
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, w: &str) -> Result<String, ModelError> {
        let n = self.count(w, 1)?;
        let at = self.pos;
        let s = self.take(n, w)?;
        String::from_utf8(s.to_vec()).map_err(|_| ModelError::Format(format!("{w} at byte {at} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, ModelError> {
        Ok(match ty {
            0 => Value::U8(self.u8(key)?),
            1 => Value::I8(self.u8(key)? as i8),
            2 => Value::U16(self.u16(key)?),
            3 => Value::I16(self.u16(key)? as i16),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(self.u32(key)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(key)?)),
            7 => match self.u8(key)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(ModelError::Format(format!("metadata '{key}': bool byte {b}"))),
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(ModelError::Format(format!("metadata '{key}': arrays nested too deep")));
                }
                let ety = self.u32(key)?;
                let min_each = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4 | 5 | 6 => 4,
                    8 | 10 | 11 | 12 | 9 => 8,
                    t => return Err(ModelError::Format(format!("metadata '{key}': unknown array element type {t}"))),
                };
                let n = self.count(key, min_each)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => return Err(ModelError::Format(format!("metadata '{key}': unknown value type {t}"))),
        })
    }
}

impl GgufHeader {
    /// Parse the header from the start of a GGUF file. `bytes` may be a prefix of the file; when it
    /// is too short the error is `Truncated` with the number of bytes needed.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, ModelError> {
        let mut r = Reader { b: bytes, pos: 0 };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().unwrap();
        if &magic != b"GGUF" {
            return Err(ModelError::NotGguf(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::Version(version));
        }
        // Each tensor info takes at least 8 (name len) + 4 + 8 + 4 + 8 bytes; each kv at least 8 + 4 + 1.
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        let left = (bytes.len() - r.pos) as u64;
        if n_kv.saturating_mul(13).saturating_add(n_tensors.saturating_mul(32)) > left.max(1 << 40) {
            return Err(ModelError::Format(format!("implausible counts: {n_tensors} tensors, {n_kv} metadata entries")));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let ty = r.u32(&key)?;
            let v = r.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = r.string(&format!("tensor name #{i}"))?;
            let nd = r.u32(&name)?;
            if nd == 0 || nd > 4 {
                return Err(ModelError::Format(format!("tensor '{name}': {nd} dimensions (1..4 allowed)")));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(r.u64(&name)?);
            }
            let ty = r.u32(&name)?;
            let dtype = GgmlType::from_id(ty).map_err(|_| {
                ModelError::Format(format!("tensor '{name}' has unsupported type {} (ggml type id {ty})", ggml_type_name(ty)))
            })?;
            let offset = r.u64(&name)?;
            // Far beyond any file; keeps offset + size arithmetic from overflowing.
            if offset > 1 << 56 {
                return Err(ModelError::Format(format!("tensor '{name}': offset {offset} is beyond any file")));
            }
            let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            match elems {
                Some(e) if e > 0 && dims[0] % dtype.block_elems() as u64 == 0 && e < (1u64 << 40) => {}
                _ => return Err(ModelError::Format(format!("tensor '{name}': bad shape {dims:?} for {}", dtype.name()))),
            }
            tensors.push(TensorInfo { name, dims, dtype, offset });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(ModelError::Format(format!("general.alignment {v:?} is not a power of two"))),
            },
            None => 32,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(ModelError::Format(format!("tensor '{}' offset {} is not {alignment}-aligned", t.name, t.offset)));
            }
        }
        Ok(GgufHeader { version, metadata, tensors, alignment, data_offset })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// Total file size the tensor table implies.
    pub fn required_len(&self) -> u64 {
        self.tensors.iter().map(|t| self.data_offset + t.offset + t.bytes()).max().unwrap_or(self.data_offset)
    }
    /// Absolute byte range of a tensor in the file.
    pub fn tensor_range(&self, t: &TensorInfo) -> std::ops::Range<u64> {
        let start = self.data_offset + t.offset;
        start..start + t.bytes()
    }
    /// Check that a file of `len` bytes holds every tensor.
    pub fn check_len(&self, len: u64) -> Result<(), ModelError> {
        for t in &self.tensors {
            let end = self.data_offset + t.offset + t.bytes();
            if end > len {
                return Err(ModelError::Truncated { what: format!("tensor '{}'", t.name), need: end, have: len });
            }
        }
        Ok(())
    }
    /// A tensor's bytes in a whole file.
    pub fn tensor_bytes<'f>(&self, file: &'f [u8], t: &TensorInfo) -> Result<&'f [u8], ModelError> {
        let r = self.tensor_range(t);
        file.get(r.start as usize..r.end as usize).ok_or_else(|| ModelError::Truncated {
            what: format!("tensor '{}'", t.name),
            need: r.end,
            have: file.len() as u64,
        })
    }
}
