//! Generation options shared by `run` and `chat`.

use verispec::generate::request::{GenRequest, Speculation};

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
        Ok(GenRequest {
            max_tokens: self.n,
            ignore_eos: self.ignore_eos,
            stop: self.stop.clone(),
            speculative,
            cancel: None,
            logprobs: None,
        })
    }
}
