use crate::common::{CliResult, ModelArgs};
use crate::server::{run as serve, ServeOptions};

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
    /// Requests that may wait while one is generated; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Require `Authorization: Bearer KEY` (every route but /health and /metrics).
    #[arg(long, env = "VERISPEC_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

pub fn run(a: Args) -> CliResult {
    serve(ServeOptions {
        model: a.model,
        host: a.host,
        port: a.port,
        queue: a.queue,
        api_key: a.api_key.filter(|k| !k.is_empty()),
    })
}
