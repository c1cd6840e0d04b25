//! The LLM engine against independent references: gguf-py's dequantization of every ggml type
//! slim reads, and Hugging Face transformers running the real SmolLM2-135M-Instruct GGUF
//! (fixtures made by scripts/llm_reference.py; the model comes from `make models`).

use serde_json::Value;
use slim_worker::backend::{Backend, device};
use slim_worker::llm::chat::Message;
use slim_worker::llm::generate::{Sampling, generate_batch};
use slim_worker::llm::quant::{GgmlType, dequantize};
use slim_worker::llm::{Engine, default_model_path};
use std::path::PathBuf;

/// Largest difference allowed between slim's and transformers' last-position logits. Both run
/// in f32 from the same dequantized weights; they differ only in summation order, and SmolLM2's
/// logits are around 10 to 30 in size.
const LOGIT_TOLERANCE: f64 = 0.02;

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn every_ggml_type_dequantizes_like_gguf_py() {
    let reference = fixture("ggml_quant_reference.json");
    let cases = reference["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for case in cases {
        let name = case["type"].as_str().unwrap();
        let ggml_type = match name {
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_K" => GgmlType::Q4K,
            "Q6_K" => GgmlType::Q6K,
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::Bf16,
            other => panic!("unexpected type {other} in the fixture"),
        };
        let bytes = hex::decode(case["hex"].as_str().unwrap()).unwrap();
        let expected: Vec<f32> = case["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let got = dequantize(ggml_type, &bytes, expected.len()).unwrap();
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{name} value {i}: slim {g}, gguf-py {e}"
            );
        }
        seen.push(name);
    }
    seen.dedup();
    assert_eq!(seen.len(), 7, "types in the fixture: {seen:?}");
}

fn smollm2() -> Engine<Backend> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(default_model_path());
    assert!(
        path.exists(),
        "{} is missing: run `make models` first",
        path.display()
    );
    Engine::load(&path, &device()).unwrap()
}

#[test]
fn smollm2_matches_transformers_on_tokens_logits_and_greedy_text() {
    let reference = fixture("smollm2_reference.json");
    let engine = smollm2();

    for case in reference["tokens"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(
            engine.tokenizer.encode(text).unwrap(),
            expected,
            "token ids of {text:?}"
        );
    }

    let probe_ids: Vec<usize> = serde_json::from_value(reference["probe_ids"].clone()).unwrap();
    let mut worst = 0f64;
    for prompt in reference["prompts"].as_array().unwrap() {
        let text = prompt["text"].as_str().unwrap();
        if prompt["kind"] == "chat" {
            let messages: Vec<Message> =
                serde_json::from_value(prompt["messages"].clone()).unwrap();
            assert_eq!(
                engine.chat.render(&messages, true).unwrap(),
                text,
                "chat rendering"
            );
        }
        let ids: Vec<u32> = serde_json::from_value(prompt["ids"].clone()).unwrap();
        assert_eq!(
            engine.tokenizer.encode(text).unwrap(),
            ids,
            "prompt ids of {text:?}"
        );

        let logits: Vec<f32> = engine
            .model
            .forward(std::slice::from_ref(&ids))
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let vocab = engine.model.config.vocab_size;
        let last = &logits[(ids.len() - 1) * vocab..];
        let top_ids: Vec<usize> = serde_json::from_value(prompt["top_ids"].clone()).unwrap();
        let top: Vec<f64> = serde_json::from_value(prompt["top_logits"].clone()).unwrap();
        let probes: Vec<f64> = serde_json::from_value(prompt["probe_logits"].clone()).unwrap();
        for (&id, &expected) in top_ids
            .iter()
            .zip(&top)
            .chain(probe_ids.iter().zip(&probes))
        {
            let diff = (f64::from(last[id]) - expected).abs();
            worst = worst.max(diff);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{text:?}: logit of token {id} is {} in slim, {expected} in transformers",
                last[id]
            );
        }

        let expected: Vec<u32> = serde_json::from_value(prompt["greedy"].clone()).unwrap();
        let sampling = Sampling {
            max_new_tokens: expected.len(),
            ..Sampling::default()
        };
        let generated = generate_batch(&engine.model, &[ids], &sampling, &[])
            .unwrap()
            .remove(0);
        assert_eq!(
            engine.tokenizer.decode(&generated.tokens).unwrap(),
            engine.tokenizer.decode(&expected).unwrap(),
            "greedy continuation of {text:?}"
        );
        assert_eq!(generated.tokens, expected);
    }
    eprintln!("largest logit difference to transformers: {worst:.5}");
}

#[test]
fn smollm2_answers_a_chat_and_stops_at_the_end_of_its_turn() {
    let engine = smollm2();
    let prompt = engine
        .prompt_ids(&slim_worker::llm::Prompt::Chat(vec![Message::new(
            "user",
            "What is the capital of France?",
        )]))
        .unwrap();
    let sampling = Sampling {
        max_new_tokens: 24,
        ..Sampling::default()
    };
    let completion = engine
        .generate(&[prompt.clone(), prompt], &sampling, 2)
        .unwrap();
    assert!(
        completion[0].text.contains("Paris"),
        "{:?}",
        completion[0].text
    );
    assert_eq!(completion[0].finish_reason.as_str(), "stop");
    assert_eq!(completion[0], completion[1]);
    assert!(!completion[0].text.contains("<|im_end|>"));
}

/// The tiny Llama and PEFT adapter of scripts/peft_reference.py.
mod peft {
    use super::*;
    use slim_worker::llm::config::LlamaConfig;
    use slim_worker::llm::lora::{LoraAdapters, LoraConfig, Target};
    use slim_worker::llm::model::Llama;
    use slim_worker::llm::weights::SafetensorsDir;
    use std::path::Path;

    /// f32 on both sides over a 2-layer model: the only difference is summation order.
    const TOLERANCE: f32 = 1e-4;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/peft_tiny")
    }

    fn base() -> Llama<Backend> {
        let base = dir().join("base");
        let config = LlamaConfig::from_hf_json(&base.join("config.json")).unwrap();
        Llama::load(config, &SafetensorsDir::open(&base).unwrap(), &device()).unwrap()
    }

    fn logits(
        model: &Llama<Backend>,
        ids: &[u32],
        adapters: Option<&LoraAdapters<Backend>>,
    ) -> Vec<f32> {
        model
            .forward_adapted(&[ids.to_vec()], adapters)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap()
    }

    fn close(name: &str, got: &[f32], want: &Value) {
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{name}: logit count");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < TOLERANCE, "{name}: max |slim - torch| = {worst}");
    }

    fn input_ids(reference: &Value) -> Vec<u32> {
        reference["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }

    #[test]
    fn an_adapter_saved_by_peft_gives_peft_logits_in_slim() {
        let reference = fixture("peft_tiny/reference.json");
        let ids = input_ids(&reference);
        let mut model = base();
        close(
            "base",
            &logits(&model, &ids, None),
            &reference["base_logits"],
        );
        let (adapters, config) =
            LoraAdapters::load_peft(&dir().join("adapter"), &model, &device()).unwrap();
        assert_eq!(config.rank, 4);
        let mut targets = config.targets.clone();
        targets.sort_by_key(|t| Target::ALL.iter().position(|a| a == t));
        assert_eq!(targets, Target::ALL.to_vec());
        close(
            "adapted",
            &logits(&model, &ids, Some(&adapters)),
            &reference["adapted_logits"],
        );
        model.merge(&adapters).unwrap();
        close(
            "merged",
            &logits(&model, &ids, None),
            &reference["merged_logits"],
        );
    }

    /// Exports an adapter with slim for `scripts/peft_reference.py check` (run by hand):
    /// `{CARGO_TARGET_TMPDIR}/peft_export/{adapter,expected.json}` beside the fixture's base.
    #[test]
    fn slim_exports_a_peft_adapter_that_round_trips() {
        let model = base();
        let config = LoraConfig {
            rank: 2,
            alpha: 4.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::Down],
        };
        let mut adapters = LoraAdapters::init(&model, &config, 5, &device()).unwrap();
        // Non-zero B, or the adapter would be a no-op and prove nothing.
        for layer in &mut adapters.layers {
            for pair in [&mut layer.q, &mut layer.v, &mut layer.down]
                .into_iter()
                .flatten()
            {
                let b = pair.b.val();
                pair.b = burn::module::Param::from_tensor(
                    b.random_like(burn::tensor::Distribution::Normal(0.0, 0.3)),
                );
            }
        }
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("peft_export");
        let adapter_dir = out.join("adapter");
        adapters
            .save_peft(&adapter_dir, &config, "peft_tiny/base")
            .unwrap();
        let ids: Vec<u32> = vec![1, 17, 42, 99, 3, 64, 5, 120];
        let expected = logits(&model, &ids, Some(&adapters));
        assert!(
            expected != logits(&model, &ids, None),
            "the adapter changes the logits"
        );

        let (loaded, loaded_config) =
            LoraAdapters::load_peft(&adapter_dir, &model, &device()).unwrap();
        assert_eq!(loaded_config, config);
        let worst = logits(&model, &ids, Some(&loaded))
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "reloaded adapter logits differ by {worst}");
        let rows: Vec<&[f32]> = expected.chunks(model.config.vocab_size).collect();
        std::fs::write(
            out.join("expected.json"),
            serde_json::json!({ "input_ids": ids, "logits": rows }).to_string(),
        )
        .unwrap();
    }
}
