use std::io::{BufRead, Write};

use verispec::backend::ComputePath;
use verispec::chat::Message;
use verispec::generate::request::generate;

use super::gen_args::GenArgs;
use super::run::template;
use crate::common::{CliResult, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub gen: GenArgs,
    /// System message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
}

/// An interactive conversation. The KV cache is kept between turns: each turn re-renders the
/// whole conversation with the chat template, keeps the cached prefix it shares with the new
/// tokens, and only processes the rest. `/reset` clears the conversation, `/exit` (or EOF) ends.
pub fn run(a: Args) -> CliResult {
    let req = a.gen.request()?;
    let engine = a.model.load(ComputePath::Fast)?;
    let tmpl = template(&engine)?;
    let mut session = engine.new_session();
    let mut msgs: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    eprintln!("chat: type a message; /reset clears the conversation, /exit ends");
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                msgs.retain(|m| m.role == "system");
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        msgs.push(Message::new("user", line));
        let ids = engine
            .tokenizer
            .encode(&tmpl.render(&msgs, true)?, true, true);
        // Reuse the cached prefix; process only what is new.
        let common = session
            .tokens()
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(ids.len() - 1);
        session.truncate(common);
        let out = match generate(&engine, &mut session, &ids[common..], &req, |t| {
            let _ = stdout.write_all(t.as_bytes());
            let _ = stdout.flush();
        }) {
            Ok(o) => o,
            Err(e) => {
                // Bad input (say, a full context) ends this turn, not the conversation.
                eprintln!("\nerror: {e}");
                msgs.pop();
                continue;
            }
        };
        println!();
        eprintln!(
            "[{} tokens, {:.1} tok/s, {} cached tokens reused]",
            out.stats.n_generated,
            out.stats.decode_tok_s(),
            common
        );
        msgs.push(Message::new("assistant", &out.text));
    }
    Ok(())
}
