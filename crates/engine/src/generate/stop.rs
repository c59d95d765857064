//! Turning generated tokens into text, with end-of-generation tokens and stop strings.
//!
//! Contract (README "CLI contract"): without --ignore-eos, generation stops after the first
//! end-of-generation token, which is kept in the ids but left out of the text. A stop string
//! ends generation too; the text is cut before it. Streamed text never shows a partial UTF-8
//! sequence, nor a tail that might still become a stop string.

use std::collections::HashSet;

use super::Flow;

pub struct TextStream {
    eog: HashSet<u32>,
    ignore_eos: bool,
    stops: Vec<String>,
    /// Bytes not yet forming whole UTF-8 characters.
    pending: Vec<u8>,
    text: String,
    /// Bytes of `text` already handed out by `push`.
    emitted: usize,
    stopped: bool,
}

impl TextStream {
    pub fn new(eog: HashSet<u32>, ignore_eos: bool, stops: Vec<String>) -> TextStream {
        TextStream {
            eog,
            ignore_eos,
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: Vec::new(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Add one token with its text bytes (empty for control tokens). Returns the text that can
    /// be shown now and whether to go on.
    pub fn push(&mut self, id: u32, piece: &[u8]) -> (String, Flow) {
        if self.stopped {
            return (String::new(), Flow::Stop);
        }
        if self.eog.contains(&id) {
            if !self.ignore_eos {
                self.stopped = true;
                return (self.flush_all(), Flow::Stop);
            }
            // With --ignore-eos the token is kept and fed back; it adds no text.
            return (String::new(), Flow::Continue);
        }
        self.pending.extend_from_slice(piece);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Invalid bytes (not merely incomplete): replace them, as a lossy decode would.
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                self.text.push_str(&s);
                return self.after_append();
            }
            Err(e) => e.valid_up_to(),
        };
        let whole: Vec<u8> = self.pending.drain(..valid).collect();
        self.text
            .push_str(std::str::from_utf8(&whole).unwrap_or_default());
        self.after_append()
    }

    fn after_append(&mut self) -> (String, Flow) {
        // Search from a little before the already-emitted part: a stop may straddle the edge.
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = floor_char(&self.text, self.emitted.saturating_sub(longest));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            return (self.flush_all(), Flow::Stop);
        }
        // Hold back a tail that is a prefix of some stop string.
        let mut safe = self.text.len();
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if self.text.len() >= k
                    && self.text.is_char_boundary(self.text.len() - k)
                    && s.is_char_boundary(k)
                    && self.text.ends_with(&s[..k])
                {
                    safe = safe.min(self.text.len() - k);
                    break;
                }
            }
        }
        let safe = safe.max(self.emitted);
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, Flow::Continue)
    }

    fn flush_all(&mut self) -> String {
        let out = self.text[self.emitted.min(self.text.len())..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// Whatever is left when generation ends (incomplete UTF-8 becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        if !self.stopped && !self.pending.is_empty() {
            let s = String::from_utf8_lossy(&self.pending).into_owned();
            self.pending.clear();
            self.text.push_str(&s);
        }
        self.flush_all()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str]) -> TextStream {
        TextStream::new(
            [99].into_iter().collect(),
            false,
            stops.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn eog_stops_and_is_not_text() {
        let mut s = stream(&[]);
        assert_eq!(s.push(1, b"hi").0, "hi");
        let (out, flow) = s.push(99, b"<eos>");
        assert_eq!((out.as_str(), flow), ("", Flow::Stop));
        assert_eq!(s.text(), "hi");
    }

    #[test]
    fn ignore_eos_continues() {
        let mut s = TextStream::new([99].into_iter().collect(), true, vec![]);
        assert_eq!(s.push(99, b"").1, Flow::Continue);
        assert_eq!(s.push(1, b"x").0, "x");
    }

    #[test]
    fn split_utf8_is_held_back() {
        let mut s = stream(&[]);
        let e = "é".as_bytes();
        assert_eq!(s.push(1, &e[..1]).0, "");
        assert_eq!(s.push(2, &e[1..]).0, "é");
    }

    #[test]
    fn stop_string_across_tokens_cuts_text() {
        let mut s = stream(&["END"]);
        assert_eq!(s.push(1, b"abc E").0, "abc ");
        assert_eq!(s.push(2, b"N").0, "");
        let (out, flow) = s.push(3, b"D tail");
        assert_eq!(flow, Flow::Stop);
        assert_eq!(out, "");
        assert_eq!(s.text(), "abc ");
    }

    #[test]
    fn held_back_prefix_is_released_when_it_diverges() {
        let mut s = stream(&["END"]);
        assert_eq!(s.push(1, b"E").0, "");
        assert_eq!(s.push(2, b"X").0, "EX");
    }
}
