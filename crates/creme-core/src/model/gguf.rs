//! GGUF reader over bytes (v2 and v3): metadata of every value type, the tensor table and the
//! data offset. The header can be parsed from a prefix of the file, so a browser can stream it:
//! `Truncated` says how many bytes are needed. No allocation is sized from the header beyond
//! what the bytes at hand can hold, and parsed metadata never takes more memory than about the
//! bytes it occupies in the file (arrays are stored by element type, see [`ArrayValue`]).

use std::collections::BTreeMap;
use std::fmt;
use std::mem::size_of;

use crate::error::ModelError;
use crate::quant::{ggml_type_name, GgmlType};

/// Real models have tens of metadata entries. Each costs a map slot well beyond its few bytes in
/// the file, so their number is capped to keep a file of tiny entries from multiplying its size.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// No GGUF header (metadata and tensor table) comes near this: a count that needs more bytes is
/// refused as malformed rather than reported as a truncation to be fetched.
const MAX_HEADER_BYTES: u64 = 1 << 40;

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
    Array(ArrayValue),
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
    /// The array: `len()`, `get(i)` and `iter()` give items with the same `as_*` helpers.
    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// Heap memory this value holds (its inline size not included).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Value::Str(s) => s.capacity(),
            Value::Array(a) => a.heap_bytes(),
            _ => 0,
        }
    }
}

/// A metadata array, stored by element type: numbers in a typed `Vec`, strings in one buffer,
/// arrays of arrays as their file bytes. None holds more than the bytes it occupies in the file
/// (a `Vec<Value>` held 32 bytes and a string header per element: 34 times the file size for a
/// file of byte arrays). Build one with `Vec<T>::into()`, e.g. `vec!["a", "b"].into()`.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayValue {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    Str(StrArray),
    Array(NestedArray),
}

/// One element of an [`ArrayValue`], with the helpers of [`Value`].
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayItem<'a> {
    /// A number or bool: the scalar `Value` of the array's element type.
    Scalar(Value),
    Str(&'a str),
    /// An element of an array of arrays, decoded from its file bytes.
    Array(ArrayValue),
}

impl<'a> ArrayItem<'a> {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            ArrayItem::Scalar(v) => v.as_u64(),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            ArrayItem::Scalar(v) => v.as_f64(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            ArrayItem::Scalar(v) => v.as_bool(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            ArrayItem::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&ArrayValue> {
        match self {
            ArrayItem::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn to_value(&self) -> Value {
        match self {
            ArrayItem::Scalar(v) => v.clone(),
            ArrayItem::Str(s) => Value::Str(s.to_string()),
            ArrayItem::Array(a) => Value::Array(a.clone()),
        }
    }
}

fn vec_heap<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

impl ArrayValue {
    /// The GGUF type id of the elements.
    pub fn elem_type(&self) -> u32 {
        match self {
            ArrayValue::U8(_) => 0,
            ArrayValue::I8(_) => 1,
            ArrayValue::U16(_) => 2,
            ArrayValue::I16(_) => 3,
            ArrayValue::U32(_) => 4,
            ArrayValue::I32(_) => 5,
            ArrayValue::F32(_) => 6,
            ArrayValue::Bool(_) => 7,
            ArrayValue::Str(_) => 8,
            ArrayValue::Array(_) => 9,
            ArrayValue::U64(_) => 10,
            ArrayValue::I64(_) => 11,
            ArrayValue::F64(_) => 12,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            ArrayValue::U8(v) => v.len(),
            ArrayValue::I8(v) => v.len(),
            ArrayValue::U16(v) => v.len(),
            ArrayValue::I16(v) => v.len(),
            ArrayValue::U32(v) => v.len(),
            ArrayValue::I32(v) => v.len(),
            ArrayValue::U64(v) => v.len(),
            ArrayValue::I64(v) => v.len(),
            ArrayValue::F32(v) => v.len(),
            ArrayValue::F64(v) => v.len(),
            ArrayValue::Bool(v) => v.len(),
            ArrayValue::Str(s) => s.len(),
            ArrayValue::Array(a) => a.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` (an array element of an array of arrays is decoded, the rest borrowed).
    pub fn get(&self, i: usize) -> Option<ArrayItem<'_>> {
        let num = |v: Option<Value>| v.map(ArrayItem::Scalar);
        match self {
            ArrayValue::U8(v) => num(v.get(i).map(|&x| Value::U8(x))),
            ArrayValue::I8(v) => num(v.get(i).map(|&x| Value::I8(x))),
            ArrayValue::U16(v) => num(v.get(i).map(|&x| Value::U16(x))),
            ArrayValue::I16(v) => num(v.get(i).map(|&x| Value::I16(x))),
            ArrayValue::U32(v) => num(v.get(i).map(|&x| Value::U32(x))),
            ArrayValue::I32(v) => num(v.get(i).map(|&x| Value::I32(x))),
            ArrayValue::U64(v) => num(v.get(i).map(|&x| Value::U64(x))),
            ArrayValue::I64(v) => num(v.get(i).map(|&x| Value::I64(x))),
            ArrayValue::F32(v) => num(v.get(i).map(|&x| Value::F32(x))),
            ArrayValue::F64(v) => num(v.get(i).map(|&x| Value::F64(x))),
            ArrayValue::Bool(v) => num(v.get(i).map(|&x| Value::Bool(x))),
            ArrayValue::Str(s) => s.get(i).map(ArrayItem::Str),
            ArrayValue::Array(a) => a.get(i).map(ArrayItem::Array),
        }
    }
    pub fn iter(&self) -> impl Iterator<Item = ArrayItem<'_>> + '_ {
        (0..self.len()).map_while(move |i| self.get(i))
    }
    /// Heap memory this array holds: Vec capacities times element sizes.
    pub fn heap_bytes(&self) -> usize {
        match self {
            ArrayValue::U8(v) => vec_heap(v),
            ArrayValue::I8(v) => vec_heap(v),
            ArrayValue::U16(v) => vec_heap(v),
            ArrayValue::I16(v) => vec_heap(v),
            ArrayValue::U32(v) => vec_heap(v),
            ArrayValue::I32(v) => vec_heap(v),
            ArrayValue::U64(v) => vec_heap(v),
            ArrayValue::I64(v) => vec_heap(v),
            ArrayValue::F32(v) => vec_heap(v),
            ArrayValue::F64(v) => vec_heap(v),
            ArrayValue::Bool(v) => vec_heap(v),
            ArrayValue::Str(s) => s.text.capacity() + vec_heap(&s.ends),
            ArrayValue::Array(a) => vec_heap(&a.raw) + vec_heap(&a.ends),
        }
    }
}

macro_rules! array_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<Vec<$t>> for ArrayValue {
            fn from(v: Vec<$t>) -> Self {
                ArrayValue::$v(v)
            }
        }
    )*};
}
array_from!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64, i64 => I64,
            f32 => F32, f64 => F64, bool => Bool);

impl From<Vec<String>> for ArrayValue {
    fn from(v: Vec<String>) -> Self {
        ArrayValue::Str(v.iter().collect())
    }
}
impl From<Vec<&str>> for ArrayValue {
    fn from(v: Vec<&str>) -> Self {
        ArrayValue::Str(v.into_iter().collect())
    }
}
impl From<Vec<ArrayValue>> for ArrayValue {
    fn from(v: Vec<ArrayValue>) -> Self {
        ArrayValue::Array(v.into_iter().collect())
    }
}

/// The strings of a string array in one UTF-8 buffer, with the end offset of each: 4 bytes per
/// string where the file spends 8 on its length (a `Vec<String>` would spend 24 and an allocation).
#[derive(Clone, Default, PartialEq)]
pub struct StrArray {
    text: String,
    ends: Vec<u32>,
}

impl StrArray {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..end)
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map_while(move |i| self.get(i))
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    /// Panics past 4 GiB of text (the offsets are u32; the reader refuses such arrays).
    fn from_iter<I: IntoIterator<Item = S>>(it: I) -> Self {
        let mut a = StrArray::default();
        for s in it {
            a.text.push_str(s.as_ref());
            a.ends
                .push(u32::try_from(a.text.len()).expect("string array text over 4 GiB"));
        }
        a
    }
}

impl fmt::Debug for StrArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// An array of arrays (rare in real files), kept as its elements' bytes in the file with the
/// end offset of each, and decoded one element at a time on access: one `ArrayValue` per
/// element would cost more than an empty element's 12 bytes in the file.
#[derive(Clone, Default, PartialEq)]
pub struct NestedArray {
    /// The elements as in the file, each `type: u32, count: u64, items`; checked when read.
    raw: Vec<u8>,
    ends: Vec<u32>,
}

impl NestedArray {
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<ArrayValue> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let mut r = Reader {
            b: self.raw.get(start..end)?,
            pos: 0,
        };
        r.array("nested array element", 0).ok()
    }
    pub fn iter(&self) -> impl Iterator<Item = ArrayValue> + '_ {
        (0..self.len()).map_while(move |i| self.get(i))
    }
    /// The elements' bytes in GGUF encoding (what the writer puts after the count).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl FromIterator<ArrayValue> for NestedArray {
    /// Panics past 4 GiB of encoded elements (the offsets are u32; the reader refuses such arrays).
    fn from_iter<I: IntoIterator<Item = ArrayValue>>(it: I) -> Self {
        let mut a = NestedArray::default();
        for e in it {
            super::gguf_write::put_array(&mut a.raw, &e);
            a.ends
                .push(u32::try_from(a.raw.len()).expect("nested array over 4 GiB"));
        }
        a
    }
}

impl fmt::Debug for NestedArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
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
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| ModelError::Truncated {
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
    /// A length that must fit in what is left of the buffer, given at least `min_each` bytes per
    /// item: checked before anything is allocated for the items.
    fn count(&mut self, w: &str, min_each: usize) -> Result<usize, ModelError> {
        let at = self.pos;
        let n = self.u64(w)?;
        let need = n.saturating_mul(min_each as u64);
        if need > MAX_HEADER_BYTES {
            return Err(ModelError::Format(format!(
                "{w}: count {n} at byte {at} needs {need} bytes, more than any GGUF header holds"
            )));
        }
        let left = (self.b.len() - self.pos) as u64;
        if need > left {
            return Err(ModelError::Truncated {
                what: format!("GGUF header ({w}: {n} items at byte {at})"),
                need: self.pos as u64 + need,
                have: self.b.len() as u64,
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, w: &str) -> Result<String, ModelError> {
        let n = self.count(w, 1)?;
        let at = self.pos;
        let s = self.take(n, w)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| ModelError::Format(format!("{w} at byte {at} is not UTF-8")))
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
                b => {
                    return Err(ModelError::Format(format!(
                        "metadata '{key}': bool byte {b}"
                    )))
                }
            },
            8 => Value::Str(self.string(key)?),
            9 => Value::Array(self.array(key, depth)?),
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(self.u64(key)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(key)?)),
            t => {
                return Err(ModelError::Format(format!(
                    "metadata '{key}': unknown value type {t}"
                )))
            }
        })
    }
    /// An array value: element type, count, items.
    fn array(&mut self, key: &str, depth: u32) -> Result<ArrayValue, ModelError> {
        if depth > 4 {
            return Err(ModelError::Format(format!(
                "metadata '{key}': arrays nested too deep"
            )));
        }
        let ety = self.u32(key)?;
        // The fewest bytes an item takes in the file (an array item: its type and count).
        let min_each = match ety {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4 | 5 | 6 => 4,
            8 | 10 | 11 | 12 => 8,
            9 => 12,
            t => {
                return Err(ModelError::Format(format!(
                    "metadata '{key}': unknown array element type {t}"
                )))
            }
        };
        let n = self.count(key, min_each)?;
        Ok(match ety {
            0 => ArrayValue::U8(self.nums(n, key, |[b]| b)?),
            1 => ArrayValue::I8(self.nums(n, key, |[b]| b as i8)?),
            2 => ArrayValue::U16(self.nums(n, key, u16::from_le_bytes)?),
            3 => ArrayValue::I16(self.nums(n, key, i16::from_le_bytes)?),
            4 => ArrayValue::U32(self.nums(n, key, u32::from_le_bytes)?),
            5 => ArrayValue::I32(self.nums(n, key, i32::from_le_bytes)?),
            6 => ArrayValue::F32(self.nums(n, key, f32::from_le_bytes)?),
            7 => {
                let at = self.pos;
                if let Some(i) = self.b[at..at + n].iter().position(|&b| b > 1) {
                    return Err(ModelError::Format(format!(
                        "metadata '{key}': bool byte {} at byte {}",
                        self.b[at + i],
                        at + i
                    )));
                }
                ArrayValue::Bool(self.nums(n, key, |[b]| b == 1)?)
            }
            8 => ArrayValue::Str(self.strings(n, key)?),
            9 => ArrayValue::Array(self.arrays(n, key, depth)?),
            10 => ArrayValue::U64(self.nums(n, key, u64::from_le_bytes)?),
            11 => ArrayValue::I64(self.nums(n, key, i64::from_le_bytes)?),
            _ => ArrayValue::F64(self.nums(n, key, f64::from_le_bytes)?),
        })
    }
    /// `n` fixed-size items (already counted against the bytes left), into a Vec of exactly `n`.
    fn nums<T, const N: usize>(
        &mut self,
        n: usize,
        key: &str,
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, ModelError> {
        Ok(self
            .take(n * N, key)?
            .chunks_exact(N)
            .map(|c| f(c.try_into().unwrap()))
            .collect())
    }
    /// `n` strings into one buffer, sized by a first pass over their lengths.
    fn strings(&mut self, n: usize, key: &str) -> Result<StrArray, ModelError> {
        let start = self.pos;
        let mut total = 0usize;
        for _ in 0..n {
            let len = self.count(key, 1)?;
            self.take(len, key)?;
            total += len;
        }
        if u32::try_from(total).is_err() {
            return Err(ModelError::Format(format!(
                "metadata '{key}': string array of {total} bytes (4 GiB at most)"
            )));
        }
        self.pos = start;
        let mut a = StrArray {
            text: String::with_capacity(total),
            ends: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let len = self.u64(key)? as usize;
            let at = self.pos;
            let s = std::str::from_utf8(self.take(len, key)?).map_err(|_| {
                ModelError::Format(format!(
                    "metadata '{key}': string at byte {at} is not UTF-8"
                ))
            })?;
            a.text.push_str(s);
            a.ends.push(a.text.len() as u32);
        }
        Ok(a)
    }
    /// `n` arrays, each read (to check it) and dropped, then kept as their bytes.
    fn arrays(&mut self, n: usize, key: &str, depth: u32) -> Result<NestedArray, ModelError> {
        let start = self.pos;
        let mut ends = Vec::with_capacity(n);
        for _ in 0..n {
            self.array(key, depth + 1)?;
            let end = u32::try_from(self.pos - start).map_err(|_| {
                ModelError::Format(format!("metadata '{key}': array of arrays over 4 GiB"))
            })?;
            ends.push(end);
        }
        Ok(NestedArray {
            raw: self.b[start..self.pos].to_vec(),
            ends,
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
        if n_kv
            .saturating_mul(13)
            .saturating_add(n_tensors.saturating_mul(32))
            > left.max(MAX_HEADER_BYTES)
        {
            return Err(ModelError::Format(format!(
                "implausible counts: {n_tensors} tensors, {n_kv} metadata entries"
            )));
        }
        if n_kv > MAX_METADATA_ENTRIES {
            return Err(ModelError::Format(format!(
                "{n_kv} metadata entries (at most {MAX_METADATA_ENTRIES})"
            )));
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
                return Err(ModelError::Format(format!(
                    "tensor '{name}': {nd} dimensions (1..4 allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(r.u64(&name)?);
            }
            let ty = r.u32(&name)?;
            let dtype = GgmlType::from_id(ty).map_err(|_| {
                ModelError::Format(format!(
                    "tensor '{name}' has unsupported type {} (ggml type id {ty})",
                    ggml_type_name(ty)
                ))
            })?;
            let offset = r.u64(&name)?;
            // Far beyond any file; keeps offset + size arithmetic from overflowing.
            if offset > 1 << 56 {
                return Err(ModelError::Format(format!(
                    "tensor '{name}': offset {offset} is beyond any file"
                )));
            }
            let elems = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            match elems {
                Some(e)
                    if e > 0 && dims[0] % dtype.block_elems() as u64 == 0 && e < (1u64 << 40) => {}
                _ => {
                    return Err(ModelError::Format(format!(
                        "tensor '{name}': bad shape {dims:?} for {}",
                        dtype.name()
                    )))
                }
            }
            tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(ModelError::Format(format!(
                        "general.alignment {v:?} is not a power of two"
                    )))
                }
            },
            None => 32,
        };
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(ModelError::Format(format!(
                    "tensor '{}' offset {} is not {alignment}-aligned",
                    t.name, t.offset
                )));
            }
        }
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Heap memory the parsed header holds, counted from capacities: metadata map nodes, keys,
    /// values, and the tensor table. Allocator overhead aside, an upper bound.
    pub fn heap_bytes(&self) -> usize {
        // BTreeMap nodes hold 11 entries (and 12 child pointers) and are at least 5 full, the root aside.
        let nodes = if self.metadata.is_empty() {
            0
        } else {
            self.metadata.len() / 5 + 1
        };
        let map = nodes
            * (11 * (size_of::<String>() + size_of::<Value>()) + 12 * size_of::<usize>() + 16);
        let entries: usize = self
            .metadata
            .iter()
            .map(|(k, v)| k.capacity() + v.heap_bytes())
            .sum();
        let tensors = vec_heap(&self.tensors)
            + self
                .tensors
                .iter()
                .map(|t| t.name.capacity() + vec_heap(&t.dims))
                .sum::<usize>();
        map + entries + tensors
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// Total file size the tensor table implies.
    pub fn required_len(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| self.data_offset + t.offset + t.bytes())
            .max()
            .unwrap_or(self.data_offset)
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
                return Err(ModelError::Truncated {
                    what: format!("tensor '{}'", t.name),
                    need: end,
                    have: len,
                });
            }
        }
        Ok(())
    }
    /// A tensor's bytes in a whole file.
    pub fn tensor_bytes<'f>(&self, file: &'f [u8], t: &TensorInfo) -> Result<&'f [u8], ModelError> {
        let r = self.tensor_range(t);
        file.get(r.start as usize..r.end as usize)
            .ok_or_else(|| ModelError::Truncated {
                what: format!("tensor '{}'", t.name),
                need: r.end,
                have: file.len() as u64,
            })
    }
}
