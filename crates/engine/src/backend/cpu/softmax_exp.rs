//! The exponential of the attention softmax: `exp(x)` for `x <= 0` (a score minus the row's
//! maximum), computed with the same f32 operations on every path, so the SIMD versions give
//! the scalar bits and attention stays bit-identical across paths (docs/KERNELS.md V17).
//!
//! `x < -87` gives `0` (the true value is below 1.7e-38, nothing next to the maximum's weight
//! of exactly 1); NaN gives the same NaN. Otherwise, with no FMA anywhere:
//! 1. `t = x * LOG2E + MAGIC` (`MAGIC = 1.5 * 2^23`, so `t` holds `n = round(x * log2 e)` in
//!    its low mantissa bits) and `n = t - MAGIC` (exact);
//! 2. `r = (x - n * LN2_HI) - n * LN2_LO` (Cody-Waite; `n * LN2_HI` is exact), `|r| <= 0.35`;
//! 3. `y = (p(r) * r^2 + r) + 1` with Cephes' degree-5 `p` (Horner, mul then add);
//! 4. `y * 2^n`, the power built from the bits of `t` (`n` in -126..=0: a normal float).
//!
//! Accuracy: within 0.8 ulp of the exact value on [-87, 0] (`exp_is_accurate`, which allows 2);
//! libm's `expf`, used before, is within 1 ulp too.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const MAGIC: f32 = 12_582_912.0;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
];
const LOW: f32 = -87.0;

/// `exp(x)` for `x <= 0`, the canonical operations (see the module docs).
#[inline(always)]
pub(super) fn exp_neg(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < LOW {
        return 0.0;
    }
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = P[0];
    for &c in &P[1..] {
        p = p * r + c;
    }
    let y = (p * (r * r) + r) + 1.0;
    let k = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    y * f32::from_bits(((k + 127) as u32) << 23)
}

/// `s[j] = exp_neg(s[j] - max)` for every `j`: AVX-512 or AVX2 lanes where present, the same
/// bits as the scalar loop.
pub(super) fn exp_sub_max(s: &mut [f32], max: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512 F is present.
            return unsafe { x86::exp_sub_max_avx512(s, max) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 is present.
            return unsafe { x86::exp_sub_max_avx2(s, max) };
        }
    }
    exp_sub_max_scalar(s, max)
}

#[inline(always)]
fn exp_sub_max_scalar(s: &mut [f32], max: f32) {
    for v in s {
        *v = exp_neg(*v - max);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Generates `$name`: 1-3 of the module docs on `$w` lanes, then the scalar loop for the
    /// tail (the same function, so the same bits).
    macro_rules! exp_simd {
        ($name:ident, $feat:literal, $w:literal, $v:ty, $set1:ident, $load:ident, $store:ident,
         $add:ident, $sub:ident, $mul:ident, $blend:ident, $pow:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(s: &mut [f32], max: f32) {
                let n = s.len() / $w * $w;
                let (vmax, vlog2e, vmagic) = ($set1(max), $set1(LOG2E), $set1(MAGIC));
                let (hi, lo, one) = ($set1(LN2_HI), $set1(LN2_LO), $set1(1.0));
                let p: [$v; 6] = [
                    $set1(P[0]),
                    $set1(P[1]),
                    $set1(P[2]),
                    $set1(P[3]),
                    $set1(P[4]),
                    $set1(P[5]),
                ];
                let mut j = 0;
                while j < n {
                    let ptr = s.as_mut_ptr().add(j);
                    let x = $sub($load(ptr), vmax);
                    let t = $add($mul(x, vlog2e), vmagic);
                    let nn = $sub(t, vmagic);
                    let r = $sub($sub(x, $mul(nn, hi)), $mul(nn, lo));
                    let mut q = p[0];
                    for c in &p[1..] {
                        q = $add($mul(q, r), *c);
                    }
                    let y = $add($add($mul(q, $mul(r, r)), r), one);
                    let y = $mul(y, $pow(t, vmagic));
                    $store(ptr, $blend(x, y));
                    j += $w;
                }
                exp_sub_max_scalar(&mut s[n..], max);
            }
        };
    }

    /// `2^n` from the bits of `t`: `((bits(t) - bits(MAGIC)) + 127) << 23`.
    #[inline(always)]
    unsafe fn pow512(t: __m512, magic: __m512) -> __m512 {
        let k = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
        _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            k,
            _mm512_set1_epi32(127),
        )))
    }

    /// NaN lanes keep `x`, lanes below `LOW` become 0, the others `y`.
    #[inline(always)]
    unsafe fn blend512(x: __m512, y: __m512) -> __m512 {
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(LOW));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_mov_ps(_mm512_maskz_mov_ps(keep, y), nan, x)
    }

    #[inline(always)]
    unsafe fn pow256(t: __m256, magic: __m256) -> __m256 {
        let k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    }

    #[inline(always)]
    unsafe fn blend256(x: __m256, y: __m256) -> __m256 {
        let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(LOW));
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        _mm256_blendv_ps(_mm256_and_ps(keep, y), x, nan)
    }

    exp_simd!(
        exp_sub_max_avx512,
        "avx512f",
        16,
        __m512,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_add_ps,
        _mm512_sub_ps,
        _mm512_mul_ps,
        blend512,
        pow512
    );
    exp_simd!(
        exp_sub_max_avx2,
        "avx2",
        8,
        __m256,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        blend256,
        pow256
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = 0f32;
        while x >= LOW {
            let want = (x as f64).exp();
            let got = exp_neg(x) as f64;
            let ulp = (want as f32).abs() * f32::EPSILON; // one ulp at the value's binade
            worst = worst.max((got - want).abs() / ulp as f64);
            x -= 0.000_37;
        }
        assert_eq!(exp_neg(0.0), 1.0);
        eprintln!("exp_neg: worst error {worst:.2} ulp on [-87, 0]");
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_neg(-87.5), 0.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert!(exp_neg(f32::NAN).is_nan());
    }

    /// Every path gives the scalar bits, on every length (the tails) and on special values.
    #[test]
    fn simd_exp_matches_scalar_bitwise() {
        let mut seed = 99u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * -100.0
        };
        for len in 0..70 {
            let mut s: Vec<f32> = (0..len).map(|_| next()).collect();
            for (i, v) in s.iter_mut().enumerate() {
                match i % 11 {
                    3 => *v = f32::NAN,
                    5 => *v = f32::NEG_INFINITY,
                    7 => *v = -0.0,
                    9 => *v = -87.0,
                    _ => {}
                }
            }
            for max in [0.0, 1.5, -3.0] {
                let mut want = s.clone();
                exp_sub_max_scalar(&mut want, max);
                let mut got = s.clone();
                exp_sub_max(&mut got, max);
                let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(b(&got), b(&want), "len {len} max {max}");
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") {
                    let mut got = s.clone();
                    // SAFETY: AVX2 is present.
                    unsafe { x86::exp_sub_max_avx2(&mut got, max) };
                    assert_eq!(b(&got), b(&want), "avx2 len {len} max {max}");
                }
            }
        }
    }
}
