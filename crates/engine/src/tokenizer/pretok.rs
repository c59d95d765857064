//! Pre-tokenizers: split text into the pieces that BPE then encodes one by one.
//!
//! Hand-written matchers, because the reference patterns use look-ahead (`\s+(?!\S)`) that the
//! `regex` crate lacks. Each follows a reference exactly:
//!
//! - [`PreTokenizer::Gpt4o`]: the o200k pattern as tiktoken and Hugging Face run it (with
//!   `\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}` / `\p{Ll}\p{Lm}\p{Lo}\p{M}` case classes and
//!   case-insensitive contractions). llama.cpp runs an approximation of this pattern that treats
//!   every non-ASCII letter as both upper and lower case and leaves marks out of words; we follow
//!   tiktoken, the tokenizer Phi-4-mini was trained with, and the o200k oracle test holds us to it.
//! - [`PreTokenizer::Gpt2`], [`PreTokenizer::Llama3`]: llama.cpp's hand-written splitters for
//!   the GPT-2 and Llama-3 patterns.
//! - [`PreTokenizer::Smollm`]: llama.cpp's two stages, `\p{N}` (every digit alone) then GPT-2.
//! - [`PreTokenizer::Default`]: llama.cpp's four stages for `pre = "default"`.
//!
//! A later stage only splits the chunks of the stage before, and sees each chunk's end as the
//! end of the text (this matters for `\s+(?!\S)`).

use std::fmt;
use std::ops::Range;

use super::unicode::{self, LETTER, LOWER, MARK, NUMBER, OTHER_LETTER, PUNCT, SPACE, UPPER};

/// The pre-tokenizer named by `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreTokenizer {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `\p{N}` then the GPT-2 pattern (SmolLM, StarCoder, ...).
    Smollm,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// The o200k pattern (GPT-4o, Phi-4-mini).
    Gpt4o,
    /// llama.cpp's fallback: `[\p{P}\$\+<=>\^~\|]+`, GPT-2, `\p{N}+`, `[0-9][0-9][0-9]`.
    Default,
}

/// Every `tokenizer.ggml.pre` value we accept, with the pre-tokenizer llama.cpp uses for it and
/// whether llama.cpp looks a whole pre-token up in the vocabulary before running BPE on it
/// (`ignore_merges`) and adds BOS when the file does not say (`add_bos` default).
const NAMES: &[(&str, PreTokenizer, bool, bool)] = &[
    ("default", PreTokenizer::Default, false, false),
    ("gpt-2", PreTokenizer::Gpt2, false, false),
    ("gpt2", PreTokenizer::Gpt2, false, false),
    ("phi-2", PreTokenizer::Gpt2, false, false),
    ("mpt", PreTokenizer::Gpt2, false, false),
    ("olmo", PreTokenizer::Gpt2, false, false),
    ("smollm", PreTokenizer::Smollm, false, false),
    ("starcoder", PreTokenizer::Smollm, false, false),
    ("refact", PreTokenizer::Smollm, false, false),
    ("codeshell", PreTokenizer::Smollm, false, false),
    ("llama3", PreTokenizer::Llama3, true, true),
    ("llama-v3", PreTokenizer::Llama3, true, true),
    ("llama-bpe", PreTokenizer::Llama3, true, true),
    ("falcon3", PreTokenizer::Llama3, true, true),
    ("dbrx", PreTokenizer::Llama3, false, false),
    ("smaug-bpe", PreTokenizer::Llama3, false, false),
    ("gpt-4o", PreTokenizer::Gpt4o, false, false),
    ("llama4", PreTokenizer::Gpt4o, false, false),
];

/// How a `tokenizer.ggml.pre` value configures encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreConfig {
    pub pre: PreTokenizer,
    /// Use a pre-token's own vocabulary entry, when it has one, instead of running BPE.
    pub ignore_merges: bool,
    /// llama.cpp's `add_bos` when `tokenizer.ggml.add_bos_token` is absent.
    pub default_add_bos: bool,
}

impl PreConfig {
    /// The configuration for a `tokenizer.ggml.pre` value; an empty name means "default", as in
    /// llama.cpp.
    pub fn from_name(name: &str) -> Option<PreConfig> {
        let name = if name.is_empty() { "default" } else { name };
        NAMES
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, pre, ignore_merges, default_add_bos)| PreConfig {
                pre,
                ignore_merges,
                default_add_bos,
            })
    }

    /// The accepted names, for error messages.
    pub fn supported_names() -> Vec<&'static str> {
        NAMES.iter().map(|(n, ..)| *n).collect()
    }
}

impl fmt::Display for PreTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            PreTokenizer::Gpt2 => "gpt-2",
            PreTokenizer::Smollm => "smollm",
            PreTokenizer::Llama3 => "llama3",
            PreTokenizer::Gpt4o => "gpt-4o",
            PreTokenizer::Default => "default",
        };
        f.write_str(s)
    }
}

/// The text of one fragment as chars, with their class bits and byte offsets.
struct Chars {
    cs: Vec<char>,
    cl: Vec<u8>,
    /// Byte offset of each char, plus the text length at the end.
    at: Vec<usize>,
}

impl Chars {
    fn new(text: &str) -> Chars {
        let mut cs = Vec::with_capacity(text.len());
        let mut at = Vec::with_capacity(text.len() + 1);
        for (i, c) in text.char_indices() {
            cs.push(c);
            at.push(i);
        }
        at.push(text.len());
        let mut cl = Vec::new();
        unicode::classes(&cs, &mut cl);
        Chars { cs, cl, at }
    }
}

impl PreTokenizer {
    /// Split `text` into pre-tokens, as byte ranges that cover it in order.
    pub fn split(self, text: &str) -> Vec<Range<usize>> {
        if text.is_empty() {
            return Vec::new();
        }
        let t = Chars::new(text);
        let n = t.cs.len();
        // Chunk ends (exclusive char indices) after each stage.
        let mut ends = vec![n];
        let mut next = Vec::with_capacity(n / 3 + 1);
        let stages: &[Stage] = match self {
            PreTokenizer::Gpt2 => &[Stage::Gpt2],
            PreTokenizer::Smollm => &[Stage::EachNumber, Stage::Gpt2],
            PreTokenizer::Llama3 => &[Stage::Llama3],
            PreTokenizer::Gpt4o => &[Stage::O200k],
            PreTokenizer::Default => &[
                Stage::PunctRuns,
                Stage::Gpt2,
                Stage::NumberRuns,
                Stage::AsciiDigitTriples,
            ],
        };
        for stage in stages {
            next.clear();
            let mut start = 0;
            for &end in &ends {
                stage.run(&t, start, end, &mut next);
                start = end;
            }
            std::mem::swap(&mut ends, &mut next);
        }
        let mut out = Vec::with_capacity(ends.len());
        let mut start = 0;
        for end in ends {
            if end > start {
                out.push(t.at[start]..t.at[end]);
            }
            start = end;
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Stage {
    Gpt2,
    Llama3,
    O200k,
    EachNumber,
    PunctRuns,
    NumberRuns,
    AsciiDigitTriples,
}

impl Stage {
    /// Split chars `s..e` and push the end of every piece (the last one is `e`).
    fn run(self, t: &Chars, s: usize, e: usize, out: &mut Vec<usize>) {
        match self {
            Stage::Gpt2 => gpt2(t, s, e, out),
            Stage::Llama3 => llama3(t, s, e, out),
            Stage::O200k => o200k(t, s, e, out),
            Stage::EachNumber => {
                // `\p{N}`: each number char alone, the text between as chunks.
                let mut p = s;
                while p < e {
                    if t.cl[p] & NUMBER != 0 && t.cl[p] & SPACE == 0 {
                        p += 1;
                    } else {
                        while p < e && !(t.cl[p] & NUMBER != 0 && t.cl[p] & SPACE == 0) {
                            p += 1;
                        }
                    }
                    out.push(p);
                }
            }
            Stage::PunctRuns => split_runs(s, e, out, |p| default_punct(t.cs[p], t.cl[p])),
            Stage::NumberRuns => {
                split_runs(s, e, out, |p| t.cl[p] & NUMBER != 0 && t.cl[p] & SPACE == 0)
            }
            Stage::AsciiDigitTriples => {
                let digit = |p: usize| t.cs[p].is_ascii_digit();
                let mut p = s;
                let mut last = s;
                while p < e {
                    if p + 3 <= e && digit(p) && digit(p + 1) && digit(p + 2) {
                        if p > last {
                            out.push(p);
                        }
                        p += 3;
                        out.push(p);
                        last = p;
                    } else {
                        p += 1;
                    }
                }
                if e > last {
                    out.push(e);
                }
            }
        }
    }
}

/// Alternate runs of chars with and without `pred`.
fn split_runs(s: usize, e: usize, out: &mut Vec<usize>, pred: impl Fn(usize) -> bool) {
    let mut p = s;
    while p < e {
        let want = pred(p);
        while p < e && pred(p) == want {
            p += 1;
        }
        out.push(p);
    }
}

/// llama.cpp's `[\p{P}\$\+<=>\^~\|]` on its collapsed text: ASCII punctuation except the
/// backtick, plus `$+<=>^~|`, plus non-ASCII `\p{P}` that is not white space.
fn default_punct(c: char, cl: u8) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation() && c != '`'
    } else {
        cl & PUNCT != 0 && cl & SPACE == 0
    }
}

/// The GPT-2 pattern, as llama.cpp's custom splitter runs it within a chunk.
fn gpt2(t: &Chars, s: usize, e: usize, out: &mut Vec<usize>) {
    let (cs, cl) = (&t.cs, &t.cl);
    let mut p = s;
    while p < e {
        let c = cs[p];
        // 's|'t|'re|'ve|'m|'ll|'d
        if c == '\'' && p + 1 < e {
            let c1 = cs[p + 1];
            if matches!(c1, 's' | 't' | 'm' | 'd') {
                p += 2;
                out.push(p);
                continue;
            }
            if p + 2 < e && matches!((c1, cs[p + 2]), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                p += 3;
                out.push(p);
                continue;
            }
        }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let q = if c == ' ' { p + 1 } else { p };
        if q < e {
            let k = cl[q];
            let run_class = if k & LETTER != 0 {
                Some(LETTER)
            } else if k & NUMBER != 0 {
                Some(NUMBER)
            } else if k & (SPACE | LETTER | NUMBER) == 0 {
                Some(0)
            } else {
                None
            };
            if let Some(want) = run_class {
                let mut r = q + 1;
                while r < e && {
                    let k = cl[r];
                    if want == 0 {
                        k & (SPACE | LETTER | NUMBER) == 0
                    } else {
                        k & want != 0
                    }
                } {
                    r += 1;
                }
                p = r;
                out.push(p);
                continue;
            }
        }
        p = whitespace(t, p, e, false);
        out.push(p);
    }
}

/// The Llama-3 pattern, as llama.cpp's custom splitter runs it within a chunk.
fn llama3(t: &Chars, s: usize, e: usize, out: &mut Vec<usize>) {
    let (cs, cl) = (&t.cs, &t.cl);
    let mut p = s;
    while p < e {
        let c = cs[p];
        if let Some(n) = contraction(cs, p, e) {
            p += n;
            out.push(p);
            continue;
        }
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !(c == '\r' || c == '\n' || cl[p] & NUMBER != 0)
            && (cl[p] & LETTER != 0 || (p + 1 < e && cl[p + 1] & LETTER != 0))
        {
            p += 1;
            while p < e && cl[p] & LETTER != 0 {
                p += 1;
            }
            out.push(p);
            continue;
        }
        // `\p{N}{1,3}`
        if cl[p] & NUMBER != 0 {
            let mut run = 0;
            while p < e && cl[p] & NUMBER != 0 {
                p += 1;
                run += 1;
                if run == 3 {
                    out.push(p);
                    run = 0;
                }
            }
            if run > 0 {
                out.push(p);
            }
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let q = if c == ' ' { p + 1 } else { p };
        if q >= e || cl[q] & (SPACE | LETTER | NUMBER) == 0 {
            let mut r = q;
            while r < e && cl[r] & (SPACE | LETTER | NUMBER) == 0 {
                r += 1;
            }
            while r < e && matches!(cs[r], '\r' | '\n') {
                r += 1;
            }
            p = r;
            out.push(p);
            continue;
        }
        p = whitespace(t, p, e, true);
        out.push(p);
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `p`: the match length.
fn contraction(cs: &[char], p: usize, e: usize) -> Option<usize> {
    if cs[p] != '\'' || p + 1 >= e {
        return None;
    }
    let c1 = cs[p + 1].to_ascii_lowercase();
    if matches!(c1, 's' | 't' | 'm' | 'd') {
        return Some(2);
    }
    if p + 2 < e {
        let c2 = cs[p + 2].to_ascii_lowercase();
        if matches!((c1, c2), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
            return Some(3);
        }
    }
    None
}

/// The white-space alternatives at `p`: `\s*[\r\n]+` (if `newlines`), `\s+(?!\S)`, `\s+`; a
/// char that matches nothing is a piece of its own. Returns the end of the piece.
fn whitespace(t: &Chars, p: usize, e: usize, newlines: bool) -> usize {
    let mut w = p;
    let mut last_newline = None;
    while w < e && t.cl[w] & SPACE != 0 {
        if matches!(t.cs[w], '\r' | '\n') {
            last_newline = Some(w);
        }
        w += 1;
    }
    if newlines {
        if let Some(nl) = last_newline {
            return nl + 1;
        }
    }
    let n = w - p;
    if n > 1 && w < e {
        w - 1
    } else if n > 0 {
        w
    } else {
        p + 1
    }
}

const O200K_UPPER: u8 = UPPER | OTHER_LETTER | MARK;
const O200K_LOWER: u8 = LOWER | OTHER_LETTER | MARK;

/// The o200k pattern, alternative by alternative, with the backtracking the regex would do:
///
/// 1. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 2. `[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?`
/// 3. `\p{N}{1,3}`
/// 4. ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
/// 5. `\s*[\r\n]+`
/// 6. `\s+(?!\S)`
/// 7. `\s+`
fn o200k(t: &Chars, s: usize, e: usize, out: &mut Vec<usize>) {
    let (cs, cl) = (&t.cs, &t.cl);
    let mut p = s;
    while p < e {
        let end = o200k_word(t, p, e)
            .or_else(|| {
                // 3
                (cl[p] & NUMBER != 0).then(|| {
                    let mut r = p + 1;
                    while r < e && r < p + 3 && cl[r] & NUMBER != 0 {
                        r += 1;
                    }
                    r
                })
            })
            .or_else(|| {
                // 4
                let q = if cs[p] == ' ' { p + 1 } else { p };
                (q < e && cl[q] & (SPACE | LETTER | NUMBER) == 0).then(|| {
                    let mut r = q + 1;
                    while r < e && cl[r] & (SPACE | LETTER | NUMBER) == 0 {
                        r += 1;
                    }
                    while r < e && matches!(cs[r], '\r' | '\n' | '/') {
                        r += 1;
                    }
                    r
                })
            })
            // 5, 6, 7
            .unwrap_or_else(|| whitespace(t, p, e, true));
        p = end;
        out.push(p);
    }
}

/// Alternatives 1 and 2 of the o200k pattern at `p`, with and without the optional first char.
fn o200k_word(t: &Chars, p: usize, e: usize) -> Option<usize> {
    let (cs, cl) = (&t.cs, &t.cl);
    let upper = |i: usize| i < e && cl[i] & O200K_UPPER != 0;
    let lower = |i: usize| i < e && cl[i] & O200K_LOWER != 0;
    let has_prefix = !matches!(cs[p], '\r' | '\n') && cl[p] & (LETTER | NUMBER) == 0;

    // [U]*[L]+ from `a`: U* takes as much as it can, then gives back until L+ can start.
    let alt1 = |a: usize| -> Option<usize> {
        let mut u = a;
        while upper(u) {
            u += 1;
        }
        let mut start = u;
        while !lower(start) {
            if start == a {
                return None;
            }
            start -= 1;
        }
        let mut r = start;
        while lower(r) {
            r += 1;
        }
        Some(r + o200k_contraction(cs, r, e))
    };
    // [U]+[L]* from `a`.
    let alt2 = |a: usize| -> Option<usize> {
        if !upper(a) {
            return None;
        }
        let mut r = a;
        while upper(r) {
            r += 1;
        }
        while lower(r) {
            r += 1;
        }
        Some(r + o200k_contraction(cs, r, e))
    };
    if has_prefix {
        if let Some(r) = alt1(p + 1) {
            return Some(r);
        }
    }
    if let Some(r) = alt1(p) {
        return Some(r);
    }
    if has_prefix {
        if let Some(r) = alt2(p + 1) {
            return Some(r);
        }
    }
    alt2(p)
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)?` at `p` under Unicode simple case folding, where `s` also
/// matches `ſ` (U+017F). Returns the match length, 0 if none.
fn o200k_contraction(cs: &[char], p: usize, e: usize) -> usize {
    if p >= e || cs[p] != '\'' {
        return 0;
    }
    let at = |i: usize| -> char {
        if i < e {
            match cs[i] {
                'ſ' => 's',
                c => c.to_ascii_lowercase(),
            }
        } else {
            '\0'
        }
    };
    match (at(p + 1), at(p + 2)) {
        ('s' | 't' | 'm' | 'd', _) => 2,
        ('r', 'e') | ('v', 'e') | ('l', 'l') => 3,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(pre: PreTokenizer, text: &str) -> Vec<String> {
        let ranges = pre.split(text);
        let mut pos = 0;
        for r in &ranges {
            assert_eq!(r.start, pos, "pieces must cover the text");
            assert!(r.end > r.start);
            pos = r.end;
        }
        assert_eq!(pos, text.len());
        ranges.into_iter().map(|r| text[r].to_string()).collect()
    }

    fn check(pre: PreTokenizer, text: &str, want: &[&str]) {
        assert_eq!(pieces(pre, text), want, "{pre} on {text:?}");
    }

    #[test]
    fn every_pre_tokenizer_covers_any_text() {
        // Random code points from every plane (a fixed xorshift sequence), plus ASCII.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let n = (next() % 24) as usize;
            let text: String = (0..n)
                .map(|_| {
                    let r = next();
                    let cp = if r % 3 == 0 {
                        (r >> 8) % 0x80
                    } else {
                        (r >> 8) % 0x11_0000
                    };
                    char::from_u32(cp as u32).unwrap_or('\u{FFFD}')
                })
                .collect();
            for pre in [
                PreTokenizer::Gpt2,
                PreTokenizer::Smollm,
                PreTokenizer::Llama3,
                PreTokenizer::Gpt4o,
                PreTokenizer::Default,
            ] {
                pieces(pre, &text);
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            PreConfig::from_name("").map(|c| c.pre),
            Some(PreTokenizer::Default)
        );
        assert_eq!(
            PreConfig::from_name("smollm").map(|c| c.pre),
            Some(PreTokenizer::Smollm)
        );
        assert_eq!(
            PreConfig::from_name("gpt-4o").map(|c| c.pre),
            Some(PreTokenizer::Gpt4o)
        );
        let l3 = PreConfig::from_name("llama-bpe").unwrap();
        assert!(l3.ignore_merges && l3.default_add_bos);
        assert!(PreConfig::from_name("qwen2").is_none());
        assert!(PreConfig::supported_names().contains(&"gpt-2"));
    }

    #[test]
    fn gpt2_pattern() {
        use PreTokenizer::Gpt2;
        check(Gpt2, "Hello world", &["Hello", " world"]);
        check(
            Gpt2,
            "it's we'll I'LL",
            &["it", "'s", " we", "'ll", " I", "'", "LL"],
        );
        check(Gpt2, "x   y", &["x", "  ", " y"]);
        check(Gpt2, "x   ", &["x", "   "]);
        check(Gpt2, "a\n\nb", &["a", "\n", "\n", "b"]);
        check(Gpt2, "a\r\n\tb", &["a", "\r\n", "\t", "b"]);
        check(Gpt2, "12345 678", &["12345", " 678"]);
        check(Gpt2, "foo!!?? bar", &["foo", "!!??", " bar"]);
        check(Gpt2, "日本語 テキスト", &["日本語", " テキスト"]);
        check(Gpt2, "e\u{301}t\u{e9}", &["e", "\u{301}", "t\u{e9}"]);
        check(Gpt2, "hi 👋🏽 there", &["hi", " 👋🏽", " there"]);
    }

    #[test]
    fn smollm_isolates_digits() {
        use PreTokenizer::Smollm;
        check(Smollm, "abc123 4", &["abc", "1", "2", "3", " ", "4"]);
        // The chunk before a digit ends there, so its spaces are not split by `\s+(?!\S)`.
        check(Smollm, "x   1", &["x", "   ", "1"]);
        check(Smollm, "I'm 25.", &["I", "'m", " ", "2", "5", "."]);
        check(Smollm, "٣x", &["٣", "x"]);
    }

    #[test]
    fn default_stages() {
        use PreTokenizer::Default;
        check(Default, "hello, world", &["hello", ",", " world"]);
        check(Default, "x 1234567", &["x", " ", "123", "456", "7"]);
        check(Default, "a+=b `c`", &["a", "+=", "b", " `", "c", "`"]);
    }

    #[test]
    fn llama3_pattern() {
        use PreTokenizer::Llama3;
        check(Llama3, "I'LL don't", &["I", "'LL", " don", "'t"]);
        check(Llama3, "1234567", &["123", "456", "7"]);
        check(
            Llama3,
            "  hello\n\n  world",
            &[" ", " hello", "\n\n", " ", " world"],
        );
        check(Llama3, "x!!!\n\ny", &["x", "!!!\n\n", "y"]);
        check(Llama3, "\tfoo", &["\tfoo"]);
    }

    #[test]
    fn o200k_pattern() {
        use PreTokenizer::Gpt4o;
        check(Gpt4o, "Hello world", &["Hello", " world"]);
        check(
            Gpt4o,
            "HelloWorld HTTPServer",
            &["Hello", "World", " HTTPServer"],
        );
        check(Gpt4o, "don't I'LL it'ſ", &["don't", " I'LL", " it'ſ"]);
        check(Gpt4o, "'s", &["'s"]);
        check(Gpt4o, "1234567", &["123", "456", "7"]);
        check(Gpt4o, "x   y", &["x", "  ", " y"]);
        check(Gpt4o, "x \n\n y", &["x", " \n\n", " y"]);
        check(Gpt4o, "a\r\nb", &["a", "\r\n", "b"]);
        check(Gpt4o, "\tfoo\t\tbar", &["\tfoo", "\t", "\tbar"]);
        check(Gpt4o, "foo!!/\n/x", &["foo", "!!/\n/", "x"]);
        check(Gpt4o, " ...", &[" ..."]);
        check(Gpt4o, "中文字符 テスト", &["中文字符", " テスト"]);
        check(Gpt4o, "ΑβΓδ", &["Αβ", "Γδ"]);
        // Marks belong to both case classes.
        check(Gpt4o, "e\u{301}cole \u{301}", &["e\u{301}cole", " \u{301}"]);
        check(Gpt4o, "\u{301}\u{301}", &["\u{301}\u{301}"]);
        check(Gpt4o, "ABCdEF", &["ABCd", "EF"]);
        check(Gpt4o, "Aあ", &["Aあ"]);
        check(Gpt4o, "AあB", &["Aあ", "B"]);
        check(Gpt4o, "👍🏽👨‍👩‍👧", &["👍🏽👨\u{200d}👩\u{200d}👧"]);
        check(Gpt4o, " \u{a0}x", &[" ", "\u{a0}x"]);
        check(Gpt4o, "", &[]);
    }
}
