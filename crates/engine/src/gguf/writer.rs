//! GGUF v3 writer. The header (metadata + tensor infos) is declared first; tensor data is then
//! streamed in declaration order, so multi-GB files are written without holding them in memory.

use std::io::Write;

use super::error::GgufError;
use super::reader::{TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS};
use super::types::GgmlType;
use super::value::{Value, ValueType};

#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    next_offset: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn werr(msg: impl Into<String>) -> GgufError {
    GgufError::Write(msg.into())
}

fn valid_alignment(a: u64) -> bool {
    a != 0 && a.is_power_of_two() && a <= 65536
}

const ALIGNMENT_KEY: &str = "general.alignment";

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
            next_offset: 0,
        }
    }

    /// Version 2 and 3 share the layout; v3 only adds big-endian support, which we never write.
    pub fn set_version(&mut self, version: u32) -> Result<(), GgufError> {
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        self.version = version;
        Ok(())
    }

    /// Set `general.alignment`. Must be called before any tensor is added.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<(), GgufError> {
        if !valid_alignment(alignment) {
            return Err(GgufError::BadAlignment(alignment));
        }
        if !self.tensors.is_empty() {
            return Err(werr("set_alignment after tensors were added"));
        }
        self.alignment = alignment;
        self.metadata.retain(|(k, _)| k != ALIGNMENT_KEY);
        if alignment != DEFAULT_ALIGNMENT {
            self.metadata
                .push((ALIGNMENT_KEY.into(), Value::U32(alignment as u32)));
        }
        Ok(())
    }

    /// Add or replace a metadata key.
    ///
    /// Setting `general.alignment` to a valid alignment before any tensor is added also sets the
    /// alignment the tensors are laid out with (as `set_alignment` does, but keeping the value's
    /// type), so copying every key of an existing file gives a consistent file. An invalid value,
    /// or one set after tensors were added, is reported by `begin`.
    pub fn set_kv(&mut self, key: impl Into<String>, value: Value) {
        let key = key.into();
        if key == ALIGNMENT_KEY && self.tensors.is_empty() {
            if let Some(a) = value.as_u64().filter(|&a| valid_alignment(a)) {
                self.alignment = a;
            }
        }
        if let Some(slot) = self.metadata.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.metadata.push((key, value));
        }
    }

    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Declare a tensor; its data must later be written in declaration order.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[u64],
        ggml_type: GgmlType,
    ) -> Result<&TensorInfo, GgufError> {
        let name = name.into();
        if shape.is_empty() || shape.len() > MAX_DIMS || shape.contains(&0) {
            return Err(werr(format!("tensor {name:?}: bad shape {shape:?}")));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::DuplicateTensor(name));
        }
        let n = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        if !shape[0].is_multiple_of(ggml_type.block_size() as u64) {
            return Err(werr(format!(
                "tensor {name:?}: row length {} is not a multiple of the {ggml_type} block size",
                shape[0]
            )));
        }
        let n_bytes = ggml_type
            .row_bytes(n)
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        let offset = self.next_offset;
        self.next_offset = offset
            .checked_add(n_bytes)
            .and_then(|end| end.div_ceil(self.alignment).checked_mul(self.alignment))
            .ok_or_else(|| GgufError::ShapeOverflow {
                tensor: name.clone(),
            })?;
        self.tensors.push(TensorInfo {
            name,
            shape: shape.to_vec(),
            ggml_type,
            offset,
            n_bytes,
        });
        Ok(self.tensors.last().expect("just pushed"))
    }

    /// Check that the metadata can be written as a file the reader accepts: every array's items
    /// have its declared element type, arrays nest at most as deep as the reader allows, and
    /// `general.alignment`, if present, is a valid alignment equal to the one tensors were laid
    /// out with.
    pub fn validate(&self) -> Result<(), GgufError> {
        for (k, v) in &self.metadata {
            check_value(k, v, 0)?;
        }
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None if self.alignment != DEFAULT_ALIGNMENT => Err(werr(format!(
                "tensors are laid out with alignment {} but {ALIGNMENT_KEY} is missing",
                self.alignment
            ))),
            None => Ok(()),
            Some((_, v)) => {
                let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                    key: ALIGNMENT_KEY.into(),
                    expected: "an unsigned integer",
                    found: v.value_type().name().into(),
                })?;
                if !valid_alignment(a) {
                    return Err(GgufError::BadAlignment(a));
                }
                if a != self.alignment {
                    return Err(werr(format!(
                        "{ALIGNMENT_KEY} is {a} but tensors were laid out with alignment {} \
                         (set it before adding tensors)",
                        self.alignment
                    )));
                }
                Ok(())
            }
        }
    }

    /// The header bytes, padded to the start of the data section. Call `validate` (as `begin`
    /// does) to make sure they form a file the reader accepts.
    pub fn header_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_value(&mut out, v);
        }
        for t in &self.tensors {
            put_str(&mut out, &t.name);
            out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for d in &t.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(padded as usize, 0);
        out
    }

    /// Bytes of the whole file once written.
    pub fn total_size(&self) -> u64 {
        let data_end = self
            .tensors
            .last()
            .map(|t| t.offset + t.n_bytes)
            .unwrap_or(0);
        self.header_bytes().len() as u64 + data_end
    }

    /// Write the header and return a writer that takes the tensor data in order.
    pub fn begin<W: Write>(self, mut w: W) -> Result<TensorDataWriter<W>, GgufError> {
        self.validate()?;
        w.write_all(&self.header_bytes())
            .map_err(|e| werr(format!("writing header: {e}")))?;
        Ok(TensorDataWriter {
            w,
            tensors: self.tensors,
            next: 0,
            written: 0,
            pending: 0,
        })
    }
}

/// Streams tensor data after the header. Each tensor's bytes may arrive in several chunks.
pub struct TensorDataWriter<W: Write> {
    w: W,
    tensors: Vec<TensorInfo>,
    next: usize,
    /// Bytes written of the current tensor.
    pending: u64,
    /// Bytes written into the data section so far.
    written: u64,
}

impl<W: Write> TensorDataWriter<W> {
    /// The tensor whose data is expected next.
    pub fn next_tensor(&self) -> Option<&TensorInfo> {
        self.tensors.get(self.next)
    }

    /// Append bytes of the current tensor; moves to the next one when it is complete.
    pub fn write_chunk(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let t = self
            .tensors
            .get(self.next)
            .ok_or_else(|| werr("more tensor data than declared"))?;
        if self.pending + bytes.len() as u64 > t.n_bytes {
            return Err(werr(format!(
                "tensor {:?}: got more than its {} bytes",
                t.name, t.n_bytes
            )));
        }
        if self.pending == 0 {
            let pad = t.offset - self.written;
            self.w
                .write_all(&vec![0u8; pad as usize])
                .map_err(|e| werr(format!("writing padding: {e}")))?;
            self.written += pad;
        }
        self.w
            .write_all(bytes)
            .map_err(|e| werr(format!("writing tensor {:?}: {e}", t.name)))?;
        self.pending += bytes.len() as u64;
        self.written += bytes.len() as u64;
        if self.pending == t.n_bytes {
            self.next += 1;
            self.pending = 0;
        }
        Ok(())
    }

    /// Write one whole tensor, checking its name.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        match self.tensors.get(self.next) {
            Some(t) if t.name == name && self.pending == 0 => self.write_chunk(bytes),
            Some(t) => Err(werr(format!(
                "expected data for tensor {:?}, got {name:?}",
                t.name
            ))),
            None => Err(werr(format!("tensor {name:?} was not declared"))),
        }
    }

    /// Check that every tensor was written, flush, and return the inner writer.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(werr(format!("tensor {:?} was never written", t.name)));
        }
        self.w.flush().map_err(|e| werr(format!("flush: {e}")))?;
        Ok(self.w)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(ety, items) => {
            out.extend_from_slice(&(*ety as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
    }
}

/// Arrays must hold items of their declared element type and nest at most `MAX_ARRAY_DEPTH`
/// deep; anything else would be written as bytes that do not parse back.
fn check_value(key: &str, v: &Value, depth: usize) -> Result<(), GgufError> {
    if let Value::Array(ety, items) = v {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(werr(format!(
                "metadata key {key:?}: arrays nest more than {MAX_ARRAY_DEPTH} deep"
            )));
        }
        for it in items {
            if it.value_type() != *ety {
                return Err(werr(format!(
                    "metadata key {key:?}: array of {} holds a {}",
                    ety.name(),
                    it.value_type().name()
                )));
            }
            check_value(key, it, depth + 1)?;
        }
    }
    Ok(())
}

/// Convenience constructors for metadata arrays.
pub fn str_array<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(
        ValueType::String,
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}

pub fn f32_array(items: &[f32]) -> Value {
    Value::Array(
        ValueType::F32,
        items.iter().map(|&x| Value::F32(x)).collect(),
    )
}

pub fn i32_array(items: &[i32]) -> Value {
    Value::Array(
        ValueType::I32,
        items.iter().map(|&x| Value::I32(x)).collect(),
    )
}
