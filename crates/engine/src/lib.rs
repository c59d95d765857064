//! verispec: an exact (batch-invariant) inference engine for phi3 / llama GGUF models.
//!
//! Data flow:
//! GGUF → config + tokenizer → shards (weights + KV) → forward → greedy or
//! speculative loop → tokens → CLI or server.

pub mod gguf;
pub mod quant;
pub mod tokenizer;
