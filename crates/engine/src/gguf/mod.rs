//! GGUF v2/v3 container: reader over mmap, writer, metadata values, tensor types.

pub mod error;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{parse_header, GgufFile, TensorInfo};
pub use types::GgmlType;
pub use value::{Value, ValueType};
pub use writer::GgufWriter;
