//! Generation loops: greedy decoding (and, in `speculative`, drafting + block verification).
//!
//! Loops work on token ids and report each new token to a callback, which decides whether to go
//! on (end-of-generation and stop strings are the caller's policy, see `StopPolicy`).

pub mod ngram;
pub mod request;
pub mod speculative;
pub mod stop;

use std::time::Instant;

use crate::engine::{argmax, Session};
use crate::model::LogitRows;
use crate::EngineError;

/// What the callback tells the loop after each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenStats {
    pub n_prompt: usize,
    pub n_generated: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
}

impl GenStats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.n_prompt, self.prefill_s)
    }
    /// Tokens after the first (which comes from the prefill) per second of decoding.
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.n_generated.saturating_sub(1), self.decode_s)
    }
    pub fn ms_per_token(&self) -> f64 {
        let n = self.n_generated.saturating_sub(1);
        if n == 0 {
            0.0
        } else {
            self.decode_s * 1000.0 / n as f64
        }
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// Greedy decoding: prefill the prompt, then one token per step, argmax with ties to the lowest
/// id. Produces at most `max_new` tokens; `on_token` may stop earlier.
pub fn greedy(
    session: &mut Session,
    prompt: &[u32],
    max_new: usize,
    mut on_token: impl FnMut(u32) -> Flow,
) -> Result<GenStats, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::BadInput(
            "the prompt is empty: give at least one token".into(),
        ));
    }
    let mut stats = GenStats {
        n_prompt: prompt.len(),
        ..Default::default()
    };
    if session.tokens().len() + prompt.len() > session.n_ctx() {
        return Err(EngineError::BadInput(format!(
            "the prompt has {} tokens but the context holds {} (use a larger --ctx)",
            session.tokens().len() + prompt.len(),
            session.n_ctx()
        )));
    }
    let t0 = Instant::now();
    let mut logits = session.forward(prompt, LogitRows::Last)?;
    stats.prefill_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for i in 0..max_new {
        let tok = argmax(&logits);
        stats.n_generated += 1;
        if on_token(tok) == Flow::Stop || i + 1 == max_new {
            break;
        }
        if session.tokens().len() + 1 > session.n_ctx() {
            break;
        }
        logits = session.forward(&[tok], LogitRows::Last)?;
    }
    stats.decode_s = t1.elapsed().as_secs_f64();
    Ok(stats)
}
