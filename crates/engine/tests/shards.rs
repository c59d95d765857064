//! Sharded topologies: export, bit-identical sharded runs (greedy and speculative), and every
//! gate failing for the right reason with a message naming the shard.

mod common;

use std::path::{Path, PathBuf};

use verispec::backend::ComputePath;
use verispec::engine::{Engine, LoadOptions, Session};
use verispec::generate::request::{generate, GenRequest, Speculation};
use verispec::shard::export::{export, ExportOptions, ExportType, LayerSpec};
use verispec::shard::manifest::Manifest;
use verispec::synth::{synth, Preset, SynthOptions, SynthType};
use verispec::validate::{validate_manifest, ValidateOptions};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("verispec-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn synth_32(dir: &Path) -> PathBuf {
    let p = dir.join("tiny32.gguf");
    let opts = SynthOptions {
        preset: Preset::TinyPhi3,
        ty: SynthType::Q8_0,
        layers: Some(32),
        seed: 3,
    };
    synth(&opts, &p, true, &mut |_, _| {}).unwrap();
    p
}

fn export_opts(model: &Path, dir: &Path, topo: &[usize], ty: ExportType) -> ExportOptions {
    let mut specs = Vec::new();
    let mut start = 0;
    for (i, n) in topo.iter().enumerate() {
        specs.push(LayerSpec {
            start,
            end: start + n,
            path: dir.join(format!("s{i}.gguf")),
        });
        start += n;
    }
    ExportOptions {
        model: model.to_path_buf(),
        specs,
        ty,
        only: None,
        force: false,
        manifest: dir.join("manifest.json"),
        verify_width: 4,
        device: "cpu".into(),
        disk_limit: None,
    }
}

fn load(p: &Path) -> LoadOptions {
    let _ = p;
    LoadOptions {
        path: ComputePath::Fast,
        threads: 2,
        n_ctx: Some(256),
    }
}

fn gen(engine: &Engine, prompt: &str, spec: bool) -> Vec<u32> {
    let mut s = engine.new_session();
    gen_on(engine, &mut s, prompt, spec)
}

fn gen_on(engine: &Engine, s: &mut Session, prompt: &str, spec: bool) -> Vec<u32> {
    let ids = engine.tokenizer.encode(prompt, true, true);
    let req = GenRequest {
        max_tokens: 48,
        ignore_eos: true,
        stop: vec![],
        speculative: spec.then(|| Speculation {
            exactness_guard: true,
            // Draft beside the other batched sequence too, so verify rows share passes.
            max_batch: usize::MAX,
            ..Default::default()
        }),
        cancel: None,
        logprobs: None,
        sampling: Default::default(),
    };
    generate(engine, s, &ids, &req, |_| {})
        .unwrap()
        .generated_ids
}

fn vopts() -> ValidateOptions {
    ValidateOptions {
        strict: true,
        thresholds: Default::default(),
        threads: 2,
        probe_prefix: 12,
        device_override: None,
    }
}

#[test]
fn topologies_are_bit_identical_and_pass_validation() {
    let dir = tmpdir("topo");
    let model = synth_32(&dir);
    let whole = Engine::load(&model, load(&model)).unwrap();
    let prompts = [
        "The quick brown fox jumps over the lazy dog. The quick brown",
        "def f(x):\n    return x",
    ];
    let want: Vec<(Vec<u32>, Vec<u32>)> = prompts
        .iter()
        .map(|p| (gen(&whole, p, false), gen(&whole, p, true)))
        .collect();
    for (i, (g, s)) in want.iter().enumerate() {
        assert_eq!(
            g, s,
            "prompt {i}: speculative != greedy on the unsharded model"
        );
    }
    for topo in [vec![20, 4, 6, 2], vec![8, 8, 8, 6, 2], vec![32]] {
        let d = dir.join(format!("t{}", topo.len()));
        std::fs::create_dir_all(&d).unwrap();
        let opts = export_opts(&model, &d, &topo, ExportType::Keep);
        export(&opts, &mut |_| {}).unwrap();
        let m = d.join("manifest.json");
        let sharded = Engine::load_manifest(&m, load(&m), None).unwrap();
        assert_eq!(sharded.shards.len(), topo.len());
        for (p, (g, s)) in prompts.iter().zip(&want) {
            assert_eq!(
                &gen(&sharded, p, false),
                g,
                "{topo:?}: sharded greedy differs"
            );
            assert_eq!(
                &gen(&sharded, p, true),
                s,
                "{topo:?}: sharded speculative differs"
            );
        }
        // Both prompts at once on batched sessions (one greedy, one speculative): every shard
        // runs the shared passes, and each sequence still equals the unsharded model's.
        let mut sessions = sharded.batched_sessions(2).unwrap();
        let got: Vec<Vec<u32>> = std::thread::scope(|sc| {
            let hs: Vec<_> = sessions
                .iter_mut()
                .zip(prompts)
                .enumerate()
                .map(|(i, (sess, p))| {
                    let busy = sess.busy();
                    let sharded = &sharded;
                    sc.spawn(move || {
                        let out = gen_on(sharded, sess, p, i == 1);
                        drop(busy);
                        out
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got[0], want[0].0, "{topo:?}: batched greedy differs");
        assert_eq!(got[1], want[1].1, "{topo:?}: batched speculative differs");
        let r = validate_manifest(&m, &vopts(), &mut |_| {}).unwrap();
        assert!(
            r.pass,
            "{topo:?}: {:#?}",
            r.gates.iter().filter(|g| !g.pass).collect::<Vec<_>>()
        );
        assert_eq!(r.gates.len(), topo.len() * 4);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gates_fail_for_the_right_reason() {
    let dir = tmpdir("gates");
    let model = synth_32(&dir);
    let opts = export_opts(&model, &dir, &[20, 4, 6, 2], ExportType::Keep);
    export(&opts, &mut |_| {}).unwrap();
    let m = dir.join("manifest.json");
    let manifest_text = std::fs::read_to_string(&m).unwrap();

    // One flipped byte in the data of shard 2: the hash gate fails and names shard 2.
    let s2 = dir.join("s2.gguf");
    let orig = std::fs::read(&s2).unwrap();
    let mut bad = orig.clone();
    let at = bad.len() - 100;
    bad[at] ^= 0x40;
    std::fs::write(&s2, &bad).unwrap();
    let r = validate_manifest(&m, &vopts(), &mut |_| {}).unwrap();
    assert!(!r.pass);
    let failed: Vec<_> = r.gates.iter().filter(|g| !g.pass).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].shard, failed[0].gate), (2, "hashes"));
    assert!(failed[0].detail.contains("shard 2") && failed[0].detail.contains("sha256"));

    // A NaN in one weight of shard 2 (with a matching hash): the golden gate fails and names
    // shard 2 and the layer.
    let f = verispec::gguf::GgufFile::open(&s2).unwrap();
    let t = f.tensor("blk.25.attn_output.weight").unwrap().clone();
    let off = (f.data_offset + t.offset) as usize;
    drop(f);
    let mut nan = orig.clone();
    nan[off..off + 2].copy_from_slice(&half::f16::NAN.to_le_bytes()); // first block's scale
    std::fs::write(&s2, &nan).unwrap();
    let mut mf: Manifest = serde_json::from_str(&manifest_text).unwrap();
    mf.shards[2].sha256 = verispec::shard::export::sha256_file(&s2, &mut |_| {}).unwrap();
    std::fs::write(&m, serde_json::to_string(&mf).unwrap()).unwrap();
    let r = validate_manifest(&m, &vopts(), &mut |_| {}).unwrap();
    let failed: Vec<_> = r.gates.iter().filter(|g| !g.pass).collect();
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|g| g.shard == 2), "{failed:#?}");
    let golden = failed
        .iter()
        .find(|g| g.gate == "golden")
        .expect("golden gate failed");
    assert!(
        golden.detail.contains("shard 2") && golden.detail.contains("layer 25"),
        "{}",
        golden.detail
    );
    std::fs::write(&s2, &orig).unwrap();
    std::fs::write(&m, &manifest_text).unwrap();

    // A gap and an overlap in the manifest.
    for (layers, word) in [([21, 24], "gap"), ([19, 24], "overlap")] {
        let mut mf: Manifest = serde_json::from_str(&manifest_text).unwrap();
        mf.shards[1].layers = layers;
        std::fs::write(&m, serde_json::to_string(&mf).unwrap()).unwrap();
        let e = Manifest::load(&m).unwrap_err().to_string();
        assert!(e.contains(word), "{e}");
        assert!(validate_manifest(&m, &vopts(), &mut |_| {}).is_err());
    }
    std::fs::write(&m, &manifest_text).unwrap();

    // Export onto an existing file without force: refused, nothing changed.
    let before = std::fs::read(dir.join("s0.gguf")).unwrap();
    let e = export(&opts, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("already exists") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(dir.join("s0.gguf")).unwrap(), before);

    // An export that does not fit: refused before writing anything.
    let d2 = dir.join("full");
    std::fs::create_dir_all(&d2).unwrap();
    let mut small = export_opts(&model, &d2, &[20, 4, 6, 2], ExportType::Keep);
    small.disk_limit = Some(100_000);
    let e = export(&small, &mut |_| {}).unwrap_err().to_string();
    assert!(e.contains("not enough disk space"), "{e}");
    assert_eq!(
        std::fs::read_dir(&d2).unwrap().count(),
        0,
        "something was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// q8_0 shards of the f32 tiny fixtures stay within cosine 0.999 of the f32 reference.
#[test]
fn q8_0_shards_of_fixtures_pass_golden() {
    for case in ["tiny-phi3", "tiny-llama"] {
        let dir = tmpdir(&format!("q8-{case}"));
        let model = common::workspace().join(format!("testdata/fixtures/{case}.gguf"));
        let opts = export_opts(&model, &dir, &[1, 2, 1], ExportType::Q8_0);
        export(&opts, &mut |_| {}).unwrap();
        let r = validate_manifest(&dir.join("manifest.json"), &vopts(), &mut |_| {}).unwrap();
        for g in r.gates.iter().filter(|g| g.gate == "golden") {
            eprintln!("{case}: {}", g.detail);
        }
        assert!(
            r.pass,
            "{case}: {:#?}",
            r.gates.iter().filter(|g| !g.pass).collect::<Vec<_>>()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
