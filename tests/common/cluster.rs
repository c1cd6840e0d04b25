//! A multi-process cluster for the integration tests: `slim coordinator` and `slim worker`
//! processes on the real RabbitMQ (`SLIM_AMQP_URL`, default 127.0.0.1:5672) with a queue
//! prefix of their own and a store (by default a local folder in a temporary directory), so
//! tests run side by side. Each process logs JSON to its own file and serves /metrics,
//! /healthz and /readyz on a free loopback port. Dropping a [`Cluster`] kills its processes
//! and deletes its queues.

use super::{data_dir, repo};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any wait of the harness lasts before it fails the test.
pub const WAIT: Duration = Duration::from_secs(180);

/// The broker: `SLIM_AMQP_URL`, or the local RabbitMQ.
pub fn amqp_url() -> String {
    std::env::var("SLIM_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// What a `slim` process of the cluster is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Worker,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
        }
    }
}

/// One `slim` process of a [`Cluster`]: its role, its log file and where it serves metrics.
pub struct Proc {
    pub role: Role,
    pub child: Child,
    pub log: PathBuf,
    metrics: Option<String>,
}

impl Proc {
    /// The address from the process's "serving /metrics" log line (waits for it).
    pub fn metrics_addr(&mut self) -> String {
        if let Some(addr) = &self.metrics {
            return addr.clone();
        }
        let start = Instant::now();
        loop {
            let text = self.log_text();
            let addr = json_lines(&text).find_map(|v| {
                let message = v["fields"]["message"].as_str()?;
                message
                    .starts_with("serving /metrics")
                    .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
            });
            if let Some(addr) = addr {
                self.metrics = Some(addr.clone());
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("slim exited ({status}) before serving metrics:\n{text}");
            }
            assert!(
                start.elapsed() < WAIT,
                "no metrics address in {}:\n{text}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET PATH` on the process's metrics endpoint: (status, body).
    pub fn get(&mut self, path: &str) -> (u16, String) {
        let addr = self.metrics_addr();
        http_get(&addr, path)
    }

    /// The process's /metrics, parsed.
    pub fn metrics(&mut self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        Metrics::parse(&body)
    }

    /// Whether /readyz answers 200.
    pub fn ready(&mut self) -> bool {
        self.get("/readyz").0 == 200
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL (no chance to settle anything), and waits for the process to go.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The JSON lines of a log, skipping any other line.
pub fn json_lines(text: &str) -> impl Iterator<Item = Value> + '_ {
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// Samples of a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
    pub types: BTreeMap<String, String>,
}

impl Metrics {
    /// Parses the text format, insisting that every sample has a `# TYPE` line.
    pub fn parse(text: &str) -> Self {
        let mut metrics = Metrics::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                metrics.types.insert(name.into(), kind.into());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let mut labels = BTreeMap::new();
                    // Label values here never contain `,` or `"`.
                    for pair in body.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        labels.insert(k.to_string(), v.trim_matches('"').to_string());
                    }
                    (name.to_string(), labels)
                }
            };
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            assert!(
                metrics.types.contains_key(&name) || metrics.types.contains_key(family),
                "{name} has no # TYPE line"
            );
            metrics.samples.push((name, labels, value));
        }
        metrics
    }

    /// The sum of every sample of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// `slim_tasks_total` of one stage and result.
    pub fn tasks(&self, stage: &str, result: &str) -> f64 {
        self.sum("slim_tasks_total", &[("stage", stage), ("result", result)])
    }
}

/// Coordinators and workers of one job, as separate `slim` processes sharing an environment.
///
/// The store is the local folder [`Cluster::store`] unless `SLIM_STORE` is overridden with
/// [`Cluster::with_env`] (an `s3://` store, say): then the helpers that read the store's files
/// directly ([`Cluster::job`], [`Cluster::state`], [`Cluster::done`], [`Cluster::wait_for_end`])
/// do not apply, and [`Cluster::wait_for_status`] follows the job instead.
pub struct Cluster {
    /// The queue prefix of this cluster (unique to the test).
    pub prefix: String,
    /// The job this cluster runs (the id in its manifest).
    pub job_id: String,
    /// A temporary folder: the local store (`store/`), the logs (`logs/`), manifests.
    pub dir: tempfile::TempDir,
    /// Every process started, in order; `spawn`, `start_coordinator` and `start_worker`
    /// return indices into it.
    pub procs: Vec<Proc>,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// A cluster named `name` (the stem of its queue prefix) for the job `job_id`, with no
    /// process started yet.
    pub fn new(name: &str, job_id: &str) -> Self {
        let prefix = slim_shared::testkit::unique_prefix(name);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("store")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let env = vec![
            ("SLIM_AMQP_URL".into(), amqp_url()),
            (
                "SLIM_STORE".into(),
                dir.path().join("store").display().to_string(),
            ),
            ("SLIM_QUEUE_PREFIX".into(), prefix.clone()),
            ("SLIM_POLL_MS".into(), "200".into()),
            ("SLIM_LOG_FORMAT".into(), "json".into()),
            ("SLIM_METRICS_ADDR".into(), "127.0.0.1:0".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        Self {
            prefix,
            job_id: job_id.into(),
            dir,
            procs: Vec::new(),
            env,
        }
    }

    /// Sets `name=value` for every command of the cluster, replacing any earlier value.
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// The value of `name` in the cluster's environment.
    pub fn env(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The store as the processes see it (`SLIM_STORE`): a local path or `s3://...`.
    pub fn store_uri(&self) -> &str {
        self.env("SLIM_STORE").expect("SLIM_STORE is set")
    }

    /// The local store folder (panics when the store is not a local folder).
    pub fn store(&self) -> PathBuf {
        let uri = self.store_uri();
        assert!(
            !uri.contains("://"),
            "the store {uri} is not a local folder"
        );
        PathBuf::from(uri)
    }

    /// The job's folder in the local store.
    pub fn job(&self) -> PathBuf {
        self.store().join(&self.job_id)
    }

    /// Writes a manifest for the probe stage on Gift Cards (453 users) into [`Cluster::dir`]:
    /// this cluster's job with `users_per_shard` users per task, output to the store, and
    /// `probe` as the `[probe]` table's body.
    pub fn probe_manifest(&self, users_per_shard: u32, probe: &str) -> PathBuf {
        let data = data_dir().join("Gift_Cards");
        let text = format!(
            r#"
[job]
id = "{job_id}"
output = "{output}"
stages = ["probe"]

[data]
format = "mcauley2018"
reviews = "{reviews}"
meta = "{meta}"

[prepare]
users_per_shard = {users_per_shard}

[probe]
{probe}
"#,
            job_id = self.job_id,
            output = self.store_uri(),
            reviews = data.join("Gift_Cards_5.json.gz").display(),
            meta = data.join("meta_Gift_Cards.json.gz").display(),
        );
        let path = self.dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `slim ARGS` from the repository root with the cluster's environment plus `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_slim"));
        cmd.args(args).current_dir(repo());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts `slim ARGS` with extra environment, its stderr logged to `logs/NN-ROLE.log`;
    /// returns its index in `procs`.
    pub fn spawn(&mut self, role: Role, args: &[&str], env: &[(&str, &str)]) -> usize {
        let n = self.procs.len();
        let log = self
            .dir
            .path()
            .join("logs")
            .join(format!("{n:02}-{}.log", role.name()));
        let child = self
            .command(args, env)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("slim starts");
        self.procs.push(Proc {
            role,
            child,
            log,
            metrics: None,
        });
        n
    }

    /// Starts `slim coordinator`; returns its index in `procs`.
    pub fn start_coordinator(&mut self) -> usize {
        self.spawn(Role::Coordinator, &["coordinator"], &[])
    }

    /// Starts `slim worker EXTRA`; returns its index in `procs`.
    pub fn start_worker(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["worker"];
        args.extend_from_slice(extra);
        self.spawn(Role::Worker, &args, &[])
    }

    /// The indices in `procs` of the processes of `role`, in the order they started.
    pub fn of_role(&self, role: Role) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|&i| self.procs[i].role == role)
            .collect()
    }

    /// The indices in `procs` of the workers, in the order they started.
    pub fn workers(&self) -> Vec<usize> {
        self.of_role(Role::Worker)
    }

    /// The `i`th coordinator started (from 0).
    pub fn coordinator(&mut self, i: usize) -> &mut Proc {
        let n = self.of_role(Role::Coordinator)[i];
        &mut self.procs[n]
    }

    /// The `i`th worker started (from 0).
    pub fn worker(&mut self, i: usize) -> &mut Proc {
        let n = self.workers()[i];
        &mut self.procs[n]
    }

    /// Runs `slim ARGS` with the cluster's environment: (exit 0, stdout then stderr).
    pub fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args, &[]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `slim submit MANIFEST`, insisting on success.
    pub fn submit(&self, manifest: &Path) {
        let (ok, out) = self.run(&["submit", manifest.to_str().unwrap()]);
        assert!(ok, "submit failed: {out}");
    }

    /// The coordinator's last recorded `_state.json` of the job (local store).
    pub fn state(&self) -> Option<Value> {
        let bytes = std::fs::read(self.job().join("_state.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// How many tasks of `stage` have a done marker (local store).
    pub fn done(&self, stage: &str) -> usize {
        std::fs::read_dir(self.job().join("_markers").join(stage))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits until `check` holds, or fails the test showing the logs.
    pub fn wait_until(&mut self, what: &str, mut check: impl FnMut(&mut Self) -> bool) {
        let start = Instant::now();
        while !check(self) {
            if start.elapsed() > WAIT {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the job to end and returns its final state (local store).
    pub fn wait_for_end(&mut self) -> Value {
        self.wait_until("the job to end", |c| {
            c.state().is_some_and(|s| s["phase"] != "running")
        });
        self.state().unwrap()
    }

    /// Polls `slim status JOB_ID` (with the cluster's environment, so against any store)
    /// until its first line says `job JOB_ID: succeeded` or `job JOB_ID: failed`, and returns
    /// that last run: (exit 0, stdout then stderr). `slim status` exits 0 for a succeeded job
    /// and 1 for a failed one; while the job runs, or before it is known (an error, also exit
    /// 1), it is asked again. Fails the test showing the logs after [`WAIT`].
    pub fn wait_for_status(&mut self, job_id: &str) -> (bool, String) {
        let ended = [
            format!("job {job_id}: succeeded"),
            format!("job {job_id}: failed"),
        ];
        let start = Instant::now();
        loop {
            let (ok, text) = self.run(&["status", job_id]);
            let first = text.lines().next().unwrap_or_default().trim_end();
            if ended.iter().any(|e| e == first) {
                return (ok, text);
            }
            if start.elapsed() > WAIT {
                panic!(
                    "timed out waiting for job {job_id} to end; slim status says:\n{text}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for process `i` to exit and returns whether it exited 0.
    pub fn wait_exit(&mut self, i: usize) -> bool {
        let start = Instant::now();
        loop {
            if let Some(status) = self.procs[i].child.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > WAIT {
                panic!("process {i} did not exit\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last 40 lines of every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for p in &self.procs {
            let text = p.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            all += &format!("--- {}\n", p.log.display());
            for line in tail.into_iter().rev() {
                all += line;
                all.push('\n');
            }
        }
        all
    }

    /// The `published` counts that the log of process `i` (a coordinator) reports.
    pub fn published_by(&self, i: usize) -> u64 {
        json_lines(&self.procs[i].log_text())
            .filter(|v| v["fields"]["message"] == "published tasks")
            .map(|v| v["fields"]["published"].as_u64().unwrap_or(0))
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        // Remove this cluster's queues (best effort; they carry a unique prefix).
        if let Ok(out) = Command::new("rabbitmqctl")
            .args(["list_queues", "-q", "--no-table-headers", "name"])
            .output()
        {
            for name in String::from_utf8_lossy(&out.stdout).lines() {
                let name = name.trim();
                if name.starts_with(&format!("{}.", self.prefix)) {
                    let _ = Command::new("rabbitmqctl")
                        .args(["delete_queue", name])
                        .output();
                }
            }
        }
    }
}

/// Every probe part of a finished job, read with pyarrow: shard -> user ids.
pub fn probe_parts(job: &Path) -> BTreeMap<u32, Vec<String>> {
    let script = r#"
import glob, json, os, sys, pyarrow.parquet as pq
parts = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "part-*.parquet"))):
    shard = int(os.path.basename(path)[len("part-"):-len(".parquet")])
    parts[shard] = pq.read_table(path).column("user_id").to_pylist()
print(json.dumps(parts))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(job.join("probe"))
        .output()
        .expect("python3 runs (install pyarrow: pip install pyarrow)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: BTreeMap<String, Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
    parts
        .into_iter()
        .map(|(shard, ids)| (shard.parse().unwrap(), ids))
        .collect()
}

/// A probe job's outputs: one part per shard, and every user exactly once across them.
pub fn assert_complete_once(job: &Path) {
    let summary: Value =
        serde_json::from_slice(&std::fs::read(job.join("data/summary.json")).unwrap()).unwrap();
    let users = summary["users"].as_u64().unwrap();
    let shards = summary["shards"].as_u64().unwrap() as u32;
    let parts = probe_parts(job);
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        (0..shards).collect::<Vec<_>>(),
        "one part per shard"
    );
    let all: Vec<&String> = parts.values().flatten().collect();
    let unique: std::collections::BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, users, "no missing and no duplicated rows");
    assert_eq!(unique.len(), all.len(), "no user twice");
}
