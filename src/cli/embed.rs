//! `slim embed`: sentence embeddings from the command line, one JSON array per text.

use anyhow::{Context, Result};
use clap::Args;
use slim_worker::backend::{self, Backend};
use slim_worker::encoder::TextEncoder;
use std::io::{BufRead, Write};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed. Without any, one text per line of standard input.
    pub texts: Vec<String>,
    /// Encoder model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = "models/all-minilm-l6-v2")]
    pub model: PathBuf,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Truncation length in tokens (0 = the model's maximum).
    #[arg(long, default_value_t = 0)]
    pub max_length: usize,
    /// Print each text's token ids instead of its embedding.
    #[arg(long)]
    pub tokens: bool,
}

pub async fn run(args: EmbedArgs) -> Result<()> {
    let texts = if args.texts.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .context("reading texts from standard input")?
    } else {
        args.texts.clone()
    };
    tokio::task::spawn_blocking(move || -> Result<()> {
        let encoder =
            TextEncoder::<Backend>::load(&args.model, args.max_length, &backend::device())?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut out = std::io::stdout().lock();
        if args.tokens {
            for ids in encoder.tokenize(&refs)? {
                writeln!(out, "{}", serde_json::to_string(&ids)?)?;
            }
        } else {
            for vector in encoder.encode(&refs, args.batch_size)? {
                writeln!(out, "{}", serde_json::to_string(&vector)?)?;
            }
        }
        Ok(())
    })
    .await?
}
