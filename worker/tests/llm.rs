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
