//! The in-process chat backend: one LLM engine on its own thread, batching what it is asked.
//!
//! Requests queue on a channel; the engine thread takes what is waiting (up to `max_batch`),
//! groups requests with equal sampling, and generates each group as one batch. The teacher's
//! `local` backend and `slim serve` both run on this, so concurrent HTTP clients share batches
//! the same way a shard's users do.

use super::{ChatAnswer, ChatBackend, ChatRequest};
use crate::backend::{self, Backend};
use crate::llm::chat::Message;
use crate::llm::generate::Sampling;
use crate::llm::{Engine, Prompt};
use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;
use tracing::debug;

/// A request that cannot fit the model's context: the asker's mistake, not the server's.
#[derive(Debug, thiserror::Error)]
#[error(
    "a prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the model's context of {context} tokens"
)]
pub struct PromptTooLong {
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub context: usize,
}

struct Job {
    request: ChatRequest,
    reply: oneshot::Sender<Result<ChatAnswer>>,
}

/// A handle to an engine thread; cheap to clone. The thread ends when every handle is gone.
#[derive(Clone)]
pub struct LocalChat {
    jobs: mpsc::Sender<Job>,
    engine: Arc<Engine<Backend>>,
    name: String,
}

impl LocalChat {
    /// Loads a model (blocking: call from a blocking thread) and starts its engine thread.
    pub fn load(path: &Path, name: &str, max_batch: usize) -> Result<Self> {
        Self::load_adapted(path, None, name, max_batch)
    }

    /// [`LocalChat::load`] with a LoRA adapter folder (PEFT layout, or a job's `student/`
    /// folder) merged into the model.
    pub fn load_adapted(
        path: &Path,
        adapter: Option<&Path>,
        name: &str,
        max_batch: usize,
    ) -> Result<Self> {
        let device = backend::device();
        let mut engine = Engine::<Backend>::load(path, &device)
            .with_context(|| format!("loading the model {}", path.display()))?;
        if let Some(dir) = adapter {
            let (adapters, config) =
                crate::llm::lora::LoraAdapters::load_peft(dir, &engine.model, &device)
                    .with_context(|| format!("loading the adapter in {}", dir.display()))?;
            engine.model.merge(&adapters)?;
            tracing::info!(adapter = %dir.display(), rank = config.rank, "merged the LoRA adapter");
        }
        Ok(Self::start(engine, name, max_batch))
    }

    /// Starts the engine thread over a loaded engine. `name` is the model name answers carry.
    pub fn start(engine: Engine<Backend>, name: &str, max_batch: usize) -> Self {
        let engine = Arc::new(engine);
        let (jobs, queue) = mpsc::channel::<Job>();
        let worker = engine.clone();
        let max_batch = max_batch.max(1);
        std::thread::Builder::new()
            .name("llm-engine".into())
            .spawn(move || run_engine(&worker, &queue, max_batch))
            .expect("spawning the engine thread");
        Self {
            jobs,
            engine,
            name: name.to_string(),
        }
    }

    /// Answers one request (waits for its batch).
    pub async fn complete_one(&self, request: ChatRequest) -> Result<ChatAnswer> {
        self.complete(vec![request])
            .await
            .pop()
            .expect("one answer per request")
    }

    /// The loaded model's context length in tokens.
    pub fn context_length(&self) -> usize {
        self.engine.model.config.max_position_embeddings
    }
}

fn run_engine(engine: &Engine<Backend>, queue: &mpsc::Receiver<Job>, max_batch: usize) {
    while let Ok(first) = queue.recv() {
        let mut pending = vec![first];
        while pending.len() < max_batch {
            match queue.try_recv() {
                Ok(job) => pending.push(job),
                Err(_) => break,
            }
        }
        while let Some(head) = pending.first() {
            let head = head.request.clone();
            let (group, rest): (Vec<Job>, Vec<Job>) = pending
                .into_iter()
                .partition(|j| j.request.same_sampling(&head));
            pending = rest;
            // A panic in the engine fails its batch, not the thread (and every later request).
            let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                generate_group(engine, &group)
            }))
            .unwrap_or_else(|_| {
                group
                    .iter()
                    .map(|_| Err(anyhow!("the engine panicked on this batch")))
                    .collect()
            });
            for (job, result) in group.into_iter().zip(results) {
                // The asker may have gone (a closed HTTP connection): nothing to do then.
                let _ = job.reply.send(result);
            }
        }
    }
}

/// One batch of requests with equal sampling; a request whose prompt cannot be built fails
/// alone.
fn generate_group(engine: &Engine<Backend>, group: &[Job]) -> Vec<Result<ChatAnswer>> {
    let head = &group[0].request;
    let sampling = Sampling {
        max_new_tokens: head.max_tokens as usize,
        temperature: head.temperature,
        top_p: head.top_p,
        seed: head.seed,
    };
    if let Err(e) = sampling.validate() {
        let message = e.to_string();
        return group.iter().map(|_| Err(anyhow!("{message}"))).collect();
    }
    let mut results: Vec<Option<Result<ChatAnswer>>> = group.iter().map(|_| None).collect();
    let mut ids = Vec::new();
    let mut slots = Vec::new();
    for (i, job) in group.iter().enumerate() {
        let messages = job
            .request
            .messages
            .iter()
            .map(|m| Message::new(&m.role, m.content.clone()))
            .collect();
        let context = engine.model.config.max_position_embeddings;
        match engine.prompt_ids(&Prompt::Chat(messages)) {
            Ok(prompt) if prompt.len() + sampling.max_new_tokens > context => {
                results[i] = Some(Err(PromptTooLong {
                    prompt_tokens: prompt.len(),
                    max_tokens: sampling.max_new_tokens,
                    context,
                }
                .into()));
            }
            Ok(prompt) => {
                ids.push(prompt);
                slots.push(i);
            }
            Err(e) => results[i] = Some(Err(e.context("building the prompt"))),
        }
    }
    if !ids.is_empty() {
        let started = std::time::Instant::now();
        let generated = engine.generate(&ids, &sampling, ids.len());
        let latency_ms = started.elapsed().as_millis() as u64;
        match generated {
            Ok(completions) => {
                let tokens: usize = completions.iter().map(|c| c.completion_tokens).sum();
                debug!(
                    batch = ids.len(),
                    tokens,
                    latency_ms,
                    tokens_per_second =
                        format!("{:.1}", tokens as f64 * 1000.0 / latency_ms.max(1) as f64),
                    "local chat batch"
                );
                for (&i, c) in slots.iter().zip(completions) {
                    results[i] = Some(Ok(ChatAnswer {
                        content: c.text,
                        finish_reason: c.finish_reason.as_str().to_string(),
                        prompt_tokens: c.prompt_tokens as u32,
                        completion_tokens: c.completion_tokens as u32,
                        latency_ms,
                        retries: 0,
                        cached: false,
                    }));
                }
            }
            Err(e) => {
                let message = format!("{e:#}");
                for &i in &slots {
                    results[i] = Some(Err(anyhow!("generation failed: {message}")));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every request has a result"))
        .collect()
}

#[async_trait]
impl ChatBackend for LocalChat {
    fn model(&self) -> &str {
        &self.name
    }

    async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>> {
        // Everything is queued before the first answer is awaited, so the engine thread sees
        // the whole shard and fills its batches.
        let mut waiting = Vec::with_capacity(requests.len());
        for request in requests {
            let (reply, answer) = oneshot::channel();
            let sent = self.jobs.send(Job { request, reply });
            waiting.push((sent.is_ok(), answer));
        }
        let mut results = Vec::with_capacity(waiting.len());
        for (sent, answer) in waiting {
            results.push(match (sent, answer.await) {
                (true, Ok(result)) => result,
                _ => Err(anyhow!("the engine thread has stopped")),
            });
        }
        results
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.engine.tokenizer.encode(text).map_or_else(
            |_| slim_shared::prompts::estimate_tokens(text),
            |ids| ids.len(),
        )
    }
}
