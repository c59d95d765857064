use std::io::Write;

use serde_json::json;
use verispec::backend::ComputePath;
use verispec::chat::{ChatTemplate, Message};
use verispec::engine::Engine;
use verispec::generate::request::generate;

use super::gen_args::GenArgs;
use crate::common::{fail, print_json, CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt. Special tokens written in it are parsed as single tokens.
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub gen: GenArgs,
    /// Wrap the prompt in the model's chat template (as a user turn).
    #[arg(long)]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object on stdout (prompt_ids, generated_ids, text, stats).
    #[arg(long)]
    pub json: bool,
}

/// The chat template of the model, or an error saying it has none.
pub fn template(engine: &Engine) -> CliResult<ChatTemplate> {
    ChatTemplate::from_tokenizer(&engine.tokenizer)
        .ok_or_else(|| fail("this model has no chat template (tokenizer.chat_template)"))
}

pub fn run(a: Args) -> CliResult {
    let req = a.gen.request()?;
    if a.prompt.is_empty() {
        return Err(fail("the prompt is empty: pass some text with --prompt"));
    }
    if a.system.is_some() && !a.chat {
        return Err(crate::common::CliError::usage("--system needs --chat"));
    }
    let engine = a.model.load(ComputePath::Fast)?;
    let text = if a.chat {
        let mut msgs = Vec::new();
        if let Some(s) = &a.system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", &a.prompt));
        template(&engine)?.render(&msgs, true)?
    } else {
        a.prompt.clone()
    };
    let prompt_ids = engine.tokenizer.encode(&text, true, true);
    if prompt_ids.is_empty() {
        return Err(fail("the prompt tokenized to nothing"));
    }
    let mut session = engine.new_session();
    let stream = !a.json;
    let mut stdout = std::io::stdout();
    let out = generate(&engine, &mut session, &prompt_ids, &req, |t| {
        if stream {
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
        }
    })?;
    if a.json {
        let mut j = json!({
            "prompt_ids": prompt_ids,
            "generated_ids": out.generated_ids,
            "text": out.text,
            "stats": out.stats_json(),
        });
        if !req.sampling.is_greedy() {
            j["seed"] = req.sampling.seed.into();
        }
        return print_json(&j);
    }
    println!();
    let s = &out.stats;
    let mut line = format!(
        "{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({:.2} ms/token), stopped by {}",
        s.n_prompt,
        s.prefill_tok_s(),
        s.n_generated,
        s.decode_tok_s(),
        s.ms_per_token(),
        out.finish_reason
    );
    if let Some(sp) = &out.spec {
        line.push_str(&format!(
            "; speculative: {} drafted, {} accepted ({:.0}%), {} verify passes",
            sp.drafted,
            sp.accepted,
            100.0 * sp.acceptance_rate(),
            sp.verify_passes
        ));
    }
    eprintln!("{line}");
    Ok(())
}
