//! Dot products of float weight rows (F32, F16, BF16, straight from the mapped file, or rows
//! the reference path dequantized to F32) with f32 activation rows, with exactly the bits of
//! [`super::dot_f32_fused`] over the widened row.
//!
//! `dot_f32_fused`'s order: 8 lanes, element `i` goes to lane `i % 8` as `acc = fma(w, x, acc)`
//! (one rounding), then a fixed tree. An 8-lane AVX register does the same operations lane by
//! lane, and so does each half of a 16-lane AVX-512 register; widening F16 (F16C `vcvtph2ps`)
//! or BF16 (a 16-bit shift) to f32 is exact, so these paths give the same bits as dequantizing
//! the row and calling `dot_f32_fused` (the one difference: F16C quiets a signalling NaN's
//! payload, and a NaN weight makes the dot NaN either way). They read 2 bytes per F16/BF16
//! weight instead of writing and re-reading a 4-byte dequantized copy.
//!
//! Why fused: on the AMD Zen 4 development machine a 512-bit multiply and a separate add
//! reach about half the flops of one FMA (`/tmp`-style probe in docs/KERNELS.md V21), and
//! prefill on float weights is compute-bound.

use crate::gguf::GgmlType;

/// Weight rows dotted together (the rest of a task's rows one at a time).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub const ROWS: usize = 8;

/// `out[r * n_rows + t] = dot(w_rows[r], x[t * n_in ..][..n_in])` for every weight row `r` and
/// activation row `t < n_rows`, or false if this machine or type has no fast path (the caller
/// then uses `dot_f32_fused`). [`ROWS`] weight rows go through the loop together: independent
/// FMA chains and weight streams instead of one, each still in `dot_f32_fused`'s order.
pub fn row_dots(
    ty: GgmlType,
    w_rows: &[&[u8]],
    x: &[f32],
    n_in: usize,
    n_rows: usize,
    out: &mut [f32],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let kind = match ty {
            GgmlType::F32 => x86::F32,
            GgmlType::F16 => x86::F16,
            GgmlType::BF16 => x86::BF16,
            _ => return false,
        };
        if !available() {
            return false;
        }
        let elem = if kind == x86::F32 { 4 } else { 2 };
        assert!(w_rows.iter().all(|w| w.len() >= n_in * elem));
        assert!(x.len() >= n_rows * n_in && out.len() >= w_rows.len() * n_rows);
        for (g, ws) in w_rows.chunks(ROWS).enumerate() {
            for t in 0..n_rows {
                let xr = &x[t * n_in..(t + 1) * n_in];
                let mut v = [0f32; ROWS];
                // SAFETY: AVX2, FMA and F16C are present (`available`); lengths checked above.
                unsafe {
                    if ws.len() == ROWS {
                        let p: [*const u8; ROWS] = std::array::from_fn(|r| ws[r].as_ptr());
                        v = match kind {
                            x86::F32 => x86::dots::<{ x86::F32 }, ROWS>(p, xr),
                            x86::F16 => x86::dots::<{ x86::F16 }, ROWS>(p, xr),
                            _ => x86::dots::<{ x86::BF16 }, ROWS>(p, xr),
                        };
                    } else {
                        for (r, w) in ws.iter().enumerate() {
                            let p = [w.as_ptr()];
                            v[r] = match kind {
                                x86::F32 => x86::dots::<{ x86::F32 }, 1>(p, xr),
                                x86::F16 => x86::dots::<{ x86::F16 }, 1>(p, xr),
                                _ => x86::dots::<{ x86::BF16 }, 1>(p, xr),
                            }[0];
                        }
                    }
                }
                for (r, &vr) in v.iter().take(ws.len()).enumerate() {
                    out[(ROWS * g + r) * n_rows + t] = vr;
                }
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, w_rows, x, n_in, n_rows, out);
        false
    }
}

/// Token rows laid out for [`row_dots_paired`]: pair `p`, chunk `c` holds `x[2p][8c .. 8c + 8]`
/// then `x[2p + 1][8c .. 8c + 8]` (zeros past the last row), so one 16-lane register carries
/// the same 8 elements of two token rows.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub struct PairedRows {
    data: Vec<f32>,
    /// Where the layout starts in `data`: the first 64-byte boundary, so that no 16-lane load
    /// straddles two cache lines.
    start: usize,
    n_in: usize,
    n_rows: usize,
}

impl PairedRows {
    /// The paired layout of `x` (`n_rows` rows of `n_in`), or `None` where [`row_dots_paired`]
    /// has no fast path: not x86-64 with AVX-512, or a single row (a decode step reads each
    /// weight once anyway, and [`row_dots`] serves it).
    pub fn new(x: &[f32], n_in: usize, n_rows: usize) -> Option<PairedRows> {
        if n_rows < 2 {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        if available512() {
            let chunks = n_in / 8;
            let pairs = n_rows.div_ceil(2);
            let mut data = vec![0f32; pairs * chunks * 16 + 15];
            let start = data.as_ptr().align_offset(64).min(15);
            for (t, row) in x[..n_rows * n_in].chunks_exact(n_in).enumerate() {
                let dst = &mut data[start + (t / 2) * chunks * 16..][..chunks * 16];
                for (c, src) in row[..chunks * 8].chunks_exact(8).enumerate() {
                    dst[c * 16 + (t % 2) * 8..][..8].copy_from_slice(src);
                }
            }
            return Some(PairedRows {
                data,
                start,
                n_in,
                n_rows,
            });
        }
        let _ = (x, n_in);
        None
    }
}

/// Weight rows in a register tile of the paired kernel.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub const TILE_ROWS: usize = 4;
/// Token-row pairs in a register tile of the paired kernel (4 pairs: 8 token rows).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86 kernels only
pub const TILE_PAIRS: usize = 4;

/// [`row_dots`] for several token rows on AVX-512: `out[r * n_rows + t]` for every weight row
/// `r` of `w_rows` and token row `t` of `x` (the rows `paired` was built from). Each weight
/// chunk is widened once and multiplied with 8 token rows in [`TILE_PAIRS`] registers, and
/// [`TILE_ROWS`] weight rows share each token load; every lane still runs `dot_f32_fused`'s chain
/// (`acc = fma(w, x, acc)`, element `i` in lane `i % 8`, then the same tree), so the bits are
/// those of `dot_f32_fused` whatever the number of rows. `ty` is F32, F16 or BF16.
pub fn row_dots_paired(
    ty: GgmlType,
    w_rows: &[&[u8]],
    x: &[f32],
    paired: &PairedRows,
    out: &mut [f32],
) {
    let (n_in, n_rows) = (paired.n_in, paired.n_rows);
    let elem = if ty == GgmlType::F32 { 4 } else { 2 };
    assert!(w_rows.iter().all(|w| w.len() >= n_in * elem));
    assert!(x.len() >= n_rows * n_in && out.len() >= w_rows.len() * n_rows);
    #[cfg(target_arch = "x86_64")]
    {
        assert!(available512(), "PairedRows exists only with AVX-512");
        // SAFETY: AVX-512F, AVX2, FMA and F16C are present (a `PairedRows` exists); lengths checked.
        unsafe {
            match ty {
                GgmlType::F32 => x86::paired::<{ x86::F32 }>(w_rows, x, paired, out),
                GgmlType::F16 => x86::paired::<{ x86::F16 }>(w_rows, x, paired, out),
                GgmlType::BF16 => x86::paired::<{ x86::BF16 }>(w_rows, x, paired, out),
                _ => panic!("row_dots_paired takes float weight rows, not {ty}"),
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("PairedRows exists only with AVX-512");
}

#[cfg(target_arch = "x86_64")]
fn available512() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| available() && is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::quant::{bf16, f16};

    pub(super) const F32: u8 = 4;
    pub(super) const F16: u8 = 2;
    pub(super) const BF16: u8 = 3;

    /// Weight element `i` widened to f32 (the scalar tail).
    #[inline(always)]
    unsafe fn scalar<const KIND: u8>(w: *const u8, i: usize) -> f32 {
        match KIND {
            F32 => f32::from_le_bytes(std::ptr::read_unaligned(w.add(4 * i) as *const [u8; 4])),
            F16 => f16::f16_bits_to_f32(u16::from_le_bytes(std::ptr::read_unaligned(
                w.add(2 * i) as *const [u8; 2]
            ))),
            _ => bf16::bf16_bits_to_f32(u16::from_le_bytes(std::ptr::read_unaligned(
                w.add(2 * i) as *const [u8; 2]
            ))),
        }
    }

    /// Elements `8c .. 8c + 8` widened to f32.
    #[inline(always)]
    unsafe fn load8<const KIND: u8>(w: *const u8, c: usize) -> __m256 {
        match KIND {
            F32 => _mm256_loadu_ps(w.add(32 * c) as *const f32),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(16 * c) as *const __m128i)),
            _ => {
                let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(w.add(16 * c) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
            }
        }
    }

    /// Lane sums `a` of the first `chunks` chunks, finished with the scalar tail
    /// `8 * chunks .. x.len()` of weight row `w` and reduced by the tree.
    #[inline(always)]
    unsafe fn finish<const KIND: u8>(
        mut a: [f32; 8],
        w: *const u8,
        x: &[f32],
        chunks: usize,
    ) -> f32 {
        for (i, &xi) in x.iter().enumerate().skip(chunks * 8) {
            a[i % 8] = scalar::<KIND>(w, i).mul_add(xi, a[i % 8]);
        }
        crate::backend::cpu::lane_tree(&a)
    }

    /// Elements `8c .. 8c + 8` widened to f32, in both halves of a 16-lane register.
    #[inline(always)]
    unsafe fn load8x2<const KIND: u8>(w: *const u8, c: usize) -> __m512 {
        match KIND {
            F32 => _mm512_castsi512_ps(_mm512_broadcast_i64x4(_mm256_loadu_si256(
                w.add(32 * c) as *const __m256i
            ))),
            F16 => _mm512_cvtph_ps(_mm256_broadcastsi128_si256(_mm_loadu_si128(
                w.add(16 * c) as *const __m128i
            ))),
            _ => {
                let h = _mm512_cvtepu16_epi32(_mm256_broadcastsi128_si256(_mm_loadu_si128(
                    w.add(16 * c) as *const __m128i,
                )));
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(h))
            }
        }
    }

    /// One register tile: `R` weight rows times `P` token-row pairs over chunks `0..chunks`.
    #[inline(always)]
    unsafe fn tile<const KIND: u8, const R: usize, const P: usize>(
        w: [*const u8; R],
        xp: [*const f32; P],
        chunks: usize,
    ) -> [[__m512; P]; R] {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for c in 0..chunks {
            let xv: [__m512; P] = std::array::from_fn(|p| _mm512_loadu_ps(xp[p].add(16 * c)));
            for r in 0..R {
                let wv = load8x2::<KIND>(w[r], c);
                for p in 0..P {
                    acc[r][p] = _mm512_fmadd_ps(wv, xv[p], acc[r][p]);
                }
            }
        }
        acc
    }

    /// The tile at weight rows `r0 ..` and pairs `p0 ..`, reduced into `out`.
    #[inline(always)]
    unsafe fn tile_out<const KIND: u8, const R: usize, const P: usize>(
        w_rows: &[&[u8]],
        x: &[f32],
        paired: &super::PairedRows,
        (r0, p0): (usize, usize),
        out: &mut [f32],
    ) {
        let (n_in, n_rows) = (paired.n_in, paired.n_rows);
        let chunks = n_in / 8;
        let w: [*const u8; R] = std::array::from_fn(|r| w_rows[r0 + r].as_ptr());
        let xp: [*const f32; P] = std::array::from_fn(|p| {
            paired
                .data
                .as_ptr()
                .add(paired.start + (p0 + p) * chunks * 16)
        });
        let acc = tile::<KIND, R, P>(w, xp, chunks);
        for (r, row) in acc.iter().enumerate() {
            for (p, v) in row.iter().enumerate() {
                let mut lanes = [0f32; 16];
                _mm512_storeu_ps(lanes.as_mut_ptr(), *v);
                for h in 0..2 {
                    let t = 2 * (p0 + p) + h;
                    if t >= n_rows {
                        continue;
                    }
                    let a: [f32; 8] = std::array::from_fn(|l| lanes[8 * h + l]);
                    let xr = &x[t * n_in..(t + 1) * n_in];
                    out[(r0 + r) * n_rows + t] = finish::<KIND>(a, w[r], xr, chunks);
                }
            }
        }
    }

    /// [`tile_out`] for `np` pairs, `1 ..= 8`.
    #[inline(always)]
    unsafe fn tile_pairs<const KIND: u8, const R: usize>(
        np: usize,
        w_rows: &[&[u8]],
        x: &[f32],
        paired: &super::PairedRows,
        at: (usize, usize),
        out: &mut [f32],
    ) {
        match np {
            8 => tile_out::<KIND, R, 8>(w_rows, x, paired, at, out),
            7 => tile_out::<KIND, R, 7>(w_rows, x, paired, at, out),
            6 => tile_out::<KIND, R, 6>(w_rows, x, paired, at, out),
            5 => tile_out::<KIND, R, 5>(w_rows, x, paired, at, out),
            4 => tile_out::<KIND, R, 4>(w_rows, x, paired, at, out),
            3 => tile_out::<KIND, R, 3>(w_rows, x, paired, at, out),
            2 => tile_out::<KIND, R, 2>(w_rows, x, paired, at, out),
            _ => tile_out::<KIND, R, 1>(w_rows, x, paired, at, out),
        }
    }

    /// Every (weight row, token row) of a task, tile by tile: pairs outer, so a tile's token
    /// rows stay in cache while the task's weight rows pass.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub(super) unsafe fn paired<const KIND: u8>(
        w_rows: &[&[u8]],
        x: &[f32],
        paired: &super::PairedRows,
        out: &mut [f32],
    ) {
        const R: usize = super::TILE_ROWS;
        const P: usize = super::TILE_PAIRS;
        let pairs = paired.n_rows.div_ceil(2);
        let mut p0 = 0;
        while p0 < pairs {
            let np = (pairs - p0).min(P);
            let mut r0 = 0;
            while r0 < w_rows.len() {
                // Whole tiles of R weight rows, then the rest one row at a time.
                if w_rows.len() - r0 >= R {
                    tile_pairs::<KIND, R>(np, w_rows, x, paired, (r0, p0), out);
                    r0 += R;
                } else {
                    tile_pairs::<KIND, 1>(np, w_rows, x, paired, (r0, p0), out);
                    r0 += 1;
                }
            }
            p0 += np;
        }
    }

    /// `dot_f32_fused(widen(w[r][..x.len()]), x)` for each of the `R` rows, bit for bit.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots<const KIND: u8, const R: usize>(
        w: [*const u8; R],
        x: &[f32],
    ) -> [f32; R] {
        let chunks = x.len() / 8;
        let mut acc = [_mm256_setzero_ps(); R];
        for c in 0..chunks {
            let xv = _mm256_loadu_ps(x.as_ptr().add(8 * c));
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(load8::<KIND>(w[r], c), xv, acc[r]);
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            let mut a = [0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), acc[r]);
            out[r] = finish::<KIND>(a, w[r], x, chunks);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::dot_f32_fused;
    use crate::quant;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn float_row_dots_equal_dot_f32_fused_of_the_dequantized_row_bitwise() {
        let mut seed = 7u64;
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            // Weight rows: fewer than ROWS, exactly ROWS, and groups of ROWS plus a rest.
            for (n_in, n_w) in [
                (1, 1),
                (7, 5),
                (8, 8),
                (9, 9),
                (31, 3),
                (64, 16),
                (100, 2),
                (3072, 19),
            ] {
                // Token rows: one (a decode step), pairs, odd counts, several register tiles.
                for n_rows in [1, 2, 3, 8, 9, 17] {
                    check_float_rows(ty, n_in, n_w, n_rows, &mut seed);
                }
            }
        }
    }

    /// Both kernels against `dot_f32_fused` of the dequantized row, bit for bit.
    fn check_float_rows(ty: GgmlType, n_in: usize, n_w: usize, n_rows: usize, seed: &mut u64) {
        // Random finite weights of every magnitude (subnormals included).
        let bytes: Vec<u8> = match ty {
            GgmlType::F32 => (0..n_in * n_w)
                .flat_map(|_| {
                    let f = f32::from_bits(lcg(seed) & 0xbfff_ffff);
                    (f * 1e-30).to_le_bytes()
                })
                .collect(),
            _ => (0..n_in * n_w)
                .flat_map(|_| {
                    let mut h = lcg(seed) as u16;
                    if ty == GgmlType::F16 && (h >> 10) & 0x1f == 0x1f {
                        h &= !0x4000; // no inf / NaN
                    }
                    if ty == GgmlType::BF16 && (h >> 7) & 0xff == 0xff {
                        h &= !0x4000;
                    }
                    h.to_le_bytes()
                })
                .collect(),
        };
        let x: Vec<f32> = (0..n_in * n_rows)
            .map(|_| (lcg(seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
            .collect();
        let rows: Vec<&[u8]> = bytes.chunks(bytes.len() / n_w).collect();
        let mut outs = Vec::new();
        let mut out = vec![f32::NAN; n_w * n_rows];
        if row_dots(ty, &rows, &x, n_in, n_rows, &mut out) {
            outs.push(("row_dots", out));
        } else {
            eprintln!("no AVX2/FMA/F16C here: row_dots skipped");
        }
        if let Some(paired) = PairedRows::new(&x, n_in, n_rows) {
            let mut out = vec![f32::NAN; n_w * n_rows];
            row_dots_paired(ty, &rows, &x, &paired, &mut out);
            outs.push(("row_dots_paired", out));
        }
        for (r, row) in rows.iter().enumerate() {
            let mut w = vec![0f32; n_in];
            quant::dequantize_row(ty, row, &mut w).unwrap();
            for t in 0..n_rows {
                let want = dot_f32_fused(&w, &x[t * n_in..(t + 1) * n_in]);
                for (kernel, out) in &outs {
                    let got = out[r * n_rows + t];
                    assert_eq!(
                        got.to_bits(),
                        want.to_bits(),
                        "{kernel} {ty} n_in {n_in} weight row {r} of {n_w}, x row {t} of \
                         {n_rows}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_types_have_no_float_path() {
        let mut out = [0f32; 1];
        assert!(!row_dots(
            GgmlType::Q8_0,
            &[&[0; 34]],
            &[0.0; 32],
            32,
            1,
            &mut out
        ));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// Not a test: a decode step's read rate (T = 1, rows from DRAM), 2 threads.
    /// `cargo test --release -p verispec-engine float_decode_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn float_decode_speed() {
        let (n_in, n_w) = (3072usize, 16384usize);
        let bytes: Vec<u8> = (0..n_in * n_w * 2)
            .map(|i| (i * 7 % 251) as u8 & 0x3b)
            .collect();
        let x: Vec<f32> = (0..n_in).map(|i| (i % 13) as f32 * 0.01).collect();
        let rows: Vec<&[u8]> = bytes.chunks(n_in * 2).collect();
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|sc| {
                for _ in 0..2 {
                    let (rows, x, next) = (&rows, &x, &next);
                    sc.spawn(move || {
                        let mut out = [0f32; 16];
                        loop {
                            let g = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if g * 16 >= rows.len() {
                                break;
                            }
                            row_dots(GgmlType::F16, &rows[g * 16..][..16], x, n_in, 1, &mut out);
                        }
                    });
                }
            });
            let s = t0.elapsed().as_secs_f64();
            eprintln!("decode f16: {:.1} GB/s", bytes.len() as f64 / s / 1e9);
        }
    }

    /// Not a test: the paired kernel's flops, 1 and 2 threads, weights and activations in cache
    /// and from memory.
    /// `cargo test --release -p verispec-engine float_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn float_speed() {
        let ty = GgmlType::F16;
        for threads in [1usize, 2] {
            for (n_in, n_w, n_rows) in [
                (1024usize, 16usize, 8usize),
                (3072, 3072, 64),
                (8192, 3072, 64),
            ] {
                let bytes: Vec<u8> = (0..n_in * n_w * 2)
                    .map(|i| (i * 7 % 251) as u8 & 0x3b)
                    .collect();
                let x: Vec<f32> = (0..n_in * n_rows).map(|i| (i % 13) as f32 * 0.01).collect();
                let rows: Vec<&[u8]> = bytes.chunks(n_in * 2).collect();
                let paired = PairedRows::new(&x, n_in, n_rows).unwrap();
                let reps = (4e9 / (n_in * n_w * n_rows) as f64).max(1.0) as usize;
                let t0 = std::time::Instant::now();
                std::thread::scope(|sc| {
                    for th in 0..threads {
                        let (rows, x, paired) = (&rows, &x, &paired);
                        sc.spawn(move || {
                            let mut out = vec![0f32; 16 * n_rows];
                            for _ in 0..reps {
                                for g in rows.chunks(16).skip(th).step_by(threads) {
                                    row_dots_paired(ty, g, x, paired, &mut out);
                                }
                            }
                        });
                    }
                });
                let s = t0.elapsed().as_secs_f64();
                let flops = 2.0 * (n_in * n_w * n_rows * reps) as f64;
                eprintln!(
                    "threads {threads} n_in {n_in} n_w {n_w} rows {n_rows}: {:.1} GFLOP/s",
                    flops / s / 1e9
                );
            }
        }
    }
}
