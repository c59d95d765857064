//! verispec: an exact (batch-invariant) inference engine for phi3 / llama GGUF models.
//!
//! Data flow:
//! GGUF → config + tokenizer → shards (weights + KV slots) → forward → greedy or
//! speculative loop → tokens → CLI or server. Several sequences (server slots) share passes
//! through a batch thread; each still gets the bits it would alone.
//!
//! - `gguf`: container reader (mmap) and writer
//! - `quant`: block formats, scalar references
//! - `tokenizer`: byte-level BPE from GGUF metadata
//! - `model`: config, RoPE, one file per architecture, shards
//! - `backend`: the op trait and its CPU implementation
//! - `engine`: loading, sessions (KV state + tokens), LongRoPE re-encoding
//! - `batch`: the batch thread that merges concurrent sessions' passes

pub mod backend;
pub mod batch;
pub mod bench;
pub mod chat;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod model;
pub mod npy;
pub mod quant;
pub mod shard;
pub mod synth;
pub mod tokenizer;
pub mod validate;

pub use error::EngineError;
