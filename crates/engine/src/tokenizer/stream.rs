//! Incremental detokenization that only ever emits whole UTF-8 characters.

use super::Tokenizer;

/// Turns token ids into text one at a time. A character split across tokens is held back until
/// its last byte arrives; bytes that can never form a character become U+FFFD, so the
/// concatenated output equals the lossy decoding of all the bytes at once.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// Render CONTROL/UNKNOWN tokens as their text (llama.cpp's `special` flag).
    special: bool,
    /// The start of a character whose remaining bytes have not arrived yet (at most 3 bytes).
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// `special`: whether control tokens such as `<|im_end|>` produce their text.
    pub fn new(special: bool) -> StreamDecoder {
        StreamDecoder {
            special,
            pending: Vec::new(),
        }
    }

    /// Add one token; returns the text that is complete now (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.push_bytes(tok.piece(id, self.special))
    }

    /// Add raw bytes; returns the text that is complete now (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `valid` bytes are UTF-8 by the contract of `valid_up_to`.
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + n..];
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let len = self.pending.len();
        self.pending.drain(..len - keep);
        out
    }

    /// Bytes held back, waiting for the rest of their character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// End of stream: whatever is held back, as U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_split_chars() {
        let mut d = StreamDecoder::new(false);
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(d.push_bytes(b"a"), "a");
        assert_eq!(d.push_bytes(&euro[..1]), "");
        assert_eq!(d.pending(), &euro[..1]);
        assert_eq!(d.push_bytes(&euro[1..2]), "");
        assert_eq!(d.push_bytes(&[euro[2], b'b']), "€b");
        assert!(d.pending().is_empty());
        let crab = "🦀".as_bytes();
        assert_eq!(d.push_bytes(&crab[..3]), "");
        assert_eq!(d.push_bytes(&crab[3..]), "🦀");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut d = StreamDecoder::new(false);
        assert_eq!(d.push_bytes(&[0xff, b'x']), "\u{fffd}x");
        // A lead byte followed by a non-continuation byte.
        assert_eq!(d.push_bytes(&[0xe2]), "");
        assert_eq!(d.push_bytes(b"y"), "\u{fffd}y");
        assert_eq!(d.push_bytes(&[0xf0, 0x9f]), "");
        assert_eq!(d.finish(), "\u{fffd}");
        assert!(d.pending().is_empty());
    }

    #[test]
    fn matches_lossy_decoding_for_every_split() {
        let mut bytes = "añ€🦀 z".as_bytes().to_vec();
        bytes.extend_from_slice(&[0xe2, 0x82, b'q', 0xc3]);
        let want = String::from_utf8_lossy(&bytes).into_owned();
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut d = StreamDecoder::new(false);
                let mut got = d.push_bytes(&bytes[..a]);
                got += &d.push_bytes(&bytes[a..b]);
                got += &d.push_bytes(&bytes[b..]);
                got += &d.finish();
                assert_eq!(got, want, "split at {a}, {b}");
            }
        }
    }
}
