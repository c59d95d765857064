//! Bit-exact comparison of the scalar dequantizers (and the Q8_0 quantizer) against vectors
//! produced by llama.cpp's gguf-py; see `testdata/quant/README.md` for their provenance.

use std::path::PathBuf;

use verispec::gguf::GgmlType;
use verispec::quant::{dequantize_row, dequantize_tensor, quantize_row_q8_0};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/quant")
}

fn read(name: &str) -> Vec<u8> {
    let p = data_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn read_f32(name: &str) -> Vec<f32> {
    let b = read(name);
    assert_eq!(b.len() % 4, 0, "{name}");
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Asserts bit equality, reporting the first mismatch.
fn assert_bits_eq(what: &str, bs: usize, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!(
            "{what}: first mismatch at element {i} (block {}, element {} in block): got {} ({:#010x}), want {} ({:#010x})",
            i / bs,
            i % bs,
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
}

fn check(ty: GgmlType, name: &str) {
    let blocks = read(&format!("{name}.blocks.bin"));
    let want = read_f32(&format!("{name}.f32.bin"));
    let (bs, ts) = (ty.block_size(), ty.type_size());
    assert!(!want.is_empty());
    assert_eq!(
        ty.row_bytes(want.len() as u64),
        Some(blocks.len() as u64),
        "{name}: vector sizes"
    );

    let mut got = vec![f32::from_bits(0x7fc0_dead); want.len()];
    dequantize_row(ty, &blocks, &mut got).unwrap();
    assert_bits_eq(name, bs, &got, &want);

    // Same through the tensor helper, and block by block at an odd (unaligned) offset.
    let t = dequantize_tensor(ty, &blocks, want.len()).unwrap();
    assert_bits_eq(name, bs, &t, &want);
    let mut shifted = vec![0u8; blocks.len() + 1];
    shifted[1..].copy_from_slice(&blocks);
    let mut one = vec![0.0f32; bs];
    for (b, w) in shifted[1..].chunks(ts).zip(want.chunks(bs)) {
        dequantize_row(ty, b, &mut one).unwrap();
        assert_bits_eq(name, bs, &one, w);
    }
}

#[test]
fn f16_vectors() {
    check(GgmlType::F16, "f16");
}

#[test]
fn bf16_vectors() {
    check(GgmlType::BF16, "bf16");
}

#[test]
fn q4_0_vectors() {
    check(GgmlType::Q4_0, "q4_0");
}

#[test]
fn q4_1_vectors() {
    check(GgmlType::Q4_1, "q4_1");
}

#[test]
fn q5_0_vectors() {
    check(GgmlType::Q5_0, "q5_0");
}

#[test]
fn q5_1_vectors() {
    check(GgmlType::Q5_1, "q5_1");
}

#[test]
fn q8_0_vectors() {
    check(GgmlType::Q8_0, "q8_0");
}

#[test]
fn q2_k_vectors() {
    check(GgmlType::Q2K, "q2_k");
}

#[test]
fn q3_k_vectors() {
    check(GgmlType::Q3K, "q3_k");
}

#[test]
fn q4_k_vectors() {
    check(GgmlType::Q4K, "q4_k");
}

#[test]
fn q5_k_vectors() {
    check(GgmlType::Q5K, "q5_k");
}

#[test]
fn q6_k_vectors() {
    check(GgmlType::Q6K, "q6_k");
}

#[test]
fn iq4_nl_vectors() {
    check(GgmlType::IQ4NL, "iq4_nl");
}

#[test]
fn iq4_xs_vectors() {
    check(GgmlType::IQ4XS, "iq4_xs");
}

#[test]
fn q8_0_quantize_vectors() {
    let x = read_f32("q8_0.quant_in.f32.bin");
    let want = read("q8_0.quant_out.bin");
    let mut got = vec![0u8; want.len()];
    quantize_row_q8_0(&x, &mut got).unwrap();
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let (b, off) = (i / 34, i % 34);
        panic!(
            "q8_0 quantize: first mismatch at byte {i} (block {b}, offset {off}): got {:#04x}, want {:#04x}; block input {:?}",
            got[i],
            want[i],
            &x[b * 32..b * 32 + 32]
        );
    }
}
