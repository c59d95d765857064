//! Sharded models: the manifest, `export`, and loading a manifest into a pipeline of shards.

pub mod export;
pub mod manifest;
