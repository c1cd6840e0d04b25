//! Training: next-item prediction at every position of each training history, binary
//! cross-entropy against sampled negatives, Adam, early stopping on validation NDCG@10, then
//! the test metrics of the best epoch.
//!
//! Evaluation follows [`slim_shared::eval`]: validation and test candidates come from
//! `candidate_seed` alone (each split its own stream), so every model and training seed is
//! ranked on the same candidates. The training `seed` drives initialisation, dropout, shuffling
//! and negatives. Backends with one global random stream (Flex) reproduce a run exactly only
//! when no other model trains in the same process at the same time.

use super::data::{Interactions, TrainSampler, eval_batches};
use super::item::TextTable;
use super::model::{ModelConfig, Recommender};
use super::rationale::UserText;
use anyhow::{Context, Result, ensure};
use burn::module::AutodiffModule;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use slim_shared::eval::{
    Buckets, CandidateSampler, Candidates, EvalReport, Evaluation, NEGATIVES, Split,
};
use std::sync::Arc;
use std::time::Instant;

/// The training loop's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Most epochs (early stopping usually ends sooner).
    pub epochs: usize,
    /// Users per batch.
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Sampled negatives per positive.
    pub negatives: usize,
    /// Evaluations without a better validation NDCG@10 before stopping.
    pub patience: usize,
    /// Validate every this many epochs.
    pub eval_every: usize,
    /// Initialisation, dropout, shuffling and training negatives.
    pub seed: u64,
    /// Evaluation candidates (shared by every model).
    pub candidate_seed: u64,
    /// Random negatives per evaluated user.
    pub eval_negatives: usize,
    /// Users per evaluation batch.
    pub eval_batch_size: usize,
    /// Show a progress bar per epoch.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 200,
            batch_size: 128,
            learning_rate: 1e-3,
            negatives: 1,
            patience: 5,
            eval_every: 1,
            seed: 1,
            candidate_seed: 42,
            eval_negatives: NEGATIVES,
            eval_batch_size: 512,
            progress: false,
        }
    }
}

/// One epoch of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over batches.
    pub loss: f64,
    /// Validation NDCG@10 when this epoch was evaluated.
    pub valid_ndcg10: Option<f64>,
    /// Seconds of training (not evaluation).
    pub train_seconds: f64,
}

/// What a training run gives back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// `sasrec`, `gru4rec+`, ...
    pub model: String,
    pub seed: u64,
    /// The epoch whose weights were kept (best validation NDCG@10).
    pub best_epoch: usize,
    pub epochs: Vec<EpochLog>,
    /// Validation metrics of the best epoch.
    pub valid: EvalReport,
    /// Test metrics of the best epoch.
    pub test: EvalReport,
    /// Mean seconds per training epoch (without evaluation).
    pub seconds_per_epoch: f64,
    /// Wall time of the whole run, evaluation included.
    pub total_seconds: f64,
}

/// Candidates of `split` for every user of `data`, in their order.
pub fn eval_candidates(
    data: &Interactions,
    seed: u64,
    negatives: usize,
    split: Split,
) -> Result<Candidates> {
    CandidateSampler::new(seed, data.num_items)
        .with_negatives(negatives)
        .candidates_for(data.user_items(), split)
        .with_context(|| format!("drawing {} candidates", split.name()))
}

/// Writes what a reference implementation outside slim needs to train and rank exactly the
/// same users on exactly the same candidates (`benches/sasrec_reference.py`): `users.parquet`
/// and `items.parquet` in the prepare stage's schemas (items carry only their index and train
/// count) and `candidates-valid.parquet` / `candidates-test.parquet`
/// ([`slim_shared::eval::CANDIDATES`]) drawn with `config`'s candidate seed.
pub fn write_reference_inputs(
    data: &Interactions,
    config: &TrainConfig,
    dir: &std::path::Path,
) -> Result<()> {
    use slim_shared::schema::{ItemRow, ItemsBuilder, ParquetFile, UserRowRef, UsersBuilder};
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut users = ParquetFile::<UsersBuilder>::create(&dir.join("users.parquet"))?;
    for u in &data.users {
        users.push(|b| {
            b.push(UserRowRef {
                user_id: &u.user_id,
                user_index: u.user_index,
                history: &u.history,
                history_length: u.history_length,
                valid_item: u.valid_item,
                test_item: u.test_item,
                shard: u.shard,
                in_teacher_sample: u.in_teacher_sample,
            })
        })?;
    }
    users.close()?;
    let mut items = ParquetFile::<ItemsBuilder>::create(&dir.join("items.parquet"))?;
    for (i, &train_count) in data.train_count.iter().enumerate() {
        let row = ItemRow {
            item_index: i as u32,
            item_id: i.to_string(),
            title: None,
            brand: None,
            categories: Vec::new(),
            description: None,
            has_meta: false,
            text: String::new(),
            train_count,
        };
        items.push(|b| b.push(&row))?;
    }
    items.close()?;
    for split in [Split::Valid, Split::Test] {
        let candidates =
            eval_candidates(data, config.candidate_seed, config.eval_negatives, split)?;
        let path = dir.join(format!("candidates-{}.parquet", split.name()));
        std::fs::write(&path, candidates.to_parquet()?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Ranks `candidates` (rows in the order of `data.users`) with `model`; `rationales` (by
/// user row) for models that read them.
pub fn evaluate<B: Backend>(
    model: &Recommender<B>,
    data: &Interactions,
    candidates: &Candidates,
    rationales: Option<&UserText>,
    max_len: usize,
    batch_size: usize,
    buckets: Buckets,
) -> EvalReport {
    let popularity = data.popularity();
    let mut evaluation = Evaluation::new(buckets);
    let device = model.devices().into_iter().next().unwrap_or_default();
    let batches = eval_batches::<B>(data, candidates, rationales, max_len, batch_size, &device);
    for (rows, batch) in batches {
        let users = model.last_state(&batch.input);
        let scores: Vec<f32> = model
            .score(users, batch.candidates)
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 scores");
        for (k, r) in rows.enumerate() {
            let width = candidates.width;
            evaluation.add_scores(
                data.users[r].history_length,
                candidates.row(r),
                &scores[k * width..(k + 1) * width],
                &popularity,
            );
        }
    }
    evaluation.report()
}

/// Trains a model on `data` and reports the test metrics of its best validation epoch.
pub fn train<B: AutodiffBackend>(
    data: &Interactions,
    model_config: &ModelConfig,
    text: Option<&TextTable>,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<TrainReport> {
    train_with_rationales::<B>(data, model_config, text, None, config, device)
}

/// [`train`] for models that also read the users' rationale vectors (`rationales`, one row
/// per user of `data` in its order; required exactly when `model_config.rationale` is set).
pub fn train_with_rationales<B: AutodiffBackend>(
    data: &Interactions,
    model_config: &ModelConfig,
    text: Option<&TextTable>,
    rationales: Option<&UserText>,
    config: &TrainConfig,
    device: &B::Device,
) -> Result<TrainReport> {
    let started = Instant::now();
    let name = model_config.name();
    ensure!(
        config.epochs > 0 && config.eval_every > 0 && config.negatives > 0,
        "train: epochs, eval_every and negatives must be positive"
    );
    ensure!(
        model_config.rationale == rationales.is_some(),
        "{name}: the model {} rationale vectors but they were {}",
        if model_config.rationale {
            "reads"
        } else {
            "does not read"
        },
        if rationales.is_some() {
            "given"
        } else {
            "not given"
        }
    );
    if let Some(r) = rationales {
        ensure!(
            r.users() == data.users.len(),
            "{name}: {} rationale rows for {} users",
            r.users(),
            data.users.len()
        );
        tracing::info!(
            model = %name,
            users = r.users(),
            with_rationale = r.covered(),
            "rationale vectors (users without one get the learned default)"
        );
    }
    let valid = eval_candidates(
        data,
        config.candidate_seed,
        config.eval_negatives,
        Split::Valid,
    )?;
    let test = eval_candidates(
        data,
        config.candidate_seed,
        config.eval_negatives,
        Split::Test,
    )?;
    let mut sampler = TrainSampler::new(
        data,
        model_config.max_len,
        config.batch_size,
        config.negatives,
    );
    if let Some(r) = rationales {
        sampler = sampler.with_rationales(Arc::new(r.clone()));
    }
    ensure!(
        !sampler.is_empty(),
        "no user has two training items: nothing to learn from"
    );

    B::seed(device, config.seed);
    crate::nn::seed_dropout(config.seed);
    let mut model = Recommender::<B>::with_rationales(
        model_config,
        data.num_items,
        text,
        rationales.map(|r| r.dim),
        device,
    )?;
    let mut optimizer = AdamConfig::new().with_epsilon(1e-8).init();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let evaluate_valid = |m: &Recommender<B::InnerBackend>| {
        evaluate(
            m,
            data,
            &valid,
            rationales,
            model_config.max_len,
            config.eval_batch_size,
            Buckets::default(),
        )
    };

    let mut best: Option<(usize, f64, Recommender<B::InnerBackend>, EvalReport)> = None;
    let mut since_best = 0;
    let mut epochs = Vec::new();
    for epoch in 1..=config.epochs {
        let epoch_started = Instant::now();
        let batches = sampler.epoch_batches(config.seed, epoch);
        let bar = progress_bar(config.progress, batches.len(), &name, epoch);
        let mut loss_sum = 0.0;
        for rows in &batches {
            let batch = sampler.batch::<B>(rows, &mut rng, device);
            let loss = model.loss(&batch);
            loss_sum += f64::from(loss.clone().into_scalar().elem::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(config.learning_rate, model, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let loss = loss_sum / batches.len().max(1) as f64;
        ensure!(
            loss.is_finite(),
            "{name}: training diverged at epoch {epoch} (loss {loss}); lower the learning rate"
        );
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        let mut log = EpochLog {
            epoch,
            loss,
            valid_ndcg10: None,
            train_seconds,
        };
        if epoch % config.eval_every == 0 || epoch == config.epochs {
            let snapshot = model.valid();
            let report = evaluate_valid(&snapshot);
            let ndcg = report.overall.metrics.ndcg10;
            log.valid_ndcg10 = Some(ndcg);
            if best.as_ref().is_none_or(|b| ndcg > b.1) {
                best = Some((epoch, ndcg, snapshot, report));
                since_best = 0;
            } else {
                since_best += 1;
            }
        }
        tracing::info!(
            model = %name,
            seed = config.seed,
            epoch,
            loss,
            valid_ndcg10 = log.valid_ndcg10,
            seconds = train_seconds,
            "epoch"
        );
        epochs.push(log);
        if since_best >= config.patience.max(1) {
            break;
        }
    }

    let (best_epoch, _, best_model, valid_report) = best.expect("the last epoch is evaluated");
    let test_report = evaluate(
        &best_model,
        data,
        &test,
        rationales,
        model_config.max_len,
        config.eval_batch_size,
        Buckets::default(),
    );
    let seconds_per_epoch =
        epochs.iter().map(|e| e.train_seconds).sum::<f64>() / epochs.len() as f64;
    tracing::info!(
        model = %name,
        seed = config.seed,
        best_epoch,
        test_ndcg10 = test_report.overall.metrics.ndcg10,
        test_hr10 = test_report.overall.metrics.hr10,
        "trained"
    );
    Ok(TrainReport {
        model: name,
        seed: config.seed,
        best_epoch,
        epochs,
        valid: valid_report,
        test: test_report,
        seconds_per_epoch,
        total_seconds: started.elapsed().as_secs_f64(),
    })
}

fn progress_bar(visible: bool, batches: usize, name: &str, epoch: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(batches as u64).with_message(format!("{name} epoch {epoch}"));
    bar.set_style(
        ProgressStyle::with_template("{msg:24} [{bar:30}] {pos}/{len} batches, eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}
