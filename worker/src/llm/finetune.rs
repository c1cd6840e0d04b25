//! Instruction tuning of LoRA adapters: the student learns to write the teacher's rationale for
//! a prompt. Only rationale tokens are scored; prompt tokens and padding contribute nothing.

use super::lora::{Dropout, LoraAdapters};
use super::model::Llama;
use anyhow::{Context, Result, anyhow, ensure};
use burn::module::Module;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

/// One training pair, as token ids: the prompt, then the answer to learn (ending with the
/// end-of-turn token so the student learns to stop).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub answer: Vec<u32>,
}

/// How adapters are trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneConfig {
    pub learning_rate: f64,
    pub epochs: usize,
    /// Examples per optimizer step is `batch_size * accumulation`.
    pub batch_size: usize,
    pub accumulation: usize,
    /// Linear warm-up steps, then cosine decay to zero at the last step.
    pub warmup_steps: usize,
    pub max_grad_norm: f32,
    pub weight_decay: f32,
    /// Sequences longer than this lose prompt tokens from the front (the answer is kept).
    pub max_seq_len: usize,
    /// Seeds the shuffling of every epoch.
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-4,
            epochs: 1,
            batch_size: 4,
            accumulation: 1,
            warmup_steps: 10,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            max_seq_len: 512,
            seed: 0,
        }
    }
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn learning_rate_at(config: &FinetuneConfig, step: usize, total: usize) -> f64 {
    let base = config.learning_rate;
    if step < config.warmup_steps {
        return base * (step + 1) as f64 / config.warmup_steps as f64;
    }
    let span = total.saturating_sub(config.warmup_steps).max(1) as f64;
    let progress = ((step - config.warmup_steps) as f64 / span).min(1.0);
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Token ids of each example (truncated to `max_len`, prompt first) and the index where its
/// answer starts.
fn sequence_of(example: &Example, max_len: usize) -> (Vec<u32>, usize) {
    let answer = &example.answer[..example.answer.len().min(max_len)];
    let keep = (max_len - answer.len()).min(example.prompt.len());
    let prompt = &example.prompt[example.prompt.len() - keep..];
    let mut tokens = prompt.to_vec();
    tokens.extend_from_slice(answer);
    (tokens, prompt.len())
}

/// Mean cross-entropy of the answer tokens of `batch` (each predicted from the tokens before
/// it); prompt tokens and padding have weight zero.
pub fn answer_loss<B: AutodiffBackend>(
    model: &Llama<B>,
    adapters: &LoraAdapters<B>,
    batch: &[Example],
    max_seq_len: usize,
) -> Result<Tensor<B, 1>> {
    ensure!(!batch.is_empty(), "an empty batch has no loss");
    let sequences: Vec<(Vec<u32>, usize)> =
        batch.iter().map(|e| sequence_of(e, max_seq_len)).collect();
    let len = sequences.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    ensure!(len >= 2, "examples need at least two tokens");
    let inputs: Vec<Vec<u32>> = sequences.iter().map(|(t, _)| t.clone()).collect();
    let hidden = model.hidden_states(&inputs, Some(adapters))?;
    // Position p predicts token p + 1; it counts when token p + 1 belongs to the answer. Only
    // those rows go through the vocabulary projection.
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (row, (tokens, answer_start)) in sequences.iter().enumerate() {
        for p in answer_start.saturating_sub(1)..tokens.len() - 1 {
            rows.push((row * len + p) as i64);
            targets.push(i64::from(tokens[p + 1]));
        }
    }
    ensure!(!rows.is_empty(), "no answer tokens in the batch");
    let counted = rows.len();
    let device = model.device();
    let picked_rows = hidden.select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [counted]), device),
    );
    let log_probs = burn::tensor::activation::log_softmax(model.logits(picked_rows), 1);
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [counted, 1]), device);
    let picked = log_probs.gather(1, targets).reshape([counted]);
    Ok(picked.sum().neg().div_scalar(counted as f32))
}

/// What training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: usize,
    pub epoch: usize,
    pub learning_rate: f64,
    pub train_loss: f64,
    /// On the held-out examples, at the end of each epoch.
    pub validation_loss: Option<f64>,
}

/// Training state after an optimizer step: enough to continue exactly from there (the
/// adapters, AdamW's moments and step count, and the loss history). A killed distill task
/// resumes from its last checkpoint and ends with the adapters an uninterrupted run would.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Optimizer steps done.
    pub step: usize,
    pub history: Vec<LossPoint>,
    /// [`fingerprint`] of the run that wrote it: a checkpoint of another run is not resumed.
    pub fingerprint: String,
    adapters: Vec<u8>,
    optimizer: Vec<u8>,
}

/// The first bytes of a serialised [`Checkpoint`].
const CHECKPOINT_MAGIC: &[u8; 8] = b"SLIMCKP1";

#[derive(Serialize, Deserialize)]
struct CheckpointHeader {
    step: usize,
    history: Vec<LossPoint>,
    fingerprint: String,
    adapters_len: usize,
    optimizer_len: usize,
    sha256: String,
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    format!("{:x}", hasher.finalize())
}

impl Checkpoint {
    /// One blob: magic, header length, JSON header, then the two Burn records (MessagePack).
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = CheckpointHeader {
            step: self.step,
            history: self.history.clone(),
            fingerprint: self.fingerprint.clone(),
            adapters_len: self.adapters.len(),
            optimizer_len: self.optimizer.len(),
            sha256: sha256_hex(&[&self.adapters, &self.optimizer]),
        };
        let header = serde_json::to_vec(&header).expect("checkpoint header serialises");
        let mut out =
            Vec::with_capacity(16 + header.len() + self.adapters.len() + self.optimizer.len());
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.adapters);
        out.extend_from_slice(&self.optimizer);
        out
    }

    /// Reads a blob written by [`Checkpoint::to_bytes`]; a truncated or altered one is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        ensure!(
            bytes.len() >= 16 && &bytes[..8] == CHECKPOINT_MAGIC,
            "not a slim training checkpoint"
        );
        let header_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
        let body = &bytes[16..];
        ensure!(
            body.len() >= header_len,
            "checkpoint truncated in its header"
        );
        let header: CheckpointHeader =
            serde_json::from_slice(&body[..header_len]).context("checkpoint header")?;
        let records = &body[header_len..];
        ensure!(
            records.len() == header.adapters_len + header.optimizer_len,
            "checkpoint truncated: {} record bytes, expected {}",
            records.len(),
            header.adapters_len + header.optimizer_len
        );
        let (adapters, optimizer) = records.split_at(header.adapters_len);
        ensure!(
            sha256_hex(&[adapters, optimizer]) == header.sha256,
            "checkpoint corrupt: checksum mismatch"
        );
        Ok(Self {
            step: header.step,
            history: header.history,
            fingerprint: header.fingerprint,
            adapters: adapters.to_vec(),
            optimizer: optimizer.to_vec(),
        })
    }
}

/// Identifies a training run: its settings, its examples and the adapters' shape. Runs with
/// equal fingerprints (and equal starting adapters) compute the same steps.
pub fn fingerprint(config: &FinetuneConfig, train: &[Example], validation: &[Example]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(config).expect("config serialises"));
    for (tag, examples) in [(b"t", train), (b"v", validation)] {
        for example in examples {
            hasher.update(tag);
            for part in [&example.prompt, &example.answer] {
                hasher.update((part.len() as u64).to_le_bytes());
                for token in part {
                    hasher.update(token.to_le_bytes());
                }
            }
        }
    }
    format!("{:x}", hasher.finalize())
}

/// Called with each checkpoint; an error stops training.
pub type CheckpointHook<'a> = Box<dyn FnMut(&Checkpoint) -> Result<()> + 'a>;
/// Called after each optimizer step with its loss point and the total number of steps.
pub type StepHook<'a> = Box<dyn FnMut(&LossPoint, usize) + 'a>;

/// What a caller can hook into a training run.
pub struct TrainingHooks<'a> {
    /// Save a checkpoint every this many optimizer steps (0: only at the end of each epoch).
    pub checkpoint_every: usize,
    /// Continue from this checkpoint instead of starting at step 0.
    pub resume: Option<Checkpoint>,
    /// Called with each checkpoint; an error stops training (as a killed process would).
    pub on_checkpoint: CheckpointHook<'a>,
    /// Called after each optimizer step with its loss point and the total number of steps.
    pub on_step: StepHook<'a>,
}

impl Default for TrainingHooks<'_> {
    fn default() -> Self {
        Self {
            checkpoint_every: 0,
            resume: None,
            on_checkpoint: Box::new(|_| Ok(())),
            on_step: Box::new(|_, _| {}),
        }
    }
}

/// Full-precision MessagePack: checkpoints must restore the exact values.
type CheckpointRecorder = NamedMpkBytesRecorder<FullPrecisionSettings>;

/// Trains `adapters` on `train`, reporting validation loss on `validation` after each epoch.
pub fn finetune<B: AutodiffBackend>(
    model: &Llama<B>,
    adapters: LoraAdapters<B>,
    train: &[Example],
    validation: &[Example],
    config: &FinetuneConfig,
) -> Result<(LoraAdapters<B>, Vec<LossPoint>)> {
    finetune_with(
        model,
        adapters,
        train,
        validation,
        config,
        TrainingHooks::default(),
    )
}

/// [`finetune`] with checkpoints, resumption and progress reporting.
pub fn finetune_with<B: AutodiffBackend>(
    model: &Llama<B>,
    mut adapters: LoraAdapters<B>,
    train: &[Example],
    validation: &[Example],
    config: &FinetuneConfig,
    mut hooks: TrainingHooks<'_>,
) -> Result<(LoraAdapters<B>, Vec<LossPoint>)> {
    ensure!(!train.is_empty(), "no training examples");
    ensure!(
        config.batch_size > 0 && config.accumulation > 0,
        "batch size and accumulation must be positive"
    );
    let batches_per_epoch = train.len().div_ceil(config.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.accumulation);
    let total_steps = steps_per_epoch * config.epochs;
    let run = fingerprint(config, train, validation);
    let device = model.device().clone();
    let recorder = CheckpointRecorder::default();
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(config.max_grad_norm)))
        .init();
    let mut history = Vec::new();
    let mut step = 0;
    if let Some(checkpoint) = hooks.resume.take() {
        ensure!(
            checkpoint.fingerprint == run,
            "the checkpoint belongs to another training run (other settings or examples)"
        );
        adapters = adapters.load_record(
            recorder
                .load(checkpoint.adapters, &device)
                .map_err(|e| anyhow!("checkpoint adapters: {e:?}"))?,
        );
        optimizer = optimizer.load_record(
            recorder
                .load(checkpoint.optimizer, &device)
                .map_err(|e| anyhow!("checkpoint optimizer state: {e:?}"))?,
        );
        step = checkpoint.step;
        history = checkpoint.history;
        info!(step, total_steps, "resuming training from a checkpoint");
    }
    for epoch in step / steps_per_epoch..config.epochs {
        // The order of each epoch depends only on (seed, epoch): a resumed run sees the same.
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            config.seed.wrapping_add(epoch as u64),
        ));
        let batches: Vec<Vec<Example>> = order
            .chunks(config.batch_size)
            .map(|c| c.iter().map(|&i| train[i].clone()).collect())
            .collect();
        let groups: Vec<&[Vec<Example>]> = batches.chunks(config.accumulation).collect();
        for (index, group) in groups.iter().enumerate() {
            if epoch * steps_per_epoch + index < step {
                continue; // done before the checkpoint this run resumed from
            }
            let mut accumulator = GradientsAccumulator::<LoraAdapters<B>>::new();
            let mut loss_sum = 0.0;
            for (micro, batch) in group.iter().enumerate() {
                // Dropout masks depend only on (seed, step, micro-batch).
                adapters.training = Some(Dropout::new(
                    adapters.dropout,
                    config.seed
                        ^ ((step as u64) << 16 | micro as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ));
                // Each micro-batch's share of the step's mean.
                let loss = answer_loss(model, &adapters, batch, config.max_seq_len)?
                    .div_scalar(group.len() as f32);
                loss_sum += f64::from(loss.clone().into_scalar().elem::<f32>());
                accumulator.accumulate(
                    &adapters,
                    GradientsParams::from_grads(loss.backward(), &adapters),
                );
            }
            adapters.training = None;
            let learning_rate = learning_rate_at(config, step, total_steps);
            adapters = optimizer.step(learning_rate, adapters, accumulator.grads());
            history.push(LossPoint {
                step,
                epoch,
                learning_rate,
                train_loss: loss_sum,
                validation_loss: None,
            });
            step += 1;
            let epoch_done = index + 1 == groups.len();
            if epoch_done && !validation.is_empty() {
                let mean = validation_loss(model, &adapters, validation, config)?;
                if let Some(last) = history.last_mut() {
                    last.validation_loss = Some(mean);
                }
                info!(epoch, validation_loss = format!("{mean:.4}"), "epoch done");
            }
            (hooks.on_step)(history.last().expect("a step was recorded"), total_steps);
            let due = hooks.checkpoint_every > 0 && step % hooks.checkpoint_every == 0;
            if due || epoch_done {
                let checkpoint = Checkpoint {
                    step,
                    history: history.clone(),
                    fingerprint: run.clone(),
                    adapters: recorder
                        .record(adapters.clone().into_record(), ())
                        .map_err(|e| anyhow!("recording the adapters: {e:?}"))?,
                    optimizer: recorder
                        .record(optimizer.to_record(), ())
                        .map_err(|e| anyhow!("recording the optimizer state: {e:?}"))?,
                };
                (hooks.on_checkpoint)(&checkpoint)?;
            }
        }
    }
    Ok((adapters, history))
}

/// Mean answer loss over `examples`, without dropout.
pub fn validation_loss<B: AutodiffBackend>(
    model: &Llama<B>,
    adapters: &LoraAdapters<B>,
    examples: &[Example],
    config: &FinetuneConfig,
) -> Result<f64> {
    let mut total = 0.0;
    for batch in examples.chunks(config.batch_size) {
        let loss = answer_loss(model, adapters, batch, config.max_seq_len)?;
        total += f64::from(loss.into_scalar().elem::<f32>()) * batch.len() as f64;
    }
    Ok(total / examples.len() as f64)
}
