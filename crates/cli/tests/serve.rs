//! `verispec serve` end to end: a real server process on a free port, spoken to over plain
//! HTTP/1.1 from std sockets. Uses SmolLM2 (scripts/fetch-models.sh), as `run` does by default.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a server on a free port and wait until /health says 200.
fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_verispec"))
        .current_dir(workspace())
        .env_remove("VERISPEC_MODEL")
        .args(["serve", "--model", MODEL, "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let server = Server { child, addr };
    let t0 = Instant::now();
    while get(&server, "/health").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never became healthy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One request on its own connection; the whole reply (the server closes after it).
fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    request_with(addr, method, path, "", body)
}

/// `request` with extra header lines (each ending in \r\n).
fn request_with(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> Reply {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it has read everything: ignore a failed write.
    let _ = c.write_all(body);
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers: headers.to_string(),
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

fn get(s: &Server, path: &str) -> (u16, String) {
    match std::panic::catch_unwind(|| request(s.addr, "GET", path, b"")) {
        Ok(r) => (r.status, r.body),
        Err(_) => (0, String::new()),
    }
}

fn post(s: &Server, path: &str, body: &Value) -> (u16, Value) {
    post_to(s.addr, path, body)
}

fn post_to(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = request(addr, "POST", path, body.to_string().as_bytes());
    let v = serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", r.status, r.body));
    (r.status, v)
}

/// `verispec run --json` on the same prompt: the server must produce the same text.
fn run_text(prompt: &str, n: usize, chat: bool) -> String {
    run_text_with(prompt, n, chat, &[])
}

/// [`run_text`] with more `run` arguments.
fn run_text_with(prompt: &str, n: usize, chat: bool, extra: &[&str]) -> String {
    let mut args = vec![
        "run".to_string(),
        "--model".into(),
        MODEL.into(),
        "--prompt".into(),
        prompt.into(),
        "-n".into(),
        n.to_string(),
        "--json".into(),
    ];
    if chat {
        args.push("--chat".into());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_verispec"))
        .current_dir(workspace())
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["text"].as_str().unwrap().to_string()
}

/// The `data:` payloads of an SSE body, up to (not including) `[DONE]`; panics if it is missing.
fn sse_events(body: &str) -> Vec<Value> {
    let data: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(
        data.last(),
        Some(&"[DONE]"),
        "stream must end with [DONE]: {body}"
    );
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[test]
fn completions_and_chat_equal_run_whole_and_streamed() {
    let s = start(&[]);
    let (code, models) = {
        let (c, b) = get(&s, "/v1/models");
        (c, serde_json::from_str::<Value>(&b).unwrap())
    };
    assert_eq!(code, 200);
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");

    let prompt = "The capital of France is";
    let want = run_text(prompt, 24, false);
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": prompt, "max_tokens": 24}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], want.as_str());
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 24);
    let n_prompt = r["usage"]["prompt_tokens"].as_u64().unwrap();

    // The same request again reuses the cached prompt and still gives the same text.
    let (_, again) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24}),
    );
    assert_eq!(again["choices"][0]["text"], want.as_str());
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(n_prompt - 1)
    );

    // Greedy without speculation gives the same text too.
    let (_, plain) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24, "speculative": false}),
    );
    assert_eq!(plain["choices"][0]["text"], want.as_str());

    // Streamed: the pieces join to the same text, then a finish chunk, usage, [DONE].
    let body = json!({"prompt": prompt, "max_tokens": 24, "stream": true,
                      "stream_options": {"include_usage": true}});
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(r.headers.contains("text/event-stream"), "{}", r.headers);
    let events = sse_events(&r.body);
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, want);
    let finishes: Vec<&Value> = events
        .iter()
        .map(|e| &e["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, vec!["length"]);
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], 24);

    // Chat equals `run --chat`, whole and streamed.
    let question = "What is the capital of France?";
    let want = run_text(question, 40, true);
    let msgs = json!([{"role": "user", "content": question}]);
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 40}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["choices"][0]["message"]["role"], "assistant");
    assert_eq!(r["choices"][0]["message"]["content"], want.as_str());
    let body = json!({"messages": msgs, "max_tokens": 40, "stream": true});
    let r = request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        body.to_string().as_bytes(),
    );
    let events = sse_events(&r.body);
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, want);
    assert!(events
        .iter()
        .all(|e| e["object"] == "chat.completion.chunk"));

    // Log-probabilities: one per generated token, the token is the top alternative (greedy),
    // and speculation gives the same values bit for bit (its verify rows equal single steps).
    // A code prompt on which speculation accepts drafts (so tokens come from verify rows > 0).
    let code = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";
    let lp = |spec: bool| {
        let (status, r) = post(
            &s,
            "/v1/completions",
            &json!({"prompt": code, "max_tokens": 64, "ignore_eos": true, "logprobs": 3,
                    "speculative": spec}),
        );
        assert_eq!(status, 200, "{r}");
        if spec {
            assert!(r["timings"]["accepted"].as_u64().unwrap() > 0, "{r}");
        }
        (
            r["choices"][0]["logprobs"].clone(),
            r["choices"][0]["text"].clone(),
        )
    };
    let ((with, text), (without, _)) = (lp(true), lp(false));
    assert_eq!(with, without);
    // Streamed, the per-token chunks join to the same object.
    let body = json!({"prompt": code, "max_tokens": 64, "ignore_eos": true, "logprobs": 3,
                      "stream": true});
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
    );
    let mut joined =
        json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for e in sse_events(&r.body) {
        let l = &e["choices"][0]["logprobs"];
        if l.is_null() {
            continue;
        }
        for k in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
            let items = l[k].as_array().unwrap().clone();
            joined[k].as_array_mut().unwrap().extend(items);
        }
    }
    assert_eq!(joined, with);
    let tokens = with["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 64);
    for (i, tok) in tokens.iter().enumerate() {
        let own = with["token_logprobs"][i].as_f64().unwrap();
        let top = with["top_logprobs"][i].as_object().unwrap();
        assert!(own <= 0.0 && !top.is_empty() && top.len() <= 3);
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(
            top.get(tok.as_str().unwrap()).and_then(Value::as_f64),
            Some(own)
        );
        assert_eq!(
            best, own,
            "position {i}: the greedy token is the most likely"
        );
    }
    assert_eq!(
        tokens
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect::<String>(),
        text.as_str().unwrap()
    );
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 8, "logprobs": true, "top_logprobs": 2}),
    );
    assert_eq!(code, 200, "{r}");
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let body = json!({"messages": msgs, "max_tokens": 8, "logprobs": true, "top_logprobs": 2,
                      "stream": true});
    let streamed: Vec<Value> = sse_events(
        &request(
            s.addr,
            "POST",
            "/v1/chat/completions",
            body.to_string().as_bytes(),
        )
        .body,
    )
    .iter()
    .filter_map(|e| e["choices"][0]["logprobs"]["content"].as_array())
    .flatten()
    .cloned()
    .collect();
    assert_eq!(&streamed, content);
    assert_eq!(
        content.len() as u64,
        r["usage"]["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(
        content[0]["top_logprobs"][0]["logprob"],
        content[0]["logprob"]
    );

    // A stop string cuts the text before it and reports "stop".
    let (_, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 24, "stop": ["."]}),
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    let cut = r["choices"][0]["text"].as_str().unwrap();
    assert!(!cut.contains('.') && run_text(prompt, 24, false).starts_with(cut));
}

#[test]
fn sampling_is_seeded_and_speculation_keeps_it() {
    let s = start(&[]);
    let prompt = "Once upon a time";
    let body = |seed: u64, speculative: bool| {
        json!({"prompt": prompt, "max_tokens": 32, "temperature": 0.9, "top_p": 0.95,
               "seed": seed, "speculative": speculative})
    };
    let text = |seed, speculative| {
        let (code, r) = post(&s, "/v1/completions", &body(seed, speculative));
        assert_eq!(code, 200, "{r}");
        r["choices"][0]["text"].as_str().unwrap().to_string()
    };
    let a = text(7, true);
    // The same seed again (a cached prompt now), without speculation, and through `run`.
    assert_eq!(text(7, true), a);
    assert_eq!(text(7, false), a);
    let cli = run_text_with(
        prompt,
        32,
        false,
        &[
            "--temp",
            "0.9",
            "--top-p",
            "0.95",
            "--seed",
            "7",
            "--speculative",
        ],
    );
    assert_eq!(cli, a);
    // Another seed samples another text; greedy is a third.
    let b = text(8, true);
    assert_ne!(a, b, "seeds 7 and 8 gave the same text");
    assert_ne!(a, run_text(prompt, 32, false));
    // The chat endpoint takes the same options.
    let (code, r) = post(
        &s,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                "temperature": 0.7, "top_k": 20, "seed": 1}),
    );
    assert_eq!(code, 200, "{r}");
}

#[test]
fn bad_requests_get_clear_4xx_and_the_server_survives() {
    let s = start(&["--ctx", "64"]);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            "/v1/completions",
            b"{not json".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/completions",
            b"[1,2]".to_vec(),
            400,
            "JSON object",
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt":"x","temperature":3}"#.to_vec(),
            400,
            "temperature",
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt":"x","n":3}"#.to_vec(),
            400,
            "'n'",
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt":[999999]}"#.to_vec(),
            400,
            "out of range",
        ),
        (
            "POST",
            "/v1/completions",
            br#"{"prompt":"x","model":"gpt-4"}"#.to_vec(),
            404,
            "gpt-4",
        ),
        (
            "POST",
            "/v1/chat/completions",
            br#"{"messages":[]}"#.to_vec(),
            400,
            "messages",
        ),
        (
            "POST",
            "/v1/chat/completions",
            br#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#.to_vec(),
            400,
            "only text",
        ),
        ("GET", "/v1/completions", Vec::new(), 405, "method"),
        ("GET", "/v2/nothing", Vec::new(), 404, "no such route"),
        (
            "POST",
            "/v1/completions",
            vec![b' '; 9 << 20],
            413,
            "exceeds",
        ),
    ];
    let long_prompt = "word ".repeat(200);
    let long = json!({"prompt": long_prompt}).to_string().into_bytes();
    let mut cases = cases;
    cases.push(("POST", "/v1/completions", long, 400, "context holds 64"));
    for (method, path, body, status, needle) in cases {
        let r = request(s.addr, method, path, &body);
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| {
            panic!("{method} {path}: error body is not JSON ({e}): {}", r.body)
        });
        let e = &v["error"];
        assert_eq!(e["code"], status);
        assert!(e["type"].is_string());
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{method} {path}: {msg:?} lacks {needle:?}"
        );
    }
    // Garbage on the socket: the server answers or closes, and goes on serving.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(b"\x00\x01GARBAGE / HTTP/9\r\n\r\n");
    let _ = c.read_to_end(&mut Vec::new());
    // A generation that runs into the context limit ends with "length", not an error.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 500, "ignore_eos": true}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["total_tokens"], 64 + 1);
    let (code, m) = get(&s, "/metrics");
    assert_eq!(code, 200);
    assert!(
        m.contains("verispec_http_requests_total{route=\"/v1/completions\",code=\"400\"}"),
        "{m}"
    );
    assert!(
        m.contains("verispec_model_loaded{model=\"SmolLM2-135M-Instruct.Q4_1\"} 1"),
        "{m}"
    );
}

/// Read one SSE event from a streaming connection (after the headers).
fn read_event(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "stream ended");
        if let Some(d) = line.strip_prefix("data: ") {
            return d.trim_end().to_string();
        }
    }
}

fn metric(s: &Server, name: &str) -> f64 {
    let (_, m) = get(s, "/metrics");
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {m}"))
}

#[test]
fn a_full_queue_gives_503_and_a_gone_client_frees_the_engine() {
    let s = start(&["--queue", "1", "--parallel", "1"]);
    // More prompts in one request than the queue can ever hold: a 400 that says so, not 503.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": ["a", "b"], "max_tokens": 2}),
    );
    assert_eq!(code, 400, "{r}");
    assert!(
        r["error"]["message"].as_str().unwrap().contains("--queue"),
        "{r}"
    );
    // A: a long streamed generation; wait for its first token so it is surely running.
    let mut a = TcpStream::connect(s.addr).unwrap();
    let body = json!({"prompt": "Once upon a time", "max_tokens": 100000, "ignore_eos": true,
                      "stream": true})
    .to_string();
    write!(
        a,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut ra = BufReader::new(a.try_clone().unwrap());
    read_event(&mut ra);
    assert_eq!(metric(&s, "verispec_requests_running"), 1.0);
    // B waits in the queue (its client blocks until A ends).
    let addr = s.addr;
    let b = std::thread::spawn(move || {
        post_to(
            addr,
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 4}),
        )
    });
    let t0 = Instant::now();
    while metric(&s, "verispec_queue_depth") < 1.0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "B never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    // C finds the queue full: refused at once, with Retry-After.
    let r = request(
        s.addr,
        "POST",
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 4})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after: 1"),
        "{}",
        r.headers
    );
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("queue is full"));
    // A's client leaves: its generation stops and B runs.
    drop(ra);
    drop(a);
    let (code, rb) = b.join().unwrap();
    assert_eq!(code, 200, "{rb}");
    assert_eq!(rb["usage"]["completion_tokens"], 4);
    let t0 = Instant::now();
    while metric(&s, "verispec_generations_total{reason=\"cancelled\"}") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "A was never cancelled"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&s, "verispec_queue_depth"), 0.0);
}

#[test]
fn parallel_requests_share_passes_and_keep_their_text() {
    let prompts = [
        "Once upon a time",
        "def fibonacci(n):",
        "The capital of France is",
        "List of prime numbers: 2, 3, 5,",
    ];
    let want: Vec<String> = prompts.iter().map(|p| run_text(p, 48, false)).collect();
    let s = start(&["--parallel", "4"]);
    let addr = s.addr;
    // All at once, two streamed, one without speculation.
    let clients: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let body = json!({"prompt": p, "max_tokens": 48, "stream": i % 2 == 1,
                              "speculative": i != 2});
            std::thread::spawn(move || {
                let r = request(addr, "POST", "/v1/completions", body.to_string().as_bytes());
                assert_eq!(r.status, 200, "{}", r.body);
                if i % 2 == 1 {
                    sse_events(&r.body)
                        .iter()
                        .map(|e| e["choices"][0]["text"].as_str().unwrap_or("").to_string())
                        .collect::<String>()
                } else {
                    let v: Value = serde_json::from_str(&r.body).unwrap();
                    v["choices"][0]["text"].as_str().unwrap().to_string()
                }
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap(), want[i], "prompt {:?}", prompts[i]);
    }
    // Some pass held rows of more than one request.
    let passes = metric(&s, "verispec_batch_passes_total");
    let seqs = metric(&s, "verispec_batch_sequences_total");
    assert!(
        passes > 0.0 && seqs > passes,
        "passes {passes}, sequences {seqs}"
    );
    // Several prompts in one request: one choice each, in order, each equal to `run`'s text.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": [prompts[2], prompts[0], prompts[3]], "max_tokens": 48}),
    );
    assert_eq!(code, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, want_i) in [2, 0, 3].into_iter().enumerate() {
        assert_eq!(choices[i]["index"], i);
        assert_eq!(choices[i]["text"], want[want_i].as_str(), "choice {i}");
    }
    let generated: u64 = r["timings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["n_generated"].as_u64().unwrap())
        .sum();
    assert_eq!(r["usage"]["completion_tokens"], generated);
    // Scoring several prompts at once (lm-eval's batched log-likelihood request): each
    // choice's log-probabilities equal the same prompt scored alone, bit for bit.
    let score = |p: Value| {
        let (code, r) = post(
            &s,
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 0, "echo": true, "logprobs": 1}),
        );
        assert_eq!(code, 200, "{r}");
        r
    };
    let both = score(json!([prompts[1], prompts[2]]));
    for (i, p) in [prompts[1], prompts[2]].into_iter().enumerate() {
        let alone = score(json!(p));
        assert_eq!(
            both["choices"][i]["logprobs"]["token_logprobs"],
            alone["choices"][0]["logprobs"]["token_logprobs"],
            "prompt {i}"
        );
    }
    // One bad prompt refuses the whole request, before anything runs.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": ["fine", [1, 99999999]], "max_tokens": 4}),
    );
    assert_eq!(code, 400, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{r}"
    );

    // A follow-up that extends one of them reuses that slot's cache.
    let follow = format!("{}{}", prompts[1], want[1]);
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": follow, "max_tokens": 8}),
    );
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["choices"][0]["text"], run_text(&follow, 8, false));
    assert!(metric(&s, "verispec_prompt_tokens_cached_total") > 5.0);
}

#[test]
fn tokenize_detokenize_and_the_api_key() {
    let s = start(&["--api-key", "sesame"]);
    let auth = "Authorization: Bearer sesame\r\n";
    let text = "Hello <|im_start|>world";
    let body = json!({"content": text}).to_string();
    // Without the key: 401 in the error shape. /health and /metrics stay open.
    let r = request(s.addr, "POST", "/tokenize", body.as_bytes());
    assert_eq!(r.status, 401, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = request_with(
        s.addr,
        "POST",
        "/v1/completions",
        "Authorization: Bearer nope\r\n",
        b"{}",
    );
    assert_eq!(r.status, 401);
    assert_eq!(get(&s, "/metrics").0, 200);
    // With it: the ids are the `tokenize` command's.
    let r = request_with(s.addr, "POST", "/tokenize", auth, body.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_verispec"))
        .current_dir(workspace())
        .args(["tokenize", "--model", MODEL, "--json", text])
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tokens"], cli["ids"]);
    assert_eq!(
        v["tokens"].as_array().unwrap().len(),
        v["pieces"].as_array().unwrap().len()
    );
    // Detokenize gives the text back (the control token is left out, as in generated text).
    let ids = v["tokens"].clone();
    let r = request_with(
        s.addr,
        "POST",
        "/detokenize",
        auth,
        json!({"tokens": ids}).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["content"], "Hello world");
    let r = request_with(s.addr, "POST", "/detokenize", auth, br#"{"tokens":[1,-2]}"#);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("'tokens'"), "{}", r.body);
}

#[test]
fn slow_clients_are_cut_off_and_sigterm_exits_cleanly() {
    let mut s = start(&[]);
    // A request head that never completes: closed after the server's 30 s header timeout.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let r = c.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        r.is_ok() && waited < Duration::from_secs(45),
        "the connection should be closed after ~30 s: {r:?} after {waited:?}"
    );
    assert_eq!(get(&s, "/health").0, 200);
    // SIGTERM: a clean shutdown with exit code 0.
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn echo_scores_the_prompt_with_the_bits_generation_gives() {
    let s = start(&[]);
    let prompt = "The capital of France is";
    // The first generated token and its log-probability.
    let (code, r) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 1, "logprobs": 2}),
    );
    assert_eq!(code, 200, "{r}");
    let lp = &r["choices"][0]["logprobs"];
    let (first, first_lp) = (lp["tokens"][0].clone(), lp["token_logprobs"][0].clone());
    // Score prompt + that token with echo and no generation (how lm-eval asks for
    // log-likelihoods): the last position must carry the same value, bit for bit.
    let (code, t) = post(&s, "/tokenize", &json!({"content": prompt}));
    assert_eq!(code, 200);
    let mut ids: Vec<u64> = t["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let (_, t) = post(
        &s,
        "/tokenize",
        &json!({"content": first.as_str().unwrap(), "add_special": false}),
    );
    assert_eq!(t["tokens"].as_array().unwrap().len(), 1, "{t}");
    ids.push(t["tokens"][0].as_u64().unwrap());
    let (code, e) = post(
        &s,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 1}),
    );
    assert_eq!(code, 200, "{e}");
    let c = &e["choices"][0];
    assert_eq!(e["usage"]["completion_tokens"], 0);
    assert!(c["text"].as_str().unwrap().starts_with(prompt), "{c}");
    let got = &c["logprobs"];
    let n = ids.len();
    assert_eq!(got["tokens"].as_array().unwrap().len(), n);
    assert!(got["token_logprobs"][0].is_null() && got["top_logprobs"][0].is_null());
    for i in 1..n {
        assert!(got["token_logprobs"][i].as_f64().unwrap() <= 0.0);
    }
    assert_eq!(got["token_logprobs"][n - 1], first_lp);
    assert_eq!(got["tokens"][n - 1], first);
}

#[test]
fn a_missing_model_fails_with_exit_1_before_listening() {
    let o = Command::new(env!("CARGO_BIN_EXE_verispec"))
        .current_dir(workspace())
        .args([
            "serve",
            "--model",
            "models/does-not-exist.gguf",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("does-not-exist.gguf") && !e.contains("listening"),
        "{e}"
    );
}
