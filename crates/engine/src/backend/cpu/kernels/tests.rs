//! Bit-exactness, batch-invariance, thread-invariance and accuracy tests of the kernels.
//! Every comparison of two kernel results is on `f32::to_bits()`.

use super::pack::quantize_row_q8_0;
use super::*;
use crate::gguf::GgmlType;

/// Accuracy bound (see `accuracy_*`): the activation rounding error of element `e` in block
/// `b` is at most `d_b / 2`; this factor covers the f32 rounding of `x / d` on top.
const ACT_ROUNDING_SLACK: f64 = 1.001;
/// Relative f32 error allowed on top, as a fraction of `sum |w_e| |x_e|`: each block value
/// rounds 3 times (~2e-7) and a lane accumulates at most n_in / 512 + 4 additions.
const F32_REL_SLACK: f64 = 1e-5;
/// Root-mean-square relative error of a whole output vector against the f32 reference for
/// uniform random activations (int8 activations give about 0.4%).
const RMS_REL_TOL: f64 = 0.01;
/// The same for weights converted from f32 to Q8_0 (weight + activation rounding).
const RMS_REL_TOL_CONVERTED: f64 = 0.015;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn f16b(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// A random GGUF tensor of `ty` (`[n_out, n_in]`) with sane scales.
fn gen_tensor(ty: GgmlType, n_out: usize, n_in: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let nblk = n_out * n_in / ty.block_size();
    let mut out = Vec::with_capacity(nblk * ty.type_size());
    for _ in 0..nblk {
        let mut b: Vec<u8> = (0..ty.type_size()).map(|_| r.byte()).collect();
        let scale = 0.002 + 0.01 * r.f().abs();
        match ty {
            GgmlType::Q8_0 => {
                b[0..2].copy_from_slice(&f16b(scale));
                for q in &mut b[2..] {
                    if *q == 0x80 {
                        *q = 0x81; // ggml never writes -128
                    }
                }
            }
            GgmlType::Q4_0 => b[0..2].copy_from_slice(&f16b(scale)),
            GgmlType::Q4_1 => {
                b[0..2].copy_from_slice(&f16b(scale));
                b[2..4].copy_from_slice(&f16b(-8.0 * scale * (1.0 + 0.2 * r.f())));
            }
            GgmlType::Q5_0 => b[0..2].copy_from_slice(&f16b(scale / 2.0)),
            GgmlType::Q5_1 => {
                b[0..2].copy_from_slice(&f16b(scale / 2.0));
                b[2..4].copy_from_slice(&f16b(-8.0 * scale * (1.0 + 0.2 * r.f())));
            }
            GgmlType::Q4K => {
                b[0..2].copy_from_slice(&f16b(scale / 16.0));
                b[2..4].copy_from_slice(&f16b(scale / 8.0));
            }
            GgmlType::Q5K => {
                b[0..2].copy_from_slice(&f16b(scale / 32.0));
                b[2..4].copy_from_slice(&f16b(scale / 8.0));
            }
            GgmlType::Q6K => b[208..210].copy_from_slice(&f16b(scale / 64.0)),
            GgmlType::Q3K => b[108..110].copy_from_slice(&f16b(scale / 64.0)),
            GgmlType::Q2K => {
                b[80..82].copy_from_slice(&f16b(scale / 16.0));
                b[82..84].copy_from_slice(&f16b(scale / 16.0));
            }
            GgmlType::IQ4NL => b[0..2].copy_from_slice(&f16b(scale / 64.0)),
            GgmlType::IQ4XS => b[0..2].copy_from_slice(&f16b(scale / 2048.0)),
            _ => unreachable!(),
        }
        out.extend_from_slice(&b);
    }
    out
}

/// Independent GGUF decoders (from the block descriptions, not from `pack.rs`).
fn decode_gguf(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let ts = ty.type_size();
    for (bi, b) in src.chunks_exact(ts).enumerate() {
        match ty {
            GgmlType::Q8_0 => {
                let d = f16(b, 0);
                for k in 0..32 {
                    out[bi * 32 + k] = f32::from(b[2 + k] as i8) * d;
                }
            }
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let d = f16(b, 0);
                let (m, qs) = if ty == GgmlType::Q4_1 {
                    (f16(b, 2), &b[4..20])
                } else {
                    (0.0, &b[2..18])
                };
                for j in 0..16 {
                    let (lo, hi) = (i32::from(qs[j] & 15), i32::from(qs[j] >> 4));
                    if ty == GgmlType::Q4_0 {
                        out[bi * 32 + j] = (lo - 8) as f32 * d;
                        out[bi * 32 + j + 16] = (hi - 8) as f32 * d;
                    } else {
                        out[bi * 32 + j] = lo as f32 * d + m;
                        out[bi * 32 + j + 16] = hi as f32 * d + m;
                    }
                }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                // d, (m,) qh: u32 (bit j = bit 4 of element j), qs as Q4_0's.
                let d = f16(b, 0);
                let (m, h0) = if ty == GgmlType::Q5_1 {
                    (f16(b, 2), 4)
                } else {
                    (0.0, 2)
                };
                let qh = u32::from_le_bytes([b[h0], b[h0 + 1], b[h0 + 2], b[h0 + 3]]);
                for k in 0..32 {
                    let nib = (b[h0 + 4 + k % 16] >> (4 * (k / 16))) & 15;
                    let q = i32::from(nib) | (((qh >> k) & 1) as i32) << 4;
                    out[bi * 32 + k] = if ty == GgmlType::Q5_0 {
                        (q - 16) as f32 * d
                    } else {
                        q as f32 * d + m
                    };
                }
            }
            GgmlType::Q4K | GgmlType::Q5K => {
                let (d, dmin) = (f16(b, 0), f16(b, 2));
                let sc = &b[4..16];
                let get = |j: usize| -> (u8, u8) {
                    if j < 4 {
                        (sc[j] & 63, sc[j + 4] & 63)
                    } else {
                        (
                            (sc[j + 4] & 0xf) | ((sc[j - 4] >> 6) << 4),
                            (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4),
                        )
                    }
                };
                // Q5_K: qh[32] sits before qs; bit `j` of qh[l] is bit 4 of element 32 j + l.
                let qs = if ty == GgmlType::Q5K { 48 } else { 16 };
                for c in 0..4 {
                    for half in 0..2 {
                        let j = 2 * c + half;
                        let (s, m) = get(j);
                        let (d1, m1) = (d * f32::from(s), dmin * f32::from(m));
                        for l in 0..32 {
                            let mut q = (b[qs + 32 * c + l] >> (4 * half)) & 15;
                            if ty == GgmlType::Q5K {
                                q += ((b[16 + l] >> j) & 1) * 16;
                            }
                            out[bi * 256 + 64 * c + 32 * half + l] = d1 * f32::from(q) - m1;
                        }
                    }
                }
            }
            GgmlType::Q6K => {
                let d = f16(b, 208);
                for e in 0..256 {
                    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
                    let low = (b[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 15;
                    let high = (b[128 + 32 * h + l] >> (2 * s)) & 3;
                    let q = i32::from(low | (high << 4)) - 32;
                    let scale = f32::from(b[192 + e / 16] as i8);
                    out[bi * 256 + e] = (d * scale) * q as f32;
                }
            }
            GgmlType::Q3K => {
                // hmask[32], qs[64], scales[12] (ggml's kmask unpacking), d.
                let d = f16(b, 108);
                let w = |i: usize| {
                    u32::from_le_bytes([b[96 + 4 * i], b[97 + 4 * i], b[98 + 4 * i], b[99 + 4 * i]])
                };
                let (a0, a1, tmp) = (w(0), w(1), w(2));
                let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
                let aux = [
                    (a0 & k2) | ((tmp & k1) << 4),
                    (a1 & k2) | (((tmp >> 2) & k1) << 4),
                    ((a0 >> 4) & k2) | (((tmp >> 4) & k1) << 4),
                    ((a1 >> 4) & k2) | (((tmp >> 6) & k1) << 4),
                ];
                let scales: Vec<i8> = aux
                    .iter()
                    .flat_map(|a| a.to_le_bytes())
                    .map(|v| v as i8 - 32)
                    .collect();
                for e in 0..256 {
                    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
                    let low = i32::from((b[32 + 32 * h + l] >> (2 * s)) & 3);
                    let q = if (b[l] >> (4 * h + s)) & 1 != 0 {
                        low
                    } else {
                        low - 4
                    };
                    out[bi * 256 + e] = (d * f32::from(scales[e / 16])) * q as f32;
                }
            }
            GgmlType::Q2K => {
                // scales[16] (scale | min << 4), qs[64], d, dmin.
                let (d, dmin) = (f16(b, 80), f16(b, 82));
                for e in 0..256 {
                    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
                    let q = (b[16 + 32 * h + l] >> (2 * s)) & 3;
                    let sc = b[e / 16];
                    out[bi * 256 + e] =
                        (d * f32::from(sc & 15)) * f32::from(q) - dmin * f32::from(sc >> 4);
                }
            }
            GgmlType::IQ4NL | GgmlType::IQ4XS => {
                // ggml's kvalues_iq4nl; IQ4_NL: d, qs[16]; IQ4_XS: d, scales_h (u16),
                // scales_l[4], qs[128] (16 bytes per sub-block of 32).
                const KV: [i8; 16] = [
                    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
                ];
                let d = f16(b, 0);
                let n_sub = if ty == GgmlType::IQ4NL { 1 } else { 8 };
                for j in 0..n_sub {
                    let (dl, qs) = if ty == GgmlType::IQ4NL {
                        (d, &b[2..18])
                    } else {
                        let h = u16::from_le_bytes([b[2], b[3]]);
                        let ls = i32::from((b[4 + j / 2] >> (4 * (j % 2))) & 15)
                            | i32::from((h >> (2 * j)) & 3) << 4;
                        (d * (ls - 32) as f32, &b[8 + 16 * j..24 + 16 * j])
                    };
                    for l in 0..16 {
                        let base = bi * ty.block_size() + 32 * j;
                        out[base + l] = dl * f32::from(KV[usize::from(qs[l] & 15)]);
                        out[base + l + 16] = dl * f32::from(KV[usize::from(qs[l] >> 4)]);
                    }
                }
            }
            _ => unreachable!(),
        }
    }
}

fn gen_acts(n_rows: usize, n_in: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    let mut x: Vec<f32> = (0..n_rows * n_in).map(|_| r.f()).collect();
    // Some blocks with other magnitudes, and one all-zero block per row.
    for t in 0..n_rows {
        let row = &mut x[t * n_in..(t + 1) * n_in];
        for (b, blk) in row.chunks_exact_mut(32).enumerate() {
            match b % 7 {
                3 => blk.iter_mut().for_each(|v| *v *= 40.0),
                5 => blk.iter_mut().for_each(|v| *v *= 0.01),
                _ => {}
            }
        }
        if n_in >= 64 {
            row[32..64].fill(0.0);
        }
    }
    x
}

fn native_types() -> [GgmlType; 12] {
    [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::IQ4NL,
        GgmlType::IQ4XS,
    ]
}

/// Row lengths that exercise full groups, short tails, and tails over 8 blocks.
fn widths(ty: GgmlType) -> Vec<usize> {
    if ty.block_size() == 256 {
        vec![256, 768, 2048]
    } else {
        vec![32, 64, 128, 256, 576, 640, 768, 800, 3072]
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn run(path: KernelPath, w: &PackedMatrix, x: &QuantizedActs, n_rows: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n_rows * w.n_out()];
    matmul_with(path, w, x, n_rows, &mut out);
    out
}

#[test]
fn packed_rows_dequantize_like_gguf() {
    for ty in native_types() {
        for n_in in widths(ty) {
            let n_out = 5;
            let data = gen_tensor(ty, n_out, n_in, 7 + n_in as u64);
            let w = PackedMatrix::from_ggml(ty, &data, n_out, n_in).unwrap();
            assert_eq!(
                w.bytes(),
                data.len(),
                "{ty}: packed size differs from GGUF size"
            );
            let rb = data.len() / n_out;
            for o in 0..n_out {
                let mut a = vec![0f32; n_in];
                let mut b = vec![0f32; n_in];
                decode_gguf(ty, &data[o * rb..(o + 1) * rb], &mut a);
                w.dequantize_row(o, &mut b);
                assert_eq!(bits(&a), bits(&b), "{ty} n_in {n_in} row {o}");
            }
        }
    }
}

#[test]
fn activation_quantization() {
    let n_in = 96;
    let mut x = gen_acts(2, n_in, 3);
    x[5] = 127.0 * 0.5 + 0.25; // a large value so the block has a round scale
    let a = QuantizedActs::quantize(&x, 2, n_in);
    let mut deq = vec![0f32; n_in];
    for t in 0..2 {
        a.dequantize_row(t, &mut deq);
        for b in 0..n_in / 32 {
            let xb = &x[t * n_in + b * 32..t * n_in + b * 32 + 32];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            for k in 0..32 {
                let q = if d == 0.0 {
                    0.0
                } else {
                    (xb[k] / d).round() as i8 as f32
                };
                assert_eq!(deq[b * 32 + k].to_bits(), (q * d).to_bits());
            }
        }
        // The all-zero block.
        assert!(deq[32..64].iter().all(|v| v.to_bits() == 0));
    }
    // Rows are independent of each other.
    let one = QuantizedActs::quantize(&x[n_in..], 1, n_in);
    let mut d1 = vec![0f32; n_in];
    one.dequantize_row(0, &mut d1);
    a.dequantize_row(1, &mut deq);
    assert_eq!(bits(&d1), bits(&deq));
}

#[test]
fn every_path_matches_scalar_bitwise() {
    let paths = KernelPath::available();
    eprintln!("kernel paths available: {paths:?}");
    for ty in native_types() {
        for n_in in widths(ty) {
            let n_out = 21;
            let w =
                PackedMatrix::from_ggml(ty, &gen_tensor(ty, n_out, n_in, 11), n_out, n_in).unwrap();
            for n_rows in [1, 2, 3, 4, 5, 8] {
                let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 5), n_rows, n_in);
                let want = bits(&run(KernelPath::Scalar, &w, &x, n_rows));
                for &p in &paths {
                    let got = bits(&run(p, &w, &x, n_rows));
                    assert_eq!(
                        got,
                        want,
                        "{ty} n_in {n_in} T {n_rows}: {} vs scalar",
                        p.name()
                    );
                }
            }
        }
    }
}

#[test]
fn batch_invariance_t1_to_8() {
    for &p in &KernelPath::available() {
        for ty in native_types() {
            let n_in = if ty.block_size() == 256 { 768 } else { 576 };
            let n_out = 19;
            let w =
                PackedMatrix::from_ggml(ty, &gen_tensor(ty, n_out, n_in, 13), n_out, n_in).unwrap();
            let xs = gen_acts(8, n_in, 17);
            // Every row alone (T = 1, quantized alone).
            let singles: Vec<Vec<u32>> = (0..8)
                .map(|t| {
                    let x1 = QuantizedActs::quantize(&xs[t * n_in..(t + 1) * n_in], 1, n_in);
                    bits(&run(p, &w, &x1, 1))
                })
                .collect();
            for n_rows in 1..=8 {
                let x = QuantizedActs::quantize(&xs, n_rows, n_in);
                let out = bits(&run(p, &w, &x, n_rows));
                for (t, single) in singles.iter().enumerate().take(n_rows) {
                    assert_eq!(
                        &out[t * n_out..(t + 1) * n_out],
                        &single[..],
                        "{} {ty}: row {t} of a T={n_rows} pass differs from T=1",
                        p.name()
                    );
                }
            }
            // A T=4 pass equals four T=1 passes over the same quantized rows.
            let x4 = QuantizedActs::quantize(&xs, 4, n_in);
            let four = bits(&run(p, &w, &x4, 4));
            let ones: Vec<u32> = singles[..4].concat();
            assert_eq!(four, ones, "{} {ty}: T=4 vs 4 x T=1", p.name());
        }
    }
}

#[test]
fn threads_do_not_change_bits() {
    let pool1 = Pool::new(1).unwrap();
    let pool2 = Pool::unguarded(2).unwrap();
    for ty in native_types() {
        let n_in = if ty.block_size() == 256 { 512 } else { 576 };
        let n_out = 77;
        let w = PackedMatrix::from_ggml(ty, &gen_tensor(ty, n_out, n_in, 19), n_out, n_in).unwrap();
        for n_rows in [1, 4, 6] {
            let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 23), n_rows, n_in);
            let mut a = vec![0f32; n_rows * n_out];
            let mut b = vec![0f32; n_rows * n_out];
            let mut c = vec![0f32; n_rows * n_out];
            matmul_pool(&pool1, &w, &x, n_rows, &mut a);
            matmul_pool(&pool2, &w, &x, n_rows, &mut b);
            // Odd chunk sizes through the generic entry point, run in reverse order.
            matmul_par(KernelPath::detect(), &w, &x, n_rows, &mut c, 5, |n, f| {
                (0..n).rev().for_each(f)
            });
            let single = run(KernelPath::detect(), &w, &x, n_rows);
            assert_eq!(bits(&a), bits(&single), "{ty}: 1 thread vs plain");
            assert_eq!(bits(&b), bits(&single), "{ty}: 2 threads vs plain");
            assert_eq!(bits(&c), bits(&single), "{ty}: chunked vs plain");
        }
    }
}

/// Checks every output of `w` (GGUF `data` of `ty`) against the f64 dot of the GGUF-decoded
/// weights and the unquantized activations.
fn check_accuracy(
    ty: GgmlType,
    data: &[u8],
    wf: &[f32],
    (n_out, n_in): (usize, usize),
    tol: f64,
    hard_bound: bool,
) {
    let w = PackedMatrix::from_ggml(ty, data, n_out, n_in).unwrap();
    let n_rows = 3;
    let xs = gen_acts(n_rows, n_in, 29);
    let x = QuantizedActs::quantize(&xs, n_rows, n_in);
    let out = run(KernelPath::detect(), &w, &x, n_rows);
    let mut wq = vec![0f32; n_in];
    let (mut err2, mut ref2) = (0f64, 0f64);
    for o in 0..n_out {
        w.dequantize_row(o, &mut wq);
        for t in 0..n_rows {
            let xr = &xs[t * n_in..(t + 1) * n_in];
            let mut y = 0f64;
            let mut bound = 0f64;
            let mut mag = 0f64;
            for b in 0..n_in / 32 {
                let xb = &xr[b * 32..b * 32 + 32];
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                let half_step = amax / 127.0 / 2.0;
                for k in 0..32 {
                    let e = b * 32 + k;
                    y += wf[o * n_in + e] as f64 * xr[e] as f64;
                    bound += half_step * (wq[e] as f64).abs();
                    mag += (wf[o * n_in + e] as f64 * xr[e] as f64).abs();
                }
            }
            let got = out[t * n_out + o] as f64;
            if hard_bound {
                // The kernel's weights are `wf` exactly: a hard bound per output.
                let limit = ACT_ROUNDING_SLACK * bound + F32_REL_SLACK * mag;
                assert!(
                    (got - y).abs() <= limit,
                    "{ty} o {o} t {t}: got {got}, reference {y}, limit {limit}"
                );
            }
            err2 += (got - y) * (got - y);
            ref2 += y * y;
        }
    }
    let rel = (err2 / ref2).sqrt();
    eprintln!("{ty} [{n_out}, {n_in}]: rms relative error {rel:.2e}");
    assert!(rel <= tol, "{ty}: rms relative error {rel} > {tol}");
}

#[test]
fn accuracy_native_formats() {
    for ty in native_types() {
        let (n_out, n_in) = (24, 1536);
        let data = gen_tensor(ty, n_out, n_in, 31);
        let mut wf = vec![0f32; n_out * n_in];
        decode_gguf(ty, &data, &mut wf);
        check_accuracy(ty, &data, &wf, (n_out, n_in), RMS_REL_TOL, true);
    }
}

#[test]
fn converted_formats_become_q8_0() {
    let (n_out, n_in) = (16, 640);
    let mut r = Rng(37);
    let wf: Vec<f32> = (0..n_out * n_in).map(|_| r.f() * 0.05).collect();
    let as_f16: Vec<f32> = wf
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let as_bf16: Vec<f32> = wf
        .iter()
        .map(|&v| f32::from_bits(v.to_bits() & 0xffff_0000))
        .collect();
    let f32_bytes: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16_bytes: Vec<u8> = wf
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16_bytes: Vec<u8> = wf
        .iter()
        .flat_map(|&v| ((v.to_bits() >> 16) as u16).to_le_bytes())
        .collect();
    for (ty, bytes, vals) in [
        (GgmlType::F32, &f32_bytes, &wf),
        (GgmlType::F16, &f16_bytes, &as_f16),
        (GgmlType::BF16, &bf16_bytes, &as_bf16),
    ] {
        let w = PackedMatrix::from_ggml(ty, bytes, n_out, n_in).unwrap();
        assert_eq!(w.format(), WeightFormat::Q8_0);
        assert_eq!(w.source_type(), ty);
        // Exactly ggml's Q8_0 of the decoded values.
        let mut q8 = vec![0u8; WeightFormat::Q8_0.row_bytes(n_in)];
        let (mut a, mut b) = (vec![0f32; n_in], vec![0f32; n_in]);
        for o in 0..n_out {
            quantize_row_q8_0(&vals[o * n_in..(o + 1) * n_in], &mut q8).unwrap();
            decode_gguf(GgmlType::Q8_0, &q8, &mut a);
            w.dequantize_row(o, &mut b);
            assert_eq!(bits(&a), bits(&b), "{ty} row {o}");
        }
        check_accuracy(ty, bytes, vals, (n_out, n_in), RMS_REL_TOL_CONVERTED, false);
    }
    // from_f32 is the F32 conversion.
    let a = PackedMatrix::from_f32(&wf, n_out, n_in).unwrap();
    let b = PackedMatrix::from_ggml(GgmlType::F32, &f32_bytes, n_out, n_in).unwrap();
    let x = QuantizedActs::quantize(&gen_acts(2, n_in, 3), 2, n_in);
    assert_eq!(
        bits(&run(KernelPath::Scalar, &a, &x, 2)),
        bits(&run(KernelPath::Scalar, &b, &x, 2))
    );
    // Non-finite weights are refused.
    let mut bad = f32_bytes.clone();
    bad[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(PackedMatrix::from_ggml(GgmlType::F32, &bad, n_out, n_in).is_err());
}

#[test]
fn zero_activations_give_zero() {
    for ty in native_types() {
        let n_in = 512;
        let w = PackedMatrix::from_ggml(ty, &gen_tensor(ty, 4, n_in, 41), 4, n_in).unwrap();
        let x = QuantizedActs::quantize(&vec![0f32; 2 * n_in], 2, n_in);
        for p in KernelPath::available() {
            let out = run(p, &w, &x, 2);
            assert!(out.iter().all(|v| v.to_bits() == 0), "{ty} {}", p.name());
        }
    }
}

#[test]
fn round_half_away_matches_f32_round() {
    let check = |v: f32| {
        let want = if v.round().is_finite() {
            v.round() as i8
        } else {
            0
        };
        assert_eq!(super::round_half_away(v), want, "v = {v:e}");
    };
    // Every half and its neighbours, then a dense sample of all floats up to 127.5.
    for i in -256..=256 {
        let h = i as f32 * 0.5;
        for v in [
            h,
            f32::from_bits(h.to_bits() + 1),
            f32::from_bits(h.to_bits().max(1) - 1),
        ] {
            if v.abs() <= 127.5 {
                check(v);
            }
        }
    }
    let top = 127.5f32.to_bits();
    let mut b = 0u32;
    while b <= top {
        check(f32::from_bits(b));
        check(-f32::from_bits(b));
        b += 61;
    }
    for v in [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        3e9,
        -3e9,
        1e38,
        128.4,
    ] {
        check(v);
    }
}

/// The largest quants every format holds, against activations at +-127: the integer dots
/// reach their extremes (e.g. 4 * 2 * 31 * 127 in an AVX2 Q5_K partial sum), where a
/// saturating or wrapping 16-bit step would show.
#[test]
fn extreme_quants_match_scalar_on_every_path() {
    for ty in native_types() {
        let (n_out, n_in) = (32, 768);
        let mut data = gen_tensor(ty, n_out, n_in, 43);
        let ts = ty.type_size();
        let (quants, byte) = match ty {
            GgmlType::Q8_0 => (2..34, 0x81),
            GgmlType::Q4_0 => (2..18, 0xff),
            GgmlType::Q4_1 => (4..20, 0xff),
            GgmlType::Q5_0 => (2..22, 0xff),
            GgmlType::Q5_1 => (4..24, 0xff),
            GgmlType::Q4K => (16..144, 0xff),
            GgmlType::Q5K => (16..176, 0xff),
            GgmlType::Q6K => (0..192, 0x00),   // q - 32 = -32
            GgmlType::Q3K => (0..96, 0xff),    // hmask and qs: q + 4 = 7
            GgmlType::Q2K => (16..80, 0xff),   // q = 3
            GgmlType::IQ4NL => (2..18, 0x00),  // -127
            GgmlType::IQ4XS => (8..136, 0x00), // -127
            _ => unreachable!(),
        };
        for blk in data.chunks_exact_mut(ts) {
            blk[quants.clone()].fill(byte);
        }
        let x: Vec<f32> = (0..3 * n_in)
            .map(|i| match i / n_in {
                0 => 1.0,
                1 => -1.0,
                _ => {
                    if i % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
            })
            .collect();
        let x = QuantizedActs::quantize(&x, 3, n_in);
        for w in both_layouts(ty, &data, n_out, n_in) {
            let want = bits(&run(KernelPath::Scalar, &w, &x, 3));
            for &p in &KernelPath::available() {
                let got = bits(&run(p, &w, &x, 3));
                assert_eq!(got, want, "{ty} {:?}: {} vs scalar", w.layout(), p.name());
            }
        }
    }
}

fn both_layouts(ty: GgmlType, data: &[u8], n_out: usize, n_in: usize) -> [PackedMatrix; 2] {
    let rows = PackedMatrix::from_ggml_layout(ty, data, n_out, n_in, Layout::Rows).unwrap();
    let tiles = PackedMatrix::from_ggml_layout(ty, data, n_out, n_in, Layout::Tiles16).unwrap();
    assert_eq!(rows.layout(), Layout::Rows);
    assert_eq!(tiles.layout(), Layout::Tiles16, "{ty} [{n_out}, {n_in}]");
    [rows, tiles]
}

#[test]
fn tiles_hold_the_gguf_values() {
    for ty in native_types() {
        for n_in in widths(ty) {
            let n_out = 32;
            let data = gen_tensor(ty, n_out, n_in, 29 + n_in as u64);
            let [_, w] = both_layouts(ty, &data, n_out, n_in);
            assert_eq!(w.bytes(), data.len(), "{ty}: tiled size differs from GGUF");
            let rb = data.len() / n_out;
            for o in 0..n_out {
                let (mut a, mut b) = (vec![0f32; n_in], vec![0f32; n_in]);
                decode_gguf(ty, &data[o * rb..(o + 1) * rb], &mut a);
                w.dequantize_row(o, &mut b);
                assert_eq!(bits(&a), bits(&b), "{ty} n_in {n_in} row {o}");
            }
        }
    }
    // A row count that is not a multiple of 16 stays in rows.
    let data = gen_tensor(GgmlType::Q8_0, 20, 64, 3);
    let w = PackedMatrix::from_ggml_layout(GgmlType::Q8_0, &data, 20, 64, Layout::Tiles16);
    assert_eq!(w.unwrap().layout(), Layout::Rows);
}

/// Tiles give the bits of rows (the canonical order), on every path and for T = 1..8.
#[test]
fn tiles_match_rows_bitwise_on_every_path() {
    for ty in native_types() {
        for n_in in widths(ty) {
            let n_out = 48;
            let data = gen_tensor(ty, n_out, n_in, 31 + n_in as u64);
            let [rows, tiles] = both_layouts(ty, &data, n_out, n_in);
            for n_rows in [1, 2, 3, 4, 5, 8] {
                let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 37), n_rows, n_in);
                let want = bits(&run(KernelPath::Scalar, &rows, &x, n_rows));
                for &p in &KernelPath::available() {
                    let got = bits(&run(p, &tiles, &x, n_rows));
                    assert_eq!(
                        got,
                        want,
                        "{ty} n_in {n_in} T {n_rows}: tiles on {}",
                        p.name()
                    );
                }
            }
        }
    }
}

#[test]
fn tiles_batch_and_thread_invariance() {
    let pool1 = Pool::new(1).unwrap();
    let pool2 = Pool::unguarded(2).unwrap();
    for ty in native_types() {
        let n_in = if ty.block_size() == 256 { 768 } else { 576 };
        let n_out = 160;
        let [_, w] = both_layouts(ty, &gen_tensor(ty, n_out, n_in, 41), n_out, n_in);
        let xs = gen_acts(8, n_in, 43);
        let singles: Vec<Vec<u32>> = (0..8)
            .map(|t| {
                let x1 = QuantizedActs::quantize(&xs[t * n_in..(t + 1) * n_in], 1, n_in);
                bits(&run(KernelPath::detect(), &w, &x1, 1))
            })
            .collect();
        for n_rows in 1..=8 {
            let x = QuantizedActs::quantize(&xs, n_rows, n_in);
            let (mut a, mut b) = (vec![0f32; n_rows * n_out], vec![0f32; n_rows * n_out]);
            matmul_pool(&pool1, &w, &x, n_rows, &mut a);
            matmul_pool(&pool2, &w, &x, n_rows, &mut b);
            assert_eq!(bits(&a), bits(&b), "{ty} T {n_rows}: 1 vs 2 threads");
            for (t, single) in singles.iter().enumerate().take(n_rows) {
                assert_eq!(
                    &bits(&a)[t * n_out..(t + 1) * n_out],
                    &single[..],
                    "{ty}: row {t} of a T={n_rows} pass differs from T=1"
                );
            }
        }
    }
}

/// Every output element is written, once, with the canonical value: each `(t, o)` is checked
/// against `scalar::row_dot` of that row alone (not through the row iteration), for row
/// counts that do and do not divide into the weight streams of V15 (several rows or tiles in
/// flight per task), on every path, both layouts and 1 or 2 threads.
#[test]
fn every_output_is_written_with_the_row_dot() {
    let pool1 = Pool::new(1).unwrap();
    let pool2 = Pool::unguarded(2).unwrap();
    for ty in native_types() {
        let n_in = widths(ty)[0];
        for n_out in [1, 3, 16, 17, 48, 80, 144, 160, 403] {
            let data = gen_tensor(ty, n_out, n_in, 53 + n_out as u64);
            let mut mats =
                vec![PackedMatrix::from_ggml_layout(ty, &data, n_out, n_in, Layout::Rows).unwrap()];
            if n_out % TILE_ROWS == 0 {
                mats.push(
                    PackedMatrix::from_ggml_layout(ty, &data, n_out, n_in, Layout::Tiles16)
                        .unwrap(),
                );
            }
            let rb = data.len() / n_out;
            for n_rows in [1, 2, 5] {
                let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 59), n_rows, n_in);
                let mut want = vec![0u32; n_rows * n_out];
                for t in 0..n_rows {
                    for o in 0..n_out {
                        let pw = PackedMatrix::from_ggml_layout(
                            ty,
                            &data[o * rb..(o + 1) * rb],
                            1,
                            n_in,
                            Layout::Rows,
                        )
                        .unwrap();
                        want[t * n_out + o] =
                            scalar::row_dot(pw.format(), pw.row(0), n_in, x.row(t)).to_bits();
                    }
                }
                for (w, mt) in mats.iter().flat_map(|w| [1, 2, 3, 4, 8].map(|mt| (w, mt))) {
                    // The lockstep width of the tiled layout (the machine's default may be
                    // any of them); the rows layout ignores it.
                    set_multi_tiles(mt);
                    for &p in &KernelPath::available() {
                        let got = bits(&run(p, w, &x, n_rows));
                        assert_eq!(
                            got,
                            want,
                            "{ty} [{n_out}] T {n_rows} {:?} {} tiles {mt}",
                            w.layout(),
                            p.name()
                        );
                    }
                    for pool in [&pool1, &pool2] {
                        let mut out = vec![f32::NAN; n_rows * n_out];
                        matmul_pool(pool, w, &x, n_rows, &mut out);
                        assert_eq!(
                            bits(&out),
                            want,
                            "{ty} [{n_out}] T {n_rows} {:?} pool tiles {mt}",
                            w.layout()
                        );
                    }
                }
                set_multi_tiles(0);
            }
        }
    }
}

/// The AVX-512 and AVX2 block quantizers give the scalar one's bits: random blocks at many
/// scales, exact halves of the step, zeros, signed zeros, subnormals, infinities and NaN.
#[test]
fn simd_activation_quantizer_matches_scalar() {
    let paths: Vec<KernelPath> = [KernelPath::Avx512Vnni, KernelPath::Avx2]
        .into_iter()
        .filter(|p| p.is_available())
        .collect();
    if paths.is_empty() {
        eprintln!("no AVX2 or AVX-512 here: nothing to compare");
        return;
    }
    let mut r = Rng(71);
    let specials = [
        0.0,
        -0.0,
        f32::MIN_POSITIVE / 8.0,
        -f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        1e-30,
    ];
    for case in 0..20_000 {
        let scale = 10f32.powi((case % 13) as i32 - 6);
        let mut xb = [0f32; QK];
        for v in xb.iter_mut() {
            *v = r.f() * scale;
        }
        match case % 5 {
            // Values on exact half steps of a round scale: amax 127 gives d = 1.
            1 => {
                for (k, v) in xb.iter_mut().enumerate() {
                    *v = (k as f32 - 16.0) * 4.0 + 0.5;
                }
                xb[0] = 127.0;
            }
            2 => xb[(case / 5) % QK] = specials[(case / 5) % specials.len()],
            3 => xb = [0.0; QK],
            _ => {}
        }
        let want = quantize_block_scalar(&xb);
        for &p in &paths {
            let got = quantize_block(&xb, p);
            let name = p.name();
            assert_eq!(
                got.0.to_bits(),
                want.0.to_bits(),
                "{name} d, case {case}: {xb:?}"
            );
            assert_eq!(got.1, want.1, "{name} q, case {case}: {xb:?}");
        }
    }
}

/// Matrices of at least `MULTI_TILE_MIN_BYTES` read tiles in lockstep for every T (small
/// ones only for T = 1): every output against `scalar::row_dot` of its row alone, T = 1..5.
#[test]
fn large_tiled_matrices_match_the_row_dot_for_every_t() {
    let pool = Pool::unguarded(2).unwrap();
    for (ty, n_out, n_in) in [
        (GgmlType::Q8_0, 2048, 2048),
        (GgmlType::Q4_1, 2064, 4096),
        (GgmlType::Q5_0, 2048, 4096),
        (GgmlType::Q4K, 2048, 4096),
        (GgmlType::Q5K, 2064, 3072),
        (GgmlType::Q6K, 2064, 3072),
    ] {
        let data = gen_tensor(ty, n_out, n_in, 61);
        let w = PackedMatrix::from_ggml_layout(ty, &data, n_out, n_in, Layout::Tiles16).unwrap();
        assert!(
            w.bytes() >= MULTI_TILE_MIN_BYTES,
            "{ty}: {} bytes",
            w.bytes()
        );
        let rb = data.len() / n_out;
        let rows: Vec<PackedMatrix> = (0..n_out)
            .map(|o| {
                PackedMatrix::from_ggml_layout(
                    ty,
                    &data[o * rb..(o + 1) * rb],
                    1,
                    n_in,
                    Layout::Rows,
                )
                .unwrap()
            })
            .collect();
        for n_rows in 1..=5 {
            let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 67), n_rows, n_in);
            let mut want = vec![0u32; n_rows * n_out];
            for t in 0..n_rows {
                for (o, pw) in rows.iter().enumerate() {
                    want[t * n_out + o] =
                        scalar::row_dot(pw.format(), pw.row(0), n_in, x.row(t)).to_bits();
                }
            }
            let mut out = vec![f32::NAN; n_rows * n_out];
            matmul_pool(&pool, &w, &x, n_rows, &mut out);
            assert_eq!(bits(&out), want, "{ty} T {n_rows}");
            // Every path with tile kernels, not only the detected one.
            let chunk = rows_per_task(n_out, pool.threads());
            let tiled = [KernelPath::Avx2, KernelPath::Avx512Vnni];
            for p in KernelPath::available()
                .into_iter()
                .filter(|p| tiled.contains(p))
            {
                let mut out = vec![f32::NAN; n_rows * n_out];
                matmul_par(p, &w, &x, n_rows, &mut out, chunk, |n, f| pool.run(n, f));
                assert_eq!(bits(&out), want, "{ty} T {n_rows} {}", p.name());
            }
        }
    }
}

/// Cache-warm prefill throughput of the tiled kernels (one thread, 64 token rows, a
/// 3072 x 1024 slice of a Phi-4-mini matrix): the compute ceiling of each format.
/// `cargo test --release -p verispec-engine tiled_prefill_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn tiled_prefill_speed() {
    let (n_out, n_in, n_rows) = (1024, 3072, 64);
    let x = QuantizedActs::quantize(&gen_acts(n_rows, n_in, 5), n_rows, n_in);
    // `VERISPEC_BENCH_TYPES=q5_K,iq4_xs` times only those types.
    let only = std::env::var("VERISPEC_BENCH_TYPES").ok();
    for ty in native_types() {
        if let Some(only) = &only {
            if !only.split(',').any(|o| o == ty.to_string()) {
                continue;
            }
        }
        let w = PackedMatrix::from_ggml_layout(
            ty,
            &gen_tensor(ty, n_out, n_in, 3),
            n_out,
            n_in,
            Layout::Tiles16,
        )
        .unwrap();
        for p in KernelPath::available() {
            if p == KernelPath::Scalar {
                continue;
            }
            let mut out = vec![0f32; n_rows * n_out];
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                matmul_with(p, &w, &x, n_rows, &mut out);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let macs = (n_out * n_in * n_rows) as f64;
            eprintln!("{ty} {}: {:.1} GMAC/s", p.name(), macs / best / 1e9);
        }
    }
}
