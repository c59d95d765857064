//! Fuzz target: parse arbitrary bytes as GGUF; for every accepted file touch every tensor's
//! data and every metadata value, then write the file again with `GgufWriter` and check that it
//! parses back to the same metadata, tensor infos and tensor bytes.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use libfuzzer_sys::fuzz_target;
use verispec::gguf::{GgufFile, GgufWriter, Value};

/// Parsing may allocate at most this many bytes per input byte (plus `ALLOC_SLACK`): one
/// 32-byte `Value` per byte of a u8 array is the densest case (tests/gguf_malformed.rs).
const ALLOC_FACTOR: usize = 36;
const ALLOC_SLACK: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let bytes = data.to_vec();
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let parsed = GgufFile::from_bytes(bytes);
    let peak = (PEAK.with(|p| p.get()) - base).max(0) as usize;
    assert!(
        peak <= ALLOC_FACTOR * data.len() + ALLOC_SLACK,
        "parsing {} bytes allocated {peak} bytes",
        data.len()
    );
    match parsed {
        Ok(f) => {
            touch(&f);
            round_trip(&f);
        }
        Err(e) => {
            std::hint::black_box((e.kind(), e.to_string()));
        }
    }
});

fn touch_value(v: &Value) {
    std::hint::black_box((
        v.value_type().name(),
        v.as_u64(),
        v.as_i64(),
        v.as_u32(),
        v.as_f32(),
        v.as_bool(),
        v.as_str(),
        v.display_short(),
        v.to_string(),
        v.to_json(),
    ));
    if let Some(items) = v.as_array() {
        items.iter().for_each(touch_value);
    }
}

fn touch(f: &GgufFile) {
    let file_len = f.bytes().len() as u64;
    assert!(f.data_offset % f.alignment == 0);
    for (k, v) in &f.metadata {
        assert!(std::ptr::eq(f.get(k).expect("indexed key"), v));
        touch_value(v);
        std::hint::black_box((
            f.get_u64(k).ok(),
            f.get_u32(k).ok(),
            f.get_f32(k).ok(),
            f.get_bool(k).ok(),
            f.get_str(k).ok(),
            f.get_str_array(k).ok(),
            f.get_f32_array(k).ok(),
            f.get_i64_array(k).ok(),
            f.opt_u32(k).ok(),
        ));
    }
    for t in &f.tensors {
        assert_eq!(f.tensor(&t.name), Some(t));
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.n_bytes);
        assert!(f.data_offset + t.offset + t.n_bytes <= file_len);
        assert_eq!(t.offset % f.alignment, 0);
        assert_eq!(t.n_elements(), t.row_len() * t.n_rows());
        let sum = d.iter().fold(0u64, |a, &b| a.wrapping_add(b as u64));
        std::hint::black_box(sum);
    }
    // No two tensors share a byte of the data section.
    let mut spans: Vec<(u64, u64)> = f
        .tensors
        .iter()
        .map(|t| (t.offset, t.offset + t.n_bytes))
        .collect();
    spans.sort_unstable();
    assert!(
        spans.windows(2).all(|w| w[0].1 <= w[1].0),
        "overlap: {spans:?}"
    );
    std::hint::black_box(f.tensor_bytes());
}

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

/// Whatever the reader accepts, the writer must be able to write back, and the reader must
/// read that back unchanged.
fn round_trip(f: &GgufFile) {
    let mut w = GgufWriter::new();
    w.set_version(f.version)
        .expect("version the reader accepted");
    for (k, v) in &f.metadata {
        w.set_kv(k.clone(), v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(t.name.clone(), &t.shape, t.ggml_type)
            .expect("tensor the reader accepted");
    }
    let mut dw = w.begin(Vec::new()).expect("metadata the reader accepted");
    for t in &f.tensors {
        dw.write_tensor(&t.name, f.tensor_data(t))
            .expect("write tensor");
    }
    let img = dw.finish().expect("finish");
    let g = GgufFile::from_bytes(img).expect("the writer's output parses");
    assert_eq!(g.version, f.version);
    assert_eq!(g.alignment, f.alignment);
    assert_eq!(g.metadata.len(), f.metadata.len());
    for ((ka, va), (kb, vb)) in f.metadata.iter().zip(&g.metadata) {
        assert_eq!(ka, kb);
        assert!(same_value(va, vb), "{ka}: {va:?} != {vb:?}");
    }
    assert_eq!(g.tensors.len(), f.tensors.len());
    for (a, b) in f.tensors.iter().zip(&g.tensors) {
        assert_eq!(
            (&a.name, &a.shape, a.ggml_type, a.n_bytes),
            (&b.name, &b.shape, b.ggml_type, b.n_bytes)
        );
        assert_eq!(f.tensor_data(a), g.tensor_data(b));
    }
}

// Per-thread accounting of live heap bytes, to check the allocation bound above.
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
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        account(l.size() as isize);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        account(l.size() as isize);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        account(-(l.size() as isize));
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        account(new as isize - l.size() as isize);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;
