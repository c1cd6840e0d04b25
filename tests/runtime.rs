//! The distributed runtime as users run it: `slim coordinator` and several `slim worker`
//! processes on the real RabbitMQ (`SLIM_AMQP_URL`, default 127.0.0.1:5672) and a store
//! folder, with the real Gift Cards data and the model-free `probe` stage. Each test has its
//! own queue prefix and store, so tests run side by side. Faults are real: `kill -9`, SIGTERM,
//! `rabbitmqctl close_all_connections`, garbage on the queue.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const JOB: &str = "probe-job";

/// A manifest for the probe stage on Gift Cards (453 users) with 2 users per shard: 227 shards.
fn manifest(cluster: &Cluster, probe: &str) -> PathBuf {
    cluster.probe_manifest(2, probe)
}

fn users_of(job: &Path) -> u64 {
    let summary: Value =
        serde_json::from_slice(&std::fs::read(job.join("data/summary.json")).unwrap()).unwrap();
    summary["users"].as_u64().unwrap()
}

/// Each shard's output exists once, every user appears exactly once across them, and the
/// stage's `_SUCCESS` lists every part.
fn assert_complete_and_closed(job: &Path) {
    assert_complete_once(job);
    let summary: Value =
        serde_json::from_slice(&std::fs::read(job.join("data/summary.json")).unwrap()).unwrap();
    let shards = summary["shards"].as_u64().unwrap() as u32;
    let success: Value =
        serde_json::from_slice(&std::fs::read(job.join("probe/_SUCCESS")).unwrap()).unwrap();
    assert_eq!(success["parts"].as_array().unwrap().len() as u32, shards);
}

/// The files of a job's output folders (data/ and probe/), for byte comparison.
fn output_files(job: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for folder in ["data", "probe"] {
        for entry in std::fs::read_dir(job.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = format!("{folder}/{}", path.file_name().unwrap().to_str().unwrap());
            // summary.json records the wall-clock time prepare took, and data/_SUCCESS its
            // checksum.
            if name == "data/summary.json" || name == "data/_SUCCESS" {
                continue;
            }
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
    files
}

#[test]
fn three_worker_processes_write_what_slim_run_writes() {
    let mut cluster = Cluster::new("e2e", JOB);
    let embedded = tempfile::tempdir().unwrap();
    let manifest = manifest(&cluster, "");
    slim_ok(&[
        "run",
        "--quiet",
        manifest.to_str().unwrap(),
        "--output",
        embedded.path().to_str().unwrap(),
    ]);

    let coordinator = cluster.start_coordinator();
    for _ in 0..3 {
        cluster.start_worker(&[]);
    }
    cluster.submit(&manifest);
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());

    let shards = cluster.done("probe");
    assert!(shards >= 200, "a job of at least 200 shards, got {shards}");
    assert_complete_and_closed(&cluster.job());
    let distributed = output_files(&cluster.job());
    let in_process = output_files(&embedded.path().join(JOB));
    assert_eq!(
        distributed.keys().collect::<Vec<_>>(),
        in_process.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &distributed {
        assert!(in_process[name] == *bytes, "{name} differs from slim run's");
    }
    assert_eq!(cluster.published_by(coordinator), 1 + shards as u64);

    let (ok, status) = cluster.run(&["status", JOB]);
    assert!(ok, "{status}");
    assert!(status.contains("succeeded"), "{status}");
    let probe_line: Vec<&str> = status
        .lines()
        .find(|l| l.trim_start().starts_with("probe"))
        .unwrap_or_else(|| panic!("{status}"))
        .split_whitespace()
        .collect();
    let shards = shards.to_string();
    assert_eq!(
        probe_line[1..3],
        [shards.as_str(), shards.as_str()],
        "tasks and done: {status}"
    );
}

#[test]
fn workers_killed_mid_task_lose_nothing() {
    let mut cluster = Cluster::new("kill9", JOB);
    let manifest = manifest(&cluster, "work_ms = 25");
    cluster.start_coordinator();
    for _ in 0..3 {
        cluster.start_worker(&[]);
    }
    cluster.submit(&manifest);
    for (victim, after) in [(0, 20), (1, 100)] {
        cluster.wait_until(&format!("{after} probe tasks"), |c| {
            c.done("probe") >= after
        });
        cluster.worker(victim).kill(); // SIGKILL: no chance to settle anything
        cluster.start_worker(&[]);
    }
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    assert_complete_and_closed(&cluster.job());
}

#[test]
fn a_restarted_coordinator_publishes_only_what_is_missing() {
    let mut cluster = Cluster::new("coordkill", JOB);
    let manifest = manifest(&cluster, "work_ms = 20");
    let coordinator = cluster.start_coordinator();
    cluster.start_worker(&[]);
    cluster.start_worker(&[]);
    cluster.submit(&manifest);
    cluster.wait_until("probe tasks published and 30 done", |c| {
        c.job().join("_published/probe.json").exists() && c.done("probe") >= 30
    });
    cluster.procs[coordinator].kill();
    let first = cluster.published_by(coordinator);
    std::thread::sleep(Duration::from_millis(300));
    let restarted = cluster.start_coordinator();
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    let shards = cluster.done("probe") as u64;
    assert_eq!(
        first,
        1 + shards,
        "the first coordinator published everything"
    );
    assert_eq!(
        cluster.published_by(restarted),
        0,
        "the restarted coordinator republished nothing\n{}",
        cluster.logs()
    );
    assert_complete_and_closed(&cluster.job());
}

#[test]
fn closed_broker_connections_are_reopened() {
    let mut cluster = Cluster::new("reconnect", JOB);
    let manifest = manifest(&cluster, "work_ms = 20");
    cluster.start_coordinator();
    for _ in 0..3 {
        cluster.start_worker(&[]);
    }
    cluster.submit(&manifest);
    for after in [20, 120] {
        cluster.wait_until(&format!("{after} probe tasks"), |c| {
            c.done("probe") >= after
        });
        let out = Command::new("rabbitmqctl")
            .args([
                "close_all_connections",
                "slim test: connections closed under load",
            ])
            .output()
            .expect("rabbitmqctl runs");
        assert!(out.status.success(), "{out:?}");
    }
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    assert_complete_and_closed(&cluster.job());
}

#[test]
fn a_poison_task_is_dead_lettered_and_reported() {
    let mut cluster = Cluster::new("poison", JOB).with_env("SLIM_DELIVERY_LIMIT", "3");
    let manifest = manifest(&cluster, "fail_shards = [7]");
    cluster.start_coordinator();
    cluster.start_worker(&[]);
    cluster.start_worker(&[]);
    cluster.submit(&manifest);
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "failed", "{state}\n{}", cluster.logs());
    let message = state["message"].as_str().unwrap();
    assert!(
        message.contains("shard 7") && message.contains("deliberate"),
        "{message}"
    );

    let shards = users_of(&cluster.job()).div_ceil(2) as usize;
    assert_eq!(
        cluster.done("probe"),
        shards - 1,
        "every other shard completed"
    );
    let failure: Value = serde_json::from_slice(
        &std::fs::read(cluster.job().join("_failed/probe/00007.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(failure["attempts"], 3, "{failure}");

    let (ok, status) = cluster.run(&["status", JOB]);
    assert!(!ok, "status exits non-zero for a failed job");
    assert!(
        status.contains("failed: probe shard 7 after 3 attempt(s)")
            && status.contains("deliberate"),
        "{status}"
    );
}

#[test]
fn garbage_on_the_task_queue_is_dead_lettered_and_the_worker_carries_on() {
    let mut cluster = Cluster::new("garbage", JOB);
    let manifest = manifest(&cluster, "");
    let prefix = cluster.prefix.clone();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use slim_shared::queue::TaskQueue;
        let queue = slim_shared::queue::amqp::AmqpQueue::connect_url(&amqp_url())
            .await
            .unwrap();
        let topology = slim_shared::queue::Topology {
            prefix,
            ..Default::default()
        };
        topology
            .declare_tasks(&queue, &[slim_shared::stage::Stage::Probe])
            .await
            .unwrap();
        let tasks = topology.tasks(slim_shared::stage::Stage::Probe);
        queue
            .publish(&tasks, b"\x00\xffnot json".to_vec())
            .await
            .unwrap();
        queue
            .publish(&tasks, br#"{"version": 99, "job_id": "x"}"#.to_vec())
            .await
            .unwrap();
    });
    cluster.start_coordinator();
    let worker = cluster.start_worker(&[]);
    cluster.submit(&manifest);
    let state = cluster.wait_for_end();
    assert_eq!(state["phase"], "succeeded", "{state}\n{}", cluster.logs());
    assert_eq!(
        cluster.procs[worker].child.try_wait().unwrap(),
        None,
        "the worker still runs"
    );

    let kept = cluster.store().join("_dead_letters");
    let mut reasons: Vec<String> = std::fs::read_dir(&kept)
        .unwrap()
        .map(|e| {
            let letter: Value =
                serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
            letter["reason"].as_str().unwrap().to_string()
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("malformed task message")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown task message version 99")),
        "{reasons:?}"
    );
}

#[test]
fn sigterm_finishes_or_requeues_the_current_task_and_exits_zero() {
    let mut cluster = Cluster::new("sigterm", JOB);
    // Two users per shard and long tasks: the worker is mid-task when SIGTERM comes.
    let manifest = manifest(&cluster, "work_ms = 1500");
    cluster.start_coordinator();
    let first = cluster.start_worker(&["--grace-secs", "30"]);
    cluster.submit(&manifest);
    cluster.wait_until("prepare done and a probe task started", |c| {
        c.job().join("data/_SUCCESS").exists()
            && c.state().is_some_and(|s| {
                s["stages"].as_array().is_some_and(|st| {
                    st.iter()
                        .any(|p| p["stage"] == "probe" && p["running"] == 1)
                })
            })
    });
    cluster.procs[first].terminate();
    let status = cluster.procs[first].child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    assert_eq!(
        cluster.done("probe"),
        1,
        "the task in hand was finished within the grace period, and no other taken"
    );

    // With no grace the task in hand goes back to the queue instead. (Let the coordinator
    // record that the first task ended before looking for the next one.)
    std::thread::sleep(Duration::from_secs(1));
    let second = cluster.start_worker(&["--grace-secs", "0"]);
    cluster.wait_until("a second probe task started", |c| {
        c.state().is_some_and(|s| {
            s["stages"].as_array().is_some_and(|st| {
                st.iter()
                    .any(|p| p["stage"] == "probe" && p["running"] == 1)
            })
        })
    });
    cluster.procs[second].terminate();
    let status = cluster.procs[second].child.wait().unwrap();
    assert!(status.success(), "exit 0 after SIGTERM: {status}");
    assert_eq!(
        cluster.done("probe"),
        1,
        "the interrupted task was not marked done"
    );
    let log = cluster.procs[second].log_text();
    assert!(log.contains("requeueing it"), "{log}");
}
