use std::path::PathBuf;

use verispec::shard::export::{export, ExportOptions, ExportType, LayerSpec, Progress};

use crate::common::{fail, print_json, CliError, CliResult};

#[derive(clap::Args)]
pub struct Args {
    /// Source GGUF model.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// START:END:PATH, END exclusive (repeatable; asymmetric topologies allowed).
    #[arg(long = "layer-spec", value_name = "START:END:PATH")]
    pub layer_spec: Vec<String>,
    /// Shorthand: comma-separated layer counts, e.g. 20,4,6,2 (needs --out-dir).
    #[arg(long)]
    pub topology: Option<String>,
    /// Folder for --topology shard files.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
    /// keep (each tensor's type) or q8_0 (the engine's int8 format).
    #[arg(long = "type", default_value = "keep")]
    pub ty: String,
    /// Build only the shard with this range (build the smallest first, validate, then the rest).
    #[arg(long, value_name = "START:END")]
    pub only: Option<String>,
    /// Device recorded for every shard (cpu or cuda:N).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Verifier width the shards are meant for (recorded in the manifest).
    #[arg(long, default_value_t = 4)]
    pub verify_width: usize,
    /// Replace existing shard files or manifest.
    #[arg(long)]
    pub force: bool,
    /// The manifest to write.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

fn parse_range(s: &str) -> CliResult<(usize, usize)> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| CliError::usage(format!("--only {s:?} is not START:END")))?;
    let p = |x: &str| {
        x.parse::<usize>()
            .map_err(|_| CliError::usage(format!("--only {s:?}: {x:?} is not a layer number")))
    };
    Ok((p(a)?, p(b)?))
}

pub fn run(a: Args) -> CliResult {
    let ty = match a.ty.as_str() {
        "keep" => ExportType::Keep,
        "q8_0" => ExportType::Q8_0,
        other => {
            return Err(CliError::usage(format!(
                "--type {other:?}: expected keep or q8_0"
            )))
        }
    };
    let mut specs: Vec<LayerSpec> = a
        .layer_spec
        .iter()
        .map(|s| LayerSpec::parse(s).map_err(CliError::usage))
        .collect::<Result<_, _>>()?;
    if let Some(t) = &a.topology {
        if !specs.is_empty() {
            return Err(CliError::usage(
                "give either --layer-spec or --topology, not both",
            ));
        }
        let dir = a
            .out_dir
            .clone()
            .ok_or_else(|| CliError::usage("--topology needs --out-dir"))?;
        let mut start = 0;
        for (i, n) in t.split(',').enumerate() {
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| CliError::usage(format!("--topology {t:?}: {n:?} is not a count")))?;
            specs.push(LayerSpec {
                start,
                end: start + n,
                path: dir.join(format!("shard-{i:02}-L{start}-{}.gguf", start + n)),
            });
            start += n;
        }
    }
    if specs.is_empty() {
        return Err(CliError::usage(
            "give --layer-spec START:END:PATH (repeatable) or --topology",
        ));
    }
    if !(2..=8).contains(&a.verify_width) {
        return Err(CliError::usage("--verify-width must be in 2..8"));
    }
    let only = a.only.as_deref().map(parse_range).transpose()?;
    let opts = ExportOptions {
        model: a.model.clone(),
        specs,
        ty,
        only,
        force: a.force,
        manifest: a.out.clone(),
        verify_width: a.verify_width,
        device: a.device.clone(),
        disk_limit: std::env::var("VERISPEC_DISK_LIMIT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {bytes}/{total_bytes}")
            .map_err(|e| fail(e.to_string()))?
            .progress_chars("=> "),
    );
    let report = export(&opts, &mut |p| match p {
        Progress::Hashing { path, done, total } | Progress::Writing { path, done, total } => {
            bar.set_message(path.display().to_string());
            bar.set_length(total);
            bar.set_position(done);
        }
    })?;
    bar.finish_and_clear();
    if a.json {
        return print_json(&serde_json::to_value(&report).map_err(|e| fail(e.to_string()))?);
    }
    for w in &report.written {
        eprintln!("wrote {}", w.display());
    }
    match &report.manifest {
        Some(m) => eprintln!("wrote manifest {}", m.display()),
        None => eprintln!(
            "manifest not written yet: build the remaining shards first ({})",
            report
                .missing
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    Ok(())
}
