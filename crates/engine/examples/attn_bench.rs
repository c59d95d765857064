//! Time of the CPU attention op (`Backend::attention`) per path, for the SmolLM2 and
//! Phi-4-mini shapes.
//!
//! ```text
//! cargo run --release -p verispec-engine --example attn_bench
//! options: --threads N (2)  --reps N (15)  --pos 64,256,1024  --rows 1,4  --shapes smol,phi
//!          --paths avx2build,avx2,avx512 (also portable, auto; avx2build = "old", the V8 path)
//!          --layers N (separate K/V caches; default the model's layer count, 1 = cache-hot)
//!          --parts 1,2,3 (variants of the last path with that many tasks per (row, KV head))
//!          --rpt 1,0 (variants of the last path with that many rows per task; 0 = auto;
//!          1 = one task per row, as before V14)
//! ```
//!
//! One repetition calls attention once per layer on that many separate K/V caches (30 for
//! SmolLM2, 32 for Phi-4-mini), as a decode step does, so the caches come from L3/DRAM rather
//! than L1/L2; the time reported is per call (per layer), the median over repetitions. Paths
//! run interleaved within each repetition, and their outputs are checked to be bit-identical.

use std::time::Instant;

use verispec::backend::cpu::{AttnPath, CpuBackend};
use verispec::backend::{AttnSeg, Backend, ComputePath};

struct Shape {
    name: &'static str,
    n_layer: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
}

const SHAPES: [Shape; 2] = [
    Shape {
        name: "smol",
        n_layer: 30,
        n_head: 9,
        n_head_kv: 3,
        head_dim: 64,
    },
    Shape {
        name: "phi",
        n_layer: 32,
        n_head: 24,
        n_head_kv: 8,
        head_dim: 128,
    },
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(args: &[String], name: &str, default: &str) -> Vec<String> {
    arg(args, name)
        .unwrap_or_else(|| default.to_string())
        .split(',')
        .map(str::to_string)
        .collect()
}

fn path_of(s: &str) -> AttnPath {
    match s {
        "portable" => AttnPath::Portable,
        "avx2build" | "old" => AttnPath::Avx2Build,
        "avx2" => AttnPath::Avx2,
        "avx512" => AttnPath::Avx512,
        "auto" | "new" => AttnPath::Auto,
        _ => panic!("unknown path {s}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = arg(&args, "--threads").map_or(2, |s| s.parse().unwrap());
    let reps: usize = arg(&args, "--reps").map_or(15, |s| s.parse().unwrap());
    let poss: Vec<usize> = list(&args, "--pos", "64,256,1024")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let rowss: Vec<usize> = list(&args, "--rows", "1,4")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let mut names = list(&args, "--paths", "avx2build,avx2,avx512");
    let mut paths: Vec<AttnPath> = names.iter().map(|s| path_of(s)).collect();
    // --parts 1,2,3: variants of the last path with that many tasks per (row, KV head).
    let mut parts: Vec<Option<usize>> = paths.iter().map(|_| None).collect();
    let mut rpts: Vec<usize> = paths.iter().map(|_| 0).collect();
    if let Some(ps) = arg(&args, "--parts") {
        let last = *paths.last().unwrap();
        let lname = names.last().unwrap().clone();
        paths.pop();
        names.pop();
        parts.pop();
        for v in ps.split(',') {
            paths.push(last);
            names.push(format!("{lname} x{v}"));
            parts.push(Some(v.parse().unwrap()));
            rpts.push(0);
        }
    }
    // --rpt 1,0: variants of the last path with that many rows per task.
    if let Some(rs) = arg(&args, "--rpt") {
        let (last, lname, lpart) = (
            paths.pop().unwrap(),
            names.pop().unwrap(),
            parts.pop().unwrap(),
        );
        rpts.pop();
        for v in rs.split(',') {
            paths.push(last);
            names.push(format!("{lname} r{v}"));
            parts.push(lpart);
            rpts.push(v.parse().unwrap());
        }
    }
    let shapes = list(&args, "--shapes", "smol,phi");
    // Separate K/V caches per repetition (default: the model's layer count).
    let layers: Option<usize> = arg(&args, "--layers").map(|s| s.parse().unwrap());
    for p in &paths {
        assert!(p.supported(), "{p:?} is not supported on this CPU");
    }
    let b = CpuBackend::new(ComputePath::Fast, threads).expect("backend");

    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };

    print!("| shape | pos | T |");
    for n in &names {
        print!(" {n} us |");
    }
    println!(" first / last |");
    print!("|---|---|---|");
    for _ in &names {
        print!("---|");
    }
    println!("---|");
    for sh in SHAPES.iter().filter(|s| shapes.iter().any(|n| n == s.name)) {
        let n_layer = layers.unwrap_or(sh.n_layer);
        let kvw = sh.n_head_kv * sh.head_dim;
        let qw = sh.n_head * sh.head_dim;
        let max_rows = *rowss.iter().max().unwrap();
        let max_pos = *poss.iter().max().unwrap();
        let cache_rows = max_pos + max_rows;
        let mut cache =
            |mul: f32| -> Vec<f32> { (0..cache_rows * kvw).map(|_| rnd() * mul).collect() };
        // Keys with a wider spread than values, so that the softmax is far from uniform.
        let ks: Vec<Vec<f32>> = (0..n_layer).map(|_| cache(3.0)).collect();
        let vs: Vec<Vec<f32>> = (0..n_layer).map(|_| cache(1.0)).collect();
        let q: Vec<f32> = (0..max_rows * qw).map(|_| rnd() * 3.0).collect();
        for &pos in &poss {
            for &t in &rowss {
                let mut outs: Vec<Vec<f32>> = paths.iter().map(|_| vec![0f32; t * qw]).collect();
                let mut times: Vec<Vec<f64>> = paths.iter().map(|_| Vec::new()).collect();
                for rep in 0..reps + 1 {
                    for (i, &p) in paths.iter().enumerate() {
                        b.set_attention_path(p);
                        b.set_attention_parts(parts[i].unwrap_or(0));
                        b.set_attention_rows(rpts[i]);
                        let t0 = Instant::now();
                        for l in 0..n_layer {
                            let seg = AttnSeg {
                                row0: 0,
                                n_rows: t,
                                pos0: pos,
                                k_cache: &ks[l],
                                v_cache: &vs[l],
                            };
                            b.attention(
                                &q,
                                &[seg],
                                sh.n_head,
                                sh.n_head_kv,
                                sh.head_dim,
                                &mut outs[i],
                            );
                        }
                        let dt = t0.elapsed().as_secs_f64() * 1e6 / n_layer as f64;
                        // The first repetition warms up.
                        if rep > 0 {
                            times[i].push(dt);
                        }
                    }
                }
                for (i, o) in outs.iter().enumerate() {
                    let same = o
                        .iter()
                        .zip(&outs[0])
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{} differs from {}", names[i], names[0]);
                }
                print!("| {} | {pos} | {t} |", sh.name);
                let med: Vec<f64> = times.iter_mut().map(|tm| median(tm)).collect();
                for m in &med {
                    print!(" {m:.1} |");
                }
                println!(" {:.2}x |", med[0] / med[med.len() - 1]);
            }
        }
    }
}
