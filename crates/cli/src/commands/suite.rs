use std::path::Path;

use verispec::backend::ComputePath;
use verispec::bench::{load_suite, run_suite};
use verispec::generate::request::Speculation;

use super::bench::Args;
use crate::common::{fail, print_json, CliError, CliResult};

pub fn run(a: &Args, suite: &Path) -> CliResult {
    if !(2..=8).contains(&a.verify_width) {
        return Err(CliError::usage(format!(
            "--verify-width {} is out of range 2..8",
            a.verify_width
        )));
    }
    let prompts = load_suite(suite)?;
    let engine = a.model.load(ComputePath::Fast)?;
    let spec = a.speculative.then(|| Speculation {
        verify_width: a.verify_width,
        ..Default::default()
    });
    let bar = indicatif::ProgressBar::new((prompts.len() * a.runs.max(1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} {msg}")
            .map_err(|e| fail(e.to_string()))?,
    );
    let name = suite.display().to_string();
    let r = run_suite(
        &engine,
        &name,
        &prompts,
        spec.as_ref(),
        a.runs,
        a.ignore_eos,
        |m| {
            bar.set_message(m.to_string());
            bar.inc(1);
        },
    )?;
    bar.finish_and_clear();
    if a.json {
        print_json(&serde_json::to_value(&r).map_err(|e| fail(e.to_string()))?)?;
    } else {
        println!(
            "{:<28} {:>6} {:>6} {:>9} {:>9} {:>7} {:>7} {:>6}",
            "prompt", "n_prm", "n_gen", "greedy/s", "spec/s", "drafted", "accept", "exact"
        );
        for p in &r.prompts {
            println!(
                "{:<28} {:>6} {:>6} {:>9.1} {:>9} {:>7} {:>6.0}% {:>6}",
                p.id.chars().take(28).collect::<String>(),
                p.n_prompt,
                p.n_generated,
                p.greedy.tok_s,
                p.speculative
                    .as_ref()
                    .map_or("-".into(), |s| format!("{:.1}", s.tok_s)),
                p.drafted,
                100.0 * p.acceptance,
                p.exact.map_or("-".into(), |e| e.to_string()),
            );
        }
        println!(
            "total: greedy {:.1} tok/s{}",
            r.greedy_tok_s,
            match (r.speculative_tok_s, r.speedup, r.exact) {
                (Some(s), Some(x), Some(e)) => format!(
                    ", speculative {s:.1} tok/s, speedup {x:.2}x, exact on all prompts: {e}"
                ),
                _ => String::new(),
            }
        );
    }
    if r.exact == Some(false) {
        return Err(fail(
            "speculative output differed from greedy on some prompt",
        ));
    }
    Ok(())
}
