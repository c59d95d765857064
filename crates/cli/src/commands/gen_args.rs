//! Generation options shared by `run` and `chat`.

use verispec::generate::request::{GenRequest, Speculation};
use verispec::generate::sample::{fresh_seed, Sampling};

use crate::common::{CliError, CliResult};

#[derive(clap::Args, Debug, Clone)]
pub struct GenArgs {
    /// Maximum tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256)]
    pub n: usize,
    /// Keep going past end-of-generation tokens (they are fed back): exactly N tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Stop when the text contains S (repeatable); the text is cut before it.
    #[arg(long = "stop", value_name = "S")]
    pub stop: Vec<String>,
    /// Speculative decoding with n-gram prompt lookup (output identical to greedy).
    #[arg(long)]
    pub speculative: bool,
    /// Rows per verify pass: the last token plus up to T-1 drafts (2..8).
    #[arg(long, default_value_t = 4)]
    pub verify_width: usize,
    /// Shortest n-gram the drafter matches.
    #[arg(long, default_value_t = 1)]
    pub ngram_min: usize,
    /// Longest n-gram the drafter matches (tried first).
    #[arg(long, default_value_t = 8)]
    pub ngram_max: usize,
    /// Verify every draft the drafter offers (no adaptive draft length).
    #[arg(long)]
    pub no_adaptive: bool,
    /// Recompute every accepted token with single steps on a shadow cache; abort on any
    /// difference with the position and both logit rows.
    #[arg(long)]
    pub exactness_guard: bool,
    /// Sampling temperature; 0 (the default) is greedy. With --speculative the output is
    /// still token for token that of plain decoding with the same --seed.
    #[arg(long = "temp", alias = "temperature", default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the most likely tokens until their probability reaches P (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep tokens at least P times as likely as the most likely (0: all).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Seed of the sampling draws (default: a fresh one, printed with --json).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenArgs {
    pub fn request(&self) -> CliResult<GenRequest> {
        let speculative = if self.speculative {
            if !(2..=8).contains(&self.verify_width) {
                return Err(CliError::usage(format!(
                    "--verify-width {} is out of range 2..8",
                    self.verify_width
                )));
            }
            if self.ngram_min == 0 || self.ngram_min > self.ngram_max || self.ngram_max > 255 {
                return Err(CliError::usage(format!(
                    "--ngram-min {} / --ngram-max {}: need 1 <= min <= max <= 255",
                    self.ngram_min, self.ngram_max
                )));
            }
            Some(Speculation {
                verify_width: self.verify_width,
                ngram_min: self.ngram_min,
                ngram_max: self.ngram_max,
                adaptive: !self.no_adaptive,
                exactness_guard: self.exactness_guard,
                ..Default::default()
            })
        } else {
            if self.exactness_guard {
                return Err(CliError::usage("--exactness-guard needs --speculative"));
            }
            None
        };
        let sampling = Sampling {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            seed: self.seed.unwrap_or_else(fresh_seed),
        };
        sampling.check().map_err(CliError::usage)?;
        Ok(GenRequest {
            max_tokens: self.n,
            ignore_eos: self.ignore_eos,
            stop: self.stop.clone(),
            speculative,
            cancel: None,
            logprobs: None,
            sampling,
        })
    }
}
