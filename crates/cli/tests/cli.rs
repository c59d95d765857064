//! The CLI contract: exit codes, one JSON object on stdout, clear errors for bad input.

use std::path::PathBuf;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verispec"));
    c.current_dir(workspace());
    c.env_remove("VERISPEC_MODEL");
    c
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const TINY: &str = "testdata/fixtures/tiny-llama.gguf";

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    let s = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {s}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn inspect_json_has_the_contract_keys() {
    let o = run(&["inspect", TINY, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&o);
    for k in ["arch", "hparams", "tokenizer", "tensors", "totals"] {
        assert!(j.get(k).is_some(), "missing {k}");
    }
    assert_eq!(j["arch"], "llama");
    assert_eq!(j["hparams"]["block_count"], 4);
    for k in ["model", "pre", "n_vocab", "bos", "eos"] {
        assert!(j["tokenizer"].get(k).is_some(), "tokenizer.{k}");
    }
    let t = &j["tensors"][0];
    for k in ["name", "type", "shape", "bytes"] {
        assert!(t.get(k).is_some(), "tensors[].{k}");
    }
    assert_eq!(
        j["totals"]["n_tensors"],
        j["tensors"].as_array().unwrap().len()
    );
}

#[test]
fn tokenize_json() {
    let o = run(&[
        "tokenize",
        "--model",
        TINY,
        "--json",
        "Hello world<|endoftext|>",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j = json(&o);
    let ids = j["ids"].as_array().unwrap();
    assert_eq!(ids.len(), j["pieces"].as_array().unwrap().len());
    assert_eq!(
        ids.last().unwrap(),
        2040,
        "the special token is parsed as one token"
    );
}

#[test]
fn run_json_and_ignore_eos_gives_exactly_n() {
    for extra in [&[][..], &["--speculative"][..]] {
        let mut args = vec![
            "run",
            "--model",
            TINY,
            "--prompt",
            "abc abc abc",
            "-n",
            "20",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        let j = json(&o);
        assert_eq!(j["generated_ids"].as_array().unwrap().len(), 20);
        for k in [
            "n_prompt",
            "n_generated",
            "prefill_tok_s",
            "decode_tok_s",
            "ms_per_token",
        ] {
            assert!(j["stats"].get(k).is_some(), "stats.{k}");
        }
        if !extra.is_empty() {
            for k in [
                "drafted",
                "accepted",
                "acceptance_rate",
                "verify_passes",
                "tokens_per_pass",
            ] {
                assert!(j["stats"].get(k).is_some(), "stats.{k}");
            }
        }
    }
}

#[test]
fn forward_writes_npy() {
    let out = std::env::temp_dir().join(format!("verispec-fwd-{}.npy", std::process::id()));
    let o = run(&[
        "forward",
        "--model",
        TINY,
        "--ids",
        "1,2,3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&out).unwrap();
    let (data, shape) = verispec::npy::decode_f32(&bytes).unwrap();
    assert_eq!(shape, vec![3, 2048]);
    assert!(data.iter().all(|x| x.is_finite()));
    let _ = std::fs::remove_file(out);
}

#[test]
fn bad_input_is_a_clear_error_with_exit_1() {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "forward",
                "--model",
                TINY,
                "--ids",
                "1,999999",
                "--out",
                "/tmp/x.npy",
            ],
            "out of range",
        ),
        (
            vec!["run", "--model", TINY, "--prompt", "", "-n", "4"],
            "empty",
        ),
        (
            vec![
                "run",
                "--model",
                TINY,
                "--prompt",
                "a b c d e f g h i j",
                "--ctx",
                "4",
                "-n",
                "4",
            ],
            "context",
        ),
        (
            vec![
                "run",
                "--model",
                "models/does-not-exist.gguf",
                "--prompt",
                "hi",
            ],
            "does not exist",
        ),
        (vec!["inspect", "Cargo.toml"], "not a GGUF file"),
    ];
    for (args, want) in cases {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?} panicked: {e}");
    }
}

#[test]
fn missing_default_model_names_the_fetch_command() {
    let dir = std::env::temp_dir().join(format!("verispec-nomodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let o = bin()
        .current_dir(&dir)
        .args(["run", "--prompt", "hi"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("scripts/fetch-models.sh"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn run_samples_with_a_seed_and_speculation_keeps_the_tokens() {
    let ids = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--model",
            TINY,
            "--prompt",
            "abc abc abc",
            "-n",
            "40",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        json(&o)
    };
    let greedy = ids(&[]);
    assert!(greedy.get("seed").is_none(), "greedy runs print no seed");
    let a = ids(&["--temp", "0.8", "--seed", "5"]);
    assert_eq!(a["seed"], 5);
    assert_ne!(a["generated_ids"], greedy["generated_ids"]);
    for extra in [
        &["--temp", "0.8", "--seed", "5"][..],
        &["--temperature", "0.8", "--seed", "5", "--speculative"][..],
        &[
            "--temp",
            "0.8",
            "--seed",
            "5",
            "--speculative",
            "--verify-width",
            "8",
        ][..],
    ] {
        assert_eq!(ids(extra)["generated_ids"], a["generated_ids"], "{extra:?}");
    }
    assert_ne!(
        ids(&["--temp", "0.8", "--seed", "6"])["generated_ids"],
        a["generated_ids"]
    );
    // Without --seed a fresh one is drawn and printed; giving it back reproduces the run.
    let fresh = ids(&["--temp", "0.8", "--top-k", "50"]);
    let seed = fresh["seed"].as_u64().expect("a printed seed").to_string();
    let again = ids(&["--temp", "0.8", "--top-k", "50", "--seed", &seed]);
    assert_eq!(again["generated_ids"], fresh["generated_ids"]);
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["run"],
        vec![
            "run",
            "--model",
            TINY,
            "--prompt",
            "x",
            "--speculative",
            "--verify-width",
            "9",
        ],
        vec!["bogus-command"],
        vec!["run", "--model", TINY, "--prompt", "x", "--device", "tpu"],
        vec!["run", "--model", TINY, "--prompt", "x", "--temp", "-1"],
        vec!["run", "--model", TINY, "--prompt", "x", "--top-p", "0"],
        vec!["run", "--model", TINY, "--prompt", "x", "--min-p", "1.5"],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn synth_and_export_refuse_to_overwrite_without_force() {
    let dir = std::env::temp_dir().join(format!("verispec-ow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.gguf");
    std::fs::write(&f, b"precious").unwrap();
    let o = run(&[
        "synth",
        "--preset",
        "tiny-phi3",
        "--type",
        "q8_0",
        "-o",
        f.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--force"));
    assert_eq!(std::fs::read(&f).unwrap(), b"precious");
    let o = run(&[
        "synth",
        "--preset",
        "tiny-phi3",
        "--type",
        "q8_0",
        "-o",
        f.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m = dir.join("m.json");
    let spec = format!("0:4:{}", dir.join("s.gguf").display());
    let o = run(&[
        "export",
        "--model",
        f.to_str().unwrap(),
        "--layer-spec",
        &spec,
        "--out",
        m.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&[
        "export",
        "--model",
        f.to_str().unwrap(),
        "--layer-spec",
        &spec,
        "--out",
        m.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already exists"));
    let o = run(&["validate", m.to_str().unwrap(), "--strict", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json(&o)["pass"], true);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn chat_keeps_the_cache_between_turns() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("verispec-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("t.gguf");
    let o = run(&[
        "synth",
        "--preset",
        "tiny-phi3",
        "--type",
        "q8_0",
        "-o",
        f.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut child = bin()
        .args(["chat", "--model", f.to_str().unwrap(), "-n", "8"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hello there\nAnd again\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    let reused: Vec<usize> = e
        .lines()
        .filter_map(|l| l.split(", ").nth(2))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(reused.len(), 2, "{e}");
    assert_eq!(reused[0], 0);
    assert!(
        reused[1] > 5,
        "the second turn should reuse the first turn's cache: {e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Every kernel path the machine has (`VERISPEC_KERNEL`, which also picks the weight layout:
/// row tiles for AVX-512 VNNI and AVX2, rows for scalar) gives the same logits, bit for bit,
/// on the tiny fixture and on SmolLM2 when it is fetched.
#[test]
fn every_kernel_path_gives_the_same_logits() {
    let smol = workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut models = vec![TINY.to_string()];
    if smol.exists() {
        models.push(smol.to_string_lossy().into_owned());
    } else if std::env::var("VERISPEC_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} is missing: run scripts/fetch-models.sh", smol.display());
    }
    // K-quant mixes (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), Q5_0 / Q5_1 and IQ4_XS / IQ4_NL on a
    // synthesized tiny phi3 (rows of one super-block).
    let dir = std::env::temp_dir().join(format!("verispec-paths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ty in [
        "q4_k_m", "q5_k_m", "q5_0", "q5_1", "q3_k_m", "q2_k", "iq4_xs", "iq4_nl",
    ] {
        let path = dir.join(format!("tiny-{ty}.gguf"));
        let o = run(&[
            "synth",
            "--preset",
            "tiny-phi3",
            "--type",
            ty,
            "-o",
            path.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "synth {ty}: {}", stderr(&o));
        models.push(path.to_string_lossy().into_owned());
    }
    let ids = "1,504,2000,17,42,977,12,640,88,1500,7,301,29,1024,5,61";
    for model in &models {
        let mut first: Option<(String, Vec<u8>)> = None;
        for kernel in ["", "avx512vnni", "avx2", "scalar"] {
            let out = std::env::temp_dir().join(format!(
                "verispec-paths-{}-{kernel}.npy",
                std::process::id()
            ));
            let mut c = bin();
            if kernel.is_empty() {
                c.env_remove("VERISPEC_KERNEL");
            } else {
                c.env("VERISPEC_KERNEL", kernel);
            }
            let o = c
                .args(["forward", "--model", model, "--threads", "2", "--ids", ids])
                .args(["--out", out.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(o.status.success(), "{kernel}: {}", stderr(&o));
            let bytes = std::fs::read(&out).unwrap();
            let _ = std::fs::remove_file(&out);
            let (data, shape) = verispec::npy::decode_f32(&bytes).unwrap();
            assert_eq!(shape[0], 16);
            assert!(data.iter().all(|x| x.is_finite()), "{model} {kernel}");
            // A path this machine lacks falls back to the detected one: still a valid check.
            match &first {
                None => first = Some((kernel.to_string(), bytes)),
                Some((k0, b0)) => assert!(
                    *b0 == bytes,
                    "{model}: logits with VERISPEC_KERNEL={kernel} differ from {k0:?}"
                ),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
