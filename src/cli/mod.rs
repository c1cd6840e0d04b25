//! Command-line flags and the dispatch from subcommands to library calls.

mod bench;
mod cluster;
mod embed;
mod generate;
mod prepare;
mod run;
mod serve;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use slim_shared::manifest::LoadedManifest;
use slim_shared::stage::Stage;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The demo manifest, built in so `slim run` works with no file at all. Its relative paths
/// resolve as if it were `jobs/demo.toml`, so `slim run` works from the repository root.
pub const DEMO_MANIFEST: &str = include_str!("../../jobs/demo.toml");

#[derive(Parser, Debug)]
#[command(
    name = "slim",
    version,
    about = "Distil an LLM's recommendation reasoning into a small model and use it to improve sequential recommenders."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SLIM_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Manifest values that can be replaced from the command line.
#[derive(Args, Debug)]
pub struct Overrides {
    /// Output root instead of the manifest's `job.output` (local path or s3://bucket/prefix).
    #[arg(long)]
    pub output: Option<String>,
    /// Stages to run (with the stages they depend on) instead of the manifest's `job.stages`,
    /// comma-separated, e.g. `--stages prepare` or `--stages teacher`.
    #[arg(long, value_delimiter = ',', value_parser = parse_stage)]
    pub stages: Option<Vec<Stage>>,
}

fn parse_stage(text: &str) -> Result<Stage, String> {
    Stage::ALL
        .into_iter()
        .find(|s| s.name() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
            format!("no stage {text:?}; stages: {}", names.join(", "))
        })
}

impl Overrides {
    fn apply(&self, loaded: &mut LoadedManifest) -> Result<()> {
        if let Some(output) = &self.output {
            // A relative override is relative to where the command runs, not to the manifest.
            let output = if output.starts_with("s3://") {
                output.clone()
            } else {
                std::path::absolute(output)
                    .with_context(|| format!("--output {output}"))?
                    .display()
                    .to_string()
            };
            slim_shared::store::Location::parse(&output, Path::new("."))
                .with_context(|| format!("--output {output}"))?;
            loaded.manifest.job.output = output;
        }
        if let Some(stages) = &self.stages {
            loaded.manifest.job.stages = stages.clone();
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole job in this process (embedded queue, local store). Without FILE, the built-in
    /// demo on the bundled Video Games sample.
    Run {
        /// Job manifest (TOML).
        file: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
        /// Hide progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Check a job manifest and report every problem at once.
    Validate {
        /// Job manifest (TOML).
        file: PathBuf,
    },
    /// Run the prepare stage: ingest, dedupe, k-core, split, sample, shard; write data/*.parquet.
    Prepare {
        /// Job manifest (TOML).
        file: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
        /// Hide progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Submit a job to the cluster: store it in its output root, where the coordinator of that
    /// store picks it up. Submitting a job again resumes it.
    Submit {
        /// Job manifest (TOML).
        file: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run the coordinator: drives every job submitted to its store (until SIGTERM).
    Coordinator {
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
        /// Milliseconds between looks at the store when no event arrives.
        #[arg(long, env = "SLIM_POLL_MS", default_value_t = 1000)]
        poll_ms: u64,
        /// Exit once no registered job is left: 0 when every job it drove succeeded, 1 when
        /// one failed, 2 when stopped before the end (for a Kubernetes Job).
        #[arg(long, env = "SLIM_UNTIL_DONE")]
        until_done: bool,
    },
    /// Run a worker: takes tasks from RabbitMQ and runs them (until SIGTERM).
    Worker {
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
        #[command(flatten)]
        worker: cluster::WorkerArgs,
    },
    /// Show a job's progress per stage, failures, throughput and ETA.
    Status(cluster::StatusArgs),
    /// Retry a failed job: clear its failures and hand it back to the coordinator.
    Retry {
        /// The job id.
        job: String,
        /// The store root that holds the job.
        #[arg(long, env = "SLIM_STORE")]
        store: String,
    },
    /// Aggregate a job's train runs over seeds (train/metrics.parquet, train/report.md, SVG
    /// plots) and print the report.
    Report {
        /// The job id.
        job: String,
        /// The store root that holds the job (the output root of its manifest).
        #[arg(long, env = "SLIM_STORE", default_value = "out")]
        store: String,
    },
    /// Serve a local model over an OpenAI-compatible HTTP API (/v1/chat/completions,
    /// /v1/models, /healthz).
    Serve(serve::ServeArgs),
    /// Generate text with a local model (prints only the generated text).
    Generate(generate::GenerateArgs),
    /// Embed texts with the text encoder: one JSON array per text.
    Embed(embed::EmbedArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// The distributed runtime's throughput and per-task overhead next to raw lapin (needs
    /// RabbitMQ).
    Runtime(bench::RuntimeBenchArgs),
    /// Text encoder throughput (sentences/s) on the Video Games item titles.
    Encode(bench::EncodeBenchArgs),
    /// LLM prefill and decode tokens/s at several batch sizes, and peak memory.
    Generate(bench::GenerateBenchArgs),
    /// LoRA fine-tuning tokens/s and peak memory on the student base model.
    Finetune(bench::FinetuneBenchArgs),
}

pub fn init_logging(args: &LogArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Validate { file } => validate(&file),
        Command::Prepare {
            file,
            overrides,
            quiet,
        } => {
            let mut loaded = load(&file)?;
            overrides.apply(&mut loaded)?;
            prepare::run(&loaded, !quiet).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            file,
            overrides,
            quiet,
        } => {
            let mut loaded = match file {
                Some(file) => load(&file)?,
                None => LoadedManifest::from_str(
                    DEMO_MANIFEST,
                    "<built-in demo>",
                    PathBuf::from("jobs"),
                )
                .map_err(|problems| anyhow::anyhow!("{problems}"))
                .context("the built-in demo manifest expects to run from the repository root")?,
            };
            overrides.apply(&mut loaded)?;
            run::run(loaded, !quiet).await
        }
        Command::Submit { file, overrides } => {
            let mut loaded = load(&file)?;
            overrides.apply(&mut loaded)?;
            cluster::submit(&loaded).await
        }
        Command::Coordinator {
            cluster,
            poll_ms,
            until_done,
        } => {
            let poll = std::time::Duration::from_millis(poll_ms.max(10));
            cluster::coordinator(&cluster, poll, until_done).await
        }
        Command::Worker { cluster, worker } => cluster::worker(&cluster, &worker).await,
        Command::Status(args) => cluster::status(&args).await,
        Command::Retry { job, store } => cluster::retry(&job, &store).await,
        Command::Bench(BenchCommand::Runtime(args)) => {
            bench::runtime(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Encode(args)) => {
            bench::encode(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Finetune(args)) => {
            bench::finetune(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Generate(args)) => {
            bench::generate(&args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Embed(args) => {
            embed::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(args) => {
            generate::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            serve::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { job, store } => cluster::report(&job, &store).await,
    }
}

fn load(file: &Path) -> Result<LoadedManifest> {
    LoadedManifest::load(file).map_err(|problems| anyhow::anyhow!("{problems}"))
}

fn validate(file: &Path) -> Result<ExitCode> {
    match LoadedManifest::load(file) {
        Ok(loaded) => {
            println!(
                "{}: ok (job {}, output {})",
                file.display(),
                loaded.job_id(),
                loaded.output_root()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            print!("{problems}");
            Ok(ExitCode::FAILURE)
        }
    }
}
