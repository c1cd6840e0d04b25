//! The text encoder against sentence-transformers: token ids and embeddings of the committed
//! fixture (30 varied sentences, made by `scripts/encoder_reference.py` with PyTorch). Needs the
//! real model in `models/all-minilm-l6-v2` (`make models`).

use serde::Deserialize;
use slim_worker::backend::{self, Backend};
use slim_worker::encoder::TextEncoder;
use std::path::PathBuf;
use std::sync::OnceLock;

#[derive(Deserialize)]
struct Fixture {
    max_seq_length: usize,
    dim: usize,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn fixture() -> Fixture {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn encoder() -> &'static TextEncoder<Backend> {
    static ENCODER: OnceLock<TextEncoder<Backend>> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-minilm-l6-v2");
        TextEncoder::load(&folder, 0, &backend::device())
            .expect("the default encoder is in models/ (run `make models`)")
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn settings_come_from_the_model_folder() {
    let fixture = fixture();
    let encoder = encoder();
    assert_eq!(encoder.max_length, fixture.max_seq_length);
    assert_eq!(encoder.dim(), fixture.dim);
    assert_eq!(encoder.pooling, slim_worker::encoder::Pooling::Mean);
    assert!(encoder.normalize);
}

#[test]
fn token_ids_equal_the_reference_tokenizer() {
    let fixture = fixture();
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    let ids = encoder().tokenize(&texts).unwrap();
    for (sentence, ids) in fixture.sentences.iter().zip(ids) {
        assert_eq!(ids, sentence.input_ids, "{:?}", sentence.text);
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture = fixture();
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    // A batch size that mixes lengths within batches, so padding is exercised.
    let vectors = encoder().encode(&texts, 8).unwrap();
    let mut worst = 1.0f64;
    for (sentence, vector) in fixture.sentences.iter().zip(&vectors) {
        let similarity = cosine(vector, &sentence.embedding);
        worst = worst.min(similarity);
        assert!(
            similarity >= 0.999,
            "{:?}: cosine {similarity}",
            sentence.text
        );
        let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
    }
    eprintln!("worst cosine to sentence-transformers: {worst:.6}");
}

#[test]
fn padding_and_batching_do_not_change_an_embedding() {
    let texts = [
        "short",
        "a much longer sentence about video games and consoles",
    ];
    let together = encoder().encode(&texts, 2).unwrap();
    let alone = encoder().encode(&texts[..1], 1).unwrap();
    assert!(cosine(&together[0], &alone[0]) > 0.99999);
    assert!(
        cosine(&together[0], &together[1]) < 0.99,
        "different texts differ"
    );
}

#[test]
fn host_attention_equals_the_tensor_attention() {
    // The plain CPU backend attends on the host; under autodiff the encoder keeps Burn's ops.
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-minilm-l6-v2");
    let tensors = TextEncoder::<backend::Train>::load(&folder, 0, &backend::device()).unwrap();
    let fixture = fixture();
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    let on_host = encoder().encode(&texts, 8).unwrap();
    let with_tensors = tensors.encode(&texts, 8).unwrap();
    for ((text, host), tensor) in texts.iter().zip(&on_host).zip(&with_tensors) {
        let diff = host
            .iter()
            .zip(tensor)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{text:?}: embeddings differ by {diff}");
    }
}
