//! The engine thread: takes requests from the bounded queue one at a time and generates.
//!
//! One session is kept between requests. A request that begins with tokens the session already
//! holds (the same system prompt, or a conversation that grew by one turn) reuses them and only
//! computes the rest. This is exact: every kernel is batch-invariant, so a KV row does not
//! depend on how the prompt was split into passes, and the output equals a fresh session's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use verispec::engine::{Engine, Session};
use verispec::generate::request::{generate_with, GenEvent, GenOutput, GenRequest};
use verispec::generate::{token_logprob, TokenLogprob};
use verispec::model::LogitRows;

use super::api::ApiError;
use super::metrics::Metrics;

pub struct Job {
    /// The response id, for the log.
    pub id: String,
    pub prompt: Vec<u32>,
    /// Score the prompt's own tokens too (echo), with this many alternatives each.
    pub prompt_logprobs: Option<usize>,
    pub req: GenRequest,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<Event>,
    pub queued_at: Instant,
}

pub enum Event {
    /// Text that can be shown now (whole characters, never a possible stop-string prefix).
    Text(String),
    /// A generated token's log-probabilities (when asked for), before its text.
    Token(TokenLogprob),
    Done(Result<Finished, ApiError>),
}

pub struct Finished {
    pub out: GenOutput,
    /// For prompt tokens 1.. (token 0 has none), when `Job::prompt_logprobs` asked.
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub prompt_tokens: usize,
    /// Prompt tokens reused from the session's cache.
    pub cached: usize,
}

/// Serve jobs until every sender is gone.
pub fn run(engine: &Engine, jobs: Receiver<Job>, metrics: &Metrics) {
    let mut session = engine.new_session();
    for job in jobs {
        metrics.queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            metrics.skipped();
            continue;
        }
        metrics.running.store(1, Ordering::Relaxed);
        let wait_s = job.queued_at.elapsed().as_secs_f64();
        let result = catch_unwind(AssertUnwindSafe(|| one(engine, &mut session, &job)));
        let done = match result {
            Ok(Ok(f)) => {
                metrics.generated(&f.out, f.prompt_tokens, f.cached, wait_s);
                eprintln!(
                    "verispec serve: {}: {} prompt tokens ({} cached), {} generated at {:.1} tok/s, {}",
                    job.id,
                    f.prompt_tokens,
                    f.cached,
                    f.out.generated_ids.len(),
                    f.out.stats.decode_tok_s(),
                    f.out.finish_reason
                );
                Ok(f)
            }
            Ok(Err(e)) => {
                // Bad input the checks before queueing cannot see (a context that fills up).
                eprintln!("verispec serve: {}: failed: {e}", job.id);
                session.reset();
                Err(ApiError::bad(e))
            }
            Err(_) => {
                // A bug, not bad input: start from a clean session and keep serving.
                session = engine.new_session();
                Err(ApiError::internal(
                    "generation panicked (see the server log)",
                ))
            }
        };
        metrics.running.store(0, Ordering::Relaxed);
        let _ = job.events.send(Event::Done(done));
    }
}

/// Prompt rows scored per pass: bounds the logits buffer to this many vocabulary rows.
const SCORE_ROWS: usize = 64;

fn one(engine: &Engine, session: &mut Session, job: &Job) -> Result<Finished, String> {
    let ids = &job.prompt;
    let mut prompt_logprobs = Vec::new();
    // Keep the cached prefix, but always compute at least the last prompt token: its logits
    // give the first generated token.
    let common = session
        .tokens()
        .iter()
        .zip(ids)
        .take_while(|(a, b)| a == b)
        .count()
        .min(ids.len() - 1);
    session.truncate(common);
    let mut reused = common;
    if let Some(top) = job.prompt_logprobs {
        // Scoring the prompt needs the logits of every position, which a cache does not keep:
        // run it again, a block at a time, all but the last token (generation does that one).
        session.truncate(0);
        reused = 0;
        let v = engine.cfg.n_vocab;
        let mut pos = 0;
        while pos + 1 < ids.len() {
            let end = (pos + SCORE_ROWS).min(ids.len() - 1);
            let rows = session
                .forward(&ids[pos..end], LogitRows::All)
                .map_err(|e| e.to_string())?;
            for (i, row) in rows.chunks_exact(v).enumerate() {
                prompt_logprobs.push(token_logprob(row, ids[pos + i + 1], top));
            }
            pos = end;
        }
    }
    // The session now holds ids[..start]: the cached prefix, or all but the last token.
    let start = session.tokens().len();
    let out = generate_with(engine, session, &ids[start..], &job.req, |e| {
        let ev = match e {
            GenEvent::Text(t) => Event::Text(t.to_string()),
            GenEvent::Token(t) => Event::Token(t.clone()),
        };
        if job.events.send(ev).is_err() {
            // The client is gone: stop after this token.
            job.cancel.store(true, Ordering::Relaxed);
        }
    })
    .map_err(|e| e.to_string())?;
    Ok(Finished {
        prompt_logprobs,
        out,
        prompt_tokens: ids.len(),
        cached: reused,
    })
}
