//! Dot products of float weight rows (F32, F16, BF16, straight from the mapped file) with f32
//! activation rows, with exactly the bits of [`super::dot_f32`] over the dequantized row.
//!
//! `dot_f32`'s order: 8 lanes, element `i` goes to lane `i % 8` as `acc = acc + w * x` (a
//! multiply, then an add: no FMA), then a fixed tree. An 8-lane AVX register does the same
//! operations lane by lane, and widening F16 (F16C `vcvtph2ps`) or BF16 (a 16-bit shift) to
//! f32 is exact, so this path gives the same bits as dequantizing the row and calling
//! `dot_f32` (the one difference: F16C quiets a signalling NaN's payload, and a NaN weight
//! makes the dot NaN either way). It reads 2 bytes per F16/BF16 weight instead of writing and
//! re-reading a 4-byte dequantized copy.

use crate::gguf::GgmlType;

/// Weight rows dotted together (the rest of a task's rows one at a time).
pub const ROWS: usize = 8;

/// `out[r * n_rows + t] = dot(w_rows[r], x[t * n_in ..][..n_in])` for every weight row `r` and
/// activation row `t < n_rows`, or false if this machine or type has no fast path (the caller
/// then dequantizes and uses `dot_f32`). [`ROWS`] weight rows go through the loop together:
/// independent add chains and weight streams instead of one, each still in `dot_f32`'s order.
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
                // SAFETY: AVX2 and F16C are present (`available`); lengths checked above.
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

#[cfg(target_arch = "x86_64")]
fn available() -> bool {
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
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

    /// `dot_f32(widen(w[r][..x.len()]), x)` for each of the `R` rows, bit for bit.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn dots<const KIND: u8, const R: usize>(
        w: [*const u8; R],
        x: &[f32],
    ) -> [f32; R] {
        let n = x.len();
        let chunks = n / 8;
        let mut acc = [_mm256_setzero_ps(); R];
        for c in 0..chunks {
            let xv = _mm256_loadu_ps(x.as_ptr().add(8 * c));
            for r in 0..R {
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(load8::<KIND>(w[r], c), xv));
            }
        }
        let mut out = [0f32; R];
        for r in 0..R {
            let mut a = [0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), acc[r]);
            for i in chunks * 8..n {
                a[i % 8] += scalar::<KIND>(w[r], i) * x[i];
            }
            out[r] = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::dot_f32;
    use crate::quant;

    fn lcg(seed: &mut u64) -> u32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*seed >> 33) as u32
    }

    #[test]
    fn float_row_dots_equal_dot_f32_of_the_dequantized_row_bitwise() {
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
                let n_rows = 3;
                // Random finite weights of every magnitude (subnormals included).
                let bytes: Vec<u8> = match ty {
                    GgmlType::F32 => (0..n_in * n_w)
                        .flat_map(|_| {
                            let f = f32::from_bits(lcg(&mut seed) & 0xbfff_ffff);
                            (f * 1e-30).to_le_bytes()
                        })
                        .collect(),
                    _ => (0..n_in * n_w)
                        .flat_map(|_| {
                            let mut h = lcg(&mut seed) as u16;
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
                    .map(|_| (lcg(&mut seed) as f32 / u32::MAX as f32 - 0.5) * 4.0)
                    .collect();
                let row_bytes = bytes.len() / n_w;
                let rows: Vec<&[u8]> = bytes.chunks(row_bytes).collect();
                let mut out = vec![f32::NAN; n_w * n_rows];
                if !row_dots(ty, &rows, &x, n_in, n_rows, &mut out) {
                    eprintln!("no AVX2/F16C here: skipped");
                    return;
                }
                for (r, row) in rows.iter().enumerate() {
                    let mut w = vec![0f32; n_in];
                    quant::dequantize_row(ty, row, &mut w).unwrap();
                    for t in 0..n_rows {
                        let want = dot_f32(&w, &x[t * n_in..(t + 1) * n_in]);
                        let got = out[r * n_rows + t];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{ty} n_in {n_in} weight row {r} of {n_w}, x row {t}: {got} vs {want}"
                        );
                    }
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
