//! `TokenizerSpec` ↔ GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

use crate::gguf::value::{Value, ValueType};
use crate::gguf::{GgufError, GgufFile, GgufWriter};

use super::{Tokenizer, TokenizerError, TokenizerSpec};

pub const KEY_MODEL: &str = "tokenizer.ggml.model";
pub const KEY_PRE: &str = "tokenizer.ggml.pre";
pub const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const KEY_MERGES: &str = "tokenizer.ggml.merges";
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
pub const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
pub const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
pub const KEY_NAME: &str = "general.name";

impl From<GgufError> for TokenizerError {
    fn from(e: GgufError) -> Self {
        TokenizerError::Gguf(e.to_string())
    }
}

fn strings(f: &GgufFile, key: &str) -> Result<Vec<String>, TokenizerError> {
    Ok(f.get_str_array(key)?
        .into_iter()
        .map(str::to_string)
        .collect())
}

impl TokenizerSpec {
    /// Read the tokenizer keys. `tokenizer.ggml.model`, `.tokens` and (for "gpt2") `.merges`
    /// are required; every other key is optional, as in llama.cpp.
    pub fn from_gguf(f: &GgufFile) -> Result<TokenizerSpec, TokenizerError> {
        let model = f.get_str(KEY_MODEL)?.to_string();
        let tokens = strings(f, KEY_TOKENS)?;
        let token_types = match f.get(KEY_TOKEN_TYPE) {
            None => Vec::new(),
            Some(_) => f
                .get_i64_array(KEY_TOKEN_TYPE)?
                .into_iter()
                .map(|t| i32::try_from(t).unwrap_or(0))
                .collect(),
        };
        let merges = if model == "gpt2" {
            strings(f, KEY_MERGES)?
        } else {
            Vec::new()
        };
        Ok(TokenizerSpec {
            model,
            pre: f.opt_str(KEY_PRE)?.unwrap_or_default().to_string(),
            tokens,
            token_types,
            merges,
            bos: f.opt_u32(KEY_BOS)?,
            eos: f.opt_u32(KEY_EOS)?,
            eot: f.opt_u32(KEY_EOT)?,
            add_bos: f.opt_bool(KEY_ADD_BOS)?,
            add_eos: f.opt_bool(KEY_ADD_EOS)?,
            chat_template: f.opt_str(KEY_CHAT_TEMPLATE)?.map(str::to_string),
            name: f.opt_str(KEY_NAME)?.map(str::to_string),
        })
    }

    /// Write the tokenizer keys (not `general.name`) into a GGUF being built.
    pub fn write_gguf(&self, w: &mut GgufWriter) {
        let str_array = |items: &[String]| {
            Value::Array(
                ValueType::String,
                items.iter().map(|s| Value::String(s.clone())).collect(),
            )
        };
        w.set_kv(KEY_MODEL, Value::String(self.model.clone()));
        w.set_kv(KEY_PRE, Value::String(self.pre.clone()));
        w.set_kv(KEY_TOKENS, str_array(&self.tokens));
        if !self.token_types.is_empty() {
            w.set_kv(
                KEY_TOKEN_TYPE,
                Value::Array(
                    ValueType::I32,
                    self.token_types.iter().map(|&t| Value::I32(t)).collect(),
                ),
            );
        }
        w.set_kv(KEY_MERGES, str_array(&self.merges));
        let ids = [
            (KEY_BOS, self.bos),
            (KEY_EOS, self.eos),
            (KEY_EOT, self.eot),
        ];
        for (key, id) in ids {
            if let Some(id) = id {
                w.set_kv(key, Value::U32(id));
            }
        }
        for (key, b) in [(KEY_ADD_BOS, self.add_bos), (KEY_ADD_EOS, self.add_eos)] {
            if let Some(b) = b {
                w.set_kv(key, Value::Bool(b));
            }
        }
        if let Some(t) = &self.chat_template {
            w.set_kv(KEY_CHAT_TEMPLATE, Value::String(t.clone()));
        }
    }
}

impl Tokenizer {
    /// The tokenizer of a GGUF model.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::from_spec(TokenizerSpec::from_gguf(f)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TokenizerSpec {
        TokenizerSpec {
            model: "gpt2".into(),
            pre: "smollm".into(),
            tokens: ["a", "b", "ab", "<|end|>"].map(String::from).to_vec(),
            token_types: vec![1, 1, 1, 3],
            merges: vec!["a b".into()],
            bos: None,
            eos: Some(3),
            eot: None,
            add_bos: Some(false),
            add_eos: None,
            chat_template: Some("{{ messages }}".into()),
            name: None,
        }
    }

    fn round_trip(w: &GgufWriter) -> Result<TokenizerSpec, TokenizerError> {
        let f = GgufFile::from_bytes(w.header_bytes()).map_err(TokenizerError::from)?;
        TokenizerSpec::from_gguf(&f)
    }

    #[test]
    fn write_then_read_gives_the_spec_back() {
        let mut w = GgufWriter::new();
        spec().write_gguf(&mut w);
        assert_eq!(round_trip(&w).unwrap(), spec());
        let mut f_spec = spec();
        f_spec.name = Some("Phi3 test".into());
        w.set_kv(KEY_NAME, Value::String("Phi3 test".into()));
        assert_eq!(round_trip(&w).unwrap(), f_spec);
    }

    #[test]
    fn missing_or_mistyped_keys_are_named() {
        let mut w = GgufWriter::new();
        spec().write_gguf(&mut w);
        w.set_kv(KEY_BOS, Value::String("one".into()));
        let e = round_trip(&w).unwrap_err().to_string();
        assert!(e.contains(KEY_BOS), "{e}");

        let mut w = GgufWriter::new();
        let mut s = spec();
        s.merges.clear();
        s.write_gguf(&mut w);
        let mut bare = GgufWriter::new();
        for (k, v) in w.metadata() {
            if k != KEY_MERGES {
                bare.set_kv(k.clone(), v.clone());
            }
        }
        let e = round_trip(&bare).unwrap_err().to_string();
        assert!(e.contains(KEY_MERGES), "{e}");
    }
}
