//! `slim bench runtime`: what the distributed runtime costs per task. A job of N no-op tasks
//! runs through the real coordinator driver and W in-process workers, each on its own RabbitMQ
//! connection, against a local store (markers fsynced, as always); next to it, in the same run,
//! raw lapin moves N messages through a quorum queue (publish with confirms, consume, ack) with
//! the same consumer count and prefetch. The peer is the floor: the runtime adds events, task
//! markers, redelivery checks and the coordinator's bookkeeping on top of it.
//!
//! - Settings: the workers are tuned for short tasks, as a pool of them would be (`slim worker
//!   --prefetch 16 --concurrency 4`), not run with `slim worker`'s defaults (1 and 1, meant for
//!   long tasks): a no-op is the shortest task there is. `--concurrency 1` runs one task at a
//!   time per worker, as raw lapin's consumers do.
//! - Timing: raw lapin from its first publish to its last ack, with its queue declared and its
//!   consumers subscribed beforehand; the runtime from the driver's start to the job's end
//!   (stage closed, `_SUCCESS` written), so it also pays the driver's few queue declarations
//!   (milliseconds). Raw lapin's clock stops at its last ack, not when every consumer has
//!   noticed the end (which once added up to 200 ms to it and flattered the ratio).
//! - The store: each task's marker costs an fsync of the file and a share of an fsync of its
//!   directory, so on a disk the runtime's rate is bounded by the fsyncs per second the disk
//!   does (ext4 on the 2-core dev VM: about 3,000 with 16 writers). `--dir /dev/shm` measures
//!   the runtime without the disk.

use anyhow::{Context, Result};
use async_trait::async_trait;
use clap::Args;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use slim_coordinator::driver::{self, DriveOptions};
use slim_coordinator::{Runtime, jobs};
use slim_shared::manifest::LoadedManifest;
use slim_shared::queue::amqp::{AmqpConfig, AmqpQueue};
use slim_shared::queue::{TaskQueue, Topology};
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings};
use slim_worker::executor::{Registry, StageExecutor, TaskContext, TaskResult};
use slim_worker::serve::{Worker, WorkerConfig};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct RuntimeBenchArgs {
    /// Tasks in the job (and messages through raw lapin).
    #[arg(long, default_value_t = 10_000)]
    pub tasks: u32,
    /// Worker loops (each with its own connection), and raw lapin consumers.
    #[arg(long, default_value_t = 4)]
    pub workers: u16,
    /// Prefetch per consumer, for both.
    #[arg(long, default_value_t = 16)]
    pub prefetch: u16,
    /// Tasks each worker runs at once (`slim worker --concurrency`; 4 suits short tasks).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    #[arg(
        long,
        env = "SLIM_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    /// Folder for the job's input and its local store (a temporary folder inside it, removed
    /// afterwards). Markers are fsynced, so the disk under it can bound the runtime's rate; a
    /// tmpfs (`/dev/shm`) takes the disk out of the measurement.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub dir: std::path::PathBuf,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    tasks: u32,
    workers: u16,
    prefetch: u16,
    concurrency: usize,
    /// Where the local store was (see `--dir`).
    dir: std::path::PathBuf,
    raw_lapin_msgs_per_sec: f64,
    runtime_tasks_per_sec: f64,
    runtime_vs_raw: f64,
    /// Wall time per task per worker (process): every millisecond of it is overhead, the stage
    /// does nothing. With concurrency above 1, one task's latency is this times concurrency.
    per_task_overhead_ms: f64,
    runtime_secs: f64,
    raw_secs: f64,
}

/// A stage that does nothing, so all that is measured is the runtime around it.
struct Noop;

#[async_trait]
impl StageExecutor for Noop {
    fn stage(&self) -> Stage {
        Stage::Probe
    }
    async fn execute(&self, _ctx: &TaskContext) -> Result<TaskResult> {
        Ok(TaskResult::default())
    }
}

pub async fn runtime(args: &RuntimeBenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.tasks > 0 && args.workers > 0 && args.prefetch > 0,
        "--tasks, --workers and --prefetch must be positive"
    );
    let prefix = format!("slim-bench-{}", std::process::id());
    let dir = tempfile::tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;

    eprintln!("preparing a job of {} one-user shards...", args.tasks);
    let loaded = synthetic_job(dir.path(), args.tasks)?;
    let store = store::open(
        &Location::Local(dir.path().join("out")),
        &S3Settings::default(),
    )
    .await?;
    jobs::store_manifest(store.as_ref(), &loaded).await?;
    let prepare = Registry::builtin();
    let ctx = TaskContext {
        job: Arc::new(loaded.clone()),
        store: store.clone(),
        shard: 0,
        attempt: 1,
        progress: false,
    };
    slim_worker::executor::run_task(&prepare, &ctx, Stage::Prepare).await?;

    eprintln!(
        "raw lapin: {} messages, {} consumers...",
        args.tasks, args.workers
    );
    let raw_secs = raw_lapin(args, &format!("{prefix}.raw")).await?;

    eprintln!(
        "slim runtime: {} tasks, {} workers...",
        args.tasks, args.workers
    );
    let topology = Topology {
        prefix: prefix.clone(),
        prefetch: args.prefetch,
        ..Topology::default()
    };
    let connect = || async {
        let mut config = AmqpConfig::new(args.amqp.clone());
        config.reconnect_budget = Duration::from_secs(10);
        anyhow::Ok(Arc::new(AmqpQueue::connect(config).await?) as Arc<dyn TaskQueue>)
    };
    let rt = Runtime {
        queue: connect().await?,
        store: store.clone(),
        topology: topology.clone(),
        poll_interval: Duration::from_millis(200),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.workers {
        let mut registry = Registry::default();
        registry.register(Arc::new(Noop));
        let worker = Arc::new(Worker::new(
            connect().await?,
            store.clone(),
            registry,
            WorkerConfig {
                topology: topology.clone(),
                stages: vec![Stage::Probe],
                grace: Duration::ZERO,
                concurrency: args.concurrency,
                progress: false,
            },
        ));
        workers.spawn(worker.run(stopped.clone()));
    }
    let started = Instant::now();
    let outcome = driver::drive(&rt, loaded.job_id(), DriveOptions::default()).await?;
    let runtime_secs = started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    while let Some(joined) = workers.join_next().await {
        joined??;
    }
    anyhow::ensure!(
        outcome.state.phase == slim_shared::markers::JobPhase::Succeeded,
        "the benchmark job did not succeed: {:?}",
        outcome.state.message
    );
    rt.queue.delete(&topology.tasks(Stage::Probe)).await?;
    rt.queue.delete(&topology.tasks(Stage::Prepare)).await?;

    let raw_rate = f64::from(args.tasks) / raw_secs;
    let runtime_rate = f64::from(args.tasks) / runtime_secs;
    let results = Results {
        tasks: args.tasks,
        workers: args.workers,
        prefetch: args.prefetch,
        concurrency: args.concurrency,
        dir: args.dir.clone(),
        raw_lapin_msgs_per_sec: raw_rate,
        runtime_tasks_per_sec: runtime_rate,
        runtime_vs_raw: runtime_rate / raw_rate,
        per_task_overhead_ms: runtime_secs * 1000.0 * f64::from(args.workers)
            / f64::from(args.tasks),
        runtime_secs,
        raw_secs,
    };
    println!(
        "raw lapin {:.0} msg/s; slim runtime {:.0} tasks/s ({:.0}% of raw); per-task overhead {:.2} ms per worker",
        results.raw_lapin_msgs_per_sec,
        results.runtime_tasks_per_sec,
        results.runtime_vs_raw * 100.0,
        results.per_task_overhead_ms
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A RecBole file of `users` users with three interactions each, and a manifest that runs
/// only `probe` on it with one user per shard.
fn synthetic_job(dir: &Path, users: u32) -> Result<LoadedManifest> {
    let inter = dir.join("bench.inter");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&inter)?);
    writeln!(
        file,
        "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    )?;
    for user in 0..users {
        for step in 0..3u32 {
            writeln!(
                file,
                "u{user}\ti{}\t5\t{}",
                (user + step) % 50,
                1_000 + step
            )?;
        }
    }
    file.flush()?;
    let manifest = format!(
        r#"
[job]
id = "bench"
output = "{out}"
stages = ["probe"]
[data]
format = "recbole"
reviews = "{inter}"
[prepare]
k_core = 1
users_per_shard = 1
"#,
        out = dir.join("out").display(),
        inter = inter.display()
    );
    LoadedManifest::from_str(&manifest, "<bench>", dir.to_path_buf())
        .map_err(|problems| anyhow::anyhow!("{problems}"))
}

/// Publishes `args.tasks` messages with confirms (pipelined) and consumes them with
/// `args.workers` consumers, acking each; returns the seconds from first publish to last ack.
async fn raw_lapin(args: &RuntimeBenchArgs, queue: &str) -> Result<f64> {
    let props = ConnectionProperties::default();
    let publisher = Connection::connect(&args.amqp, props.clone()).await?;
    let channel = publisher.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut queue_args = FieldTable::default();
    queue_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(queue.into(), QueueDeclareOptions::durable(), queue_args)
        .await?;
    let body = slim_shared::messages::TaskMessage::new("bench", "probe", 0, 0).encode();

    let total = args.tasks as usize;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Turned true by the consumer that acks the last message: the clock stops there, not when
    // the other consumers notice.
    let (all_acked, acked) = tokio::sync::watch::channel(false);
    let all_acked = Arc::new(all_acked);
    let mut consumers = tokio::task::JoinSet::new();
    for i in 0..args.workers {
        let connection = Connection::connect(&args.amqp, props.clone()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("raw-{i}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let received = received.clone();
        let all_acked = all_acked.clone();
        let mut acked = acked.clone();
        consumers.spawn(async move {
            let _connection = connection;
            loop {
                let delivery = tokio::select! {
                    _ = acked.wait_for(|&done| done) => return anyhow::Ok(()),
                    next = consumer.next() => next.context("the raw consumer ended")??,
                };
                delivery.ack(BasicAckOptions::default()).await?;
                if received.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == total {
                    all_acked.send_replace(true);
                }
            }
        });
    }
    let started = Instant::now();
    let publishes = futures::stream::iter(0..total).map(|_| {
        let channel = &channel;
        let body = &body;
        async move {
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            anyhow::Ok(())
        }
    });
    let mut publishes = publishes.buffer_unordered(256);
    while let Some(published) = publishes.next().await {
        published?;
    }
    let mut acked = acked;
    tokio::select! {
        _ = acked.wait_for(|&done| done) => {}
        // A consumer only returns before the end on an error.
        Some(joined) = consumers.join_next() => joined??,
    }
    let secs = started.elapsed().as_secs_f64();
    while let Some(joined) = consumers.join_next().await {
        joined??;
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    Ok(secs)
}

#[derive(Args, Debug, Clone)]
pub struct EncodeBenchArgs {
    /// A RecBole `.item` file with a `title` column.
    #[arg(long, default_value = "../shared/data/amazon/Video_Games/Games.item")]
    pub items: std::path::PathBuf,
    /// Encoder model folder.
    #[arg(long, default_value = "models/all-minilm-l6-v2")]
    pub model: std::path::PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Only the first N titles (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
}

/// Sentences per second of the text encoder on item titles, printed as one JSON line (the
/// same shape as `benches/encode_peer.py` prints for sentence-transformers).
pub async fn encode(args: &EncodeBenchArgs) -> Result<()> {
    let args = args.clone();
    tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&args.items)
            .with_context(|| format!("reading {}", args.items.display()))?;
        let mut lines = text.lines();
        let header = lines.next().context("empty item file")?;
        let column = header
            .split('\t')
            .position(|c| c.split(':').next() == Some("title"))
            .with_context(|| format!("{}: no title column", args.items.display()))?;
        let mut titles: Vec<&str> = lines
            .filter_map(|l| l.split('\t').nth(column))
            .filter(|t| !t.trim().is_empty())
            .collect();
        if args.limit > 0 {
            titles.truncate(args.limit);
        }
        let device = slim_worker::backend::device();
        let encoder = slim_worker::encoder::TextEncoder::<slim_worker::backend::Backend>::load(
            &args.model,
            0,
            &device,
        )?;
        // One warm-up batch, as the peer's first call also pays its one-time costs.
        encoder.encode(
            &titles[..titles.len().min(args.batch_size)],
            args.batch_size,
        )?;
        let started = Instant::now();
        let vectors = encoder.encode(&titles, args.batch_size)?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(vectors.len() == titles.len(), "lost sentences");
        println!(
            "{}",
            serde_json::json!({
                "tool": "slim",
                "backend": slim_worker::backend::NAME,
                "sentences": titles.len(),
                "seconds": seconds,
                "sentences_per_sec": titles.len() as f64 / seconds,
                "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                "batch_size": args.batch_size,
            })
        );
        Ok(())
    })
    .await?
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateBenchArgs {
    /// Model (GGUF file or Hugging Face folder). Default: SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Batch sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batches: Vec<usize>,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// New tokens per prompt (no stop tokens: every row decodes this many).
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Also write the results here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub async fn generate(args: &GenerateBenchArgs) -> Result<()> {
    use slim_worker::llm::generate::{Sampling, generate_batch_timed};
    let args = args.clone();
    tokio::task::spawn_blocking(move || {
        let model = args
            .model
            .clone()
            .unwrap_or_else(slim_worker::llm::default_model_path);
        let engine = slim_worker::llm::Engine::<slim_worker::backend::Backend>::load(
            &model,
            &slim_worker::backend::device(),
        )?;
        // Real English text, cycled to the prompt length; each row starts elsewhere so rows differ.
        let text = "Recommend the next video game for a player who recently bought a racing wheel, \
                    two open-world adventure games, a rhythm game and a puzzle collection. Explain \
                    the player's preferences, the categories and brands they favour, and which items fit.";
        let base = engine.tokenizer.encode(text)?;
        let prompt = |row: usize| -> Vec<u32> {
            (0..args.prompt_tokens).map(|i| base[(i + row * 7) % base.len()]).collect()
        };
        let sampling = Sampling {
            max_new_tokens: args.new_tokens,
            ..Sampling::default()
        };
        // Warm-up: first calls pay allocation and thread-pool start-up.
        generate_batch_timed(&engine.model, &[prompt(0)], &Sampling { max_new_tokens: 4, ..sampling.clone() }, &[])?;
        let mut rows = Vec::new();
        for &batch in &args.batches {
            let prompts: Vec<Vec<u32>> = (0..batch).map(prompt).collect();
            let (generated, timings) = generate_batch_timed(&engine.model, &prompts, &sampling, &[])?;
            let new_tokens: usize = generated.iter().map(|g| g.tokens.len()).sum();
            // The first new token of each row comes from the prefill pass.
            let decoded = new_tokens - batch;
            let row = serde_json::json!({
                "batch": batch,
                "prompt_tokens": args.prompt_tokens,
                "new_tokens": args.new_tokens,
                "prefill_tokens_per_sec": (batch * args.prompt_tokens) as f64 / timings.prefill_seconds,
                "decode_tokens_per_sec": decoded as f64 / timings.decode_seconds,
                "decode_ms_per_step": 1000.0 * timings.decode_seconds / timings.decode_steps.max(1) as f64,
                "peak_rss_mib": peak_rss_mib(),
            });
            println!("{row}");
            rows.push(row);
        }
        let result = serde_json::json!({
            "tool": "slim",
            "backend": slim_worker::backend::NAME,
            "model": model.display().to_string(),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "runs": rows,
        });
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&result)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
    .await?
}

#[derive(clap::Args, Debug, Clone)]
pub struct FinetuneBenchArgs {
    /// Base model (GGUF file or Hugging Face folder). Default: SmolLM2-135M-Instruct.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Tokens per sequence (every sequence has exactly this many; the answer is the last half).
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed optimizer steps (after one warm-up step).
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA target projections, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o")]
    pub targets: Vec<String>,
    /// Also write the results here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// LoRA training tokens/s and peak memory on the real base model, with the settings
/// benches/finetune_peer.py gives PyTorch + PEFT.
pub async fn finetune(args: &FinetuneBenchArgs) -> Result<()> {
    use slim_worker::backend::Train;
    use slim_worker::llm::finetune::{Example, FinetuneConfig, finetune};
    use slim_worker::llm::lora::{LoraAdapters, LoraConfig, Target};
    let args = args.clone();
    tokio::task::spawn_blocking(move || {
        let model = args
            .model
            .clone()
            .unwrap_or_else(slim_worker::llm::default_model_path);
        let device = slim_worker::backend::device();
        let engine = slim_worker::llm::Engine::<Train>::load(&model, &device)?;
        let text = "Recommend the next video game for a player who recently bought a racing wheel, \
                    two open-world adventure games, a rhythm game and a puzzle collection. Explain \
                    the player's preferences, the categories and brands they favour, and which items fit.";
        let base = engine.tokenizer.encode(text)?;
        let half = args.seq_len / 2;
        let example = |row: usize| {
            let ids: Vec<u32> = (0..args.seq_len)
                .map(|i| base[(i + row * 7) % base.len()])
                .collect();
            Example {
                prompt: ids[..half].to_vec(),
                answer: ids[half..].to_vec(),
            }
        };
        let lora = LoraConfig {
            rank: args.rank,
            alpha: 2.0 * args.rank as f32,
            dropout: 0.0,
            targets: args
                .targets
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>>>()?,
        };
        let config = FinetuneConfig {
            learning_rate: 1e-4,
            epochs: 1,
            batch_size: args.batch,
            accumulation: 1,
            warmup_steps: 1,
            max_seq_len: args.seq_len,
            seed: 1,
            ..FinetuneConfig::default()
        };
        let examples: Vec<Example> = (0..args.steps * args.batch).map(example).collect();
        let adapters = LoraAdapters::init(&engine.model, &lora, 1, &device)?;
        // Warm-up: one step pays allocation and thread-pool start-up.
        let (adapters, _) = finetune(&engine.model, adapters, &examples[..args.batch], &[], &config)?;
        let started = std::time::Instant::now();
        let (_, history) = finetune(&engine.model, adapters, &examples, &[], &config)?;
        let seconds = started.elapsed().as_secs_f64();
        let tokens = (args.steps * args.batch * args.seq_len) as f64;
        let result = serde_json::json!({
            "tool": "slim",
            "backend": slim_worker::backend::NAME,
            "model": model.display().to_string(),
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "seq_len": args.seq_len,
            "batch": args.batch,
            "steps": history.len(),
            "rank": args.rank,
            "targets": args.targets,
            "train_tokens_per_sec": tokens / seconds,
            "seconds_per_step": seconds / args.steps as f64,
            "last_loss": history.last().map(|p| p.train_loss),
            "peak_rss_mib": peak_rss_mib(),
        });
        println!("{result}");
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&result)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
    .await?
}
