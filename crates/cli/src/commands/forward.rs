use std::path::PathBuf;

use verispec::model::LogitRows;

use crate::common::{fail, parse_path, CliError, CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids, run as one pass with nothing prepended.
    #[arg(long)]
    pub ids: String,
    /// Output .npy: little-endian float32 [n_ids, n_vocab], C order.
    #[arg(long)]
    pub out: PathBuf,
    /// fast (what `run` uses) or reference (the f32 golden path).
    #[arg(long, default_value = "fast")]
    pub path: String,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_ids(s: &str) -> CliResult<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| CliError::usage(format!("--ids: {t:?} is not a token id")))
        })
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err(fail("--ids is empty: give at least one token id"));
    }
    Ok(ids)
}

pub fn run(a: Args) -> CliResult {
    let ids = parse_ids(&a.ids)?;
    let path = parse_path(&a.path)?;
    let engine = a.model.load(path)?;
    let mut session = engine.new_session();
    let logits = session.forward(&ids, LogitRows::All)?;
    let n_vocab = engine.cfg.n_vocab;
    verispec::npy::write_f32(&a.out, &logits, &[ids.len(), n_vocab])
        .map_err(|e| fail(format!("cannot write {}: {e}", a.out.display())))?;
    if a.json {
        crate::common::print_json(&serde_json::json!({
            "out": a.out, "n_ids": ids.len(), "n_vocab": n_vocab, "path": a.path,
        }))?;
    } else {
        eprintln!(
            "wrote {} [{} x {}] ({} path)",
            a.out.display(),
            ids.len(),
            n_vocab,
            a.path
        );
    }
    Ok(())
}
