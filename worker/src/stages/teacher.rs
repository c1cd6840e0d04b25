//! The `teacher` stage executor: SLIM's stage 1. Task `s` asks the teacher about the users of
//! shard `s` that are in the sample U' (`in_teacher_sample`) with the three-step
//! chain-of-thought prompt and writes their rationales to `teacher/part-NNNNN.parquet`; the
//! work itself ([`rationales::write_shard`]) is shared with the student stage.
//!
//! Answers come from a [`ChatBackend`]: `openai` (any OpenAI-compatible server), `local` (a
//! model in process) or `rehearsal` (no model), chosen by `[teacher] backend`.

use crate::chat::ChatBackend;
use crate::chat::cache::CachedChat;
use crate::chat::local::LocalChat;
use crate::chat::openai::{OpenAiChat, OpenAiConfig};
use crate::chat::rehearsal::RehearsalChat;
use crate::executor::{StageExecutor, TaskContext, TaskResult};
use crate::stages::rationales::{self, AskSettings, ShardRequest, ShardUsers};
use anyhow::{Result, bail};
use async_trait::async_trait;
use slim_shared::manifest::{LoadedManifest, TeacherBackend};
use slim_shared::prompts::PromptKind;
use slim_shared::stage::Stage;
use slim_shared::store::Location;
use std::sync::{Arc, Mutex};

/// The backend of the last teacher settings seen, kept across tasks: a local model loads once
/// and a remote client keeps its connections and its rate limits.
type Cached = Option<(String, Arc<dyn ChatBackend>)>;

#[derive(Default)]
pub struct TeacherExecutor {
    backend: Mutex<Cached>,
    /// A backend that overrides the manifest's (tests; embedding slim in another program).
    fixed: Option<Arc<dyn ChatBackend>>,
}

impl TeacherExecutor {
    /// An executor that asks `backend`, whatever the manifest says.
    pub fn with_backend(backend: Arc<dyn ChatBackend>) -> Self {
        Self {
            backend: Mutex::new(None),
            fixed: Some(backend),
        }
    }

    async fn backend(&self, job: &LoadedManifest) -> Result<Arc<dyn ChatBackend>> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let t = &job.manifest.teacher;
        // The settings are the identity of a backend; they hold no secret (only the name of
        // the variable that holds the key).
        let key = serde_json::to_string(t).expect("teacher settings serialise");
        if let Some((cached, backend)) = &*self.backend.lock().unwrap_or_else(|e| e.into_inner())
            && *cached == key
        {
            return Ok(backend.clone());
        }
        let backend: Arc<dyn ChatBackend> = match t.backend {
            TeacherBackend::Rehearsal => Arc::new(RehearsalChat),
            TeacherBackend::Openai => Arc::new(OpenAiChat::new(OpenAiConfig::from_manifest(t)?)?),
            TeacherBackend::Local => {
                let path = match job.resolve(&t.model) {
                    Location::Local(path) => path,
                    other => bail!(
                        "teacher.model must be a local file or folder with backend = \"local\", not {other}"
                    ),
                };
                // The file or folder name, not the whole path: the cache key and the rows
                // should not depend on where a worker keeps its models.
                let name = path
                    .file_name()
                    .map_or_else(|| t.model.clone(), |n| n.to_string_lossy().into_owned());
                let batch = t.concurrency.max(1) as usize;
                Arc::new(
                    crate::executor::blocking(move || LocalChat::load(&path, &name, batch))
                        .await??,
                )
            }
        };
        *self.backend.lock().unwrap_or_else(|e| e.into_inner()) = Some((key, backend.clone()));
        Ok(backend)
    }
}

#[async_trait]
impl StageExecutor for TeacherExecutor {
    fn stage(&self) -> Stage {
        Stage::Teacher
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let t = &ctx.job.manifest.teacher;
        let backend = self.backend(&ctx.job).await?;
        let chat = CachedChat::new(backend, ctx.store.clone());
        let request = ShardRequest {
            kind: PromptKind::Teacher,
            template: PromptKind::Teacher.template(t.prompt_template.as_deref()),
            settings: AskSettings::from(t),
            users: ShardUsers::TeacherSample,
        };
        rationales::write_shard(ctx, &chat, &request).await
    }
}
