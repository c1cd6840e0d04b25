//! A tiny random-weight chat model on disk, for tests that run whole stages (distill, student)
//! in seconds: a Hugging Face folder with `config.json`, `model.safetensors` and a byte-level
//! `tokenizer.json` (every byte one token, no merges, ChatML special tokens). Its answers are
//! noise, which is what a pipeline test of the plumbing wants; real-model behaviour is tested
//! against SmolLM2.

use super::config::{EosTokens, LlamaConfig, RopePairing};
use super::weights::{MemoryWeights, NamedTensor, save_hf};
use anyhow::{Context, Result};
use std::path::Path;

/// Token ids of the special tokens, after the 256 bytes.
const IM_START: u32 = 256;
const IM_END: u32 = 257;

/// The configuration of the tiny model: 2 layers, width 32, the byte vocabulary plus ChatML.
pub fn tiny_chat_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 258,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        hidden_act: "silu".into(),
        head_dim: None,
        bos_token_id: None,
        eos_token_id: Some(EosTokens::One(IM_END)),
        rope_pairing: RopePairing::Half,
    }
}

/// GPT-2's map from bytes to printable characters, which byte-level tokenizers use as their
/// alphabet.
fn byte_alphabet() -> Vec<char> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 code point")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("a code point above Latin-1")
            }
        })
        .collect()
}

/// `tokenizer.json` of the tiny model.
fn tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_alphabet()
        .into_iter()
        .enumerate()
        .map(|(id, c)| (c.to_string(), serde_json::json!(id)))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        })
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(IM_START, "<|im_start|>"), special(IM_END, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": []
        }
    })
}

/// Writes the tiny model (weights drawn from `seed`) into `dir`.
pub fn write_tiny_chat_model(dir: &Path, seed: u64) -> Result<()> {
    let config = tiny_chat_config();
    let weights = MemoryWeights::random(&config, seed);
    let mut tensors: Vec<NamedTensor> = weights
        .tensors
        .into_iter()
        .map(|(name, (values, shape))| (name, values, shape))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    save_hf(dir, &config, &tensors)?;
    let write = |name: &str, value: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            serde_json::to_string(&value).expect("JSON serialises"),
        )
        .with_context(|| format!("writing {}", path.display()))
    };
    write("tokenizer.json", tokenizer_json())?;
    write(
        "tokenizer_config.json",
        serde_json::json!({ "eos_token": "<|im_end|>", "add_bos_token": false }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, device};
    use crate::llm::Engine;
    use crate::llm::generate::Sampling;

    #[test]
    fn the_tiny_model_loads_tokenizes_and_generates() {
        let dir = tempfile::tempdir().unwrap();
        write_tiny_chat_model(dir.path(), 1).unwrap();
        let engine = Engine::<Backend>::load(dir.path(), &device()).unwrap();
        let text = "Zelda, café 🤖";
        let ids = engine.tokenizer.encode(text).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        assert_eq!(engine.tokenizer.decode(&ids).unwrap(), text);
        assert_eq!(engine.turn_end_token(), Some(IM_END));
        let example = engine.example("hi", "ok").unwrap();
        assert_eq!(
            example.answer,
            vec![u32::from(b'o'), u32::from(b'k'), IM_END]
        );
        assert_eq!(
            example.prompt[0], IM_START,
            "ChatML from the special tokens"
        );
        let out = engine
            .generate(
                &[example.prompt],
                &Sampling {
                    max_new_tokens: 5,
                    ..Sampling::default()
                },
                1,
            )
            .unwrap();
        assert!(out[0].completion_tokens <= 5);
    }
}
