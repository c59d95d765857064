use std::path::PathBuf;

use verispec::backend::ComputePath;
use verispec::bench::{bench, BenchOptions};

use crate::common::{print_json, CliError, CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length: seeded random token ids.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode per repeat.
    #[arg(short = 'n', long = "n-predict", default_value_t = 32)]
    pub n: usize,
    /// Rows of the verify pass timed for verify_ratio.
    #[arg(long, default_value_t = 4)]
    pub verify_width: usize,
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Skip the memory-bandwidth probe (it reads 1 GiB five times).
    #[arg(long)]
    pub no_bandwidth: bool,
    /// A prompt suite (.jsonl with id, prompt, n_gen): greedy vs speculative per prompt.
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// With --suite: also run speculative decoding and compare.
    #[arg(long)]
    pub speculative: bool,
    /// With --suite: runs per prompt (the speedup is the median over runs).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// With --suite: keep generating past end-of-generation (exactly n_gen tokens).
    #[arg(long)]
    pub ignore_eos: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> CliResult {
    if let Some(suite) = &a.suite {
        return super::suite::run(&a, suite);
    }
    if a.repeats == 0 {
        return Err(CliError::usage("--repeats must be at least 1"));
    }
    let engine = a.model.load(ComputePath::Fast)?;
    let r = bench(
        &engine,
        &BenchOptions {
            prompt_tokens: a.prompt_tokens,
            n_decode: a.n,
            repeats: a.repeats,
            verify_width: a.verify_width,
            probe_bandwidth: !a.no_bandwidth,
        },
    )?;
    if a.json {
        return print_json(
            &serde_json::to_value(&r).map_err(|e| crate::common::fail(e.to_string()))?,
        );
    }
    println!("model            {}", r.model);
    println!("threads          {}", r.threads);
    println!("kernel           {}", r.kernel);
    println!(
        "prefill pp{:<5}  {:.1} tok/s (min {:.1}, max {:.1})",
        r.prompt_tokens, r.prefill_tok_s.median, r.prefill_tok_s.min, r.prefill_tok_s.max
    );
    println!(
        "decode tg{:<6}  {:.1} tok/s (min {:.1}, max {:.1})",
        r.n_decode, r.decode_tok_s.median, r.decode_tok_s.min, r.decode_tok_s.max
    );
    for s in &r.shards {
        println!(
            "  shard {:>2}..{:<2} {:<6} layers {:.2} ms/token, head {:.2} ms/token",
            s.layers[0], s.layers[1], s.device, s.layers_ms_per_token, s.head_ms_per_token
        );
    }
    println!(
        "verify T={}       {:.2}x a single step",
        r.verify_width, r.verify_ratio
    );
    if r.bandwidth_gbs > 0.0 {
        println!(
            "bandwidth        {:.1} GB/s measured; decode streams {:.2} GB/token = {:.0}% of it",
            r.bandwidth_gbs,
            r.weight_bytes_per_token as f64 / 1e9,
            r.bandwidth_pct
        );
    }
    println!(
        "peak RSS         {:.1} MiB",
        r.peak_rss_bytes as f64 / (1 << 20) as f64
    );
    Ok(())
}
