//! The `train` stage executor: task `s` trains and evaluates run `s` of the manifest's
//! `[train]` grid ([`plan::train_runs`]: backbone x variant x seed, the popularity baseline
//! once) and writes its metrics to `train/runs/part-NNNNN.parquet`
//! ([`schema::TRAIN_RUNS`]: one row per split and user group).
//!
//! Reads `data/users.parquet` and `data/items.parquet`; every text variant also reads the item
//! text vectors of the encode stage (`embeddings/items/part-*.parquet`), and the SLIM variants
//! the users' rationale vectors (`embeddings/users-{source}/part-*.parquet`):
//!
//! | variant | model | rationale vectors |
//! |---|---|---|
//! | `id`, `plus` | the backbone, ID only / ID + item text | none |
//! | `slim` | ID-based fusion on the backbone | student, `rationale` |
//! | `slim_minus` | the same model | teacher, `rationale` |
//! | `slim_agnostic` | ID-agnostic transformer `g_t`, no backbone | student, `rationale` |
//! | `step1`..`step3` | the ID-agnostic model | student, `step1`..`step3` |
//!
//! Users without a rationale vector (the teacher covers only its sample) get the model's
//! learned default vector ([`crate::recommend::rationale`]); a run whose source matches no
//! user at all fails. Evaluation candidates come from `prepare.seed`, so every run of a job
//! ranks the same candidates; the run's seed drives initialisation, dropout, shuffling and
//! training negatives.
//!
//! Aggregating the runs into `train/metrics.parquet` and `train/report.md` is
//! [`slim_shared::report`]'s job, once every run is done.

use crate::executor::{StageExecutor, TaskContext, TaskResult};
use crate::recommend::{
    BackboneConfig, Interactions, ItemRepresentation, ModelConfig, TextTable, TrainBackend,
    TrainConfig, UserText, eval_candidates, evaluate_popularity, train_with_rationales,
};
use anyhow::{Context, Result, bail, ensure};
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use async_trait::async_trait;
use slim_shared::eval::{Buckets, EvalReport, Split};
use slim_shared::manifest::{PrepareSection, TrainSection};
use slim_shared::markers::job_key;
use slim_shared::plan::{self, POPULARITY, TrainRun};
use slim_shared::schema::{self, RunMetricsRow};
use slim_shared::stage::Stage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Default)]
pub struct TrainExecutor;

/// The folder of the encode stage's item vectors, relative to the job.
pub const ITEM_EMBEDDINGS: &str = "embeddings/items";

/// `train/runs/part-NNNNN.parquet`
pub fn run_part_key(shard: u32) -> String {
    format!("train/runs/part-{shard:05}.parquet")
}

/// The folder of the encode stage's rationale vectors from `source` (`teacher`, `student`).
pub fn user_embeddings_folder(source: &str) -> String {
    format!("embeddings/users-{source}")
}

/// Which rationale vectors a variant reads: `(source, column)`.
pub fn rationale_source(variant: &str) -> Option<(&'static str, &'static str)> {
    match variant {
        "slim" | "slim_agnostic" => Some(("student", "rationale")),
        "slim_minus" => Some(("teacher", "rationale")),
        "step1" => Some(("student", "step1")),
        "step2" => Some(("student", "step2")),
        "step3" => Some(("student", "step3")),
        _ => None,
    }
}

#[async_trait]
impl StageExecutor for TrainExecutor {
    fn stage(&self) -> Stage {
        Stage::Train
    }

    async fn execute(&self, ctx: &TaskContext) -> Result<TaskResult> {
        let manifest = &ctx.job.manifest;
        let runs = plan::train_runs(&manifest.train);
        let Some(run) = runs.get(ctx.shard as usize).cloned() else {
            bail!(
                "train shard {} does not exist: the [train] grid (backbones x variants x seeds) has {} runs",
                ctx.shard,
                runs.len()
            );
        };
        let (model, config) = configs(&manifest.train, &manifest.prepare, &run, ctx.progress)?;
        let name = model.as_ref().map_or(POPULARITY.into(), ModelConfig::name);
        tracing::info!(run = %run, model = %name, "training");

        let job_id = ctx.job.job_id();
        let read = |name: &'static str| async move {
            let key = job_key(job_id, name);
            ctx.store
                .get(&key)
                .await
                .with_context(|| format!("reading {}", ctx.store.location(&key)))
        };
        let (users, items) = (
            read("data/users.parquet").await?,
            read("data/items.parquet").await?,
        );
        let text_parts = match &model {
            Some(m) if m.items.needs_text() => Some(item_embedding_parts(ctx, &run).await?),
            _ => None,
        };
        let rationale = match rationale_source(&run.variant) {
            Some((source, column)) => Some((
                user_embedding_parts(ctx, &run, source).await?,
                source,
                column,
            )),
            None => None,
        };

        let started = Instant::now();
        type Trained = (Vec<RunMetricsRow>, Option<usize>);
        let (rows, covered) = crate::executor::blocking(move || -> Result<Trained> {
            let users = schema::read_users(users, "data/users.parquet")?;
            let items = schema::read_items(items, "data/items.parquet")?;
            let data = Interactions::from_rows(users, &items)?;
            let text = text_parts
                .map(|parts| text_table(parts, data.num_items))
                .transpose()?;
            let rationales = rationale
                .map(|(parts, source, column)| user_text(parts, source, column, &data))
                .transpose()?;
            let inputs = Inputs {
                text: text.as_ref(),
                rationales: rationales.as_ref(),
            };
            let rows = run_one(&run, &data, model.as_ref(), inputs, &config, started)?;
            Ok((rows, rationales.as_ref().map(UserText::covered)))
        })
        .await??;

        let mut result = TaskResult::default();
        let test_all = rows.iter().find(|r| r.split == "test" && r.bucket == "all");
        if let Some(row) = test_all {
            result.counters.insert("users".into(), row.users);
            result.counters.insert("epochs".into(), row.epochs.into());
            result
                .counters
                .insert("best_epoch".into(), row.best_epoch.into());
        }
        if let Some(covered) = covered {
            result
                .counters
                .insert("users_with_rationale".into(), covered as u64);
        }
        let bytes = schema::write_run_metrics(&rows)?;
        result.parts.push(
            ctx.put_part(&run_part_key(ctx.shard), bytes, Some(rows.len() as u64))
                .await?,
        );
        Ok(result)
    }
}

/// The model (none for popularity) and training settings of a run.
pub fn configs(
    section: &TrainSection,
    prepare: &PrepareSection,
    run: &TrainRun,
    progress: bool,
) -> Result<(Option<ModelConfig>, TrainConfig)> {
    let config = TrainConfig {
        epochs: section.epochs as usize,
        batch_size: section.batch_size as usize,
        learning_rate: section.learning_rate,
        negatives: section.train_negatives as usize,
        patience: section.patience as usize,
        eval_every: 1,
        seed: run.seed,
        // One candidate set per job: every model and seed ranks the same items.
        candidate_seed: prepare.seed,
        eval_negatives: section.eval_negatives as usize,
        progress,
        ..TrainConfig::default()
    };
    let hidden = section.embedding_dim as usize;
    let Some(backbone) = run.backbone.as_deref() else {
        if run.variant == POPULARITY {
            return Ok((None, config));
        }
        ensure!(
            plan::is_id_agnostic(&run.variant),
            "{run}: the variant {:?} needs a backbone",
            run.variant
        );
        let mut model = ModelConfig::slim_agnostic();
        model.hidden = hidden;
        if prepare.max_history > 0 {
            model.max_len = prepare.max_history as usize;
        }
        model.label = Some(match run.variant.as_str() {
            "slim_agnostic" => "slim_agnostic".into(),
            step => format!("slim_{step}"),
        });
        return Ok((Some(model), config));
    };
    let mut model = match backbone {
        "sasrec" => ModelConfig::sasrec(),
        "gru4rec" => ModelConfig::gru4rec(),
        "srgnn" => ModelConfig::srgnn(),
        other => bail!("{run}: no backbone {other:?}"),
    };
    model.hidden = hidden;
    if let BackboneConfig::Gru4Rec(c) = &mut model.backbone {
        c.state = hidden;
    }
    // The histories are already cut to max_history; 0 means uncut, so keep the default.
    if prepare.max_history > 0 {
        model.max_len = prepare.max_history as usize;
    }
    model.items = match run.variant.as_str() {
        "id" => ItemRepresentation::Id,
        "plus" => {
            ensure!(
                hidden >= 2,
                "train.embedding_dim: the plus variant splits the item vector between ID and text; {hidden} is too narrow"
            );
            // Half ID, half projected text: neither side starves the other.
            ItemRepresentation::IdPlusText {
                text_dim: hidden / 2,
            }
        }
        variant @ ("slim" | "slim_minus") => {
            model.rationale = true;
            model.label = Some(format!("{variant}-{backbone}"));
            ItemRepresentation::Fused
        }
        other => bail!("{run}: no variant {other:?} for a backbone"),
    };
    Ok((Some(model), config))
}

/// The text a run reads besides users and items.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    text: Option<&'a TextTable>,
    rationales: Option<&'a UserText>,
}

/// Trains (or, for popularity, just ranks) one run and returns its metric rows.
fn run_one(
    run: &TrainRun,
    data: &Interactions,
    model: Option<&ModelConfig>,
    inputs: Inputs<'_>,
    config: &TrainConfig,
    started: Instant,
) -> Result<Vec<RunMetricsRow>> {
    let Some(model) = model else {
        let report = |split| -> Result<EvalReport> {
            let candidates =
                eval_candidates(data, config.candidate_seed, config.eval_negatives, split)?;
            Ok(evaluate_popularity(data, &candidates, Buckets::default()))
        };
        let (valid, test) = (report(Split::Valid)?, report(Split::Test)?);
        let outcome = Outcome {
            model: POPULARITY,
            best_epoch: 0,
            epochs: 0,
            seconds_per_epoch: 0.0,
            seconds: started.elapsed().as_secs_f64(),
        };
        return Ok(metric_rows(run, &outcome, &valid, &test));
    };
    let report = train_with_rationales::<TrainBackend>(
        data,
        model,
        inputs.text,
        inputs.rationales,
        config,
        &crate::backend::device(),
    )
    .with_context(|| format!("training {run}"))?;
    let outcome = Outcome {
        model: &report.model,
        best_epoch: report.best_epoch as u32,
        epochs: report.epochs.len() as u32,
        seconds_per_epoch: report.seconds_per_epoch,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok(metric_rows(run, &outcome, &report.valid, &report.test))
}

/// What a run's rows share besides its identity.
struct Outcome<'a> {
    model: &'a str,
    best_epoch: u32,
    epochs: u32,
    seconds_per_epoch: f64,
    seconds: f64,
}

/// One row per split and group: `all` first, then the buckets, then `cold-start`.
fn metric_rows(
    run: &TrainRun,
    outcome: &Outcome<'_>,
    valid: &EvalReport,
    test: &EvalReport,
) -> Vec<RunMetricsRow> {
    let mut rows = Vec::new();
    for (split, report) in [(Split::Valid, valid), (Split::Test, test)] {
        let groups = std::iter::once(&report.overall)
            .chain(&report.buckets)
            .chain([&report.cold_start]);
        for group in groups {
            rows.push(RunMetricsRow {
                model: outcome.model.to_string(),
                backbone: run.backbone.clone(),
                variant: run.variant.clone(),
                seed: run.seed,
                split: split.name().into(),
                bucket: group.group.clone(),
                users: group.users as u64,
                metrics: group.metrics.named().map(|(_, v)| v),
                best_epoch: outcome.best_epoch,
                epochs: outcome.epochs,
                seconds_per_epoch: outcome.seconds_per_epoch,
                seconds: outcome.seconds,
            });
        }
    }
    rows
}

/// The Parquet files under `folder` (relative to the job), read whole: `(location, bytes)`.
async fn read_parts(ctx: &TaskContext, folder: &str) -> Result<Vec<(String, bytes::Bytes)>> {
    let folder = job_key(ctx.job.job_id(), folder);
    let prefix = format!("{folder}/");
    let objects = ctx
        .store
        .list(&prefix)
        .await
        .with_context(|| format!("listing {}", ctx.store.location(&prefix)))?;
    let mut parts = Vec::new();
    for object in objects.iter().filter(|o| o.key.ends_with(".parquet")) {
        let bytes = ctx
            .store
            .get(&object.key)
            .await
            .with_context(|| format!("reading {}", ctx.store.location(&object.key)))?;
        parts.push((ctx.store.location(&object.key).to_string(), bytes));
    }
    Ok(parts)
}

/// The encode stage's item vector files, read whole: `(location, bytes)`.
async fn item_embedding_parts(
    ctx: &TaskContext,
    run: &TrainRun,
) -> Result<Vec<(String, bytes::Bytes)>> {
    let parts = read_parts(ctx, ITEM_EMBEDDINGS).await?;
    if parts.is_empty() {
        let folder = job_key(ctx.job.job_id(), ITEM_EMBEDDINGS);
        bail!(
            "{}/part-*.parquet: no item text embeddings; the {} variant needs the item vectors \
             the encode stage writes (run the encode stage first, or drop `{}` from train.variants)",
            ctx.store.location(&folder),
            run.variant,
            run.variant
        );
    }
    Ok(parts)
}

/// The encode stage's rationale vector files of `source`, read whole: `(location, bytes)`.
async fn user_embedding_parts(
    ctx: &TaskContext,
    run: &TrainRun,
    source: &str,
) -> Result<Vec<(String, bytes::Bytes)>> {
    let folder = user_embeddings_folder(source);
    let parts = read_parts(ctx, &folder).await?;
    if parts.is_empty() {
        let location = ctx.store.location(&job_key(ctx.job.job_id(), &folder));
        bail!(
            "{location}/part-*.parquet: no {source} rationale embeddings; the {variant} variant \
             needs the {source}'s rationale vectors, which the encode stage writes from the \
             {source} stage's output (run the {source} and encode stages first, or drop \
             `{variant}` from train.variants)",
            variant = run.variant
        );
    }
    Ok(parts)
}

/// One rationale vector per user of `data` (in its order) from the encode stage's
/// `users-{source}` files, column `column`; users with none are marked absent. Fails when the
/// files match no user at all (a different job's files, or user ids that changed).
pub fn user_text(
    parts: Vec<(String, bytes::Bytes)>,
    source: &str,
    column: &str,
    data: &Interactions,
) -> Result<UserText> {
    let row_of: HashMap<&str, usize> = data
        .users
        .iter()
        .enumerate()
        .map(|(r, u)| (u.user_id.as_str(), r))
        .collect();
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; data.users.len()];
    let mut unknown = 0usize;
    let ids = Arc::new(Schema::new(vec![Field::new(
        "user_id",
        DataType::Utf8,
        false,
    )]));
    for (name, bytes) in parts {
        for batch in schema::read_batches(bytes, &ids, &name)? {
            let users = batch
                .column_by_name("user_id")
                .context("user_id checked by read_batches")?
                .as_string::<i32>();
            let vectors = batch
                .column_by_name(column)
                .with_context(|| format!("{name}: column {column} is missing"))?;
            let Some(lists) = vectors.as_fixed_size_list_opt() else {
                bail!(
                    "{name}: column {column} has type {}, expected FixedSizeList<Float32>",
                    vectors.data_type()
                );
            };
            for r in 0..batch.num_rows() {
                ensure!(
                    !lists.is_null(r),
                    "{name}: row {r} (user {}): {column} is null",
                    users.value(r)
                );
                let value = lists.value(r);
                let Some(floats) = value.as_primitive_opt::<Float32Type>() else {
                    bail!("{name}: column {column} does not hold Float32 values");
                };
                match row_of.get(users.value(r)) {
                    Some(&u) => rows[u] = Some(floats.values().to_vec()),
                    None => unknown += 1,
                }
            }
        }
    }
    let covered = rows.iter().filter(|r| r.is_some()).count();
    if covered == 0 {
        bail!(
            "{}/: none of the {} users has a {column} vector ({unknown} rows name users this \
             job does not have); rerun the encode stage for this job",
            user_embeddings_folder(source),
            data.users.len()
        );
    }
    tracing::info!(
        source,
        column,
        users = data.users.len(),
        covered,
        unknown,
        "rationale vectors"
    );
    UserText::from_rows(&rows).with_context(|| user_embeddings_folder(source))
}

/// One text vector per item index, from the encode stage's files; every item must have one.
pub fn text_table(parts: Vec<(String, bytes::Bytes)>, num_items: u32) -> Result<TextTable> {
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; num_items as usize];
    for (name, bytes) in parts {
        for (item, vector) in
            schema::read_embeddings_by_index(bytes, &name, "item_index", "embedding")?
        {
            let slot = rows.get_mut(item as usize).with_context(|| {
                format!("{name}: item_index {item} is outside the catalogue of {num_items} items")
            })?;
            *slot = Some(vector);
        }
    }
    if let Some(missing) = rows.iter().position(Option::is_none) {
        let count = rows.iter().filter(|r| r.is_none()).count();
        bail!(
            "{ITEM_EMBEDDINGS}/: {count} of {num_items} items have no text vector (the first is \
             item_index {missing}); rerun the encode stage for this job"
        );
    }
    let rows: Vec<Vec<f32>> = rows.into_iter().flatten().collect();
    TextTable::from_rows(&rows).context(ITEM_EMBEDDINGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(backbone: Option<&str>, variant: &str) -> TrainRun {
        TrainRun {
            backbone: backbone.map(String::from),
            variant: variant.into(),
            seed: 3,
        }
    }

    #[test]
    fn slim_variants_become_fused_and_id_agnostic_models() {
        let section = TrainSection {
            embedding_dim: 32,
            ..TrainSection::default()
        };
        let prepare = PrepareSection::default();
        let model = |backbone, variant| {
            configs(&section, &prepare, &run(backbone, variant), false)
                .unwrap()
                .0
                .unwrap()
        };
        let slim = model(Some("gru4rec"), "slim");
        assert_eq!(
            (slim.items, slim.rationale),
            (ItemRepresentation::Fused, true)
        );
        assert_eq!(slim.name(), "slim-gru4rec");
        assert_eq!(
            model(Some("sasrec"), "slim_minus").name(),
            "slim_minus-sasrec"
        );
        let agnostic = model(None, "slim_agnostic");
        assert_eq!(
            (agnostic.items, agnostic.rationale),
            (ItemRepresentation::Text, true)
        );
        assert_eq!(
            (agnostic.name(), agnostic.hidden),
            ("slim_agnostic".into(), 32)
        );
        assert!(matches!(&agnostic.backbone, BackboneConfig::SasRec(c) if c.blocks == 1));
        assert_eq!(model(None, "step3").name(), "slim_step3");
        // Where each reads its rationale vectors from.
        assert_eq!(
            rationale_source("slim_minus"),
            Some(("teacher", "rationale"))
        );
        assert_eq!(rationale_source("step2"), Some(("student", "step2")));
        assert_eq!(rationale_source("plus"), None);
        let err = configs(&section, &prepare, &run(None, "slim"), false).unwrap_err();
        assert!(err.to_string().contains("needs a backbone"), "{err}");
    }

    /// Row `i` has rationale `base + i` and step1 `-(base + i)` in every component.
    fn user_part(ids: &[&str], dim: usize, base: f32) -> bytes::Bytes {
        let value = |i: usize| base + i as f32;
        let vectors: Vec<Vec<f32>> = (0..ids.len()).map(|i| vec![value(i); dim]).collect();
        let steps: Vec<Vec<f32>> = (0..ids.len()).map(|i| vec![-value(i); dim]).collect();
        let bytes = schema::write_embeddings(
            vec![(
                Field::new("user_id", DataType::Utf8, false),
                Arc::new(arrow::array::StringArray::from(ids.to_vec())) as arrow::array::ArrayRef,
            )],
            vec![("rationale", &vectors), ("step1", &steps)],
            dim,
        )
        .unwrap();
        bytes::Bytes::from(bytes)
    }

    #[test]
    fn rationale_vectors_are_matched_to_users_by_id() {
        let data = Interactions::from_sequences(&[vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1]], 3)
            .unwrap();
        // Users are u0, u1, u2; the files know u2 and u0 (and a stranger), not u1.
        let parts = vec![
            ("a".to_string(), user_part(&["u2", "x"], 2, 10.0)),
            ("b".to_string(), user_part(&["u0"], 2, 20.0)),
        ];
        let text = user_text(parts.clone(), "student", "rationale", &data).unwrap();
        assert_eq!(text.present, [true, false, true]);
        assert_eq!(text.values, [20.0, 20.0, 0.0, 0.0, 10.0, 10.0]);
        let steps = user_text(parts.clone(), "student", "step1", &data).unwrap();
        assert_eq!(steps.values, [-20.0, -20.0, 0.0, 0.0, -10.0, -10.0]);
        let err = user_text(parts, "student", "step2", &data)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a: column step2 is missing"), "{err}");
        let err = user_text(
            vec![("c".into(), user_part(&["x"], 2, 0.0))],
            "teacher",
            "rationale",
            &data,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("embeddings/users-teacher/: none of the 3 users"),
            "{err}"
        );
    }

    #[test]
    fn manifest_settings_become_model_and_training_configs() {
        let section = TrainSection {
            embedding_dim: 48,
            epochs: 7,
            ..TrainSection::default()
        };
        let prepare = PrepareSection::default();
        let (model, config) =
            configs(&section, &prepare, &run(Some("gru4rec"), "plus"), false).unwrap();
        let model = model.unwrap();
        assert_eq!(model.name(), "gru4rec+");
        assert_eq!(model.items, ItemRepresentation::IdPlusText { text_dim: 24 });
        assert_eq!((model.hidden, model.max_len), (48, 50));
        assert_eq!(
            (config.epochs, config.seed, config.candidate_seed),
            (7, 3, 42)
        );
        let (model, _) = configs(&section, &prepare, &run(None, "popularity"), false).unwrap();
        assert!(model.is_none());
    }

    #[test]
    fn text_vectors_must_cover_every_item() {
        use arrow::array::{ArrayRef, UInt32Array};
        use arrow::datatypes::{DataType, Field};
        let part = |items: Vec<u32>| {
            let vectors: Vec<Vec<f32>> = items.iter().map(|&i| vec![i as f32, 1.0]).collect();
            let bytes = schema::write_embeddings(
                vec![(
                    Field::new("item_index", DataType::UInt32, false),
                    std::sync::Arc::new(UInt32Array::from(items)) as ArrayRef,
                )],
                vec![("embedding", &vectors)],
                2,
            )
            .unwrap();
            bytes::Bytes::from(bytes)
        };
        let table = text_table(
            vec![("a".into(), part(vec![0, 2])), ("b".into(), part(vec![1]))],
            3,
        )
        .unwrap();
        assert_eq!(table.values, [0.0, 1.0, 1.0, 1.0, 2.0, 1.0]);
        let err = text_table(vec![("a".into(), part(vec![0, 2]))], 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 of 4 items have no text vector") && err.contains("item_index 1"),
            "{err}"
        );
    }
}
