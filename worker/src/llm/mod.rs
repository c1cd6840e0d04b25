//! The LLM engine: Llama-family models on Burn, loaded from GGUF or Hugging Face safetensors,
//! with their tokenizer and chat template, generating for batches of prompts.
//!
//! The teacher (local mode), the distilled student and `slim serve` all run on [`Engine`].

pub mod chat;
pub mod config;
pub mod cpu_matvec;
pub mod finetune;
pub mod generate;
pub mod gguf;
pub mod host_decode;
pub mod lora;
pub mod model;
pub mod quant;
pub mod tiny;
pub mod tokenizer;
pub mod weights;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use burn::tensor::backend::Backend;
use chat::{ChatTemplate, Message};
use config::LlamaConfig;
use generate::{FinishReason, Sampling, generate_batch};
use gguf::GgufFile;
use model::Llama;
use std::path::{Path, PathBuf};
use tokenizer::LlmTokenizer;
use tracing::{debug, info};

/// What to continue: chat messages rendered with the model's template, or text as is.
#[derive(Debug, Clone)]
pub enum Prompt {
    Chat(Vec<Message>),
    Raw(String),
}

/// One finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
}

/// A loaded model with its tokenizer and chat template.
pub struct Engine<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: LlmTokenizer,
    pub chat: ChatTemplate,
    /// The checkpoint (file or directory), for logs and reports.
    pub source: PathBuf,
    /// Tokens that end a generation.
    pub stop_tokens: Vec<u32>,
}

/// Special tokens that end an assistant turn in the common templates.
const TURN_ENDS: [&str; 3] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"];

impl<B: Backend> Engine<B> {
    /// Loads a GGUF file, a directory holding one, or a Hugging Face directory (config.json,
    /// model.safetensors or shards, tokenizer.json).
    pub fn load(path: &Path, device: &Device<B>) -> Result<Self> {
        let started = std::time::Instant::now();
        let (model, tokenizer) = if path.is_dir() {
            if path.join("config.json").exists() {
                load_hf_dir(path, device)?
            } else {
                load_gguf(&single_gguf_in(path)?, device)?
            }
        } else if path.exists() {
            load_gguf(path, device)?
        } else {
            bail!("{}: no such model file or directory", path.display());
        };
        let chat = ChatTemplate::for_tokenizer(&tokenizer);
        let mut stop_tokens = tokenizer.eos.clone();
        for end in TURN_ENDS {
            if let Some(id) = tokenizer.token_to_id(end)
                && !stop_tokens.contains(&id)
            {
                stop_tokens.push(id);
            }
        }
        info!(
            model = %path.display(),
            layers = model.config.num_hidden_layers,
            hidden = model.config.hidden_size,
            vocab = model.config.vocab_size,
            template = chat.origin,
            seconds = format!("{:.1}", started.elapsed().as_secs_f64()),
            "loaded the language model"
        );
        Ok(Self {
            model,
            tokenizer,
            chat,
            source: path.to_path_buf(),
            stop_tokens,
        })
    }

    /// Token ids of `prompt`: chat messages go through the chat template with the assistant
    /// turn opened.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let text = match prompt {
            Prompt::Chat(messages) => self.chat.render(messages, true)?,
            Prompt::Raw(text) => text.clone(),
        };
        self.tokenizer.encode(&text)
    }

    /// The token that closes an assistant turn in this model's chat format (`<|im_end|>`,
    /// `<|eot_id|>`, ...), else its end-of-sequence token.
    pub fn turn_end_token(&self) -> Option<u32> {
        TURN_ENDS
            .iter()
            .find_map(|end| self.tokenizer.token_to_id(end))
            .or_else(|| self.tokenizer.eos.first().copied())
    }

    /// A training pair for instruction tuning: `user` as a chat prompt with the assistant turn
    /// opened, and `answer` closed by the turn's end token, so the model learns to stop.
    pub fn example(&self, user: &str, answer: &str) -> Result<finetune::Example> {
        let prompt = self.prompt_ids(&Prompt::Chat(vec![Message::new("user", user)]))?;
        let mut answer = self.tokenizer.encode(answer)?;
        answer.extend(self.turn_end_token());
        Ok(finetune::Example { prompt, answer })
    }

    /// Generates for every prompt, `batch_size` at a time (prompts of similar length share a
    /// batch to waste little on padding); results come back in the order of `prompts`.
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        sampling: &Sampling,
        batch_size: usize,
    ) -> Result<Vec<Completion>> {
        let mut order: Vec<usize> = (0..prompts.len()).collect();
        order.sort_by_key(|&i| prompts[i].len());
        let mut results: Vec<Option<Completion>> = vec![None; prompts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
            let started = std::time::Instant::now();
            let generated = generate_batch(&self.model, &batch, sampling, &self.stop_tokens)?;
            let new_tokens: usize = generated.iter().map(|g| g.tokens.len()).sum();
            let prompt_tokens = batch.iter().map(Vec::len).sum();
            slim_shared::telemetry::generated(prompt_tokens, new_tokens, started.elapsed());
            debug!(
                prompts = batch.len(),
                new_tokens,
                tokens_per_second =
                    format!("{:.1}", new_tokens as f64 / started.elapsed().as_secs_f64()),
                "generated a batch"
            );
            for (&i, generated) in chunk.iter().zip(generated) {
                results[i] = Some(Completion {
                    text: self.tokenizer.decode(&generated.tokens)?,
                    completion_tokens: generated.tokens.len(),
                    prompt_tokens: generated.prompt_tokens,
                    finish_reason: generated.finish_reason,
                    tokens: generated.tokens,
                });
            }
        }
        Ok(results
            .into_iter()
            .map(|c| c.expect("every prompt is in one chunk"))
            .collect())
    }
}

fn load_gguf<B: Backend>(path: &Path, device: &Device<B>) -> Result<(Llama<B>, LlmTokenizer)> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = LlmTokenizer::from_gguf(&file)?;
    let model = Llama::load(config, &file, device)
        .with_context(|| format!("loading the model in {}", path.display()))?;
    Ok((model, tokenizer))
}

fn load_hf_dir<B: Backend>(dir: &Path, device: &Device<B>) -> Result<(Llama<B>, LlmTokenizer)> {
    let config = LlamaConfig::from_hf_json(&dir.join("config.json"))?;
    let eos = config
        .eos_token_id
        .as_ref()
        .map(|e| e.ids())
        .unwrap_or_default();
    let tokenizer = LlmTokenizer::from_dir(dir, &eos, config.bos_token_id)?;
    let weights = weights::SafetensorsDir::open(dir)?;
    let model = Llama::load(config, &weights, device)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    Ok((model, tokenizer))
}

/// The one `.gguf` file in `dir`.
fn single_gguf_in(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!(
            "{}: neither config.json (Hugging Face) nor a .gguf file is here",
            dir.display()
        ),
        _ => bail!(
            "{}: several .gguf files; name one: {}",
            dir.display(),
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The default local model the setup step installs (`make models`).
pub fn default_model_path() -> PathBuf {
    PathBuf::from("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[cfg(test)]
mod tests;
