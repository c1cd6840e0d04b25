//! The `student` stage executor: the distilled student writes a rationale for every user.
//! Task `s` loads the base model with the distill stage's adapters merged in, asks it about
//! every user of shard `s` with the student prompt, and writes `student/part-NNNNN.parquet`
//! (the teacher's schema, [`slim_shared::schema::RATIONALES`]), through the same code as the
//! teacher stage ([`rationales::write_shard`]).
//!
//! Answers are greedy; one that does not split into three steps is asked once more, warmer.
//! The model name in the rows and in the response cache carries a hash of the adapters, so a
//! retrained student never reuses an older student's answers.

use crate::backend::{self, Backend};
use crate::chat::cache::CachedChat;
use crate::chat::local::LocalChat;
use crate::executor::{StageExecutor, TaskContext, TaskResult};
use crate::llm::Engine;
use crate::llm::lora::LoraAdapters;
use crate::stages::distill::{ADAPTER_CONFIG_KEY, ADAPTER_KEY};
use crate::stages::rationales::{self, AskSettings, ShardRequest, ShardUsers};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use slim_shared::manifest::StudentSection;
use slim_shared::markers::job_key;
use slim_shared::prompts::PromptKind;
use slim_shared::stage::Stage;
use slim_shared::store::Location;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The student last loaded, by (base model, adapter hash): loading and merging cost more than
/// a small shard.
type Cached = Option<(String, LocalChat)>;

#[derive(Default)]
pub struct StudentExecutor {
    chat: Mutex<Cached>,
}

impl StudentExecutor {
    async fn chat(&self, ctx: &TaskContext) -> Result<LocalChat> {
        let s = &ctx.job.manifest.student;
        let base = match ctx.job.resolve(&s.base_model) {
            Location::Local(path) => path,
            other => bail!("student.base_model must be a local file or folder, not {other}"),
        };
        let job_id = ctx.job.job_id();
        let read = |key: &'static str| async move {
            let full = job_key(job_id, key);
            ctx.store.get(&full).await.with_context(|| {
                format!(
                    "reading {} (written by the distill stage; run it first)",
                    ctx.store.location(&full)
                )
            })
        };
        let weights = read(ADAPTER_KEY).await?;
        let config = read(ADAPTER_CONFIG_KEY).await?;
        let hash = format!("{:x}", Sha256::digest(&weights));
        let identity = format!("{}#{hash}", base.display());
        if let Some((cached, chat)) = &*self.chat.lock().unwrap_or_else(|e| e.into_inner())
            && *cached == identity
        {
            return Ok(chat.clone());
        }
        let config =
            String::from_utf8(config.to_vec()).context("student/adapter.json is not UTF-8")?;
        let settings = s.clone();
        let chat = crate::executor::blocking(move || {
            load_student(&base, &weights, &config, &hash[..12], &settings)
        })
        .await??;
        *self.chat.lock().unwrap_or_else(|e| e.into_inner()) = Some((identity, chat.clone()));
        Ok(chat)
    }
}

/// The base model with the adapters merged, behind an engine thread.
fn load_student(
    base: &Path,
    weights: &[u8],
    config: &str,
    short_hash: &str,
    settings: &StudentSection,
) -> Result<LocalChat> {
    let device = backend::device();
    let mut engine = Engine::<Backend>::load(base, &device)
        .with_context(|| format!("loading the student base model {}", base.display()))?;
    let (adapters, _) = LoraAdapters::from_peft(
        weights,
        config,
        (ADAPTER_KEY, ADAPTER_CONFIG_KEY),
        &engine.model,
        &device,
    )?;
    engine.model.merge(&adapters)?;
    let base_name = base.file_name().map_or_else(
        || settings.base_model.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(LocalChat::start(
        engine,
        &format!("{base_name}+lora-{short_hash}"),
        settings.generation_batch as usize,
    ))
}

/// How the student is asked: greedy, one warmer retry for an answer without three steps.
fn ask_settings(s: &StudentSection) -> AskSettings {
    AskSettings {
        max_new_tokens: s.max_new_tokens,
        temperature: 0.0,
        top_p: 1.0,
        parse_retries: 1,
        history_token_budget: s.history_token_budget as usize,
        prompt_price_per_mtok: 0.0,
        completion_price_per_mtok: 0.0,
    }
}

#[async_trait]
impl StageExecutor for StudentExecutor {
    fn stage(&self) -> Stage {
        Stage::Student
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let s = &ctx.job.manifest.student;
        let backend = Arc::new(self.chat(ctx).await?);
        let chat = CachedChat::new(backend, ctx.store.clone());
        let request = ShardRequest {
            kind: PromptKind::Student,
            template: PromptKind::Student.template(s.prompt_template.as_deref()),
            settings: ask_settings(s),
            users: ShardUsers::All,
        };
        rationales::write_shard(ctx, &chat, &request).await
    }
}
