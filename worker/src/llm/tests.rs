//! Engine invariants on tiny random models: the cache, padding and rope pairings change nothing
//! about the numbers, and Hugging Face files round-trip.

use super::config::{LlamaConfig, RopePairing};
use super::generate::{FinishReason, Sampling, generate_batch};
use super::model::Llama;
use super::weights::{MemoryWeights, SafetensorsDir, WeightSource, hf_names, permute_for_pairing};
use crate::backend::{Backend, device};
use burn::tensor::Tensor;

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

    let config = tiny_config(true);
    let mut weights = MemoryWeights::random(&config, 1);
    weights.tensors.remove(&hf_names::Layer(1).up());
    let err = Llama::<Backend>::load(config, &weights, &device())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}
