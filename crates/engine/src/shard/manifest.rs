//! The runtime manifest of a sharded model (format `verispec-manifest`, version 1; see
//! docs/MANIFEST.md). Paths are relative to the manifest's folder. Validated on load: version,
//! layer coverage (exactly 0..n_layer, no gap, no overlap), embedding in the first shard, the LM
//! head in the last, devices well-formed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::EngineError;

pub const FORMAT: &str = "verispec-manifest";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub source: SourceModel,
    /// Where the tokenizer comes from: every shard file carries the source's metadata, so this
    /// names the shard file whose tokenizer is used (the first).
    pub tokenizer: String,
    /// The verifier width the artifacts were validated for.
    pub verify_width: usize,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceModel {
    pub path: String,
    pub sha256: String,
    pub arch: String,
    pub n_layer: usize,
    /// The arch's hyperparameters (GGUF key names without the arch prefix).
    pub hparams: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// [start, end)
    pub layers: [usize; 2],
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// cpu or cuda:N
    pub device: String,
    pub embed: bool,
    pub output_norm: bool,
    pub lm_head: bool,
    /// Tensor count per ggml type name.
    pub tensor_types: BTreeMap<String, usize>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> EngineError {
    EngineError::BadInput(format!("manifest {}: {msg}", path.display()))
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| {
            EngineError::Io(format!("cannot read manifest {}: {e}", path.display()))
        })?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(path, e))?;
        m.validate().map_err(|e| bad(path, e))?;
        Ok(m)
    }

    /// Structural checks: format, version, coverage, placement of embedding and head, devices.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return Err(format!(
                "version {} is not supported (this build reads version {VERSION})",
                self.version
            ));
        }
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        if !(2..=8).contains(&self.verify_width) {
            return Err(format!(
                "verify_width {} is out of range 2..8",
                self.verify_width
            ));
        }
        check_coverage(
            &self
                .shards
                .iter()
                .map(|s| (s.layers[0], s.layers[1]))
                .collect::<Vec<_>>(),
            self.source.n_layer,
        )?;
        for (i, s) in self.shards.iter().enumerate() {
            let first = i == 0;
            let last = i + 1 == self.shards.len();
            if s.embed != first {
                return Err(format!(
                    "shard {i} ({}): token_embd must be in the first shard only",
                    s.path
                ));
            }
            if s.lm_head != last || s.output_norm != last {
                return Err(format!(
                    "shard {i} ({}): output_norm and the LM head must be in the last shard only",
                    s.path
                ));
            }
            parse_device(&s.device).map_err(|e| format!("shard {i} ({}): {e}", s.path))?;
            if s.path.is_empty() || Path::new(&s.path).is_absolute() {
                return Err(format!("shard {i}: path {:?} must be relative", s.path));
            }
        }
        Ok(())
    }

    /// A shard's file, resolved against the manifest's folder.
    pub fn shard_path(&self, manifest_path: &Path, i: usize) -> PathBuf {
        manifest_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.shards[i].path)
    }
}

/// Ranges [start, end) must tile 0..n_layer in order with no gap and no overlap.
pub fn check_coverage(ranges: &[(usize, usize)], n_layer: usize) -> Result<(), String> {
    let mut next = 0;
    for (i, &(s, e)) in ranges.iter().enumerate() {
        if s >= e {
            return Err(format!("shard {i}: empty or reversed layer range {s}:{e}"));
        }
        if s > next {
            return Err(format!(
                "gap: layers {next}..{s} are in no shard (before shard {i})"
            ));
        }
        if s < next {
            return Err(format!(
                "overlap: shard {i} starts at layer {s} but layers up to {next} are already covered"
            ));
        }
        next = e;
    }
    if next != n_layer {
        return Err(format!(
            "coverage ends at layer {next} but the model has {n_layer} layers"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

pub fn parse_device(s: &str) -> Result<Device, String> {
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = s.strip_prefix("cuda:") {
        if let Ok(i) = n.parse::<u32>() {
            return Ok(Device::Cuda(i));
        }
    }
    Err(format!("unknown device {s:?}; expected cpu or cuda:N"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_accepts_tilings() {
        assert!(check_coverage(&[(0, 20), (20, 24), (24, 30), (30, 32)], 32).is_ok());
        assert!(check_coverage(&[(0, 32)], 32).is_ok());
    }

    #[test]
    fn coverage_rejects_gap_overlap_short_and_empty() {
        assert!(check_coverage(&[(0, 10), (11, 32)], 32)
            .unwrap_err()
            .contains("gap"));
        assert!(check_coverage(&[(0, 10), (9, 32)], 32)
            .unwrap_err()
            .contains("overlap"));
        assert!(check_coverage(&[(0, 10)], 32)
            .unwrap_err()
            .contains("ends at layer 10"));
        assert!(check_coverage(&[(0, 0), (0, 32)], 32)
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn devices() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device("cuda:1"), Ok(Device::Cuda(1)));
        assert!(parse_device("gpu").is_err());
    }
}
