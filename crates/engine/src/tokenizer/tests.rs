//! Tokenizer unit tests on a small hand-made vocabulary.

use super::*;

const MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ã ©",
];
/// (text, type) of the tokens after the 256 byte tokens and the merge results.
const SPECIALS: &[(&str, TokenType)] = &[
    ("<|a|>", TokenType::Control),
    ("<|a|>b", TokenType::Control),
    ("<|end|>", TokenType::Control),
    ("[[u]]", TokenType::UserDefined),
    ("<unk>", TokenType::Unknown),
    ("<|endoftext|>", TokenType::Control),
];

fn spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = (0..=255u8)
        .map(|b| bytes::byte_to_char(b).to_string())
        .collect();
    let mut types = vec![TokenType::Normal as i32; 256];
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(TokenType::Normal as i32);
    }
    for (t, ty) in SPECIALS {
        tokens.push(t.to_string());
        types.push(*ty as i32);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        pre: "gpt-2".into(),
        tokens,
        token_types: types,
        merges: MERGES.iter().map(|s| s.to_string()).collect(),
        bos: Some(id_of("<|a|>")),
        eos: Some(id_of("<|end|>")),
        eot: None,
        add_bos: Some(true),
        add_eos: Some(true),
        chat_template: None,
        name: None,
    }
}

fn id_of(text: &str) -> u32 {
    if let Some(i) = MERGES.iter().position(|m| m.replace(' ', "") == text) {
        return 256 + i as u32;
    }
    let i = SPECIALS.iter().position(|(t, _)| *t == text).unwrap();
    (256 + MERGES.len() + i) as u32
}

fn tok() -> Tokenizer {
    Tokenizer::from_spec(spec()).unwrap()
}

fn b(c: char) -> u32 {
    c as u32 // byte tokens of ASCII chars have the byte as id
}

#[test]
fn bpe_and_byte_fallback() {
    let t = tok();
    assert_eq!(
        t.encode("hello world", false, false),
        [id_of("hello"), id_of("Ġworld")]
    );
    assert_eq!(t.encode("hellx", false, false), [id_of("hell"), b('x')]);
    // é = C3 A9 = "Ã©" merges into one token; ü = C3 BC stays two byte tokens.
    assert_eq!(t.encode("é", false, false), [id_of("Ã©")]);
    assert_eq!(t.encode("ü", false, false), [0xC3, 0xBC]);
    assert_eq!(t.encode("", false, false), Vec::<u32>::new());
    assert_eq!(
        t.encode("", true, false),
        [id_of("<|a|>"), id_of("<|end|>")]
    );
}

#[test]
fn special_tokens_longest_first() {
    let t = tok();
    let (a, ab, end) = (id_of("<|a|>"), id_of("<|a|>b"), id_of("<|end|>"));
    assert_eq!(t.encode("<|a|>b<|a|>", false, true), [ab, a]);
    assert_eq!(
        t.encode("x<|end|> <|end|>", false, true),
        [b('x'), end, b(' '), end]
    );
    assert_eq!(t.encode("<unk>", false, true), [id_of("<unk>")]);
    // Without parse_special, control and unknown tokens are plain text ...
    let plain = t.encode("<|end|>", false, false);
    assert_eq!(plain.len(), 7);
    assert!(!plain.contains(&end));
    assert_eq!(t.decode(&plain), "<|end|>");
    // ... but user-defined tokens are always parsed.
    assert_eq!(
        t.encode("h[[u]]h", false, false),
        [b('h'), id_of("[[u]]"), b('h')]
    );
    // BOS/EOS only with add_special.
    assert_eq!(t.encode("he", true, true), [a, id_of("he"), end]);
}

#[test]
fn phi3_names_get_rstrip() {
    let mut s = spec();
    s.name = Some("Phi3 mini".into());
    let t = Tokenizer::from_spec(s).unwrap();
    let end = id_of("<|end|>");
    assert_ne!(t.token_attrs(end) & attr::RSTRIP, 0);
    assert_eq!(t.token_attrs(id_of("<|endoftext|>")) & attr::RSTRIP, 0);
    assert_eq!(t.encode("<|end|> \n x", false, true), [end, b('x')]);
    assert_eq!(t.encode(" <|end|>", false, true), [b(' '), end]);
    // Without the name there is no stripping.
    assert_eq!(
        tok().encode("<|end|> x", false, true),
        [end, b(' '), b('x')]
    );
}

#[test]
fn eog_and_eot_by_text() {
    let t = tok();
    let (end, eot_text) = (id_of("<|end|>"), id_of("<|endoftext|>"));
    assert_eq!(t.eot(), Some(end));
    assert_eq!(t.eog_ids(), [end, eot_text]);
    assert!(t.is_eog(eot_text) && !t.is_eog(b('a')));
}

#[test]
fn pieces_and_decode() {
    let t = tok();
    let end = id_of("<|end|>");
    assert_eq!(t.token_piece(id_of("Ġworld")), b" world");
    assert_eq!(t.token_piece(end), b"");
    assert_eq!(t.piece(end, true), b"<|end|>");
    assert_eq!(t.token_piece(id_of("[[u]]")), b"[[u]]");
    assert_eq!(t.token_piece(0xC3), [0xC3]);
    assert_eq!(t.token_piece(999_999), b"");
    let ids = t.encode("hello<|end|> wé", false, true);
    assert_eq!(t.decode(&ids), "hello wé");
    assert_eq!(t.decode_with(&ids, true), "hello<|end|> wé");
    assert_eq!(t.decode(&[0xC3]), "\u{fffd}");
}

#[test]
fn stream_decoder_with_split_char() {
    let t = tok();
    // ü is two byte tokens; the first alone is not text yet.
    let ids = t.encode("aü!", false, false);
    assert_eq!(ids, [b('a'), 0xC3, 0xBC, b('!')]);
    let mut d = StreamDecoder::new(false);
    let out: Vec<String> = ids.iter().map(|&id| d.push(&t, id)).collect();
    assert_eq!(out, ["a", "", "ü", "!"]);
    let mut d = StreamDecoder::new(true);
    assert_eq!(d.push(&t, id_of("<|end|>")), "<|end|>");
    assert_eq!(StreamDecoder::new(false).push(&t, id_of("<|end|>")), "");
}

#[test]
fn odd_inputs_do_not_panic() {
    let t = tok();
    for s in [
        "\0",
        "\u{10FFFF}",
        "\u{FFFD}\u{200D}",
        "<|a|",
        "<|a|><|a|><|a|>",
        "\r\r\n\n\t \u{a0}",
    ] {
        let ids = t.encode(s, true, true);
        let _ = t.decode_with(&ids, true);
    }
}

#[test]
fn spec_errors_name_the_problem() {
    let err = |f: &dyn Fn(&mut TokenizerSpec)| {
        let mut s = spec();
        f(&mut s);
        Tokenizer::from_spec(s).unwrap_err()
    };
    let e = err(&|s| s.pre = "qwen2".into());
    assert!(matches!(e, TokenizerError::UnsupportedPre { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("qwen2") && msg.contains("smollm") && msg.contains("gpt-4o"),
        "{msg}"
    );
    assert!(matches!(
        err(&|s| s.model = "llama".into()),
        TokenizerError::UnsupportedModel(_)
    ));
    let e = err(&|s| s.merges.push("h zz".into()));
    assert!(e.to_string().contains("\"zz\" is not a token"), "{e}");
    let e = err(&|s| s.merges.push("e h".into()));
    assert!(e.to_string().contains("\"eh\" is not a token"), "{e}");
    assert!(matches!(
        err(&|s| s.merges.push("he".into())),
        TokenizerError::BadMerge { index: 10, .. }
    ));
    let e = err(&|s| s.tokens[5] = "a".into());
    assert!(
        matches!(
            e,
            TokenizerError::DuplicateToken {
                first: 5,
                second: 97,
                ..
            }
        ),
        "{e}"
    );
    let e = err(&|s| s.bos = Some(1 << 20));
    assert!(
        e.to_string()
            .contains("bos token id 1048576 is out of range"),
        "{e}"
    );
    assert!(matches!(
        err(&|s| s.token_types.truncate(3)),
        TokenizerError::TokenTypesTooShort { .. }
    ));
    assert!(matches!(
        err(&|s| s.tokens.clear()),
        TokenizerError::EmptyVocab
    ));
}

#[test]
fn defaults_follow_llama_cpp() {
    let mut s = spec();
    s.add_bos = None;
    s.bos = None;
    let t = Tokenizer::from_spec(s.clone()).unwrap();
    assert!(!t.add_bos());
    assert_eq!(t.bos(), Some(11)); // llama.cpp's gpt2 default
    s.pre = "llama-bpe".into();
    assert!(Tokenizer::from_spec(s).unwrap().add_bos());
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
    check::<StreamDecoder>();
}

#[test]
fn cache_gives_same_ids() {
    let t = tok();
    let text = "hello world hello world hellx hello";
    let first = t.encode(text, false, false);
    assert_eq!(t.encode(text, false, false), first);
    assert_eq!(t.encode_ordinary(text), first);
}
