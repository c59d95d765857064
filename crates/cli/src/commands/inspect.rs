use std::path::PathBuf;

use serde_json::json;
use verispec::gguf::GgufFile;

use crate::common::{fail, print_json, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF file to inspect.
    pub model: PathBuf,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> CliResult {
    let f = GgufFile::open(&a.model).map_err(|e| fail(format!("{}: {e}", a.model.display())))?;
    let (arch, hparams) = f.arch_hparams();
    let prefix = format!("{arch}.");
    let n_vocab = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len());
    let tok = json!({
        "model": f.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        "pre": f.get("tokenizer.ggml.pre").and_then(|v| v.as_str()),
        "n_vocab": n_vocab,
        "bos": f.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_u64()),
        "eos": f.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_u64()),
    });
    let params: u64 = f.tensors.iter().map(|t| t.n_elements()).sum();
    let bytes = f.tensor_bytes();
    if a.json {
        let tensors: Vec<serde_json::Value> = f
            .tensors
            .iter()
            .map(|t| {
                json!({"name": t.name, "type": t.ggml_type.name(), "shape": t.shape, "bytes": t.n_bytes})
            })
            .collect();
        return print_json(&json!({
            "arch": arch,
            "hparams": hparams,
            "tokenizer": tok,
            "tensors": tensors,
            "totals": {"n_tensors": f.tensors.len(), "bytes": bytes, "params": params},
        }));
    }
    println!("file:      {} (GGUF v{})", a.model.display(), f.version);
    println!("arch:      {arch}");
    for (k, v) in &hparams {
        println!("  {k:<40} {v}");
    }
    println!(
        "tokenizer: model={} pre={} n_vocab={} bos={} eos={}",
        tok["model"], tok["pre"], tok["n_vocab"], tok["bos"], tok["eos"]
    );
    for (k, v) in &f.metadata {
        if !k.starts_with(&prefix) && !k.starts_with("tokenizer.ggml.") {
            println!("  {k:<40} {}", v.display_short());
        }
    }
    println!("tensors:   {}", f.tensors.len());
    for t in &f.tensors {
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        println!(
            "  {:<36} {:<6} [{}] {} bytes",
            t.name,
            t.ggml_type.name(),
            shape.join(", "),
            t.n_bytes
        );
    }
    println!(
        "totals:    {} tensors, {} params, {:.1} MiB",
        f.tensors.len(),
        params,
        bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
