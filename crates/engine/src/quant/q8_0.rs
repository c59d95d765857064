//! Q8_0: 32 elements per block, symmetric 8-bit quants with one f16 scale.
//!
//! Block layout (34 bytes, ggml `block_q8_0`):
//!
//! | offset | bytes | field                          |
//! |--------|-------|--------------------------------|
//! | 0      | 2     | `d`: f16 scale                 |
//! | 2      | 32    | `qs: [i8; 32]`: element `j` = `qs[j]` |
//!
//! Dequantization: `x[j] = q[j] * d` in f32 (same product in ggml and gguf-py).
//!
//! Quantization ([`quantize_row_q8_0`]) is ggml's `quantize_row_q8_0_ref`, the routine
//! llama.cpp uses to write Q8_0 files:
//!
//! ```text
//! amax = max_j |x[j]|            (f32)
//! d    = amax / 127              (f32 division)
//! id   = d != 0 ? 1/d : 0        (f32 division)
//! d_stored = f16(d)              (round to nearest even)
//! q[j] = roundf(x[j] * id)       (f32 product, then round half AWAY from zero)
//! ```
//!
//! Rounding: C `roundf` rounds halves away from zero; numpy's `np.round` would round them to
//! even, but gguf-py deliberately uses its own `np_roundf` (floor-based, half away from zero)
//! for Q8_0, so gguf-py and ggml agree, including on exact `.5` products; Rust's
//! `f32::round` is the same function. The vectors in `testdata/quant` include blocks of exact
//! ties (`x = k + 0.5` with `d = 1`, `0.125`, `4`) where half-to-even would differ.
//!
//! Edge cases (no panics):
//! * all-zero block: `d = 0`, `id = 0`, all `q = 0`;
//! * `d` above the f16 range (`amax > 65504 * 127`, about 8.3e6): the stored scale is `+inf`,
//!   exactly as ggml and gguf-py write it (dequantizing such a block gives ±inf, or NaN where
//!   `q = 0`);
//! * `d` below the f16 range: the stored scale is a subnormal or 0 (as in ggml);
//! * `amax` so small that `1/d` overflows f32 (`amax < ~3.7e-37`): `x * id` is ±inf or NaN.
//!   ggml's float→int8 conversion is then undefined in C; on x86 it truncates the
//!   "integer indefinite" 0x80000000 to 0, and numpy (hence gguf-py) also gives 0. We store
//!   `q = 0` for any non-finite `x * id`, matching both (the stored scale is 0 there anyway);
//! * NaN or ±inf input: rejected with [`QuantError::NonFinite`] (ggml's `MAX` macro would
//!   silently drop or keep a NaN depending on its position; we refuse rather than guess).

use super::{f16_at, QuantError};
use crate::gguf::GgmlType;

/// Elements per block.
pub const QK: usize = 32;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 34;
/// Largest quant magnitude, `(1 << 7) - 1`.
pub const QMAX: f32 = 127.0;

/// Dequantizes one block.
#[inline(always)]
pub fn dequantize_block(block: &[u8; BLOCK_BYTES], out: &mut [f32; QK]) {
    let d = f16_at(block, 0);
    let qs = &block[2..34]; // [32] i8
    for (y, &q) in out.iter_mut().zip(qs) {
        *y = f32::from(q as i8) * d;
    }
}

pub(crate) fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::for_each_block(src, dst, dequantize_block);
}

/// Quantizes one block of finite values (see the module docs for the exact procedure).
#[inline]
pub fn quantize_block(x: &[f32; QK], out: &mut [u8; BLOCK_BYTES]) {
    // ggml: amax = MAX(amax, fabsf(v)), i.e. `amax > v ? amax : v`.
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if m > v.abs() { m } else { v.abs() });
    let d = amax / QMAX;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out[0..2].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    for (o, &v) in out[2..].iter_mut().zip(x) {
        let q = (v * id).round(); // half away from zero, like C roundf
                                  // |q| <= 127 whenever finite; non-finite only when 1/d overflowed (see module docs).
        *o = if q.is_finite() { q as i8 as u8 } else { 0 };
    }
}

/// Quantizes `src` (length a multiple of 32) into Q8_0 blocks in `dst`
/// (`dst.len() == src.len() / 32 * 34`), bit-identical to ggml's `quantize_row_q8_0_ref`
/// and gguf-py's `quantize(.., Q8_0)`. Non-finite input is an error; on any error `dst` is
/// left untouched.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    super::check_lengths(GgmlType::Q8_0, src.len() as u64, dst.len())?;
    if let Some((index, &value)) = src.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(QuantError::NonFinite { index, value });
    }
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(BLOCK_BYTES)) {
        if let (Ok(x), Ok(y)) = (
            <&[f32; QK]>::try_from(x),
            <&mut [u8; BLOCK_BYTES]>::try_from(y),
        ) {
            quantize_block(x, y);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half a quantization step: the ideal bound on |x - deq(q(x))| in units of `d`.
    const HALF_STEP: f64 = 0.5;
    /// Slack in units of `d` for the f32 roundings of `1/d`, `x * id` and `q * d`:
    /// each is at most 127 * 2^-24 ≈ 7.6e-6 of `d`; 1e-4 covers them with margin.
    const F32_SLACK: f64 = 1e-4;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64) / ((1u64 << 53) as f64) * 2.0 - 1.0 // [-1, 1)
    }

    fn round_trip(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut q = vec![0u8; x.len() / QK * BLOCK_BYTES];
        quantize_row_q8_0(x, &mut q).unwrap();
        let mut y = vec![0.0f32; x.len()];
        super::super::dequantize_row(GgmlType::Q8_0, &q, &mut y).unwrap();
        (q, y)
    }

    /// Checks, per block, max |x - deq(q(x))| <= d/2 (+ f32 slack) + 127 * |d - f16(d)|.
    /// The last term is the error of storing the scale as f16 (zero when `d` is exactly
    /// representable, e.g. `amax = 127 * 2^k`; about d * 127 * 2^-11 otherwise).
    fn check_bound(x: &[f32]) {
        let (q, y) = round_trip(x);
        for (b, (xb, yb)) in x.chunks(QK).zip(y.chunks(QK)).enumerate() {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = f64::from(amax / QMAX);
            let d16 = f64::from(f16_at(&q[b * BLOCK_BYTES..], 0));
            let bound = d * (HALF_STEP + F32_SLACK) + f64::from(QMAX) * (d - d16).abs();
            let err = xb
                .iter()
                .zip(yb)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                .fold(0.0, f64::max);
            assert!(
                err <= bound,
                "block {b}: err {err} > bound {bound} (d {d}, d16 {d16})"
            );
        }
    }

    #[test]
    fn round_trip_random_magnitudes() {
        let mut seed = 7;
        for exp in -6..=6 {
            let scale = 10f64.powi(exp);
            let x: Vec<f32> = (0..QK * 16)
                .map(|_| (lcg(&mut seed) * scale) as f32)
                .collect();
            check_bound(&x);
        }
    }

    #[test]
    fn exact_scale_gives_tight_half_step_bound() {
        // amax = 127 * 2^k: d is a power of two, exact in f16, so the bound is d/2 (+ slack).
        let mut seed = 3;
        for k in [-10i32, -3, 0, 5, 15] {
            let d = 2f32.powi(k);
            let mut x: Vec<f32> = (0..QK)
                .map(|_| (lcg(&mut seed) * 127.0) as f32 * d)
                .collect();
            x[5] = -127.0 * d;
            let (q, y) = round_trip(&x);
            assert_eq!(f16_at(&q, 0), d);
            for (a, b) in x.iter().zip(&y) {
                let err = f64::from(*a) - f64::from(*b);
                assert!(
                    err.abs() <= f64::from(d) * (HALF_STEP + F32_SLACK),
                    "{a} {b}"
                );
            }
        }
    }

    #[test]
    fn all_zero_block() {
        let (q, y) = round_trip(&[0.0; QK]);
        assert!(q.iter().all(|b| *b == 0));
        assert!(y.iter().all(|v| v.to_bits() == 0));
        // negative zeros quantize to 0 as well
        let (q, _) = round_trip(&[-0.0; QK]);
        assert!(q.iter().all(|b| *b == 0));
    }

    #[test]
    fn ties_round_away_from_zero() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0; // d = 1
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        x[4] = -0.5;
        x[5] = 125.5;
        let mut q = [0u8; BLOCK_BYTES];
        quantize_block(&x, &mut q);
        let qs: Vec<i8> = q[2..8].iter().map(|b| *b as i8).collect();
        assert_eq!(qs, [127, 3, -3, 1, -1, 126]);
    }

    #[test]
    fn huge_values() {
        // Largest amax whose d still fits f16 after rounding: bound holds.
        let mut seed = 11;
        let x: Vec<f32> = (0..QK).map(|_| (lcg(&mut seed) * 8.0e6) as f32).collect();
        check_bound(&x);
        // Beyond: the stored scale overflows to +inf, as in ggml and gguf-py. No panic.
        let mut x = [1.0e30f32; QK];
        x[1] = -3.0e38;
        x[2] = 0.0;
        let (q, y) = round_trip(&x);
        assert_eq!(f16_at(&q, 0), f32::INFINITY);
        assert_eq!(q[3] as i8, -127);
        assert!(y[1] == f32::NEG_INFINITY && y[2].is_nan());
    }

    #[test]
    fn tiny_values() {
        let mut seed = 5;
        for scale in [1e-5, 1e-8, 1e-20, 1e-30] {
            let x: Vec<f32> = (0..QK * 4)
                .map(|_| (lcg(&mut seed) * scale) as f32)
                .collect();
            check_bound(&x);
        }
        // f32 subnormals: 1/d overflows, all quants are 0, the scale is 0.
        let mut x = [1.0e-40f32; QK];
        x[1] = -2.0e-39;
        x[2] = 0.0;
        let (q, y) = round_trip(&x);
        assert!(q.iter().all(|b| *b == 0));
        assert!(y.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn non_finite_input_is_an_error() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = [1.0f32; QK * 2];
            x[37] = bad;
            let mut dst = [0xAAu8; BLOCK_BYTES * 2];
            let e = quantize_row_q8_0(&x, &mut dst).unwrap_err();
            assert!(matches!(e, QuantError::NonFinite { index: 37, .. }), "{e}");
            assert!(dst.iter().all(|b| *b == 0xAA), "dst untouched on error");
        }
    }

    #[test]
    fn bad_lengths() {
        let x = [0.0f32; QK * 2];
        let mut dst = [0u8; BLOCK_BYTES * 2];
        assert!(matches!(
            quantize_row_q8_0(&x[..QK + 1], &mut dst),
            Err(QuantError::NotBlockMultiple { .. })
        ));
        assert!(matches!(
            quantize_row_q8_0(&x, &mut dst[..BLOCK_BYTES]),
            Err(QuantError::ByteLength { .. })
        ));
        assert!(matches!(
            quantize_row_q8_0(&x[..QK], &mut dst),
            Err(QuantError::ByteLength { .. })
        ));
        quantize_row_q8_0(&[], &mut []).unwrap();
    }
}
