//! GGUF reader/writer hardening: round trips through `GgufWriter`, and malformed images that
//! must be rejected with the right error kind (never a panic).
//!
//! Malformed images are made by patching fields of a valid image at offsets found by
//! `locate`, a small independent walker over the GGUF layout.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use verispec::gguf::reader::DEFAULT_ALIGNMENT;
use verispec::gguf::writer::{f32_array, i32_array, str_array};
use verispec::gguf::{
    parse_header, GgmlType, GgufError, GgufFile, GgufWriter, TensorInfo, Value, ValueType,
};

// ------------------------------------------------------------------------------------------
// Allocation accounting: a per-thread peak of live heap bytes, so that parallel tests do not
// disturb each other.
// ------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        account(l.size() as isize);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: AllocLayout) -> *mut u8 {
        account(l.size() as isize);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        account(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, new: usize) -> *mut u8 {
        account(new as isize - l.size() as isize);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak heap bytes allocated on this thread by `f` beyond what was live when it started.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(|p| p.get()) - base).max(0) as usize)
}

// ------------------------------------------------------------------------------------------
// Valid images
// ------------------------------------------------------------------------------------------

/// Deterministic pseudo-random bytes.
fn pseudo_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// `levels` nested arrays; the innermost is an array of u8.
fn nest(levels: usize, inner: Vec<Value>) -> Value {
    let mut v = Value::Array(ValueType::U8, inner);
    for _ in 1..levels {
        v = Value::Array(ValueType::Array, vec![v]);
    }
    v
}

/// Every scalar type (with boundary values), strings, string arrays, numeric arrays, an empty
/// array and nested arrays (array of arrays, including an array of arrays of arrays).
fn sample_metadata() -> Vec<(String, Value)> {
    let kv = |k: &str, v: Value| (k.to_string(), v);
    vec![
        kv("general.architecture", Value::String("llama".into())),
        kv("general.name", Value::String("ünïcödé ✓ name".into())),
        kv("test.empty_str", Value::String(String::new())),
        kv("test.u8", Value::U8(u8::MAX)),
        kv("test.i8", Value::I8(i8::MIN)),
        kv("test.u16", Value::U16(u16::MAX)),
        kv("test.i16", Value::I16(i16::MIN)),
        kv("test.u32", Value::U32(u32::MAX)),
        kv("test.i32", Value::I32(i32::MIN)),
        kv("test.f32", Value::F32(-1.5e-7)),
        kv("test.f32_inf", Value::F32(f32::NEG_INFINITY)),
        kv("test.bool", Value::Bool(true)),
        kv("test.u64", Value::U64(u64::MAX)),
        kv("test.i64", Value::I64(i64::MIN)),
        kv("test.f64", Value::F64(1.0e300)),
        kv(
            "tokenizer.ggml.tokens",
            str_array(&["<s>", "</s>", "hello", "", "é", "Ġworld"]),
        ),
        kv(
            "tokenizer.ggml.scores",
            f32_array(&[0.0, -1.0, 2.5, 3.25, -0.0, 1e-30]),
        ),
        kv("tokenizer.ggml.token_type", i32_array(&[1, 3, 1, 1, 6, -2])),
        kv(
            "test.bool_arr",
            Value::Array(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
        ),
        kv(
            "test.u64_arr",
            Value::Array(ValueType::U64, vec![Value::U64(0), Value::U64(u64::MAX)]),
        ),
        kv("test.empty_arr", Value::Array(ValueType::U8, vec![])),
        kv(
            "test.nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(
                        ValueType::U8,
                        vec![Value::U8(1), Value::U8(2), Value::U8(3)],
                    ),
                    str_array(&["x", "yz"]),
                    Value::Array(
                        ValueType::Array,
                        vec![Value::Array(ValueType::I64, vec![Value::I64(-1)])],
                    ),
                    Value::Array(ValueType::F64, vec![]),
                ],
            ),
        ),
        kv("test.nest8", nest(8, vec![Value::U8(42)])),
    ]
}

/// Three small tensors of different types. Their names all have the same length, so one can
/// be renamed into another by patching bytes.
const TENSORS: [(&str, &[u64], GgmlType); 3] = [
    ("a.f32", &[8, 3], GgmlType::F32),
    ("b.q80", &[64, 2], GgmlType::Q8_0),
    ("c.q4k", &[256], GgmlType::Q4K),
];

fn sample_writer(version: u32, alignment: Option<u64>) -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set_version(version).unwrap();
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    for (k, v) in sample_metadata() {
        w.set_kv(k, v);
    }
    for (name, shape, ty) in TENSORS {
        w.add_tensor(name, shape, ty).unwrap();
    }
    w
}

/// Write the image; tensor data are pseudo-random bytes. Returns the image and each tensor's data.
fn write_image(w: GgufWriter) -> (Vec<u8>, Vec<Vec<u8>>) {
    let tensors = w.tensors().to_vec();
    let data: Vec<Vec<u8>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| pseudo_bytes(t.n_bytes as usize, i as u64 + 1))
        .collect();
    let mut dw = w.begin(Vec::new()).unwrap();
    for (t, d) in tensors.iter().zip(&data) {
        dw.write_tensor(&t.name, d).unwrap();
    }
    (dw.finish().unwrap(), data)
}

fn sample_image() -> Vec<u8> {
    write_image(sample_writer(3, None)).0
}

fn parse_ok(bytes: Vec<u8>) -> GgufFile {
    match catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(bytes))) {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => panic!("valid image rejected: {e} ({})", e.kind()),
        Err(_) => panic!("parser panicked on a valid image"),
    }
}

/// Parse `bytes` (with both entry points) and assert the error kind. Never lets a panic pass.
#[track_caller]
fn expect_err(bytes: Vec<u8>, kind: &str) -> GgufError {
    let header = catch_unwind(AssertUnwindSafe(|| {
        parse_header(&bytes).err().map(|e| e.kind())
    }));
    let e = match catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(bytes))) {
        Err(_) => panic!("parser panicked; expected {kind}"),
        Ok(Ok(_)) => panic!("parsed OK; expected {kind}"),
        Ok(Err(e)) => e,
    };
    assert_eq!(e.kind(), kind, "wrong error: {e}");
    assert!(!e.to_string().is_empty());
    assert_eq!(
        header.expect("parse_header panicked"),
        Some(kind),
        "parse_header disagrees"
    );
    e
}

/// Metadata equality that treats floats bitwise (so -0.0 and NaN payloads count).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(ta, xa), Value::Array(tb, xb)) => {
            ta == tb && xa.len() == xb.len() && xa.iter().zip(xb).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

#[track_caller]
fn assert_same_metadata(got: &[(String, Value)], want: &[(String, Value)]) {
    assert_eq!(got.len(), want.len(), "metadata count");
    for ((gk, gv), (wk, wv)) in got.iter().zip(want) {
        assert_eq!(gk, wk);
        assert!(same_value(gv, wv), "{gk}: got {gv:?}, want {wv:?}");
    }
}

// ------------------------------------------------------------------------------------------
// Locating fields in an image
// ------------------------------------------------------------------------------------------

#[derive(Debug)]
struct KvLoc {
    key: String,
    key_len_at: usize,
    key_at: usize,
    type_at: usize,
    /// Start of the value: for a string its length, for an array its element type.
    value_at: usize,
}

#[derive(Debug)]
struct TensorLoc {
    name: String,
    name_len_at: usize,
    name_at: usize,
    n_dims_at: usize,
    dims_at: Vec<usize>,
    type_at: usize,
    offset_at: usize,
}

#[derive(Debug)]
struct Layout {
    kvs: Vec<KvLoc>,
    tensors: Vec<TensorLoc>,
    /// First byte after the last tensor info (before padding).
    header_end: usize,
}

impl Layout {
    fn kv(&self, key: &str) -> &KvLoc {
        self.kvs
            .iter()
            .find(|k| k.key == key)
            .expect("key in layout")
    }
    fn tensor(&self, name: &str) -> &TensorLoc {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .expect("tensor in layout")
    }
}

const N_TENSORS_AT: usize = 8;
const N_KV_AT: usize = 16;

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The end of a value of type `ty` starting at `pos`.
fn skip_value(b: &[u8], pos: usize, ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => pos + 1,
        2 | 3 => pos + 2,
        4..=6 => pos + 4,
        10..=12 => pos + 8,
        8 => pos + 8 + rd_u64(b, pos) as usize,
        9 => {
            let ety = rd_u32(b, pos);
            let n = rd_u64(b, pos + 4);
            let mut p = pos + 12;
            for _ in 0..n {
                p = skip_value(b, p, ety);
            }
            p
        }
        _ => panic!("unknown value type {ty} at {pos}"),
    }
}

/// Walk a valid image and record where each field is.
fn locate(b: &[u8]) -> Layout {
    assert_eq!(&b[..4], b"GGUF");
    let n_tensors = rd_u64(b, N_TENSORS_AT);
    let n_kv = rd_u64(b, N_KV_AT);
    let mut p = 24;
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key_len_at = p;
        let len = rd_u64(b, p) as usize;
        let key_at = p + 8;
        let key = String::from_utf8(b[key_at..key_at + len].to_vec()).unwrap();
        let type_at = key_at + len;
        let value_at = type_at + 4;
        p = skip_value(b, value_at, rd_u32(b, type_at));
        kvs.push(KvLoc {
            key,
            key_len_at,
            key_at,
            type_at,
            value_at,
        });
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        let name_len_at = p;
        let len = rd_u64(b, p) as usize;
        let name_at = p + 8;
        let name = String::from_utf8(b[name_at..name_at + len].to_vec()).unwrap();
        let n_dims_at = name_at + len;
        let n_dims = rd_u32(b, n_dims_at) as usize;
        let dims_at: Vec<usize> = (0..n_dims).map(|d| n_dims_at + 4 + 8 * d).collect();
        let type_at = n_dims_at + 4 + 8 * n_dims;
        let offset_at = type_at + 4;
        p = offset_at + 8;
        tensors.push(TensorLoc {
            name,
            name_len_at,
            name_at,
            n_dims_at,
            dims_at,
            type_at,
            offset_at,
        });
    }
    Layout {
        kvs,
        tensors,
        header_end: p,
    }
}

/// A patched copy of `image`.
fn patched(image: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = image.to_vec();
    f(&mut b);
    b
}

// ------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------

#[test]
fn locate_agrees_with_reader() {
    let img = sample_image();
    let lay = locate(&img);
    let f = parse_ok(img.clone());
    assert_eq!(lay.kvs.len(), f.metadata.len());
    assert_eq!(lay.tensors.len(), f.tensors.len());
    assert_eq!(
        f.data_offset,
        (lay.header_end as u64).div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
    );
    for (t, loc) in f.tensors.iter().zip(&lay.tensors) {
        assert_eq!(t.name, loc.name);
        assert_eq!(rd_u64(&img, loc.offset_at), t.offset);
        assert_eq!(rd_u32(&img, loc.type_at), t.ggml_type.id());
        assert_eq!(rd_u32(&img, loc.n_dims_at) as usize, t.shape.len());
        assert_eq!(rd_u64(&img, loc.name_len_at) as usize, t.name.len());
        assert_eq!(
            &img[loc.name_at..loc.name_at + t.name.len()],
            t.name.as_bytes()
        );
        for (d, &at) in loc.dims_at.iter().enumerate() {
            assert_eq!(rd_u64(&img, at), t.shape[d]);
        }
    }
}

#[test]
fn round_trip_v3() {
    let w = sample_writer(3, None);
    let want_meta = w.metadata().to_vec();
    let want_tensors = w.tensors().to_vec();
    let (img, data) = write_image(w);
    let f = parse_ok(img.clone());
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, DEFAULT_ALIGNMENT);
    assert_eq!(f.data_offset % DEFAULT_ALIGNMENT, 0);
    assert_same_metadata(&f.metadata, &want_meta);
    assert_same_metadata(&f.metadata, &sample_metadata());
    assert_eq!(f.tensors, want_tensors);
    for (t, d) in f.tensors.iter().zip(&data) {
        assert_eq!(f.tensor_data(t), &d[..], "data of {}", t.name);
        assert_eq!(f.tensor(&t.name), Some(t));
    }
    // The image ends exactly after the last tensor's data.
    let last = f.tensors.last().unwrap();
    assert_eq!(img.len() as u64, f.data_offset + last.offset + last.n_bytes);
    // Typed accessors see the same values.
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("test.u64").unwrap(), u64::MAX);
    assert_eq!(f.get_u32("test.u32").unwrap(), u32::MAX);
    assert!(f.get_bool("test.bool").unwrap());
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "</s>", "hello", "", "é", "Ġworld"]
    );
    assert_eq!(
        f.get_i64_array("tokenizer.ggml.token_type").unwrap(),
        [1, 3, 1, 1, 6, -2]
    );
    assert_eq!(f.get_array("test.empty_arr").unwrap().len(), 0);
    // parse_header agrees.
    let h = parse_header(&img).unwrap();
    assert_eq!(h.tensors, f.tensors);
    assert_eq!(h.data_offset, f.data_offset);
}

#[test]
fn round_trip_v2_same_layout_as_v3() {
    let (v2, data2) = write_image(sample_writer(2, None));
    let (v3, data3) = write_image(sample_writer(3, None));
    assert_eq!(data2, data3);
    assert_eq!(v2.len(), v3.len());
    assert_eq!(rd_u32(&v2, 4), 2);
    assert_eq!(v2[..4], v3[..4]);
    assert_eq!(
        v2[8..],
        v3[8..],
        "v2 and v3 differ only in the version field"
    );
    let f2 = parse_ok(v2);
    let f3 = parse_ok(v3);
    assert_eq!(f2.version, 2);
    assert_eq!(f3.version, 3);
    assert_same_metadata(&f2.metadata, &f3.metadata);
    assert_eq!(f2.tensors, f3.tensors);
    for t in &f2.tensors {
        assert_eq!(f2.tensor_data(t), f3.tensor_data(t));
    }
    // The writer refuses other versions.
    for v in [0, 1, 4, u32::MAX] {
        assert_eq!(
            GgufWriter::new().set_version(v).unwrap_err().kind(),
            "unsupported_version"
        );
    }
}

#[test]
fn round_trip_non_default_alignment() {
    for a in [1u64, 8, 64, 4096, 65536] {
        let w = sample_writer(3, Some(a));
        let want_meta = w.metadata().to_vec();
        let want_tensors = w.tensors().to_vec();
        let total = w.total_size();
        let (img, data) = write_image(w);
        assert_eq!(img.len() as u64, total, "total_size, alignment {a}");
        let f = parse_ok(img);
        assert_eq!(f.alignment, a);
        assert_eq!(f.data_offset % a, 0, "data offset, alignment {a}");
        assert_eq!(f.get_u64("general.alignment").unwrap(), a);
        assert_same_metadata(&f.metadata, &want_meta);
        assert_eq!(f.tensors, want_tensors);
        for (t, d) in f.tensors.iter().zip(&data) {
            assert_eq!(
                t.offset % a,
                0,
                "{} at {} with alignment {a}",
                t.name,
                t.offset
            );
            assert_eq!(f.tensor_data(t), &d[..]);
        }
    }
    // The writer refuses bad alignments.
    for a in [0u64, 3, 48, 131072] {
        assert_eq!(
            GgufWriter::new().set_alignment(a).unwrap_err().kind(),
            "bad_alignment"
        );
    }
}

/// Read a file, write all of its metadata and tensors again with the writer, re-parse.
fn rewrite(f: &GgufFile) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(f.version).unwrap();
    for (k, v) in &f.metadata {
        w.set_kv(k.clone(), v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(t.name.clone(), &t.shape, t.ggml_type).unwrap();
    }
    let mut dw = w.begin(Vec::new()).unwrap();
    for t in &f.tensors {
        dw.write_tensor(&t.name, f.tensor_data(t)).unwrap();
    }
    dw.finish().unwrap()
}

#[track_caller]
fn assert_same_file(a: &GgufFile, b: &GgufFile) {
    assert_eq!(a.version, b.version);
    assert_eq!(a.alignment, b.alignment);
    assert_same_metadata(&a.metadata, &b.metadata);
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (ta, tb) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(ta.name, tb.name);
        assert_eq!(ta.shape, tb.shape);
        assert_eq!(ta.ggml_type, tb.ggml_type);
        assert_eq!(ta.n_bytes, tb.n_bytes);
        assert_eq!(a.tensor_data(ta), b.tensor_data(tb), "data of {}", ta.name);
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/fixtures")
        .join(name)
}

#[test]
fn rewrite_tiny_fixtures() {
    for name in ["tiny-phi3.gguf", "tiny-llama.gguf"] {
        let orig = GgufFile::open(fixture(name)).unwrap();
        assert!(orig.tensors.len() > 10);
        let img = rewrite(&orig);
        let again = parse_ok(img.clone());
        assert_same_file(&orig, &again);
        // Same packing rules as the converter that made the fixture: even the offsets match.
        assert_eq!(orig.tensors, again.tensors, "{name}: tensor infos");
        // The converter also pads after the last tensor; the writer stops at its end.
        let o = orig.bytes();
        assert!(img.len() <= o.len() && o.len() - img.len() < DEFAULT_ALIGNMENT as usize);
        assert!(
            o[img.len()..].iter().all(|&b| b == 0),
            "{name}: trailing padding"
        );
        assert!(o[..img.len()] == img[..], "{name}: byte-identical rewrite");
    }
}

#[test]
fn rewrite_image_with_alignment_copies_all_kv() {
    // Copying every kv of a file, general.alignment included, must keep the file consistent
    // (regression: the writer used to keep laying tensors out at 32 bytes).
    for a in [1u64, 8, 64, 4096] {
        let (img, _) = write_image(sample_writer(2, Some(a)));
        let orig = parse_ok(img.clone());
        let copy = rewrite(&orig);
        let again = parse_ok(copy.clone());
        assert_same_file(&orig, &again);
        assert_eq!(orig.tensors, again.tensors);
        assert_eq!(copy, img, "alignment {a}: byte-identical rewrite");
    }
}

#[test]
fn writer_rejects_inconsistent_input() {
    // Array items that do not match the declared element type would make a corrupt file.
    let bad_arrays = [
        Value::Array(ValueType::U8, vec![Value::String("x".into())]),
        Value::Array(ValueType::Array, vec![Value::U32(1)]),
        Value::Array(ValueType::F32, vec![Value::F32(1.0), Value::F64(2.0)]),
        Value::Array(
            ValueType::Array,
            vec![Value::Array(ValueType::I8, vec![Value::U8(1)])],
        ),
        // Nesting the reader would refuse.
        nest(9, vec![]),
    ];
    for v in bad_arrays {
        let mut w = GgufWriter::new();
        w.set_kv("bad", v.clone());
        let r = catch_unwind(AssertUnwindSafe(|| w.begin(Vec::new()).map(|_| ())));
        let e = r
            .unwrap_or_else(|_| panic!("writer panicked on {v:?}"))
            .unwrap_err();
        assert_eq!(e.kind(), "write", "{v:?}: {e}");
    }
    // general.alignment that is not a valid alignment.
    for (v, kind) in [
        (Value::U32(0), "bad_alignment"),
        (Value::U32(3), "bad_alignment"),
        (Value::U64(1 << 20), "bad_alignment"),
        (Value::String("32".into()), "wrong_type"),
        (Value::I32(-64), "wrong_type"),
    ] {
        let mut w = GgufWriter::new();
        w.set_kv("general.alignment", v.clone());
        let e = w.begin(Vec::new()).map(|_| ()).unwrap_err();
        assert_eq!(e.kind(), kind, "{v:?}: {e}");
    }
    // general.alignment set after the tensors were laid out.
    let mut w = GgufWriter::new();
    w.add_tensor("t", &[4], GgmlType::F32).unwrap();
    w.set_kv("general.alignment", Value::U32(64));
    assert_eq!(w.begin(Vec::new()).map(|_| ()).unwrap_err().kind(), "write");
    // A data section past u64: an error, not an overflow panic.
    let mut w = GgufWriter::new();
    w.add_tensor("big0", &[1 << 61], GgmlType::F32).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        w.add_tensor("big1", &[1 << 61], GgmlType::F32).map(|_| ())
    }));
    assert_eq!(
        r.expect("add_tensor panicked").unwrap_err().kind(),
        "shape_overflow"
    );
}

// ------------------------------------------------------------------------------------------
// Malformed images
// ------------------------------------------------------------------------------------------

#[test]
fn bad_magic() {
    let img = sample_image();
    for magic in [*b"GGUG", *b"GGML", *b"FUGG", [0; 4], [0xff; 4], *b"gguf"] {
        expect_err(
            patched(&img, |b| b[..4].copy_from_slice(&magic)),
            "bad_magic",
        );
    }
    expect_err(b"PK\x03\x04 not a gguf".to_vec(), "bad_magic");
}

#[test]
fn bad_version() {
    let img = sample_image();
    for v in [0u32, 1, 4, 0x0300_0000, u32::MAX] {
        let e = expect_err(patched(&img, |b| put_u32(b, 4, v)), "unsupported_version");
        assert!(matches!(e, GgufError::UnsupportedVersion(x) if x == v));
    }
}

#[test]
fn tiny_inputs() {
    expect_err(Vec::new(), "truncated");
    expect_err(b"GGU".to_vec(), "truncated");
    expect_err(b"GGUF".to_vec(), "truncated");
    expect_err(b"GGUF\x03\x00\x00".to_vec(), "truncated");
    // Zero tensors, zero kv: the smallest valid file.
    let mut min = b"GGUF\x03\x00\x00\x00".to_vec();
    min.extend_from_slice(&[0; 16]);
    let f = parse_ok(min);
    assert!(f.metadata.is_empty() && f.tensors.is_empty());
}

#[test]
fn open_errors() {
    let dir = std::env::temp_dir().join(format!("verispec-gguf-malformed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(GgufFile::open(&empty).unwrap_err().kind(), "truncated");
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, patched(&sample_image(), |b| put_u32(b, 4, 1))).unwrap();
    assert_eq!(
        GgufFile::open(&bad).unwrap_err().kind(),
        "unsupported_version"
    );
    let good = dir.join("good.gguf");
    std::fs::write(&good, sample_image()).unwrap();
    let f = GgufFile::open(&good).unwrap();
    assert_eq!(f.path(), Some(good.as_path()));
    assert_eq!(
        GgufFile::open(dir.join("missing.gguf")).unwrap_err().kind(),
        "io"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every proper prefix of a valid image is an error: inside the header `truncated` or
/// `count_too_large`, in the padding or data section `tensor_out_of_range`.
fn check_all_prefixes(img: &[u8]) -> usize {
    let lay = locate(img);
    let mut checked = 0;
    for len in 0..img.len() {
        let prefix = img[..len].to_vec();
        let r = catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(prefix)));
        let e = match r {
            Err(_) => panic!("panic on a prefix of {len} bytes"),
            Ok(Ok(_)) => panic!("a prefix of {len} of {} bytes parsed OK", img.len()),
            Ok(Err(e)) => e,
        };
        if len < lay.header_end {
            assert!(
                matches!(e.kind(), "truncated" | "count_too_large"),
                "prefix {len} (header ends at {}): {e}",
                lay.header_end
            );
        } else {
            assert_eq!(e.kind(), "tensor_out_of_range", "prefix {len}: {e}");
        }
        checked += 1;
    }
    checked
}

#[test]
fn truncation_at_every_offset() {
    let img = sample_image();
    assert_eq!(check_all_prefixes(&img), img.len());
    // v2 with a large alignment: long padding between header and data.
    let (img, _) = write_image(sample_writer(2, Some(256)));
    assert_eq!(check_all_prefixes(&img), img.len());
    // Without tensors a prefix is OK once the header is complete (padding is optional there).
    let mut w = GgufWriter::new();
    for (k, v) in sample_metadata() {
        w.set_kv(k, v);
    }
    let img = w.begin(Vec::new()).unwrap().finish().unwrap();
    let end = locate(&img).header_end;
    for len in 0..img.len() {
        let r = GgufFile::from_bytes(img[..len].to_vec());
        if len < end {
            let e = r.unwrap_err();
            assert!(
                matches!(e.kind(), "truncated" | "count_too_large"),
                "{len}: {e}"
            );
        } else {
            assert_eq!(r.unwrap().metadata.len(), sample_metadata().len());
        }
    }
}

#[test]
fn huge_tensor_and_kv_counts() {
    let img = sample_image();
    let len = img.len() as u64;
    for n in [u64::MAX, 1 << 63, 1 << 40, len / 24 + 1, u64::MAX / 24 + 1] {
        let e = expect_err(
            patched(&img, |b| put_u64(b, N_TENSORS_AT, n)),
            "count_too_large",
        );
        assert!(matches!(e, GgufError::CountTooLarge { count, .. } if count == n));
    }
    for n in [u64::MAX, 1 << 63, 1 << 40, len / 13 + 1, u64::MAX / 13 + 1] {
        expect_err(patched(&img, |b| put_u64(b, N_KV_AT, n)), "count_too_large");
    }
}

#[test]
fn huge_string_lengths() {
    let img = sample_image();
    let lay = locate(&img);
    let len = img.len() as u64;
    let name_kv = lay.kv("general.name");
    let tokens = lay.kv("tokenizer.ggml.tokens");
    let t = lay.tensor("b.q80");
    let sites = [
        ("first key", lay.kvs[0].key_len_at),
        ("key of test.u32", lay.kv("test.u32").key_len_at),
        ("string value", name_kv.value_at),
        ("empty string value", lay.kv("test.empty_str").value_at),
        ("string in array", tokens.value_at + 12),
        ("tensor name", t.name_len_at),
    ];
    for (what, at) in sites {
        for n in [u64::MAX, 1 << 63, 1 << 32, len - at as u64 - 8 + 1] {
            let e = expect_err(patched(&img, |b| put_u64(b, at, n)), "count_too_large");
            assert!(
                matches!(e, GgufError::CountTooLarge { count, .. } if count == n),
                "{what}"
            );
        }
    }
}

#[test]
fn huge_array_lengths() {
    let img = sample_image();
    let lay = locate(&img);
    let len = img.len() as u64;
    let arrays = [
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.scores",
        "tokenizer.ggml.token_type",
        "test.bool_arr",
        "test.u64_arr",
        "test.empty_arr",
        "test.nested",
        "test.nest8",
    ];
    for key in arrays {
        let count_at = lay.kv(key).value_at + 4;
        for n in [u64::MAX, 1 << 63, u64::MAX / 8 + 1, 1 << 40, len] {
            let e = expect_err(
                patched(&img, |b| put_u64(b, count_at, n)),
                "count_too_large",
            );
            assert!(
                matches!(e, GgufError::CountTooLarge { count, .. } if count == n),
                "{key}"
            );
        }
    }
    // An inner array of the nested array.
    let inner_count_at = lay.kv("test.nested").value_at + 12 + 4;
    assert_eq!(rd_u64(&img, inner_count_at), 3);
    expect_err(
        patched(&img, |b| put_u64(b, inner_count_at, u64::MAX)),
        "count_too_large",
    );
}

#[test]
fn tensor_offset_out_of_range() {
    let img = sample_image();
    let lay = locate(&img);
    let f = parse_ok(img.clone());
    let data_len = img.len() as u64 - f.data_offset;
    let a = DEFAULT_ALIGNMENT;
    let c = lay.tensor("c.q4k");
    let c_off = rd_u64(&img, c.offset_at);
    for off in [
        c_off + a,
        data_len.div_ceil(a) * a,
        1 << 40,
        u64::MAX - (a - 1),
        (u64::MAX - 144) / a * a,
    ] {
        let e = expect_err(
            patched(&img, |b| put_u64(b, c.offset_at, off)),
            "tensor_out_of_range",
        );
        assert!(matches!(e, GgufError::TensorOutOfRange { ref tensor, .. } if tensor == "c.q4k"));
    }
    // Data section one byte short.
    let short = img[..img.len() - 1].to_vec();
    expect_err(short, "tensor_out_of_range");
}

#[test]
fn misaligned_tensor_offset() {
    let img = sample_image();
    let lay = locate(&img);
    for name in ["a.f32", "b.q80", "c.q4k"] {
        let at = lay.tensor(name).offset_at;
        let off = rd_u64(&img, at);
        for delta in [1u64, 2, 16, 31] {
            let e = expect_err(
                patched(&img, |b| put_u64(b, at, off + delta)),
                "misaligned_tensor",
            );
            assert!(matches!(
                e,
                GgufError::MisalignedTensor { alignment: 32, .. }
            ));
        }
    }
    // With a non-default alignment, an offset aligned to 32 but not 64.
    let (img, _) = write_image(sample_writer(3, Some(64)));
    let at = locate(&img).tensor("c.q4k").offset_at;
    let off = rd_u64(&img, at);
    expect_err(
        patched(&img, |b| put_u64(b, at, off + 32)),
        "misaligned_tensor",
    );
}

#[test]
fn overlapping_tensors() {
    let img = sample_image();
    let lay = locate(&img);
    let a_off = rd_u64(&img, lay.tensor("a.f32").offset_at);
    let b_off = rd_u64(&img, lay.tensor("b.q80").offset_at);
    // b on top of a.
    expect_err(
        patched(&img, |b| put_u64(b, lay.tensor("b.q80").offset_at, a_off)),
        "overlapping_tensors",
    );
    // c starting inside b.
    expect_err(
        patched(&img, |b| {
            put_u64(b, lay.tensor("c.q4k").offset_at, b_off + 32)
        }),
        "overlapping_tensors",
    );
    // a moved into the middle of c (order in the file differs from order in the data).
    let c_off = rd_u64(&img, lay.tensor("c.q4k").offset_at);
    expect_err(
        patched(&img, |b| {
            put_u64(b, lay.tensor("a.f32").offset_at, c_off + 32)
        }),
        "overlapping_tensors",
    );
}

#[test]
fn unknown_tensor_type() {
    let img = sample_image();
    let at = locate(&img).tensor("b.q80").type_at;
    for id in [4u32, 5, 16, 21, 29, 31, 39, 1000, u32::MAX] {
        let e = expect_err(patched(&img, |b| put_u32(b, at, id)), "unknown_tensor_type");
        assert!(matches!(e, GgufError::UnknownTensorType { id: x, .. } if x == id));
    }
}

#[test]
fn unknown_value_type() {
    let img = sample_image();
    let lay = locate(&img);
    let sites = [
        lay.kv("test.u32").type_at,
        lay.kvs[0].type_at,
        // Element type of an array, and of an array inside an array.
        lay.kv("tokenizer.ggml.token_type").value_at,
        lay.kv("test.nested").value_at + 12,
    ];
    for at in sites {
        for id in [13u32, 14, 255, u32::MAX] {
            expect_err(patched(&img, |b| put_u32(b, at, id)), "unknown_value_type");
        }
    }
}

#[test]
fn shape_overflow() {
    let img = sample_image();
    let lay = locate(&img);
    let a = lay.tensor("a.f32");
    let b = lay.tensor("b.q80");
    let c = lay.tensor("c.q4k");
    // Element count overflows.
    expect_err(
        patched(&img, |x| {
            put_u64(x, a.dims_at[0], 1 << 32);
            put_u64(x, a.dims_at[1], 1 << 32);
        }),
        "shape_overflow",
    );
    expect_err(
        patched(&img, |x| put_u64(x, b.dims_at[1], u64::MAX)),
        "shape_overflow",
    );
    // Element count fits, byte size does not.
    expect_err(
        patched(&img, |x| put_u64(x, a.dims_at[0], 1 << 62)),
        "shape_overflow",
    );
    expect_err(
        patched(&img, |x| {
            put_u64(x, b.dims_at[0], u64::MAX / 32 * 32);
            put_u64(x, b.dims_at[1], 1);
        }),
        "shape_overflow",
    );
    // A single dimension cannot overflow q4_K (fewer bytes than elements): out of range.
    expect_err(
        patched(&img, |x| put_u64(x, c.dims_at[0], u64::MAX / 256 * 256)),
        "tensor_out_of_range",
    );
    // Element and byte counts fit in u64: not an overflow but out of range.
    expect_err(
        patched(&img, |x| put_u64(x, a.dims_at[0], 1 << 40)),
        "tensor_out_of_range",
    );
}

#[test]
fn bad_shape_dims() {
    let img = sample_image();
    let lay = locate(&img);
    let a = lay.tensor("a.f32");
    for n in [0u32, 5, 8, u32::MAX] {
        expect_err(patched(&img, |x| put_u32(x, a.n_dims_at, n)), "bad_shape");
    }
    for d in 0..2 {
        expect_err(patched(&img, |x| put_u64(x, a.dims_at[d], 0)), "bad_shape");
    }
    let c = lay.tensor("c.q4k");
    expect_err(patched(&img, |x| put_u32(x, c.n_dims_at, 0)), "bad_shape");
}

#[test]
fn row_length_not_multiple_of_block() {
    let img = sample_image();
    let lay = locate(&img);
    let b = lay.tensor("b.q80");
    let c = lay.tensor("c.q4k");
    // 48 x 2 = 96 elements is a multiple of 32, but a row of 48 is not.
    let e = expect_err(patched(&img, |x| put_u64(x, b.dims_at[0], 48)), "bad_shape");
    assert!(e.to_string().contains("block size"), "{e}");
    // 16 x 4: same element count as a valid 64-element tensor.
    expect_err(
        patched(&img, |x| {
            put_u64(x, b.dims_at[0], 16);
            put_u64(x, b.dims_at[1], 4);
        }),
        "bad_shape",
    );
    for ne0 in [1u64, 31, 128, 255, 257] {
        expect_err(
            patched(&img, |x| put_u64(x, c.dims_at[0], ne0)),
            "bad_shape",
        );
    }
}

#[test]
fn invalid_utf8() {
    let img = sample_image();
    let lay = locate(&img);
    let name_kv = lay.kv("general.name");
    let tokens = lay.kv("tokenizer.ggml.tokens");
    let sites = [
        lay.kv("test.u8").key_at,
        lay.kvs[0].key_at + 3,
        name_kv.value_at + 8,
        tokens.value_at + 12 + 8, // first byte of "<s>"
        lay.tensor("c.q4k").name_at + 1,
    ];
    for at in sites {
        for bad in [[0xffu8, 0xfe], [0xc3, 0x28], [0x80, 0x80], [0xed, 0xa0]] {
            expect_err(
                patched(&img, |b| b[at..at + 2].copy_from_slice(&bad)),
                "invalid_utf8",
            );
        }
    }
}

#[test]
fn duplicate_key() {
    let img = sample_image();
    let lay = locate(&img);
    let i8_key = lay.kv("test.i8");
    let e = expect_err(
        patched(&img, |b| {
            b[i8_key.key_at..i8_key.key_at + 7].copy_from_slice(b"test.u8")
        }),
        "duplicate_key",
    );
    assert!(matches!(e, GgufError::DuplicateKey(ref k) if k == "test.u8"));
    // "test.u16" -> "test.u32": a duplicate with a different value type.
    let k = lay.kv("test.u16");
    expect_err(
        patched(&img, |b| {
            b[k.key_at..k.key_at + 8].copy_from_slice(b"test.u32")
        }),
        "duplicate_key",
    );
}

#[test]
fn duplicate_tensor() {
    let img = sample_image();
    let lay = locate(&img);
    for (from, to) in [("b.q80", "a.f32"), ("c.q4k", "b.q80"), ("c.q4k", "a.f32")] {
        let t = lay.tensor(from);
        let e = expect_err(
            patched(&img, |b| {
                b[t.name_at..t.name_at + 5].copy_from_slice(to.as_bytes())
            }),
            "duplicate_tensor",
        );
        assert!(matches!(e, GgufError::DuplicateTensor(ref n) if n == to));
    }
}

#[test]
fn bad_alignment() {
    let (img, _) = write_image(sample_writer(3, Some(64)));
    let lay = locate(&img);
    let kv = lay.kv("general.alignment");
    assert_eq!(rd_u32(&img, kv.type_at), ValueType::U32 as u32);
    assert_eq!(rd_u32(&img, kv.value_at), 64);
    for a in [0u32, 3, 6, 48, 100, 1 << 17, 1 << 31, u32::MAX] {
        let e = expect_err(
            patched(&img, |b| put_u32(b, kv.value_at, a)),
            "bad_alignment",
        );
        assert!(matches!(e, GgufError::BadAlignment(x) if x == a as u64));
    }
    // As an i32: 64 is fine, -64 is not an alignment.
    parse_ok(patched(&img, |b| {
        put_u32(b, kv.type_at, ValueType::I32 as u32)
    }));
    expect_err(
        patched(&img, |b| {
            put_u32(b, kv.type_at, ValueType::I32 as u32);
            put_u32(b, kv.value_at, (-64i32) as u32);
        }),
        "wrong_type",
    );
    // As an f32 it is the wrong type.
    expect_err(
        patched(&img, |b| {
            put_u32(b, kv.type_at, ValueType::F32 as u32);
            put_u32(b, kv.value_at, 64f32.to_bits());
        }),
        "wrong_type",
    );
}

#[test]
fn deeply_nested_arrays() {
    // The writer-built 8-level array in the sample parses (checked in round_trip_v3);
    // patch a chain of array headers over a u8 array: k headers (type array, count 1)
    // and a final empty u8 array = k + 1 levels.
    fn chain_image(k: usize) -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.set_kv("general.architecture", Value::String("llama".into()));
        w.set_kv(
            "deep",
            Value::Array(ValueType::U8, vec![Value::U8(0); 12 * k]),
        );
        w.add_tensor("t", &[4], GgmlType::F32).unwrap();
        let mut dw = w.begin(Vec::new()).unwrap();
        dw.write_tensor("t", &[0; 16]).unwrap();
        let mut img = dw.finish().unwrap();
        let v = locate(&img).kv("deep").value_at;
        for i in 0..k {
            put_u32(&mut img, v + 12 * i, ValueType::Array as u32);
            put_u64(&mut img, v + 12 * i + 4, 1);
        }
        put_u32(&mut img, v + 12 * k, ValueType::U8 as u32);
        put_u64(&mut img, v + 12 * k + 4, 0);
        img
    }
    let f = parse_ok(chain_image(7));
    assert_eq!(f.get("deep"), Some(&nest(8, vec![])));
    expect_err(chain_image(8), "nesting_too_deep");
    expect_err(chain_image(9), "nesting_too_deep");
    // Far deeper than any stack could recurse.
    let e = expect_err(chain_image(100_000), "nesting_too_deep");
    assert!(matches!(e, GgufError::NestingTooDeep { ref key } if key == "deep"));
}

// ------------------------------------------------------------------------------------------
// Fuzz seeds
// ------------------------------------------------------------------------------------------

/// One small tensor of every type the reader knows, one row of one block each.
fn all_types_image() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_kv("general.architecture", Value::String("llama".into()));
    for (i, ty) in GgmlType::ALL.iter().enumerate() {
        w.add_tensor(format!("t{i}.{ty}"), &[ty.block_size() as u64, 1], *ty)
            .unwrap();
    }
    write_image(w).0
}

/// tiny-phi3's metadata (tokenizer included) with its small tensors only, and the same file
/// cut a few KB into its data section.
fn phi3_seeds() -> (Vec<u8>, Vec<u8>) {
    let orig = GgufFile::open(fixture("tiny-phi3.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &orig.metadata {
        w.set_kv(k.clone(), v.clone());
    }
    let small: Vec<&TensorInfo> = orig.tensors.iter().filter(|t| t.n_bytes <= 1024).collect();
    for t in &small {
        w.add_tensor(t.name.clone(), &t.shape, t.ggml_type).unwrap();
    }
    let mut dw = w.begin(Vec::new()).unwrap();
    for t in &small {
        dw.write_tensor(&t.name, orig.tensor_data(t)).unwrap();
    }
    let small_img = dw.finish().unwrap();
    let cut = orig.bytes()[..orig.data_offset as usize + 4096].to_vec();
    (small_img, cut)
}

/// Regenerate fuzz/seeds/parse_gguf (see docs/FUZZING.md):
/// `cargo test -p verispec-engine --test gguf_malformed -- --ignored write_fuzz_seeds`
#[test]
#[ignore = "writes the fuzz seed corpus"]
fn write_fuzz_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/parse_gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let (phi3_small, phi3_cut) = phi3_seeds();
    let mut no_tensors = GgufWriter::new();
    for (k, v) in sample_metadata() {
        no_tensors.set_kv(k, v);
    }
    let seeds = [
        ("sample-v3.gguf", sample_image()),
        (
            "sample-v2-align256.gguf",
            write_image(sample_writer(2, Some(256))).0,
        ),
        (
            "sample-v3-align1.gguf",
            write_image(sample_writer(3, Some(1))).0,
        ),
        (
            "no-tensors.gguf",
            no_tensors.begin(Vec::new()).unwrap().finish().unwrap(),
        ),
        ("all-types.gguf", all_types_image()),
        ("phi3-small-tensors.gguf", phi3_small),
        ("phi3-cut.gguf", phi3_cut),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn fuzz_seeds_parse() {
    parse_ok(all_types_image());
    let (small, cut) = phi3_seeds();
    let f = parse_ok(small);
    assert!(f
        .tensors
        .iter()
        .any(|t| t.name == "rope_factors_long.weight"));
    expect_err(cut, "tensor_out_of_range");
}

// ------------------------------------------------------------------------------------------
// Allocation bounds
// ------------------------------------------------------------------------------------------

/// Parsing allocates at most a constant factor of the input size, whatever the counts in the
/// header claim. The factor is the size of a `Value` (32 bytes) per byte of a u8/i8/bool array,
/// the densest encoding; everything else is smaller.
#[test]
fn allocation_is_bounded_by_input_size() {
    const FACTOR: usize = 36;
    const SLACK: usize = 64 << 10;
    let img = sample_image();
    let lay = locate(&img);
    let mut inputs: Vec<(String, Vec<u8>)> = vec![("sample".into(), img.clone())];
    // Counts patched to the largest values that still pass the "fits in the file" check, and
    // to values just past it.
    let len = img.len() as u64;
    for (what, at) in [
        ("n_tensors", N_TENSORS_AT),
        ("n_kv", N_KV_AT),
        ("u8 array", lay.kv("test.empty_arr").value_at + 4),
        ("string array", lay.kv("tokenizer.ggml.tokens").value_at + 4),
        ("array of arrays", lay.kv("test.nested").value_at + 4),
        ("key length", lay.kvs[0].key_len_at),
    ] {
        for n in [len - at as u64 - 8, len, u64::MAX] {
            inputs.push((
                format!("{what} = {n}"),
                patched(&img, |b| put_u64(b, at, n)),
            ));
        }
    }
    // A large u8 array (the densest metadata) and a deep chain of arrays.
    let mut w = GgufWriter::new();
    w.set_kv(
        "big",
        Value::Array(ValueType::U8, vec![Value::U8(1); 1 << 20]),
    );
    inputs.push(("1 MiB u8 array".into(), write_image(w).0));
    let mut w = GgufWriter::new();
    w.set_kv(
        "big",
        Value::Array(ValueType::U8, vec![Value::U8(1); 1 << 20]),
    );
    let mut big = write_image(w).0;
    let at = locate(&big).kv("big").value_at;
    for i in 0..7 {
        put_u32(&mut big, at + 12 * i, ValueType::Array as u32);
        put_u64(&mut big, at + 12 * i + 4, u64::MAX);
    }
    inputs.push(("array chain with huge counts".into(), big.clone()));
    for i in 0..7 {
        // Each level claims all that is left, the innermost is a u8 array.
        let remaining = big.len() - (at + 12 * i + 12);
        put_u64(&mut big, at + 12 * i + 4, (remaining / 12) as u64);
    }
    put_u32(&mut big, at + 12 * 7, ValueType::U8 as u32);
    let rest = (big.len() - at - 12 * 8) as u64;
    put_u64(&mut big, at + 12 * 7 + 4, rest);
    inputs.push(("array chain, counts near the limit".into(), big));
    // The real tokenizer-carrying header.
    let (phi3, _) = phi3_seeds();
    inputs.push(("tiny-phi3 metadata".into(), phi3));

    for (what, bytes) in inputs {
        let n = bytes.len();
        let (r, peak) = peak_alloc(|| GgufFile::from_bytes(bytes).map(|f| f.metadata.len()));
        let bound = FACTOR * n + SLACK;
        assert!(
            peak <= bound,
            "{what}: {peak} bytes allocated for a {n}-byte input ({r:?})"
        );
        eprintln!("{what}: {n} bytes in, peak {peak} bytes allocated ({r:?})");
    }
}

// ------------------------------------------------------------------------------------------
// Exhaustive small mutations (a deterministic mini-fuzz that runs in `cargo test`)
// ------------------------------------------------------------------------------------------

/// What the fuzz target checks on an accepted file: every tensor slice is in bounds and
/// disjoint from the others, and the writer re-writes the file into one that parses back the same.
fn check_accepted(f: &GgufFile) {
    let mut spans = Vec::new();
    for t in &f.tensors {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(t.offset % f.alignment, 0);
        spans.push((t.offset, t.offset + t.n_bytes));
    }
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlap: {spans:?}"
    );
    let again = parse_ok(rewrite(f));
    assert_same_file(f, &again);
}

#[test]
fn single_byte_mutations_never_panic() {
    let img = sample_image();
    let header_end = locate(&img).header_end;
    let (mut ok, mut err) = (0, 0);
    // Every header byte, and a sample of data bytes.
    let offsets = (0..header_end).chain((header_end..img.len()).step_by(7));
    for at in offsets {
        let orig = img[at];
        let mut values: Vec<u8> = (0..8).map(|bit| orig ^ (1 << bit)).collect();
        values.extend([0x00, 0xff, 0x7f, 0x80]);
        for v in values {
            if v == orig {
                continue;
            }
            let b = patched(&img, |b| b[at] = v);
            match catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(b))) {
                Err(_) => panic!("panic with byte {at} set to {v:#04x}"),
                Ok(Ok(f)) => {
                    check_accepted(&f);
                    ok += 1;
                }
                Ok(Err(e)) => {
                    assert!(!e.to_string().is_empty());
                    err += 1;
                }
            }
        }
    }
    assert!(ok > 0 && err > 0, "{ok} accepted, {err} rejected");
}

#[test]
fn word_overwrites_never_panic() {
    // Boundary u32 and u64 values written at every offset of the header.
    let img = sample_image();
    let header_end = locate(&img).header_end;
    let words32 = [
        0u32,
        1,
        2,
        3,
        4,
        8,
        9,
        12,
        13,
        31,
        32,
        255,
        0x8000_0000,
        u32::MAX,
    ];
    let words64 = [
        0u64,
        1,
        31,
        32,
        4096,
        1 << 32,
        1 << 62,
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ];
    for at in 0..header_end {
        for &v in &words32 {
            if at + 4 <= img.len() {
                let b = patched(&img, |b| put_u32(b, at, v));
                let r = catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(b)));
                match r.unwrap_or_else(|_| panic!("panic with u32 {v:#x} at {at}")) {
                    Ok(f) => check_accepted(&f),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
        for &v in &words64 {
            if at + 8 <= img.len() {
                let b = patched(&img, |b| put_u64(b, at, v));
                let r = catch_unwind(AssertUnwindSafe(|| GgufFile::from_bytes(b)));
                match r.unwrap_or_else(|_| panic!("panic with u64 {v:#x} at {at}")) {
                    Ok(f) => check_accepted(&f),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        }
    }
}
