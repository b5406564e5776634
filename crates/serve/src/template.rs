//! Chat prompts: the model's own Jinja template, from `chat_template.jinja` or
//! `tokenizer_config.json` as transformers finds it (rendered with minijinja and its
//! Python-compatible methods, as transformers' `apply_chat_template` renders it, with
//! trim_blocks and lstrip_blocks), or, without one, the default format: each message as
//! `<|role|>\ncontent\n`, then `<|assistant|>\n` for the reply.

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::{context, Environment, Error, ErrorKind, Value};

use truthgpt_interop::hf;

use crate::types::Message;

pub enum ChatFormat {
    Default,
    Jinja { env: Box<Environment<'static>>, bos_token: String, eos_token: String },
}

impl std::fmt::Debug for ChatFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChatFormat::Default => "ChatFormat::Default",
            ChatFormat::Jinja { .. } => "ChatFormat::Jinja",
        })
    }
}

/// A special token as `tokenizer_config.json` writes it: a string, or an object with `content`.
fn token_text(value: Option<&serde_json::Value>) -> String {
    match value {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        None => String::new(),
    }
}

impl ChatFormat {
    /// The template of the model in `dir`, if it has one (`chat_template.jinja` first, then
    /// `tokenizer_config.json`), with the special tokens `tokenizer_config.json` names.
    pub fn for_model(dir: &Path) -> Result<Self, String> {
        let path = dir.join(hf::TOKENIZER_CONFIG);
        let config: serde_json::Value = match path.is_file() {
            true => {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?
            }
            false => serde_json::Value::Null,
        };
        let jinja = dir.join(hf::CHAT_TEMPLATE);
        let source = if jinja.is_file() { jinja } else { path };
        // One template, or a list of named ones of which we use `default`.
        let template = match hf::chat_template(dir).map_err(|e| e.to_string())? {
            Some(serde_json::Value::String(t)) => t,
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string))
                .ok_or_else(|| format!("{}: no template named `default`", source.display()))?,
            _ => return Ok(ChatFormat::Default),
        };
        ChatFormat::jinja(template, token_text(config.get("bos_token")), token_text(config.get("eos_token")))
            .map_err(|e| format!("{}: the chat template does not compile: {e}", source.display()))
    }

    pub fn jinja(template: String, bos_token: String, eos_token: String) -> Result<Self, Error> {
        let mut env = Environment::new();
        // As transformers' sandboxed Jinja environment: a block tag's own line leaves no
        // whitespace behind (Zephyr's template put blank lines around every message otherwise).
        let syntax = SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        env.add_template_owned("chat", template)?;
        Ok(ChatFormat::Jinja { env: Box::new(env), bos_token, eos_token })
    }

    /// The prompt for `messages`, ending where the assistant's reply begins. A template that
    /// refuses the messages (`raise_exception`) gives its message back as the error.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        match self {
            ChatFormat::Default => {
                let mut prompt = String::new();
                for m in messages {
                    prompt.push_str(&format!("<|{}|>\n{}\n", m.role, m.content));
                }
                prompt.push_str("<|assistant|>\n");
                Ok(prompt)
            }
            ChatFormat::Jinja { env, bos_token, eos_token } => {
                let template = env.get_template("chat").map_err(|e| e.to_string())?;
                template
                    .render(context! {
                        messages => Value::from(minijinja::value::Serde(messages)),
                        add_generation_prompt => true,
                        bos_token => bos_token,
                        eos_token => eos_token,
                    })
                    .map_err(|e| match e.kind() {
                        ErrorKind::InvalidOperation => {
                            e.detail().unwrap_or("the template refused").to_string()
                        }
                        _ => format!("the chat template failed: {e}"),
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages() -> Vec<Message> {
        vec![
            Message { role: "system".into(), content: "Be brief.".into() },
            Message { role: "user".into(), content: "Hi".into() },
        ]
    }

    #[test]
    fn the_default_format_is_documented() {
        let prompt = ChatFormat::Default.render(&messages()).unwrap();
        assert_eq!(prompt, "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n");
    }

    #[test]
    fn chatml_renders_as_transformers_does() {
        // Qwen2's ChatML template, as published.
        let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
        let format = ChatFormat::jinja(template.into(), String::new(), "<|im_end|>".into()).unwrap();
        assert_eq!(
            format.render(&messages()).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let only_user = &messages()[1..];
        assert!(format.render(only_user).unwrap().starts_with("<|im_start|>system\nYou are a helpful"));
    }

    #[test]
    fn python_methods_and_refusals_work() {
        // Llama 2's template uses `.strip()` and refuses out-of-order roles.
        let template = "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate') }}{% endif %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'].strip() + ' [/INST]' }}{% else %}{{ ' ' + m['content'].strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
        let format = ChatFormat::jinja(template.into(), "<s>".into(), "</s>".into()).unwrap();
        let user = |c: &str| Message { role: "user".into(), content: c.into() };
        assert_eq!(format.render(&[user("  Hi  ")]).unwrap(), "<s>[INST] Hi [/INST]");
        assert_eq!(format.render(&[user("a"), user("b")]).unwrap_err(), "roles must alternate");
    }
}
