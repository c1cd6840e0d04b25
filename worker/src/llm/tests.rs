//! Engine invariants on tiny random models: the cache, padding and rope pairings change nothing
//! about the numbers, and Hugging Face files round-trip.

use super::config::{LlamaConfig, RopePairing};
use super::generate::{FinishReason, Sampling, generate_batch};
use super::model::{Llama, StepInput};
use super::weights::{MemoryWeights, SafetensorsDir, WeightSource, hf_names, permute_for_pairing};
use crate::backend::{Backend, device};
use burn::tensor::{Tensor, TensorData};

pub(crate) fn tiny_config(tied: bool) -> LlamaConfig {
    LlamaConfig {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_position_embeddings: 96,
        tie_word_embeddings: tied,
        hidden_act: "silu".into(),
        head_dim: None,
        bos_token_id: Some(1),
        eos_token_id: None,
        rope_pairing: RopePairing::Half,
    }
}

fn values(t: Tensor<Backend, 3>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn interleaved_pairing_with_permuted_weights_gives_the_same_logits() {
    let config = tiny_config(false);
    let weights = MemoryWeights::random(&config, 3);
    let half = Llama::<Backend>::load(config.clone(), &weights, &device()).unwrap();

    // What llama.cpp's converter does to Q and K.
    let mut permuted = MemoryWeights::default();
    for (name, (values, shape)) in &weights.tensors {
        let heads = if name.ends_with("q_proj.weight") {
            Some(config.num_attention_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(config.kv_heads())
        } else {
            None
        };
        let values = match heads {
            Some(heads) => permute_for_pairing(values, heads, shape[1], false).unwrap(),
            None => values.clone(),
        };
        permuted
            .tensors
            .insert(name.clone(), (values, shape.clone()));
    }
    let interleaved_config = LlamaConfig {
        rope_pairing: RopePairing::Interleaved,
        ..config
    };
    let interleaved = Llama::<Backend>::load(interleaved_config, &permuted, &device()).unwrap();
    let tokens = vec![vec![1, 5, 9, 13, 17, 40, 2]];
    let diff = max_abs_diff(
        &values(half.forward(&tokens).unwrap()),
        &values(interleaved.forward(&tokens).unwrap()),
    );
    assert!(diff < 1e-4, "logits differ by {diff}");

    // Saved in Hugging Face layout, the interleaved model comes back in half pairing.
    let dir = tempfile::tempdir().unwrap();
    interleaved.save_pretrained(dir.path()).unwrap();
    let reloaded = Llama::<Backend>::load(
        LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap(),
        &SafetensorsDir::open(dir.path()).unwrap(),
        &device(),
    )
    .unwrap();
    assert_eq!(reloaded.config.rope_pairing, RopePairing::Half);
    let diff = max_abs_diff(
        &values(half.forward(&tokens).unwrap()),
        &values(reloaded.forward(&tokens).unwrap()),
    );
    assert!(diff < 1e-4, "logits after saving differ by {diff}");

    // The permutation undoes itself.
    let (q, shape) = weights.tensor(&hf_names::Layer(0).q()).unwrap();
    let there = permute_for_pairing(&q, 4, shape[1], false).unwrap();
    assert_ne!(there, q);
    assert_eq!(permute_for_pairing(&there, 4, shape[1], true).unwrap(), q);
}

#[test]
fn cached_greedy_decoding_matches_full_forward_passes() {
    let config = tiny_config(true);
    let model = Llama::<Backend>::load(
        config.clone(),
        &MemoryWeights::random(&config, 5),
        &device(),
    )
    .unwrap();
    let prompt = vec![1u32, 7, 30, 12];
    let sampling = Sampling {
        max_new_tokens: 8,
        ..Sampling::default()
    };
    let generated = generate_batch(&model, std::slice::from_ref(&prompt), &sampling, &[])
        .unwrap()
        .remove(0);
    assert_eq!(generated.finish_reason, FinishReason::Length);
    assert_eq!(generated.tokens.len(), 8);

    // Without a cache: argmax of the last position, one whole pass per token.
    let mut sequence = prompt;
    for _ in 0..8 {
        let logits = values(model.forward(&[sequence.clone()]).unwrap());
        let last = &logits[(sequence.len() - 1) * config.vocab_size..];
        let mut best = 0;
        for (i, &v) in last.iter().enumerate() {
            if v > last[best] {
                best = i;
            }
        }
        sequence.push(best as u32);
    }
    assert_eq!(&sequence[4..], generated.tokens.as_slice());
}

#[test]
fn a_padded_batch_generates_what_each_prompt_generates_alone() {
    let config = tiny_config(true);
    let model = Llama::<Backend>::load(
        config.clone(),
        &MemoryWeights::random(&config, 9),
        &device(),
    )
    .unwrap();
    let prompts = vec![
        vec![1u32, 4],
        vec![1, 9, 22, 35, 50, 61, 3],
        vec![1, 60, 2, 8, 8],
    ];
    let sampling = Sampling {
        max_new_tokens: 10,
        ..Sampling::default()
    };
    let together = generate_batch(&model, &prompts, &sampling, &[]).unwrap();
    for (prompt, batched) in prompts.iter().zip(&together) {
        let alone = generate_batch(&model, std::slice::from_ref(prompt), &sampling, &[]).unwrap();
        assert_eq!(batched.tokens, alone[0].tokens, "prompt {prompt:?}");
        assert_eq!(batched.prompt_tokens, prompt.len());
    }

    // A stop token ends a row early and is not part of the output.
    let stop = together[0].tokens[3];
    let stopped = generate_batch(&model, &prompts[..1], &sampling, &[stop]).unwrap();
    let first_stop = together[0].tokens.iter().position(|&t| t == stop).unwrap();
    assert_eq!(stopped[0].finish_reason, FinishReason::Stop);
    assert_eq!(stopped[0].tokens, together[0].tokens[..first_stop]);

    // Bad input is refused with a reason.
    let err = generate_batch(&model, &[vec![1, 64]], &sampling, &[]).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let long = Sampling {
        max_new_tokens: 200,
        ..Sampling::default()
    };
    let err = generate_batch(&model, &[vec![1, 2]], &long, &[]).unwrap_err();
    assert!(err.to_string().contains("context"), "{err}");
}

/// `MemoryWeights` with every matrix whose rows are whole blocks stored as Q8_0, as a GGUF
/// holds them: `tensor` gives the dequantized values, `blocks` the encoding.
struct Q8Weights {
    /// The dequantized values (no blocks: loaded alone, the tensor path throughout).
    plain: MemoryWeights,
    blocks: std::collections::HashMap<String, Vec<u8>>,
}

impl Q8Weights {
    fn quantize(weights: &MemoryWeights) -> Self {
        use super::quant::{GgmlType, dequantize};
        let mut plain = MemoryWeights::default();
        let mut blocks = std::collections::HashMap::new();
        for (name, (values, shape)) in &weights.tensors {
            if shape.len() != 2 || !shape[1].is_multiple_of(32) {
                plain
                    .tensors
                    .insert(name.clone(), (values.clone(), shape.clone()));
                continue;
            }
            let mut encoded = Vec::new();
            for block in values.chunks_exact(32) {
                let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = half::f16::from_f32(max / 127.0);
                encoded.extend(scale.to_le_bytes());
                let d = scale.to_f32();
                encoded.extend(block.iter().map(|v| {
                    let q = if d == 0.0 { 0.0 } else { (v / d).round() };
                    q.clamp(-127.0, 127.0) as i8 as u8
                }));
            }
            let dequantized = dequantize(GgmlType::Q8_0, &encoded, values.len()).unwrap();
            plain
                .tensors
                .insert(name.clone(), (dequantized, shape.clone()));
            blocks.insert(name.clone(), encoded);
        }
        Self { plain, blocks }
    }
}

impl WeightSource for Q8Weights {
    fn tensor(&self, name: &str) -> anyhow::Result<(Vec<f32>, Vec<usize>)> {
        self.plain.tensor(name)
    }

    fn contains(&self, name: &str) -> bool {
        self.plain.contains(name)
    }

    fn describe(&self) -> String {
        "Q8_0 test weights".into()
    }

    fn blocks(&self, name: &str) -> Option<(super::quant::GgmlType, &[u8], Vec<usize>)> {
        let bytes = self.blocks.get(name)?;
        let shape = self.plain.tensors[name].1.clone();
        Some((super::quant::GgmlType::Q8_0, bytes, shape))
    }
}

/// One sequence's positions `start..start + tokens.len()` as a step after `start` cached ones.
fn causal_step(tokens: &[u32], start: usize) -> StepInput<Backend> {
    let (len, total) = (tokens.len(), start + tokens.len());
    let mut bias = vec![crate::nn::MASKED; len * total];
    for query in 0..len {
        bias[query * total..query * total + start + query + 1].fill(0.0);
    }
    let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    let positions: Vec<i64> = (start..total).map(|p| p as i64).collect();
    StepInput {
        tokens: Tensor::from_data(TensorData::new(ids, [1, len]), &device()),
        positions: Tensor::from_data(TensorData::new(positions, [1, len]), &device()),
        mask_bias: Tensor::from_data(TensorData::new(bias, [1, 1, len, total]), &device()),
    }
}

#[test]
fn host_decode_steps_generate_what_the_tensor_path_generates() {
    // Whole blocks in every row: hidden 32, intermediate 64.
    let config = LlamaConfig {
        intermediate_size: 64,
        ..tiny_config(true)
    };
    let quantized = Q8Weights::quantize(&MemoryWeights::random(&config, 21));
    let host = Llama::<Backend>::load(config.clone(), &quantized, &device()).unwrap();
    let tensors = Llama::<Backend>::load(config.clone(), &quantized.plain, &device()).unwrap();
    assert!(host.decodes_on_host());
    assert!(!tensors.decodes_on_host());

    // Left padding, and more new tokens than the host cache's first capacity (prompt + 64).
    let prompts = vec![vec![1u32, 4], vec![1, 9, 22, 35, 50, 61, 3], vec![1, 60, 2]];
    let sampling = Sampling {
        max_new_tokens: 72,
        ..Sampling::default()
    };
    let on_host = generate_batch(&host, &prompts, &sampling, &[]).unwrap();
    let on_tensors = generate_batch(&tensors, &prompts, &sampling, &[]).unwrap();
    for ((host, tensors), prompt) in on_host.iter().zip(&on_tensors).zip(&prompts) {
        assert_eq!(host.tokens.len(), 72);
        assert_eq!(host.tokens, tensors.tokens, "prompt {prompt:?}");
    }

    // The hidden states of a decode step agree, not just their argmax.
    let sequence = [prompts[1].clone(), on_host[1].tokens[..5].to_vec()].concat();
    let (prefix, next) = sequence.split_at(sequence.len() - 1);
    let decode = |model: &Llama<Backend>| -> Vec<f32> {
        let mut cache = model.new_cache();
        model.step(causal_step(prefix, 0), &mut cache);
        let hidden = model.step(causal_step(next, prefix.len()), &mut cache);
        hidden.into_data().to_vec().unwrap()
    };
    let diff = max_abs_diff(&decode(&host), &decode(&tensors));
    assert!(diff < 1e-4, "decode hidden states differ by {diff}");
}

#[test]
fn seeded_sampling_repeats_and_differs_across_seeds() {
    let config = tiny_config(true);
    let model = Llama::<Backend>::load(
        config.clone(),
        &MemoryWeights::random(&config, 11),
        &device(),
    )
    .unwrap();
    let run = |seed| {
        let sampling = Sampling {
            max_new_tokens: 24,
            // Random tiny models are sharply peaked; a hot temperature makes draws differ.
            temperature: 4.0,
            top_p: 0.95,
            seed,
        };
        generate_batch(&model, &[vec![1, 2, 3]], &sampling, &[])
            .unwrap()
            .remove(0)
            .tokens
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn a_hugging_face_directory_round_trips_with_identical_logits() {
    for tied in [true, false] {
        let config = tiny_config(tied);
        let model = Llama::<Backend>::load(
            config.clone(),
            &MemoryWeights::random(&config, 13),
            &device(),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        model.save_pretrained(dir.path()).unwrap();
        let loaded_config = LlamaConfig::from_hf_json(&dir.path().join("config.json")).unwrap();
        assert_eq!(loaded_config, config);
        let loaded = Llama::<Backend>::load(
            loaded_config,
            &SafetensorsDir::open(dir.path()).unwrap(),
            &device(),
        )
        .unwrap();
        let tokens = vec![vec![1, 2, 3, 40, 41], vec![5, 6]];
        assert_eq!(
            values(model.forward(&tokens).unwrap()),
            values(loaded.forward(&tokens).unwrap())
        );
        assert_eq!(
            SafetensorsDir::open(dir.path())
                .unwrap()
                .contains(hf_names::HEAD),
            !tied
        );
    }
}

#[test]
fn unsupported_checkpoints_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "gpt_neox", "vocab_size": 8}"#).unwrap();
    let err = LlamaConfig::from_hf_json(&path).unwrap_err().to_string();
    assert!(
        err.contains("gpt_neox") && err.contains("config.json"),
        "{err}"
    );

    let llama = |rope: &str| {
        format!(
            r#"{{"vocab_size": 8, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                "num_attention_heads": 2, {rope}}}"#
        )
    };
    std::fs::write(
        &path,
        llama(r#""rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}"#),
    )
    .unwrap();
    assert_eq!(
        LlamaConfig::from_hf_json(&path).unwrap().rope_theta,
        500000.0,
        "transformers 5 keeps rope_theta in rope_parameters"
    );
    std::fs::write(
        &path,
        llama(r#""rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#),
    )
    .unwrap();
    let err = LlamaConfig::from_hf_json(&path).unwrap_err().to_string();
    assert!(err.contains("llama3"), "{err}");

    let config = tiny_config(true);
    let mut weights = MemoryWeights::random(&config, 1);
    weights.tensors.remove(&hf_names::Layer(1).up());
    let err = Llama::<Backend>::load(config, &weights, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}

mod lora {
    use super::*;
    use crate::llm::lora::{LoraAdapters, LoraConfig, Target};
    use burn::backend::Autodiff;
    use burn::module::Param;
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    use burn::tensor::{Int, TensorData};

    type Train = Autodiff<Backend>;

    fn config() -> LoraConfig {
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::Down],
        }
    }

    /// Adapters with a non-zero B, so they change the output; the same on every call.
    fn random_adapters<B: burn::tensor::backend::Backend>(model: &Llama<B>) -> LoraAdapters<B> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(22);
        let mut adapters = LoraAdapters::init(model, &config(), 21, model.device()).unwrap();
        for layer in &mut adapters.layers {
            for pair in [&mut layer.q, &mut layer.v, &mut layer.down]
                .into_iter()
                .flatten()
            {
                let shape = pair.b.val().dims();
                let values: Vec<f32> = (0..shape[0] * shape[1])
                    .map(|_| rng.random_range(-0.3..0.3))
                    .collect();
                pair.b = Param::from_tensor(Tensor::from_data(
                    TensorData::new(values, shape),
                    model.device(),
                ));
            }
        }
        adapters
    }

    #[test]
    fn fresh_adapters_change_nothing_and_merging_equals_adding() {
        let config = tiny_config(true);
        let mut model = Llama::<Backend>::load(
            config.clone(),
            &MemoryWeights::random(&config, 2),
            &device(),
        )
        .unwrap();
        let tokens = vec![vec![1, 5, 9, 30], vec![7, 8]];
        let base = values(model.forward(&tokens).unwrap());
        let fresh = LoraAdapters::init(&model, &self::config(), 0, &device()).unwrap();
        assert_eq!(
            values(model.forward_adapted(&tokens, Some(&fresh)).unwrap()),
            base
        );

        let adapters = random_adapters(&model);
        let unmerged = values(model.forward_adapted(&tokens, Some(&adapters)).unwrap());
        assert!(
            max_abs_diff(&unmerged, &base) > 1e-3,
            "the adapters do nothing"
        );
        model.merge(&adapters).unwrap();
        let merged = values(model.forward(&tokens).unwrap());
        let diff = max_abs_diff(&merged, &unmerged);
        assert!(diff < 1e-4, "merged and unmerged logits differ by {diff}");
    }

    #[test]
    fn a_merged_quantized_model_still_decodes_on_the_host() {
        let config = LlamaConfig {
            intermediate_size: 64,
            ..tiny_config(true)
        };
        let quantized = super::Q8Weights::quantize(&MemoryWeights::random(&config, 23));
        let mut host = Llama::<Backend>::load(config.clone(), &quantized, &device()).unwrap();
        let mut tensors =
            Llama::<Backend>::load(config.clone(), &quantized.plain, &device()).unwrap();
        let adapters = random_adapters(&host);
        host.merge(&adapters).unwrap();
        tensors.merge(&adapters).unwrap();
        assert!(host.decodes_on_host());
        let prompts = vec![vec![1u32, 5, 9], vec![7, 8, 30, 31, 2]];
        let sampling = Sampling {
            max_new_tokens: 16,
            ..Sampling::default()
        };
        let on_host = generate_batch(&host, &prompts, &sampling, &[]).unwrap();
        let on_tensors = generate_batch(&tensors, &prompts, &sampling, &[]).unwrap();
        for (host, tensors) in on_host.iter().zip(&on_tensors) {
            assert_eq!(host.tokens, tensors.tokens);
        }
    }

    /// Summed log-probability of fixed next tokens: a smooth scalar of the adapters.
    fn objective<B: burn::tensor::backend::Backend>(
        model: &Llama<B>,
        adapters: &LoraAdapters<B>,
    ) -> Tensor<B, 1> {
        let tokens = vec![vec![1u32, 5, 9, 30, 2]];
        let logits = model.forward_adapted(&tokens, Some(adapters)).unwrap();
        let [_, len, vocab] = logits.dims();
        let log_probs = burn::tensor::activation::log_softmax(logits.reshape([len, vocab]), 1);
        let targets = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![5i64, 9, 30, 2, 1], [len, 1]),
            model.device(),
        );
        log_probs.gather(1, targets).sum()
    }

    #[test]
    fn adapter_gradients_agree_with_finite_differences() {
        let config = tiny_config(false);
        let model = Llama::<Train>::load(
            config.clone(),
            &MemoryWeights::random(&config, 4),
            &device(),
        )
        .unwrap();
        let adapters = random_adapters(&model);
        let grads = objective(&model, &adapters).backward();
        let layer = &adapters.layers[1];
        let checks = [
            (&layer.q.as_ref().unwrap().a, "q.A"),
            (&layer.v.as_ref().unwrap().b, "v.B"),
            (&layer.down.as_ref().unwrap().a, "down.A"),
        ];
        for (param, name) in checks {
            let analytic: Vec<f32> = param
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap();
            let values: Vec<f32> = param.val().inner().into_data().to_vec().unwrap();
            let shape = param.val().dims();
            for index in [0, 3, values.len() / 2, values.len() - 1] {
                let at = |delta: f32| {
                    let mut moved = values.clone();
                    moved[index] += delta;
                    let mut probe = random_adapters(&model);
                    let tensor =
                        Tensor::<Train, 2>::from_data(TensorData::new(moved, shape), &device());
                    let target = &mut probe.layers[1];
                    match name {
                        "q.A" => target.q.as_mut().unwrap().a = Param::from_tensor(tensor),
                        "v.B" => target.v.as_mut().unwrap().b = Param::from_tensor(tensor),
                        _ => target.down.as_mut().unwrap().a = Param::from_tensor(tensor),
                    }
                    objective(&model, &probe).into_scalar() as f64
                };
                let eps = 1e-2;
                let numeric = (at(eps as f32) - at(-eps as f32)) / (2.0 * eps);
                let analytic = analytic[index] as f64;
                assert!(
                    (numeric - analytic).abs() <= 2e-2 * analytic.abs().max(0.05),
                    "{name}[{index}]: autodiff {analytic}, finite differences {numeric}"
                );
            }
        }
    }

    #[test]
    fn training_moves_adapters_and_leaves_base_weights_bit_identical() {
        let config = tiny_config(true);
        let model = Llama::<Train>::load(
            config.clone(),
            &MemoryWeights::random(&config, 6),
            &device(),
        )
        .unwrap();
        let before: Vec<f32> = model.blocks[0]
            .q
            .weight
            .clone()
            .into_data()
            .to_vec()
            .unwrap();
        let embedding_before: Vec<f32> = model.embedding.clone().into_data().to_vec().unwrap();
        let mut adapters = random_adapters(&model);
        let start = objective(&model, &adapters).into_scalar();
        let mut optimizer = AdamWConfig::new().init();
        for _ in 0..20 {
            // Maximise the log-probability.
            let loss = objective(&model, &adapters).neg();
            let grads = GradientsParams::from_grads(loss.backward(), &adapters);
            adapters = optimizer.step(1e-2, adapters, grads);
        }
        let end = objective(&model, &adapters).into_scalar();
        assert!(
            end > start + 0.5,
            "log-probability went from {start} to {end}"
        );
        let after: Vec<f32> = model.blocks[0]
            .q
            .weight
            .clone()
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(before, after);
        assert_eq!(
            embedding_before,
            model.embedding.clone().into_data().to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn peft_layout_round_trips() {
        let config = tiny_config(true);
        let model = Llama::<Backend>::load(
            config.clone(),
            &MemoryWeights::random(&config, 8),
            &device(),
        )
        .unwrap();
        let adapters = random_adapters(&model);
        let dir = tempfile::tempdir().unwrap();
        adapters
            .save_peft(dir.path(), &self::config(), "tiny")
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(json["r"], 4);
        assert_eq!(
            json["target_modules"],
            serde_json::json!(["q_proj", "v_proj", "down_proj"])
        );
        let (loaded, loaded_config) =
            LoraAdapters::load_peft(dir.path(), &model, &device()).unwrap();
        assert_eq!(loaded_config, self::config());
        let tokens = vec![vec![3, 1, 4, 1, 5]];
        // Equal up to summation order (the loaded matrices are transposed views).
        let diff = max_abs_diff(
            &values(model.forward_adapted(&tokens, Some(&adapters)).unwrap()),
            &values(model.forward_adapted(&tokens, Some(&loaded)).unwrap()),
        );
        assert!(
            diff < 1e-4,
            "logits differ by {diff} after a PEFT round trip"
        );
        let err = Target::parse("qkv").unwrap_err().to_string();
        assert!(err.contains("qkv"), "{err}");
    }
}

mod finetune {
    use super::*;
    use crate::llm::finetune::{
        Checkpoint, Example, FinetuneConfig, TrainingHooks, answer_loss, finetune, finetune_with,
        learning_rate_at,
    };
    use crate::llm::lora::{LoraAdapters, LoraConfig, Target};
    use burn::backend::Autodiff;
    use burn::tensor::ElementConversion;

    type Train = Autodiff<Backend>;

    fn model() -> Llama<Train> {
        let config = tiny_config(true);
        Llama::<Train>::load(
            config.clone(),
            &MemoryWeights::random(&config, 12),
            &device(),
        )
        .unwrap()
    }

    fn adapters(model: &Llama<Train>) -> LoraAdapters<Train> {
        let config = LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        };
        LoraAdapters::init(model, &config, 3, &device()).unwrap()
    }

    #[test]
    fn prompt_tokens_contribute_nothing_to_the_loss() {
        let model = model();
        let adapters = adapters(&model);
        let loss = |prompt: Vec<u32>| {
            let example = Example {
                prompt,
                answer: vec![40, 41, 42, 2],
            };
            answer_loss(&model, &adapters, &[example], 64)
                .unwrap()
                .into_scalar()
                .elem::<f32>()
        };
        // The answer's loss depends on the prompt as context...
        let a = loss(vec![1, 5, 6, 7]);
        let b = loss(vec![1, 9, 9, 9]);
        assert_ne!(a, b);

        // ...but the prompt's own next-token predictions are not scored: the loss equals the
        // mean cross-entropy of the answer positions, computed by hand from the logits.
        let tokens = vec![1u32, 5, 6, 7, 40, 41, 42, 2];
        let logits: Vec<f32> = model
            .forward_adapted(std::slice::from_ref(&tokens), Some(&adapters))
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let vocab = 64;
        let mut total = 0.0f64;
        for p in 3..7 {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let log_sum = row
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            total += log_sum - row[tokens[p + 1] as usize] as f64;
        }
        let by_hand = total / 4.0;
        assert!(
            (a as f64 - by_hand).abs() < 1e-4,
            "loss {a}, by hand {by_hand}"
        );
    }

    #[test]
    fn a_tiny_model_overfits_eight_examples() {
        let model = model();
        let examples: Vec<Example> = (0..8u32)
            .map(|i| Example {
                prompt: vec![1, 10 + i, 3],
                answer: vec![20 + (i * 5) % 40, 30 + (i * 3) % 30, 2],
            })
            .collect();
        let config = FinetuneConfig {
            learning_rate: 2e-2,
            epochs: 60,
            batch_size: 4,
            accumulation: 2,
            warmup_steps: 5,
            seed: 7,
            ..FinetuneConfig::default()
        };
        let (trained, history) =
            finetune(&model, adapters(&model), &examples, &examples[..2], &config).unwrap();
        let first = history.first().unwrap().train_loss;
        let loss = answer_loss(&model, &trained, &examples, 64)
            .unwrap()
            .into_scalar()
            .elem::<f32>();
        assert!(
            loss < 0.1,
            "answer loss {loss} after training (started at {first})"
        );
        assert_eq!(
            history.len(),
            60,
            "one optimizer step per two batches of four"
        );
        assert!(history.last().unwrap().validation_loss.unwrap() < 0.1);
    }

    /// Every adapter value, for exact comparisons.
    fn adapter_values(adapters: &LoraAdapters<Train>) -> Vec<f32> {
        let mut values = Vec::new();
        for layer in &adapters.layers {
            for target in Target::ALL {
                if let Some(pair) = layer.get(target) {
                    for t in [pair.a.val(), pair.b.val()] {
                        values.extend(t.into_data().to_vec::<f32>().unwrap());
                    }
                }
            }
        }
        values
    }

    fn resume_examples() -> Vec<Example> {
        (0..10u32)
            .map(|i| Example {
                prompt: vec![1, 10 + i, 3, 4 + i % 3],
                answer: vec![20 + (i * 7) % 40, 30 + i, 2],
            })
            .collect()
    }

    fn resume_config() -> FinetuneConfig {
        FinetuneConfig {
            learning_rate: 1e-2,
            epochs: 3,
            batch_size: 2,
            accumulation: 2,
            warmup_steps: 2,
            seed: 11,
            ..FinetuneConfig::default()
        }
    }

    fn dropout_adapters(model: &Llama<Train>) -> LoraAdapters<Train> {
        let mut adapters = adapters(model);
        adapters.dropout = 0.1;
        adapters
    }

    #[test]
    fn a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_same_adapters() {
        let model = model();
        let (examples, config) = (resume_examples(), resume_config());
        let (train, validation) = examples.split_at(8);
        // 8 examples in batches of 2, two batches a step: 2 steps an epoch, 6 in all.
        let (uninterrupted, full_history) =
            finetune(&model, dropout_adapters(&model), train, validation, &config).unwrap();
        assert_eq!(full_history.len(), 6);

        // A run "killed" right after its checkpoint at step 3 (mid-epoch: step 3 of 2-step
        // epochs), as a process dies after writing it.
        let mut saved: Option<Checkpoint> = None;
        let killed = finetune_with(
            &model,
            dropout_adapters(&model),
            train,
            validation,
            &config,
            TrainingHooks {
                checkpoint_every: 3,
                on_checkpoint: Box::new(|c| {
                    if c.step == 3 {
                        saved = Some(Checkpoint::from_bytes(&c.to_bytes())?);
                        anyhow::bail!("killed");
                    }
                    Ok(())
                }),
                ..TrainingHooks::default()
            },
        );
        assert!(killed.is_err());
        let checkpoint = saved.expect("a checkpoint at step 3");
        assert_eq!(checkpoint.step, 3);

        // The restarted task begins from fresh adapters and loads the checkpoint.
        let mut steps_seen = Vec::new();
        let (resumed, history) = finetune_with(
            &model,
            dropout_adapters(&model),
            train,
            validation,
            &config,
            TrainingHooks {
                resume: Some(checkpoint),
                on_step: Box::new(|point, _| steps_seen.push(point.step)),
                ..TrainingHooks::default()
            },
        )
        .unwrap();
        assert_eq!(
            steps_seen,
            vec![3, 4, 5],
            "only the steps after the checkpoint run"
        );
        assert_eq!(history, full_history);
        assert_eq!(adapter_values(&resumed), adapter_values(&uninterrupted));
    }

    #[test]
    fn checkpoints_of_other_runs_and_damaged_checkpoints_are_refused() {
        let model = model();
        let (examples, config) = (resume_examples(), resume_config());
        let mut last: Option<Checkpoint> = None;
        finetune_with(
            &model,
            adapters(&model),
            &examples,
            &[],
            &config,
            TrainingHooks {
                on_checkpoint: Box::new(|c| {
                    last = Some(c.clone());
                    Ok(())
                }),
                ..TrainingHooks::default()
            },
        )
        .unwrap();
        let checkpoint = last.unwrap();
        let bytes = checkpoint.to_bytes();
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 1;
        let err = Checkpoint::from_bytes(&damaged).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        let err = Checkpoint::from_bytes(&bytes[..bytes.len() - 5])
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");

        let other = FinetuneConfig {
            seed: 12,
            ..config.clone()
        };
        let err = finetune_with(
            &model,
            adapters(&model),
            &examples,
            &[],
            &other,
            TrainingHooks {
                resume: Some(checkpoint),
                ..TrainingHooks::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("another training run"), "{err}");
    }

    #[test]
    fn lora_dropout_applies_while_training_only() {
        let model = model();
        let mut adapters = adapters(&model);
        // Non-zero B so the adapters change the output at all.
        for layer in &mut adapters.layers {
            if let Some(pair) = layer.q.as_mut() {
                let b = pair.b.val().ones_like().mul_scalar(0.05);
                pair.b = burn::module::Param::from_tensor(b);
            }
        }
        adapters.dropout = 0.5;
        let tokens = vec![vec![1u32, 5, 6, 7, 8]];
        let logits = |a: &LoraAdapters<Train>| -> Vec<f32> {
            model
                .forward_adapted(&tokens, Some(a))
                .unwrap()
                .into_data()
                .to_vec()
                .unwrap()
        };
        let evaluation = logits(&adapters);
        assert_eq!(evaluation, logits(&adapters), "no dropout outside training");
        adapters.training = Some(crate::llm::lora::Dropout::new(0.5, 9));
        let dropped = logits(&adapters);
        assert_ne!(
            dropped, evaluation,
            "dropout changes the training forward pass"
        );
    }

    #[test]
    fn warm_up_then_cosine_decay() {
        let config = FinetuneConfig {
            learning_rate: 1.0,
            warmup_steps: 4,
            ..FinetuneConfig::default()
        };
        assert_eq!(learning_rate_at(&config, 0, 14), 0.25);
        assert_eq!(learning_rate_at(&config, 3, 14), 1.0);
        assert_eq!(learning_rate_at(&config, 4, 14), 1.0);
        assert!((learning_rate_at(&config, 9, 14) - 0.5).abs() < 1e-9);
        assert!(learning_rate_at(&config, 14, 14).abs() < 1e-9);
    }
}
