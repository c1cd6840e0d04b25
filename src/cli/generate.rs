//! `slim generate`: text from a local model, for people trying a checkpoint. Only the generated
//! text goes to stdout; the model summary and token counts go to the log on stderr.

use anyhow::{Context, Result};
use clap::Args;
use slim_worker::backend::{self, Backend};
use slim_worker::llm::chat::Message;
use slim_worker::llm::generate::Sampling;
use slim_worker::llm::{Engine, Prompt, default_model_path};
use std::io::Read;
use std::path::PathBuf;
use tracing::info;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// GGUF file, a folder holding one, or a Hugging Face folder (config.json,
    /// model.safetensors, tokenizer.json). Default: SmolLM2-135M-Instruct from `make models`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The prompt; `-` or none reads it from standard input.
    #[arg(long)]
    pub prompt: Option<String>,
    /// A system message placed before the prompt (chat mode only).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Send the prompt text as is, without the model's chat template.
    #[arg(long)]
    pub raw: bool,
}

pub async fn run(args: GenerateArgs) -> Result<()> {
    let prompt = match args.prompt.as_deref() {
        Some(text) if text != "-" => text.to_string(),
        _ => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the prompt from standard input")?;
            text
        }
    };
    let sampling = Sampling {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling.validate()?;
    let model = args.model.clone().unwrap_or_else(default_model_path);
    tokio::task::spawn_blocking(move || -> Result<()> {
        let engine = Engine::<Backend>::load(&model, &backend::device())?;
        let prompt = if args.raw {
            Prompt::Raw(prompt)
        } else {
            let mut messages = Vec::new();
            if let Some(system) = args.system {
                messages.push(Message::new("system", system));
            }
            messages.push(Message::new("user", prompt));
            Prompt::Chat(messages)
        };
        let ids = engine.prompt_ids(&prompt)?;
        let started = std::time::Instant::now();
        let completion = engine.generate(&[ids], &sampling, 1)?.remove(0);
        let seconds = started.elapsed().as_secs_f64();
        info!(
            prompt_tokens = completion.prompt_tokens,
            completion_tokens = completion.completion_tokens,
            finish_reason = completion.finish_reason.as_str(),
            tokens_per_second = format!("{:.1}", completion.completion_tokens as f64 / seconds),
            backend = backend::NAME,
            "generated"
        );
        println!("{}", completion.text);
        Ok(())
    })
    .await?
}
