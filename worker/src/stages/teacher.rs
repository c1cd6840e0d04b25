//! The `teacher` stage executor: SLIM's stage 1. Task `s` asks the teacher about the users of
//! shard `s` that are in the sample U' (`in_teacher_sample`) and writes their rationales to
//! `teacher/part-NNNNN.parquet` (schema [`slim_shared::schema::RATIONALES`]).
//!
//! - Prompts: the three-step chain-of-thought template over the user's training history only
//!   (never the validation or test item), cut oldest-first to `teacher.history_token_budget`.
//! - Answers come from a [`ChatBackend`] (`openai` or `local`) behind the response cache, so a
//!   redelivered or rerun shard asks nothing twice.
//! - An answer that cannot be split into three steps is asked again up to
//!   `teacher.parse_retries` times (with a new seed, and temperature 0.7 when the manifest's is
//!   0, since a greedy model would repeat itself); the last one is kept with `parse_error` set.
//!   Every sampled user of the shard gets exactly one row.
//! - A user the backend cannot answer (retries exhausted, a 4xx) fails the task, naming the
//!   user; answers already received stay cached, so the redelivered task only asks the rest.
//! - Accounting per row (tokens, latency, retries, cost) and per task in the marker's counters,
//!   which `slim run` and `slim status` show.

use crate::chat::cache::CachedChat;
use crate::chat::local::LocalChat;
use crate::chat::openai::{OpenAiChat, OpenAiConfig};
use crate::chat::{ChatAnswer, ChatBackend, ChatRequest};
use crate::executor::{StageExecutor, TaskContext, TaskResult};
use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use slim_shared::manifest::{LoadedManifest, TeacherBackend, TeacherSection};
use slim_shared::markers::job_key;
use slim_shared::prompts::{self, BuiltPrompt, PromptKind, Steps};
use slim_shared::schema::{self, ItemRow, RationaleRow};
use slim_shared::stage::Stage;
use slim_shared::store::Location;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tracing::info;

/// Temperature of parse retries when the manifest asks for greedy answers.
const RETRY_TEMPERATURE: f32 = 0.7;

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
                    tokio::task::spawn_blocking(move || LocalChat::load(&path, &name, batch))
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
        let job_id = ctx.job.job_id();
        let t = ctx.job.manifest.teacher.clone();
        let backend = self.backend(&ctx.job).await?;
        let chat = CachedChat::new(backend, ctx.store.clone());

        let read = |name: &'static str| async move {
            let key = job_key(job_id, name);
            ctx.store
                .get(&key)
                .await
                .with_context(|| format!("reading {key} (written by the prepare stage)"))
        };
        let users: Vec<schema::UserRow> =
            schema::read_users(read("data/users.parquet").await?, "data/users.parquet")?
                .into_iter()
                .filter(|u| u.shard == ctx.shard && u.in_teacher_sample)
                .collect();
        let mut items: Vec<Option<ItemRow>> = Vec::new();
        for item in schema::read_items(read("data/items.parquet").await?, "data/items.parquet")? {
            let at = item.item_index as usize;
            if items.len() <= at {
                items.resize(at + 1, None);
            }
            items[at] = Some(item);
        }

        let template = PromptKind::Teacher.template(t.prompt_template.as_deref());
        let mut built = Vec::with_capacity(users.len());
        for user in &users {
            // Only `history`: the validation and test items never reach a prompt.
            let history = user
                .history
                .iter()
                .map(|&i| {
                    items
                        .get(i as usize)
                        .and_then(Option::as_ref)
                        .with_context(|| {
                            format!(
                                "user {}: history item {i} is not in data/items.parquet",
                                user.user_id
                            )
                        })
                })
                .collect::<Result<Vec<&ItemRow>>>()?;
            built.push(prompts::build_prompt(
                template,
                &history,
                t.history_token_budget as usize,
                |text| chat.count_tokens(text),
            ));
        }

        let asked = ask(&chat, &t, &users, &built).await?;
        let mut counters: BTreeMap<String, u64> = BTreeMap::new();
        let mut add =
            |name: &str, value: u64| *counters.entry(name.to_string()).or_default() += value;
        add("users", users.len() as u64);
        let mut rows = Vec::with_capacity(users.len());
        let mut paid_usd = 0.0;
        for ((user, prompt), asked) in users.iter().zip(&built).zip(asked) {
            add("history_items_dropped", prompt.dropped as u64);
            add("parse_retries", u64::from(asked.parse_retries));
            add("parse_errors", u64::from(asked.steps.is_none()));
            add("requests", asked.paid.requests);
            add("retries", asked.paid.retries);
            add("cache_hits", asked.cache_hits);
            add("prompt_tokens", asked.paid.prompt_tokens);
            add("completion_tokens", asked.paid.completion_tokens);
            add("latency_ms", asked.paid.latency_ms);
            paid_usd += asked.paid.cost_usd;
            let last = &asked.last;
            let steps = asked.steps.clone().unwrap_or(Steps {
                step1: String::new(),
                step2: String::new(),
                step3: String::new(),
            });
            rows.push(RationaleRow {
                user_id: user.user_id.clone(),
                prompt: prompt.text.clone(),
                rationale: last.content.clone(),
                step1: steps.step1,
                step2: steps.step2,
                step3: steps.step3,
                model: chat.model().to_string(),
                prompt_tokens: last.prompt_tokens,
                completion_tokens: last.completion_tokens,
                latency_ms: last.latency_ms,
                finish_reason: last.finish_reason.clone(),
                retries: asked.all.retries as u32,
                parse_retries: asked.parse_retries,
                parse_error: asked.steps.is_none(),
                cached: asked.cache_hits > 0 && asked.paid.requests == 0,
                cost_usd: asked.all.cost_usd,
            });
        }
        // Counters are integers: the cost goes in as micro-dollars, rounded once per task.
        add("cost_microusd", (paid_usd * 1e6).round() as u64);
        info!(
            job = %job_id,
            shard = ctx.shard,
            users = users.len(),
            requests = counters.get("requests").copied().unwrap_or(0),
            cache_hits = counters.get("cache_hits").copied().unwrap_or(0),
            parse_errors = counters.get("parse_errors").copied().unwrap_or(0),
            "teacher answers collected"
        );
        let part = format!("teacher/part-{:05}.parquet", ctx.shard);
        let bytes = schema::write_rationales(&rows)?;
        let mut result = TaskResult {
            counters,
            ..TaskResult::default()
        };
        result
            .parts
            .push(ctx.put_part(&part, bytes, Some(rows.len() as u64)).await?);
        Ok(result)
    }
}

/// Tokens, time and money over some answers.
#[derive(Debug, Default, Clone, Copy)]
struct Spend {
    requests: u64,
    retries: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    latency_ms: u64,
    cost_usd: f64,
}

impl Spend {
    fn add(&mut self, answer: &ChatAnswer, t: &TeacherSection) {
        self.requests += 1 + u64::from(answer.retries);
        self.retries += u64::from(answer.retries);
        self.prompt_tokens += u64::from(answer.prompt_tokens);
        self.completion_tokens += u64::from(answer.completion_tokens);
        self.latency_ms += answer.latency_ms;
        self.cost_usd += (f64::from(answer.prompt_tokens) * t.prompt_price_per_mtok
            + f64::from(answer.completion_tokens) * t.completion_price_per_mtok)
            / 1e6;
    }
}

/// What asking about one user came to.
struct Asked {
    /// The answer kept (the last one asked).
    last: ChatAnswer,
    steps: Option<Steps>,
    parse_retries: u32,
    /// Every answer this user needed, cached or not: the row's accounting.
    all: Spend,
    /// The answers requested now (not from the cache): the task's accounting.
    paid: Spend,
    cache_hits: u64,
}

/// Asks about every user, again for answers that do not parse, and returns one result per user.
async fn ask(
    chat: &dyn ChatBackend,
    t: &TeacherSection,
    users: &[schema::UserRow],
    prompts: &[BuiltPrompt],
) -> Result<Vec<Asked>> {
    let mut asked: Vec<Option<Asked>> = users.iter().map(|_| None).collect();
    let mut todo: Vec<usize> = (0..users.len()).collect();
    for round in 0..=t.parse_retries {
        if todo.is_empty() {
            break;
        }
        let temperature = if round > 0 && t.temperature == 0.0 {
            RETRY_TEMPERATURE
        } else {
            t.temperature
        };
        let requests = todo
            .iter()
            .map(|&i| {
                ChatRequest::user(
                    &prompts[i].text,
                    t.max_new_tokens,
                    temperature,
                    t.top_p,
                    u64::from(round),
                )
            })
            .collect();
        let answers = chat.complete(requests).await;
        let mut failures = Vec::new();
        let mut again = Vec::new();
        for (&i, answer) in todo.iter().zip(answers) {
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    failures.push(format!("user {}: {e:#}", users[i].user_id));
                    continue;
                }
            };
            let entry = asked[i].get_or_insert_with(|| Asked {
                last: answer.clone(),
                steps: None,
                parse_retries: 0,
                all: Spend::default(),
                paid: Spend::default(),
                cache_hits: 0,
            });
            entry.all.add(&answer, t);
            if answer.cached {
                entry.cache_hits += 1;
            } else {
                entry.paid.add(&answer, t);
            }
            entry.parse_retries = round;
            entry.steps = prompts::parse_steps(&answer.content);
            if entry.steps.is_none() && round < t.parse_retries {
                again.push(i);
            }
            entry.last = answer;
        }
        if !failures.is_empty() {
            bail!(
                "the teacher could not answer {} of {} user(s) (answers received are cached; a retry asks only the rest); {}",
                failures.len(),
                todo.len(),
                failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        todo = again;
    }
    Ok(asked
        .into_iter()
        .map(|a| a.expect("every user was asked"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers from a script of (seed, temperature) -> text, recording what it was asked.
    struct Scripted {
        asked: Mutex<Vec<(u64, f32)>>,
        answer: fn(u64) -> &'static str,
    }

    #[async_trait]
    impl ChatBackend for Scripted {
        fn model(&self) -> &str {
            "scripted"
        }

        async fn complete(&self, requests: Vec<ChatRequest>) -> Vec<Result<ChatAnswer>> {
            requests
                .into_iter()
                .map(|r| {
                    self.asked.lock().unwrap().push((r.seed, r.temperature));
                    Ok(ChatAnswer {
                        content: (self.answer)(r.seed).to_string(),
                        finish_reason: "stop".into(),
                        prompt_tokens: 1000,
                        completion_tokens: 500,
                        latency_ms: 7,
                        retries: 1,
                        cached: false,
                    })
                })
                .collect()
        }
    }

    fn user(id: &str) -> schema::UserRow {
        schema::UserRow {
            user_id: id.into(),
            user_index: 0,
            history: vec![0],
            history_length: 1,
            valid_item: 1,
            test_item: 2,
            shard: 0,
            in_teacher_sample: true,
        }
    }

    fn prompt(text: &str) -> BuiltPrompt {
        BuiltPrompt {
            text: text.into(),
            items: 1,
            dropped: 0,
            history_tokens: 3,
        }
    }

    #[tokio::test]
    async fn teacher_retries_unparseable_answers_warmer_then_flags_them() {
        let chat = Scripted {
            asked: Mutex::new(Vec::new()),
            answer: |seed| match seed {
                0 => "no steps here",
                _ => "Step 1: a\nStep 2: b\nStep 3: c",
            },
        };
        let t = TeacherSection {
            parse_retries: 2,
            prompt_price_per_mtok: 1.0,
            completion_price_per_mtok: 4.0,
            ..TeacherSection::default()
        };
        let asked = ask(&chat, &t, &[user("u1")], &[prompt("p")]).await.unwrap();
        assert_eq!(
            *chat.asked.lock().unwrap(),
            [(0, 0.0), (1, RETRY_TEMPERATURE)]
        );
        let a = &asked[0];
        assert_eq!(a.parse_retries, 1);
        assert_eq!(a.steps.as_ref().unwrap().step2, "b");
        // Two answers paid: 2 x (1000 x $1 + 500 x $4) per million, two requests each.
        assert!((a.all.cost_usd - 0.006).abs() < 1e-12);
        assert_eq!((a.paid.requests, a.paid.retries), (4, 2));

        let stubborn = Scripted {
            asked: Mutex::new(Vec::new()),
            answer: |_| "no steps here",
        };
        let asked = ask(&stubborn, &t, &[user("u1")], &[prompt("p")])
            .await
            .unwrap();
        assert_eq!(stubborn.asked.lock().unwrap().len(), 3);
        assert!(asked[0].steps.is_none());
        assert_eq!(asked[0].parse_retries, 2);
        assert_eq!(asked[0].last.content, "no steps here");
    }
}
