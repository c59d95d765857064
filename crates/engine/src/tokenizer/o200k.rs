//! Phi-4-mini's vocabulary, built from tiktoken's o200k_base ranks (embedded in tiktoken-rs).
//!
//! Follows `shared/tools/gen_phi4mini_gguf.py`:
//! - ranks 0..199998: GPT-2 byte-char strings of the rank's bytes, type NORMAL;
//! - merges: for each token of two or more bytes, in rank order, the two parts that byte-level
//!   BPE with only lower-ranked tokens ends with (the merge that made the token); a token that
//!   does not end in exactly two parts gets no merge;
//! - ids 199998..200064: Phi-4-mini's special tokens, the other ids `<|dummy_N|>`, all CONTROL;
//! - pre-tokenizer "gpt-4o", BOS = EOS = `<|endoftext|>`, no BOS/EOS added.

use super::bpe::FxMap;
use super::bytes::encode_bytes;
use super::{TokenType, TokenizerError, TokenizerSpec};

/// Phi-4-mini's vocabulary size (embedding rows).
pub const PHI4_MINI_N_VOCAB: usize = 200_064;

/// Number of o200k_base ranks (ids 0..O200K_N_RANKS).
pub const O200K_N_RANKS: usize = 199_998;

/// Phi-4-mini's special tokens above the o200k_base ranks.
pub const PHI4_MINI_SPECIALS: &[(u32, &str)] = &[
    (199_999, "<|endoftext|>"),
    (200_018, "<|endofprompt|>"),
    (200_019, "<|assistant|>"),
    (200_020, "<|end|>"),
    (200_021, "<|user|>"),
    (200_022, "<|system|>"),
    (200_023, "<|tag|>"),
];

/// `<|endoftext|>`: BOS, EOS (and llama.cpp's UNK and PAD) of Phi-4-mini.
pub const PHI4_MINI_BOS_EOS: u32 = 199_999;

/// The chat template the reference script writes into `tokenizer.chat_template`.
pub const PHI4_MINI_CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";

/// The bytes of every o200k_base rank, in rank order.
pub fn o200k_ranks() -> Result<Vec<Vec<u8>>, TokenizerError> {
    let bpe = tiktoken_rs::o200k_base().map_err(|e| TokenizerError::Tiktoken(e.to_string()))?;
    // The ranks are dense below O200K_N_RANKS; ids above are special tokens.
    let ranks: Vec<Vec<u8>> = bpe
        ._decode_native_and_split((0..O200K_N_RANKS as u32).collect())
        .collect();
    if let Some(r) = ranks.iter().position(|b| b.is_empty()) {
        return Err(TokenizerError::Tiktoken(format!("rank {r} has no bytes")));
    }
    Ok(ranks)
}

/// Merges in rank order ("left right" byte-char strings) and the number of multi-byte tokens
/// for which no two-part split exists.
pub fn merges_from_ranks(ranks: &[Vec<u8>]) -> (Vec<String>, usize) {
    let rank_of: FxMap<&[u8], u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, b)| (b.as_slice(), r as u32))
        .collect();
    let mut merges = Vec::with_capacity(ranks.len());
    let mut no_split = 0;
    for (r, tok) in ranks.iter().enumerate() {
        if tok.len() < 2 {
            continue;
        }
        match split_below(&rank_of, tok, r as u32) {
            Some(mid) => {
                let mut m = encode_bytes(&tok[..mid]);
                m.push(' ');
                m.push_str(&encode_bytes(&tok[mid..]));
                merges.push(m);
            }
            None => no_split += 1,
        }
    }
    (merges, no_split)
}

/// Byte-level BPE of `tok` with only the tokens ranked below `max_rank` (lowest rank first,
/// leftmost on ties, as tiktoken merges). Returns where the two final parts meet, if BPE ends
/// with exactly two parts.
fn split_below(rank_of: &FxMap<&[u8], u32>, tok: &[u8], max_rank: u32) -> Option<usize> {
    // Part boundaries: part i is tok[bounds[i]..bounds[i + 1]].
    let mut bounds: Vec<usize> = (0..=tok.len()).collect();
    let rank_at = |bounds: &[usize], i: usize| -> u32 {
        if i + 2 >= bounds.len() {
            return u32::MAX;
        }
        match rank_of.get(&tok[bounds[i]..bounds[i + 2]]) {
            Some(&r) if r < max_rank => r,
            _ => u32::MAX,
        }
    };
    // pair_rank[i]: rank of merging parts i and i + 1.
    let mut pair_rank: Vec<u32> = (0..tok.len()).map(|i| rank_at(&bounds, i)).collect();
    while bounds.len() > 3 {
        let Some((i, &best)) = pair_rank.iter().enumerate().min_by_key(|&(i, &r)| (r, i)) else {
            break;
        };
        if best == u32::MAX {
            break;
        }
        bounds.remove(i + 1);
        pair_rank.remove(i + 1);
        pair_rank[i] = rank_at(&bounds, i);
        if i > 0 {
            pair_rank[i - 1] = rank_at(&bounds, i - 1);
        }
    }
    (bounds.len() == 3).then(|| bounds[1])
}

/// Phi-4-mini's tokenizer, as the reference script writes it into a GGUF.
pub fn phi4_mini_spec() -> Result<TokenizerSpec, TokenizerError> {
    let ranks = o200k_ranks()?;
    let (merges, _) = merges_from_ranks(&ranks);
    let mut tokens: Vec<String> = ranks.iter().map(|b| encode_bytes(b)).collect();
    let mut token_types = vec![TokenType::Normal as i32; tokens.len()];
    let mut dummy = 0;
    for id in ranks.len()..PHI4_MINI_N_VOCAB {
        match PHI4_MINI_SPECIALS.iter().find(|(i, _)| *i as usize == id) {
            Some((_, text)) => tokens.push(text.to_string()),
            None => {
                tokens.push(format!("<|dummy_{dummy}|>"));
                dummy += 1;
            }
        }
        token_types.push(TokenType::Control as i32);
    }
    Ok(TokenizerSpec {
        model: "gpt2".into(),
        pre: "gpt-4o".into(),
        tokens,
        token_types,
        merges,
        bos: Some(PHI4_MINI_BOS_EOS),
        eos: Some(PHI4_MINI_BOS_EOS),
        eot: None,
        add_bos: Some(false),
        add_eos: Some(false),
        chat_template: Some(PHI4_MINI_CHAT_TEMPLATE.to_string()),
        name: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_lower_ranks() {
        // a=0 b=1 c=2 bc=3 ab=4 abc=5: "abc" is made from a + bc (bc ranks below ab).
        let ranks: Vec<Vec<u8>> = ["a", "b", "c", "bc", "ab", "abc", "ca"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let (merges, no_split) = merges_from_ranks(&ranks);
        assert_eq!(merges, ["b c", "a b", "a bc", "c a"]);
        assert_eq!(no_split, 0);
        // A token whose parts are not tokens has no split.
        let ranks: Vec<Vec<u8>> = ["a", "b", "c", "abc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(merges_from_ranks(&ranks), (vec![], 1));
    }
}
