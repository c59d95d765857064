//! Counters for `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use verispec::batch::BatchStats;
use verispec::generate::request::GenOutput;

#[derive(Default)]
pub struct Metrics {
    /// Requests waiting in the queue.
    pub queued: AtomicUsize,
    /// Requests being generated (at most --parallel).
    pub running: AtomicUsize,
    sums: Mutex<Sums>,
}

#[derive(Default)]
struct Sums {
    /// (route, status) -> count.
    http: BTreeMap<(String, u16), u64>,
    finished: BTreeMap<&'static str, u64>,
    prompt_tokens: u64,
    cached_tokens: u64,
    generated_tokens: u64,
    prefill_s: f64,
    decode_s: f64,
    queue_wait_s: f64,
    drafted: u64,
    accepted: u64,
    verify_passes: u64,
    skipped: u64,
    batch: BatchStats,
}

impl Metrics {
    pub fn http(&self, route: &str, status: u16) {
        *self
            .sums()
            .http
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// One generation that ran to its end.
    pub fn generated(&self, out: &GenOutput, prompt_tokens: usize, cached: usize, wait_s: f64) {
        let mut s = self.sums();
        *s.finished.entry(out.finish_reason).or_default() += 1;
        s.prompt_tokens += prompt_tokens as u64;
        s.cached_tokens += cached as u64;
        s.generated_tokens += out.generated_ids.len() as u64;
        s.prefill_s += out.stats.prefill_s;
        s.decode_s += out.stats.decode_s;
        s.queue_wait_s += wait_s;
        if let Some(sp) = &out.spec {
            s.drafted += sp.drafted as u64;
            s.accepted += sp.accepted as u64;
            s.verify_passes += sp.verify_passes as u64;
        }
    }

    /// The batch thread's counters, as of the last finished request.
    pub fn batch(&self, b: BatchStats) {
        self.sums().batch = b;
    }

    /// A queued request whose client left before it started.
    pub fn skipped(&self) {
        self.sums().skipped += 1;
    }

    fn sums(&self) -> std::sync::MutexGuard<'_, Sums> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.sums.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn render(&self, model: &str, loaded: bool) -> String {
        let s = self.sums();
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(o, "# HELP verispec_{name} {help}");
            let _ = writeln!(o, "# TYPE verispec_{name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(o, "verispec_{name}{labels} {value}");
            }
        };
        let one = |v: String| vec![(String::new(), v)];
        metric(
            "model_loaded",
            "gauge",
            "1 once the model is loaded and requests are served.",
            vec![(
                format!("{{model=\"{}\"}}", escape(model)),
                u8::from(loaded).to_string(),
            )],
        );
        metric(
            "http_requests_total",
            "counter",
            "HTTP requests by route and status code.",
            s.http
                .iter()
                .map(|((route, code), n)| {
                    (
                        format!("{{route=\"{}\",code=\"{code}\"}}", escape(route)),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        metric(
            "generations_total",
            "counter",
            "Generations that ran, by finish reason (eos, stop, length, context, cancelled).",
            s.finished
                .iter()
                .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), n.to_string()))
                .collect(),
        );
        metric(
            "queue_depth",
            "gauge",
            "Requests waiting for the engine.",
            one(self.queued.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "requests_running",
            "gauge",
            "Requests being generated.",
            one(self.running.load(Ordering::Relaxed).to_string()),
        );
        metric(
            "requests_skipped_total",
            "counter",
            "Queued requests dropped because their client disconnected first.",
            one(s.skipped.to_string()),
        );
        for (name, help, v) in [
            (
                "prompt_tokens_total",
                "Prompt tokens of finished generations.",
                s.prompt_tokens,
            ),
            (
                "prompt_tokens_cached_total",
                "Prompt tokens reused from the KV cache instead of recomputed.",
                s.cached_tokens,
            ),
            (
                "generated_tokens_total",
                "Tokens generated.",
                s.generated_tokens,
            ),
            (
                "spec_drafted_tokens_total",
                "Draft tokens verified by speculative decoding.",
                s.drafted,
            ),
            (
                "spec_accepted_tokens_total",
                "Draft tokens accepted.",
                s.accepted,
            ),
            (
                "spec_verify_passes_total",
                "Verify passes of speculative decoding.",
                s.verify_passes,
            ),
            (
                "batch_passes_total",
                "Passes the batch thread ran (with --parallel above 1).",
                s.batch.passes,
            ),
            (
                "batch_rows_total",
                "Token rows over those passes.",
                s.batch.rows,
            ),
            (
                "batch_sequences_total",
                "Sequences over those passes (a pass with rows of 3 requests counts 3).",
                s.batch.seqs,
            ),
        ] {
            metric(name, "counter", help, one(v.to_string()));
        }
        for (name, help, v) in [
            (
                "prefill_seconds_total",
                "Time spent on prompts.",
                s.prefill_s,
            ),
            ("decode_seconds_total", "Time spent generating.", s.decode_s),
            (
                "queue_wait_seconds_total",
                "Time requests waited in the queue.",
                s.queue_wait_s,
            ),
        ] {
            metric(name, "counter", help, one(format!("{v:.6}")));
        }
        o
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
