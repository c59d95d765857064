use verispec::backend::ComputePath;
use verispec::engine::{Engine, LoadOptions};
use verispec::model::LogitRows;
fn main() {
    let text = std::fs::read_to_string("testdata/golden/smollm2_greedy.jsonl").unwrap();
    let rec: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        rec[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let (p, g) = (ids("prompt_token_ids"), ids("generated_token_ids"));
    println!("first_eog {}", rec["first_eog_index"]);
    let e = Engine::load(
        std::path::Path::new("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        LoadOptions {
            path: ComputePath::Reference,
            threads: 2,
            n_ctx: None,
        },
    )
    .unwrap();
    let v = e.cfg.n_vocab;
    let mut all = p.clone();
    all.extend(&g);
    let mut s = e.new_session();
    let l = s.forward(&all[..all.len() - 1], LogitRows::All).unwrap();
    for i in [0usize, 1, 10, 28, 29, 30, 31] {
        let row = &l[(p.len() - 1 + i) * v..(p.len() + i) * v];
        let top: Vec<(u32, f32)> = rec["top5_logits"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x[0].as_u64().unwrap() as u32, x[1].as_f64().unwrap() as f32))
            .collect();
        let ours: Vec<String> = top
            .iter()
            .map(|(id, lg)| format!("{id}:{lg:.3}/{:.3}", row[*id as usize]))
            .collect();
        let mut idx: Vec<usize> = (0..v).collect();
        idx.sort_by(|a, b| row[*b].partial_cmp(&row[*a]).unwrap());
        println!(
            "step {i} gold {} | {} | our top {:?}",
            g[i],
            ours.join(" "),
            &idx[..3]
        );
    }
}
