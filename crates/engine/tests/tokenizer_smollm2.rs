//! SmolLM2's tokenizer (read from the real GGUF) against llama.cpp's prompt tokens in the
//! goldens (testdata/golden), plus decoding round trips.

mod common;

// Under `tokenizer::` so that `cargo test tokenizer` selects these tests.
mod tokenizer {
    use super::common;

    use verispec::gguf::GgufFile;
    use verispec::tokenizer::{PreTokenizer, StreamDecoder, Tokenizer};

    fn smollm2_tokenizer() -> Option<Tokenizer> {
        let path = common::smollm2()?;
        let f = GgufFile::open(&path).unwrap();
        Some(Tokenizer::from_gguf(&f).unwrap())
    }

    #[test]
    fn smollm2_prompts_match_llama_cpp() {
        let Some(tok) = smollm2_tokenizer() else {
            return;
        };
        assert_eq!(tok.pre_tokenizer(), PreTokenizer::Smollm);
        assert_eq!(tok.n_vocab(), 49152);
        assert!(!tok.add_bos());
        let records = common::golden_records();
        assert!(records.len() >= 11);
        for rec in &records {
            let ids = tok.encode(&rec.prompt, true, true);
            if ids != rec.prompt_ids {
                let n = ids
                    .iter()
                    .zip(&rec.prompt_ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                panic!(
                    "prompt {:?}: first difference at token {n}: ours {:?}, llama.cpp {:?}",
                    rec.prompt,
                    &ids[n..ids.len().min(n + 8)],
                    &rec.prompt_ids[n..rec.prompt_ids.len().min(n + 8)]
                );
            }
            // With specials rendered, decoding gives the prompt back.
            assert_eq!(tok.decode_with(&ids, true), rec.prompt);
        }
    }

    #[test]
    fn smollm2_generated_pieces_match_llama_cpp() {
        let Some(tok) = smollm2_tokenizer() else {
            return;
        };
        let text = std::fs::read_to_string(
            common::workspace().join("testdata/golden/smollm2_greedy.jsonl"),
        )
        .unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids: Vec<u32> = v["generated_token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let pieces: Vec<&str> = v["generated_pieces"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap())
                .collect();
            for (&id, want) in ids.iter().zip(&pieces) {
                assert_eq!(
                    String::from_utf8_lossy(tok.piece(id, true)),
                    *want,
                    "token {id}"
                );
            }
            // Streaming gives the same text as decoding at once.
            let mut d = StreamDecoder::new(true);
            let mut streamed: String = ids.iter().map(|&id| d.push(&tok, id)).collect();
            streamed += &d.finish();
            assert_eq!(streamed, tok.decode_with(&ids, true));
            assert_eq!(streamed, v["generated_text"].as_str().unwrap());
        }
    }

    #[test]
    fn smollm2_special_tokens() {
        let Some(tok) = smollm2_tokenizer() else {
            return;
        };
        let im_end = tok.token_id("<|im_end|>").unwrap();
        assert_eq!(im_end, 2);
        assert!(tok.is_eog(im_end));
        assert!(tok.is_eog(0)); // <|endoftext|>
        assert_eq!(tok.eot(), Some(im_end));
        assert_eq!(tok.encode("<|im_end|>", false, true), [im_end]);
        // Without parse_special the control token is ordinary text.
        let plain = tok.encode("<|im_end|>", false, false);
        assert!(plain.len() > 1 && !plain.contains(&im_end));
        assert_eq!(tok.decode(&plain), "<|im_end|>");
        assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    }

    /// Tricky strings with reference ids from Hugging Face `tokenizers`, set up like SmolLM2's
    /// tokenizer.json over the same vocabulary (see testdata/tokenizer/README.md).
    #[test]
    fn smollm2_matches_hf_tokenizers_on_tricky_text() {
        let Some(tok) = smollm2_tokenizer() else {
            return;
        };
        let path = common::workspace().join("testdata/tokenizer/smollm2_hf_cases.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 20);
        let mut failures = Vec::new();
        for c in cases {
            let text = c["text"].as_str().unwrap();
            let want: Vec<u32> = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, true, true);
            if got != want {
                failures.push(format!("{text:?}\n  ours {got:?}\n  hf   {want:?}"));
            }
            assert_eq!(tok.decode_with(&got, true), text);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
