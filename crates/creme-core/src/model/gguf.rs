//! GGUF reader over bytes (v2 and v3): metadata of every value type (see `gguf_value`), the tensor
//! table and the data offset; and [`read_gguf_file`], which reads a file header first. The header
//! can be parsed from a prefix of the file, so a browser can stream it: `Truncated` says how many
//! bytes are needed. No allocation is sized from the header beyond what the bytes at hand can
//! hold, and parsed metadata never takes more memory than about the bytes it occupies in the file
//! (arrays are stored by element type, see [`ArrayValue`]).

use std::collections::BTreeMap;
use std::mem::size_of;

use super::gguf_value::{vec_heap, Reader, MAX_HEADER_BYTES};
use crate::error::ModelError;
use crate::quant::{ggml_type_name, GgmlType};

pub use super::gguf_value::{ArrayItem, ArrayValue, NestedArray, StrArray, Value};

/// Real models have tens of metadata entries. Each costs a map slot well beyond its few bytes in
/// the file, so their number is capped to keep a file of tiny entries from multiplying its size.
pub const MAX_METADATA_ENTRIES: u64 = 1 << 16;

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

impl GgufHeader {
    /// Parse the header from the start of a GGUF file. `bytes` may be a prefix of the file; when it
    /// is too short the error is `Truncated` with the number of bytes needed.
    pub fn parse(bytes: &[u8]) -> Result<GgufHeader, ModelError> {
        let mut r = Reader::new(bytes);
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
        let left = (bytes.len() - r.pos()) as u64;
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
        let data_offset = (r.pos() as u64).div_ceil(alignment) * alignment;
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

/// The header is read in growing prefixes from this size: real headers are a few MB (the
/// tokenizer's arrays), and a tensor table alone is a few KB.
const FIRST_HEADER_READ: u64 = 1 << 20;

/// Read a GGUF model file, checking before reading it whole what can be checked: that it is a
/// regular file (a FIFO would block, a device such as /dev/zero never end), that it starts with
/// the GGUF magic, that its header parses from its first bytes, and that it is long enough for
/// its tensor table. Errors of the file's bytes are `InvalidData` holding the [`ModelError`].
pub fn read_gguf_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    // Checked before opening: opening a FIFO blocks until a writer comes.
    check_regular(&std::fs::metadata(path)?)?;
    let mut file = std::fs::File::open(path)?;
    // And again on what was opened, in case the path was swapped in between.
    let len = file
        .metadata()
        .map(|m| check_regular(&m).map(|_| m.len()))??;
    let invalid = |e: ModelError| Error::new(ErrorKind::InvalidData, e);
    let mut bytes = Vec::new();
    let mut want = FIRST_HEADER_READ.min(len);
    loop {
        (&mut file)
            .take(want - bytes.len() as u64)
            .read_to_end(&mut bytes)?;
        // The magic and version are checked first, whatever follows.
        match GgufHeader::parse(&bytes) {
            Ok(h) => {
                h.check_len(len).map_err(invalid)?;
                break;
            }
            Err(ModelError::Truncated { need, .. }) if need <= len && want < len => {
                want = need.max(want.saturating_mul(2)).min(len);
            }
            Err(e) => return Err(invalid(e)),
        }
    }
    // The rest, no more than the length the checks were made against.
    bytes.reserve_exact((len - bytes.len() as u64) as usize);
    file.take(len - bytes.len() as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn check_regular(m: &std::fs::Metadata) -> std::io::Result<()> {
    if m.is_file() {
        return Ok(());
    }
    let ft = m.file_type();
    let what = if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        special_file_kind(&ft)
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("not a regular file but {what}: a model must be a file of known length"),
    ))
}

#[cfg(unix)]
fn special_file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() || ft.is_block_device() {
        "a device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}
