//! Generation loops: greedy decoding or seeded sampling (`sample`), and, in `speculative`,
//! drafting + block verification.
//!
//! Loops work on token ids and report each new token, with the logits row it was chosen from,
//! to a callback, which decides whether to go on (end-of-generation and stop strings are the
//! caller's policy, see `StopPolicy`).

pub mod ngram;
pub mod request;
pub mod sample;
pub mod speculative;
pub mod stop;

use std::time::Instant;

use crate::engine::Session;
use crate::model::LogitRows;
use crate::EngineError;
use sample::Sampling;

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
    on_token: impl FnMut(u32, &[f32]) -> Flow,
) -> Result<GenStats, EngineError> {
    decode(session, prompt, max_new, &Sampling::greedy(), on_token)
}

/// [`greedy`] with any token choice: prefill, then one token per step, each chosen by
/// `sampling` from its logits row and position.
pub fn decode(
    session: &mut Session,
    prompt: &[u32],
    max_new: usize,
    sampling: &Sampling,
    mut on_token: impl FnMut(u32, &[f32]) -> Flow,
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
        let tok = sampling.pick(&logits, session.tokens().len());
        stats.n_generated += 1;
        if on_token(tok, &logits) == Flow::Stop || i + 1 == max_new {
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

/// A generated token's log-probability and the `top` most likely tokens at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// Best first; ties to the lowest id, as the argmax.
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `row` at `id`, and its `top` largest entries. The normalizer is summed in
/// f64 in index order, so the values depend only on the row's bits: a verify row and the
/// single step it equals give the same log-probabilities.
pub fn token_logprob(row: &[f32], id: u32, top: usize) -> TokenLogprob {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    let lse = max + sum.ln();
    let lp = |i: usize| (row[i] as f64 - lse) as f32;
    let mut best: Vec<usize> = Vec::with_capacity(top + 1);
    for (i, &x) in row.iter().enumerate() {
        if best.len() == top && best.last().is_none_or(|&b| x <= row[b]) {
            continue;
        }
        // Insert after every entry >= x (earlier ids win ties).
        let at = best.partition_point(|&b| row[b] >= x);
        best.insert(at, i);
        best.truncate(top);
    }
    TokenLogprob {
        id,
        logprob: lp(id as usize),
        top: best.into_iter().map(|i| (i as u32, lp(i))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::argmax;

    #[test]
    fn logprobs_normalize_and_rank_like_the_argmax() {
        let row = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let t = token_logprob(&row, 1, 3);
        let total: f64 = row
            .iter()
            .map(|&x| token_logprob(&row, 0, 0).logprob as f64 - row[0] as f64 + x as f64)
            .map(f64::exp)
            .sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
        // Ties (ids 1 and 3) go to the lower id, then the next best.
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert_eq!(t.top[0].1, t.logprob);
        assert_eq!(t.top[0].0, argmax(&row));
        let want = (3.0f64 - row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln()) as f32;
        assert!((t.logprob - want).abs() < 1e-6);
        assert!(token_logprob(&row, 2, 0).top.is_empty());
        assert_eq!(token_logprob(&row, 2, 9).top.len(), row.len());
    }
}
