//! Operational telemetry: the process's metrics in the Prometheus text format, and the health
//! that Kubernetes' probes ask about (`/healthz`, `/readyz`).
//!
//! Metrics are process-wide statics, so any code path (the worker loop, a stage, the chat
//! client, the LLM engine, the coordinator) records with one call and no plumbing; whoever
//! serves `/metrics` renders them all with [`render`]. The exposition is written by hand (text
//! format 0.0.4): labelled counters, gauges and histograms are all slim needs. docs/operations.md
//! explains every metric.
//!
//! Readiness is "every consumer this process runs is subscribed on a live broker connection":
//! each consumer loop holds a [`ConsumerGuard`] from [`HEALTH`] and hands it the liveness check
//! of its subscription ([`crate::queue::Deliveries::liveness`]).
//!
//! This module does no I/O; serving HTTP is the binary's job.

use crate::queue::Liveness;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One series' label values, in the order of its family's label names.
type LabelValues = Vec<String>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(names: &[&str], values: &[&str]) -> LabelValues {
    debug_assert_eq!(names.len(), values.len(), "label values of a series");
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// A monotonically increasing value per label set.
pub struct Counter {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<LabelValues, f64>>,
}

impl Counter {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    pub fn add(&self, labels: &[&str], value: f64) {
        if value < 0.0 || !value.is_finite() {
            return;
        }
        *lock(&self.series)
            .entry(key(self.labels, labels))
            .or_insert(0.0) += value;
    }

    /// The current value (0 for a series never recorded).
    pub fn get(&self, labels: &[&str]) -> f64 {
        lock(&self.series)
            .get(&key(self.labels, labels))
            .copied()
            .unwrap_or(0.0)
    }
}

/// A value that goes up and down, per label set.
pub struct Gauge {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    series: Mutex<BTreeMap<LabelValues, f64>>,
}

impl Gauge {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn set(&self, labels: &[&str], value: f64) {
        lock(&self.series).insert(key(self.labels, labels), value);
    }

    pub fn add(&self, labels: &[&str], delta: f64) {
        *lock(&self.series)
            .entry(key(self.labels, labels))
            .or_insert(0.0) += delta;
    }

    pub fn get(&self, labels: &[&str]) -> f64 {
        lock(&self.series)
            .get(&key(self.labels, labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Drops the series whose first label is `first` (e.g. every series of an ended job).
    pub fn remove_first(&self, first: &str) {
        lock(&self.series).retain(|labels, _| labels.first().is_none_or(|l| l != first));
    }
}

/// Observations counted into fixed buckets, per label set.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    /// Upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    series: Mutex<BTreeMap<LabelValues, Buckets>>,
}

#[derive(Debug, Clone, Default)]
struct Buckets {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        bounds: &'static [f64],
    ) -> Self {
        Self {
            name,
            help,
            labels,
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], value: f64) {
        if !value.is_finite() {
            return;
        }
        let mut series = lock(&self.series);
        let buckets = series
            .entry(key(self.labels, labels))
            .or_insert_with(|| Buckets {
                counts: vec![0; self.bounds.len() + 1],
                ..Buckets::default()
            });
        let bucket = self
            .bounds
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(self.bounds.len());
        buckets.counts[bucket] += 1;
        buckets.sum += value;
        buckets.count += 1;
    }

    /// Observations of one series so far.
    pub fn count(&self, labels: &[&str]) -> u64 {
        lock(&self.series)
            .get(&key(self.labels, labels))
            .map_or(0, |b| b.count)
    }
}

/// A metric family that can write itself in the text format.
trait Family: Sync {
    fn render(&self, out: &mut String);
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP {name} {}",
        help.replace('\\', "\\\\").replace('\n', "\\n")
    );
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{a="x",b="y"}` (empty without labels), with `extra` appended (e.g. `le`).
fn label_set(names: &[&str], values: &[String], extra: Option<(&str, &str)>) -> String {
    let mut pairs: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        pairs.push(format!("{n}=\"{}\"", escape(v)));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value == f64::INFINITY {
        "+Inf".into()
    } else if value == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{value}")
    }
}

fn render_values(
    out: &mut String,
    name: &str,
    labels: &[&str],
    series: &BTreeMap<LabelValues, f64>,
) {
    if series.is_empty() && labels.is_empty() {
        let _ = writeln!(out, "{name} 0");
    }
    for (values, value) in series {
        let _ = writeln!(
            out,
            "{name}{} {}",
            label_set(labels, values, None),
            number(*value)
        );
    }
}

impl Family for Counter {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "counter");
        render_values(out, self.name, self.labels, &lock(&self.series));
    }
}

impl Family for Gauge {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "gauge");
        render_values(out, self.name, self.labels, &lock(&self.series));
    }
}

impl Family for Histogram {
    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let series = lock(&self.series);
        for (values, buckets) in series.iter() {
            let mut cumulative = 0;
            for (i, count) in buckets.counts.iter().enumerate() {
                cumulative += count;
                let le = self.bounds.get(i).map_or("+Inf".to_owned(), |b| number(*b));
                let _ = writeln!(
                    out,
                    "{}_bucket{} {cumulative}",
                    self.name,
                    label_set(self.labels, values, Some(("le", &le)))
                );
            }
            let labels = label_set(self.labels, values, None);
            let _ = writeln!(out, "{}_sum{labels} {}", self.name, number(buckets.sum));
            let _ = writeln!(out, "{}_count{labels} {}", self.name, buckets.count);
        }
    }
}

/// Bounds for task durations: tasks run from milliseconds (probe) to hours (distill).
const TASK_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0, 7200.0, 14400.0, 43200.0,
];

/// Bounds for one request to a remote model.
const REQUEST_SECONDS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
];

// ---- the worker loop -------------------------------------------------------------------

/// Results a settled task can have; the values of the `result` label.
pub mod result {
    /// Executed now; its outputs and marker are written, the delivery acked.
    pub const DONE: &str = "done";
    /// Its marker existed (a redelivery or a rerun): acked without redoing it.
    pub const ALREADY_DONE: &str = "already_done";
    /// Failed and requeued for another attempt.
    pub const FAILED: &str = "failed";
    /// Failed on its last delivery and dead-lettered.
    pub const DEAD_LETTERED: &str = "dead_lettered";
    /// Shutdown came and the grace period ran out: requeued unfinished.
    pub const INTERRUPTED: &str = "interrupted";
    /// Not a task this build can read (garbage, unknown version or stage): dead-lettered.
    pub const REJECTED: &str = "rejected";
}

pub static TASKS: Counter = Counter::new(
    "slim_tasks_total",
    "Deliveries settled by this worker, by stage and result (done, already_done, failed, dead_lettered, interrupted, rejected).",
    &["stage", "result"],
);

pub static TASK_DURATION: Histogram = Histogram::new(
    "slim_task_duration_seconds",
    "Wall time of a task on this worker, from taking it to settling it, by stage and result.",
    &["stage", "result"],
    TASK_SECONDS,
);

pub static TASKS_IN_FLIGHT: Gauge = Gauge::new(
    "slim_tasks_in_flight",
    "Tasks this worker is running now, by stage.",
    &["stage"],
);

/// Records a settled task: its result and how long it took.
pub fn task_settled(stage: &str, result: &str, took: Duration) {
    TASKS.inc(&[stage, result]);
    TASK_DURATION.observe(&[stage, result], took.as_secs_f64());
}

/// Counts a task as in flight until dropped.
pub struct InFlight {
    stage: String,
}

impl InFlight {
    pub fn start(stage: &str) -> Self {
        TASKS_IN_FLIGHT.add(&[stage], 1.0);
        Self {
            stage: stage.to_owned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        TASKS_IN_FLIGHT.add(&[&self.stage], -1.0);
    }
}

// ---- the teacher's remote endpoint and the local LLM engine ---------------------------------

pub static TEACHER_REQUESTS: Counter = Counter::new(
    "slim_teacher_requests_total",
    "HTTP requests to the teacher's OpenAI-compatible endpoint, by HTTP status code (`transport` when no answer came: refused, reset, timed out).",
    &["status"],
);

pub static TEACHER_REQUEST_DURATION: Histogram = Histogram::new(
    "slim_teacher_request_duration_seconds",
    "Latency of the teacher's successful requests (rate-limit queueing excluded).",
    &[],
    REQUEST_SECONDS,
);

pub static TEACHER_TOKENS: Counter = Counter::new(
    "slim_teacher_tokens_total",
    "Tokens of the teacher's answered requests, by kind (prompt, completion), as the server reported them (estimated when it reported none).",
    &["kind"],
);

pub static TEACHER_RETRIES: Counter = Counter::new(
    "slim_teacher_retries_total",
    "Teacher requests retried after a transient failure (timeout, 429, 5xx, a broken body).",
    &[],
);

/// Records one HTTP answer (`status` is the code, e.g. "200") or `transport` for none.
pub fn teacher_request(status: &str) {
    TEACHER_REQUESTS.inc(&[status]);
}

/// Records one answered teacher request.
pub fn teacher_answer(prompt_tokens: u32, completion_tokens: u32, latency: Duration) {
    TEACHER_TOKENS.add(&["prompt"], f64::from(prompt_tokens));
    TEACHER_TOKENS.add(&["completion"], f64::from(completion_tokens));
    TEACHER_REQUEST_DURATION.observe(&[], latency.as_secs_f64());
}

/// Records one retry of a teacher request.
pub fn teacher_retry() {
    TEACHER_RETRIES.inc(&[]);
}

pub static GENERATION_TOKENS: Counter = Counter::new(
    "slim_generation_tokens_total",
    "Tokens through the in-process LLM engine (local teacher, student, slim serve), by kind: prompt (prefilled) and completion (generated).",
    &["kind"],
);

pub static GENERATION_SECONDS: Counter = Counter::new(
    "slim_generation_seconds_total",
    "Wall time the in-process LLM engine spent generating batches.",
    &[],
);

pub static GENERATION_TOKENS_PER_SECOND: Gauge = Gauge::new(
    "slim_generation_tokens_per_second",
    "Generated tokens per second of the engine's latest batch (prefill included in its time).",
    &[],
);

/// Records one generated batch of the LLM engine.
pub fn generated(prompt_tokens: usize, completion_tokens: usize, took: Duration) {
    GENERATION_TOKENS.add(&["prompt"], prompt_tokens as f64);
    GENERATION_TOKENS.add(&["completion"], completion_tokens as f64);
    GENERATION_SECONDS.add(&[], took.as_secs_f64());
    if took > Duration::ZERO {
        GENERATION_TOKENS_PER_SECOND.set(&[], completion_tokens as f64 / took.as_secs_f64());
    }
}

// ---- the broker --------------------------------------------------------------------------

pub static AMQP_CONNECTIONS: Counter = Counter::new(
    "slim_amqp_connections_total",
    "Connections opened to RabbitMQ: 1 at start, one more per reconnect.",
    &[],
);

// ---- the coordinator -----------------------------------------------------------------------

pub static JOBS_ACTIVE: Gauge = Gauge::new(
    "slim_coordinator_jobs_active",
    "Jobs the coordinator is driving now.",
    &[],
);

pub static JOBS_ENDED: Counter = Counter::new(
    "slim_coordinator_jobs_ended_total",
    "Jobs the coordinator drove to their end, by phase (succeeded, failed).",
    &["phase"],
);

pub static TASKS_PUBLISHED: Counter = Counter::new(
    "slim_coordinator_tasks_published_total",
    "Tasks put on the queue (publisher-confirmed), by stage.",
    &["stage"],
);

pub static DEAD_LETTERS: Counter = Counter::new(
    "slim_coordinator_dead_letters_total",
    "Dead-lettered messages recorded, by stage and kind (task: a task that failed for good; unreadable: not a task).",
    &["stage", "kind"],
);

pub static JOB_TASKS: Gauge = Gauge::new(
    "slim_job_tasks",
    "Tasks of a running job's stages by state (total, done, failed, running), as of the coordinator's last pass.",
    &["job", "stage", "state"],
);

pub static QUEUE_READY: Gauge = Gauge::new(
    "slim_queue_ready_messages",
    "Messages ready for delivery on each task queue and dead-letter queue, sampled by the coordinator (unacked ones not included; KEDA's management API trigger counts both).",
    &["queue"],
);

// ---- the process ------------------------------------------------------------------------------

pub static BUILD_INFO: Gauge = Gauge::new(
    "slim_build_info",
    "Always 1; the labels say which build of slim runs and in which role.",
    &["version", "role"],
);

pub static START_TIME: Gauge = Gauge::new(
    "slim_process_start_time_seconds",
    "When this process started, in seconds since the Unix epoch.",
    &[],
);

/// Which processes a family concerns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Any,
    Worker,
    Coordinator,
}

static FAMILIES: [(Scope, &dyn Family); 22] = [
    (Scope::Any, &BUILD_INFO),
    (Scope::Any, &START_TIME),
    (Scope::Worker, &TASKS),
    (Scope::Worker, &TASK_DURATION),
    (Scope::Worker, &TASKS_IN_FLIGHT),
    (Scope::Worker, &TEACHER_REQUESTS),
    (Scope::Worker, &TEACHER_REQUEST_DURATION),
    (Scope::Worker, &TEACHER_TOKENS),
    (Scope::Worker, &TEACHER_RETRIES),
    (Scope::Worker, &GENERATION_TOKENS),
    (Scope::Worker, &GENERATION_SECONDS),
    (Scope::Worker, &GENERATION_TOKENS_PER_SECOND),
    (Scope::Any, &AMQP_CONNECTIONS),
    (Scope::Coordinator, &JOBS_ACTIVE),
    (Scope::Coordinator, &JOBS_ENDED),
    (Scope::Coordinator, &TASKS_PUBLISHED),
    (Scope::Coordinator, &DEAD_LETTERS),
    (Scope::Coordinator, &JOB_TASKS),
    (Scope::Coordinator, &QUEUE_READY),
    (Scope::Any, &READY_FAMILY),
    (Scope::Any, &CONSUMERS_FAMILY),
    (Scope::Any, &UP_FAMILY),
];

/// The role [`register_process`] recorded: a worker shows no coordinator metrics and the other
/// way round (a process that registered no role shows all).
static ROLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Every metric of this process in the Prometheus text format (0.0.4).
pub fn render() -> String {
    let role = ROLE.get().map(String::as_str);
    let mut out = String::with_capacity(8192);
    for (scope, family) in FAMILIES {
        let hidden = matches!(
            (scope, role),
            (Scope::Worker, Some("coordinator")) | (Scope::Coordinator, Some("worker"))
        );
        if !hidden {
            family.render(&mut out);
        }
    }
    out
}

/// Records which build runs in which role (`worker`, `coordinator`) and when it started.
pub fn register_process(role: &str) {
    let _ = ROLE.set(role.to_owned());
    BUILD_INFO.set(&[env!("CARGO_PKG_VERSION"), role], 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    START_TIME.set(&[], now.as_secs_f64());
}

// ---- health --------------------------------------------------------------------------------

/// The consumers of this process and whether it is shutting down.
pub struct Health {
    consumers: Mutex<BTreeMap<u64, Consumer>>,
    next: AtomicU64,
    stopping: AtomicBool,
}

struct Consumer {
    queue: String,
    /// `None` until the consumer has subscribed.
    liveness: Option<Liveness>,
}

/// The process's health, for `/readyz`.
pub static HEALTH: Health = Health {
    consumers: Mutex::new(BTreeMap::new()),
    next: AtomicU64::new(0),
    stopping: AtomicBool::new(false),
};

/// A consumer's entry in [`HEALTH`]; not live until [`ConsumerGuard::set_live`], removed when
/// dropped (the consumer loop ended).
pub struct ConsumerGuard {
    id: u64,
}

impl ConsumerGuard {
    /// The consumer subscribed: from now on `liveness` says whether it still is.
    pub fn set_live(&self, liveness: Liveness) {
        if let Some(c) = lock(&HEALTH.consumers).get_mut(&self.id) {
            c.liveness = Some(liveness);
        }
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        lock(&HEALTH.consumers).remove(&self.id);
    }
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    pub ready: bool,
    /// Queue → whether its consumer is live.
    pub consumers: Vec<(String, bool)>,
    pub stopping: bool,
}

impl std::fmt::Display for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.consumers.iter().filter(|(_, live)| *live).count();
        if self.ready {
            return writeln!(f, "ready: {live} consumer(s) live");
        }
        if self.stopping {
            return writeln!(f, "not ready: shutting down");
        }
        if self.consumers.is_empty() {
            return writeln!(f, "not ready: no consumer yet");
        }
        let down: Vec<&str> = self
            .consumers
            .iter()
            .filter(|(_, live)| !*live)
            .map(|(q, _)| q.as_str())
            .collect();
        writeln!(
            f,
            "not ready: {} of {} consumer(s) not subscribed on a live broker connection: {}",
            down.len(),
            self.consumers.len(),
            down.join(", ")
        )
    }
}

impl Health {
    /// Registers a consumer of `queue`, not live yet.
    pub fn consumer(&self, queue: &str) -> ConsumerGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.consumers).insert(
            id,
            Consumer {
                queue: queue.to_owned(),
                liveness: None,
            },
        );
        ConsumerGuard { id }
    }

    /// The process is shutting down: it is no longer ready.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Ready when not stopping, with at least one consumer and every consumer live.
    pub fn readiness(&self) -> Readiness {
        let consumers: Vec<(String, bool)> = lock(&self.consumers)
            .values()
            .map(|c| (c.queue.clone(), c.liveness.as_ref().is_some_and(|l| l())))
            .collect();
        let stopping = self.stopping.load(Ordering::Relaxed);
        Readiness {
            ready: !stopping && !consumers.is_empty() && consumers.iter().all(|(_, l)| *l),
            consumers,
            stopping,
        }
    }
}

/// `slim_ready`, computed when rendered.
struct ReadyFamily;
static READY_FAMILY: ReadyFamily = ReadyFamily;

impl Family for ReadyFamily {
    fn render(&self, out: &mut String) {
        header(
            out,
            "slim_ready",
            "1 while every consumer of this process is subscribed on a live broker connection (what /readyz answers), else 0.",
            "gauge",
        );
        let ready = HEALTH.readiness().ready;
        let _ = writeln!(out, "slim_ready {}", u8::from(ready));
    }
}

/// `slim_consumers`, computed when rendered.
struct ConsumersFamily;
static CONSUMERS_FAMILY: ConsumersFamily = ConsumersFamily;

impl Family for ConsumersFamily {
    fn render(&self, out: &mut String) {
        header(
            out,
            "slim_consumers",
            "Queue consumers of this process, by state (live: subscribed on a live connection; down: reconnecting or not yet subscribed).",
            "gauge",
        );
        let readiness = HEALTH.readiness();
        let live = readiness.consumers.iter().filter(|(_, l)| *l).count();
        let down = readiness.consumers.len() - live;
        let _ = writeln!(out, "slim_consumers{{state=\"live\"}} {live}");
        let _ = writeln!(out, "slim_consumers{{state=\"down\"}} {down}");
    }
}

/// `slim_up`: the endpoint answers.
struct UpFamily;
static UP_FAMILY: UpFamily = UpFamily;

impl Family for UpFamily {
    fn render(&self, out: &mut String) {
        header(
            out,
            "slim_up",
            "Always 1: the process answers (what /healthz answers).",
            "gauge",
        );
        out.push_str("slim_up 1\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        static C: Counter = Counter::new("t_total", "A \"test\" counter.", &["stage", "result"]);
        static G: Gauge = Gauge::new("t_gauge", "A gauge.", &[]);
        static H: Histogram = Histogram::new("t_seconds", "A histogram.", &["stage"], &[1.0, 5.0]);
        C.inc(&["probe", "done"]);
        C.add(&["probe", "done"], 2.0);
        C.add(&["probe", "done"], -1.0); // ignored: counters only go up
        C.inc(&["we\"ird\\", "failed"]);
        G.set(&[], 0.5);
        H.observe(&["probe"], 0.5);
        H.observe(&["probe"], 3.0);
        H.observe(&["probe"], 30.0);
        let mut out = String::new();
        C.render(&mut out);
        G.render(&mut out);
        H.render(&mut out);
        assert_eq!(
            out,
            "# HELP t_total A \"test\" counter.\n\
             # TYPE t_total counter\n\
             t_total{stage=\"probe\",result=\"done\"} 3\n\
             t_total{stage=\"we\\\"ird\\\\\",result=\"failed\"} 1\n\
             # HELP t_gauge A gauge.\n\
             # TYPE t_gauge gauge\n\
             t_gauge 0.5\n\
             # HELP t_seconds A histogram.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{stage=\"probe\",le=\"1\"} 1\n\
             t_seconds_bucket{stage=\"probe\",le=\"5\"} 2\n\
             t_seconds_bucket{stage=\"probe\",le=\"+Inf\"} 3\n\
             t_seconds_sum{stage=\"probe\"} 33.5\n\
             t_seconds_count{stage=\"probe\"} 3\n"
        );
        assert_eq!(H.count(&["probe"]), 3);
        assert_eq!(C.get(&["probe", "done"]), 3.0);
    }

    #[test]
    fn every_family_renders_with_help_and_type() {
        let text = render();
        for name in [
            "slim_tasks_total",
            "slim_ready",
            "slim_teacher_requests_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
        }
        // Families without labels show a zero before their first observation.
        assert!(text.contains("\nslim_teacher_retries_total 0\n"), "{text}");
    }

    #[test]
    fn ready_only_while_every_consumer_is_live() {
        // One test touches HEALTH: tests in this crate run in parallel.
        let up = std::sync::Arc::new(AtomicBool::new(true));
        let a = HEALTH.consumer("q.a");
        assert!(!HEALTH.readiness().ready, "not subscribed yet");
        let flag = up.clone();
        a.set_live(std::sync::Arc::new(move || flag.load(Ordering::Relaxed)));
        assert!(HEALTH.readiness().ready);
        up.store(false, Ordering::Relaxed);
        let r = HEALTH.readiness();
        assert!(!r.ready);
        assert!(r.to_string().contains("q.a"), "{r}");
        up.store(true, Ordering::Relaxed);
        assert!(HEALTH.readiness().ready);
        drop(a);
        assert!(!HEALTH.readiness().ready, "no consumer left");
    }
}
