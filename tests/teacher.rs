//! Acceptance: the teacher stage with the `openai` backend pointed at a real `slim serve`
//! (SmolLM2-135M-Instruct, a child process of the built binary) writes parseable rationales for
//! a sample of real Video Games users; a second job on the same users is answered from the
//! cache with the server gone; `slim status` shows the accounting; the API key appears nowhere.

mod common;

use common::*;
use slim_shared::prompts;
use slim_shared::schema;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// A `slim serve` child process, killed when dropped.
struct Server {
    child: Child,
    base_url: String,
}

impl Server {
    fn start() -> Self {
        let model = repo().join("models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            model.exists(),
            "{} is missing: run `make models`",
            model.display()
        );
        Self::start_with(&model, &[])
    }

    /// `slim serve --model MODEL EXTRA...` on a free port.
    fn start_with(model: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slim"))
            .args(["serve", "--port", "0", "--max-batch", "4", "--model"])
            .arg(model)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("slim serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from slim serve: {line:?}"))
            .to_string();
        Self {
            child,
            base_url: format!("{addr}/v1"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEY: &str = "sk-e2e-4b1d9e7a0c3f";

fn manifest(dir: &Path, id: &str, base_url: &str) -> std::path::PathBuf {
    let data = data_dir().join("Video_Games");
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[job]
id = "{id}"
output = "{out}"
stages = ["teacher"]
[data]
format = "recbole"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
teacher_sample = 3
users_per_shard = 100000
[teacher]
backend = "openai"
base_url = "{base_url}"
model = "smollm2-135m"
api_key_env = "SLIM_E2E_TEACHER_KEY"
max_new_tokens = 150
concurrency = 3
history_token_budget = 120
max_retries = 0
parse_retries = 3
timeout_secs = 300
prompt_price_per_mtok = 0.15
completion_price_per_mtok = 0.6
"#,
            out = dir.join("out").display(),
            reviews = data.join("Games-6k.test.inter").display(),
            meta = data.join("Games.item").display(),
        ),
    )
    .unwrap();
    path
}

fn run(manifest: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_slim"))
        .args(["run", "--quiet"])
        .arg(manifest)
        .current_dir(repo())
        .env("RUST_LOG", "info")
        .env("SLIM_E2E_TEACHER_KEY", KEY)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn teacher_over_slim_serve_writes_parseable_rationales_for_real_games_users() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start();
    let started = Instant::now();
    let (ok, stdout, stderr) = run(&manifest(dir.path(), "games", &server.base_url));
    assert!(ok, "slim run failed:\n{stdout}\n{stderr}");
    eprintln!(
        "teacher over slim serve: {:.1} s; {stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(stdout.contains("teacher: done (1 tasks"), "{stdout}");

    let job = dir.path().join("out/games");
    let rows = schema::read_rationales(
        std::fs::read(job.join("teacher/part-00000.parquet"))
            .unwrap()
            .into(),
        "teacher part",
    )
    .unwrap();
    let users: Vec<schema::UserRow> = schema::read_users(
        std::fs::read(job.join("data/users.parquet"))
            .unwrap()
            .into(),
        "users",
    )
    .unwrap()
    .into_iter()
    .filter(|u| u.in_teacher_sample)
    .collect();
    assert_eq!(rows.len(), 3);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    ids.sort();
    let mut expected: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    expected.sort();
    assert_eq!(ids, expected);

    let items: HashMap<u32, schema::ItemRow> = schema::read_items(
        std::fs::read(job.join("data/items.parquet"))
            .unwrap()
            .into(),
        "items",
    )
    .unwrap()
    .into_iter()
    .map(|i| (i.item_index, i))
    .collect();
    for row in &rows {
        eprintln!(
            "user {}: {} prompt + {} completion tokens, {} ms, {}, parse_error {}\n{}\n---",
            row.user_id,
            row.prompt_tokens,
            row.completion_tokens,
            row.latency_ms,
            row.finish_reason,
            row.parse_error,
            row.rationale
        );
        assert_eq!(row.model, "smollm2-135m");
        assert!(!row.rationale.trim().is_empty());
        assert!(row.prompt_tokens > 0 && row.completion_tokens > 0 && row.latency_ms > 0);
        assert!(row.cost_usd > 0.0);
        // Parseable: the steps are what the parser found, and the parser finds them again.
        assert!(!row.parse_error, "unparseable: {}", row.rationale);
        let steps = prompts::parse_steps(&row.rationale).unwrap();
        assert_eq!((&steps.step1, &steps.step3), (&row.step1, &row.step3));
        // No leakage: the held-out items are not in the prompt (unless a history item reads
        // the same).
        let user = users.iter().find(|u| u.user_id == row.user_id).unwrap();
        let line = |i: u32| format!("- {}", prompts::item_line(&items[&i]));
        let history: Vec<String> = user.history.iter().map(|&i| line(i)).collect();
        assert!(
            row.prompt.contains(history.last().unwrap()),
            "the newest item is shown"
        );
        for held_out in [user.valid_item, user.test_item] {
            assert!(
                history.contains(&line(held_out)) || !row.prompt.contains(&line(held_out)),
                "user {}: held-out item {held_out} in the prompt",
                row.user_id
            );
        }
    }
    assert!(!stderr.contains(KEY) && !stdout.contains(KEY));

    // `slim status` shows the accounting.
    let status = slim_ok(&[
        "status",
        "games",
        "--store",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(
        status.contains("teacher: ") && status.contains("cost_usd") && status.contains("requests"),
        "{status}"
    );

    // A second job on the same users, with the server gone: every answer from the cache.
    drop(server);
    let (ok, stdout, stderr) = run(&manifest(
        dir.path(),
        "games-again",
        "http://127.0.0.1:9/v1",
    ));
    assert!(
        ok,
        "the second job asked the (stopped) server:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("requests 0,"), "{stdout}");
}

/// The greedy answer of a `slim serve` to one chat message, over plain HTTP.
fn ask(server: &Server, content: &str) -> String {
    use std::io::{Read, Write};
    let addr = server
        .base_url
        .trim_start_matches("http://")
        .trim_end_matches("/v1");
    let body = serde_json::json!({
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
        "temperature": 0.0,
    })
    .to_string();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("not a JSON answer ({e}): {response}"));
    value["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {value}"))
        .to_string()
}

#[test]
fn serve_merges_a_lora_adapter_into_the_model() {
    use slim_worker::backend::{Backend, device};
    use slim_worker::llm::lora::{LoraAdapters, LoraConfig, Target};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    slim_worker::llm::tiny::write_tiny_chat_model(&model, 5).unwrap();
    let engine = slim_worker::llm::Engine::<Backend>::load(&model, &device()).unwrap();
    let config = LoraConfig {
        rank: 4,
        alpha: 64.0,
        dropout: 0.0,
        targets: vec![Target::Q, Target::V, Target::Up, Target::Down],
    };
    let mut adapters = LoraAdapters::init(&engine.model, &config, 3, &device()).unwrap();
    // A strong non-zero B, so the merged model answers differently.
    for layer in &mut adapters.layers {
        for pair in [&mut layer.q, &mut layer.v, &mut layer.up, &mut layer.down]
            .into_iter()
            .flatten()
        {
            let b = pair.b.val().ones_like().mul_scalar(0.5);
            pair.b = burn::module::Param::from_tensor(b);
        }
    }
    let adapter = dir.path().join("adapter");
    adapters.save_peft(&adapter, &config, "tiny").unwrap();

    let question = "Which game should I play next?";
    let base = ask(&Server::start_with(&model, &[]), question);
    let adapted_server = Server::start_with(&model, &["--adapter", adapter.to_str().unwrap()]);
    let adapted = ask(&adapted_server, question);
    assert_ne!(base, adapted, "the adapter changes the answers");
    assert_eq!(
        ask(&adapted_server, question),
        adapted,
        "greedy answers repeat"
    );
}

#[test]
fn serve_names_a_missing_adapter_folder() {
    let out = slim(&["serve", "--port", "0", "--adapter", "/nonexistent/adapter"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/adapter") && stderr.contains("adapter_config.json"),
        "{stderr}"
    );
}
