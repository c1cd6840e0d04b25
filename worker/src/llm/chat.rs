//! Chat templates: the checkpoint's own Jinja template when it ships one, otherwise a built-in
//! ChatML or Llama-style template chosen by the special tokens the vocabulary has.

use super::tokenizer::LlmTokenizer;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + \
    message['content'] + '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}\
    {{ '<|im_start|>assistant\\n' }}{% endif %}";

const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + \
    message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}\
    {% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\
    {% endif %}";

const LLAMA2: &str = "{% set ns = namespace(system='') %}{% for message in messages %}\
    {% if message['role'] == 'system' %}{% set ns.system = '<<SYS>>\\n' + message['content'] + \
    '\\n<</SYS>>\\n\\n' %}{% elif message['role'] == 'user' %}{{ bos_token + '[INST] ' + ns.system + \
    message['content'] | trim + ' [/INST]' }}{% set ns.system = '' %}{% else %}\
    {{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}";

/// Which template renders prompts.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    /// Where `source` came from, for logs and errors.
    pub origin: &'static str,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// The checkpoint's template, or the built-in one its special tokens call for.
    pub fn for_tokenizer(tokenizer: &LlmTokenizer) -> Self {
        let (source, origin) = match &tokenizer.chat_template {
            Some(template) => (template.clone(), "checkpoint"),
            None if tokenizer.token_to_id("<|im_start|>").is_some() => (CHATML.into(), "ChatML"),
            None if tokenizer.token_to_id("<|start_header_id|>").is_some() => {
                (LLAMA3.into(), "Llama 3")
            }
            None => (LLAMA2.into(), "Llama 2"),
        };
        let token_text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .unwrap_or_default()
        };
        Self {
            source,
            origin,
            bos_token: token_text(tokenizer.bos),
            eos_token: token_text(tokenizer.eos.first().copied()),
        }
    }

    /// Renders `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        // Hugging Face templates call Python string methods (`.strip()`, `.startswith()`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", &self.source)
            .with_context(|| format!("the {} chat template does not parse", self.origin))?;
        env.get_template("chat")
            .and_then(|template| {
                template.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.bos_token,
                    eos_token => self.eos_token,
                })
            })
            .with_context(|| format!("rendering the {} chat template", self.origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            origin: "test",
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn chatml_opens_the_assistant_turn() {
        let text = template(CHATML)
            .render(
                &[
                    Message::new("system", "Be brief."),
                    Message::new("user", "Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama_templates_place_system_and_special_tokens() {
        let two = template(LLAMA2)
            .render(
                &[
                    Message::new("system", "S"),
                    Message::new("user", " U "),
                    Message::new("assistant", "A"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(two, "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST] A </s>");
        let three = template(LLAMA3)
            .render(&[Message::new("user", "U")], true)
            .unwrap();
        assert_eq!(
            three,
            "<s><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = template(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}\
             {{ messages[0]['content'].strip() }}",
        );
        assert_eq!(
            t.render(&[Message::new("user", "  x ")], false).unwrap(),
            "x"
        );
        let err = format!(
            "{:#}",
            t.render(&[Message::new("system", "x")], false).unwrap_err()
        );
        assert!(err.contains("user first"), "{err}");
    }
}
