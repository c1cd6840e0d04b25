//! Chat backends: one interface over the places an answer can come from, with the real remote
//! implementation and the in-process one side by side.
//!
//! - [`openai`]: any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM,
//!   llama.cpp server, Ollama, `slim serve`), built for batch work: bounded concurrency, request
//!   and token rate limits, timeouts, retries with backoff that honour `Retry-After`.
//! - [`local`]: the in-process LLM engine, batched.
//! - [`rehearsal`]: no model at all: three-step answers built from the prompt's purchases, for
//!   rehearsing a deployment and testing the pipeline without paying for a teacher.
//! - [`cache`]: a wrapper that answers repeated requests from the job's store.
//! - [`server`]: the other side: `slim serve`, an OpenAI-compatible server over the engine.
//! - [`wire`]: the JSON shapes both sides use.
//!
//! Stages see only [`ChatBackend`]; they never know which one answers.

pub mod cache;
pub mod local;
pub mod openai;
pub mod rehearsal;
pub mod server;
pub mod wire;

use anyhow::Result;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// One question: a conversation and how to sample the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<wire::WireMessage>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl ChatRequest {
    /// A single user message.
    pub fn user(
        text: impl Into<String>,
        max_tokens: u32,
        temperature: f32,
        top_p: f32,
        seed: u64,
    ) -> Self {
        Self {
            messages: vec![wire::WireMessage {
                role: "user".into(),
                content: text.into(),
            }],
            max_tokens,
            temperature,
            top_p,
            seed,
        }
    }

    /// Whether two requests may share one generation batch (equal sampling).
    pub(crate) fn same_sampling(&self, other: &Self) -> bool {
        self.max_tokens == other.max_tokens
            && self.temperature == other.temperature
            && self.top_p == other.top_p
            && self.seed == other.seed
    }
}

/// One answer and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatAnswer {
    pub content: String,
    /// "stop", "length", or what the server said.
    pub finish_reason: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Wall time of the successful request (queueing for a rate limit excluded).
    pub latency_ms: u64,
    /// Failed attempts before the answer (timeouts, 429, 5xx, broken bodies).
    pub retries: u32,
    /// Served from the response cache: no request was made for it now.
    #[serde(default)]
    pub cached: bool,
}

/// Where answers come from.
#[async_trait]
pub trait ChatBackend: Send + Sync {
    /// The model name recorded with every answer (and part of the cache key).
    fn model(&self) -> &str;

    /// Answers every request; results come back in the order of `requests`. One request's
    /// failure does not fail the others.
    async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>>;

    /// Tokens of `text` for prompt budgets: exact when the backend has the tokenizer, else an
    /// estimate.
    fn count_tokens(&self, text: &str) -> usize {
        slim_shared::prompts::estimate_tokens(text)
    }
}
