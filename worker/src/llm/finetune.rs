//! Instruction tuning of LoRA adapters: the student learns to write the teacher's rationale for
//! a prompt. Only rationale tokens are scored; prompt tokens and padding contribute nothing.

use super::lora::LoraAdapters;
use super::model::Llama;
use anyhow::{Result, ensure};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
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
    let logits = model.forward_adapted(&inputs, Some(adapters))?;
    let [rows, _, vocab] = logits.dims();
    // Position p predicts token p + 1; it counts when token p + 1 belongs to the answer.
    let mut targets = vec![0i64; rows * (len - 1)];
    let mut weights = vec![0f32; rows * (len - 1)];
    for (row, (tokens, answer_start)) in sequences.iter().enumerate() {
        for p in 0..len - 1 {
            if p + 1 < tokens.len() && p + 1 >= *answer_start {
                targets[row * (len - 1) + p] = i64::from(tokens[p + 1]);
                weights[row * (len - 1) + p] = 1.0;
            }
        }
    }
    let counted: f32 = weights.iter().sum();
    ensure!(counted > 0.0, "no answer tokens in the batch");
    let device = model.device();
    let log_probs = burn::tensor::activation::log_softmax(
        logits
            .slice([0..rows, 0..len - 1, 0..vocab])
            .reshape([rows * (len - 1), vocab]),
        1,
    );
    let targets =
        Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [rows * (len - 1), 1]), device);
    let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [rows * (len - 1)]), device);
    let picked = log_probs.gather(1, targets).reshape([rows * (len - 1)]);
    Ok((picked * weights).sum().neg().div_scalar(counted))
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

/// Trains `adapters` on `train`, reporting validation loss on `validation` after each epoch.
pub fn finetune<B: AutodiffBackend>(
    model: &Llama<B>,
    mut adapters: LoraAdapters<B>,
    train: &[Example],
    validation: &[Example],
    config: &FinetuneConfig,
) -> Result<(LoraAdapters<B>, Vec<LossPoint>)> {
    ensure!(!train.is_empty(), "no training examples");
    ensure!(
        config.batch_size > 0 && config.accumulation > 0,
        "batch size and accumulation must be positive"
    );
    let batches_per_epoch = train.len().div_ceil(config.batch_size);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.accumulation);
    let total_steps = steps_per_epoch * config.epochs;
    let mut optimizer = AdamWConfig::new()
        .with_weight_decay(config.weight_decay)
        .with_grad_clipping(Some(GradientClippingConfig::Norm(config.max_grad_norm)))
        .init();
    let mut history = Vec::new();
    let mut step = 0;
    for epoch in 0..config.epochs {
        // The order of each epoch depends only on (seed, epoch): a resumed run sees the same.
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(
            config.seed.wrapping_add(epoch as u64),
        ));
        let batches: Vec<Vec<Example>> = order
            .chunks(config.batch_size)
            .map(|c| c.iter().map(|&i| train[i].clone()).collect())
            .collect();
        for group in batches.chunks(config.accumulation) {
            let mut accumulator = GradientsAccumulator::<LoraAdapters<B>>::new();
            let mut loss_sum = 0.0;
            for batch in group {
                // Each micro-batch's share of the step's mean.
                let loss = answer_loss(model, &adapters, batch, config.max_seq_len)?
                    .div_scalar(group.len() as f32);
                loss_sum += f64::from(loss.clone().into_scalar().elem::<f32>());
                accumulator.accumulate(
                    &adapters,
                    GradientsParams::from_grads(loss.backward(), &adapters),
                );
            }
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
        }
        if !validation.is_empty() {
            let mut total = 0.0;
            for batch in validation.chunks(config.batch_size) {
                let loss = answer_loss(model, &adapters, batch, config.max_seq_len)?;
                total += f64::from(loss.into_scalar().elem::<f32>()) * batch.len() as f64;
            }
            let mean = total / validation.len() as f64;
            if let Some(last) = history.last_mut() {
                last.validation_loss = Some(mean);
            }
            info!(epoch, validation_loss = format!("{mean:.4}"), "epoch done");
        }
    }
    Ok((adapters, history))
}
