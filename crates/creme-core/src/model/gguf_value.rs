//! GGUF metadata values and their encoding in the file, both ways: the value types, the byte
//! reader the header parser uses, and the encoders the writer uses. The reader and the writer
//! both build on this module and neither on the other. No allocation is sized from a count beyond
//! what the bytes at hand can hold, and a parsed value never takes much more memory than the
//! bytes it occupies in the file (arrays are stored by element type, see [`ArrayValue`]).

use std::fmt;
use std::mem::size_of;

use crate::error::ModelError;

/// No GGUF header (metadata and tensor table) comes near this: a count that needs more bytes is
/// refused as malformed rather than reported as a truncation to be fetched.
pub(crate) const MAX_HEADER_BYTES: u64 = 1 << 40;

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

pub(crate) fn vec_heap<T>(v: &Vec<T>) -> usize {
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
            put_array(&mut a.raw, &e);
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

pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Reader<'a> {
        Reader { b, pos: 0 }
    }
    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ModelError> {
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
    pub(crate) fn u32(&mut self, w: &str) -> Result<u32, ModelError> {
        Ok(u32::from_le_bytes(self.take(4, w)?.try_into().unwrap()))
    }
    pub(crate) fn u64(&mut self, w: &str) -> Result<u64, ModelError> {
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
    pub(crate) fn string(&mut self, w: &str) -> Result<String, ModelError> {
        let n = self.count(w, 1)?;
        let at = self.pos;
        let s = self.take(n, w)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| ModelError::Format(format!("{w} at byte {at} is not UTF-8")))
    }
    pub(crate) fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value, ModelError> {
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

// The encoders: what the writer puts in a file, and how a `NestedArray` keeps its elements.

pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

pub(crate) fn type_id(v: &Value) -> u32 {
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

pub(crate) fn put_value(out: &mut Vec<u8>, v: &Value) {
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
