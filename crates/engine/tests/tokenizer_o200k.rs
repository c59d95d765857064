//! Phi-4-mini's vocabulary (built from o200k_base ranks + reconstructed merges) against
//! tiktoken-rs's own o200k_base encoder: same ids for the corpus in testdata/tokenizer/corpus,
//! file by file and line by line, and for generated strings of tricky characters.

mod common;

// Under `tokenizer::` so that `cargo test tokenizer` selects these tests.
mod tokenizer {
    use super::common;

    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::Instant;

    use tiktoken_rs::CoreBPE;
    use verispec::tokenizer::o200k::{PHI4_MINI_N_VOCAB, PHI4_MINI_SPECIALS};
    use verispec::tokenizer::{phi4_mini_spec, PreTokenizer, StreamDecoder, Tokenizer};

    fn ours() -> &'static Tokenizer {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        T.get_or_init(|| Tokenizer::from_spec(phi4_mini_spec().unwrap()).unwrap())
    }

    fn oracle() -> &'static CoreBPE {
        static T: OnceLock<CoreBPE> = OnceLock::new();
        T.get_or_init(|| tiktoken_rs::o200k_base().unwrap())
    }

    fn corpus() -> Vec<(PathBuf, String)> {
        let dir = common::workspace().join("testdata/tokenizer/corpus");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text)
            })
            .collect()
    }

    /// Where `ours` and `want` first differ, with the text around it.
    fn mismatch(text: &str, ours: &[u32], want: &[u32]) -> Option<String> {
        if ours == want {
            return None;
        }
        let n = ours.iter().zip(want).take_while(|(a, b)| a == b).count();
        let tok = self::ours();
        let before = String::from_utf8_lossy(
            &want[n.saturating_sub(5)..n]
                .iter()
                .flat_map(|&t| tok.piece(t, true).to_vec())
                .collect::<Vec<u8>>(),
        )
        .into_owned();
        let show = |ids: &[u32]| -> Vec<(u32, String)> {
            ids[n..ids.len().min(n + 6)]
                .iter()
                .map(|&t| (t, String::from_utf8_lossy(tok.piece(t, true)).into_owned()))
                .collect()
        };
        Some(format!(
        "first difference at token {n} (of {} / {}), after {before:?}:\n  ours:     {:?}\n  tiktoken: {:?}\n  text starts {:?}",
        ours.len(),
        want.len(),
        show(ours),
        show(want),
        text.chars().take(60).collect::<String>(),
    ))
    }

    #[test]
    fn corpus_is_large_and_varied() {
        let files = corpus();
        let total: usize = files.iter().map(|(_, t)| t.len()).sum();
        assert!(files.len() >= 8, "{} files", files.len());
        assert!(total >= 50_000, "corpus has {total} bytes");
        let all: String = files.iter().map(|(_, t)| t.as_str()).collect();
        for needle in [
            "\r\n",
            "\t\t",
            "     ",
            "\u{200d}",
            "🇬🇧",
            "\u{301}",
            "中",
            "한",
            "ſ",
            "99999999999999999999",
        ] {
            assert!(all.contains(needle), "corpus lacks {needle:?}");
        }
    }

    #[test]
    fn corpus_matches_tiktoken_per_file_and_per_line() {
        let tok = ours();
        assert_eq!(tok.pre_tokenizer(), PreTokenizer::Gpt4o);
        let mut failures = Vec::new();
        let mut n_lines = 0;
        for (path, text) in corpus() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let want = oracle().encode_ordinary(&text);
            // Special-token text in the corpus stays text here, as in encode_ordinary.
            let got = tok.encode(&text, false, false);
            if let Some(m) = mismatch(&text, &got, &want) {
                failures.push(format!("{name}: {m}"));
            }
            for (i, line) in text.split_inclusive('\n').enumerate() {
                n_lines += 1;
                let want = oracle().encode_ordinary(line);
                let got = tok.encode_ordinary(line);
                if let Some(m) = mismatch(line, &got, &want) {
                    failures.push(format!("{name} line {}: {m}", i + 1));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures.join("\n")
        );
        assert!(n_lines > 900, "{n_lines} lines");
    }

    /// A small deterministic generator (xorshift), so the strings are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    #[test]
    fn generated_strings_match_tiktoken() {
        // Pieces that exercise every alternative of the o200k pattern and their boundaries.
        let atoms = [
            "a", "Z", "ab", "CD", "Ab", "aB", "é", "É", "e\u{301}", "\u{301}", "\u{20e3}", "ǅ",
            "ʰ", "中", "あ", "ア", "한", "Ω", "ω", "Σ", "ſ", "ß", "İ", "ı", "1", "23", "456", "٣",
            "½", "Ⅻ", " ", "  ", "\t", "\n", "\r", "\r\n", "\u{a0}", "\u{3000}", "\u{85}",
            "\u{2028}", "'", "'s", "'S", "'t", "'re", "'VE", "'m", "'ll", "'LL", "'d", "'x", "’",
            "!", "?", ".", ",", "/", "//", "-", "_", "\"", "(", ")", "<|", "|>", "😀", "👍🏽",
            "\u{200d}", "🇫🇷", "\u{fe0f}", "$", "€", "+", "=", "#", "\u{200b}", "\0", "\u{7f}",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut failures = Vec::new();
        for _ in 0..4000 {
            let n = 1 + (rng.next() % 12) as usize;
            let s: String = (0..n).map(|_| rng.pick(&atoms)).collect();
            let want = oracle().encode_ordinary(&s);
            let got = ours().encode_ordinary(&s);
            if let Some(m) = mismatch(&s, &got, &want) {
                failures.push(format!("{s:?}: {m}"));
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures[..failures.len().min(20)].join("\n")
        );
    }

    #[test]
    fn pieces_are_the_rank_bytes() {
        let tok = ours();
        assert_eq!(tok.n_vocab(), PHI4_MINI_N_VOCAB);
        let ids: Vec<u32> = (0..199_998).collect();
        for (id, want) in ids
            .iter()
            .zip(oracle()._decode_native_and_split(ids.clone()))
        {
            assert_eq!(tok.piece(*id, false), want.as_slice(), "token {id}");
        }
    }

    #[test]
    fn decoding_round_trips_the_corpus() {
        let tok = ours();
        for (path, text) in corpus() {
            let ids = tok.encode(&text, false, false);
            assert_eq!(tok.decode(&ids), text, "{}", path.display());
            let mut d = StreamDecoder::new(false);
            let mut streamed = String::new();
            for &id in &ids {
                let s = d.push(tok, id);
                streamed += &s;
            }
            assert!(d.pending().is_empty());
            assert_eq!(streamed, text, "{}", path.display());
        }
    }

    #[test]
    fn phi4_special_tokens() {
        let tok = ours();
        for &(id, text) in PHI4_MINI_SPECIALS {
            assert_eq!(tok.token_id(text), Some(id));
            assert!(tok.is_control(id));
            assert_eq!(tok.encode(text, true, true), [id], "{text}");
            assert_eq!(tok.piece(id, false), b"");
            assert_eq!(tok.piece(id, true), text.as_bytes());
        }
        assert_eq!(tok.token_text(199_998), Some("<|dummy_0|>"));
        assert_eq!(tok.token_text(200_063), Some("<|dummy_58|>"));
        assert_eq!((tok.bos(), tok.eos()), (Some(199_999), Some(199_999)));
        assert!(!tok.add_bos() && !tok.add_eos());
        assert!(tok.is_eog(199_999) && tok.is_eog(200_020));
        assert_eq!(tok.eot(), Some(200_020)); // <|end|>
        assert!(tok.chat_template().unwrap().contains("<|assistant|>"));

        let prompt = "<|system|>Be brief.<|end|><|user|>Hi there!<|end|><|assistant|>";
        let mut want = vec![200_022];
        want.extend(oracle().encode_ordinary("Be brief."));
        want.extend([200_020, 200_021]);
        want.extend(oracle().encode_ordinary("Hi there!"));
        want.extend([200_020, 200_019]);
        assert_eq!(tok.encode(prompt, true, true), want);
        // tiktoken knows <|endoftext|> and <|endofprompt|> as specials too.
        let text = "a<|endoftext|>b <|endofprompt|>";
        assert_eq!(
            tok.encode(text, true, true),
            oracle().encode_with_special_tokens(text)
        );
        // Without parse_special they are text.
        assert_eq!(
            tok.encode(text, true, false),
            oracle().encode_ordinary(text)
        );
    }

    #[test]
    fn merges_cover_the_multibyte_ranks() {
        let spec = phi4_mini_spec().unwrap();
        let multi = spec.tokens[..199_998]
            .iter()
            .filter(|t| t.chars().count() > 1)
            .count();
        // Every multi-byte rank has a two-part split, so gets exactly one merge.
        assert_eq!(spec.merges.len(), multi);
        assert_eq!(spec.merges[0], "Ġ Ġ");
    }

    /// Encoding speed: `cargo test --release -p verispec-engine --test tokenizer_o200k -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn encode_speed() {
        let tok = ours();
        let text: String = corpus().iter().map(|(_, t)| t.as_str()).collect();
        let mb = text.len() as f64 / 1e6;
        tok.clear_cache();
        let t0 = Instant::now();
        let n = tok.encode(&text, false, false).len();
        let cold = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let reps = 20;
        for _ in 0..reps {
            tok.encode(&text, false, false);
        }
        let warm = t0.elapsed().as_secs_f64() / reps as f64;
        let oracle = oracle(); // built outside the timing
        let t0 = Instant::now();
        oracle.encode_ordinary(&text);
        let tt = t0.elapsed().as_secs_f64();
        let per_100kb = |s: f64| s * 1e3 * 0.1 / mb;
        eprintln!(
        "{:.1} KB -> {n} tokens: cold cache {:.2} ms/100KB, warm {:.2} ms/100KB (tiktoken-rs {:.2} ms/100KB)",
        text.len() as f64 / 1e3,
        per_100kb(cold),
        per_100kb(warm),
        per_100kb(tt)
    );
        if !cfg!(debug_assertions) {
            assert!(
                per_100kb(cold) <= 100.0,
                "cold: {:.1} ms/100KB",
                per_100kb(cold)
            );
        }
    }
}
