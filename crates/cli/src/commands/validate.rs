use std::path::PathBuf;

use verispec::backend::ComputePath;
use verispec::shard::export::Progress;
use verispec::validate::{parity_check, validate_manifest, Thresholds, ValidateOptions};

use crate::common::{fail, print_json, CliError, CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The manifest whose shards to gate.
    pub manifest: Option<PathBuf>,
    /// Fail when any op of a shard placed on a GPU ran elsewhere.
    #[arg(long)]
    pub strict: bool,
    /// Block-vs-sequential parity on a whole model (with --model) instead of a manifest.
    #[arg(long)]
    pub parity: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Golden gate: minimum cosine (whole probe and every token).
    #[arg(long, default_value_t = 0.999)]
    pub min_cos: f64,
    /// Golden gate: maximum rmse relative to the reference's rms.
    #[arg(long, default_value_t = 0.05)]
    pub max_rel_rmse: f64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> CliResult {
    if a.parity {
        if a.manifest.is_some() {
            return Err(CliError::usage(
                "--parity checks a --model; do not give a manifest",
            ));
        }
        let engine = a.model.load(ComputePath::Fast)?;
        let positions = [0usize, 7, 33];
        let cases = parity_check(&engine, &positions, &[2, 4, 8])?;
        let pass = cases.iter().all(|c| c.bit_exact);
        if a.json {
            print_json(&serde_json::json!({"pass": pass, "cases": cases}))?;
        } else {
            println!(
                "{:>8} {:>5} {:>10} {:>12}  per-token max |diff|",
                "position", "T", "bit-exact", "min cos"
            );
            for c in &cases {
                println!(
                    "{:>8} {:>5} {:>10} {:>12.8}  {:?}",
                    c.position,
                    c.width,
                    c.bit_exact,
                    c.cos_per_token.iter().copied().fold(1.0, f64::min),
                    c.max_abs_per_token
                );
            }
            println!("parity: {}", if pass { "PASS" } else { "FAIL" });
        }
        return if pass {
            Ok(())
        } else {
            Err(fail(
                "parity gate failed: a block pass differs from sequential steps",
            ))
        };
    }
    let manifest = a
        .manifest
        .clone()
        .ok_or_else(|| CliError::usage("give a MANIFEST, or --parity --model M"))?;
    let opts = ValidateOptions {
        strict: a.strict,
        thresholds: Thresholds {
            min_cos: a.min_cos,
            max_rel_rmse: a.max_rel_rmse,
        },
        threads: a.model.threads()?,
        probe_prefix: 12,
        device_override: a.model.device.clone(),
    };
    let bar = indicatif::ProgressBar::new(0);
    let report = validate_manifest(&manifest, &opts, &mut |p| {
        if let Progress::Hashing { done, total, .. } = p {
            bar.set_length(total);
            bar.set_position(done);
        }
    })?;
    bar.finish_and_clear();
    if a.json {
        print_json(&serde_json::to_value(&report).map_err(|e| fail(e.to_string()))?)?;
    } else {
        println!("reference: {}", report.reference);
        println!("{:<6} {:<10} {:<5} detail", "shard", "gate", "pass");
        for g in &report.gates {
            println!(
                "{:<6} {:<10} {:<5} {}",
                g.shard,
                g.gate,
                if g.pass { "ok" } else { "FAIL" },
                g.detail
            );
        }
        println!("validate: {}", if report.pass { "PASS" } else { "FAIL" });
    }
    if report.pass {
        Ok(())
    } else {
        let failed: Vec<String> = report
            .gates
            .iter()
            .filter(|g| !g.pass)
            .map(|g| format!("shard {} failed the {} gate", g.shard, g.gate))
            .collect();
        Err(fail(failed.join("; ")))
    }
}
