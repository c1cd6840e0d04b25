//! The teacher stage and its chat backends.
//!
//! The remote API is paid, so the `openai` backend is tested against a fake OpenAI-compatible
//! server in this file that misbehaves on purpose (429 with Retry-After, 500, answers past the
//! timeout, cut and invalid JSON) and counts the requests it gets. The data is real: Gift Cards
//! prepared by the real prepare stage. `slim serve`'s server is tested over the real SmolLM2.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use slim_shared::manifest::LoadedManifest;
use slim_shared::prompts;
use slim_shared::schema::{self, RationaleRow};
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings, Store};
use slim_worker::chat::openai::{ApiKey, OpenAiChat, OpenAiConfig};
use slim_worker::chat::wire::ChatCompletionRequest;
use slim_worker::chat::{ChatBackend, ChatRequest};
use slim_worker::executor::{Registry, TaskContext, TaskOutcome, run_task};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data_dir() -> PathBuf {
    std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data/amazon"))
}

/// What the fake server does with one request.
#[derive(Clone, Debug)]
enum Reply {
    Answer(String),
    /// A status with an optional Retry-After.
    Status(u16, Option<&'static str>),
    /// Answers after a delay (past the client's timeout in these tests).
    Slow(Duration),
    /// 200 with a body cut in the middle.
    Truncated,
    /// 200 with a body that is not JSON.
    Invalid,
}

type Script = dyn Fn(&ChatCompletionRequest, usize) -> Reply + Send + Sync;

/// A fake OpenAI-compatible server: `script(request, n)` decides, `n` counting earlier
/// identical requests (so "fail once, then answer" is easy to say).
struct Fake {
    requests: AtomicUsize,
    /// Requests being handled right now, and the most seen at once.
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    seen: Mutex<HashMap<String, usize>>,
    authorization: Mutex<Vec<String>>,
    delay: Duration,
    script: Box<Script>,
}

impl Fake {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn fake_handler(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    fake.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(auth) = headers.get("authorization") {
        fake.authorization
            .lock()
            .unwrap()
            .push(auth.to_str().unwrap().to_string());
    }
    let request: ChatCompletionRequest = serde_json::from_slice(&body).unwrap();
    let n = {
        let mut seen = fake.seen.lock().unwrap();
        let count = seen
            .entry(String::from_utf8_lossy(&body).into_owned())
            .or_default();
        *count += 1;
        *count - 1
    };
    if !fake.delay.is_zero() {
        let now = fake.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        fake.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(fake.delay).await;
        fake.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
    let answer = |content: &str| {
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}
        })
        .to_string()
    };
    match (fake.script)(&request, n) {
        Reply::Answer(content) => (StatusCode::OK, answer(&content)).into_response(),
        Reply::Status(code, retry_after) => {
            let mut response = (
                StatusCode::from_u16(code).unwrap(),
                r#"{"error": {"message": "injected", "type": "test"}}"#,
            )
                .into_response();
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            response
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            (
                StatusCode::OK,
                answer("Step 1: late\nStep 2: late\nStep 3: late"),
            )
                .into_response()
        }
        Reply::Truncated => {
            let body = answer("Step 1: cut");
            (StatusCode::OK, body[..body.len() / 2].to_string()).into_response()
        }
        Reply::Invalid => (StatusCode::OK, "<html>502 Bad Gateway</html>").into_response(),
    }
}

/// Starts a fake server; returns its base URL (`http://addr/v1`).
async fn fake_server(
    delay: Duration,
    script: impl Fn(&ChatCompletionRequest, usize) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        requests: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        peak_in_flight: AtomicUsize::new(0),
        seen: Mutex::new(HashMap::new()),
        authorization: Mutex::new(Vec::new()),
        delay,
        script: Box::new(script),
    });
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(fake_handler))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), fake)
}

fn good_answer(request: &ChatCompletionRequest) -> String {
    let prompt = &request.messages[0].content;
    format!(
        "**Step 1:** likes gift cards ({} chars of prompt)\n**Step 2:** Amazon gift cards\n**Step 3:** 1. A birthday card\n2. A holiday card",
        prompt.len()
    )
}

/// The `[teacher]` section of a job asking the fake server at `base_url`, plus `extra` keys.
fn openai_teacher(base_url: &str, extra: &str) -> String {
    format!(
        r#"backend = "openai"
model = "fake-gpt"
base_url = "{base_url}"
concurrency = 4
timeout_secs = 1
max_retries = 4
parse_retries = 1
prompt_price_per_mtok = 2.5
completion_price_per_mtok = 10.0
{extra}"#
    )
}

/// A job over the real Gift Cards data (12 users in U', one shard).
struct Job {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    registry: Registry,
}

impl Job {
    async fn prepared(id: &str, base_url: &str, extra: &str) -> (Self, Arc<LoadedManifest>) {
        Self::prepared_with(id, &openai_teacher(base_url, extra)).await
    }

    /// A prepared job whose `[teacher]` section is `teacher`.
    async fn prepared_with(id: &str, teacher: &str) -> (Self, Arc<LoadedManifest>) {
        let dir = tempfile::tempdir().unwrap();
        let store = store::open(
            &Location::Local(dir.path().to_path_buf()),
            &S3Settings::default(),
        )
        .await
        .unwrap();
        let job = Self {
            dir,
            store,
            registry: Registry::builtin(),
        };
        let manifest = job.manifest_with(id, teacher);
        let ctx = job.ctx(&manifest);
        run_task(&job.registry, &ctx, Stage::Prepare).await.unwrap();
        (job, manifest)
    }

    fn manifest(&self, id: &str, base_url: &str, extra: &str) -> Arc<LoadedManifest> {
        self.manifest_with(id, &openai_teacher(base_url, extra))
    }

    fn manifest_with(&self, id: &str, teacher: &str) -> Arc<LoadedManifest> {
        let data = data_dir().join("Gift_Cards");
        let text = format!(
            r#"
[job]
id = "{id}"
output = "{out}"
stages = ["teacher"]
[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
teacher_sample = 12
users_per_shard = 1000
[teacher]
{teacher}
"#,
            out = self.dir.path().display(),
            reviews = data.join("Gift_Cards_5.json.gz").display(),
            meta = data.join("meta_Gift_Cards.json.gz").display(),
        );
        Arc::new(
            LoadedManifest::from_str(&text, "<test>", self.dir.path().to_path_buf())
                .map_err(|p| p.to_string())
                .unwrap(),
        )
    }

    fn ctx(&self, manifest: &Arc<LoadedManifest>) -> TaskContext {
        TaskContext {
            job: manifest.clone(),
            store: self.store.clone(),
            shard: 0,
            attempt: 1,
            progress: false,
        }
    }

    async fn run_teacher(&self, manifest: &Arc<LoadedManifest>) -> anyhow::Result<TaskOutcome> {
        run_task(&self.registry, &self.ctx(manifest), Stage::Teacher).await
    }

    fn rows(&self, job_id: &str) -> Vec<RationaleRow> {
        let path = self
            .dir
            .path()
            .join(job_id)
            .join("teacher/part-00000.parquet");
        schema::read_rationales(std::fs::read(&path).unwrap().into(), "teacher part").unwrap()
    }

    fn sampled_users(&self, job_id: &str) -> Vec<schema::UserRow> {
        let path = self.dir.path().join(job_id).join("data/users.parquet");
        schema::read_users(std::fs::read(path).unwrap().into(), "users")
            .unwrap()
            .into_iter()
            .filter(|u| u.in_teacher_sample && u.shard == 0)
            .collect()
    }

    /// Forgets that the teacher task is done, as a redelivery after a lost marker would.
    fn forget_teacher(&self, job_id: &str) {
        std::fs::remove_file(
            self.dir
                .path()
                .join(job_id)
                .join("_markers/teacher/00000.json"),
        )
        .unwrap();
    }

    /// Every file under the output root, as text (for leak checks).
    fn all_text(&self) -> String {
        fn walk(dir: &Path, out: &mut String) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = String::new();
        walk(self.dir.path(), &mut out);
        out
    }
}

fn counters(outcome: TaskOutcome) -> std::collections::BTreeMap<String, u64> {
    match outcome {
        TaskOutcome::Done(marker) => marker.counters,
        TaskOutcome::AlreadyDone(_) => panic!("the task was skipped"),
    }
}

/// Collects every log line of the current thread (TRACE, all crates) into a buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn faults_are_retried_counted_and_every_user_is_written_once_without_leaking_the_key() {
    const KEY: &str = "sk-test-7f3a9c1e5b2d4f60";
    // SAFETY: set before anything reads the environment in this test binary's other tests
    // that could race; the name is unique to this test.
    unsafe { std::env::set_var("SLIM_TEST_TEACHER_KEY_FAULTS", KEY) };
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Each user's first request fails in one of five ways, in turn; the next one is answered.
    let faults = [
        Reply::Status(429, Some("1")),
        Reply::Status(500, None),
        Reply::Slow(Duration::from_millis(1500)),
        Reply::Truncated,
        Reply::Invalid,
    ];
    let users_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = users_seen.clone();
    let (url, fake) = fake_server(Duration::ZERO, move |request, n| {
        let prompt = request.messages[0].content.clone();
        let mut seen = seen.lock().unwrap();
        let user = match seen.iter().position(|p| *p == prompt) {
            Some(i) => i,
            None => {
                seen.push(prompt);
                seen.len() - 1
            }
        };
        if n == 0 {
            faults[user % faults.len()].clone()
        } else {
            Reply::Answer(good_answer(request))
        }
    })
    .await;
    let (job, manifest) = Job::prepared(
        "faults",
        &url,
        "api_key_env = \"SLIM_TEST_TEACHER_KEY_FAULTS\"",
    )
    .await;
    let counters = counters(job.run_teacher(&manifest).await.unwrap());

    let users = job.sampled_users("faults");
    let rows = job.rows("faults");
    assert_eq!(users.len(), 12);
    let mut written: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    written.sort();
    let mut expected: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    expected.sort();
    assert_eq!(written, expected, "every sampled user exactly once");
    for row in &rows {
        assert_eq!(row.retries, 1, "{row:?}");
        assert!(!row.parse_error && !row.cached, "{row:?}");
        assert_eq!(row.step2, "Amazon gift cards");
        assert!(row.step3.starts_with("1. A birthday card"), "{}", row.step3);
        assert_eq!((row.prompt_tokens, row.completion_tokens), (100, 20));
        assert!((row.cost_usd - (100.0 * 2.5 + 20.0 * 10.0) / 1e6).abs() < 1e-12);
        assert_eq!(row.model, "fake-gpt");
    }
    assert_eq!(fake.requests(), 24, "one fault and one answer per user");
    assert_eq!(counters["users"], 12);
    assert_eq!(counters["requests"], 24);
    assert_eq!(counters["retries"], 12);
    assert_eq!(counters["cache_hits"], 0);
    assert_eq!(counters["prompt_tokens"], 1200);
    assert_eq!(counters["cost_microusd"], 12 * 450);

    // The key went to the server, and nowhere else.
    let auth = fake.authorization.lock().unwrap().clone();
    assert_eq!(auth.len(), 24);
    assert!(auth.iter().all(|a| a == &format!("Bearer {KEY}")));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "retries are logged");
    assert!(!logs.contains(KEY), "the API key leaked into the logs");
    assert!(
        !job.all_text().contains(KEY),
        "the API key leaked into the outputs"
    );
}

#[tokio::test]
async fn a_rerun_and_a_second_job_on_the_same_users_make_no_requests() {
    let (url, fake) = fake_server(Duration::ZERO, |request, _| {
        Reply::Answer(good_answer(request))
    })
    .await;
    let (job, manifest) = Job::prepared("first", &url, "").await;
    let first = counters(job.run_teacher(&manifest).await.unwrap());
    assert_eq!(first["requests"], 12);
    assert_eq!(fake.requests(), 12);
    let before = job.rows("first");

    // A redelivered task (its marker lost) asks nothing.
    job.forget_teacher("first");
    let again = counters(job.run_teacher(&manifest).await.unwrap());
    assert_eq!(fake.requests(), 12, "the rerun made requests");
    assert_eq!((again["requests"], again["cache_hits"]), (0, 12));
    let after = job.rows("first");
    for (a, b) in before.iter().zip(&after) {
        assert!(b.cached);
        assert_eq!(
            RationaleRow {
                cached: false,
                ..b.clone()
            },
            *a
        );
    }

    // Another job in the same output root, same users, same teacher: no request either.
    let second = job.manifest("second", &url, "");
    run_task(&job.registry, &job.ctx(&second), Stage::Prepare)
        .await
        .unwrap();
    let counted = counters(job.run_teacher(&second).await.unwrap());
    assert_eq!(fake.requests(), 12);
    assert_eq!(counted["cache_hits"], 12);
    assert_eq!(job.rows("second").len(), 12);
}

#[tokio::test]
async fn unparseable_answers_are_asked_again_then_kept_with_a_flag() {
    // Greedy first round: users with an even prompt length ramble; on the retry (seed 1,
    // temperature raised from 0) half of those answer properly.
    let (url, fake) = fake_server(Duration::ZERO, |request, _| {
        let len = request.messages[0].content.len();
        let retry = request.seed == Some(1);
        if retry && request.temperature != Some(0.7) {
            return Reply::Status(400, None);
        }
        match (len % 2, len % 4, retry) {
            (1, _, _) => Reply::Answer(good_answer(request)),
            (0, 0, true) => Reply::Answer(good_answer(request)),
            _ => Reply::Answer("I would recommend more gift cards.".into()),
        }
    })
    .await;
    let (job, manifest) = Job::prepared("parse", &url, "").await;
    let counters = counters(job.run_teacher(&manifest).await.unwrap());
    let rows = job.rows("parse");
    assert_eq!(rows.len(), 12);
    let mut asked = 0;
    for row in &rows {
        let len = row.prompt.len();
        match (len % 2, len % 4) {
            (1, _) => assert!(!row.parse_error && row.parse_retries == 0, "{row:?}"),
            (0, 0) => assert!(!row.parse_error && row.parse_retries == 1, "{row:?}"),
            _ => {
                assert!(row.parse_error && row.parse_retries == 1, "{row:?}");
                assert_eq!(row.rationale, "I would recommend more gift cards.");
                assert!(row.step1.is_empty() && row.step3.is_empty());
            }
        }
        asked += 1 + row.parse_retries as usize;
    }
    assert_eq!(fake.requests(), asked);
    assert_eq!(
        counters["parse_errors"],
        rows.iter().filter(|r| r.parse_error).count() as u64
    );
}

#[tokio::test]
async fn a_user_the_api_refuses_fails_the_task_by_name_and_the_retry_asks_only_that_user() {
    let refuse = Arc::new(Mutex::new(None::<String>));
    let chosen = refuse.clone();
    let (url, fake) = fake_server(Duration::ZERO, move |request, _| {
        let prompt = &request.messages[0].content;
        let mut chosen = chosen.lock().unwrap();
        let refused = chosen.get_or_insert_with(|| prompt.clone());
        if refused == prompt {
            Reply::Status(400, None)
        } else {
            Reply::Answer(good_answer(request))
        }
    })
    .await;
    let (job, manifest) = Job::prepared("refused", &url, "").await;
    let error = format!("{:#}", job.run_teacher(&manifest).await.unwrap_err());
    assert!(
        error.contains("could not answer 1 of 12 user(s)"),
        "{error}"
    );
    assert!(error.contains("HTTP 400"), "{error}");
    let refused_user = job
        .sampled_users("refused")
        .into_iter()
        .find(|u| error.contains(&format!("user {}", u.user_id)));
    assert!(refused_user.is_some(), "the error names the user: {error}");
    assert_eq!(fake.requests(), 12, "a 400 is not retried");

    // The API accepts it now: the retried task asks for that one user only.
    *refuse.lock().unwrap() = Some("nobody".into());
    let counted = counters(job.run_teacher(&manifest).await.unwrap());
    assert_eq!(fake.requests(), 13);
    assert_eq!((counted["requests"], counted["cache_hits"]), (1, 11));
}

#[tokio::test]
async fn prompts_hold_the_training_history_only() {
    let (url, _fake) = fake_server(Duration::ZERO, |request, _| {
        Reply::Answer(good_answer(request))
    })
    .await;
    let (job, manifest) = Job::prepared("leak", &url, "history_token_budget = 0").await;
    job.run_teacher(&manifest).await.unwrap();
    let items = schema::read_items(
        std::fs::read(job.dir.path().join("leak/data/items.parquet"))
            .unwrap()
            .into(),
        "items",
    )
    .unwrap();
    let items: HashMap<u32, schema::ItemRow> =
        items.into_iter().map(|i| (i.item_index, i)).collect();
    let line = |i: u32| format!("- {}", prompts::item_line(&items[&i]));
    let rows: HashMap<String, RationaleRow> = job
        .rows("leak")
        .into_iter()
        .map(|r| (r.user_id.clone(), r))
        .collect();
    let mut checked = 0;
    for user in job.sampled_users("leak") {
        let prompt = &rows[&user.user_id].prompt;
        let history: Vec<String> = user.history.iter().map(|&i| line(i)).collect();
        for &i in &user.history {
            assert!(prompt.contains(&line(i)), "history item missing: {prompt}");
        }
        for held_out in [user.valid_item, user.test_item] {
            // An item may share its text with a history item; only a distinct one can leak.
            if !history.contains(&line(held_out)) {
                assert!(
                    !prompt.contains(&line(held_out)),
                    "user {}: held-out item {held_out} in the prompt",
                    user.user_id
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked}");
}

fn client(url: &str, concurrency: usize, rpm: u32) -> OpenAiChat {
    OpenAiChat::new(OpenAiConfig {
        api_key: Some(ApiKey::new("sk-bench")),
        concurrency,
        requests_per_minute: rpm,
        max_retries: 0,
        ..client_config(url)
    })
    .unwrap()
}

/// CPU seconds this process has used (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_exactly_its_concurrency_in_flight() {
    let (url, fake) = fake_server(Duration::from_millis(200), |request, _| {
        Reply::Answer(good_answer(request))
    })
    .await;
    let chat = client(&url, 64, 0);
    let requests: Vec<ChatRequest> = (0..640)
        .map(|i| ChatRequest::user(format!("question {i}"), 16, 0.0, 1.0, 0))
        .collect();
    let cpu = cpu_seconds();
    let started = Instant::now();
    let answers = chat.complete(requests).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    assert!(answers.iter().all(Result::is_ok));
    assert_eq!(fake.requests(), 640);
    // The bound holds and is used: the server saw 64 requests at once, never more. (Speed is
    // measured, not asserted: it depends on the machine.)
    assert_eq!(fake.peak_in_flight.load(Ordering::SeqCst), 64);
    let throughput = 640.0 / seconds;
    let ideal = 64.0 / 0.2;
    eprintln!(
        "throughput {throughput:.1} req/s of ideal {ideal:.0} ({:.1}%); process CPU {cpu:.2} s for 640 requests (client and fake server together)",
        100.0 * throughput / ideal
    );
}

#[tokio::test]
async fn requests_per_minute_spaces_requests() {
    let (url, _fake) = fake_server(Duration::ZERO, |request, _| {
        Reply::Answer(good_answer(request))
    })
    .await;
    // 1200 per minute: one every 50 ms, so 11 requests span at least 500 ms.
    let chat = client(&url, 8, 1200);
    let requests: Vec<ChatRequest> = (0..11)
        .map(|i| ChatRequest::user(format!("q{i}"), 8, 0.0, 1.0, 0))
        .collect();
    let started = Instant::now();
    let answers = chat.complete(requests).await;
    assert!(answers.iter().all(Result::is_ok));
    let elapsed = started.elapsed();
    // A lower bound only: the limiter must wait; a slow machine may take longer.
    assert!(elapsed >= Duration::from_millis(490), "{elapsed:?}");
}

#[tokio::test]
async fn retry_after_is_honoured_and_exhausted_retries_fail_clearly() {
    let (url, fake) = fake_server(Duration::ZERO, |request, n| {
        if request.messages[0].content == "always 503" {
            Reply::Status(503, None)
        } else if n == 0 {
            Reply::Status(429, Some("1"))
        } else {
            Reply::Answer(good_answer(request))
        }
    })
    .await;
    let chat = OpenAiChat::new(OpenAiConfig {
        max_retries: 2,
        ..client_config(&url)
    })
    .unwrap();
    let started = Instant::now();
    let answer = chat
        .complete_one(&ChatRequest::user("hello", 8, 0.0, 1.0, 0))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(990),
        "waited for Retry-After"
    );
    assert_eq!(answer.retries, 1);
    let error = chat
        .complete_one(&ChatRequest::user("always 503", 8, 0.0, 1.0, 0))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("failed after 3 attempt(s)") && error.contains("503"),
        "{error}"
    );
    assert_eq!(fake.requests(), 2 + 3);
}

fn client_config(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_string(),
        model: "fake-gpt".into(),
        api_key: None,
        concurrency: 4,
        requests_per_minute: 0,
        tokens_per_minute: 0,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
    }
}

fn smollm2() -> PathBuf {
    let path = repo().join(slim_worker::llm::default_model_path());
    assert!(
        path.exists(),
        "{} is missing: run `make models`",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_like_openai_over_the_real_model() {
    use slim_worker::chat::local::LocalChat;
    use slim_worker::chat::server;
    let path = smollm2();
    let chat = tokio::task::spawn_blocking(move || LocalChat::load(&path, "smollm2", 4))
        .await
        .unwrap()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = server::start(chat, "127.0.0.1:0".parse().unwrap(), async {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    let health: serde_json::Value = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let models: serde_json::Value = http
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smollm2");

    let bad = http
        .post(format!("{base}/v1/chat/completions"))
        .body(r#"{"messages": "hello"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: serde_json::Value = bad.json().await.unwrap();
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("messages"),
        "{bad}"
    );

    // A prompt past the model's context is the asker's mistake: 400, and the server lives on.
    let long = "game ".repeat(9000);
    let too_long = http
        .post(format!("{base}/v1/chat/completions"))
        .json(
            &serde_json::json!({"messages": [{"role": "user", "content": long}], "max_tokens": 8}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
    let too_long: serde_json::Value = too_long.json().await.unwrap();
    assert!(
        too_long["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the model's context"),
        "{too_long}"
    );

    // Four clients at once share batches on the one engine.
    let started = Instant::now();
    let asks = (0..4).map(|i| {
        let http = http.clone();
        let url = format!("{base}/v1/chat/completions");
        async move {
            let body = serde_json::json!({
                "model": "smollm2",
                "messages": [{"role": "user", "content": format!("Name a video game for a fan of genre number {i}.")}],
                "max_tokens": 24, "temperature": 0, "seed": 1, "stream": false
            });
            let response = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.json::<serde_json::Value>().await.unwrap()
        }
    });
    let answers = futures::future::join_all(asks).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut tokens = 0;
    for answer in &answers {
        assert_eq!(answer["object"], "chat.completion");
        assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
        assert!(
            !answer["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .is_empty()
        );
        assert!(
            ["stop", "length"].contains(&answer["choices"][0]["finish_reason"].as_str().unwrap())
        );
        let usage = &answer["usage"];
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
        tokens += usage["completion_tokens"].as_u64().unwrap();
    }
    eprintln!(
        "slim serve: 4 concurrent requests, {tokens} completion tokens in {seconds:.1} s ({:.1} tokens/s)",
        tokens as f64 / seconds
    );
    let _ = stop.send(());
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_local_backend_answers_with_the_in_process_engine() {
    let teacher = format!(
        "backend = \"local\"\nmodel = \"{}\"\nmax_new_tokens = 8\nconcurrency = 6\nparse_retries = 0",
        smollm2().display()
    );
    let (job, manifest) = Job::prepared_with("local", &teacher).await;
    let counters = counters(job.run_teacher(&manifest).await.unwrap());
    let rows = job.rows("local");
    assert_eq!(rows.len(), 12);
    assert_eq!((counters["requests"], counters["retries"]), (12, 0));
    for row in &rows {
        assert_eq!(row.model, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(!row.rationale.is_empty());
        assert!(
            row.completion_tokens <= 8 && row.prompt_tokens > 20,
            "{row:?}"
        );
        assert_eq!(row.parse_retries, 0);
    }
}
