//! A response cache in the store, in front of any [`ChatBackend`].
//!
//! Answers are kept at `_cache/chat/{hh}/{sha256}.json` under the output root (beside the
//! jobs, not inside one), keyed by the SHA-256 of the model name, the messages and every
//! sampling parameter. So a rerun, a redelivered shard, or another job in the same output root
//! that asks the same question of the same model makes no new request. A cached answer keeps
//! its original latency, tokens and retries, so a rerun writes the same rows (with `cached`
//! set).
//!
//! An unreadable entry is a miss (and is overwritten); a failed write only costs a later
//! request, so it is logged, not fatal.

use super::{ChatAnswer, ChatBackend, ChatRequest};
use anyhow::Result;
use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};
use slim_shared::store::{Store, StoreError};
use std::sync::Arc;
use tracing::warn;

/// The folder of the cache under the output root.
pub const CACHE_PREFIX: &str = "_cache/chat";

pub struct CachedChat<B: ?Sized> {
    inner: Arc<B>,
    store: Arc<dyn Store>,
}

impl<B: ChatBackend + ?Sized> CachedChat<B> {
    /// `store` is rooted at the output root (where the jobs' folders are).
    pub fn new(inner: Arc<B>, store: Arc<dyn Store>) -> Self {
        Self { inner, store }
    }

    /// The store key of a request's answer.
    pub fn key(&self, request: &ChatRequest) -> String {
        #[derive(Serialize)]
        struct Keyed<'a> {
            model: &'a str,
            request: &'a ChatRequest,
        }
        let json = serde_json::to_vec(&Keyed {
            model: self.inner.model(),
            request,
        })
        .expect("a request serialises");
        let hash = hex::encode(Sha256::digest(&json));
        format!("{CACHE_PREFIX}/{}/{hash}.json", &hash[..2])
    }

    async fn lookup(&self, key: &str) -> Option<ChatAnswer> {
        match self.store.get(key).await {
            Ok(bytes) => match serde_json::from_slice::<ChatAnswer>(&bytes) {
                Ok(answer) => Some(answer),
                Err(e) => {
                    warn!(key, error = %e, "unreadable cache entry; asking again");
                    None
                }
            },
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => {
                warn!(key, error = %e, "cannot read the response cache; asking again");
                None
            }
        }
    }
}

#[async_trait]
impl<B: ChatBackend + ?Sized> ChatBackend for CachedChat<B> {
    fn model(&self) -> &str {
        self.inner.model()
    }

    async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>> {
        let keys: Vec<String> = requests.iter().map(|r| self.key(r)).collect();
        let found = futures::future::join_all(keys.iter().map(|k| self.lookup(k))).await;
        // Each miss is asked alone and cached as soon as it is answered, so a task killed
        // half-way keeps what it paid for. Backends batch concurrent asks themselves.
        let asks =
            requests
                .into_iter()
                .zip(found)
                .zip(&keys)
                .map(|((request, hit), key)| async move {
                    if let Some(mut answer) = hit {
                        answer.cached = true;
                        return Ok(answer);
                    }
                    let answer = self
                        .inner
                        .complete(vec![request])
                        .await
                        .pop()
                        .expect("one answer per request")?;
                    let bytes = serde_json::to_vec(&answer).expect("an answer serialises");
                    if let Err(e) = self.store.put(key, bytes.into()).await {
                        warn!(key, error = %e, "cannot write the response cache");
                    }
                    Ok(answer)
                });
        futures::future::join_all(asks).await
    }

    fn count_tokens(&self, text: &str) -> usize {
        self.inner.count_tokens(text)
    }
}
