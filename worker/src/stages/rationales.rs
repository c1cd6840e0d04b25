//! One shard's rationales, asked of a chat model: the common work of the `teacher` stage (the
//! large model, over the sample U') and the `student` stage (the distilled model, over every
//! user). Writes `{teacher|student}/part-NNNNN.parquet` (schema
//! [`slim_shared::schema::RATIONALES`]).
//!
//! - Prompts: the kind's template over the user's training history only (never the validation
//!   or test item), cut oldest-first to the token budget.
//! - Answers come from a [`ChatBackend`] behind the response cache, so a redelivered or rerun
//!   shard asks nothing twice.
//! - An answer that cannot be split into three steps is asked again up to `parse_retries`
//!   times (with a new seed, and temperature 0.7 when the settings' is 0, since a greedy model
//!   would repeat itself); the last one is kept with `parse_error` set. Every user of the
//!   shard gets exactly one row.
//! - A user the backend cannot answer (retries exhausted, a 4xx) fails the task, naming the
//!   user; answers already received stay cached, so the redelivered task only asks the rest.
//! - Accounting per row (tokens, latency, retries, cost) and per task in the marker's counters,
//!   which `slim run` and `slim status` show.

use crate::chat::cache::CachedChat;
use crate::chat::{ChatAnswer, ChatBackend, ChatRequest};
use crate::executor::{TaskContext, TaskResult};
use anyhow::{Context, Result, bail};
use slim_shared::manifest::TeacherSection;
use slim_shared::markers::job_key;
use slim_shared::prompts::{self, BuiltPrompt, PromptKind, Steps};
use slim_shared::schema::{self, ItemRow, RationaleRow, UserRow};
use std::collections::BTreeMap;
use tracing::info;

/// Temperature of parse retries when the settings ask for greedy answers.
const RETRY_TEMPERATURE: f32 = 0.7;

/// How answers are asked for and priced.
#[derive(Debug, Clone, PartialEq)]
pub struct AskSettings {
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub parse_retries: u32,
    /// Tokens of purchase history a prompt may hold (oldest items are dropped first).
    pub history_token_budget: usize,
    pub prompt_price_per_mtok: f64,
    pub completion_price_per_mtok: f64,
}

impl From<&TeacherSection> for AskSettings {
    fn from(t: &TeacherSection) -> Self {
        Self {
            max_new_tokens: t.max_new_tokens,
            temperature: t.temperature,
            top_p: t.top_p,
            parse_retries: t.parse_retries,
            history_token_budget: t.history_token_budget as usize,
            prompt_price_per_mtok: t.prompt_price_per_mtok,
            completion_price_per_mtok: t.completion_price_per_mtok,
        }
    }
}

/// Which users of the shard get a rationale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardUsers {
    /// Those in the teacher's sample U' (`in_teacher_sample`).
    TeacherSample,
    /// Every user.
    All,
}

/// What one shard's task asks for.
pub struct ShardRequest<'a> {
    pub kind: PromptKind,
    pub template: &'a str,
    pub settings: AskSettings,
    pub users: ShardUsers,
}

impl ShardRequest<'_> {
    /// The stage folder the part goes to.
    fn folder(&self) -> &'static str {
        match self.kind {
            PromptKind::Teacher => "teacher",
            PromptKind::Student => "student",
        }
    }
}

/// The users and items a shard's prompts are built from.
pub struct ShardInputs {
    pub users: Vec<UserRow>,
    /// Items by `item_index`.
    pub items: Vec<Option<ItemRow>>,
}

impl ShardInputs {
    /// Reads `data/users.parquet` (the shard's users, filtered by `which`) and
    /// `data/items.parquet`.
    pub async fn read(ctx: &TaskContext, which: ShardUsers) -> Result<Self> {
        let job_id = ctx.job.job_id();
        let read = |name: &'static str| async move {
            let key = job_key(job_id, name);
            ctx.store
                .get(&key)
                .await
                .with_context(|| format!("reading {key} (written by the prepare stage)"))
        };
        let users = schema::read_users(read("data/users.parquet").await?, "data/users.parquet")?
            .into_iter()
            .filter(|u| u.shard == ctx.shard && (which == ShardUsers::All || u.in_teacher_sample))
            .collect();
        Ok(Self {
            users,
            items: items_by_index(schema::read_items(
                read("data/items.parquet").await?,
                "data/items.parquet",
            )?),
        })
    }

    /// `user`'s training history as item rows, oldest first.
    pub fn history(&self, user: &UserRow) -> Result<Vec<&ItemRow>> {
        // Only `history`: the validation and test items never reach a prompt.
        user.history
            .iter()
            .map(|&i| {
                self.items
                    .get(i as usize)
                    .and_then(Option::as_ref)
                    .with_context(|| {
                        format!(
                            "user {}: history item {i} is not in data/items.parquet",
                            user.user_id
                        )
                    })
            })
            .collect()
    }
}

/// Items placed at their `item_index`.
pub fn items_by_index(rows: Vec<ItemRow>) -> Vec<Option<ItemRow>> {
    let mut items: Vec<Option<ItemRow>> = Vec::new();
    for item in rows {
        let at = item.item_index as usize;
        if items.len() <= at {
            items.resize(at + 1, None);
        }
        items[at] = Some(item);
    }
    items
}

/// Asks `chat` for the rationale of every user of the task's shard and writes the part.
pub async fn write_shard<B: ChatBackend + ?Sized>(
    ctx: &TaskContext,
    chat: &CachedChat<B>,
    request: &ShardRequest<'_>,
) -> Result<TaskResult> {
    let job_id = ctx.job.job_id();
    let inputs = ShardInputs::read(ctx, request.users).await?;
    let users = &inputs.users;
    let mut built = Vec::with_capacity(users.len());
    for user in users {
        built.push(prompts::build_prompt(
            request.template,
            &inputs.history(user)?,
            request.settings.history_token_budget,
            |text| chat.count_tokens(text),
        ));
    }

    let settings = &request.settings;
    let asked = ask(chat, settings, users, &built).await?;
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut add = |name: &str, value: u64| *counters.entry(name.to_string()).or_default() += value;
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
    let folder = request.folder();
    info!(
        job = %job_id,
        stage = folder,
        shard = ctx.shard,
        users = users.len(),
        requests = counters.get("requests").copied().unwrap_or(0),
        cache_hits = counters.get("cache_hits").copied().unwrap_or(0),
        parse_errors = counters.get("parse_errors").copied().unwrap_or(0),
        "rationales collected"
    );
    let part = format!("{folder}/part-{:05}.parquet", ctx.shard);
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
    fn add(&mut self, answer: &ChatAnswer, t: &AskSettings) {
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
    chat: &(impl ChatBackend + ?Sized),
    t: &AskSettings,
    users: &[UserRow],
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
                "the model could not answer {} of {} user(s) (answers received are cached; a retry asks only the rest); {}",
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
    use async_trait::async_trait;
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

    fn user(id: &str) -> UserRow {
        UserRow {
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
        let t = AskSettings {
            parse_retries: 2,
            prompt_price_per_mtok: 1.0,
            completion_price_per_mtok: 4.0,
            ..AskSettings::from(&TeacherSection::default())
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
