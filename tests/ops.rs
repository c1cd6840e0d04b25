//! Operations: what an operator, a Prometheus server and Kubernetes' probes see of a running
//! cluster. `slim coordinator` and `slim worker` processes on the real RabbitMQ
//! (`SLIM_AMQP_URL`, default 127.0.0.1:5672), a store folder, the real Gift Cards data and the
//! model-free `probe` stage; each process serves /metrics, /healthz and /readyz on a free
//! loopback port, found in its JSON log. Faults are real: the broker connection is cut by a
//! TCP proxy between worker and broker, workers get SIGTERM mid-task.
//!
//! SIGTERM with a grace period long enough to finish the task is covered by
//! `tests/runtime.rs` (`sigterm_finishes_or_requeues_the_current_task_and_exits_zero`); here a
//! worker is stopped with no grace, and the job must still end with every shard done once.

mod common;

use common::*;
use serde_json::Value;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const JOB: &str = "ops-job";

fn summary(job: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(job.join("data/summary.json")).unwrap()).unwrap()
}

#[test]
fn worker_metrics_add_up_to_the_tasks_done() {
    // Two workers share 227 probe tasks; shard 5 always fails and is dead-lettered on its
    // second delivery, so every result but `rejected` and `interrupted` shows up.
    let mut cluster = Cluster::new("opsmetrics", JOB).with_env("SLIM_DELIVERY_LIMIT", "2");
    let manifest = cluster.probe_manifest(2, "work_ms = 20\nfail_shards = [5]");
    let coordinator = cluster.start_coordinator();
    let workers = [cluster.start_worker(&[]), cluster.start_worker(&[])];
    for &w in &workers {
        cluster.wait_until("the worker to be ready", |c| c.procs[w].ready());
        assert_eq!(cluster.procs[w].get("/healthz"), (200, "ok\n".into()));
    }
    cluster.wait_until("the coordinator to be ready", |c| {
        c.procs[coordinator].ready()
    });
    cluster.submit(&manifest);

    // During the job: what was counted done is no more than the markers written (a worker
    // counts a task after writing its marker), and each worker runs one probe task at a time.
    cluster.wait_until("40 probe tasks done", |c| c.done("probe") >= 40);
    let mut during = 0.0;
    for &w in &workers {
        let m = cluster.procs[w].metrics();
        assert!(m.sum("slim_tasks_in_flight", &[("stage", "probe")]) <= 1.0);
        assert_eq!(m.sum("slim_ready", &[]), 1.0);
        during += m.tasks("probe", "done");
    }
    let markers = cluster.done("probe") as f64;
    assert!(
        during >= 1.0 && during <= markers,
        "{during} counted done, {markers} markers"
    );

    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "failed", "{state}\n{}", cluster.logs());
    let shards = summary(&cluster.job())["shards"].as_u64().unwrap() as f64;
    assert_eq!(cluster.done("probe") as f64, shards - 1.0);

    // After the job: the workers' counters add up to what the store says was done.
    let mut total = Metrics::default();
    for &w in &workers {
        let m = cluster.procs[w].metrics();
        assert_eq!(m.types["slim_task_duration_seconds"], "histogram");
        assert_eq!(m.sum("slim_tasks_in_flight", &[]), 0.0, "nothing in flight");
        total.samples.extend(m.samples);
    }
    let (done, already) = (
        total.tasks("probe", "done"),
        total.tasks("probe", "already_done"),
    );
    assert_eq!(done, shards - 1.0, "one done per marker");
    assert_eq!(already, 0.0, "no redelivery without faults");
    assert_eq!(total.tasks("prepare", "done"), 1.0);
    assert_eq!(
        total.tasks("probe", "failed"),
        1.0,
        "shard 5, first delivery"
    );
    assert_eq!(total.tasks("probe", "dead_lettered"), 1.0, "and its last");
    assert_eq!(
        total.sum(
            "slim_task_duration_seconds_count",
            &[("stage", "probe"), ("result", "done")]
        ),
        done
    );
    assert!(
        total.sum(
            "slim_task_duration_seconds_sum",
            &[("stage", "probe"), ("result", "done")]
        ) >= done * 0.02,
        "each probe task takes at least work_ms"
    );

    // The coordinator counts a job as ended once its driver returns, a moment after the final
    // `_state.json` the wait above saw.
    cluster.wait_until("the coordinator to count the ended job", |c| {
        c.procs[coordinator]
            .metrics()
            .sum("slim_coordinator_jobs_ended_total", &[("phase", "failed")])
            == 1.0
    });
    let c = cluster.procs[coordinator].metrics();
    assert_eq!(
        c.sum(
            "slim_coordinator_tasks_published_total",
            &[("stage", "probe")]
        ),
        shards
    );
    assert_eq!(
        c.sum(
            "slim_coordinator_tasks_published_total",
            &[("stage", "prepare")]
        ),
        1.0
    );
    assert_eq!(
        c.sum(
            "slim_coordinator_dead_letters_total",
            &[("stage", "probe"), ("kind", "task")]
        ),
        1.0
    );
    assert_eq!(
        c.sum("slim_coordinator_jobs_ended_total", &[("phase", "failed")]),
        1.0
    );
    assert_eq!(c.sum("slim_build_info", &[("role", "coordinator")]), 1.0);

    // Every log line of the failing task carries its job, stage and shard.
    let mut failures = 0;
    for &w in &workers {
        for line in json_lines(&cluster.procs[w].log_text()) {
            if line["fields"]["message"] == "task failed" {
                failures += 1;
                assert_eq!(line["span"]["name"], "task", "{line}");
                assert_eq!(line["span"]["job"], JOB, "{line}");
                assert_eq!(line["span"]["stage"], "probe", "{line}");
                assert_eq!(line["span"]["shard"], 5, "{line}");
            }
        }
    }
    assert_eq!(failures, 2, "two deliveries of shard 5 failed");
}

/// A TCP proxy to the broker that the test can cut (close every connection and refuse new
/// ones) and restore.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_string();
        let (up2, open2, stop2) = (up.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if !up2.load(Ordering::Relaxed) {
                    drop(client); // the broker is "down": hang up at once
                    continue;
                }
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut open = open2.lock().unwrap();
                open.push(client.try_clone().unwrap());
                open.push(server.try_clone().unwrap());
                drop(open);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self {
            port,
            up,
            open,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn cut(&self) {
        self.up.store(false, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

#[test]
fn readyz_turns_unready_while_the_broker_is_gone_and_ready_after_reconnect() {
    let upstream = amqp_url()
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("127.0.0.1:5672")
        .to_string();
    let proxy = Proxy::start(&upstream);
    let mut cluster = Cluster::new("opsready", JOB);
    let manifest = cluster.probe_manifest(50, "");
    let url = proxy.url();
    let worker = cluster.spawn(
        Role::Worker,
        &["worker", "--stages", "prepare,probe"],
        &[("SLIM_AMQP_URL", &url)],
    );
    cluster.wait_until("the worker to be ready", |c| c.procs[worker].ready());
    let m = cluster.procs[worker].metrics();
    assert_eq!(m.sum("slim_consumers", &[("state", "live")]), 2.0);
    let connections = m.sum("slim_amqp_connections_total", &[]);

    proxy.cut();
    cluster.wait_until("/readyz to turn 503", |c| !c.procs[worker].ready());
    let (status, body) = cluster.procs[worker].get("/readyz");
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(
        cluster.procs[worker].get("/healthz").0,
        200,
        "alive all the same"
    );
    assert_eq!(cluster.procs[worker].metrics().sum("slim_ready", &[]), 0.0);
    assert!(
        cluster.procs[worker].child.try_wait().unwrap().is_none(),
        "the worker waits for the broker"
    );

    proxy.restore();
    cluster.wait_until("/readyz to turn 200 again", |c| c.procs[worker].ready());
    let m = cluster.procs[worker].metrics();
    assert!(m.sum("slim_amqp_connections_total", &[]) > connections);
    assert_eq!(m.sum("slim_consumers", &[("state", "live")]), 2.0);

    // The re-subscribed consumers do real work.
    cluster.start_coordinator();
    cluster.submit(&manifest);
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    let shards = summary(&cluster.job())["shards"].as_u64().unwrap() as f64;
    assert_eq!(
        cluster.procs[worker].metrics().tasks("probe", "done"),
        shards
    );
    assert_complete_once(&cluster.job());
}

#[test]
fn sigterm_mid_task_requeues_or_finishes_it_and_nothing_is_lost() {
    // 12 tasks of 1.5 s each.
    let mut cluster = Cluster::new("opsterm", JOB);
    let manifest = cluster.probe_manifest(40, "work_ms = 1500");
    cluster.start_coordinator();
    let first = cluster.start_worker(&["--grace-secs", "0"]);
    cluster.wait_until("the worker to be ready", |c| c.procs[first].ready());
    cluster.submit(&manifest);
    cluster.wait_until("a probe task in flight", |c| {
        c.procs[first]
            .metrics()
            .sum("slim_tasks_in_flight", &[("stage", "probe")])
            == 1.0
    });
    cluster.procs[first].terminate();
    assert!(cluster.wait_exit(first), "exit 0 after SIGTERM");
    let log = cluster.procs[first].log_text();
    assert!(log.contains("worker stopped"), "{log}");
    // No grace: the task in hand went back to the queue, unless it finished first.
    assert!(
        log.contains("requeueing it") || cluster.done("probe") >= 1,
        "{log}"
    );

    // A worker that stops by itself after two tasks (as a ScaledJob's pod would)...
    let second = cluster.start_worker(&["--max-tasks", "2"]);
    assert!(cluster.wait_exit(second), "exit 0 after two tasks");
    assert!(
        cluster.procs[second]
            .log_text()
            .contains("settled its share of tasks"),
        "{}",
        cluster.logs()
    );
    // ...and one that finishes the job, then stops once idle.
    let last = cluster.start_worker(&["--idle-exit-secs", "2"]);
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    assert!(cluster.wait_exit(last), "exit 0 when idle");
    assert_complete_once(&cluster.job());
}

#[test]
fn a_coordinator_run_until_done_exits_with_the_outcome_of_its_jobs() {
    // What the Helm chart's coordinator Job relies on: 0 when every job succeeded, 1 when one
    // failed, and 0 at once when nothing is registered.
    for (name, probe, code) in [("opsdone", "", 0), ("opsdonefail", "fail_shards = [1]", 1)] {
        let mut cluster = Cluster::new(name, JOB).with_env("SLIM_DELIVERY_LIMIT", "2");
        let manifest = cluster.probe_manifest(100, probe);
        let idle = cluster.spawn(Role::Coordinator, &["coordinator", "--until-done"], &[]);
        assert!(
            cluster.wait_exit(idle),
            "nothing registered: exit 0 at once"
        );
        cluster.start_worker(&[]);
        cluster.submit(&manifest);
        let coordinator = cluster.spawn(Role::Coordinator, &["coordinator", "--until-done"], &[]);
        cluster.wait_until("the coordinator to exit", |c| {
            c.procs[coordinator].child.try_wait().unwrap().is_some()
        });
        let status = cluster.procs[coordinator].child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{name}\n{}", cluster.logs());
        let state = cluster.state().unwrap();
        let phase = if code == 0 { "succeeded" } else { "failed" };
        assert_eq!(state["phase"], phase, "{state}");
        assert!(
            !cluster
                .store()
                .join("_jobs")
                .join(format!("{JOB}.json"))
                .exists(),
            "the ended job is no longer registered"
        );
    }
}
