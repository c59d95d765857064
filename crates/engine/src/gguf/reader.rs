//! GGUF reader over mmap.
//!
//! Layout (v2/v3, little endian):
//! magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv |
//! n_kv × (string key, u32 value type, value) |
//! n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset) |
//! padding to `general.alignment` (default 32) | tensor data.
//!
//! Every count read from the file is checked against the bytes that remain before anything is
//! allocated, so a malformed file can neither panic the reader nor make it allocate without bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::GgufError;
use super::types::GgmlType;
use super::value::{Value, ValueType};

pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's GGML_MAX_DIMS.
pub const MAX_DIMS: usize = 4;
/// Arrays of arrays deeper than this are rejected (real files use depth 1).
pub const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF `ne` order: ne[0] is the contiguous (row) dimension.
    pub shape: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of tensor data.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }
    /// Elements per row (ne[0]).
    pub fn row_len(&self) -> u64 {
        self.shape.first().copied().unwrap_or(1)
    }
    /// Number of rows (product of ne[1..]).
    pub fn n_rows(&self) -> u64 {
        self.shape.iter().skip(1).product()
    }
}

enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the mmap; nothing is copied.
pub struct GgufFile {
    backing: Backing,
    path: Option<PathBuf>,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-map and parse a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only. Like every mmap reader, we rely on the file not being
            // truncated by another process while it is mapped.
            Backing::Mmap(unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?)
        };
        let mut f = Self::parse(backing)?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Parse a GGUF image held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<GgufFile, GgufError> {
        let header = parse_header(backing.bytes())?;
        Ok(GgufFile {
            backing,
            path: None,
            version: header.version,
            key_index: header
                .metadata
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect(),
            metadata: header.metadata,
            tensor_index: header
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor. Bounds were checked at parse time.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + t.offset) as usize;
        &self.bytes()[start..start + t.n_bytes as usize]
    }

    /// Tell the kernel we no longer need a tensor's mapped pages (after copying them into a
    /// repacked layout): they leave our resident set but stay in the page cache. A no-op for
    /// in-memory images.
    pub fn release(&self, t: &TensorInfo) {
        if let Backing::Mmap(m) = &self.backing {
            let page = 4096usize;
            let start = (self.data_offset + t.offset) as usize;
            let end = start + t.n_bytes as usize;
            // Only whole pages inside the tensor, so neighbours are never affected.
            let a = start.div_ceil(page) * page;
            let b = end / page * page;
            if b > a {
                // SAFETY: the range lies inside the mapping; DONTNEED on a read-only file
                // mapping only drops pages, which are re-read from the file if touched again.
                unsafe {
                    libc::madvise(
                        m.as_ptr().add(a) as *mut libc::c_void,
                        b - a,
                        libc::MADV_DONTNEED,
                    );
                }
            }
        }
    }

    /// `general.architecture` (empty if absent) and its hyperparameters: every `{arch}.*` key
    /// with the prefix removed, as JSON.
    pub fn arch_hparams(
        &self,
    ) -> (
        String,
        std::collections::BTreeMap<String, serde_json::Value>,
    ) {
        let arch = self
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let prefix = format!("{arch}.");
        let hparams = self
            .metadata
            .iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(&prefix)
                    .map(|s| (s.to_string(), v.to_json()))
            })
            .collect();
        (arch, hparams)
    }

    /// Total bytes of tensor data.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.n_bytes).sum()
    }

    // Typed accessors: a missing key or a wrong type is an error that names the key.

    fn req(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, expected: &'static str, v: &Value) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.value_type().name().to_string(),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.req(key)?;
        v.as_u64()
            .ok_or_else(|| Self::wrong(key, "a non-negative integer", v))
    }

    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.req(key)?;
        v.as_u32()
            .ok_or_else(|| Self::wrong(key, "an integer in u32 range", v))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.req(key)?;
        v.as_f32().ok_or_else(|| Self::wrong(key, "a number", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.req(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "a bool", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.req(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "a string", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.req(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "an array", v))
    }

    /// Optional variants: Ok(None) when absent, Err when present with the wrong type.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.get(key).map(|_| self.get_u32(key)).transpose()
    }
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.get(key).map(|_| self.get_f32(key)).transpose()
    }
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.get(key).map(|_| self.get_bool(key)).transpose()
    }
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.get(key).map(|_| self.get_str(key)).transpose()
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| Self::wrong(key, "an array of strings", v))
            })
            .collect()
    }

    /// An array of numbers as f32.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_f32()
                    .ok_or_else(|| Self::wrong(key, "an array of numbers", v))
            })
            .collect()
    }

    /// An array of integers as i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        let arr = self.get_array(key)?;
        arr.iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| Self::wrong(key, "an array of integers", v))
            })
            .collect()
    }
}

/// The parsed header, without the backing bytes.
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if (n as u64) > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A u64 count of items each at least `min_item_bytes` long, bounded by the remaining bytes.
    fn count(&mut self, min_item_bytes: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        let remaining = self.remaining();
        if n.saturating_mul(min_item_bytes.max(1)) > remaining {
            return Err(GgufError::CountTooLarge {
                what: what(),
                count: n,
                remaining,
            });
        }
        Ok(n)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(1, &|| format!("length of {}", what()))?;
        let start = self.pos as u64;
        let bytes = self.take(len as usize, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what(),
            offset: start,
        })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value, GgufError> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => Value::Bool(self.array::<1>(&what)?[0] != 0),
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep {
                        key: key.to_string(),
                    });
                }
                let id = self.u32(&|| format!("array element type of {key:?}"))?;
                let ety = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.to_string(),
                    id,
                })?;
                // Strings take at least 8 bytes (their length), arrays at least 12.
                let min = match ety {
                    ValueType::String => 8,
                    ValueType::Array => 12,
                    t => t.scalar_size().unwrap_or(1) as u64,
                };
                let n = self.count(min, &|| format!("array length of {key:?}"))?;
                // Reserve up front only for scalar and string items, whose bytes the count
                // check has seen. An array item may be far larger than its 12-byte minimum, so
                // arrays of arrays grow as their items parse: reserving `n` at every level of a
                // nest let a file reserve ~50x its size instead of ~32x (one Value per byte).
                let reserve = if ety == ValueType::Array {
                    n.min(1024)
                } else {
                    n
                };
                let mut items = Vec::with_capacity(reserve as usize);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

/// Parse everything but the tensor data, validating every tensor's placement.
pub fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic: [u8; 4] = c.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = c.u32(&|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info takes at least 8+4+4+8 bytes, a kv at least 8+4+1.
    let n_tensors = c.count(24, &|| "tensor count".into())?;
    let n_kv = c.count(13, &|| "metadata count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut seen_keys = std::collections::HashSet::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let id = c.u32(&|| format!("value type of {key:?}"))?;
        let ty = ValueType::from_id(id).ok_or_else(|| GgufError::UnknownValueType {
            key: key.clone(),
            id,
        })?;
        let value = c.value(ty, &key, 0)?;
        if !seen_keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                key: "general.alignment".into(),
                expected: "an unsigned integer",
                found: v.value_type().name().into(),
            })?;
            if a == 0 || !a.is_power_of_two() || a > 65536 {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut seen_tensors = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor name #{i}"))?;
        let n_dims = c.u32(&|| format!("dimension count of tensor {name:?}"))? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(GgufError::BadShape {
                tensor: name,
                reason: format!("{n_dims} dimensions (expected 1..={MAX_DIMS})"),
            });
        }
        let mut shape = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            shape.push(c.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownTensorType {
            tensor: name.clone(),
            id: type_id,
        })?;
        if shape.contains(&0) {
            return Err(GgufError::BadShape {
                tensor: name,
                reason: format!("a zero dimension in {shape:?}"),
            });
        }
        let n_elements = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        if !shape[0].is_multiple_of(ggml_type.block_size() as u64) {
            return Err(GgufError::BadShape {
                tensor: name,
                reason: format!(
                    "row length {} is not a multiple of the {} block size {}",
                    shape[0],
                    ggml_type,
                    ggml_type.block_size()
                ),
            });
        }
        let n_bytes = ggml_type
            .row_bytes(n_elements)
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        if offset % alignment != 0 {
            return Err(GgufError::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
            });
        }
        if !seen_tensors.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor(name));
        }
        tensors.push(TensorInfo {
            name,
            shape,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let data_len = (buf.len() as u64).saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if end.is_none_or(|e| e > data_len) || (n_tensors > 0 && data_offset > buf.len() as u64) {
            return Err(GgufError::TensorOutOfRange {
                tensor: t.name.clone(),
                offset: t.offset,
                size: t.n_bytes,
                data_len,
            });
        }
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]], &tensors[w[1]]);
        if a.offset + a.n_bytes > b.offset {
            return Err(GgufError::OverlappingTensors {
                first: a.name.clone(),
                second: b.name.clone(),
            });
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}
