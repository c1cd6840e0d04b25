//! Batched generation with a KV cache: prompts of different lengths are left-padded into one
//! batch, prefilled in one pass, then decoded one token per step until every row stops.

use super::model::{Llama, StepInput};
use crate::nn::MASKED;
use anyhow::{Result, ensure};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How tokens are chosen. Temperature 0 is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    pub max_new_tokens: usize,
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Seeds each prompt's sampler (with the prompt's index), so a batch is reproducible.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.temperature.is_finite() && self.temperature >= 0.0,
            "temperature must be 0 (greedy) or positive, got {}",
            self.temperature
        );
        ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "top_p must be in (0, 1], got {}",
            self.top_p
        );
        Ok(())
    }
}

/// Why generation stopped for one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was produced (not included in the output).
    Stop,
    /// `max_new_tokens` was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// The tokens generated for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish_reason: FinishReason,
}

/// Where a batch's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// The prompt pass, up to the first new token's logits.
    pub prefill_seconds: f64,
    /// Every later step.
    pub decode_seconds: f64,
    /// Decode steps run (each produces one token per row).
    pub decode_steps: usize,
}

/// Continues every prompt of `prompts` (token ids) in one batch.
pub fn generate_batch<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    stop_tokens: &[u32],
) -> Result<Vec<Generated>> {
    generate_batch_timed(model, prompts, sampling, stop_tokens).map(|(generated, _)| generated)
}

/// [`generate_batch`], also saying how long the prefill and the decode steps took.
pub fn generate_batch_timed<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    sampling: &Sampling,
    stop_tokens: &[u32],
) -> Result<(Vec<Generated>, Timings)> {
    sampling.validate()?;
    let batch = prompts.len();
    let mut timings = Timings::default();
    if batch == 0 {
        return Ok((Vec::new(), timings));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    for (i, prompt) in prompts.iter().enumerate() {
        ensure!(!prompt.is_empty(), "prompt {i} has no tokens");
        for &token in prompt {
            model.check_token(token)?;
        }
    }
    let limit = model.config.max_position_embeddings;
    ensure!(
        longest + sampling.max_new_tokens <= limit,
        "a prompt of {longest} tokens plus {} new tokens exceeds the model's context of {limit}",
        sampling.max_new_tokens
    );
    let device = model.device();
    let padding: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();

    // Prefill: left-padded rows; a real position attends to real positions up to itself.
    let mut tokens = Vec::with_capacity(batch * longest);
    let mut positions = Vec::with_capacity(batch * longest);
    let mut bias = vec![MASKED; batch * longest * longest];
    for (row, prompt) in prompts.iter().enumerate() {
        let pad = padding[row];
        tokens.extend(std::iter::repeat_n(0i64, pad));
        tokens.extend(prompt.iter().map(|&t| i64::from(t)));
        positions.extend((0..longest).map(|col| col.saturating_sub(pad) as i64));
        for query in 0..longest {
            let first = if query < pad { query } else { pad };
            for key in first..=query {
                bias[(row * longest + query) * longest + key] = 0.0;
            }
        }
    }
    let started = std::time::Instant::now();
    let mut cache = model.new_cache();
    let hidden = model.step(
        StepInput {
            tokens: Tensor::from_data(TensorData::new(tokens, [batch, longest]), device),
            positions: Tensor::from_data(TensorData::new(positions, [batch, longest]), device),
            mask_bias: Tensor::from_data(
                TensorData::new(bias, [batch, 1, longest, longest]),
                device,
            ),
        },
        &mut cache,
    );
    let hidden_size = model.config.hidden_size;
    let last = hidden
        .reshape([batch, longest, hidden_size])
        .slice([0..batch, longest - 1..longest, 0..hidden_size])
        .reshape([batch, hidden_size]);
    let logits = model.logits(last);
    // Reading the logits waits for the backend (asynchronous on GPU).
    let mut values: Vec<f32> = read_logits(logits)?;
    timings.prefill_seconds = started.elapsed().as_secs_f64();
    let decode_started = std::time::Instant::now();

    let mut samplers: Vec<ChaCha8Rng> = (0..batch as u64)
        .map(|row| {
            ChaCha8Rng::seed_from_u64(
                sampling
                    .seed
                    .wrapping_add(row.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            )
        })
        .collect();
    let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); batch];
    let mut finished: Vec<Option<FinishReason>> = vec![None; batch];
    if sampling.max_new_tokens == 0 {
        finished.fill(Some(FinishReason::Length));
    }
    let vocab = model.config.vocab_size;
    let mut last_tokens = vec![0i64; batch];
    while finished.iter().any(Option::is_none) {
        for row in 0..batch {
            if finished[row].is_some() {
                continue;
            }
            let token = choose(
                &values[row * vocab..(row + 1) * vocab],
                sampling,
                &mut samplers[row],
            );
            last_tokens[row] = i64::from(token);
            if stop_tokens.contains(&token) {
                finished[row] = Some(FinishReason::Stop);
                continue;
            }
            outputs[row].push(token);
            if outputs[row].len() >= sampling.max_new_tokens {
                finished[row] = Some(FinishReason::Length);
            }
        }
        if finished.iter().all(Option::is_some) {
            break;
        }
        // Decode one position for every row (finished rows too: cheaper than reshaping the
        // cache, and their outputs are ignored).
        let seen = cache.len();
        let total = seen + 1;
        let mut bias = vec![MASKED; batch * total];
        let mut positions = Vec::with_capacity(batch);
        for row in 0..batch {
            bias[row * total + padding[row]..(row + 1) * total].fill(0.0);
            positions.push((seen - padding[row]) as i64);
        }
        let hidden = model.step(
            StepInput {
                tokens: Tensor::<B, 2, Int>::from_data(
                    TensorData::new(last_tokens.clone(), [batch, 1]),
                    device,
                ),
                positions: Tensor::from_data(TensorData::new(positions, [batch, 1]), device),
                mask_bias: Tensor::from_data(TensorData::new(bias, [batch, 1, 1, total]), device),
            },
            &mut cache,
        );
        values = read_logits(model.logits(hidden))?;
        timings.decode_steps += 1;
    }
    timings.decode_seconds = decode_started.elapsed().as_secs_f64();
    let generated = outputs
        .into_iter()
        .zip(finished)
        .zip(prompts)
        .map(|((tokens, finish), prompt)| Generated {
            tokens,
            prompt_tokens: prompt.len(),
            finish_reason: finish.unwrap_or(FinishReason::Length),
        })
        .collect();
    Ok((generated, timings))
}

fn read_logits<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<f32>> {
    logits
        .into_data()
        .to_vec()
        .map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))
}

/// Picks the next token from one row of logits.
fn choose(logits: &[f32], sampling: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    if sampling.temperature == 0.0 {
        // First maximum wins, as `torch.argmax` does.
        let mut best = 0;
        for (i, &value) in logits.iter().enumerate() {
            if value > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let temperature = f64::from(sampling.temperature);
    let mut candidates: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            (
                i as u32,
                ((f64::from(v) - f64::from(max)) / temperature).exp(),
            )
        })
        .collect();
    let total: f64 = candidates.iter().map(|&(_, p)| p).sum();
    candidates.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0.0;
    let mut cut = candidates.len();
    for (i, &(_, p)) in candidates.iter().enumerate() {
        kept += p / total;
        if kept >= f64::from(sampling.top_p) {
            cut = i + 1;
            break;
        }
    }
    candidates.truncate(cut);
    let mass: f64 = candidates.iter().map(|&(_, p)| p).sum();
    let mut draw = rng.random::<f64>() * mass;
    for &(token, p) in &candidates {
        if draw < p {
            return token;
        }
        draw -= p;
    }
    candidates.last().map_or(0, |&(token, _)| token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let sampling = Sampling::default();
        assert_eq!(choose(&[0.1, 3.0, 3.0, -1.0], &sampling, &mut rng), 1);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus_and_seeds_repeat() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        let sampling = Sampling {
            temperature: 1.0,
            top_p: 0.5,
            ..Sampling::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        // The first token alone holds more than half the mass.
        assert!((0..200).all(|_| choose(&logits, &sampling, &mut rng) == 0));
        let wide = Sampling {
            top_p: 1.0,
            ..sampling.clone()
        };
        let draws = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..64)
                .map(|_| choose(&logits, &wide, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert!(draws(7).contains(&1) && draws(7).contains(&0));
        assert!(!draws(7).contains(&2));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let bad = Sampling {
            top_p: 0.0,
            ..Sampling::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        let bad = Sampling {
            temperature: -1.0,
            ..Sampling::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
    }
}
