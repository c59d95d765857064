//! Drafters propose tokens; the verifier decides. `NgramDrafter` is prompt lookup: find the most
//! recent earlier occurrence of the longest suffix (n from max down to min) of prompt +
//! generated tokens, and propose the tokens that followed it.
//!
//! The index maps each n-gram to the position right after its latest occurrence, and is updated
//! incrementally as tokens arrive, so proposing is O(max - min) lookups, never a scan.

use std::collections::HashMap;

pub trait Drafter: Send {
    /// Append tokens to the history the drafter may copy from.
    fn observe(&mut self, tokens: &[u32]);
    /// Up to `max` draft tokens to follow the history.
    fn propose(&self, max: usize) -> Vec<u32>;
    /// Forget everything.
    fn reset(&mut self);
}

pub struct NgramDrafter {
    n_min: usize,
    n_max: usize,
    history: Vec<u32>,
    /// (n, hash of the n-gram) -> position just after its latest occurrence whose continuation
    /// is known. The n-gram ending at the last history token is not indexed yet (it is the
    /// query), so a lookup always finds an earlier occurrence.
    index: HashMap<(u8, u64), usize>,
}

fn hash_ngram(tokens: &[u32]) -> u64 {
    // FNV-1a over the ids; collisions are caught by comparing the tokens on lookup.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in tokens {
        for b in t.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl NgramDrafter {
    /// n-grams of length n_min..=n_max (1 <= n_min <= n_max <= 255).
    pub fn new(n_min: usize, n_max: usize) -> Result<NgramDrafter, String> {
        if n_min == 0 || n_min > n_max || n_max > 255 {
            return Err(format!(
                "n-gram range {n_min}..={n_max} is invalid: need 1 <= min <= max <= 255"
            ));
        }
        Ok(NgramDrafter {
            n_min,
            n_max,
            history: Vec::new(),
            index: HashMap::new(),
        })
    }

    /// Index the n-grams that end at position `end - 1`, continued by the token at `end`.
    fn index_before(&mut self, end: usize) {
        for n in self.n_min..=self.n_max.min(end) {
            let gram = &self.history[end - n..end];
            self.index.insert((n as u8, hash_ngram(gram)), end);
        }
    }
}

impl Drafter for NgramDrafter {
    fn observe(&mut self, tokens: &[u32]) {
        for &t in tokens {
            self.history.push(t);
            let end = self.history.len() - 1;
            if end > 0 {
                self.index_before(end);
            }
        }
    }

    fn propose(&self, max: usize) -> Vec<u32> {
        let len = self.history.len();
        if max == 0 {
            return Vec::new();
        }
        for n in (self.n_min..=self.n_max.min(len)).rev() {
            let suffix = &self.history[len - n..];
            if let Some(&next) = self.index.get(&(n as u8, hash_ngram(suffix))) {
                if next >= n && &self.history[next - n..next] == suffix {
                    let end = (next + max).min(len);
                    return self.history[next..end].to_vec();
                }
            }
        }
        Vec::new()
    }

    fn reset(&mut self) {
        self.history.clear();
        self.index.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drafter(tokens: &[u32], min: usize, max: usize) -> NgramDrafter {
        let mut d = NgramDrafter::new(min, max).unwrap();
        d.observe(tokens);
        d
    }

    #[test]
    fn no_match_proposes_nothing() {
        assert!(drafter(&[1, 2, 3, 4], 1, 4).propose(3).is_empty());
        assert!(drafter(&[], 1, 4).propose(3).is_empty());
        assert!(drafter(&[7], 1, 4).propose(3).is_empty());
    }

    #[test]
    fn longest_suffix_wins_over_more_recent_shorter_match() {
        // suffix [5, 6]: the 2-gram occurred at 0..2 (followed by 7); the 1-gram [6] occurred
        // more recently at 4 (followed by 9). The longer match must win.
        let d = drafter(&[5, 6, 7, 8, 6, 9, 5, 6], 1, 3);
        assert_eq!(d.propose(2), vec![7, 8]);
    }

    #[test]
    fn latest_occurrence_is_used() {
        let d = drafter(&[1, 2, 10, 1, 2, 20, 1, 2], 2, 2);
        assert_eq!(d.propose(1), vec![20]);
    }

    #[test]
    fn match_at_the_very_end_is_truncated_to_history() {
        // [3, 4] last occurred at 2..4, followed by just [3, 4] (the current suffix itself).
        let d = drafter(&[9, 9, 3, 4, 3, 4], 2, 2);
        assert_eq!(d.propose(5), vec![3, 4]);
    }

    #[test]
    fn overlapping_matches_repeat_a_period() {
        // A run of one token: the suffix [1, 1, 1] matches one position earlier.
        let d = drafter(&[1, 1, 1, 1], 1, 3);
        assert_eq!(d.propose(3), vec![1]);
        // Period 2 with overlap.
        let d = drafter(&[1, 2, 1, 2, 1], 1, 3);
        assert_eq!(d.propose(4), vec![2, 1]);
    }

    #[test]
    fn incremental_observe_equals_batch() {
        let toks = [4, 8, 15, 16, 23, 42, 4, 8, 15, 99, 4, 8];
        let batch = drafter(&toks, 1, 8);
        let mut inc = NgramDrafter::new(1, 8).unwrap();
        for t in toks {
            inc.observe(&[t]);
        }
        assert_eq!(batch.propose(3), inc.propose(3));
        assert_eq!(batch.propose(3), vec![15, 99, 4]);
    }

    #[test]
    fn bad_range_is_an_error() {
        assert!(NgramDrafter::new(0, 3).is_err());
        assert!(NgramDrafter::new(4, 3).is_err());
    }
}
