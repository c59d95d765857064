//! Typed errors for GGUF parsing. Every variant names what was wrong and where.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum GgufError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    BadMagic {
        found: [u8; 4],
    },
    UnsupportedVersion(u32),
    /// The file ended while reading `what`, which started at byte `offset`.
    Truncated {
        what: String,
        offset: u64,
    },
    /// A count or length read from the file cannot fit in the bytes that remain.
    CountTooLarge {
        what: String,
        count: u64,
        remaining: u64,
    },
    InvalidUtf8 {
        what: String,
        offset: u64,
    },
    UnknownValueType {
        key: String,
        id: u32,
    },
    NestingTooDeep {
        key: String,
    },
    DuplicateKey(String),
    BadAlignment(u64),
    UnknownTensorType {
        tensor: String,
        id: u32,
    },
    BadShape {
        tensor: String,
        reason: String,
    },
    ShapeOverflow {
        tensor: String,
    },
    DuplicateTensor(String),
    MisalignedTensor {
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    TensorOutOfRange {
        tensor: String,
        offset: u64,
        size: u64,
        data_len: u64,
    },
    OverlappingTensors {
        first: String,
        second: String,
    },
    MissingKey(String),
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },
    MissingTensor(String),
    /// A writer-side problem (bad input from the caller, or an I/O failure while writing).
    Write(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GgufError::*;
        match self {
            Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            BadMagic { found } => write!(
                f,
                "not a GGUF file: magic is {:?} (expected \"GGUF\")",
                String::from_utf8_lossy(found)
            ),
            UnsupportedVersion(v) => {
                write!(f, "unsupported GGUF version {v} (supported: 2 and 3)")
            }
            Truncated { what, offset } => {
                write!(f, "GGUF file is truncated: {what} at byte {offset} runs past the end")
            }
            CountTooLarge {
                what,
                count,
                remaining,
            } => write!(
                f,
                "GGUF {what} is {count}, more than the {remaining} bytes left in the file"
            ),
            InvalidUtf8 { what, offset } => {
                write!(f, "GGUF {what} at byte {offset} is not valid UTF-8")
            }
            UnknownValueType { key, id } => {
                write!(f, "metadata key {key:?} has unknown value type id {id}")
            }
            NestingTooDeep { key } => write!(f, "metadata key {key:?} nests arrays too deeply"),
            DuplicateKey(k) => write!(f, "metadata key {k:?} appears twice"),
            BadAlignment(a) => write!(
                f,
                "general.alignment is {a}; it must be a power of two between 1 and 65536"
            ),
            UnknownTensorType { tensor, id } => {
                write!(f, "tensor {tensor:?} has unknown or unsupported ggml type id {id}")
            }
            BadShape { tensor, reason } => write!(f, "tensor {tensor:?} has a bad shape: {reason}"),
            ShapeOverflow { tensor } => {
                write!(f, "tensor {tensor:?}: shape size overflows 64 bits")
            }
            DuplicateTensor(t) => write!(f, "tensor {t:?} appears twice"),
            MisalignedTensor {
                tensor,
                offset,
                alignment,
            } => write!(
                f,
                "tensor {tensor:?} data offset {offset} is not a multiple of the alignment {alignment}"
            ),
            TensorOutOfRange {
                tensor,
                offset,
                size,
                data_len,
            } => write!(
                f,
                "tensor {tensor:?} data [{offset}, {offset}+{size}) lies outside the {data_len}-byte data section"
            ),
            OverlappingTensors { first, second } => {
                write!(f, "tensors {first:?} and {second:?} overlap in the data section")
            }
            MissingKey(k) => write!(f, "required metadata key {k:?} is missing"),
            WrongType {
                key,
                expected,
                found,
            } => write!(f, "metadata key {key:?} should be {expected} but is {found}"),
            MissingTensor(t) => write!(f, "required tensor {t:?} is missing"),
            Write(msg) => write!(f, "GGUF write: {msg}"),
        }
    }
}

impl std::error::Error for GgufError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GgufError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A short machine-readable kind, used by tests and fuzzing statistics.
impl GgufError {
    pub fn kind(&self) -> &'static str {
        use GgufError::*;
        match self {
            Io { .. } => "io",
            BadMagic { .. } => "bad_magic",
            UnsupportedVersion(_) => "unsupported_version",
            Truncated { .. } => "truncated",
            CountTooLarge { .. } => "count_too_large",
            InvalidUtf8 { .. } => "invalid_utf8",
            UnknownValueType { .. } => "unknown_value_type",
            NestingTooDeep { .. } => "nesting_too_deep",
            DuplicateKey(_) => "duplicate_key",
            BadAlignment(_) => "bad_alignment",
            UnknownTensorType { .. } => "unknown_tensor_type",
            BadShape { .. } => "bad_shape",
            ShapeOverflow { .. } => "shape_overflow",
            DuplicateTensor(_) => "duplicate_tensor",
            MisalignedTensor { .. } => "misaligned_tensor",
            TensorOutOfRange { .. } => "tensor_out_of_range",
            OverlappingTensors { .. } => "overlapping_tensors",
            MissingKey(_) => "missing_key",
            WrongType { .. } => "wrong_type",
            MissingTensor(_) => "missing_tensor",
            Write(_) => "write",
        }
    }
}
