//! `verispec serve`: an OpenAI-compatible HTTP server over one engine.
//!
//! - `POST /v1/completions` and `POST /v1/chat/completions`, with SSE streaming, exact
//!   log-probabilities and (completions) echo with prompt scoring;
//! - `GET /v1/models`, `POST /tokenize`, `POST /detokenize`, `GET /health` (200 once the model
//!   is loaded), `GET /metrics`. docs/SERVER.md has the details.
//!
//! The socket is bound before the model loads, so `/health` can say "loading". Requests wait
//! in a bounded queue (a full queue answers 503 with Retry-After, and the request is not kept)
//! for one of `--parallel` slots; requests on different slots run at the same time and share
//! passes (see worker.rs). Decoding is greedy with exact n-gram speculation on, so a request's
//! text equals `verispec run`'s for the same prompt, whatever runs beside it. A client that
//! disconnects stops its generation after the current token.
//! Every error is `{"error": {"message", "type", "code"}}`.

pub mod api;
mod metrics;
mod worker;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use verispec::chat::ChatTemplate;
use verispec::engine::Engine;
use verispec::generate::request::{GenRequest, Speculation};
use verispec::generate::sample::{fresh_seed, Sampling};
use verispec::generate::TokenLogprob;
use verispec::tokenizer::Tokenizer;

use api::{ApiError, Options, Prompt};
use metrics::Metrics;
use worker::{Event, Finished, Job};

/// Largest request body accepted (413 above it).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// `max_tokens` of a completion that gives none (OpenAI's default). Chat defaults to the rest
/// of the context.
pub const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Loads the model; runs on the engine thread after the socket is bound.
pub type Loader = Box<dyn FnOnce() -> Result<Engine, String> + Send>;

pub struct ServeOptions {
    /// The id `/v1/models` lists and requests may name (the GGUF file's stem).
    pub model_id: String,
    pub load: Loader,
    pub host: String,
    pub port: u16,
    /// Requests that may wait while the slots are busy; more get 503.
    pub queue: usize,
    /// Requests generated at once, sharing passes (KV slots).
    pub parallel: usize,
    /// Required as `Authorization: Bearer KEY` on every route but /health and /metrics.
    pub api_key: Option<String>,
}

/// What exists once the model is loaded.
struct Ready {
    engine: Arc<Engine>,
    template: Option<ChatTemplate>,
}

struct AppState {
    model_id: String,
    created: u64,
    ready: OnceLock<Ready>,
    jobs: SyncSender<Job>,
    /// The queue's bound (--queue).
    queue: usize,
    metrics: Arc<Metrics>,
    next_id: AtomicU64,
    api_key: Option<String>,
}

/// Serve until SIGINT / SIGTERM (Ok) or until the model fails to load (its error).
pub fn run(opts: ServeOptions) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(serve(opts))
}

async fn serve(opts: ServeOptions) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", opts.host, opts.port))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let (jobs, queue) = sync_channel::<Job>(opts.queue);
    let state = Arc::new(AppState {
        model_id: opts.model_id.clone(),
        created: unix_now(),
        ready: OnceLock::new(),
        jobs,
        queue: opts.queue,
        metrics: Arc::new(Metrics::default()),
        next_id: AtomicU64::new(0),
        api_key: opts.api_key.clone(),
    });
    // The engine thread loads the model, then serves the queue. A load failure ends the server.
    let (load_failed, mut load_failure) = mpsc::unbounded_channel();
    {
        let state = state.clone();
        let load = opts.load;
        let parallel = opts.parallel;
        std::thread::Builder::new()
            .name("verispec-engine".into())
            .spawn(move || match load() {
                Ok(engine) => {
                    let engine = Arc::new(engine);
                    let template = ChatTemplate::from_tokenizer(&engine.tokenizer);
                    let metrics = state.metrics.clone();
                    let _ = state.ready.set(Ready {
                        engine: engine.clone(),
                        template,
                    });
                    eprintln!("verispec serve: model {} loaded", state.model_id);
                    drop(state);
                    worker::run(&engine, queue, &metrics, parallel);
                }
                Err(e) => {
                    let _ = load_failed.send(e);
                }
            })
            .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    }
    eprintln!(
        "verispec serve: listening on http://{addr} (model {}, {} parallel, queue {})",
        state.model_id, opts.parallel, opts.queue
    );
    let app = router(state);
    let shutdown = async move {
        tokio::select! {
            e = load_failure.recv() => e,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("verispec serve: interrupted, shutting down");
                None
            }
            _ = terminate() => {
                eprintln!("verispec serve: terminated, shutting down");
                None
            }
        }
    };
    match accept_loop(listener, app, shutdown).await {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A client must send its request head within this time, or the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serve HTTP/1.1 connections until `shutdown` completes, then let requests in flight finish
/// (for at most SHUTDOWN_GRACE) and return what `shutdown` gave. Unlike `axum::serve`, it
/// closes connections whose request head does not arrive within HEADER_READ_TIMEOUT, so idle or
/// slow clients cannot pile up.
async fn accept_loop<T>(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = T>,
) -> T {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let result = loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then go on accepting.
                    eprintln!("verispec serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            v = &mut shutdown => break v,
        };
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let conn =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // A connection error (a reset, a timeout, a malformed request head) ends only it.
            let _ = conn.await;
        });
    };
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => {
            eprintln!("verispec serve: requests still running after {SHUTDOWN_GRACE:?}; exiting");
        }
    }
    result
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending::<()>().await
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|| async { error(ApiError::not_found("no such route")) })
        .method_not_allowed_fallback(|| async {
            error(ApiError {
                status: 405,
                kind: "invalid_request_error",
                message: "method not allowed on this route".into(),
            })
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// Count every response by route and status for `/metrics`.
async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "other".to_string());
    let res = next.run(req).await;
    state.metrics.http(&route, res.status().as_u16());
    res
}

/// With `--api-key`, every route but /health and /metrics needs `Authorization: Bearer KEY`.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let open = matches!(req.uri().path(), "/health" | "/metrics");
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !open && given.map(str::trim) != Some(key.as_str()) {
            return error(ApiError {
                status: 401,
                kind: "authentication_error",
                message: "invalid or missing API key (send Authorization: Bearer KEY)".into(),
            });
        }
    }
    next.run(req).await
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = (status, axum::Json(e.body())).into_response();
    if e.status == 503 {
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.get().is_some() {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        error(ApiError::unavailable("the model is loading"))
    }
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = state
        .metrics
        .render(&state.model_id, state.ready.get().is_some());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "verispec",
        }],
    }))
    .into_response()
}

/// The body, at most MAX_BODY_BYTES.
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return ApiError {
                        status: 413,
                        kind: "invalid_request_error",
                        message: format!("the request body exceeds {} MiB", MAX_BODY_BYTES >> 20),
                    };
                }
                cause = c.source();
            }
            ApiError::bad(format!("cannot read the request body: {e}"))
        })
}

fn ready<'a>(state: &'a AppState, opts: &Options) -> Result<&'a Ready, ApiError> {
    if let Some(m) = &opts.model {
        if *m != state.model_id {
            return Err(ApiError::not_found(format!(
                "model '{m}' does not exist; this server serves '{}'",
                state.model_id
            )));
        }
    }
    state
        .ready
        .get()
        .ok_or_else(|| ApiError::unavailable("the model is loading; retry shortly"))
}

async fn completions(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let result = async {
        let r = api::parse_completion(&read_body(body).await?)?;
        let ready = ready(&state, &r.options)?;
        let tok = &ready.engine.tokenizer;
        let mut prompts: Vec<(Vec<u32>, Option<String>)> = r
            .prompts
            .into_iter()
            .map(|p| match p {
                Prompt::Text(t) => (tok.encode(&t, true, true), r.echo.then_some(t)),
                Prompt::Ids(ids) => {
                    let echo = r.echo.then(|| tok.decode(&ids));
                    (ids, echo)
                }
            })
            .collect();
        let max = r.options.max_tokens.unwrap_or(DEFAULT_COMPLETION_TOKENS);
        if prompts.len() > 1 {
            return submit_many(&state, ready, prompts, max, r.options).await;
        }
        let (ids, echo) = prompts
            .pop()
            .ok_or_else(|| ApiError::bad("'prompt' is empty"))?;
        submit(&state, ready, ids, max, r.options, Kind::Completion, echo).await
    };
    result.await.unwrap_or_else(error)
}

async fn chat(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let result = async {
        let r = api::parse_chat(&read_body(body).await?)?;
        let ready = ready(&state, &r.options)?;
        let tmpl = ready
            .template
            .as_ref()
            .ok_or_else(|| ApiError::bad("this model has no chat template; use /v1/completions"))?;
        let text = tmpl
            .render(&r.messages, true)
            .map_err(|e| ApiError::bad(e.to_string()))?;
        let ids = ready.engine.tokenizer.encode(&text, true, true);
        let max = r.options.max_tokens.unwrap_or(ready.engine.n_ctx);
        submit(&state, ready, ids, max, r.options, Kind::Chat, None).await
    };
    result.await.unwrap_or_else(error)
}

/// `{"content", "add_special"?, "parse_special"?}` -> `{"tokens", "pieces"}`; the defaults
/// tokenize as `run --prompt` (and the `tokenize` command) do.
async fn tokenize(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let result = async {
        let body = read_body(body).await?;
        let (content, add_special, parse_special) = api::parse_tokenize(&body)?;
        let ready = ready(&state, &Options::default())?;
        let tok = &ready.engine.tokenizer;
        let ids = tok.encode(&content, add_special, parse_special);
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| String::from_utf8_lossy(tok.piece(id, true)).into_owned())
            .collect();
        Ok::<_, ApiError>(axum::Json(json!({"tokens": ids, "pieces": pieces})).into_response())
    };
    result.await.unwrap_or_else(error)
}

/// `{"tokens": [ids]}` -> `{"content"}` (control tokens left out, as in generated text).
async fn detokenize(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let result = async {
        let body = read_body(body).await?;
        let ids = api::parse_detokenize(&body)?;
        let ready = ready(&state, &Options::default())?;
        check_ids(&ids, ready.engine.cfg.n_vocab)?;
        let content = ready.engine.tokenizer.decode(&ids);
        Ok(axum::Json(json!({"content": content})).into_response())
    };
    result.await.unwrap_or_else(error)
}

/// Token ids from a request must index the vocabulary.
fn check_ids(ids: &[u32], n_vocab: usize) -> Result<(), ApiError> {
    match ids.iter().find(|&&id| id as usize >= n_vocab) {
        Some(bad) => Err(ApiError::bad(format!(
            "token id {bad} is out of range (the vocabulary has {n_vocab} tokens)"
        ))),
        None => Ok(()),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// One prompt's request, checked and ready to queue.
struct Prepared {
    meta: Meta,
    job: Job,
    rx: mpsc::UnboundedReceiver<Event>,
}

/// Check a prompt and build its job. `echo`: the prompt's text, to put before the completion
/// (with its tokens' log-probabilities if asked for). `what` names the prompt in errors.
#[allow(clippy::too_many_arguments)]
fn prepare(
    state: &Arc<AppState>,
    ready: &Ready,
    ids: Vec<u32>,
    max_tokens: usize,
    opts: &Options,
    kind: Kind,
    echo: Option<String>,
    id: &str,
    what: &str,
) -> Result<Prepared, ApiError> {
    let engine = &ready.engine;
    if ids.is_empty() {
        return Err(ApiError::bad(format!("{what} is empty")));
    }
    check_ids(&ids, engine.cfg.n_vocab)?;
    if ids.len() > engine.n_ctx {
        return Err(ApiError::bad(format!(
            "{what} has {} tokens but the context holds {} (start the server with a larger --ctx)",
            ids.len(),
            engine.n_ctx
        )));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let req = GenRequest {
        max_tokens,
        ignore_eos: opts.ignore_eos,
        stop: opts.stop.clone(),
        speculative: opts.speculative.then(Speculation::default),
        cancel: Some(cancel.clone()),
        logprobs: opts.logprobs,
        sampling: Sampling {
            seed: opts.seed.unwrap_or_else(fresh_seed),
            ..opts.sampling.clone()
        },
    };
    let meta = Meta {
        id: id.to_string(),
        created: unix_now(),
        model: state.model_id.clone(),
        kind,
        tok: engine.tokenizer.clone(),
        logprobs: opts.logprobs.is_some(),
        echo: echo.map(|text| Echo {
            text,
            ids: ids.clone(),
        }),
    };
    let (events, rx) = mpsc::unbounded_channel();
    let job = Job {
        id: meta.id.clone(),
        prompt: ids,
        prompt_logprobs: if meta.echo.is_some() {
            opts.logprobs
        } else {
            None
        },
        req,
        cancel,
        events,
        queued_at: Instant::now(),
    };
    Ok(Prepared { meta, job, rx })
}

/// Put a job in the queue, or say why not (503 when it is full).
fn enqueue(state: &AppState, job: Job) -> Result<(), ApiError> {
    state.metrics.queued.fetch_add(1, Ordering::Relaxed);
    state.jobs.try_send(job).map_err(|e| {
        state.metrics.queued.fetch_sub(1, Ordering::Relaxed);
        match e {
            TrySendError::Full(_) => {
                ApiError::unavailable("the server is busy: the request queue is full; retry later")
            }
            TrySendError::Disconnected(_) => ApiError::internal("the engine thread has stopped"),
        }
    })
}

fn response_id(state: &AppState, kind: Kind) -> String {
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    match kind {
        Kind::Completion => format!("cmpl-{:x}-{n}", state.created),
        Kind::Chat => format!("chatcmpl-{:x}-{n}", state.created),
    }
}

/// Check the prompt, queue the job, and answer (whole or streamed).
async fn submit(
    state: &Arc<AppState>,
    ready: &Ready,
    ids: Vec<u32>,
    max_tokens: usize,
    opts: Options,
    kind: Kind,
    echo: Option<String>,
) -> Result<Response, ApiError> {
    let id = response_id(state, kind);
    let p = prepare(
        state,
        ready,
        ids,
        max_tokens,
        &opts,
        kind,
        echo,
        &id,
        "the prompt",
    )?;
    enqueue(state, p.job)?;
    if opts.stream {
        Ok(stream(p.meta, p.rx, opts.include_usage))
    } else {
        let mut rx = p.rx;
        let f = finished(&mut rx).await?;
        let mut body = p.meta.envelope(false, json!([p.meta.whole_choice(&f, 0)]));
        body["usage"] = usage(&[&f]);
        body["timings"] = timings(&f);
        Ok(axum::Json(body).into_response())
    }
}

/// Several completion prompts in one request: each is its own job (so they run on parallel
/// slots, sharing passes), and the answer has one choice per prompt, in order. Every prompt is
/// checked before any is queued; if the queue cannot take them all, the ones queued are
/// cancelled and the request gets 503.
async fn submit_many(
    state: &Arc<AppState>,
    ready: &Ready,
    prompts: Vec<(Vec<u32>, Option<String>)>,
    max_tokens: usize,
    opts: Options,
) -> Result<Response, ApiError> {
    if prompts.len() > state.queue {
        return Err(ApiError::bad(format!(
            "'prompt': {} prompts do not fit in this server's queue of {} (--queue)",
            prompts.len(),
            state.queue
        )));
    }
    let id = response_id(state, Kind::Completion);
    let mut prepared = Vec::with_capacity(prompts.len());
    for (i, (ids, echo)) in prompts.into_iter().enumerate() {
        let what = format!("prompt {i}");
        prepared.push(prepare(
            state,
            ready,
            ids,
            max_tokens,
            &opts,
            Kind::Completion,
            echo,
            &id,
            &what,
        )?);
    }
    let mut waiting = Vec::with_capacity(prepared.len());
    let mut queued: Vec<Arc<AtomicBool>> = Vec::new();
    for p in prepared {
        let cancel = p.job.cancel.clone();
        if let Err(e) = enqueue(state, p.job) {
            for c in &queued {
                c.store(true, Ordering::Relaxed);
            }
            return Err(e);
        }
        queued.push(cancel);
        waiting.push((p.meta, p.rx));
    }
    let mut choices = Vec::with_capacity(waiting.len());
    let mut all = Vec::with_capacity(waiting.len());
    for (i, (meta, rx)) in waiting.iter_mut().enumerate() {
        let f = finished(rx).await?;
        choices.push(meta.whole_choice(&f, i));
        all.push(f);
    }
    // Every prompt's Meta carries the same id, time, model and kind: the envelope is shared.
    let meta = &waiting[0].0;
    let mut body = meta.envelope(false, Value::Array(choices));
    body["usage"] = usage(&all.iter().collect::<Vec<_>>());
    body["timings"] = all.iter().map(timings).collect();
    Ok(axum::Json(body).into_response())
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    tok: Arc<Tokenizer>,
    /// Whether the request asked for log-probabilities.
    logprobs: bool,
    /// The prompt, when the request asked for echo.
    echo: Option<Echo>,
}

struct Echo {
    text: String,
    ids: Vec<u32>,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One choice: the text (or delta) and the finish reason.
    fn choice(&self, text: Option<&str>, finish: Option<&str>, chunk: bool) -> Value {
        match (self.kind, chunk) {
            (Kind::Completion, _) => json!([{
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }]),
            (Kind::Chat, false) => json!([{
                "index": 0,
                "message": {"role": "assistant", "content": text.unwrap_or("")},
                "logprobs": null,
                "finish_reason": finish,
            }]),
            (Kind::Chat, true) => {
                let delta = match text {
                    Some(t) => json!({"content": t}),
                    None => json!({}),
                };
                json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
            }
        }
    }
}

impl Meta {
    /// A token as text (control tokens by name).
    fn token_text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.tok.piece(id, true)).into_owned()
    }

    /// A token's width in the response text (control tokens add none), for `text_offset`.
    fn text_len(&self, id: u32) -> usize {
        String::from_utf8_lossy(self.tok.piece(id, false))
            .chars()
            .count()
    }

    /// Completions' `top_logprobs` entry: {token text: logprob}.
    fn top_map(&self, t: &TokenLogprob) -> Value {
        Value::Object(
            t.top
                .iter()
                .map(|&(id, lp)| (self.token_text(id), json!(lp)))
                .collect(),
        )
    }

    /// Chat's `logprobs.content` entry for one token.
    fn chat_entry(&self, t: &TokenLogprob) -> Value {
        let entry = |id: u32, lp: f32| json!({"token": self.token_text(id), "logprob": lp, "bytes": self.tok.piece(id, true)});
        let mut e = entry(t.id, t.logprob);
        e["top_logprobs"] = t.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
        e
    }

    /// Completions' `logprobs` object for tokens starting at text offset `offset`; a token
    /// without a value (echo's first prompt token) gets `null`.
    fn completion_logprobs(&self, toks: &[(u32, Option<&TokenLogprob>)], offset: usize) -> Value {
        let mut offsets = Vec::new();
        let mut at = offset;
        for &(id, _) in toks {
            offsets.push(at);
            at += self.text_len(id);
        }
        json!({
            "tokens": toks.iter().map(|&(id, _)| self.token_text(id)).collect::<Vec<_>>(),
            "token_logprobs": toks.iter().map(|(_, t)| t.map(|t| json!(t.logprob)).unwrap_or(Value::Null)).collect::<Vec<_>>(),
            "top_logprobs": toks.iter().map(|(_, t)| t.map(|t| self.top_map(t)).unwrap_or(Value::Null)).collect::<Vec<_>>(),
            "text_offset": offsets,
        })
    }

    /// The generated tokens' log-probabilities in the endpoint's OpenAI shape; with echo, the
    /// prompt's tokens come first (the first one has none: nothing predicts it).
    fn logprobs(&self, f: &Finished) -> Value {
        match self.kind {
            Kind::Completion => {
                let mut toks: Vec<(u32, Option<&TokenLogprob>)> = Vec::new();
                if let Some(echo) = &self.echo {
                    for (i, &id) in echo.ids.iter().enumerate() {
                        toks.push((id, i.checked_sub(1).and_then(|j| f.prompt_logprobs.get(j))));
                    }
                }
                toks.extend(f.out.logprobs.iter().map(|t| (t.id, Some(t))));
                self.completion_logprobs(&toks, 0)
            }
            Kind::Chat => {
                let content: Vec<Value> =
                    f.out.logprobs.iter().map(|t| self.chat_entry(t)).collect();
                json!({"content": content})
            }
        }
    }

    /// A finished job's choice (index `index`) in a whole response.
    fn whole_choice(&self, f: &Finished, index: usize) -> Value {
        let text = match &self.echo {
            Some(p) => format!("{}{}", p.text, f.out.text),
            None => f.out.text.clone(),
        };
        let reason = finish_reason(f.out.finish_reason);
        let mut c = self.choice(Some(&text), Some(reason), false)[0].take();
        c["index"] = index.into();
        if self.logprobs {
            c["logprobs"] = self.logprobs(f);
        }
        c
    }

    /// One streamed token's log-probabilities as a chunk (no text of its own: the text
    /// follows in text chunks, which may lag behind a token).
    fn logprob_chunk(&self, t: &TokenLogprob, offset: usize) -> Value {
        let mut c = self.envelope(true, self.choice(None, None, true));
        c["choices"][0]["logprobs"] = match self.kind {
            Kind::Completion => self.completion_logprobs(&[(t.id, Some(t))], offset),
            Kind::Chat => json!({"content": [self.chat_entry(t)]}),
        };
        c
    }
}

/// OpenAI's finish reasons: "stop" for end-of-generation or a stop string, "length" for the
/// token limit or a full context.
fn finish_reason(r: &str) -> &'static str {
    match r {
        "eos" | "stop" => "stop",
        _ => "length",
    }
}

/// Token counts, summed over the choices of a response.
fn usage(fs: &[&Finished]) -> Value {
    let prompt: usize = fs.iter().map(|f| f.prompt_tokens).sum();
    let completion: usize = fs.iter().map(|f| f.out.generated_ids.len()).sum();
    let cached: usize = fs.iter().map(|f| f.cached).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Our own figures beside OpenAI's fields, as llama-server's `timings`.
fn timings(f: &Finished) -> Value {
    f.out.stats_json()
}

/// Wait for a job's end (its text events are not needed: the result carries the text).
async fn finished(rx: &mut mpsc::UnboundedReceiver<Event>) -> Result<Finished, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Text(_)) | Some(Event::Token(_)) => {}
            Some(Event::Done(r)) => return r,
            None => return Err(ApiError::internal("the engine thread has stopped")),
        }
    }
}

fn stream(meta: Meta, mut rx: mpsc::UnboundedReceiver<Event>, include_usage: bool) -> Response {
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let frame = |v: &Value| Ok(Bytes::from(format!("data: {v}\n\n")));
        if meta.kind == Kind::Chat {
            let mut first = meta.envelope(true, meta.choice(None, None, true));
            first["choices"][0]["delta"] = json!({"role": "assistant", "content": ""});
            if tx.send(frame(&first)).await.is_err() {
                return;
            }
        }
        let mut offset = 0;
        while let Some(ev) = rx.recv().await {
            let v = match ev {
                Event::Text(t) => meta.envelope(true, meta.choice(Some(&t), None, true)),
                Event::Token(t) => {
                    let c = meta.logprob_chunk(&t, offset);
                    offset += meta.text_len(t.id);
                    c
                }
                Event::Done(Ok(f)) => {
                    let reason = finish_reason(f.out.finish_reason);
                    let mut last = meta.envelope(true, meta.choice(None, Some(reason), true));
                    last["timings"] = timings(&f);
                    if tx.send(frame(&last)).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let mut u = meta.envelope(true, json!([]));
                        u["usage"] = usage(&[&f]);
                        if tx.send(frame(&u)).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
                Event::Done(Err(e)) => {
                    let _ = tx.send(frame(&e.body())).await;
                    break;
                }
            };
            // A failed send means the client left: dropping `rx` makes the engine stop.
            if tx.send(frame(&v)).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(out));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| error(ApiError::internal("cannot build the response")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
