//! Model hyperparameters read from GGUF metadata. Runtime parameters (context, threads, draft
//! width) live elsewhere; this is only what the file says about the model.
//!
//! Keys are read as `{arch}.{name}`. Optional keys and their documented defaults:
//! - `rope.freq_base`: 10000 (llama.cpp's default)
//! - `rope.dimension_count`: head_dim (full rotary)
//! - `attention.key_length`: embedding_length / head_count
//! - `rope.scaling.attn_factor` (phi3 LongRoPE): sqrt(1 + ln(ctx/orig)/ln(orig)), as transformers
//!   computes it when the config gives none; 1.0 when ctx <= orig
//! - `vocab_size`: length of `tokenizer.ggml.tokens`, else token_embd's ne[1]

use std::fmt;

use crate::gguf::{GgufError, GgufFile};
use crate::quant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Phi3,
}

impl Arch {
    pub const SUPPORTED: &'static [&'static str] = &["llama", "phi3"];

    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "llama" => Some(Arch::Llama),
            "phi3" => Some(Arch::Phi3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Phi3 => "phi3",
        }
    }

    /// GGUF llama stores Q/K rows interleaved (NORM rope); phi3 uses rotate-half (NEOX).
    pub fn rope_kind(self) -> RopeKind {
        match self {
            Arch::Llama => RopeKind::Norm,
            Arch::Phi3 => RopeKind::Neox,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// Rotate adjacent pairs (x[2i], x[2i+1]).
    Norm,
    /// Rotate halves (x[i], x[i + n_rot/2]).
    Neox,
}

/// Phi-3 LongRoPE: per-dimension frequency divisors, chosen by sequence length.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub original_context_length: u32,
    /// Multiplies cos and sin in both modes.
    pub attn_factor: f32,
    /// [n_rot/2]
    pub short_factors: Vec<f32>,
    /// [n_rot/2]
    pub long_factors: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RopeConfig {
    pub kind: RopeKind,
    /// Rotated dimensions per head (partial rotary when < head_dim).
    pub n_rot: usize,
    pub freq_base: f32,
    pub longrope: Option<LongRope>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    /// Training context (`context_length`).
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope: RopeConfig,
    /// True when `output.weight` is absent and the LM head reuses token_embd.
    pub tied_embeddings: bool,
}

#[derive(Debug)]
pub enum ConfigError {
    Gguf(GgufError),
    UnsupportedArch(String),
    Invalid(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Gguf(e) => write!(f, "{e}"),
            ConfigError::UnsupportedArch(a) => write!(
                f,
                "unsupported architecture {a:?}; supported: {}",
                Arch::SUPPORTED.join(", ")
            ),
            ConfigError::Invalid(m) => write!(f, "invalid model config: {m}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<GgufError> for ConfigError {
    fn from(e: GgufError) -> Self {
        ConfigError::Gguf(e)
    }
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Largest value accepted for any dimension; guards allocations sized from metadata.
const MAX_DIM: u64 = 1 << 24;

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig, ConfigError> {
        let arch_name = f.get_str("general.architecture")?;
        let arch = Arch::from_name(arch_name)
            .ok_or_else(|| ConfigError::UnsupportedArch(arch_name.to_string()))?;
        let p = arch.name();
        let key = |k: &str| format!("{p}.{k}");
        let dim = |k: &str| -> Result<usize, ConfigError> {
            let v = f.get_u64(&key(k))?;
            if v == 0 || v > MAX_DIM {
                return Err(invalid(format!("{} = {v} is out of range", key(k))));
            }
            Ok(v as usize)
        };
        let opt_dim = |k: &str| -> Result<Option<usize>, ConfigError> {
            if f.get(&key(k)).is_none() {
                return Ok(None);
            }
            dim(k).map(Some)
        };

        let n_embd = dim("embedding_length")?;
        let n_layer = dim("block_count")?;
        let n_ff = dim("feed_forward_length")?;
        let n_head = dim("attention.head_count")?;
        let n_head_kv = opt_dim("attention.head_count_kv")?.unwrap_or(n_head);
        let n_ctx_train = dim("context_length")?;
        let rms_eps = f.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(invalid(format!("rms epsilon {rms_eps} must be positive")));
        }
        if n_head % n_head_kv != 0 {
            return Err(invalid(format!(
                "head_count {n_head} is not a multiple of head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match opt_dim("attention.key_length")? {
            Some(h) => h,
            None => {
                if n_embd % n_head != 0 {
                    return Err(invalid(format!(
                        "embedding_length {n_embd} is not a multiple of head_count {n_head}"
                    )));
                }
                n_embd / n_head
            }
        };
        if let Some(vl) = opt_dim("attention.value_length")? {
            if vl != head_dim {
                return Err(invalid(format!(
                    "value_length {vl} differs from key_length {head_dim} (unsupported)"
                )));
            }
        }
        let n_rot = opt_dim("rope.dimension_count")?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(invalid(format!(
                "rope.dimension_count {n_rot} must be even and at most head_dim {head_dim}"
            )));
        }
        let freq_base = f.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0);
        if !(freq_base.is_finite() && freq_base > 1.0) {
            return Err(invalid(format!("rope.freq_base {freq_base} must be > 1")));
        }
        if let Some(t) = f.opt_str(&key("rope.scaling.type"))? {
            if t != "none" && !(arch == Arch::Phi3 && (t == "longrope" || t == "su")) {
                return Err(invalid(format!(
                    "rope.scaling.type {t:?} is not supported for {p}"
                )));
            }
        }

        let longrope = match (
            f.tensor("rope_factors_long.weight"),
            f.tensor("rope_factors_short.weight"),
        ) {
            (None, None) => None,
            (Some(l), Some(s)) => {
                let orig = f.get_u64(&key("rope.scaling.original_context_length"))?;
                if orig == 0 || orig > MAX_DIM {
                    return Err(invalid(format!(
                        "rope.scaling.original_context_length {orig} is out of range"
                    )));
                }
                let attn_factor = match f.opt_f32(&key("rope.scaling.attn_factor"))? {
                    Some(a) => a,
                    None => default_attn_factor(n_ctx_train as f64, orig as f64),
                };
                let read = |t: &crate::gguf::TensorInfo| -> Result<Vec<f32>, ConfigError> {
                    if t.n_elements() != (n_rot / 2) as u64 {
                        return Err(invalid(format!(
                            "{} has {} elements, expected n_rot/2 = {}",
                            t.name,
                            t.n_elements(),
                            n_rot / 2
                        )));
                    }
                    let v = quant::dequantize_tensor(
                        t.ggml_type,
                        f.tensor_data(t),
                        t.n_elements() as usize,
                    )
                    .map_err(|e| invalid(format!("{}: {e}", t.name)))?;
                    if v.iter().any(|x| !x.is_finite() || *x <= 0.0) {
                        return Err(invalid(format!(
                            "{} holds a non-positive or non-finite factor",
                            t.name
                        )));
                    }
                    Ok(v)
                };
                Some(LongRope {
                    original_context_length: orig as u32,
                    attn_factor,
                    short_factors: read(s)?,
                    long_factors: read(l)?,
                })
            }
            _ => {
                return Err(invalid(
                    "only one of rope_factors_long / rope_factors_short is present",
                ))
            }
        };

        // Shard files of middle layers carry no token_embd: the vocabulary size then comes from
        // the metadata alone.
        let embd = f.tensor("token_embd.weight");
        let n_vocab = match f.get(&key("vocab_size")) {
            Some(_) => dim("vocab_size")?,
            None => match f.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
                Some(a) if !a.is_empty() => a.len(),
                _ => match embd {
                    Some(e) => e.shape.get(1).copied().unwrap_or(0) as usize,
                    None => return Err(GgufError::MissingTensor("token_embd.weight".into()).into()),
                },
            },
        };
        if let Some(embd) = embd {
            if embd.shape.len() != 2 || embd.shape[0] != n_embd as u64 {
                return Err(invalid(format!(
                    "token_embd.weight has shape {:?}, expected [{n_embd}, n_vocab]",
                    embd.shape
                )));
            }
            if (embd.shape[1] as usize) < n_vocab {
                return Err(invalid(format!(
                    "token_embd.weight has {} rows but the vocabulary has {n_vocab} tokens",
                    embd.shape[1]
                )));
            }
        }

        Ok(ModelConfig {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            rms_eps,
            rope: RopeConfig {
                kind: arch.rope_kind(),
                n_rot,
                freq_base,
                longrope,
            },
            // A shard without the head cannot tell; the first shard's answer is used.
            tied_embeddings: f.tensor("output.weight").is_none(),
        })
    }

    /// Width of the K (and V) rows of one layer: n_head_kv * head_dim.
    pub fn n_embd_kv(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the Q rows: n_head * head_dim.
    pub fn n_embd_q(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// transformers' LongRoPE attention factor when the config gives none.
pub fn default_attn_factor(ctx: f64, orig: f64) -> f32 {
    let scale = ctx / orig;
    if scale <= 1.0 {
        1.0
    } else {
        (1.0 + scale.ln() / orig.ln()).sqrt() as f32
    }
}
