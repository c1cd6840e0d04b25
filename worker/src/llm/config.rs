//! The shape of a Llama-family model, read from a Hugging Face `config.json` or GGUF metadata.

use super::gguf::GgufFile;
use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopePairing {
    /// Dimension `i` rotates with `i + head_dim / 2` (Hugging Face `rotate_half`).
    Half,
    /// Dimension `2i` rotates with `2i + 1` (Meta's original layout; llama.cpp's converter
    /// permutes Hugging Face Q and K weights into it, so GGUF llama checkpoints use it).
    Interleaved,
}

/// The parts of a Hugging Face `LlamaConfig` the engine uses; GGUF metadata maps onto it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// A single id or a list in Hugging Face configs.
    #[serde(default)]
    pub eos_token_id: Option<EosTokens>,
    /// Not a Hugging Face key: set by the loader from the checkpoint's format.
    #[serde(skip, default = "default_pairing")]
    pub rope_pairing: RopePairing,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EosTokens {
    One(u32),
    Many(Vec<u32>),
}

impl EosTokens {
    pub fn ids(&self) -> Vec<u32> {
        match self {
            EosTokens::One(id) => vec![*id],
            EosTokens::Many(ids) => ids.clone(),
        }
    }
}

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_positions() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_pairing() -> RopePairing {
    RopePairing::Half
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Reads a Hugging Face `config.json`, refusing architectures the engine cannot run.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let raw: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("llama");
        ensure!(
            matches!(model_type, "llama" | "mistral" | "smollm" | "smollm2"),
            "{}: model_type {model_type:?} is not supported (slim runs Llama-family models)",
            path.display()
        );
        // transformers 5 writes RoPE settings as `rope_parameters`, older versions as
        // `rope_theta` (+ `rope_scaling`); scaled RoPE variants are not implemented.
        let mut raw = raw;
        for key in ["rope_parameters", "rope_scaling"] {
            let Some(rope) = raw.get(key).filter(|v| !v.is_null()).cloned() else {
                continue;
            };
            let kind = rope
                .get("rope_type")
                .or_else(|| rope.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            ensure!(
                kind == "default",
                "{}: {key} of type {kind:?} is not supported (slim implements plain RoPE)",
                path.display()
            );
            if let Some(theta) = rope.get("rope_theta").cloned()
                && raw.get("rope_theta").is_none()
            {
                raw["rope_theta"] = theta;
            }
        }
        let config: Self = serde_path_to_error::deserialize(raw)
            .with_context(|| format!("{}: not a Llama config", path.display()))?;
        config
            .validate()
            .with_context(|| path.display().to_string())?;
        Ok(config)
    }

    /// Reads the `llama.*` metadata of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.require_str("general.architecture")?;
        ensure!(
            arch == "llama",
            "{}: architecture {arch:?} is not supported (slim runs llama GGUF files)",
            file.path().display()
        );
        let key = |name: &str| format!("{arch}.{name}");
        let u = |name: &str| -> Result<usize> { Ok(file.require_u64(&key(name))? as usize) };
        let f = |name: &str, default: f64| {
            file.get(&key(name))
                .and_then(|v| v.as_f64())
                .unwrap_or(default)
        };
        let hidden_size = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let vocab_size = match file.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => file
                .require("tokenizer.ggml.tokens")?
                .as_array()
                .map(|tokens| tokens.len())
                .context("tokenizer.ggml.tokens is not an array")?,
        };
        let head_dim = file
            .get(&key("rope.dimension_count"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .filter(|&d| d != hidden_size / heads);
        let config = Self {
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: file
                .get(&key("attention.head_count_kv"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize),
            rope_theta: f("rope.freq_base", default_rope_theta()),
            rms_norm_eps: f("attention.layer_norm_rms_epsilon", default_rms_eps()),
            max_position_embeddings: file
                .get(&key("context_length"))
                .and_then(|v| v.as_u64())
                .map_or(default_max_positions(), |v| v as usize),
            tie_word_embeddings: file.tensor_info("output.weight").is_none(),
            hidden_act: default_hidden_act(),
            head_dim,
            bos_token_id: file
                .get("tokenizer.ggml.bos_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| v as u32),
            eos_token_id: file
                .get("tokenizer.ggml.eos_token_id")
                .and_then(|v| v.as_u64())
                .map(|v| EosTokens::One(v as u32)),
            rope_pairing: RopePairing::Interleaved,
        };
        config
            .validate()
            .with_context(|| file.path().display().to_string())?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.num_attention_heads > 0 && self.kv_heads() > 0,
            "attention head counts must be positive"
        );
        ensure!(
            self.num_attention_heads.is_multiple_of(self.kv_heads()),
            "num_attention_heads {} is not a multiple of num_key_value_heads {}",
            self.num_attention_heads,
            self.kv_heads()
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            "head dimension {} is odd: rotary embeddings need pairs",
            self.head_dim()
        );
        ensure!(
            self.hidden_act == "silu",
            "hidden_act {:?} is not supported (Llama uses \"silu\")",
            self.hidden_act
        );
        Ok(())
    }
}
