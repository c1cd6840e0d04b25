//! Sentence embeddings with a BERT-family encoder (default: all-MiniLM-L6-v2).
//!
//! A model folder is a Hugging Face / sentence-transformers export: `config.json`,
//! `model.safetensors`, `tokenizer.json`, and optionally `1_Pooling/config.json` (mean or CLS
//! pooling; mean when absent), `modules.json` (a `Normalize` module turns on L2 normalisation)
//! and `sentence_bert_config.json` (`max_seq_length`).
//!
//! Texts are tokenised with the model's own tokenizer, truncated at the maximum length, sorted
//! by length and batched, each batch padded only to its longest text (dynamic padding), so
//! short texts do not pay for long ones. Results come back in the input order.

pub mod bert;

use anyhow::{Context, Result, ensure};
use bert::{Bert, BertConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens (padding excluded).
    Mean,
    /// The first token's state (`[CLS]`).
    Cls,
}

/// A loaded text encoder.
pub struct TextEncoder<B: Backend> {
    bert: Bert<B>,
    tokenizer: Tokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_length: usize,
    pub folder: PathBuf,
    device: Device<B>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: unexpected content", path.display())
    })?))
}

impl<B: Backend> TextEncoder<B> {
    /// Loads the model in `folder`. `max_length` overrides the model's maximum (0 = the
    /// model's); it is capped by the model's position embeddings.
    pub fn load(folder: &Path, max_length: usize, device: &Device<B>) -> Result<Self> {
        ensure!(
            folder.is_dir(),
            "encoder model folder {} not found (run `make models` for the default model)",
            folder.display()
        );
        let config = BertConfig::load(&folder.join("config.json"))?;
        let pooling = match read_json::<PoolingConfig>(&folder.join("1_Pooling/config.json"))? {
            Some(p) if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens => Pooling::Cls,
            _ => Pooling::Mean,
        };
        let normalize = match read_json::<Vec<ModuleEntry>>(&folder.join("modules.json"))? {
            Some(modules) => modules.iter().any(|m| m.kind.ends_with("Normalize")),
            None => true,
        };
        let model_max = read_json::<SentenceBertConfig>(&folder.join("sentence_bert_config.json"))?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(config.max_position_embeddings);
        let max_length = match max_length {
            0 => model_max,
            n => n,
        }
        .min(config.max_position_embeddings);

        let tokenizer_path = folder.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;
        // Padding is ours (per batch); truncation at our maximum, special tokens included.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow::anyhow!("{}: {e}", tokenizer_path.display()))?;
        let bert = Bert::load(config, &folder.join("model.safetensors"), device)?;
        Ok(Self {
            bert,
            tokenizer,
            pooling,
            normalize,
            max_length,
            folder: folder.to_path_buf(),
            device: device.clone(),
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size
    }

    /// Token ids of each text as the model sees them (special tokens, truncation).
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }

    /// One vector per text, in input order. Texts are batched `batch_size` at a time, longest
    /// first, each batch padded to its own longest text.
    pub fn encode(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let ids = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(ids[i].len()));
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| ids[i].as_slice()).collect();
            for (&i, vector) in chunk.iter().zip(self.encode_tokens(&batch)) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// Embeds one batch of token id sequences.
    pub fn encode_tokens(&self, batch: &[&[u32]]) -> Vec<Vec<f32>> {
        let len = batch.iter().map(|t| t.len()).max().unwrap_or(0).max(1);
        let n = batch.len();
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u8; n * len];
        for (row, tokens) in batch.iter().enumerate() {
            ids[row * len..row * len + tokens.len()].copy_from_slice(tokens);
            mask[row * len..row * len + tokens.len()].fill(1);
        }
        let hidden = self.bert.forward(&ids, &mask, n, len);
        let h = self.dim();
        let pooled: Tensor<B, 2> = match self.pooling {
            Pooling::Cls => hidden.slice([0..n, 0..1, 0..h]).reshape([n, h]),
            Pooling::Mean => {
                let weights: Vec<f32> = mask.iter().map(|&m| f32::from(m)).collect();
                let weights =
                    Tensor::<B, 3>::from_data(TensorData::new(weights, [n, len, 1]), &self.device);
                let counts = weights.clone().sum_dim(1).clamp_min(1e-9).reshape([n, 1]);
                (hidden * weights).sum_dim(1).reshape([n, h]) / counts
            }
        };
        let pooled = if self.normalize {
            let norms = pooled
                .clone()
                .powf_scalar(2.0)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            pooled / norms
        } else {
            pooled
        };
        let values: Vec<f32> = pooled
            .into_data()
            .to_vec()
            .expect("the encoder computes in f32");
        values.chunks_exact(h).map(<[f32]>::to_vec).collect()
    }
}
