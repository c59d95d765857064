//! GGUF v2/v3 container: reader over mmap, writer, metadata values, tensor types.

pub mod types;
pub use types::GgmlType;
