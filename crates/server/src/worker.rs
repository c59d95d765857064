//! The engine side: a dispatcher takes requests from the bounded queue and hands each to one of
//! `parallel` slot workers. Each worker generates on its own session; with more than one
//! slot, the sessions share one batch thread (`verispec::batch`), so requests that run at the
//! same time share passes: one pass reads the weights once for a row of every sequence. The
//! text does not change: every kernel is batch-invariant, so a request's tokens and logits are
//! the same bits whatever else runs beside it.
//!
//! Each slot keeps its session between requests. A request that begins with tokens a slot
//! already holds (the same system prompt, or a conversation that grew by one turn) goes to the
//! idle slot with the longest such prefix, reuses it, and only computes the rest. This is exact
//! for the same reason: a KV row does not depend on how the prompt was split into passes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
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

/// What the dispatcher knows of a slot.
struct Slot {
    idle: bool,
    /// The tokens its session holds (after its last request).
    tokens: Vec<u32>,
    /// When it was last given a request (dispatch count), for least-recently-used ties.
    used: u64,
}

struct Slots {
    state: Mutex<Vec<Slot>>,
    freed: Condvar,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        // Slot records stay consistent under a panic elsewhere: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serve jobs on `parallel` slots until every sender is gone.
pub fn run(engine: &Arc<Engine>, jobs: Receiver<Job>, metrics: &Arc<Metrics>, parallel: usize) {
    let sessions = if parallel == 1 {
        vec![engine.new_session()]
    } else {
        match engine.batched_sessions(parallel) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("verispec serve: {e}");
                return;
            }
        }
    };
    let slots = Arc::new(Slots {
        state: Mutex::new(
            (0..parallel)
                .map(|_| Slot {
                    idle: true,
                    tokens: Vec::new(),
                    used: 0,
                })
                .collect(),
        ),
        freed: Condvar::new(),
    });
    let mut inboxes = Vec::new();
    let mut workers = Vec::new();
    for (i, session) in sessions.into_iter().enumerate() {
        let (tx, rx) = sync_channel::<Job>(1);
        inboxes.push(tx);
        let (engine, metrics, slots) = (engine.clone(), metrics.clone(), slots.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("verispec-slot-{i}"))
            .spawn(move || work(&engine, session, i, rx, &metrics, &slots));
        match spawned {
            Ok(h) => workers.push(h),
            Err(e) => {
                eprintln!("verispec serve: cannot start slot worker {i}: {e}");
                return;
            }
        }
    }
    let mut dispatched = 0u64;
    loop {
        // Take a job only once a slot is free, so the queue alone holds waiting requests (its
        // bound is what --queue says, and its depth is what /metrics reports).
        let mut state = slots.lock();
        while !state.iter().any(|s| s.idle) {
            state = slots.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        let Ok(job) = jobs.recv() else { break };
        metrics.queued.fetch_sub(1, Ordering::Relaxed);
        if job.events.is_closed() {
            metrics.skipped();
            continue;
        }
        let mut state = slots.lock();
        // The idle slot holding the longest prefix of the prompt; then the least recently used.
        let best = (0..state.len())
            .filter(|&i| state[i].idle)
            .max_by_key(|&i| {
                (
                    common_prefix(&state[i].tokens, &job.prompt),
                    u64::MAX - state[i].used,
                )
            })
            .expect("an idle slot");
        dispatched += 1;
        state[best].idle = false;
        state[best].used = dispatched;
        drop(state);
        metrics.running.fetch_add(1, Ordering::Relaxed);
        if inboxes[best].send(job).is_err() {
            eprintln!("verispec serve: slot worker {best} has stopped");
            metrics.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
    drop(inboxes);
    for w in workers {
        let _ = w.join();
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One slot: generate each job it is given on `session`.
fn work(
    engine: &Engine,
    mut session: Session,
    slot: usize,
    jobs: Receiver<Job>,
    metrics: &Metrics,
    slots: &Slots,
) {
    for job in jobs {
        let wait_s = job.queued_at.elapsed().as_secs_f64();
        let busy = session.busy();
        let result = catch_unwind(AssertUnwindSafe(|| one(engine, &mut session, &job)));
        drop(busy);
        let done = match result {
            Ok(Ok(f)) => {
                metrics.generated(&f.out, f.prompt_tokens, f.cached, wait_s);
                eprintln!(
                    "verispec serve: {} (slot {slot}): {} prompt tokens ({} cached), {} generated at {:.1} tok/s, {}",
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
                // A bug, not bad input: forget what the slot held and keep serving.
                session.reset();
                Err(ApiError::internal(
                    "generation panicked (see the server log)",
                ))
            }
        };
        if let Some(b) = session.batch_stats() {
            metrics.batch(b);
        }
        metrics.running.fetch_sub(1, Ordering::Relaxed);
        // Free the slot before answering: a client that sends its next turn as soon as it has
        // this answer must find the slot (and its cached prefix) idle.
        let mut state = slots.lock();
        state[slot].tokens = session.tokens().to_vec();
        state[slot].idle = true;
        drop(state);
        slots.freed.notify_one();
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
