//! The job manifest: one TOML file that says what a job reads, how it preprocesses, which models
//! it uses and where it writes.
//!
//! The doc comments on these structs are the reference documentation of every key (mirrored in
//! `jobs/template.toml` and `docs/manifest.md`). Relative paths are resolved against the
//! manifest's own folder. `${VAR}` and `${VAR:-default}` in string values are taken from the
//! environment, so deployments can inject endpoints without editing files. Secrets are never
//! written in a manifest: keys such as `api_key_env` name the environment variable that holds them.

mod env;
mod validate;

pub use validate::{Problem, Problems};

use crate::data::OnError;
use crate::stage::Stage;
use crate::store::{Location, S3Settings};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub job: JobSection,
    pub data: DataSection,
    #[serde(default)]
    pub prepare: PrepareSection,
    #[serde(default)]
    pub storage: S3Settings,
    #[serde(default)]
    pub teacher: TeacherSection,
    #[serde(default)]
    pub student: StudentSection,
    #[serde(default)]
    pub encoder: EncoderSection,
    #[serde(default)]
    pub train: TrainSection,
    #[serde(default)]
    pub probe: ProbeSection,
}

/// `[job]`: identity and output root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSection {
    /// Job id: lowercase letters, digits, `-` and `_`. Outputs go under `{output}/{id}/`.
    pub id: String,
    /// Output root: a local path or `s3://bucket/prefix`.
    pub output: String,
    /// Free text shown by `slim status`.
    #[serde(default)]
    pub description: String,
    /// The stages to run; each brings the stages it depends on. Default: the whole SLIM
    /// pipeline (prepare, teacher, distill, student, encode, train). `["probe"]` checks a
    /// deployment without models.
    #[serde(default = "default_stages")]
    pub stages: Vec<Stage>,
}

fn default_stages() -> Vec<Stage> {
    Stage::PIPELINE.to_vec()
}

impl JobSection {
    /// The stages this job runs, dependencies included, in DAG order.
    pub fn planned_stages(&self) -> Vec<Stage> {
        crate::stage::with_dependencies(&self.stages)
    }
}

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// RecBole atomic files: `.inter` (+ `.item` for meta).
    Recbole,
    /// McAuley Amazon raw JSON lines, 2018 release (reviews + meta).
    Mcauley2018,
    /// McAuley Amazon raw, 2014 release (JSON reviews; meta as Python dict literals).
    Mcauley2014,
}

/// `[data]`: what to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// `recbole`, `mcauley2018` or `mcauley2014`.
    pub format: DataFormat,
    /// Interactions: a RecBole `.inter` file or a McAuley reviews file (`.json` or `.json.gz`),
    /// local path or `s3://` URI.
    pub reviews: String,
    /// Item meta: a RecBole `.item` file or a McAuley meta file. Optional: items without meta
    /// fall back to their id as text.
    #[serde(default)]
    pub meta: Option<String>,
    /// `fail` (default): a malformed line stops the job naming file and line.
    /// `skip`: malformed lines are skipped and counted in the summary.
    #[serde(default)]
    pub on_error: OnError,
}

/// `[prepare]`: preprocessing, deterministic for a seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrepareSection {
    /// Keep only users and items with at least this many interactions, iterated to a fixed point.
    pub k_core: u32,
    /// Keep at most this many of the most recent training items per user (0 = no limit).
    pub max_history: u32,
    /// Size of the sampled user subset U' that the teacher is asked about.
    pub teacher_sample: u32,
    /// Seed for every random choice of the job (sampling, splits of ties are stable instead).
    pub seed: u64,
    /// Users per shard: the unit of work of the teacher, student and encode stages.
    pub users_per_shard: u32,
    /// Keep only the first N users after filtering (0 = all): for demos and quick runs.
    pub max_users: u32,
}

impl Default for PrepareSection {
    fn default() -> Self {
        Self {
            k_core: 5,
            max_history: 50,
            teacher_sample: 1000,
            seed: 42,
            users_per_shard: 1000,
            max_users: 0,
        }
    }
}

/// Where the teacher's answers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherBackend {
    /// Any OpenAI-compatible chat-completions endpoint.
    Openai,
    /// The in-process LLM engine.
    Local,
    /// No model: three-step answers built from the prompt's purchases (rehearsals and tests;
    /// see `slim_worker::chat::rehearsal`).
    Rehearsal,
}

/// `[teacher]`: the large model that writes rationales for U'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherSection {
    pub backend: TeacherBackend,
    /// Model name (openai) or model path (local: GGUF file or safetensors folder).
    pub model: String,
    /// Base URL of the OpenAI-compatible API, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// Name of the environment variable holding the API key (the key itself never goes here).
    pub api_key_env: Option<String>,
    pub max_new_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// Requests per minute (0 = unlimited).
    pub requests_per_minute: u32,
    /// Tokens per minute (0 = unlimited).
    pub tokens_per_minute: u32,
    pub timeout_secs: u64,
    pub max_retries: u32,
    /// Retries of answers that cannot be parsed into three steps.
    pub parse_retries: u32,
    /// Token budget of the history part of the prompt (oldest items dropped first).
    pub history_token_budget: u32,
    /// USD per million prompt tokens, for the cost estimate.
    pub prompt_price_per_mtok: f64,
    /// USD per million completion tokens.
    pub completion_price_per_mtok: f64,
    /// Prompt template override (default: the three-step chain-of-thought prompt).
    pub prompt_template: Option<String>,
}

impl Default for TeacherSection {
    fn default() -> Self {
        Self {
            backend: TeacherBackend::Local,
            model: "models/smollm2-135m-instruct".into(),
            base_url: None,
            api_key_env: None,
            max_new_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            concurrency: 16,
            requests_per_minute: 0,
            tokens_per_minute: 0,
            timeout_secs: 120,
            max_retries: 5,
            parse_retries: 2,
            history_token_budget: 1024,
            prompt_price_per_mtok: 0.0,
            completion_price_per_mtok: 0.0,
            prompt_template: None,
        }
    }
}

/// `[student]`: the small model distilled with LoRA (the `distill` stage trains it on the
/// teacher's rationales; the `student` stage runs it for every user).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentSection {
    /// Base model path (GGUF file, a folder holding one, or a safetensors folder).
    pub base_model: String,
    pub lora_rank: u32,
    pub lora_alpha: f32,
    pub lora_dropout: f32,
    /// Projections that get adapters: any of q, k, v, o, gate, up, down.
    pub lora_targets: Vec<String>,
    pub learning_rate: f64,
    pub epochs: u32,
    /// Examples per micro-batch.
    pub batch_size: u32,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation: u32,
    /// Linear warm-up steps before the cosine decay.
    pub warmup_steps: u32,
    /// Prompt plus answer tokens per training example (the prompt loses its oldest tokens).
    pub max_seq_len: u32,
    /// Share of the teacher's rationales held out for validation loss.
    pub validation_fraction: f32,
    /// A checkpoint goes to the store every this many optimizer steps (and at each epoch's
    /// end); a restarted distill task resumes from the last one.
    pub checkpoint_every: u32,
    /// Longest rationale the student writes, in tokens.
    pub max_new_tokens: u32,
    /// Users generated together in one batch by the student stage.
    pub generation_batch: u32,
    /// Tokens of purchase history a student prompt may hold (oldest items dropped first).
    pub history_token_budget: u32,
    /// Prompt template override for the student (default: the simplified prompt).
    pub prompt_template: Option<String>,
}

impl Default for StudentSection {
    fn default() -> Self {
        Self {
            base_model: "models/smollm2-135m-instruct".into(),
            lora_rank: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            lora_targets: ["q", "k", "v", "o"].map(String::from).to_vec(),
            learning_rate: 2e-4,
            epochs: 1,
            batch_size: 4,
            gradient_accumulation: 1,
            warmup_steps: 10,
            max_seq_len: 512,
            validation_fraction: 0.1,
            checkpoint_every: 20,
            max_new_tokens: 256,
            generation_batch: 16,
            history_token_budget: 256,
            prompt_template: None,
        }
    }
}

/// `[encoder]`: the BERT-style text encoder for rationales and item text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderSection {
    /// Safetensors folder (config.json, model.safetensors, tokenizer.json).
    pub model: String,
    pub batch_size: u32,
    /// Truncation length in tokens (0 = the model's maximum).
    pub max_length: u32,
    /// Include the item description in item text.
    pub include_description: bool,
}

impl Default for EncoderSection {
    fn default() -> Self {
        Self {
            model: "models/all-minilm-l6-v2".into(),
            batch_size: 64,
            max_length: 256,
            include_description: false,
        }
    }
}

/// `[train]`: the sequential recommenders and their evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSection {
    /// Any of gru4rec, sasrec, srgnn.
    pub backbones: Vec<String>,
    /// Any of id, plus, slim, slim_minus, slim_agnostic, step1, step2, step3, popularity.
    /// `id` and `plus` (ID + item text) and the ID-based SLIM fusion `slim` (student
    /// rationales) and `slim_minus` (teacher rationales) run on every backbone; the ID-agnostic
    /// `slim_agnostic` and its `step1`..`step3` ablations (a transformer over text vectors, no
    /// backbone) run once per seed; `popularity` once. Text variants need the encode stage's
    /// vectors; users without a rationale vector get a learned default.
    pub variants: Vec<String>,
    pub seeds: Vec<u64>,
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub embedding_dim: u32,
    /// Sampled negatives per positive in training.
    pub train_negatives: u32,
    /// Random negatives per test user in evaluation (the paper: 100).
    pub eval_negatives: u32,
    /// Epochs without validation NDCG@10 improvement before stopping.
    pub patience: u32,
}

impl Default for TrainSection {
    fn default() -> Self {
        Self {
            backbones: vec!["sasrec".into()],
            variants: ["id", "plus", "slim", "popularity"]
                .map(String::from)
                .to_vec(),
            seeds: vec![1, 2, 3, 4, 5],
            epochs: 50,
            batch_size: 256,
            learning_rate: 1e-3,
            embedding_dim: 64,
            train_negatives: 1,
            eval_negatives: 100,
            patience: 5,
        }
    }
}

/// `[probe]`: the model-free `probe` stage, for rehearsing a deployment: simulated work and
/// deliberate failures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSection {
    /// Milliseconds each probe task waits before writing, to simulate work.
    pub work_ms: u64,
    /// Shards whose probe task always fails: rehearses dead-lettering and `slim retry`.
    pub fail_shards: Vec<u32>,
}

/// A manifest loaded from disk, with the folder its relative paths are resolved against.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    pub manifest: Manifest,
    /// The file it came from (`<embedded>` for built-in manifests).
    pub source: String,
    /// Folder that relative paths are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedManifest {
    /// Reads and validates a manifest file; every problem is reported at once.
    pub fn load(path: &Path) -> Result<Self, Problems> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Problems::single(Problem::new(
                "",
                format!("cannot read {}: {e}", path.display()),
            ))
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_str(&text, &path.display().to_string(), base_dir)
    }

    /// Parses and validates manifest text whose relative paths resolve against `base_dir`.
    pub fn from_str(text: &str, source: &str, base_dir: PathBuf) -> Result<Self, Problems> {
        let manifest = validate::parse_and_validate(text, &base_dir)
            .map_err(|problems| problems.in_file(source))?;
        Ok(Self {
            manifest,
            source: source.to_string(),
            base_dir,
        })
    }

    /// The job's output root (`{output}`), parsed.
    pub fn output_root(&self) -> Location {
        Location::parse(&self.manifest.job.output, &self.base_dir).expect("validated at load time")
    }

    /// The job's own prefix inside the output root: `{job_id}`.
    pub fn job_id(&self) -> &str {
        &self.manifest.job.id
    }

    /// A data path from the manifest, resolved.
    pub fn resolve(&self, path: &str) -> Location {
        Location::parse(path, &self.base_dir).expect("validated at load time")
    }

    /// The manifest with every path made absolute (local paths against the current directory),
    /// so it means the same to a worker on another machine or in another folder. This is what
    /// a job stores as `{job}/job.json`.
    pub fn resolved(&self) -> Manifest {
        let absolute = |text: &str| match Location::parse(text, &self.base_dir) {
            Ok(Location::Local(path)) => std::path::absolute(&path)
                .unwrap_or(path)
                .display()
                .to_string(),
            _ => text.to_string(),
        };
        let mut manifest = self.manifest.clone();
        manifest.job.output = absolute(&manifest.job.output);
        manifest.data.reviews = absolute(&manifest.data.reviews);
        manifest.data.meta = manifest.data.meta.as_deref().map(absolute);
        // A local teacher's model is a path; a remote teacher's is a name.
        if manifest.teacher.backend == TeacherBackend::Local {
            manifest.teacher.model = absolute(&manifest.teacher.model);
        }
        manifest.student.base_model = absolute(&manifest.student.base_model);
        manifest.encoder.model = absolute(&manifest.encoder.model);
        manifest
    }

    /// A manifest whose paths are already absolute (see [`LoadedManifest::resolved`]).
    pub fn from_resolved(manifest: Manifest, source: &str) -> Self {
        Self {
            manifest,
            source: source.to_string(),
            base_dir: PathBuf::from("/"),
        }
    }
}
