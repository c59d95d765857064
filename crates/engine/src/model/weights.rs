//! Host views of tensors in a mapped GGUF file. No bytes are copied.

use std::sync::Arc;

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

/// A tensor inside a mapped GGUF file: [n_rows, row_len] in GGUF `ne` terms
/// (ne[0] = row_len is contiguous).
#[derive(Clone)]
pub struct HostTensor {
    pub file: Arc<GgufFile>,
    pub info: TensorInfo,
}

impl std::fmt::Debug for HostTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.info.name, self.info.shape, self.info.ggml_type
        )
    }
}

impl HostTensor {
    pub fn data(&self) -> &[u8] {
        self.file.tensor_data(&self.info)
    }
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
    /// Elements per row (ne[0]).
    pub fn row_len(&self) -> usize {
        self.info.row_len() as usize
    }
    pub fn n_rows(&self) -> usize {
        self.info.n_rows() as usize
    }
    pub fn row_bytes(&self) -> usize {
        self.info.n_bytes as usize / self.n_rows().max(1)
    }
    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data()[r * rb..(r + 1) * rb]
    }
}

/// Looks up tensors by name and checks their shapes.
pub struct TensorSource {
    pub file: Arc<GgufFile>,
}

impl TensorSource {
    pub fn get(&self, name: &str) -> Result<HostTensor, GgufError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.to_string()))?
            .clone();
        Ok(HostTensor {
            file: self.file.clone(),
            info,
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// A tensor whose shape must equal `shape` (GGUF ne order).
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor, GgufError> {
        let t = self.get(name)?;
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.info.shape != want {
            return Err(GgufError::BadShape {
                tensor: name.to_string(),
                reason: format!("shape {:?}, expected {:?}", t.info.shape, want),
            });
        }
        Ok(t)
    }
}
