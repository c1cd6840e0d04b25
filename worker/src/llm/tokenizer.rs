//! The model's tokenizer, with the `tokenizers` crate: from a `tokenizer.json`, or rebuilt from
//! the GPT-2 BPE vocabulary, merges and pre-tokenizer a GGUF file carries.

use super::gguf::{GgufFile, Value};
use anyhow::{Context, Result, anyhow, bail, ensure};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// llama.cpp's split for Llama 3 style vocabularies (`llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// A tokenizer plus what generation needs to know about its special tokens.
pub struct LlmTokenizer {
    inner: Tokenizer,
    /// Prepended to every prompt when the checkpoint asks for it.
    pub bos: Option<u32>,
    pub add_bos: bool,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
    /// The checkpoint's Jinja chat template, when it has one.
    pub chat_template: Option<String>,
}

impl LlmTokenizer {
    /// Rebuilds the tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`).
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path().display().to_string();
        let model = file.require_str("tokenizer.ggml.model")?;
        ensure!(
            model == "gpt2",
            "{path}: tokenizer model {model:?} is not supported (slim rebuilds GPT-2 BPE \
             tokenizers from GGUF; give a Hugging Face directory with tokenizer.json instead)"
        );
        let strings = |key: &str| -> Result<Vec<String>> {
            file.require(key)?
                .as_array()
                .with_context(|| format!("{path}: {key} is not an array"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .with_context(|| format!("{path}: {key} holds a non-string"))
                })
                .collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("{path}: merge {merge:?} is not two tokens"))
            })
            .collect::<Result<Vec<_>>>()?;
        let types: Vec<i64> = match file.get("tokenizer.ggml.token_type") {
            Some(Value::Array(values)) => values.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        let pre = file
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let (pre_tokenizer, ignore_merges) =
            pre_tokenizer_for(pre).with_context(|| format!("{path}: tokenizer.ggml.pre"))?;

        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.clone(), id as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(ignore_merges)
            .build()
            .map_err(|e| anyhow!("{path}: building the BPE model: {e}"))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens are matched whole and skipped when decoding; user-defined ones are
        // matched whole but kept.
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|&(_, &t)| t == kind)
                .map(|(token, _)| AddedToken::from(token.clone(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_CONTROL, true));
        inner.add_tokens(&added(TOKEN_USER_DEFINED, false));

        let id = |key: &str| file.get(key).and_then(Value::as_u64).map(|v| v as u32);
        Ok(Self {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            add_bos: file
                .get("tokenizer.ggml.add_bos_token")
                .is_some_and(|v| matches!(v, Value::Bool(true))),
            eos: id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            chat_template: file
                .get("tokenizer.chat_template")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Loads `tokenizer.json` from a Hugging Face directory, with the special tokens and chat
    /// template of `tokenizer_config.json` when present.
    pub fn from_dir(
        dir: &Path,
        eos_from_config: &[u32],
        bos_from_config: Option<u32>,
    ) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("{}: not a readable tokenizer: {e}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", config_path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        // Special tokens are strings or `{"content": ...}` objects.
        let token_id = |key: &str| -> Option<u32> {
            let value = config.get(key)?;
            let text = value.as_str().or_else(|| value.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        let mut eos = eos_from_config.to_vec();
        if let Some(id) = token_id("eos_token")
            && !eos.contains(&id)
        {
            eos.push(id);
        }
        Ok(Self {
            bos: bos_from_config.or_else(|| token_id("bos_token")),
            add_bos: config
                .get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            eos,
            chat_template: config
                .get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            inner,
        })
    }

    /// Token ids of `text`; special-token strings in it become their ids. Adds BOS when the
    /// checkpoint asks for it and the text does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        let mut ids = encoding.get_ids().to_vec();
        if self.add_bos
            && let Some(bos) = self.bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding {} tokens: {e}", ids.len()))
    }

    /// The vocabulary entry of `id` as written (special tokens read as themselves).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value, and whether BPE should
/// take whole words found in the vocabulary without merging (Llama 3).
fn pre_tokenizer_for(pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => (gpt2(), false),
        // Each digit on its own, then the GPT-2 split.
        "smollm" | "starcoder" | "refact" | "codeshell" => (
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                gpt2(),
            ])),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" | "falcon3" => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("compiling the Llama 3 split: {e}"))?;
            (
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
                ])),
                true,
            )
        }
        other => bail!(
            "pre-tokenizer {other:?} is not supported (slim knows default, gpt-2, smollm, \
             starcoder, refact, codeshell, llama-bpe); give a directory with tokenizer.json"
        ),
    })
}
