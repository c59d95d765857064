//! Helpers shared by integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A tiny fixture model (testdata/fixtures/{case}.gguf), 2 threads, a context of 256.
pub fn fixture(case: &str, path: verispec::backend::ComputePath) -> verispec::engine::Engine {
    let p = workspace().join(format!("testdata/fixtures/{case}.gguf"));
    let opts = verispec::engine::LoadOptions {
        path,
        threads: 2,
        n_ctx: Some(256),
    };
    verispec::engine::Engine::load(&p, opts).unwrap()
}

/// The real SmolLM2 model, if fetched. Without it the test is skipped, unless
/// VERISPEC_REQUIRE_MODELS=1 (CI), where a missing model fails the test.
pub fn smollm2() -> Option<PathBuf> {
    let p = workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("VERISPEC_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!("{} is missing: run scripts/fetch-models.sh", p.display());
    }
    eprintln!(
        "skipping: {} is missing (run scripts/fetch-models.sh)",
        p.display()
    );
    None
}

pub struct GoldenRecord {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub generated: Vec<u32>,
    /// top5[i] = [(id, logit); 5] at generation step i.
    pub top5: Vec<Vec<(u32, f32)>>,
}

impl GoldenRecord {
    /// llama.cpp's top-1 minus top-2 logit at step i.
    pub fn margin(&self, i: usize) -> f32 {
        self.top5[i][0].1 - self.top5[i][1].1
    }
}

pub fn golden_records() -> Vec<GoldenRecord> {
    let mut out = Vec::new();
    for f in [
        "smollm2_greedy.jsonl",
        "smollm2_greedy_200tok_specprompts.jsonl",
    ] {
        let text = std::fs::read_to_string(workspace().join("testdata/golden").join(f)).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = |k: &str| -> Vec<u32> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect()
            };
            let top5 = v["top5_logits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|step| {
                    step.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
                        .collect()
                })
                .collect();
            out.push(GoldenRecord {
                prompt: v["prompt"].as_str().unwrap().to_string(),
                prompt_ids: ids("prompt_token_ids"),
                generated: ids("generated_token_ids"),
                top5,
            });
        }
    }
    out
}

/// One `block`-row pass over `input[prefix..prefix + block]` and `block` single-row passes,
/// each after the same prefix, as bits.
pub struct BlockVsSteps {
    pub block_logits: Vec<u32>,
    pub step_logits: Vec<u32>,
    pub block_kv: Vec<u32>,
    pub step_kv: Vec<u32>,
}

pub fn block_vs_steps(
    engine: &verispec::engine::Engine,
    input: &[u32],
    prefix: usize,
    block: usize,
) -> BlockVsSteps {
    use verispec::model::LogitRows;
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let mut a = engine.new_session();
    a.forward(&input[..prefix], LogitRows::None).unwrap();
    let blk = a
        .forward(&input[prefix..prefix + block], LogitRows::All)
        .unwrap();
    let mut b = engine.new_session();
    b.forward(&input[..prefix], LogitRows::None).unwrap();
    let mut seq = Vec::new();
    for t in prefix..prefix + block {
        seq.extend(b.forward(&input[t..t + 1], LogitRows::Last).unwrap());
    }
    BlockVsSteps {
        block_logits: bits(&blk),
        step_logits: bits(&seq),
        block_kv: a.kv_bits(),
        step_kv: b.kv_bits(),
    }
}
