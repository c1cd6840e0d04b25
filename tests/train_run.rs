//! The train stage under the real coordinator driver and worker loop (embedded queue): the
//! driver plans one task per run of the grid, the worker trains them, and closing the stage
//! writes the report. The model stages before train are not built yet, so their `_SUCCESS`
//! records are written by hand after a real prepare.

mod common;

use common::*;
use slim_coordinator::{Runtime, driver, jobs};
use slim_shared::manifest::LoadedManifest;
use slim_shared::markers::{self, JobPhase, StageManifest};
use slim_shared::queue::embedded::EmbeddedQueue;
use slim_shared::queue::{TaskQueue, Topology};
use slim_shared::stage::Stage;
use slim_shared::store::{self, Location, S3Settings};
use slim_worker::executor::{Registry, TaskContext, run_task};
use slim_worker::serve::{Worker, WorkerConfig};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_train_stage_writes_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir().join("Gift_Cards");
    let manifest = format!(
        r#"
[job]
id = "tr"
output = "{out}"
stages = ["train"]
[data]
format = "mcauley2018"
reviews = "{reviews}"
[train]
backbones = ["gru4rec"]
variants = ["id", "popularity"]
seeds = [1, 2]
epochs = 2
embedding_dim = 16
eval_negatives = 50
"#,
        out = dir.path().display(),
        reviews = data.join("Gift_Cards_5.json.gz").display(),
    );
    let loaded = LoadedManifest::from_str(&manifest, "<test>", dir.path().to_path_buf())
        .map_err(|p| p.to_string())
        .unwrap();
    let store = store::open(
        &Location::Local(dir.path().to_path_buf()),
        &S3Settings::default(),
    )
    .await
    .unwrap();
    let job = jobs::store_manifest(store.as_ref(), &loaded).await.unwrap();
    let ctx = TaskContext {
        job: job.clone(),
        store: store.clone(),
        shard: 0,
        attempt: 1,
        progress: false,
    };
    run_task(&Registry::builtin(), &ctx, Stage::Prepare)
        .await
        .unwrap();
    for stage in [
        Stage::Prepare,
        Stage::Teacher,
        Stage::Distill,
        Stage::Student,
        Stage::Encode,
    ] {
        let closed = StageManifest {
            stage,
            job_id: "tr".into(),
            parts: Vec::new(),
        };
        markers::write_stage_manifest(store.as_ref(), &closed)
            .await
            .unwrap();
    }

    let queue: Arc<dyn TaskQueue> = Arc::new(EmbeddedQueue::default());
    let topology = Topology::default();
    let rt = Runtime {
        queue: queue.clone(),
        store: store.clone(),
        topology: topology.clone(),
        poll_interval: Duration::from_millis(100),
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = Arc::new(Worker::new(
        queue,
        store.clone(),
        Registry::builtin(),
        WorkerConfig {
            topology,
            stages: vec![Stage::Train],
            grace: Duration::ZERO,
            concurrency: 1,
            progress: false,
        },
    ));
    let worker = tokio::spawn(worker.run(stopped));
    let outcome = driver::drive(&rt, "tr", driver::DriveOptions::default())
        .await
        .unwrap();
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    assert_eq!(outcome.state.phase, JobPhase::Succeeded, "{outcome:?}");
    let train = outcome
        .state
        .stages
        .iter()
        .find(|s| s.stage == Stage::Train)
        .unwrap();
    assert_eq!(
        train.tasks,
        Some(3),
        "gru4rec/id x 2 seeds, popularity once"
    );
    let report = std::fs::read_to_string(dir.path().join("tr/train/report.md")).unwrap();
    assert!(report.contains("| GRU4Rec | 2 |"), "{report}");
    assert!(report.contains("| Popularity | 1 |"), "{report}");
    assert!(dir.path().join("tr/train/metrics.parquet").exists());
    assert!(dir.path().join("tr/train/_SUCCESS").exists());
}
