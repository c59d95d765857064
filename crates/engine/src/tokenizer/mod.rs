//! Byte-level BPE tokenizer built from GGUF metadata (`tokenizer.ggml.model = "gpt2"`).
//!
//! Text → special-token partition → pre-tokenizer (chosen by `tokenizer.ggml.pre`) → per
//! pre-token: bytes → GPT-2 byte chars → BPE merges → token ids.
//!
//! The reference is llama.cpp (0c1e57098): `encode(text, add_special, parse_special)` behaves
//! like `llama_tokenize`, `piece(id, special)` like `llama_token_to_piece` (no leading-space
//! strip). The one deliberate difference is the `gpt-4o` pre-tokenizer, which follows
//! tiktoken's o200k pattern exactly (see [`pretok`]).
//!
//! Built from a plain [`TokenizerSpec`]; `gguf.rs` fills one from a GGUF file and `o200k.rs`
//! builds Phi-4-mini's from tiktoken's o200k_base ranks.

pub mod bpe;
pub mod bytes;
pub mod gguf;
pub mod o200k;
pub mod pretok;
mod stream;
pub mod unicode;

use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use bpe::{FxMap, Merges, NONE};
pub use o200k::{phi4_mini_spec, PHI4_MINI_CHAT_TEMPLATE};
pub use pretok::{PreConfig, PreTokenizer};
pub use stream::StreamDecoder;

/// `tokenizer.ggml.token_type` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i32(v: i32) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Per-token attributes, as llama.cpp derives them from the token types and model quirks.
pub mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    /// Eat white space to the left of this special token when it is parsed from text.
    pub const LSTRIP: u16 = 1 << 7;
    /// Eat white space to the right of this special token when it is parsed from text.
    pub const RSTRIP: u16 = 1 << 8;
}

/// Everything the tokenizer needs, as plain data (the `tokenizer.ggml.*` keys).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`; only "gpt2" (byte-level BPE) is supported.
    pub model: String,
    /// `tokenizer.ggml.pre`; empty means "default".
    pub pre: String,
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (see [`TokenType`]); empty = all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: "left right" pairs of token strings, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`; when absent llama.cpp's gpt2 default, 11, applies.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`; when absent llama.cpp's gpt2 default, 11, applies.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`; when absent it is found by text (`<|im_end|>`, ...).
    pub eot: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; when absent, llama.cpp's default for the pre-tokenizer.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`; absent = false.
    pub add_eos: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
    /// `general.name`: llama.cpp gives special tokens of models named "phi-3"/"phi3" RSTRIP.
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerError {
    UnsupportedModel(String),
    UnsupportedPre {
        pre: String,
        supported: Vec<&'static str>,
    },
    EmptyVocab,
    TooManyTokens(usize),
    TokenTypesTooShort {
        tokens: usize,
        types: usize,
    },
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    BadMerge {
        index: usize,
        merge: String,
        reason: String,
    },
    TokenIdOutOfRange {
        what: &'static str,
        id: u32,
        n_vocab: usize,
    },
    /// BOS or EOS must be added but the vocabulary has no such token.
    MissingSpecial(&'static str),
    /// A GGUF key is missing or has the wrong type.
    Gguf(String),
    /// tiktoken-rs could not provide the o200k_base ranks.
    Tiktoken(String),
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenizerError::UnsupportedModel(m) => write!(
                f,
                "tokenizer model {m:?} is not supported (tokenizer.ggml.model must be \"gpt2\")"
            ),
            TokenizerError::UnsupportedPre { pre, supported } => write!(
                f,
                "pre-tokenizer {pre:?} (tokenizer.ggml.pre) is not supported; supported: {}",
                supported.join(", ")
            ),
            TokenizerError::EmptyVocab => write!(f, "tokenizer.ggml.tokens is empty"),
            TokenizerError::TooManyTokens(n) => {
                write!(
                    f,
                    "tokenizer.ggml.tokens has {n} entries, more than u32 ids allow"
                )
            }
            TokenizerError::TokenTypesTooShort { tokens, types } => write!(
                f,
                "tokenizer.ggml.token_type has {types} entries for {tokens} tokens"
            ),
            TokenizerError::DuplicateToken {
                text,
                first,
                second,
            } => write!(
                f,
                "tokenizer.ggml.tokens has {text:?} twice (ids {first} and {second})"
            ),
            TokenizerError::BadMerge {
                index,
                merge,
                reason,
            } => {
                write!(f, "tokenizer.ggml.merges[{index}] = {merge:?}: {reason}")
            }
            TokenizerError::TokenIdOutOfRange { what, id, n_vocab } => write!(
                f,
                "{what} token id {id} is out of range (vocabulary has {n_vocab} tokens)"
            ),
            TokenizerError::MissingSpecial(what) => write!(
                f,
                "the tokenizer must add a {what} token but the vocabulary has none"
            ),
            TokenizerError::Gguf(m) => write!(f, "{m}"),
            TokenizerError::Tiktoken(m) => write!(f, "tiktoken-rs o200k_base: {m}"),
        }
    }
}

impl std::error::Error for TokenizerError {}

impl From<TokenizerError> for crate::EngineError {
    fn from(e: TokenizerError) -> Self {
        crate::EngineError::Tokenizer(e.to_string())
    }
}

/// Token texts that llama.cpp takes as end-of-turn when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// Token texts that llama.cpp treats as end-of-generation (and forces to CONTROL).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// llama.cpp's default BOS/EOS for "gpt2" vocabularies without the keys.
const GPT2_DEFAULT_BOS_EOS: u32 = 11;

/// Pre-token encodings kept per tokenizer; cleared when it grows past this many entries.
const CACHE_MAX_ENTRIES: usize = 1 << 16;

/// A piece of the input after the special-token partition.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

pub struct Tokenizer {
    pre: PreTokenizer,
    ignore_merges: bool,
    tokens: Vec<String>,
    attrs: Vec<u16>,
    token_to_id: FxMap<String, u32>,
    merges: Merges,
    /// CONTROL, USER_DEFINED and UNKNOWN tokens, longest text first (then lowest id).
    specials: Vec<u32>,
    /// Every token's bytes as `piece(id, special = true)` returns them, back to back.
    piece_bytes: Vec<u8>,
    piece_at: Vec<usize>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<String>,
    cache: Mutex<WordCache>,
}

/// Pre-token bytes → token ids.
type WordCache = FxMap<Box<[u8]>, Box<[u32]>>;

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("pre", &self.pre)
            .field("n_vocab", &self.tokens.len())
            .field("n_merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eot", &self.eot)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish()
    }
}

fn check_id(what: &'static str, id: Option<u32>, n: usize) -> Result<Option<u32>, TokenizerError> {
    match id {
        Some(i) if i as usize >= n => Err(TokenizerError::TokenIdOutOfRange {
            what,
            id: i,
            n_vocab: n,
        }),
        _ => Ok(id),
    }
}

/// C's `isspace` in the "C" locale, which llama.cpp uses for LSTRIP/RSTRIP.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl Tokenizer {
    pub fn from_spec(spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        if spec.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(spec.model));
        }
        let cfg =
            PreConfig::from_name(&spec.pre).ok_or_else(|| TokenizerError::UnsupportedPre {
                pre: spec.pre.clone(),
                supported: PreConfig::supported_names(),
            })?;
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= NONE as usize {
            return Err(TokenizerError::TooManyTokens(n));
        }
        if !spec.token_types.is_empty() && spec.token_types.len() < n {
            return Err(TokenizerError::TokenTypesTooShort {
                tokens: n,
                types: spec.token_types.len(),
            });
        }

        let mut tokens = spec.tokens;
        let mut token_to_id: FxMap<String, u32> = FxMap::default();
        token_to_id.reserve(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, text) in tokens.iter_mut().enumerate() {
            if text.is_empty() {
                *text = format!("[EMPTY_{i}]"); // as llama.cpp does
            }
            if let Some(&first) = token_to_id.get(text.as_str()) {
                return Err(TokenizerError::DuplicateToken {
                    text: text.clone(),
                    first,
                    second: i as u32,
                });
            }
            token_to_id.insert(text.clone(), i as u32);
            let ty = spec
                .token_types
                .get(i)
                .map_or(TokenType::Normal, |&t| TokenType::from_i32(t));
            attrs.push(match ty {
                TokenType::Undefined => 0,
                TokenType::Normal => attr::NORMAL,
                TokenType::Unknown => attr::UNKNOWN,
                TokenType::Control => attr::CONTROL,
                TokenType::UserDefined => attr::USER_DEFINED,
                TokenType::Unused => attr::UNUSED,
                TokenType::Byte => attr::BYTE,
            });
        }

        let mut byte_ids = [NONE; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            let c = bytes::byte_to_char(b as u8);
            if let Some(&id) = token_to_id.get(c.encode_utf8(&mut [0; 4]) as &str) {
                *slot = id;
            }
        }
        let mut merges = Merges::new(byte_ids, spec.merges.len());
        let mut joined = String::new();
        for (index, m) in spec.merges.iter().enumerate() {
            let bad = |reason: String| TokenizerError::BadMerge {
                index,
                merge: m.clone(),
                reason,
            };
            // The separator is the first space after the first byte (a part may be " ").
            let sep = m
                .as_bytes()
                .iter()
                .skip(1)
                .position(|&b| b == b' ')
                .map(|p| p + 1)
                .ok_or_else(|| bad("no space between the two parts".into()))?;
            let (left, right) = (&m[..sep], &m[sep + 1..]);
            let id = |part: &str| {
                token_to_id
                    .get(part)
                    .copied()
                    .ok_or_else(|| bad(format!("{part:?} is not a token")))
            };
            let (l, r) = (id(left)?, id(right)?);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            let merged = id(&joined)?;
            merges.insert(l, r, index as u32, merged);
        }

        let bos = check_id("bos", spec.bos, n)?.or(default_bos_eos(n));
        let eos = check_id("eos", spec.eos, n)?.or(default_bos_eos(n));
        let mut eot = check_id("eot", spec.eot, n)?;

        // Text-based special-token detection, as llama.cpp does after loading the vocabulary.
        if eot.is_none() {
            // llama.cpp takes whichever candidate its hash map yields first; we take the
            // first in list order, so `<|im_end|>` / `<|end|>` win over `<|endoftext|>`.
            eot = EOT_TEXTS.iter().find_map(|t| token_to_id.get(*t).copied());
            if let Some(id) = eot {
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        let mut eog: Vec<u32> = Vec::new();
        for t in EOG_TEXTS {
            if let Some(&id) = token_to_id.get(*t) {
                attrs[id as usize] |= attr::CONTROL;
                eog.push(id);
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.sort_unstable();
        eog.dedup();
        // gpt-oss: these are always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(t) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }

        let special_mask = attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN;
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&id| attrs[id as usize] & special_mask != 0)
            .collect();
        specials.sort_by_key(|&id| (std::cmp::Reverse(tokens[id as usize].len()), id));

        // Per-model attributes llama.cpp sets by name.
        if let Some(name) = &spec.name {
            let name = name.to_lowercase();
            if name.contains("phi-3") || name.contains("phi3") {
                for &id in &specials {
                    attrs[id as usize] |= attr::RSTRIP;
                }
                if let Some(&id) = token_to_id.get("</s>") {
                    attrs[id as usize] |= attr::RSTRIP;
                }
                for t in ["<unk>", "<s>", "<|endoftext|>"] {
                    if let Some(&id) = token_to_id.get(t) {
                        attrs[id as usize] &= !attr::RSTRIP;
                    }
                }
            }
        }

        let mut piece_bytes = Vec::with_capacity(n * 6);
        let mut piece_at = Vec::with_capacity(n + 1);
        for (text, &a) in tokens.iter().zip(&attrs) {
            piece_at.push(piece_bytes.len());
            render_piece(text, a, &mut piece_bytes);
        }
        piece_at.push(piece_bytes.len());

        let add_bos = spec.add_bos.unwrap_or(cfg.default_add_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecial("BOS"));
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecial("EOS"));
        }

        Ok(Tokenizer {
            pre: cfg.pre,
            ignore_merges: cfg.ignore_merges,
            tokens,
            attrs,
            token_to_id,
            merges,
            specials,
            piece_bytes,
            piece_at,
            bos,
            eos,
            eot,
            eog,
            add_bos,
            add_eos,
            chat_template: spec.chat_template,
            cache: Mutex::new(FxMap::default()),
        })
    }

    // ---- encoding ----

    /// Token ids of `text`, as `llama_tokenize(text, add_special, parse_special)` gives them.
    ///
    /// `add_special` adds BOS/EOS where the vocabulary asks for them (`add_bos`, `add_eos`).
    /// `parse_special` turns the literal text of CONTROL and UNKNOWN tokens into those tokens;
    /// USER_DEFINED tokens are always parsed.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        for frag in self.partition(text, parse_special) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(r) => self.encode_fragment(&text[r], &mut out),
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Ordinary text only: no BOS/EOS, and special-token text is encoded as text.
    pub fn encode_ordinary(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_fragment(text, &mut out);
        out
    }

    /// Split `text` around special tokens, longest token text first, as llama.cpp's
    /// `tokenizer_st_partition` does (each special token is searched for in the text
    /// fragments that earlier, longer tokens left over).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0..text.len()));
        let mut next = Vec::new();
        for &id in &self.specials {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            let mut found = false;
            next.clear();
            for frag in &frags {
                let Fragment::Text(r) = frag else {
                    next.push(frag.clone());
                    continue;
                };
                let mut r = r.clone();
                while let Some(pos) = text[r.clone()].find(needle) {
                    found = true;
                    let m = r.start + pos;
                    let mut left_end = m;
                    if a & attr::LSTRIP != 0 {
                        while left_end > r.start && c_isspace(text.as_bytes()[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > r.start {
                        next.push(Fragment::Text(r.start..left_end));
                    }
                    next.push(Fragment::Token(id));
                    let mut right = m + needle.len();
                    if a & attr::RSTRIP != 0 {
                        while right < r.end && c_isspace(text.as_bytes()[right]) {
                            right += 1;
                        }
                    }
                    r = right..r.end;
                }
                if !r.is_empty() {
                    next.push(Fragment::Text(r));
                }
            }
            if found {
                std::mem::swap(&mut frags, &mut next);
            }
        }
        frags
    }

    fn encode_fragment(&self, text: &str, out: &mut Vec<u32>) {
        let pieces = self.pre.split(text);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() > CACHE_MAX_ENTRIES {
            cache.clear();
        }
        let mut word = String::new();
        for r in pieces {
            let bytes = text[r].as_bytes();
            if self.ignore_merges {
                word.clear();
                word.extend(bytes.iter().map(|&b| bytes::byte_to_char(b)));
                if let Some(&id) = self.token_to_id.get(word.as_str()) {
                    out.push(id);
                    continue;
                }
            }
            if bytes.len() == 1 {
                self.merges.encode(bytes, out);
                continue;
            }
            if let Some(ids) = cache.get(bytes) {
                out.extend_from_slice(ids);
                continue;
            }
            let start = out.len();
            self.merges.encode(bytes, out);
            cache.insert(bytes.into(), out[start..].into());
        }
    }

    /// Forget the cached pre-token encodings (for benchmarks).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    // ---- decoding ----

    /// The bytes of token `id`, as `llama_token_to_piece(id, lstrip = 0, special)` gives them:
    /// normal tokens decode their byte chars, USER_DEFINED tokens give their text, CONTROL and
    /// UNKNOWN tokens give their text only when `special` is true. Empty for ids out of range.
    pub fn piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i >= self.tokens.len() {
            return &[];
        }
        if !special && self.attrs[i] & (attr::CONTROL | attr::UNKNOWN) != 0 {
            return &[];
        }
        &self.piece_bytes[self.piece_at[i]..self.piece_at[i + 1]]
    }

    /// The bytes of token `id` in generated text: control tokens are left out.
    pub fn token_piece(&self, id: u32) -> Vec<u8> {
        self.piece(id, false).to_vec()
    }

    /// Text of `ids`, invalid UTF-8 replaced by U+FFFD; control tokens are left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, false)
    }

    /// Text of `ids`; control tokens are rendered as their text if `special` is true.
    pub fn decode_with(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.piece(id, special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    // ---- vocabulary ----

    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }
    pub fn pre_tokenizer(&self) -> PreTokenizer {
        self.pre
    }
    /// The token's vocabulary string (GPT-2 byte chars for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }
    /// The token's attribute bits (see [`attr`]); 0 out of range.
    pub fn token_attrs(&self, id: u32) -> u16 {
        self.attrs.get(id as usize).copied().unwrap_or(0)
    }
    pub fn is_control(&self, id: u32) -> bool {
        self.token_attrs(id) & attr::CONTROL != 0
    }
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// End-of-generation tokens: EOS, EOT and the tokens llama.cpp recognizes by text.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

fn default_bos_eos(n_vocab: usize) -> Option<u32> {
    ((GPT2_DEFAULT_BOS_EOS as usize) < n_vocab).then_some(GPT2_DEFAULT_BOS_EOS)
}

/// A token's bytes with `special = true`, as llama.cpp's piece cache holds them.
fn render_piece(text: &str, a: u16, out: &mut Vec<u8>) {
    if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
    } else if a & attr::NORMAL != 0 {
        for c in text.chars() {
            match bytes::char_to_byte(c) {
                Some(b) => out.push(b),
                None => {
                    // llama.cpp's marker for a char outside the byte map.
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
    } else if a & attr::BYTE != 0 {
        let mut cs = text.chars();
        if let (Some(c), None) = (cs.next(), cs.next()) {
            out.extend(bytes::char_to_byte(c));
        }
    }
}

#[cfg(test)]
mod tests;
