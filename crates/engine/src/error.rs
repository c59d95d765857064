//! The engine's error type. Every variant carries a message that says what to do.

use std::fmt;

use crate::gguf::GgufError;
use crate::model::config::ConfigError;

#[derive(Debug)]
pub enum EngineError {
    Gguf(GgufError),
    Config(ConfigError),
    /// The model file is usable but something in it is unsupported or inconsistent.
    Model(String),
    /// Bad input from the user: token ids, prompt length, options.
    BadInput(String),
    Tokenizer(String),
    Backend(String),
    Io(String),
    /// A NaN or infinity appeared in the hidden state after `layer`.
    NonFinite {
        layer: usize,
        what: String,
    },
    /// The exactness guard saw a verify row differ from sequential decoding.
    Exactness(Box<crate::generate::speculative::Divergence>),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Gguf(e) => write!(f, "{e}"),
            EngineError::Config(e) => write!(f, "{e}"),
            EngineError::Model(m) => write!(f, "model: {m}"),
            EngineError::BadInput(m) => write!(f, "{m}"),
            EngineError::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            EngineError::Backend(m) => write!(f, "backend: {m}"),
            EngineError::Io(m) => write!(f, "{m}"),
            EngineError::NonFinite { layer, what } => {
                write!(f, "non-finite value after layer {layer}: {what}")
            }
            EngineError::Exactness(d) => write!(f, "{}", d.summary()),
        }
    }
}

impl std::error::Error for EngineError {}

impl From<GgufError> for EngineError {
    fn from(e: GgufError) -> Self {
        EngineError::Gguf(e)
    }
}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> Self {
        EngineError::Config(e)
    }
}
