//! OpenAI-style request bodies. They are read from JSON by hand, field by field, so that every
//! rejection names the field and says what is accepted. Unknown fields are ignored, as OpenAI
//! clients send many; fields that would change the output in a way this engine cannot honour
//! (sampling, penalties, several choices) are refused instead of silently ignored.

use serde_json::{Map, Value};
use verispec::chat::Message;
use verispec::generate::sample::Sampling;

/// An error as the client sees it: `{"error": {"message", "type", "code"}}` with this status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            kind: "not_found_error",
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 503,
            kind: "unavailable_error",
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            kind: "server_error",
            message: message.into(),
        }
    }
    pub fn body(&self) -> Value {
        serde_json::json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.status,
        }})
    }
}

/// What `/v1/completions` may be given as `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Tokenized as `run --prompt` does (special tokens parsed, BOS as the GGUF says).
    Text(String),
    /// Used as they are, with nothing prepended.
    Ids(Vec<u32>),
}

/// The options both endpoints share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub model: Option<String>,
    /// None: the endpoint's default.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Exact n-gram speculation (on unless the request says `"speculative": false`).
    pub speculative: bool,
    /// Log-probabilities of the generated tokens, with this many top alternatives.
    pub logprobs: Option<usize>,
    /// Greedy (temperature 0, the default) or seeded sampling. `seed` is None when the
    /// request gave none: the server draws one per request.
    pub sampling: Sampling,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    /// One or more (up to `MAX_PROMPTS`); each gets its own choice, in order.
    pub prompts: Vec<Prompt>,
    pub options: Options,
    /// Return the prompt before the completion (and its tokens' log-probabilities).
    pub echo: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub options: Options,
}

/// The most prompts one completion request may give.
pub const MAX_PROMPTS: usize = 64;

/// The most stop strings a request may give.
pub const MAX_STOPS: usize = 16;

pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let obj = parse_object(body)?;
    match obj.get("suffix") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(_) => {
            return Err(ApiError::bad(
                "'suffix': a suffix (fill-in-the-middle) is not supported",
            ))
        }
    }
    let echo = flag(&obj, "echo")?.unwrap_or(false);
    // Completions: `logprobs` is the number of top alternatives (0 gives the token's own).
    let logprobs = match obj.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(v) => Some(top_count("logprobs", v)?),
    };
    expect_one(&obj, "best_of")?;
    let prompts = match obj.get("prompt") {
        None | Some(Value::Null) => return Err(ApiError::bad("'prompt' is required")),
        Some(v) => parse_prompts(v)?,
    };
    // With echo, max_tokens 0 scores the prompt alone (how evaluation harnesses ask for it).
    let mut options = parse_options(&obj, &["max_tokens"], if echo { 0 } else { 1 })?;
    options.logprobs = logprobs;
    if echo && options.stream {
        return Err(ApiError::bad(
            "'echo' is supported only without \"stream\": true",
        ));
    }
    if prompts.len() > 1 && options.stream {
        return Err(ApiError::bad(
            "'prompt': several prompts are supported only without \"stream\": true",
        ));
    }
    Ok(CompletionRequest {
        prompts,
        options,
        echo,
    })
}

pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let obj = parse_object(body)?;
    // Chat: `logprobs: true`, with `top_logprobs` alternatives.
    let logprobs = match flag(&obj, "logprobs")? {
        Some(true) => Some(match obj.get("top_logprobs") {
            None | Some(Value::Null) => 0,
            Some(v) => top_count("top_logprobs", v)?,
        }),
        _ => {
            if obj.get("top_logprobs").is_some_and(|v| !v.is_null()) {
                return Err(ApiError::bad("'top_logprobs' needs \"logprobs\": true"));
            }
            None
        }
    };
    match obj.get("tools") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(ApiError::bad("'tools' (function calling) is not supported")),
    }
    if let Some(rf) = obj.get("response_format") {
        let kind = rf.get("type").and_then(Value::as_str);
        if !rf.is_null() && kind != Some("text") {
            return Err(ApiError::bad(
                "'response_format': only {\"type\": \"text\"} is supported",
            ));
        }
    }
    let messages = match obj.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(i, m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(Value::Array(_)) => return Err(ApiError::bad("'messages' is empty")),
        None | Some(Value::Null) => return Err(ApiError::bad("'messages' is required")),
        Some(_) => return Err(ApiError::bad("'messages' must be an array of messages")),
    };
    let mut options = parse_options(&obj, &["max_completion_tokens", "max_tokens"], 1)?;
    options.logprobs = logprobs;
    Ok(ChatRequest { messages, options })
}

/// The most alternatives per token a request may ask for.
pub const MAX_TOP_LOGPROBS: usize = 20;

fn top_count(key: &str, v: &Value) -> Result<usize, ApiError> {
    match v.as_u64() {
        Some(n) if n as usize <= MAX_TOP_LOGPROBS => Ok(n as usize),
        _ => Err(ApiError::bad(format!(
            "'{key}' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {v}"
        ))),
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// A string, token ids, or an array of either (several prompts, one choice each).
fn parse_prompts(v: &Value) -> Result<Vec<Prompt>, ApiError> {
    let prompts = match v {
        Value::String(s) => vec![Prompt::Text(s.clone())],
        Value::Array(a) if a.is_empty() => return Err(ApiError::bad("'prompt' is empty")),
        Value::Array(a) if a[0].is_number() => vec![Prompt::Ids(token_ids("prompt", a)?)],
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::String(s) => Ok(Prompt::Text(s.clone())),
                Value::Array(ids) => token_ids(&format!("prompt[{i}]"), ids).map(Prompt::Ids),
                _ => Err(ApiError::bad(format!(
                    "'prompt[{i}]' must be a string or an array of token ids"
                ))),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::bad(
                "'prompt' must be a string, token ids, or an array of them",
            ))
        }
    };
    if prompts.len() > MAX_PROMPTS {
        return Err(ApiError::bad(format!(
            "'prompt': at most {MAX_PROMPTS} prompts per request, got {}",
            prompts.len()
        )));
    }
    Ok(prompts)
}

fn token_ids(field: &str, a: &[Value]) -> Result<Vec<u32>, ApiError> {
    if a.is_empty() {
        return Err(ApiError::bad(format!("'{field}' is empty")));
    }
    a.iter()
        .map(|v| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ApiError::bad(format!(
                        "'{field}': token ids must be non-negative integers, got {v}"
                    ))
                })
        })
        .collect()
}

fn parse_message(i: usize, m: &Value) -> Result<Message, ApiError> {
    let role = match m.get("role") {
        Some(Value::String(r)) if !r.is_empty() => r.clone(),
        _ => {
            return Err(ApiError::bad(format!(
                "'messages[{i}].role' must be a non-empty string"
            )))
        }
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == "assistant" => String::new(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (Some("text"), None) => {
                        return Err(ApiError::bad(format!(
                            "'messages[{i}].content[{j}]': a text part needs 'text'"
                        )))
                    }
                    _ => {
                        return Err(ApiError::bad(format!(
                            "'messages[{i}].content[{j}]': only text parts are supported"
                        )))
                    }
                }
            }
            texts.join("\n")
        }
        _ => {
            return Err(ApiError::bad(format!(
                "'messages[{i}].content' must be a string or an array of text parts"
            )))
        }
    };
    Ok(Message { role, content })
}

/// `/tokenize`: the text and the two switches (both default to true, as `run` tokenizes).
pub fn parse_tokenize(body: &[u8]) -> Result<(String, bool, bool), ApiError> {
    let obj = parse_object(body)?;
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(ApiError::bad("'content' must be a string")),
    };
    Ok((
        content,
        flag(&obj, "add_special")?.unwrap_or(true),
        flag(&obj, "parse_special")?.unwrap_or(true),
    ))
}

/// `/detokenize`: the token ids.
pub fn parse_detokenize(body: &[u8]) -> Result<Vec<u32>, ApiError> {
    let obj = parse_object(body)?;
    match obj.get("tokens") {
        Some(Value::Array(a)) if a.is_empty() => Ok(Vec::new()),
        Some(Value::Array(a)) => token_ids("tokens", a),
        _ => Err(ApiError::bad("'tokens' must be an array of token ids")),
    }
}

/// The shared options. `max_keys` lists the names of the token limit, preferred first; it
/// must be at least `min_tokens`.
fn parse_options(
    obj: &Map<String, Value>,
    max_keys: &[&str],
    min_tokens: u64,
) -> Result<Options, ApiError> {
    let model = match obj.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::bad("'model' must be a string")),
    };
    let mut max_tokens = None;
    for key in max_keys {
        match obj.get(*key) {
            None | Some(Value::Null) => continue,
            Some(v) => match v.as_u64() {
                Some(n) if n >= min_tokens => {
                    max_tokens = Some(usize::try_from(n).unwrap_or(usize::MAX));
                    break;
                }
                _ => {
                    return Err(ApiError::bad(format!(
                        "'{key}' must be an integer >= {min_tokens}, got {v}"
                    )))
                }
            },
        }
    }
    let mut sampling = Sampling::greedy();
    if let Some(t) = number(obj, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad(format!(
                "'temperature' must be between 0 and 2, got {t}"
            )));
        }
        sampling.temperature = t as f32;
    }
    if let Some(p) = number(obj, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad(format!("'top_p' must be in (0, 1], got {p}")));
        }
        sampling.top_p = p as f32;
    }
    if let Some(p) = number(obj, "min_p")? {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::bad(format!("'min_p' must be in [0, 1], got {p}")));
        }
        sampling.min_p = p as f32;
    }
    // top_k: 0 or -1 keep every token (llama.cpp's and vLLM's "off").
    match obj.get("top_k") {
        None | Some(Value::Null) => {}
        Some(v) => match v.as_i64() {
            Some(k) if k >= -1 => sampling.top_k = usize::try_from(k).unwrap_or(0),
            _ => {
                return Err(ApiError::bad(format!(
                    "'top_k' must be an integer >= -1 (0 or -1: off), got {v}"
                )))
            }
        },
    }
    for key in ["presence_penalty", "frequency_penalty"] {
        if let Some(x) = number(obj, key)? {
            if x != 0.0 {
                return Err(ApiError::bad(format!(
                    "'{key}' {x}: penalties are not supported (they would change greedy output)"
                )));
            }
        }
    }
    match obj.get("logit_bias") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => return Err(ApiError::bad("'logit_bias' is not supported")),
    }
    expect_one(obj, "n")?;
    let stream = flag(obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => {
            if !stream {
                return Err(ApiError::bad(
                    "'stream_options' is only allowed with \"stream\": true",
                ));
            }
            flag(o, "include_usage")?.unwrap_or(false)
        }
        Some(_) => return Err(ApiError::bad("'stream_options' must be an object")),
    };
    let stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a {
                match v {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ApiError::bad(
                            "'stop' must be a string or an array of strings",
                        ))
                    }
                }
            }
            out
        }
        Some(_) => {
            return Err(ApiError::bad(
                "'stop' must be a string or an array of strings",
            ))
        }
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::bad(format!(
            "'stop' has {} strings; at most {MAX_STOPS} are allowed",
            stop.len()
        )));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("'stop' strings must not be empty"));
    }
    // Any 64-bit integer; negative seeds are taken by their two's-complement bits.
    let seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => Some(u),
            (None, Some(i)) => Some(i as u64),
            _ => return Err(ApiError::bad("'seed' must be an integer")),
        },
    };
    Ok(Options {
        model,
        max_tokens,
        stop,
        stream,
        include_usage,
        ignore_eos: flag(obj, "ignore_eos")?.unwrap_or(false),
        speculative: flag(obj, "speculative")?.unwrap_or(true),
        logprobs: None,
        sampling,
        seed,
    })
}

fn number(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("'{key}' must be a number, got {v}"))),
    }
}

fn flag(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::bad(format!(
            "'{key}' must be true or false, got {v}"
        ))),
    }
}

/// `n` and `best_of`: one choice per request.
fn expect_one(obj: &Map<String, Value>, key: &str) -> Result<(), ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(v) => Err(ApiError::bad(format!(
            "'{key}' {v}: only one choice per request is supported (greedy decoding gives the same text every time)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(body: &str) -> Result<CompletionRequest, ApiError> {
        parse_completion(body.as_bytes())
    }

    #[test]
    fn prompts_take_every_openai_shape() {
        let p = |b: &str| completion(b).map(|r| r.prompts);
        let text = |t: &str| Prompt::Text(t.into());
        assert_eq!(p(r#"{"prompt":"hi"}"#), Ok(vec![text("hi")]));
        assert_eq!(p(r#"{"prompt":["hi"]}"#), Ok(vec![text("hi")]));
        assert_eq!(
            p(r#"{"prompt":[1,2,3]}"#),
            Ok(vec![Prompt::Ids(vec![1, 2, 3])])
        );
        assert_eq!(
            p(r#"{"prompt":[[7,8]]}"#),
            Ok(vec![Prompt::Ids(vec![7, 8])])
        );
        // Several prompts: one choice each, strings and ids mixed as OpenAI allows.
        assert_eq!(
            p(r#"{"prompt":["a",[1],"b"]}"#),
            Ok(vec![text("a"), Prompt::Ids(vec![1]), text("b")])
        );
        let many = format!(
            r#"{{"prompt":{}}}"#,
            serde_json::json!(vec!["x"; MAX_PROMPTS + 1])
        );
        assert!(p(&many).unwrap_err().message.contains("at most"));
        let e = completion(r#"{"prompt":["a","b"],"stream":true}"#).unwrap_err();
        assert!(e.message.contains("several prompts"), "{}", e.message);
        for bad in [
            r#"{"prompt":["a",7]}"#,
            r#"{"prompt":[[1],[]]}"#,
            r#"{"prompt":[[1],[-2]]}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":[-1]}"#,
            r#"{"prompt":[1.5]}"#,
            r#"{"prompt":[4294967296]}"#,
            r#"{"prompt":7}"#,
            r#"{}"#,
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.message.contains("prompt"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn options_have_defaults_and_named_errors() {
        let o = completion(r#"{"prompt":"x"}"#).unwrap().options;
        assert_eq!(o.max_tokens, None);
        assert!(o.speculative && !o.stream && !o.ignore_eos && o.stop.is_empty());
        let o = completion(
            r#"{"prompt":"x","max_tokens":5,"stop":"\n","stream":true,
                "stream_options":{"include_usage":true},"temperature":0,"top_p":1,
                "n":1,"seed":3,"user":"u","speculative":false,"ignore_eos":true}"#,
        )
        .unwrap()
        .options;
        assert_eq!(o.max_tokens, Some(5));
        assert_eq!(o.stop, vec!["\n".to_string()]);
        assert!(o.stream && o.include_usage && o.ignore_eos && !o.speculative);
        for (body, field) in [
            (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
            (r#"{"prompt":"x","max_tokens":"9"}"#, "max_tokens"),
            (r#"{"prompt":"x","temperature":5}"#, "temperature"),
            (r#"{"prompt":"x","temperature":-1}"#, "temperature"),
            (r#"{"prompt":"x","top_p":0}"#, "top_p"),
            (r#"{"prompt":"x","top_k":-2}"#, "top_k"),
            (r#"{"prompt":"x","top_k":1.5}"#, "top_k"),
            (r#"{"prompt":"x","min_p":2}"#, "min_p"),
            (r#"{"prompt":"x","seed":"7"}"#, "seed"),
            (r#"{"prompt":"x","seed":1.5}"#, "seed"),
            (r#"{"prompt":"x","n":2}"#, "'n'"),
            (r#"{"prompt":"x","best_of":3}"#, "best_of"),
            (r#"{"prompt":"x","stop":[1]}"#, "stop"),
            (r#"{"prompt":"x","stop":[""]}"#, "stop"),
            (r#"{"prompt":"x","stream":"yes"}"#, "stream"),
            (r#"{"prompt":"x","stream_options":{}}"#, "stream_options"),
            (r#"{"prompt":"x","presence_penalty":1}"#, "presence_penalty"),
            (r#"{"prompt":"x","logprobs":21}"#, "logprobs"),
            (r#"{"prompt":"x","echo":true,"stream":true}"#, "echo"),
            (r#"{"prompt":"x","suffix":"y"}"#, "suffix"),
            (r#"{"prompt":"x","logit_bias":{"1":5}}"#, "logit_bias"),
            (r#"{"prompt":"x","model":3}"#, "model"),
        ] {
            let e = completion(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(field), "{body}: {}", e.message);
        }
        let o = completion(
            r#"{"prompt":"x","temperature":0.7,"top_k":40,"top_p":0.9,"min_p":0.05,"seed":-1}"#,
        )
        .unwrap()
        .options;
        let want = Sampling {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.05,
            seed: 0,
        };
        assert_eq!((o.sampling, o.seed), (want, Some(u64::MAX)));
        let o = completion(r#"{"prompt":"x","top_k":-1}"#).unwrap().options;
        assert_eq!((o.sampling, o.seed), (Sampling::greedy(), None));
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":3}"#)
                .unwrap()
                .options
                .logprobs,
            Some(3)
        );
        let many = format!(r#"{{"prompt":"x","stop":{:?}}}"#, vec!["s"; MAX_STOPS + 1]);
        assert!(completion(&many).unwrap_err().message.contains("at most"));
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused() {
        for body in [
            "",
            "{",
            "[1]",
            "\"x\"",
            "null",
            "{\"prompt\":\"\u{0}\"",
            "\u{feff}{}",
        ] {
            let e = parse_completion(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body:?}");
        }
        let e = parse_completion(&[0xff, 0xfe]).unwrap_err();
        assert!(e.message.contains("not valid JSON"));
    }

    #[test]
    fn chat_messages_take_strings_and_text_parts() {
        let r = parse_chat(
            br#"{"messages":[{"role":"system","content":"s"},
                {"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"assistant","content":null}],
                "max_completion_tokens":7,"max_tokens":9}"#,
        )
        .unwrap();
        assert_eq!(
            r.messages,
            vec![
                Message::new("system", "s"),
                Message::new("user", "a\nb"),
                Message::new("assistant", "")
            ]
        );
        assert_eq!(r.options.max_tokens, Some(7));
        assert_eq!(r.options.logprobs, None);
        let lp = |b: &str| parse_chat(b.as_bytes()).map(|r| r.options.logprobs);
        let m = r#""messages":[{"role":"user","content":"x"}]"#;
        assert_eq!(lp(&format!("{{{m},\"logprobs\":true}}")), Ok(Some(0)));
        assert_eq!(
            lp(&format!("{{{m},\"logprobs\":true,\"top_logprobs\":5}}")),
            Ok(Some(5))
        );
        assert!(lp(&format!("{{{m},\"top_logprobs\":5}}")).is_err());
        assert!(lp(&format!("{{{m},\"logprobs\":true,\"top_logprobs\":99}}")).is_err());
        for (body, field) in [
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{}"#, "messages"),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role"),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "only text",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{}]}"#,
                "tools",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                "response_format",
            ),
        ] {
            let e = parse_chat(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains(field), "{body}: {}", e.message);
        }
    }

    #[test]
    fn errors_have_the_contract_shape() {
        let b = ApiError::bad("nope").body();
        assert_eq!(b["error"]["message"], "nope");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["code"], 400);
    }
}
