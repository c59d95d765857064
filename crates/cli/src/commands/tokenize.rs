use std::path::PathBuf;

use serde_json::json;
use verispec::gguf::GgufFile;
use verispec::tokenizer::Tokenizer;

use crate::common::{fail, print_json, resolve_model, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// GGUF model whose tokenizer to use (default: as for `run`).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Print {"ids": [...], "pieces": [...]} on stdout.
    #[arg(long)]
    pub json: bool,
    /// Text to tokenize. Special tokens written in it are parsed; BOS/EOS are added only as
    /// the model's metadata says (exactly as `run` tokenizes a prompt).
    pub text: String,
}

pub fn run(a: Args) -> CliResult {
    let path = resolve_model(a.model.as_ref())?;
    let f = GgufFile::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let tok = Tokenizer::from_gguf(&f).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let ids = tok.encode(&a.text, true, true);
    let pieces: Vec<String> = ids
        .iter()
        .map(|&id| String::from_utf8_lossy(tok.piece(id, true)).into_owned())
        .collect();
    if a.json {
        return print_json(&json!({"ids": ids, "pieces": pieces}));
    }
    for (id, p) in ids.iter().zip(&pieces) {
        println!("{id:>8} {p:?}");
    }
    eprintln!("{} tokens", ids.len());
    Ok(())
}
