fn main() {
    let p = std::env::args().nth(1).unwrap();
    let f = verispec::gguf::GgufFile::open(&p).unwrap();
    for (k, v) in &f.metadata {
        println!("{k} = {}", v.display_short());
    }
    for t in f.tensors.iter().take(40) {
        println!("{} {:?} {} {}", t.name, t.shape, t.ggml_type, t.offset);
    }
}
