//! The cluster commands: `slim submit`, `slim coordinator`, `slim worker`, `slim status`,
//! `slim retry`. They share how to reach the broker and the store ([`ClusterArgs`]).
//!
//! The coordinator and workers also serve `/metrics` (Prometheus), `/healthz` and `/readyz`
//! on `--metrics-addr` ([`serve_telemetry`]); docs/operations.md describes them.

use anyhow::{Context, Result};
use clap::Args;
use slim_coordinator::{Runtime, jobs, service, status};
use slim_shared::manifest::LoadedManifest;
use slim_shared::markers::JobPhase;
use slim_shared::queue::amqp::{AmqpConfig, AmqpQueue};
use slim_shared::queue::{TaskQueue, Topology};
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings, Store};
use slim_shared::telemetry;
use slim_worker::executor::Registry;
use slim_worker::serve::{StopWhen, Worker, WorkerConfig};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How to reach the broker and the store, shared by every cluster command. Every flag can
/// come from the environment, as containers are usually configured.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "SLIM_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp: String,
    /// The store root that holds the jobs: a local path or s3://bucket/prefix. S3 endpoint,
    /// region and credentials come from the AWS_* environment variables.
    #[arg(long, env = "SLIM_STORE")]
    pub store: String,
    /// Prefix of every queue name, so several deployments can share one broker.
    #[arg(long, env = "SLIM_QUEUE_PREFIX", default_value = "slim")]
    pub queue_prefix: String,
    /// Deliveries of a task before it is dead-lettered (coordinator and workers must agree).
    #[arg(long, env = "SLIM_DELIVERY_LIMIT", default_value_t = 5)]
    pub delivery_limit: u32,
    /// Hours a worker may hold one task before the broker takes it back.
    #[arg(long, env = "SLIM_TASK_TIMEOUT_HOURS", default_value_t = 12)]
    pub task_timeout_hours: u64,
    /// Where to serve /metrics (Prometheus text format), /healthz and /readyz: HOST:PORT (port
    /// 0 picks a free one), or `off`. Default: 0.0.0.0:9464 for a worker, 0.0.0.0:9465 for
    /// the coordinator.
    #[arg(long, env = "SLIM_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

impl ClusterArgs {
    fn topology(&self, prefetch: u16) -> Topology {
        Topology {
            prefix: self.queue_prefix.clone(),
            delivery_limit: self.delivery_limit,
            consumer_timeout: Duration::from_secs(self.task_timeout_hours * 3600),
            prefetch,
        }
    }

    async fn store(&self) -> Result<Arc<dyn Store>> {
        open_store(&self.store).await
    }

    async fn queue(&self) -> Result<Arc<dyn TaskQueue>> {
        let queue = AmqpQueue::connect(AmqpConfig::new(self.amqp.clone()))
            .await
            .with_context(|| format!("connecting to RabbitMQ at {}", redact(&self.amqp)))?;
        Ok(Arc::new(queue))
    }

    async fn runtime(&self, prefetch: u16, poll: Duration) -> Result<Runtime> {
        Ok(Runtime {
            queue: self.queue().await?,
            store: self.store().await?,
            topology: self.topology(prefetch),
            poll_interval: poll,
        })
    }
}

async fn open_store(uri: &str) -> Result<Arc<dyn Store>> {
    let root = Location::parse(uri, Path::new(".")).with_context(|| format!("store {uri}"))?;
    let root = match root {
        Location::Local(path) => Location::Local(std::path::absolute(&path).unwrap_or(path)),
        s3 => s3,
    };
    store::open(&root, &S3Settings::default())
        .await
        .with_context(|| format!("opening the store {root}"))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// The default `--metrics-addr` of a worker.
pub const WORKER_METRICS_ADDR: &str = "0.0.0.0:9464";
/// The default `--metrics-addr` of the coordinator (another port, so both run on one host).
pub const COORDINATOR_METRICS_ADDR: &str = "0.0.0.0:9465";

/// Serves `/metrics`, `/healthz` and `/readyz` in the background on `addr` (or `default`),
/// unless it is `off`. A port already in use is logged and skipped rather than fatal, so
/// several workers can run on one machine with the default.
async fn serve_telemetry(addr: Option<&str>, default: &str, role: &str) -> Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    telemetry::register_process(role);
    let addr = addr.map(str::trim).unwrap_or(default);
    if matches!(addr.to_ascii_lowercase().as_str(), "off" | "none" | "") {
        tracing::info!("--metrics-addr off: no /metrics, /healthz or /readyz");
        return Ok(());
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                addr,
                "--metrics-addr {addr} is in use (another slim process here?): serving no /metrics, /healthz or /readyz; pass another --metrics-addr (port 0 picks a free one) or `off`"
            );
            return Ok(());
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("--metrics-addr {addr}: cannot listen there (HOST:PORT or `off`)")
            });
        }
    };
    let local = listener
        .local_addr()
        .context("the metrics listener's address")?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    telemetry::render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|| async {
                let readiness = telemetry::HEALTH.readiness();
                let status = if readiness.ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, readiness.to_string())
            }),
        );
    tracing::info!(addr = %local, role, "serving /metrics, /healthz and /readyz on http://{local}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

/// A receiver that turns true on SIGTERM or SIGINT (Ctrl-C).
fn shutdown_signal() -> Result<watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing the current work, then stopping"),
            _ = int.recv() => tracing::info!("interrupted: finishing the current work, then stopping"),
        }
        // Not ready from now on: a stopping process takes no new work.
        telemetry::HEALTH.set_stopping();
        let _ = tx.send(true);
        // Keep the sender alive so receivers see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    Ok(rx)
}

/// `slim submit`: stores the job in its output root and registers it for the coordinator.
pub async fn submit(loaded: &LoadedManifest) -> Result<ExitCode> {
    let available = Registry::builtin().stages();
    let missing: Vec<&str> = loaded
        .manifest
        .job
        .planned_stages()
        .into_iter()
        .filter(|s| !available.contains(s))
        .map(Stage::name)
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "this build of slim has no executor for the stages {}; set job.stages to the stages it can run",
        missing.join(", ")
    );
    let root = loaded.output_root();
    let store = store::open(&root, &loaded.manifest.storage)
        .await
        .with_context(|| format!("opening the output store {root}"))?;
    let job_id = loaded.job_id();
    match jobs::submit(store.as_ref(), loaded).await? {
        jobs::Submitted::Registered => println!(
            "submitted job {job_id} to the coordinator of {root}; follow it with: slim status {job_id} --store {root}"
        ),
        jobs::Submitted::AlreadySucceeded => {
            println!(
                "job {job_id} already succeeded; its outputs are in {}",
                root.join(job_id)
            )
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `slim coordinator`: drives every job registered in the store until SIGTERM or, with
/// `until_done`, until none is left.
pub async fn coordinator(args: &ClusterArgs, poll: Duration, until_done: bool) -> Result<ExitCode> {
    let shutdown = shutdown_signal()?;
    serve_telemetry(
        args.metrics_addr.as_deref(),
        COORDINATOR_METRICS_ADDR,
        "coordinator",
    )
    .await?;
    let rt = args.runtime(1, poll).await?;
    let options = service::ServiceOptions { until_done };
    Ok(match service::run_with(rt, shutdown, options).await? {
        service::Ended::Done {
            all_succeeded: true,
        } => ExitCode::SUCCESS,
        service::Ended::Done {
            all_succeeded: false,
        } => {
            eprintln!("a job failed; `slim status JOB` says why, `slim retry JOB` retries it");
            ExitCode::FAILURE
        }
        // Stopped before the end: a batch run (a Kubernetes Job) must run again to finish.
        service::Ended::Stopped if until_done => ExitCode::from(2),
        service::Ended::Stopped => ExitCode::SUCCESS,
    })
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Stages to serve, comma-separated (default: every stage this build can run).
    #[arg(long, value_delimiter = ',', env = "SLIM_STAGES")]
    pub stages: Vec<String>,
    /// Tasks held at once per stage queue: 1 for long tasks; more for short ones.
    #[arg(long, env = "SLIM_PREFETCH", default_value_t = 1)]
    pub prefetch: u16,
    /// Tasks of one stage run at once: 1 for compute-bound stages, more for stages that mostly
    /// wait (a teacher behind a remote API).
    #[arg(long, env = "SLIM_CONCURRENCY", default_value_t = 1)]
    pub concurrency: usize,
    /// Seconds the current task may run on after SIGTERM before it is requeued.
    #[arg(long, env = "SLIM_GRACE_SECS", default_value_t = 300)]
    pub grace_secs: u64,
    /// Stop (exit 0) after settling this many tasks: for one pod per task, e.g. a KEDA
    /// ScaledJob. 0: no limit.
    #[arg(long, env = "SLIM_MAX_TASKS", default_value_t = 0)]
    pub max_tasks: u64,
    /// Stop (exit 0) after this many seconds without a task. 0: never.
    #[arg(long, env = "SLIM_IDLE_EXIT_SECS", default_value_t = 0)]
    pub idle_exit_secs: u64,
}

/// `slim worker`: serves tasks until SIGTERM, then finishes or requeues the current one.
pub async fn worker(args: &ClusterArgs, worker: &WorkerArgs) -> Result<ExitCode> {
    let registry = Registry::builtin();
    let stages = if worker.stages.is_empty() {
        registry.stages()
    } else {
        worker
            .stages
            .iter()
            .map(|name| {
                Stage::parse(name.trim()).with_context(|| {
                    format!(
                        "--stages: unknown stage {name:?} (stages: {})",
                        Stage::ALL.map(Stage::name).join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?
    };
    anyhow::ensure!(worker.prefetch >= 1, "--prefetch must be at least 1");
    let shutdown = shutdown_signal()?;
    serve_telemetry(args.metrics_addr.as_deref(), WORKER_METRICS_ADDR, "worker").await?;
    let config = WorkerConfig {
        topology: args.topology(worker.prefetch),
        stages,
        grace: Duration::from_secs(worker.grace_secs),
        progress: false,
        concurrency: worker.concurrency.max(1),
    };
    let stop_when = StopWhen {
        tasks: (worker.max_tasks > 0).then_some(worker.max_tasks),
        idle: (worker.idle_exit_secs > 0).then(|| Duration::from_secs(worker.idle_exit_secs)),
    };
    let worker = Arc::new(
        Worker::new(args.queue().await?, args.store().await?, registry, config)
            .stop_when(stop_when),
    );
    worker.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The job id.
    pub job: String,
    /// The store root that holds the job: a local path or s3://bucket/prefix.
    #[arg(long, env = "SLIM_STORE")]
    pub store: String,
    /// RabbitMQ URL, to show queue depths too.
    #[arg(long, env = "SLIM_AMQP_URL")]
    pub amqp: Option<String>,
    #[arg(long, env = "SLIM_QUEUE_PREFIX", default_value = "slim")]
    pub queue_prefix: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `slim status`: exit code 0 while running or succeeded, 1 when the job failed.
pub async fn status(args: &StatusArgs) -> Result<ExitCode> {
    let store = open_store(&args.store).await?;
    let topology = Topology {
        prefix: args.queue_prefix.clone(),
        ..Topology::default()
    };
    let queue: Arc<dyn TaskQueue> = match &args.amqp {
        Some(url) => {
            let mut config = AmqpConfig::new(url.clone());
            // A status query should answer promptly, not wait out a broker outage.
            config.reconnect_budget = Duration::from_secs(5);
            Arc::new(
                AmqpQueue::connect(config)
                    .await
                    .with_context(|| format!("connecting to RabbitMQ at {}", redact(url)))?,
            )
        }
        None => Arc::new(slim_shared::queue::embedded::EmbeddedQueue::default()),
    };
    let rt = Runtime {
        queue,
        store,
        topology,
        poll_interval: Duration::from_secs(1),
    };
    let report = status::read(&rt, &args.job, args.amqp.is_some()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.phase == Some(JobPhase::Failed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `slim retry`: clears a failed job's failures and hands it back to the coordinator.
pub async fn retry(job_id: &str, store_uri: &str) -> Result<ExitCode> {
    let store = open_store(store_uri).await?;
    let cleared = jobs::retry(store.as_ref(), job_id).await?;
    for (stage, shards) in &cleared {
        println!(
            "{stage}: retrying {} failed task(s): {shards:?}",
            shards.len()
        );
    }
    println!("job {job_id} handed back to the coordinator");
    Ok(ExitCode::SUCCESS)
}

/// `slim report JOB`: aggregates the job's train runs again (metrics.parquet, report.md,
/// plots; the coordinator also does this when the train stage closes) and prints the report.
pub async fn report(job_id: &str, store_uri: &str) -> Result<ExitCode> {
    let store = open_store(store_uri).await?;
    let written = slim_shared::report::write_report(store.as_ref(), job_id).await?;
    print!("{}", written.markdown);
    let folder = store.location(&slim_shared::markers::job_key(job_id, "train/"));
    eprintln!(
        "{} run rows aggregated; written under {folder}: {}",
        written.rows,
        written.keys.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(super::redact("amqp://host"), "amqp://host");
    }
}
