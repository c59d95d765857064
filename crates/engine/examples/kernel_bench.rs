//! Throughput of the batch-invariant matmul kernels against the machine's memory bandwidth.
//!
//! ```text
//! cargo run --release -p verispec-engine --example kernel_bench            # everything
//! cargo run --release -p verispec-engine --example kernel_bench -- --quick # Phi-4-mini 3072->3072 only
//! options: --formats q8_0,q4_0,q4_1,q4_K,q5_K,q6_K,q3_K,q2_K,iq4_nl,iq4_xs  --paths avx2,avx512vnni,scalar
//!          --shapes phi|smol|micro|head|all  --reps N  --rot-mib N  --hot
//!          --prefetch 0,1024,2048 (software-prefetch distances to compare, bytes; default:
//!          the CPU's tuning, per layout)
//! ```
//!
//! GB/s is weight bytes streamed per second (the packed matrix is as large as the GGUF
//! tensor). Each timed repetition runs one matmul on each of many copies of the matrix that
//! together exceed `--rot-mib` (default 1024 MiB), so weights come from DRAM as in real decoding
//! (a single 50 MB matrix would otherwise stay in this machine's large L3). The time of one
//! matmul is the median over repetitions. `--hot` also times one copy repeatedly (cache-warm),
//! which shows the compute ceiling of a kernel.
//!
//! The bandwidth probe reads disjoint buffers (1 GiB in total) with 256-bit loads from 1 and 2
//! threads, best of 5.

use std::time::Instant;

use verispec::backend::cpu::kernels::{
    matmul_par, rows_per_task, set_prefetch_distance, KernelPath, PackedMatrix, QuantizedActs,
};
use verispec::gguf::GgmlType;

const GIB: usize = 1 << 30;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn f16b(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// Random GGUF bytes of `ty` with small finite scales.
fn gen_tensor(ty: GgmlType, n_out: usize, n_in: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let nblk = n_out * n_in / ty.block_size();
    let ts = ty.type_size();
    let mut out = vec![0u8; nblk * ts];
    for c in out.chunks_mut(8) {
        let v = r.next().to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
    for b in out.chunks_exact_mut(ts) {
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 => b[0..2].copy_from_slice(&f16b(0.01)),
            GgmlType::Q4_1 => {
                b[0..2].copy_from_slice(&f16b(0.01));
                b[2..4].copy_from_slice(&f16b(-0.08));
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                b[0..2].copy_from_slice(&f16b(0.001));
                b[2..4].copy_from_slice(&f16b(0.001));
            }
            GgmlType::Q6K => b[208..210].copy_from_slice(&f16b(0.0002)),
            GgmlType::Q3K => b[108..110].copy_from_slice(&f16b(0.0002)),
            GgmlType::IQ4NL => b[0..2].copy_from_slice(&f16b(0.0002)),
            GgmlType::IQ4XS => b[0..2].copy_from_slice(&f16b(0.00001)),
            GgmlType::Q2K => {
                b[80..82].copy_from_slice(&f16b(0.001));
                b[82..84].copy_from_slice(&f16b(0.001));
            }
            _ => unreachable!(),
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_avx2(p: *const u8, n: usize) -> u64 {
    use std::arch::x86_64::*;
    let (mut a, mut b, mut c, mut d) = (
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
        _mm256_setzero_si256(),
    );
    let mut i = 0;
    while i + 128 <= n {
        a = _mm256_add_epi64(a, _mm256_loadu_si256(p.add(i) as *const __m256i));
        b = _mm256_add_epi64(b, _mm256_loadu_si256(p.add(i + 32) as *const __m256i));
        c = _mm256_add_epi64(c, _mm256_loadu_si256(p.add(i + 64) as *const __m256i));
        d = _mm256_add_epi64(d, _mm256_loadu_si256(p.add(i + 96) as *const __m256i));
        i += 128;
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    let mut o = [0u64; 4];
    _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, s);
    o.iter().fold(0u64, |x, y| x.wrapping_add(*y))
}

fn read_buf(b: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 detected; reads stay inside `b`.
        return unsafe { read_avx2(b.as_ptr(), b.len()) };
    }
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .fold(0u64, |x, y| x.wrapping_add(y))
}

/// Best-of-5 read bandwidth (GB/s) of `threads` threads over disjoint buffers, 1 GiB in total.
fn bandwidth_probe(threads: usize) -> f64 {
    let per = GIB / threads;
    let bufs: Vec<Vec<u8>> = (0..threads).map(|i| vec![i as u8 + 1; per]).collect();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        std::thread::scope(|s| {
            for b in &bufs {
                s.spawn(move || std::hint::black_box(read_buf(b)));
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    GIB as f64 / best / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn min(v: &mut [f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

struct Opts {
    formats: Vec<GgmlType>,
    paths: Vec<KernelPath>,
    shapes: Vec<(&'static str, usize, usize)>,
    reps: usize,
    rot_bytes: usize,
    hot: bool,
    prefetch: Vec<usize>,
}

fn parse() -> Opts {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let all_formats = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ];
    let formats = match get("--formats") {
        Some(s) => s
            .split(',')
            .map(|n| {
                *all_formats
                    .iter()
                    .find(|t| t.name() == n)
                    .unwrap_or_else(|| panic!("unknown format {n}"))
            })
            .collect(),
        None => all_formats.to_vec(),
    };
    let avail = KernelPath::available();
    let paths = match get("--paths") {
        Some(s) => s
            .split(',')
            .map(|n| {
                *avail
                    .iter()
                    .find(|p| p.name() == n)
                    .unwrap_or_else(|| panic!("path {n} is not available here"))
            })
            .collect(),
        None => vec![KernelPath::detect()],
    };
    let phi = vec![
        ("phi4-mini attn_out 3072->3072", 3072, 3072),
        ("phi4-mini qkv 3072->5120", 3072, 5120),
        ("phi4-mini gate_up 3072->16384", 3072, 16384),
        ("phi4-mini down 8192->3072", 8192, 3072),
    ];
    let smol = vec![
        ("smollm2-135m q/o 576->576", 576, 576),
        ("smollm2-135m gate/up 576->1536", 576, 1536),
        ("smollm2-135m down 1536->576", 1536, 576),
    ];
    let quick = args.iter().any(|a| a == "--quick");
    let shapes = if quick {
        phi[..1].to_vec()
    } else {
        match get("--shapes").as_deref() {
            Some("phi") => phi,
            Some("smol") => smol,
            // L2-resident: with --hot, the compute ceiling of a kernel.
            Some("micro") => vec![("micro 3072->256", 3072, 256)],
            // The tied LM head of Phi-4-mini (0.5-0.8 GB: one copy per repetition).
            Some("head") => vec![("phi4-mini head 3072->200064", 3072, 200064)],
            _ => [phi, smol].concat(),
        }
    };
    Opts {
        formats,
        paths,
        shapes,
        reps: get("--reps").map(|s| s.parse().unwrap()).unwrap_or(5),
        rot_bytes: get("--rot-mib")
            .map(|s| s.parse::<usize>().unwrap() << 20)
            .unwrap_or(GIB),
        hot: args.iter().any(|a| a == "--hot"),
        prefetch: get("--prefetch")
            .map(|s| s.split(',').map(|v| v.parse().unwrap()).collect())
            .unwrap_or_else(|| vec![usize::MAX]),
    }
}

/// Seconds per matmul over `reps` passes over `mats`, summarized by `stat` (median for
/// DRAM-streaming runs; min for cache-hot runs, where interference only adds time).
#[allow(clippy::too_many_arguments)]
fn time_matmul(
    stat: fn(&mut [f64]) -> f64,
    path: KernelPath,
    pool: &verispec::backend::cpu::kernels::Pool,
    mats: &[PackedMatrix],
    x: &QuantizedActs,
    n_rows: usize,
    out: &mut [f32],
    reps: usize,
) -> f64 {
    let n_out = mats[0].n_out();
    let chunk = rows_per_task(n_out, pool.threads());
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        for w in mats {
            matmul_par(path, w, x, n_rows, out, chunk, |n, f| pool.run(n, f));
        }
        times.push(t.elapsed().as_secs_f64() / mats.len() as f64);
    }
    std::hint::black_box(&out);
    stat(&mut times)
}

fn main() {
    let o = parse();
    println!("# kernel_bench");
    println!(
        "paths available: {:?}; timing: {:?}; reps {}; rotating set {} MiB",
        KernelPath::available()
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>(),
        o.paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
        o.reps,
        o.rot_bytes >> 20
    );
    println!("memory probe: 1 GiB over disjoint per-thread buffers, 256-bit loads, best of 5,");
    println!("re-measured before every format x shape (the machine is shared: it drifts).");
    println!();
    println!("| format | shape | path | thr | probe GB/s | T=1 µs | T=1 GB/s | % of probe | T=4 µs | T=4 GB/s | T4/T1 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let pools: Vec<verispec::backend::cpu::kernels::Pool> = [1, 2]
        .iter()
        .map(|&n| verispec::backend::cpu::kernels::Pool::new(n).unwrap())
        .collect();
    for &ty in &o.formats {
        for &(name, n_in, n_out) in &o.shapes {
            if n_in % ty.block_size() != 0 {
                continue;
            }
            let data = gen_tensor(ty, n_out, n_in, 1234);
            let w = PackedMatrix::from_ggml(ty, &data, n_out, n_in).unwrap();
            drop(data);
            let copies = o.rot_bytes.div_ceil(w.bytes()).max(1);
            let mats: Vec<PackedMatrix> = (0..copies).map(|_| w.clone()).collect();
            let mut r = Rng(99);
            let xs: Vec<f32> = (0..4 * n_in)
                .map(|_| (r.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            let x = QuantizedActs::quantize(&xs, 4, n_in);
            let mut out = vec![0f32; 4 * n_out];
            let bw1 = bandwidth_probe(1);
            let bw2 = bandwidth_probe(2);
            for &path in &o.paths {
                for (pi, pool) in pools.iter().enumerate() {
                    for &pf in &o.prefetch {
                        // usize::MAX: the machine's own per-layout distances.
                        set_prefetch_distance(pf);
                        let pname = if o.prefetch.len() > 1 {
                            format!("{} pf{pf}", path.name())
                        } else {
                            path.name().to_string()
                        };
                        let thr = pi + 1;
                        let bw = if thr == 1 { bw1 } else { bw2 };
                        let t1 = time_matmul(median, path, pool, &mats, &x, 1, &mut out, o.reps);
                        let t4 = time_matmul(median, path, pool, &mats, &x, 4, &mut out, o.reps);
                        let gb = |t: f64| w.bytes() as f64 / t / 1e9;
                        println!(
                        "| {ty} | {name} | {pname} | {thr} | {bw:.2} | {:.1} | {:.2} | {:.0}% | {:.1} | {:.2} | {:.2} |",
                        t1 * 1e6,
                        gb(t1),
                        100.0 * gb(t1) / bw,
                        t4 * 1e6,
                        gb(t4),
                        t4 / t1
                    );
                        if o.hot {
                            let hot = std::slice::from_ref(&w);
                            let reps = (o.rot_bytes / w.bytes()).clamp(5, 2000);
                            let h1 = time_matmul(min, path, pool, hot, &x, 1, &mut out, reps);
                            let h4 = time_matmul(min, path, pool, hot, &x, 4, &mut out, reps);
                            println!(
                            "| {ty} | {name} (hot) | {pname} | {thr} | - | {:.1} | {:.2} | - | {:.1} | {:.2} | {:.2} |",
                            h1 * 1e6,
                            gb(h1),
                            h4 * 1e6,
                            gb(h4),
                            h4 / h1
                        );
                        }
                    }
                }
            }
        }
    }
}
