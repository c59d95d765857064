//! Byte-level BPE tokenizer built from GGUF metadata.
