//! Options shared by the commands: model selection, device, threads, context.

use std::fmt;
use std::path::PathBuf;

use verispec::backend::ComputePath;
use verispec::engine::{default_threads, Engine, LoadOptions};

pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const FETCH_COMMAND: &str = "scripts/fetch-models.sh";

/// A command failure with its exit code (1 = failure, 2 = usage).
#[derive(Debug)]
pub struct CliError {
    pub msg: String,
    pub code: i32,
}

impl CliError {
    pub fn usage(msg: impl Into<String>) -> CliError {
        CliError {
            msg: msg.into(),
            code: 2,
        }
    }
    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError {
            msg: e.to_string(),
            code: 1,
        }
    }
}

pub fn fail(msg: impl Into<String>) -> CliError {
    CliError {
        msg: msg.into(),
        code: 1,
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// GGUF model file (default: $VERISPEC_MODEL, else models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Sharded model manifest (see docs/MANIFEST.md); replaces --model.
    #[arg(long, conflicts_with = "model")]
    pub manifest: Option<PathBuf>,
    /// Device: cpu or cuda:N.
    #[arg(long)]
    pub device: Option<String>,
    /// Worker threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Context size in tokens (default: min(context_length, 4096)).
    #[arg(long)]
    pub ctx: Option<usize>,
}

impl ModelArgs {
    /// The model path: --model, else $VERISPEC_MODEL, else the default, which must exist.
    pub fn model_path(&self) -> CliResult<PathBuf> {
        resolve_model(self.model.as_ref())
    }

    pub fn threads(&self) -> CliResult<usize> {
        match self.threads {
            Some(0) => Err(CliError::usage("--threads must be at least 1")),
            Some(t) => Ok(t),
            None => Ok(default_threads()),
        }
    }

    pub fn load(&self, path: ComputePath) -> CliResult<Engine> {
        let opts = LoadOptions {
            path,
            threads: self.threads()?,
            n_ctx: self.ctx,
        };
        if let Some(m) = &self.manifest {
            if let Some(d) = &self.device {
                verispec::shard::manifest::parse_device(d).map_err(CliError::usage)?;
            }
            return Engine::load_manifest(m, opts, self.device.as_deref())
                .map_err(|e| fail(format!("{}: {e}", m.display())));
        }
        check_device(self.device.as_deref().unwrap_or("cpu"))?;
        let model = self.model_path()?;
        Engine::load(&model, opts).map_err(|e| fail(format!("{}: {e}", model.display())))
    }
}

pub fn resolve_model(explicit: Option<&PathBuf>) -> CliResult<PathBuf> {
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(fail(format!("model file {} does not exist", p.display())));
        }
        return Ok(p.clone());
    }
    if let Some(env) = std::env::var_os("VERISPEC_MODEL") {
        let p = PathBuf::from(env);
        if !p.exists() {
            return Err(fail(format!(
                "$VERISPEC_MODEL points to {}, which does not exist",
                p.display()
            )));
        }
        return Ok(p);
    }
    let p = PathBuf::from(DEFAULT_MODEL);
    if !p.exists() {
        return Err(fail(format!(
            "no model given and the default model {DEFAULT_MODEL} is missing; \
             run `{FETCH_COMMAND}` to fetch it, or pass --model PATH"
        )));
    }
    Ok(p)
}

pub fn check_device(device: &str) -> CliResult {
    if device == "cpu" {
        return Ok(());
    }
    if let Some(n) = device.strip_prefix("cuda:") {
        if n.parse::<u32>().is_ok() {
            return Err(fail(format!(
                "device {device}: this build has no CUDA backend yet; use --device cpu"
            )));
        }
    }
    Err(CliError::usage(format!(
        "unknown device {device:?}; expected cpu or cuda:N"
    )))
}

pub fn parse_path(s: &str) -> CliResult<ComputePath> {
    match s {
        "fast" => Ok(ComputePath::Fast),
        "reference" => Ok(ComputePath::Reference),
        other => Err(CliError::usage(format!(
            "unknown --path {other:?}; expected fast or reference"
        ))),
    }
}

/// Print exactly one JSON object on stdout.
pub fn print_json(v: &serde_json::Value) -> CliResult {
    let s = serde_json::to_string_pretty(v).map_err(|e| fail(e.to_string()))?;
    println!("{s}");
    Ok(())
}
