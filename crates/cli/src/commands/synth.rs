use std::path::PathBuf;

use verispec::synth::{synth, Preset, SynthOptions, SynthType};

use crate::common::{fail, print_json, CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// phi4-mini (exact Phi-4-mini shapes, o200k vocabulary) or tiny-phi3 (test size).
    #[arg(long)]
    pub preset: String,
    /// q8_0, q4_k_m, q5_k_m, q5_0, q5_1, q3_k_m, q2_k, iq4_nl, iq4_xs (llama-quantize's mixes
    /// of those names, without an importance matrix) or f16.
    #[arg(long = "type")]
    pub ty: String,
    /// Number of layers (default: the preset's).
    #[arg(long)]
    pub layers: Option<usize>,
    /// Seed of the random weights and LongRoPE factors.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output GGUF file.
    #[arg(short = 'o', long = "out")]
    pub out: PathBuf,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> CliResult {
    let preset = Preset::parse(&a.preset).ok_or_else(|| {
        CliError::usage(format!(
            "unknown --preset {:?}; expected phi4-mini or tiny-phi3",
            a.preset
        ))
    })?;
    let ty = SynthType::parse(&a.ty).ok_or_else(|| {
        CliError::usage(format!(
            "unknown --type {:?}; expected q8_0, q4_k_m, q5_k_m, q5_0, q5_1, q3_k_m, q2_k, iq4_nl, iq4_xs or f16",
            a.ty
        ))
    })?;
    let opts = SynthOptions {
        preset,
        ty,
        layers: a.layers,
        seed: a.seed,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} synth [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .map_err(|e| fail(e.to_string()))?
        .progress_chars("=> "),
    );
    let start = std::time::Instant::now();
    let total = synth(&opts, &a.out, a.force, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        return print_json(&serde_json::json!({
            "out": a.out, "bytes": total, "seconds": secs, "preset": a.preset, "type": a.ty,
        }));
    }
    eprintln!(
        "wrote {} ({:.2} GB) in {secs:.1} s",
        a.out.display(),
        total as f64 / 1e9
    );
    Ok(())
}
