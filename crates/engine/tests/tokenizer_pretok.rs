//! The hand-written pre-tokenizers against the regexes they implement, as Hugging Face
//! `tokenizers` (Oniguruma) splits 400 generated strings (testdata/tokenizer/pretok_cases.json).

mod common;

// Under `tokenizer::` so that `cargo test tokenizer` selects these tests.
mod tokenizer {
    use super::common;

    use verispec::tokenizer::PreConfig;

    #[test]
    fn pre_tokenizers_match_the_regexes() {
        let path = common::workspace().join("testdata/tokenizer/pretok_cases.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = v["cases"].as_array().unwrap();
        assert!(cases.len() >= 400);
        let mut failures = Vec::new();
        for name in ["gpt-2", "llama3", "gpt-4o"] {
            let pre = PreConfig::from_name(name).unwrap().pre;
            for c in cases {
                let text = c["text"].as_str().unwrap();
                let want: Vec<&str> = c[name]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.as_str().unwrap())
                    .collect();
                let got: Vec<&str> = pre.split(text).into_iter().map(|r| &text[r]).collect();
                if got != want {
                    failures.push(format!(
                        "{name} {text:?}\n  ours  {got:?}\n  regex {want:?}"
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "{} mismatches:\n{}",
            failures.len(),
            failures[..failures.len().min(20)].join("\n")
        );
    }
}
