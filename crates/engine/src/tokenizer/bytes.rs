//! GPT-2's reversible byte ↔ printable-char mapping used by byte-level BPE vocabularies.
//!
//! Bytes that are printable Latin-1 (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) map to the char with the
//! same code point; the other 68 bytes map, in increasing byte order, to U+0100, U+0101, ...
//! So the space 0x20 becomes `Ġ` (U+0120) and the newline 0x0A becomes `Ċ` (U+010A).

const fn printable(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if printable(b as u8) {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        // Every value is below U+0200, so the conversion cannot fail.
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

static BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// The non-printable bytes in increasing order: U+0100 + i stands for `NON_PRINTABLE[i]`.
const fn build_non_printable() -> [u8; 68] {
    let mut table = [0u8; 68];
    let mut n = 0usize;
    let mut b = 0usize;
    while b < 256 {
        if !printable(b as u8) {
            table[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    table
}

static NON_PRINTABLE: [u8; 68] = build_non_printable();

/// The char that stands for byte `b` in token strings.
#[inline]
pub fn byte_to_char(b: u8) -> char {
    BYTE_TO_CHAR[b as usize]
}

/// The byte that `c` stands for, if `c` is one of the 256 mapped chars.
#[inline]
pub fn char_to_byte(c: char) -> Option<u8> {
    let cp = c as u32;
    if cp < 256 {
        let b = cp as u8;
        return printable(b).then_some(b);
    }
    NON_PRINTABLE.get((cp - 256) as usize).copied()
}

/// Token string of a byte sequence: one mapped char per byte.
pub fn encode_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    s.extend(bytes.iter().map(|&b| byte_to_char(b)));
    s
}

/// Bytes of a token string, or the first char that is not a mapped byte.
pub fn decode_str(s: &str) -> Result<Vec<u8>, char> {
    s.chars().map(|c| char_to_byte(c).ok_or(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_chars() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'\t'), 'ĉ');
        assert_eq!(byte_to_char(0), 'Ā');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), 'Ń'); // soft hyphen is not printable
        assert_eq!(byte_to_char(0xFF), 'ÿ');
        assert_eq!(encode_bytes("é".as_bytes()), "Ã©");
    }

    #[test]
    fn round_trip_all_bytes() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = byte_to_char(b);
            assert!(seen.insert(c), "{b} maps to a char already used");
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(char_to_byte('Ą' /* U+0104 */), Some(4));
        assert_eq!(char_to_byte(' '), None);
        assert_eq!(char_to_byte('\u{0144}'), None); // one past the last mapped char
        assert_eq!(char_to_byte('中'), None);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode_str(&encode_bytes(&all)), Ok(all));
        assert_eq!(decode_str("aĠ中"), Err('中'));
    }
}
