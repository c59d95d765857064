//! Block formats: one file per format with the block layout, a scalar reference dequantizer
//! and (for Q8_0) the reference quantizer.
//!
//! Every format file documents its block layout with byte offsets. Blocks are parsed from
//! `&[u8]` with little-endian byte reads only: tensor data comes from an mmap at arbitrary
//! alignment, so nothing here ever reinterprets bytes as wider types in place.
//!
//! These scalar routines are the exactness reference for faster kernels. They are checked
//! bit for bit against llama.cpp's gguf-py (`gguf.quants.dequantize` / `quantize`) on the
//! vectors in `testdata/quant/` (see the README there). Floating-point operation order is
//! that of gguf-py, which for every format here is also the order of ggml's C reference
//! (`dequantize_row_*` in ggml-quants.c) as written.
//!
//! # Why the order cannot matter (a guide for SIMD kernels)
//!
//! Every f16 scale has at most 11 significant bits, and every integer it meets is small:
//! sub-block scales of at most 6 bits (Q2_K/Q3_K/Q4_K/Q5_K) or 8 bits (Q6_K), quants of at
//! most 8 bits. So each product of the formula — `d * sc`, `(d * sc) * q`, `d * q`,
//! `dmin * m` — needs at most 11 + 7 + 5 = 23 significant bits (Q6_K, the widest; Q5_K
//! needs 11 + 6 + 5 = 22) and is **exact** in f32, with no overflow or underflow possible
//! (|d| ≤ 65504, the smallest f16 subnormal 2^-24 is a normal f32). The only rounding in
//! any format is the final `+ m` / `- dmin * m` of Q4_1, Q5_1, Q2_K, Q4_K and Q5_K, one
//! rounding of the exact real value. Hence any association of the products (e.g.
//! `d * (sc * q)`), and fusing the last step into an FMA (`fma(d1, q, -m1)`, which GCC may
//! emit for ggml's `x0*d + m` under its default `-ffp-contract=fast`), give the same bits.
//! F16/BF16/F32 widening is exact. Q8_K (f32 scale) is a single product. What a fast kernel
//! must keep is: compute in f32 (not f16) and round the min step exactly once.
//!
//! Supported for dequantization: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
//! Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS (IQ4's table values are 7-bit integers and its
//! scales 6-bit, so its products are exact too). Q8_1 is refused with [`QuantError::Unsupported`]: it is an
//! activation-only format for which ggml itself defines no dequantizer (`to_float` is unset).

use std::fmt;

use crate::gguf::GgmlType;

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_k;

pub use q8_0::quantize_row_q8_0;

/// Errors of the row (de)quantization entry points. Bad lengths and unsupported types are
/// reported here; nothing in this module panics on caller-supplied sizes.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantError {
    /// The element count is not a multiple of the type's block size.
    NotBlockMultiple {
        ty: GgmlType,
        n_elements: u64,
        block_size: usize,
    },
    /// The byte buffer's length is not `ty.row_bytes(n_elements)`.
    ByteLength {
        ty: GgmlType,
        n_elements: u64,
        expected: u64,
        actual: usize,
    },
    /// `ty.row_bytes(n_elements)` overflows `u64` / `usize`.
    SizeOverflow { ty: GgmlType, n_elements: u64 },
    /// The operation is not available for this type.
    Unsupported { ty: GgmlType, op: &'static str },
    /// Quantization input holds a NaN or an infinity at `index`.
    NonFinite { index: usize, value: f32 },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NotBlockMultiple {
                ty,
                n_elements,
                block_size,
            } => write!(
                f,
                "{n_elements} elements is not a multiple of the {ty} block size {block_size}"
            ),
            QuantError::ByteLength {
                ty,
                n_elements,
                expected,
                actual,
            } => write!(
                f,
                "{n_elements} {ty} elements take {expected} bytes, got a buffer of {actual} bytes"
            ),
            QuantError::SizeOverflow { ty, n_elements } => {
                write!(f, "byte size of {n_elements} {ty} elements overflows")
            }
            QuantError::Unsupported { ty, op } => write!(f, "{op} is not supported for type {ty}"),
            QuantError::NonFinite { index, value } => {
                write!(f, "non-finite input {value} at index {index}")
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// Checks that `n_elements` of `ty` occupy exactly `n_bytes` bytes.
pub(crate) fn check_lengths(
    ty: GgmlType,
    n_elements: u64,
    n_bytes: usize,
) -> Result<(), QuantError> {
    let block_size = ty.block_size();
    // `is_multiple_of` would need Rust 1.87; the workspace declares rust-version 1.80.
    #[allow(clippy::manual_is_multiple_of)]
    if n_elements % block_size as u64 != 0 {
        return Err(QuantError::NotBlockMultiple {
            ty,
            n_elements,
            block_size,
        });
    }
    let expected = ty
        .row_bytes(n_elements)
        .ok_or(QuantError::SizeOverflow { ty, n_elements })?;
    if expected != n_bytes as u64 {
        return Err(QuantError::ByteLength {
            ty,
            n_elements,
            expected,
            actual: n_bytes,
        });
    }
    Ok(())
}

/// Dequantizes one row: `src` holds `dst.len()` elements of type `ty` (`dst.len()` a
/// multiple of `ty.block_size()`, `src.len() == ty.row_bytes(dst.len())`). On error `dst`
/// is left untouched.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let n = dst.len() as u64;
    // Refuse unsupported types first so the error names the type, whatever the lengths.
    let run = dequantizer(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "dequantization",
    })?;
    check_lengths(ty, n, src.len())?;
    run(src, dst);
    Ok(())
}

/// Dequantizes a whole tensor of `n_elements` elements into a new vector (the f32 reference
/// path). `src.len()` must be `ty.row_bytes(n_elements)`; the length is checked before
/// anything is allocated.
pub fn dequantize_tensor(
    ty: GgmlType,
    src: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, QuantError> {
    let run = dequantizer(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "dequantization",
    })?;
    check_lengths(ty, n_elements as u64, src.len())?;
    let mut out = vec![0.0f32; n_elements];
    run(src, &mut out);
    Ok(out)
}

/// Whether [`dequantize_row`] / [`dequantize_tensor`] support `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    dequantizer(ty).is_some()
}

/// A whole-row dequantizer; callers have validated the lengths.
type RowFn = fn(&[u8], &mut [f32]);

fn dequantizer(ty: GgmlType) -> Option<RowFn> {
    use GgmlType::*;
    let f: RowFn = match ty {
        F32 => f32::dequantize,
        F16 => f16::dequantize,
        BF16 => bf16::dequantize,
        Q4_0 => q4_0::dequantize,
        Q4_1 => q4_1::dequantize,
        Q5_0 => q5_0::dequantize,
        Q5_1 => q5_1::dequantize,
        Q8_0 => q8_0::dequantize,
        Q2K => q2_k::dequantize,
        Q3K => q3_k::dequantize,
        Q4K => q4_k::dequantize,
        Q5K => q5_k::dequantize,
        Q6K => q6_k::dequantize,
        Q8K => q8_k::dequantize,
        IQ4NL => iq4_nl::dequantize,
        IQ4XS => iq4_xs::dequantize,
        // ggml has no `to_float` for Q8_1 (activation-only format), so neither do we.
        Q8_1 => return None,
    };
    Some(f)
}

/// Runs `f` on each (block, output block) pair. `src` / `dst` lengths have been validated
/// by the caller; a trailing partial chunk (impossible after validation) is ignored rather
/// than panicking.
#[inline(always)]
pub(crate) fn for_each_block<const B: usize, const Q: usize>(
    src: &[u8],
    dst: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; Q]),
) {
    for (b, y) in src.chunks_exact(B).zip(dst.chunks_exact_mut(Q)) {
        if let (Ok(b), Ok(y)) = (<&[u8; B]>::try_from(b), <&mut [f32; Q]>::try_from(y)) {
            f(b, y);
        }
    }
}

/// The f16 at byte `off` of `b` (little endian), widened exactly to f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::f16_bits_to_f32(u16::from_le_bytes([b[off], b[off + 1]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_but_q8_1_dequantizes_zero_bytes() {
        for ty in GgmlType::ALL {
            let n = ty.block_size() * 2;
            let src = vec![0u8; ty.type_size() * 2];
            let mut dst = vec![1.0f32; n];
            let r = dequantize_row(ty, &src, &mut dst);
            if ty == GgmlType::Q8_1 {
                assert!(!can_dequantize(ty));
                let e = r.unwrap_err();
                assert!(matches!(e, QuantError::Unsupported { .. }));
                assert!(e.to_string().contains("q8_1"), "{e}");
            } else {
                r.unwrap();
                assert!(dst.iter().all(|v| *v == 0.0), "{ty}");
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        for ty in GgmlType::ALL {
            if ty == GgmlType::Q8_1 {
                continue;
            }
            let bs = ty.block_size();
            let ts = ty.type_size();
            // dst not a block multiple
            if bs > 1 {
                let mut dst = vec![0.0f32; bs + 1];
                let e = dequantize_row(ty, &vec![0u8; ts * 2], &mut dst).unwrap_err();
                assert!(
                    matches!(e, QuantError::NotBlockMultiple { .. }),
                    "{ty}: {e}"
                );
                assert!(!e.to_string().is_empty());
            }
            // src too short / too long
            let mut dst = vec![0.0f32; bs * 2];
            for len in [0, ts * 2 - 1, ts * 2 + 1, ts * 3] {
                let e = dequantize_row(ty, &vec![0u8; len], &mut dst).unwrap_err();
                assert_eq!(
                    e,
                    QuantError::ByteLength {
                        ty,
                        n_elements: (bs * 2) as u64,
                        expected: (ts * 2) as u64,
                        actual: len
                    }
                );
            }
            // empty row is fine
            dequantize_row(ty, &[], &mut []).unwrap();
            assert_eq!(dequantize_tensor(ty, &[], 0).unwrap(), Vec::<f32>::new());
            // tensor helper: mismatches and overflow, checked before allocating
            assert!(dequantize_tensor(ty, &vec![0u8; ts], bs * 1000).is_err());
            let huge = (usize::MAX / bs) * bs;
            assert!(dequantize_tensor(ty, &[0u8; 4], huge).is_err());
            assert!(can_dequantize(ty));
        }
    }

    #[test]
    fn dequantize_tensor_matches_row() {
        let src: Vec<u8> = (0..q4_k::BLOCK_BYTES * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let mut row = vec![0.0f32; 768];
        dequantize_row(GgmlType::Q4K, &src, &mut row).unwrap();
        let t = dequantize_tensor(GgmlType::Q4K, &src, 768).unwrap();
        assert_eq!(
            row.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            t.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn unaligned_source_is_fine() {
        // Same block bytes at offset 0 and offset 1 of a buffer dequantize identically.
        let block: Vec<u8> = (0..q6_k::BLOCK_BYTES)
            .map(|i| (i * 91 % 256) as u8)
            .collect();
        let mut buf = vec![0u8; block.len() + 1];
        buf[1..].copy_from_slice(&block);
        let mut a = vec![0.0f32; 256];
        let mut b = vec![0.0f32; 256];
        dequantize_row(GgmlType::Q6K, &block, &mut a).unwrap();
        dequantize_row(GgmlType::Q6K, &buf[1..], &mut b).unwrap();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
