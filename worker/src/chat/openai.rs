//! A client for any OpenAI-compatible chat-completions endpoint, built for batch work.
//!
//! - One pooled HTTP client (connections are reused across requests and tasks).
//! - At most `concurrency` requests in flight.
//! - Requests-per-minute and tokens-per-minute limits, as pacing: each request takes the next
//!   free slot, so a shard of thousands of users never bursts past the provider's limits.
//! - A timeout per request; timeouts, connection errors, 408, 429, 5xx, cut or invalid bodies
//!   are retried up to `max_retries` times with exponential backoff and full jitter, or after
//!   the server's `Retry-After` (in seconds; a date falls back to the backoff), which also holds
//!   back every other request of this client (a 429 means the whole client is too fast, not one
//!   request). Other 4xx fail at once.
//! - The API key comes from the environment variable the manifest names. It is sent as a
//!   sensitive header and never logged, printed or written: [`ApiKey`]'s `Debug` hides it and
//!   no error message includes request headers.

use super::wire::{ChatCompletionRequest, ChatCompletionResponse};
use super::{ChatAnswer, ChatBackend, ChatRequest};
use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue, RETRY_AFTER};
use slim_shared::manifest::TeacherSection;
use slim_shared::prompts::estimate_tokens;
use std::fmt;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

/// A secret that never shows in logs.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// How to reach the endpoint and how hard to push it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including the version, e.g. `https://api.openai.com/v1`;
    /// requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<ApiKey>,
    pub concurrency: usize,
    /// 0 = unlimited.
    pub requests_per_minute: u32,
    /// 0 = unlimited. Counted before sending as prompt characters / 4 + `max_tokens`.
    pub tokens_per_minute: u32,
    pub timeout: Duration,
    pub max_retries: u32,
    /// First backoff; doubled per retry up to `backoff_max`, with full jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl OpenAiConfig {
    /// The settings of a manifest's `[teacher]`, with the API key read from the environment
    /// variable it names.
    pub fn from_manifest(t: &TeacherSection) -> Result<Self> {
        let base_url = t
            .base_url
            .clone()
            .context("teacher.base_url is required with backend = \"openai\"")?;
        let api_key = match &t.api_key_env {
            Some(name) => Some(ApiKey(std::env::var(name).map_err(|_| {
                anyhow!(
                    "teacher.api_key_env names the environment variable {name}, which is not set \
                     in this worker's environment"
                )
            })?)),
            None => None,
        };
        Ok(Self {
            base_url,
            model: t.model.clone(),
            api_key,
            concurrency: t.concurrency.max(1) as usize,
            requests_per_minute: t.requests_per_minute,
            tokens_per_minute: t.tokens_per_minute,
            timeout: Duration::from_secs(t.timeout_secs.max(1)),
            max_retries: t.max_retries,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        })
    }
}

/// Spaces out uses of a budget per minute: each use books the next free instant.
struct Pacer {
    /// Time one unit costs; zero = unlimited.
    per_unit: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    fn per_minute(limit: u32) -> Self {
        Self {
            per_unit: if limit == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(60) / limit
            },
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for the slot of `units` units.
    async fn take(&self, units: u32) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + self.per_unit * units;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Nothing starts before `until` (a server asked us to wait).
    async fn hold_until(&self, until: Instant) {
        let mut next = self.next.lock().await;
        *next = (*next).max(until);
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt, after `retry_after` if the server said so.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    Permanent(anyhow::Error),
}

pub struct OpenAiChat {
    config: OpenAiConfig,
    url: String,
    client: reqwest::Client,
    auth: Option<HeaderValue>,
    slots: Semaphore,
    requests: Pacer,
    tokens: Pacer,
}

impl OpenAiChat {
    pub fn new(config: OpenAiConfig) -> Result<Self> {
        let url = format!("{}/chat/completions", config.base_url.trim_end_matches('/'));
        reqwest::Url::parse(&url)
            .with_context(|| format!("teacher.base_url: {url} is not a URL"))?;
        let auth = match &config.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.0))
                    .map_err(|_| anyhow!("the API key holds characters a header cannot carry"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(config.concurrency)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            url,
            client,
            auth,
            slots: Semaphore::new(config.concurrency.max(1)),
            requests: Pacer::per_minute(config.requests_per_minute),
            tokens: Pacer::per_minute(config.tokens_per_minute),
            config,
        })
    }

    /// One request with its retries.
    pub async fn complete_one(&self, request: &ChatRequest) -> Result<ChatAnswer> {
        let body = ChatCompletionRequest {
            model: Some(self.config.model.clone()),
            messages: request.messages.clone(),
            max_tokens: Some(request.max_tokens),
            temperature: Some(request.temperature),
            top_p: Some(request.top_p),
            seed: Some(request.seed),
            ..Default::default()
        };
        let prompt_chars: usize = request.messages.iter().map(|m| m.content.len()).sum();
        let token_estimate = (prompt_chars.div_ceil(4) as u32).saturating_add(request.max_tokens);
        let mut retries = 0;
        loop {
            let outcome = {
                let _slot = self
                    .slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                self.requests.take(1).await;
                self.tokens.take(token_estimate).await;
                let started = Instant::now();
                self.attempt(&body)
                    .await
                    .map(|answer| (answer, started.elapsed()))
            };
            match outcome {
                Ok((mut answer, latency)) => {
                    answer.latency_ms = latency.as_millis() as u64;
                    answer.retries = retries;
                    if answer.prompt_tokens == 0 && answer.completion_tokens == 0 {
                        // The server reported no usage: estimate it for the accounting.
                        answer.prompt_tokens = prompt_chars.div_ceil(4) as u32;
                        answer.completion_tokens = estimate_tokens(&answer.content) as u32;
                    }
                    slim_shared::telemetry::teacher_answer(
                        answer.prompt_tokens,
                        answer.completion_tokens,
                        latency,
                    );
                    return Ok(answer);
                }
                Err(Failure::Permanent(error)) => return Err(error),
                Err(Failure::Transient { error, retry_after }) => {
                    if retries >= self.config.max_retries {
                        bail!(
                            "{} failed after {} attempt(s); last error: {error}",
                            self.url,
                            retries + 1
                        );
                    }
                    let delay = match retry_after {
                        Some(delay) => {
                            self.requests.hold_until(Instant::now() + delay).await;
                            delay
                        }
                        None => self.backoff(retries),
                    };
                    retries += 1;
                    slim_shared::telemetry::teacher_retry();
                    warn!(
                        url = %self.url,
                        retry = retries,
                        delay_ms = delay.as_millis() as u64,
                        %error,
                        "chat request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Exponential backoff with full jitter: uniform in [0, min(max, base * 2^retry)].
    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base
            .saturating_mul(1u32 << retry.min(20))
            .min(self.config.backoff_max);
        ceiling.mul_f64(rand::random::<f64>())
    }

    async fn attempt(&self, body: &ChatCompletionRequest) -> Result<ChatAnswer, Failure> {
        let transient = |error: String, retry_after| Failure::Transient { error, retry_after };
        let mut request = self.client.post(&self.url).json(body);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        // reqwest's errors name the URL and the cause, never the headers.
        let response = request.send().await.map_err(|e| {
            slim_shared::telemetry::teacher_request("transport");
            transient(describe(&e), None)
        })?;
        let status = response.status();
        slim_shared::telemetry::teacher_request(status.as_str());
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transient(format!("reading the answer: {}", describe(&e)), None))?;
        let excerpt = || {
            let text = String::from_utf8_lossy(&bytes);
            text.chars().take(300).collect::<String>()
        };
        if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            return Err(transient(
                format!("HTTP {status}: {}", excerpt()),
                retry_after,
            ));
        }
        if !status.is_success() {
            return Err(Failure::Permanent(anyhow!(
                "{} answered HTTP {status}: {}",
                self.url,
                excerpt()
            )));
        }
        // A cut or garbled body is a transport fault (a proxy, a dropped connection): retry.
        let parsed: ChatCompletionResponse = serde_json::from_slice(&bytes)
            .map_err(|e| transient(format!("not a chat completion ({e}): {}", excerpt()), None))?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| transient("the answer has no choices".into(), None))?;
        let usage = parsed.usage.unwrap_or_default();
        debug!(
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            "chat answer"
        );
        Ok(ChatAnswer {
            content: choice.message.content,
            finish_reason: choice.finish_reason.unwrap_or_else(|| "unknown".into()),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_ms: 0,
            retries: 0,
            cached: false,
        })
    }
}

/// A reqwest error with its causes (the top level alone often says just "error sending").
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        format!("timed out: {error}")
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[async_trait]
impl ChatBackend for OpenAiChat {
    fn model(&self) -> &str {
        &self.config.model
    }

    async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>> {
        futures::future::join_all(requests.iter().map(|r| self.complete_one(r))).await
    }
}
