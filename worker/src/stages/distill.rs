//! The `distill` stage executor: SLIM's step-by-step distillation. One task trains LoRA
//! adapters on the student base model so that, given the student's short prompt for a user, it
//! writes the teacher's three-step rationale for that user.
//!
//! Reads `teacher/part-*.parquet` and `data/{users,items}.parquet`; writes under `student/`:
//!
//! - `adapter.safetensors` + `adapter.json`: the adapters in PEFT's layout (rename them to
//!   `adapter_model.safetensors` / `adapter_config.json`, or point slim at the folder, to load
//!   them with `peft`);
//! - `loss.parquet` (step, epoch, learning_rate, train_loss, validation_loss) and `loss.svg`;
//! - `distill.json`: examples used and skipped, validation loss before and after, tokens/s;
//! - `checkpoints/latest.ckpt`: the training state every `student.checkpoint_every` steps. A
//!   killed task resumes from it (same settings and examples) and ends with the adapters an
//!   uninterrupted run would have.
//!
//! Training pairs: the student prompt (`student.prompt_template` over the user's training
//! history) and the teacher's answer rewritten as `Step 1: ...\nStep 2: ...\nStep 3: ...`, so
//! the student learns one parseable shape whatever markdown the teacher used. Answers that did
//! not parse into three steps are skipped and counted.

use crate::backend::{self, Train};
use crate::executor::{StageExecutor, TaskContext, TaskResult};
use crate::llm::Engine;
use crate::llm::finetune::{
    Checkpoint, Example, FinetuneConfig, LossPoint, TrainingHooks, finetune_with, fingerprint,
    validation_loss,
};
use crate::llm::lora::{LoraAdapters, LoraConfig, Target};
use crate::stages::rationales::{ShardInputs, items_by_index};
use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, Float64Array, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use slim_shared::manifest::StudentSection;
use slim_shared::markers::job_key;
use slim_shared::prompts::{self, PromptKind};
use slim_shared::schema;
use slim_shared::stage::Stage;
use slim_shared::store::{Location, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use tracing::{info, warn};

pub const ADAPTER_KEY: &str = "student/adapter.safetensors";
pub const ADAPTER_CONFIG_KEY: &str = "student/adapter.json";
pub const LOSS_KEY: &str = "student/loss.parquet";
pub const LOSS_PLOT_KEY: &str = "student/loss.svg";
pub const SUMMARY_KEY: &str = "student/distill.json";
pub const CHECKPOINT_KEY: &str = "student/checkpoints/latest.ckpt";

pub struct DistillExecutor;

/// What `student/distill.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillSummary {
    pub base_model: String,
    pub teacher_rows: usize,
    /// Teacher answers not split into three steps (not trained on).
    pub skipped_unparsed: usize,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub steps: usize,
    /// Prompt + answer tokens of the training examples, times epochs.
    pub train_tokens: u64,
    /// Steps done by this attempt (fewer than `steps` when it resumed).
    pub steps_this_attempt: usize,
    pub resumed_from_step: Option<usize>,
    pub seconds_this_attempt: f64,
    pub tokens_per_second: f64,
    /// Validation loss of the base model (adapters start as a no-op) and after training.
    pub validation_loss_before: Option<f64>,
    pub validation_loss_after: Option<f64>,
    pub lora: LoraConfig,
    pub training: FinetuneConfig,
}

#[async_trait]
impl StageExecutor for DistillExecutor {
    fn stage(&self) -> Stage {
        Stage::Distill
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let job_id = ctx.job.job_id().to_string();
        let settings = ctx.job.manifest.student.clone();
        let base = match ctx.job.resolve(&settings.base_model) {
            Location::Local(path) => path,
            other => bail!("student.base_model must be a local file or folder, not {other}"),
        };
        let teacher = read_teacher_answers(ctx).await?;
        let inputs = ShardInputs::read_all(ctx).await?;
        let checkpoint = read_checkpoint(ctx).await;
        let seed = ctx.job.manifest.prepare.seed;
        let store = ctx.store.clone();
        let progress = ctx.progress;
        let handle = tokio::runtime::Handle::current();
        let checkpoint_key = job_key(&job_id, CHECKPOINT_KEY);
        let trained = crate::executor::blocking(move || {
            let save = move |bytes: Vec<u8>| {
                handle
                    .block_on(store.put(&checkpoint_key, bytes.into()))
                    .with_context(|| format!("writing the checkpoint {checkpoint_key}"))
            };
            train(
                &base, &settings, seed, &teacher, &inputs, checkpoint, save, progress,
            )
        })
        .await??;

        let summary = &trained.summary;
        info!(
            job = %job_id,
            train_examples = summary.train_examples,
            validation_examples = summary.validation_examples,
            steps = summary.steps,
            validation_loss_before = ?summary.validation_loss_before,
            validation_loss_after = ?summary.validation_loss_after,
            tokens_per_second = format!("{:.1}", summary.tokens_per_second),
            "student distilled"
        );
        let mut result = TaskResult::default();
        let counters = [
            ("teacher_rows", summary.teacher_rows as u64),
            ("skipped_unparsed", summary.skipped_unparsed as u64),
            ("train_examples", summary.train_examples as u64),
            ("validation_examples", summary.validation_examples as u64),
            ("steps", summary.steps as u64),
            ("steps_this_attempt", summary.steps_this_attempt as u64),
            ("train_tokens", summary.train_tokens),
        ];
        result.counters = counters
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>();
        let outputs = [
            (ADAPTER_KEY, trained.adapter.weights.clone(), None),
            (
                ADAPTER_CONFIG_KEY,
                trained.adapter.config.clone().into_bytes(),
                None,
            ),
            (
                LOSS_KEY,
                write_loss(&trained.history)?,
                Some(trained.history.len() as u64),
            ),
            (
                LOSS_PLOT_KEY,
                loss_chart(&trained.history).into_bytes(),
                None,
            ),
            (SUMMARY_KEY, serde_json::to_vec_pretty(summary)?, None),
        ];
        for (key, bytes, rows) in outputs {
            result.parts.push(ctx.put_part(key, bytes, rows).await?);
        }
        Ok(result)
    }
}

impl ShardInputs {
    /// Every user (not one shard's) and the items.
    async fn read_all(ctx: &TaskContext) -> Result<Self> {
        let job_id = ctx.job.job_id();
        let read = |name: &'static str| async move {
            let key = job_key(job_id, name);
            ctx.store
                .get(&key)
                .await
                .with_context(|| format!("reading {key} (written by the prepare stage)"))
        };
        Ok(Self {
            users: schema::read_users(read("data/users.parquet").await?, "data/users.parquet")?,
            items: items_by_index(schema::read_items(
                read("data/items.parquet").await?,
                "data/items.parquet",
            )?),
        })
    }
}

/// The teacher's rationales from every part of the teacher stage.
async fn read_teacher_answers(ctx: &TaskContext) -> Result<Vec<schema::RationaleRow>> {
    let parts = ctx.read_parts("teacher").await?;
    if parts.is_empty() {
        bail!(
            "{}: no teacher rationales (teacher/part-*.parquet); the distill stage learns from them, run the teacher stage first",
            ctx.store.location(&job_key(ctx.job.job_id(), "teacher/"))
        );
    }
    let mut rows = Vec::new();
    for (name, bytes) in parts {
        rows.extend(schema::read_rationales(bytes, &name)?);
    }
    Ok(rows)
}

/// The last checkpoint of an earlier attempt, if one is stored and readable.
async fn read_checkpoint(ctx: &TaskContext) -> Option<Checkpoint> {
    let key = job_key(ctx.job.job_id(), CHECKPOINT_KEY);
    match ctx.store.get(&key).await {
        Ok(bytes) => match Checkpoint::from_bytes(&bytes) {
            Ok(checkpoint) => Some(checkpoint),
            Err(e) => {
                warn!(checkpoint = %ctx.store.location(&key), "ignoring an unreadable checkpoint: {e:#}");
                None
            }
        },
        Err(StoreError::NotFound { .. }) => None,
        Err(e) => {
            warn!(checkpoint = %ctx.store.location(&key), "cannot read the checkpoint, starting over: {e}");
            None
        }
    }
}

/// The adapters and how training went.
struct Trained {
    adapter: crate::llm::lora::PeftFiles,
    history: Vec<LossPoint>,
    summary: DistillSummary,
}

/// The teacher's answer as the student should learn to write it.
fn answer_text(row: &schema::RationaleRow) -> Option<String> {
    let steps = [&row.step1, &row.step2, &row.step3];
    if row.parse_error || steps.iter().any(|s| s.trim().is_empty()) {
        return None;
    }
    Some(format!(
        "Step 1: {}\nStep 2: {}\nStep 3: {}",
        row.step1.trim(),
        row.step2.trim(),
        row.step3.trim()
    ))
}

/// The LoRA settings of `[student]`.
pub fn lora_config(s: &StudentSection) -> Result<LoraConfig> {
    Ok(LoraConfig {
        rank: s.lora_rank as usize,
        alpha: s.lora_alpha,
        dropout: s.lora_dropout,
        targets: s
            .lora_targets
            .iter()
            .map(|t| Target::parse(t))
            .collect::<Result<Vec<_>>>()
            .context("student.lora_targets")?,
    })
}

/// Builds the examples, trains (resuming from `checkpoint` when it fits), and exports.
#[allow(clippy::too_many_arguments)]
fn train(
    base: &std::path::Path,
    settings: &StudentSection,
    seed: u64,
    teacher: &[schema::RationaleRow],
    inputs: &ShardInputs,
    checkpoint: Option<Checkpoint>,
    save_checkpoint: impl Fn(Vec<u8>) -> Result<()>,
    progress: bool,
) -> Result<Trained> {
    let device = backend::device();
    let engine = Engine::<Train>::load(base, &device)
        .with_context(|| format!("loading the student base model {}", base.display()))?;
    let users: HashMap<&str, &schema::UserRow> = inputs
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), u))
        .collect();
    let template = PromptKind::Student.template(settings.prompt_template.as_deref());
    let mut examples = Vec::new();
    let mut skipped_unparsed = 0;
    for row in teacher {
        let Some(answer) = answer_text(row) else {
            skipped_unparsed += 1;
            continue;
        };
        let user = users.get(row.user_id.as_str()).with_context(|| {
            format!(
                "teacher rationale for user {} who is not in data/users.parquet",
                row.user_id
            )
        })?;
        let prompt = prompts::build_prompt(
            template,
            &inputs.history(user)?,
            settings.history_token_budget as usize,
            |text| engine.tokenizer.encode(text).map_or(0, |t| t.len()),
        );
        examples.push(engine.example(&prompt.text, &answer)?);
    }
    if examples.is_empty() {
        bail!(
            "none of the {} teacher rationales split into three steps; nothing to distill (see parse_error in teacher/part-*.parquet)",
            teacher.len()
        );
    }
    let (train_set, validation_set) = split(examples, settings.validation_fraction, seed);
    let config = FinetuneConfig {
        learning_rate: settings.learning_rate,
        epochs: settings.epochs as usize,
        batch_size: settings.batch_size as usize,
        accumulation: settings.gradient_accumulation as usize,
        warmup_steps: settings.warmup_steps as usize,
        max_grad_norm: 1.0,
        weight_decay: 0.0,
        max_seq_len: settings.max_seq_len as usize,
        seed,
    };
    let lora = lora_config(settings)?;
    let adapters = LoraAdapters::init(&engine.model, &lora, seed, &device)?;
    let validation_loss_before = (!validation_set.is_empty())
        .then(|| validation_loss(&engine.model, &adapters, &validation_set, &config))
        .transpose()?;

    let run = fingerprint(&config, &train_set, &validation_set);
    let resume = checkpoint.filter(|c| {
        let fits = c.fingerprint == run;
        if !fits {
            warn!(
                "the stored checkpoint is of other settings or examples; training from the start"
            );
        }
        fits
    });
    let resumed_from_step = resume.as_ref().map(|c| c.step);
    let steps_per_epoch = train_set
        .len()
        .div_ceil(config.batch_size)
        .div_ceil(config.accumulation);
    let total_steps = steps_per_epoch * config.epochs;
    let bar = progress_bar(progress, total_steps, resumed_from_step.unwrap_or(0));
    let started = std::time::Instant::now();
    let mut steps_this_attempt = 0;
    let hooks = TrainingHooks {
        checkpoint_every: settings.checkpoint_every as usize,
        resume,
        on_checkpoint: Box::new(|c| save_checkpoint(c.to_bytes())),
        on_step: Box::new(|point, _| {
            steps_this_attempt += 1;
            bar.set_message(format!("loss {:.3}", point.train_loss));
            bar.inc(1);
        }),
    };
    let (adapters, history) = finetune_with(
        &engine.model,
        adapters,
        &train_set,
        &validation_set,
        &config,
        hooks,
    )?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let tokens_per_epoch: u64 = train_set
        .iter()
        .map(|e| (e.prompt.len() + e.answer.len()).min(config.max_seq_len) as u64)
        .sum();
    let tokens_this_attempt =
        tokens_per_epoch as f64 * steps_this_attempt as f64 / steps_per_epoch as f64;
    let base_name = base.file_name().map_or_else(
        || settings.base_model.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    let summary = DistillSummary {
        base_model: base_name.clone(),
        teacher_rows: teacher.len(),
        skipped_unparsed,
        train_examples: train_set.len(),
        validation_examples: validation_set.len(),
        steps: history.len(),
        train_tokens: tokens_per_epoch * config.epochs as u64,
        steps_this_attempt,
        resumed_from_step,
        seconds_this_attempt: seconds,
        tokens_per_second: tokens_this_attempt / seconds.max(1e-9),
        validation_loss_before,
        validation_loss_after: history.iter().rev().find_map(|p| p.validation_loss),
        lora: lora.clone(),
        training: config,
    };
    Ok(Trained {
        adapter: adapters.to_peft(&lora, &base_name)?,
        history,
        summary,
    })
}

/// Splits examples into training and validation, seeded: `fraction` of them (at least one
/// when there are five or more, never all) are held out.
fn split(mut examples: Vec<Example>, fraction: f32, seed: u64) -> (Vec<Example>, Vec<Example>) {
    examples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = examples.len();
    let mut held = (n as f64 * f64::from(fraction)).round() as usize;
    if fraction > 0.0 && n >= 5 {
        held = held.max(1);
    }
    let held = held.min(n.saturating_sub(1));
    let validation = examples.split_off(n - held);
    (examples, validation)
}

fn progress_bar(visible: bool, total: usize, done: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64).with_prefix("distill");
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg} ({eta})")
            .expect("a valid progress template")
            .progress_chars("=> "),
    );
    bar.set_position(done as u64);
    bar
}

/// The schema of `student/loss.parquet`: one row per optimizer step; `validation_loss` is set
/// on the last step of each epoch.
pub static LOSS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("step", DataType::UInt32, false),
        Field::new("epoch", DataType::UInt32, false),
        Field::new("learning_rate", DataType::Float64, false),
        Field::new("train_loss", DataType::Float64, false),
        Field::new("validation_loss", DataType::Float64, true),
    ]))
});

/// `student/loss.parquet` in memory.
pub fn write_loss(history: &[LossPoint]) -> Result<Vec<u8>> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from_iter_values(
            history.iter().map(|p| p.step as u32),
        )),
        Arc::new(UInt32Array::from_iter_values(
            history.iter().map(|p| p.epoch as u32),
        )),
        Arc::new(Float64Array::from_iter_values(
            history.iter().map(|p| p.learning_rate),
        )),
        Arc::new(Float64Array::from_iter_values(
            history.iter().map(|p| p.train_loss),
        )),
        Arc::new(Float64Array::from_iter(
            history.iter().map(|p| p.validation_loss),
        )),
    ];
    let batch = RecordBatch::try_new(LOSS.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = schema::writer(&mut bytes, &LOSS)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

/// Reads `student/loss.parquet` (`name` names it in errors).
pub fn read_loss(bytes: bytes::Bytes, name: &str) -> Result<Vec<LossPoint>> {
    let mut points = Vec::new();
    for batch in schema::read_batches(bytes, &LOSS, name)? {
        let u32s = |column: &str| {
            batch
                .column_by_name(column)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>().cloned())
                .expect("checked by read_batches")
        };
        let f64s = |column: &str| {
            batch
                .column_by_name(column)
                .and_then(|c| c.as_any().downcast_ref::<Float64Array>().cloned())
                .expect("checked by read_batches")
        };
        let (step, epoch) = (u32s("step"), u32s("epoch"));
        let (rate, train, validation) = (
            f64s("learning_rate"),
            f64s("train_loss"),
            f64s("validation_loss"),
        );
        for i in 0..batch.num_rows() {
            points.push(LossPoint {
                step: step.value(i) as usize,
                epoch: epoch.value(i) as usize,
                learning_rate: rate.value(i),
                train_loss: train.value(i),
                validation_loss: validation.is_valid(i).then(|| validation.value(i)),
            });
        }
    }
    Ok(points)
}

/// `student/loss.svg`: training loss per step, validation loss per epoch.
fn loss_chart(history: &[LossPoint]) -> String {
    use slim_shared::report::svg::*;
    use std::fmt::Write as _;
    let max = history
        .iter()
        .flat_map(|p| [Some(p.train_loss), p.validation_loss])
        .flatten()
        .fold(0.1, f64::max);
    let mut out = String::new();
    let top = open(&mut out, "Distillation loss", "cross-entropy (nats)", max);
    let steps = history.len().max(2) - 1;
    let x_of = |step: usize| LEFT + (WIDTH - LEFT - RIGHT) * step as f64 / steps as f64;
    let series: [(&str, Vec<(usize, f64)>); 2] = [
        (
            "train",
            history.iter().map(|p| (p.step, p.train_loss)).collect(),
        ),
        (
            "validation",
            history
                .iter()
                .filter_map(|p| p.validation_loss.map(|v| (p.step, v)))
                .collect(),
        ),
    ];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i];
        let path: Vec<String> = points
            .iter()
            .map(|&(s, v)| format!("{:.1},{:.1}", x_of(s), y_of(v, top)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(s, v) in points.iter().filter(|_| i == 1) {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"/>"#,
                x_of(s),
                y_of(v, top)
            );
        }
        let legend_y = TOP + 18.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{legend_y:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            WIDTH - RIGHT + 16.0,
            WIDTH - RIGHT + 34.0,
            legend_y + 10.0,
            escape(name)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">optimizer step</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - BOTTOM + 40.0
    );
    out.push_str("</svg>\n");
    out
}

/// Where a job's adapter files are, for loading them outside a task.
pub fn adapter_keys(job_id: &str) -> (String, String) {
    (
        job_key(job_id, ADAPTER_KEY),
        job_key(job_id, ADAPTER_CONFIG_KEY),
    )
}
