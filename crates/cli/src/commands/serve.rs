use std::path::Path;

use verispec::backend::ComputePath;
use verispec_server::{run as serve, ServeOptions};

use crate::common::{fail, CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the log line says which).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait while every slot is busy; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Requests generated at once (KV slots). They share passes, so N clients decode at
    /// close to one client's step time each; the text of each is unchanged. Each slot may
    /// use up to a KV cache of --ctx rows.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Require `Authorization: Bearer KEY` (every route but /health and /metrics).
    #[arg(long, env = "VERISPEC_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// The OpenAI-compatible server (crates/server, docs/SERVER.md). A model that cannot be found
/// fails here, before the socket is bound; the model itself loads after, so /health can say so.
pub fn run(a: Args) -> CliResult {
    let path = match &a.model.manifest {
        Some(m) if !m.exists() => {
            return Err(fail(format!("manifest {} does not exist", m.display())))
        }
        Some(m) => m.clone(),
        None => a.model.model_path()?,
    };
    a.model.threads()?;
    let model = a.model.clone();
    serve(ServeOptions {
        model_id: stem(&path),
        load: Box::new(move || model.load(ComputePath::Fast).map_err(|e| e.to_string())),
        host: a.host,
        port: a.port,
        queue: a.queue,
        parallel: a.parallel as usize,
        api_key: a.api_key.filter(|k| !k.is_empty()),
    })
    .map_err(fail)
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string())
}
