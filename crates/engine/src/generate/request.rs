//! One generation request end to end: greedy or speculative, EOG and stop strings, streamed
//! text. The CLI (`run`, `chat`, `bench --suite`) and the server drive generation through this.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::ngram::NgramDrafter;
use super::sample::Sampling;
use super::speculative::{speculative, SpecOptions, SpecStats};
use super::stop::TextStream;
use super::{decode, token_logprob, Flow, GenStats, TokenLogprob};
use crate::engine::{Engine, Session};
use crate::EngineError;

#[derive(Debug, Clone)]
pub struct Speculation {
    pub verify_width: usize,
    pub ngram_min: usize,
    pub ngram_max: usize,
    pub adaptive: bool,
    /// Recompute every accepted token on a shadow session and abort on any difference.
    pub exactness_guard: bool,
    /// `SpecOptions::max_batch`.
    pub max_batch: usize,
}

impl Default for Speculation {
    fn default() -> Self {
        Speculation {
            verify_width: 4,
            ngram_min: 1,
            ngram_max: 8,
            adaptive: true,
            exactness_guard: false,
            max_batch: super::speculative::DEFAULT_MAX_BATCH,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct GenRequest {
    pub max_tokens: usize,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    pub speculative: Option<Speculation>,
    /// Set from another thread (a server whose client went away) to end generation after the
    /// current token; `finish_reason` is then "cancelled".
    pub cancel: Option<Arc<AtomicBool>>,
    /// Record each generated token's log-probability and this many top alternatives.
    pub logprobs: Option<usize>,
    /// Greedy (the default) or seeded sampling; speculation reproduces either exactly.
    pub sampling: Sampling,
}

#[derive(Debug, Clone)]
pub struct GenOutput {
    pub generated_ids: Vec<u32>,
    pub text: String,
    pub stats: GenStats,
    pub spec: Option<SpecStats>,
    /// Why generation ended: "eos", "stop", "length", "context" or "cancelled".
    pub finish_reason: &'static str,
    /// One per generated id, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
}

impl GenOutput {
    /// The stats as the CLI contract names them (`run --json`'s `stats`; the server's
    /// `timings`).
    pub fn stats_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let mut j = serde_json::json!({
            "n_prompt": s.n_prompt,
            "n_generated": s.n_generated,
            "prefill_tok_s": s.prefill_tok_s(),
            "decode_tok_s": s.decode_tok_s(),
            "ms_per_token": s.ms_per_token(),
            "finish_reason": self.finish_reason,
        });
        if let Some(sp) = &self.spec {
            let decoded = s.n_generated.saturating_sub(1);
            j["drafted"] = sp.drafted.into();
            j["accepted"] = sp.accepted.into();
            j["acceptance_rate"] = sp.acceptance_rate().into();
            j["verify_passes"] = sp.verify_passes.into();
            j["decode_passes"] = sp.decode_passes.into();
            j["tokens_per_pass"] = if sp.decode_passes > 0 {
                (decoded as f64 / sp.decode_passes as f64).into()
            } else {
                0.0.into()
            };
        }
        j
    }
}

/// What `generate_with` reports while it runs.
pub enum GenEvent<'a> {
    /// Text that can be shown now (whole characters, never a possible stop-string prefix).
    Text(&'a str),
    /// A generated token's log-probabilities (only when `GenRequest::logprobs` asks). It comes
    /// before any text of that token.
    Token(&'a TokenLogprob),
}

/// Run one request, streaming its text through `on_text`.
pub fn generate(
    engine: &Engine,
    session: &mut Session,
    prompt: &[u32],
    req: &GenRequest,
    mut on_text: impl FnMut(&str),
) -> Result<GenOutput, EngineError> {
    generate_with(engine, session, prompt, req, |e| {
        if let GenEvent::Text(t) = e {
            on_text(t)
        }
    })
}

/// `generate`, also reporting each token's log-probabilities as they are computed.
pub fn generate_with(
    engine: &Engine,
    session: &mut Session,
    prompt: &[u32],
    req: &GenRequest,
    mut on_event: impl FnMut(GenEvent),
) -> Result<GenOutput, EngineError> {
    req.sampling.check().map_err(EngineError::BadInput)?;
    let tok = &engine.tokenizer;
    let mut stream = TextStream::new(
        tok.eog_ids().iter().copied().collect(),
        req.ignore_eos,
        req.stop.clone(),
    );
    let mut ids = Vec::new();
    let mut hit_eos = false;
    let mut cancelled = false;
    let mut logprobs = Vec::new();
    let mut on_token = |id: u32, row: &[f32]| {
        ids.push(id);
        if let Some(top) = req.logprobs {
            let lp = token_logprob(row, id, top);
            on_event(GenEvent::Token(&lp));
            logprobs.push(lp);
        }
        if tok.is_eog(id) && !req.ignore_eos {
            hit_eos = true;
        }
        let (text, flow) = stream.push(id, tok.piece(id, false));
        if !text.is_empty() {
            on_event(GenEvent::Text(&text));
        }
        if flow == Flow::Continue
            && req
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            cancelled = true;
            return Flow::Stop;
        }
        flow
    };
    let (stats, spec) = match &req.speculative {
        None => (
            decode(
                session,
                prompt,
                req.max_tokens,
                &req.sampling,
                &mut on_token,
            )?,
            None,
        ),
        Some(sp) => {
            let mut drafter =
                NgramDrafter::new(sp.ngram_min, sp.ngram_max).map_err(EngineError::BadInput)?;
            let opts = SpecOptions {
                verify_width: sp.verify_width,
                adaptive: sp.adaptive,
                max_batch: sp.max_batch,
                sampling: req.sampling.clone(),
            };
            let mut shadow = if sp.exactness_guard {
                let mut s = engine.new_session();
                // The shadow must start from the same cached tokens.
                if !session.tokens().is_empty() {
                    s.forward(session.tokens(), crate::model::LogitRows::None)?;
                }
                Some(s)
            } else {
                None
            };
            let (g, s) = speculative(
                session,
                &mut drafter,
                prompt,
                req.max_tokens,
                &opts,
                shadow.as_mut(),
                &mut on_token,
            )?;
            (g, Some(s))
        }
    };
    let stopped_by_string = stream.stopped() && !hit_eos;
    let rest = stream.finish();
    if !rest.is_empty() {
        on_event(GenEvent::Text(&rest));
    }
    let finish_reason = if hit_eos {
        "eos"
    } else if cancelled {
        "cancelled"
    } else if stopped_by_string {
        "stop"
    } else if ids.len() >= req.max_tokens {
        "length"
    } else {
        "context"
    };
    Ok(GenOutput {
        generated_ids: ids,
        text: stream.text().to_string(),
        stats,
        spec,
        finish_reason,
        logprobs,
    })
}
