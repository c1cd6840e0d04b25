//! The distill and student stages on real prepared data (Gift Cards) with a tiny random-weight
//! student, so each test runs in seconds. The teacher's answers are written by the test (the
//! teacher stage has its own tests); the student then learns to write them.
//!
//! - distill writes the PEFT adapter, the loss curve (Parquet + SVG) and a summary, and the
//!   validation loss falls;
//! - a distill task that dies after a checkpoint resumes from it and ends with the adapter of
//!   an uninterrupted run (bit for bit);
//! - the student stage writes one rationale row per user of its shard with the merged model.

use async_trait::async_trait;
use bytes::Bytes;
use slim_shared::manifest::LoadedManifest;
use slim_shared::schema::{self, RationaleRow};
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, ObjectInfo, S3Settings, Store, StoreError};
use slim_worker::backend::{Backend, device};
use slim_worker::executor::{Registry, TaskContext, TaskOutcome, run_task};
use slim_worker::llm::Engine;
use slim_worker::llm::lora::LoraAdapters;
use slim_worker::llm::tiny::write_tiny_chat_model;
use slim_worker::stages::distill::{DistillSummary, read_loss};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn data_dir() -> PathBuf {
    std::env::var_os("SLIM_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/amazon")
        })
}

/// A store that fails every checkpoint write after the first `allowed`, as a worker killed
/// right after a checkpoint would leave things (the later ones never land).
#[derive(Debug)]
struct DiesAfterCheckpoints {
    inner: Arc<dyn Store>,
    allowed: usize,
    written: AtomicUsize,
}

#[async_trait]
impl Store for DiesAfterCheckpoints {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        if key.contains("/checkpoints/")
            && self.written.fetch_add(1, Ordering::SeqCst) >= self.allowed
        {
            return Err(StoreError::Remote {
                uri: key.to_string(),
                message: "injected: the worker died".into(),
            });
        }
        self.inner.put(key, body).await
    }
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        self.inner.put_file(key, path).await
    }
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        self.inner.get(key).await
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.exists(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    fn location(&self, key: &str) -> Location {
        self.inner.location(key)
    }
}

/// A prepared Gift Cards job with teacher rationales written for its sampled users.
struct Job {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    manifest: Arc<LoadedManifest>,
}

const TEACHER_SAMPLE: usize = 24;

impl Job {
    async fn prepared(id: &str, student: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny-student");
        write_tiny_chat_model(&model, 3).unwrap();
        let data = data_dir().join("Gift_Cards");
        let text = format!(
            r#"
[job]
id = "{id}"
output = "{out}"
stages = ["student"]
[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"
[prepare]
teacher_sample = {TEACHER_SAMPLE}
users_per_shard = 40
max_users = 80
[student]
base_model = "{model}"
lora_rank = 4
lora_alpha = 8.0
lora_dropout = 0.1
learning_rate = 0.01
epochs = 3
batch_size = 4
warmup_steps = 2
max_seq_len = 700
history_token_budget = 300
validation_fraction = 0.2
checkpoint_every = 2
max_new_tokens = 12
generation_batch = 8
{student}
"#,
            out = dir.path().display(),
            reviews = data.join("Gift_Cards_5.json.gz").display(),
            meta = data.join("meta_Gift_Cards.json.gz").display(),
            model = model.display(),
        );
        let manifest = Arc::new(
            LoadedManifest::from_str(&text, "<test>", dir.path().to_path_buf())
                .map_err(|p| p.to_string())
                .unwrap(),
        );
        let store = store::open(
            &Location::Local(dir.path().to_path_buf()),
            &S3Settings::default(),
        )
        .await
        .unwrap();
        let job = Self {
            dir,
            store,
            manifest,
        };
        job.run(Stage::Prepare, 0).await.unwrap();
        job.write_teacher_answers().await;
        job
    }

    fn ctx(&self, store: Arc<dyn Store>, shard: u32) -> TaskContext {
        TaskContext {
            job: self.manifest.clone(),
            store,
            shard,
            attempt: 1,
            progress: false,
        }
    }

    async fn run(&self, stage: Stage, shard: u32) -> anyhow::Result<TaskOutcome> {
        run_task(
            &Registry::builtin(),
            &self.ctx(self.store.clone(), shard),
            stage,
        )
        .await
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(self.manifest.job_id()).join(key)
    }

    fn users(&self) -> Vec<schema::UserRow> {
        schema::read_users(
            std::fs::read(self.path("data/users.parquet"))
                .unwrap()
                .into(),
            "users",
        )
        .unwrap()
    }

    /// Rationales "from the teacher" for the sampled users: a fixed shape whose words come
    /// from the user's history, so the student has something learnable. Two answers are
    /// flagged unparseable, as a real teacher's sometimes are.
    async fn write_teacher_answers(&self) {
        let sampled: Vec<schema::UserRow> = self
            .users()
            .into_iter()
            .filter(|u| u.in_teacher_sample)
            .collect();
        assert_eq!(sampled.len(), TEACHER_SAMPLE);
        let rows: Vec<RationaleRow> = sampled
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let broken = i < 2;
                RationaleRow {
                    user_id: u.user_id.clone(),
                    prompt: "teacher prompt".into(),
                    rationale: "whatever the teacher said".into(),
                    step1: if broken {
                        String::new()
                    } else {
                        "likes gift cards".into()
                    },
                    step2: if broken {
                        String::new()
                    } else {
                        "gift card brands".into()
                    },
                    step3: if broken {
                        String::new()
                    } else {
                        format!("item {}", u.history[0])
                    },
                    model: "teacher".into(),
                    prompt_tokens: 10,
                    completion_tokens: 10,
                    latency_ms: 1,
                    finish_reason: "stop".into(),
                    retries: 0,
                    parse_retries: 0,
                    parse_error: broken,
                    cached: false,
                    cost_usd: 0.0,
                }
            })
            .collect();
        let key = format!("{}/teacher/part-00000.parquet", self.manifest.job_id());
        self.store
            .put(&key, schema::write_rationales(&rows).unwrap().into())
            .await
            .unwrap();
    }

    fn summary(&self) -> DistillSummary {
        serde_json::from_slice(&std::fs::read(self.path("student/distill.json")).unwrap()).unwrap()
    }
}

#[tokio::test]
async fn distill_trains_the_student_and_writes_adapter_loss_curve_and_summary() {
    let job = Job::prepared("distill", "").await;
    let outcome = job.run(Stage::Distill, 0).await.unwrap();
    let TaskOutcome::Done(marker) = outcome else {
        panic!("the task was skipped")
    };
    let summary = job.summary();
    assert_eq!(summary.teacher_rows, TEACHER_SAMPLE);
    assert_eq!(
        summary.skipped_unparsed, 2,
        "unparseable answers are not trained on"
    );
    // 22 usable answers, 20% held out.
    assert_eq!(summary.validation_examples, 4);
    assert_eq!(summary.train_examples, 18);
    // 18 examples in batches of 4: 5 steps an epoch, 3 epochs.
    assert_eq!(summary.steps, 15);
    assert_eq!(marker.counters["steps"], 15);
    let (before, after) = (
        summary.validation_loss_before.unwrap(),
        summary.validation_loss_after.unwrap(),
    );
    assert!(after < before * 0.8, "validation loss {before} -> {after}");

    // The loss curve: one row per step, validation at each epoch's end.
    let curve = read_loss(
        std::fs::read(job.path("student/loss.parquet"))
            .unwrap()
            .into(),
        "loss.parquet",
    )
    .unwrap();
    assert_eq!(curve.len(), 15);
    let epochs_validated: Vec<usize> = curve
        .iter()
        .filter(|p| p.validation_loss.is_some())
        .map(|p| p.step)
        .collect();
    assert_eq!(epochs_validated, vec![4, 9, 14]);
    assert_eq!(curve.last().unwrap().validation_loss, Some(after));
    let svg = std::fs::read_to_string(job.path("student/loss.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");

    // The adapter is a PEFT adapter for the base model.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.path("student/adapter.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    let engine = Engine::<Backend>::load(&job.dir.path().join("tiny-student"), &device()).unwrap();
    let adapter_dir = job.path("student");
    let (adapters, lora) = LoraAdapters::load_peft(&adapter_dir, &engine.model, &device()).unwrap();
    assert_eq!(lora.rank, 4);
    assert_eq!(adapters.layers.len(), 2);
}

#[tokio::test]
async fn a_distill_task_that_dies_after_a_checkpoint_resumes_to_the_same_adapter() {
    let uninterrupted = Job::prepared("whole", "").await;
    uninterrupted.run(Stage::Distill, 0).await.unwrap();
    let expected = std::fs::read(uninterrupted.path("student/adapter.safetensors")).unwrap();

    let job = Job::prepared("killed", "").await;
    let dying: Arc<dyn Store> = Arc::new(DiesAfterCheckpoints {
        inner: job.store.clone(),
        allowed: 3,
        written: AtomicUsize::new(0),
    });
    let err = run_task(&Registry::builtin(), &job.ctx(dying, 0), Stage::Distill)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("injected"), "{err:#}");
    assert!(!job.path("student/adapter.safetensors").exists());

    // Checkpoints come after steps 2, 4, 5 (the first epoch's end), 6, ...; the fourth write
    // failed, so the redelivered task finds step 5's and runs the other 10 steps.
    job.run(Stage::Distill, 0).await.unwrap();
    let summary = job.summary();
    assert_eq!(summary.resumed_from_step, Some(5));
    assert_eq!(summary.steps_this_attempt, 10);
    assert_eq!(summary.steps, 15);
    let resumed = std::fs::read(job.path("student/adapter.safetensors")).unwrap();
    assert!(
        resumed == expected,
        "the resumed adapter differs from the uninterrupted one"
    );
}

#[tokio::test]
async fn the_student_writes_a_rationale_for_every_user_of_its_shard() {
    let job = Job::prepared("student", "").await;
    job.run(Stage::Distill, 0).await.unwrap();
    let TaskOutcome::Done(marker) = job.run(Stage::Student, 1).await.unwrap() else {
        panic!("the task was skipped")
    };
    let rows = schema::read_rationales(
        std::fs::read(job.path("student/part-00001.parquet"))
            .unwrap()
            .into(),
        "student part",
    )
    .unwrap();
    let mut expected: Vec<String> = job
        .users()
        .into_iter()
        .filter(|u| u.shard == 1)
        .map(|u| u.user_id)
        .collect();
    let mut got: Vec<String> = rows.iter().map(|r| r.user_id.clone()).collect();
    expected.sort();
    got.sort();
    assert_eq!(
        got, expected,
        "every user of the shard, sampled by the teacher or not"
    );
    assert_eq!(marker.counters["users"], expected.len() as u64);
    for row in &rows {
        assert!(row.model.starts_with("tiny-student+lora-"), "{}", row.model);
        assert!(row.completion_tokens <= 12);
        assert!(
            row.prompt.contains("Reason step by step"),
            "the student's own prompt: {}",
            row.prompt
        );
    }

    // A rerun of the shard asks the model nothing: the answers are cached under the
    // adapter's hash.
    std::fs::remove_file(job.path("_markers/student/00001.json")).unwrap();
    let TaskOutcome::Done(again) = job.run(Stage::Student, 1).await.unwrap() else {
        panic!("the task was skipped")
    };
    assert_eq!(again.counters.get("requests").copied().unwrap_or(0), 0);
}
