//! The `train` stage executor: task `s` trains and evaluates run `s` of the manifest's
//! `[train]` grid ([`plan::train_runs`]: backbone x variant x seed, the popularity baseline
//! once) and writes its metrics to `train/runs/part-NNNNN.parquet`
//! ([`schema::TRAIN_RUNS`]: one row per split and user group).
//!
//! Reads `data/users.parquet` and `data/items.parquet`; the `plus` variant also reads the item
//! text vectors of the encode stage (`embeddings/items/part-*.parquet`). Evaluation
//! candidates come from `prepare.seed`, so every run of a job ranks the same candidates; the
//! run's seed drives initialisation, dropout, shuffling and training negatives.
//!
//! Aggregating the runs into `train/metrics.parquet` and `train/report.md` is
//! [`slim_shared::report`]'s job, once every run is done.

use crate::executor::{StageExecutor, TaskContext, TaskResult};
use crate::recommend::{
    BackboneConfig, Interactions, ItemRepresentation, ModelConfig, TextTable, TrainBackend,
    TrainConfig, eval_candidates, evaluate_popularity, train,
};
use anyhow::{Context, Result, bail, ensure};
use async_trait::async_trait;
use slim_shared::eval::{Buckets, EvalReport, Split};
use slim_shared::manifest::{PrepareSection, TrainSection};
use slim_shared::markers::job_key;
use slim_shared::plan::{self, POPULARITY, TrainRun};
use slim_shared::schema::{self, RunMetricsRow};
use slim_shared::stage::Stage;
use std::time::Instant;

#[derive(Default)]
pub struct TrainExecutor;

/// The folder of the encode stage's item vectors, relative to the job.
pub const ITEM_EMBEDDINGS: &str = "embeddings/items";

/// `train/runs/part-NNNNN.parquet`
pub fn run_part_key(shard: u32) -> String {
    format!("train/runs/part-{shard:05}.parquet")
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
        check_implemented(&run)?;
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
            Some(m) if m.items.needs_text() => Some(item_embedding_parts(ctx).await?),
            _ => None,
        };

        let started = Instant::now();
        let rows = tokio::task::spawn_blocking(move || -> Result<Vec<RunMetricsRow>> {
            let users = schema::read_users(users, "data/users.parquet")?;
            let items = schema::read_items(items, "data/items.parquet")?;
            let data = Interactions::from_rows(users, &items)?;
            let text = text_parts
                .map(|parts| text_table(parts, data.num_items))
                .transpose()?;
            run_one(&run, &data, model.as_ref(), text.as_ref(), &config, started)
        })
        .await
        .context("the training thread panicked")??;

        let mut result = TaskResult::default();
        let test_all = rows.iter().find(|r| r.split == "test" && r.bucket == "all");
        if let Some(row) = test_all {
            result.counters.insert("users".into(), row.users);
            result.counters.insert("epochs".into(), row.epochs.into());
            result
                .counters
                .insert("best_epoch".into(), row.best_epoch.into());
        }
        let bytes = schema::write_run_metrics(&rows)?;
        result.parts.push(
            ctx.put_part(&run_part_key(ctx.shard), bytes, Some(rows.len() as u64))
                .await?,
        );
        Ok(result)
    }
}

/// Fails a run whose backbone or variant this build cannot train, with the message manifest
/// validation gives.
pub fn check_implemented(run: &TrainRun) -> Result<()> {
    let backbone = run
        .backbone
        .as_deref()
        .and_then(|b| plan::not_implemented("backbone", b));
    let variant = plan::not_implemented("variant", &run.variant);
    if let Some(message) = backbone.or(variant) {
        bail!("{run}: {message}");
    }
    Ok(())
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
    let Some(backbone) = run.backbone.as_deref() else {
        return Ok((None, config));
    };
    let mut model = match backbone {
        "sasrec" => ModelConfig::sasrec(),
        "gru4rec" => ModelConfig::gru4rec(),
        other => bail!("{run}: no backbone {other:?}"),
    };
    let hidden = section.embedding_dim as usize;
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
        other => bail!("{run}: no variant {other:?}"),
    };
    Ok((Some(model), config))
}

/// Trains (or, for popularity, just ranks) one run and returns its metric rows.
fn run_one(
    run: &TrainRun,
    data: &Interactions,
    model: Option<&ModelConfig>,
    text: Option<&TextTable>,
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
    let report = train::<TrainBackend>(data, model, text, config, &crate::backend::device())
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

/// One row per split and group: `all` first, then the buckets.
fn metric_rows(
    run: &TrainRun,
    outcome: &Outcome<'_>,
    valid: &EvalReport,
    test: &EvalReport,
) -> Vec<RunMetricsRow> {
    let mut rows = Vec::new();
    for (split, report) in [(Split::Valid, valid), (Split::Test, test)] {
        for group in std::iter::once(&report.overall).chain(&report.buckets) {
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

/// The encode stage's item vector files, read whole: `(key, bytes)`.
async fn item_embedding_parts(ctx: &TaskContext) -> Result<Vec<(String, bytes::Bytes)>> {
    let folder = job_key(ctx.job.job_id(), ITEM_EMBEDDINGS);
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
    if parts.is_empty() {
        bail!(
            "{}/part-*.parquet: no item text embeddings; the plus variant needs the item vectors \
             the encode stage writes (run the encode stage first, or drop `plus` from train.variants)",
            ctx.store.location(&folder)
        );
    }
    Ok(parts)
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
    fn unimplemented_variants_and_backbones_fail_with_the_reason() {
        let err = check_implemented(&run(Some("sasrec"), "slim"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sasrec/slim seed 3") && err.contains("`slim` is not implemented yet"),
            "{err}"
        );
        let err = check_implemented(&run(Some("srgnn"), "id"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`srgnn` is not implemented yet"), "{err}");
        check_implemented(&run(Some("gru4rec"), "plus")).unwrap();
        check_implemented(&run(None, "popularity")).unwrap();
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
