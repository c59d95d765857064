//! Unicode character classes used by the pre-tokenizers.
//!
//! One byte of class bits per code point, for all of 0..=0x10FFFF (1.1 MB, built once). The
//! ranges come from `regex-syntax`, the same tables (Unicode 16.0) that tiktoken's regex engine
//! uses, so `\p{L}`, `\p{Lu}`, `\s`, ... mean exactly what they mean in the reference patterns.
//! (llama.cpp carries its own generated tables; the two agree except on code points assigned in
//! the newest Unicode versions.)

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// `\p{Lu}` or `\p{Lt}`.
pub const UPPER: u8 = 1 << 0;
/// `\p{Ll}`.
pub const LOWER: u8 = 1 << 1;
/// `\p{Lm}` or `\p{Lo}`.
pub const OTHER_LETTER: u8 = 1 << 2;
/// `\p{M}`.
pub const MARK: u8 = 1 << 3;
/// `\p{N}`.
pub const NUMBER: u8 = 1 << 4;
/// `\p{P}`.
pub const PUNCT: u8 = 1 << 5;
/// `\s`: the White_Space property.
pub const SPACE: u8 = 1 << 6;
/// `\p{S}`.
pub const SYMBOL: u8 = 1 << 7;

/// `\p{L}`.
pub const LETTER: u8 = UPPER | LOWER | OTHER_LETTER;

const N_CODEPOINTS: usize = 0x11_0000;

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

/// The ranges of a one-class pattern such as `\p{Lu}`. The patterns are constants, so a parse
/// failure is a bug caught by the unit tests; it yields an empty class rather than a panic.
fn class_ranges(pattern: &str) -> Vec<(u32, u32)> {
    let Ok(hir) = regex_syntax::parse(pattern) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn build_table() -> Vec<u8> {
    let mut t = vec![0u8; N_CODEPOINTS];
    let classes: [(&str, u8); 9] = [
        (r"\p{Lu}", UPPER),
        (r"\p{Lt}", UPPER),
        (r"\p{Ll}", LOWER),
        (r"[\p{Lm}\p{Lo}]", OTHER_LETTER),
        (r"\p{M}", MARK),
        (r"\p{N}", NUMBER),
        (r"\p{P}", PUNCT),
        (r"\p{S}", SYMBOL),
        (r"\s", SPACE),
    ];
    for (pattern, bit) in classes {
        for (lo, hi) in class_ranges(pattern) {
            for cp in lo..=hi {
                if let Some(slot) = t.get_mut(cp as usize) {
                    *slot |= bit;
                }
            }
        }
    }
    t
}

/// The class bits of `c`.
#[inline]
pub fn class(c: char) -> u8 {
    table().get(c as usize).copied().unwrap_or(0)
}

/// Class bits of each of `chars`, in order, into `out`.
pub fn classes(chars: &[char], out: &mut Vec<u8>) {
    let t = table();
    out.clear();
    out.extend(
        chars
            .iter()
            .map(|&c| t.get(c as usize).copied().unwrap_or(0)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(class('A'), UPPER);
        assert_eq!(class('ǅ'), UPPER); // Lt
        assert_eq!(class('a'), LOWER);
        assert_eq!(class('ſ'), LOWER);
        assert_eq!(class('中'), OTHER_LETTER); // Lo
        assert_eq!(class('ʰ'), OTHER_LETTER); // Lm
        assert_eq!(class('\u{0301}'), MARK); // combining acute
        assert_eq!(class('\u{0903}'), MARK); // Mc
        assert_eq!(class('7'), NUMBER);
        assert_eq!(class('Ⅻ'), NUMBER); // Nl
        assert_eq!(class('½'), NUMBER); // No
        assert_eq!(class('٣'), NUMBER); // Arabic-Indic digit
        assert_eq!(class('!'), PUNCT);
        assert_eq!(class('「'), PUNCT);
        assert_eq!(class('$'), SYMBOL);
        assert_eq!(class('😀'), SYMBOL);
        assert_eq!(class('\u{200D}'), 0); // ZWJ is Cf
        assert_eq!(class('\u{FE0F}'), MARK); // variation selector is Mn
        for ws in [
            ' ', '\t', '\n', '\r', '\u{0B}', '\u{0C}', '\u{85}', '\u{A0}', '\u{3000}',
        ] {
            assert_eq!(class(ws) & SPACE, SPACE, "{:?}", ws);
        }
        assert_eq!(class('\u{200B}') & SPACE, 0); // zero-width space is not White_Space
    }
}
