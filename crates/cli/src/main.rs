//! The `verispec` command line. Thin: parses arguments, calls the engine, prints results.
//! stdout carries results (exactly one JSON object with --json); logs and streamed text that
//! are not the result go to stderr. Exit codes: 0 success, 1 failure, 2 usage error.

mod commands;
mod common;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "verispec",
    version,
    about = "Exact greedy and speculative decoding for phi3 / llama GGUF models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a GGUF file's architecture, hyperparameters, tokenizer and tensors.
    Inspect(commands::inspect::Args),
    /// One forward pass over given token ids; writes logits as .npy.
    Forward(commands::forward::Args),
    /// Tokenize text exactly as `run` tokenizes a prompt.
    Tokenize(commands::tokenize::Args),
    /// Generate text from a prompt (greedy, optionally speculative: identical output).
    Run(commands::run::Args),
    /// Interactive chat that keeps the KV cache between turns.
    Chat(commands::chat::Args),
    /// Speed: prefill, decode, per-shard time, verify cost, bandwidth share; or a prompt suite.
    Bench(commands::bench::Args),
    /// Split a model into layer-range shard files and a manifest.
    Export(commands::export::Args),
    /// Run the gates (hashes, golden, parity, residency) on a manifest, or --parity on a model.
    Validate(commands::validate::Args),
    /// Write a GGUF with a real model's shapes and vocabulary and seeded random weights.
    Synth(commands::synth::Args),
    /// OpenAI-compatible HTTP server: completions and chat (SSE streaming), /health, /metrics.
    Serve(commands::serve::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Forward(a) => commands::forward::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Validate(a) => commands::validate::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::Serve(a) => commands::serve::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
