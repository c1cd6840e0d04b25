//! Versioned messages between the coordinator and the workers (JSON on the queue).
//!
//! - [`TaskMessage`]: one shard of one stage to run, published by the coordinator on the tasks
//!   queue.
//! - [`EventMessage`]: what a worker reports back (started, finished with counters, failed),
//!   sent in batches ([`EventBatch`]).
//! - [`JobMessage`]: a submitted job, for the coordinator service (`slim submit`).
//!
//! Every message carries `version` ([`MESSAGE_VERSION`]). A reader decodes with [`decode_task`] /
//! [`decode_events`], which never panic: bytes that are not a message of the expected shape and
//! messages of a version this build does not know are both errors ([`DecodeError`]) that the
//! consumer dead-letters with the error's text as the reason.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The schema version this build writes and the only one it reads.
pub const MESSAGE_VERSION: u32 = 1;

/// One task: run `stage` on `shard` of job `job_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Schema version, [`MESSAGE_VERSION`] when written by this build.
    pub version: u32,
    pub job_id: String,
    /// The stage's name, e.g. `"teacher"`.
    pub stage: String,
    pub shard: u32,
    /// How many times the coordinator has published this task before (0 on the first publish).
    pub attempt: u32,
    /// Store keys the task reads.
    pub inputs: Vec<String>,
    /// Store keys the task writes.
    pub outputs: Vec<String>,
    /// Stage-specific parameters.
    pub parameters: serde_json::Value,
}

impl TaskMessage {
    /// A task of the current [`MESSAGE_VERSION`].
    pub fn new(
        job_id: impl Into<String>,
        stage: impl Into<String>,
        shard: u32,
        attempt: u32,
    ) -> Self {
        Self {
            version: MESSAGE_VERSION,
            job_id: job_id.into(),
            stage: stage.into(),
            shard,
            attempt,
            inputs: Vec::new(),
            outputs: Vec::new(),
            parameters: serde_json::Value::Null,
        }
    }

    /// The message as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a TaskMessage always serialises")
    }
}

/// What happened to a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Finished { counters: BTreeMap<String, u64> },
    Failed { error: String },
}

/// A worker's report on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMessage {
    /// Schema version, [`MESSAGE_VERSION`] when written by this build.
    pub version: u32,
    pub job_id: String,
    pub stage: String,
    pub shard: u32,
    pub attempt: u32,
    pub kind: EventKind,
    /// The reporting worker's id.
    pub worker: String,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
}

impl EventMessage {
    /// An event about `task` of the current [`MESSAGE_VERSION`], stamped now.
    pub fn for_task(task: &TaskMessage, kind: EventKind, worker: impl Into<String>) -> Self {
        let at_unix_ms = crate::markers::now_unix_ms();
        Self {
            version: MESSAGE_VERSION,
            job_id: task.job_id.clone(),
            stage: task.stage.clone(),
            shard: task.shard,
            attempt: task.attempt,
            kind,
            worker: worker.into(),
            at_unix_ms,
        }
    }

    /// The message as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an EventMessage always serialises")
    }
}

/// Several events in one message. A worker sends what happened within a few milliseconds
/// together, so a busy worker costs the broker one message per batch, not two per task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventBatch {
    /// Schema version, [`MESSAGE_VERSION`] when written by this build.
    pub version: u32,
    pub events: Vec<EventMessage>,
}

impl EventBatch {
    pub fn new(events: Vec<EventMessage>) -> Self {
        Self {
            version: MESSAGE_VERSION,
            events,
        }
    }

    /// The message as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an EventBatch always serialises")
    }
}

/// A submitted job: its resolved manifest is at `{root}/{job_id}/job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobMessage {
    /// Schema version, [`MESSAGE_VERSION`] when written by this build.
    pub version: u32,
    pub job_id: String,
    /// The store root the job lives in (a local path or `s3://bucket/prefix`).
    pub root: String,
    pub submitted_at_unix_ms: u64,
}

impl JobMessage {
    pub fn new(job_id: impl Into<String>, root: impl Into<String>) -> Self {
        Self {
            version: MESSAGE_VERSION,
            job_id: job_id.into(),
            root: root.into(),
            submitted_at_unix_ms: crate::markers::now_unix_ms(),
        }
    }

    /// The message as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JobMessage always serialises")
    }
}

/// Why bytes from the queue are not a message this build can act on. Its `Display` is meant as
/// the dead-letter reason.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape (missing field, wrong type). Unknown fields are
    /// ignored, so a field can be added within a version.
    #[error("malformed {what} message: {detail}")]
    Malformed { what: &'static str, detail: String },
    /// Well-formed enough to read its version, but of a version this build does not know.
    #[error(
        "unknown {what} message version {version} (this build reads version {MESSAGE_VERSION})"
    )]
    UnknownVersion { what: &'static str, version: u64 },
}

/// Decodes a task: checks the version first, then the shape.
pub fn decode_task(bytes: &[u8]) -> Result<TaskMessage, DecodeError> {
    decode(bytes, "task")
}

/// Decodes an event: checks the version first, then the shape.
pub fn decode_event(bytes: &[u8]) -> Result<EventMessage, DecodeError> {
    decode(bytes, "event")
}

/// Decodes a message of the events queue: an [`EventBatch`], or a single [`EventMessage`] (as
/// workers sent before batches). Checks the version first, then the shape.
pub fn decode_events(bytes: &[u8]) -> Result<Vec<EventMessage>, DecodeError> {
    let value = versioned(bytes, "event")?;
    if value.get("events").is_some() {
        shaped::<EventBatch>(value, "event batch").map(|batch| batch.events)
    } else {
        shaped::<EventMessage>(value, "event").map(|event| vec![event])
    }
}

/// Decodes a submitted job: checks the version first, then the shape.
pub fn decode_job(bytes: &[u8]) -> Result<JobMessage, DecodeError> {
    decode(bytes, "job")
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, DecodeError> {
    shaped(versioned(bytes, what)?, what)
}

/// The message as JSON, once its version is known to be [`MESSAGE_VERSION`].
fn versioned(bytes: &[u8], what: &'static str) -> Result<serde_json::Value, DecodeError> {
    let malformed = |detail: String| DecodeError::Malformed { what, detail };
    // The version is read on its own first, so that a future version whose other fields
    // changed is reported as such rather than as a shape error.
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let version = match value.get("version") {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| malformed(format!("`version` is not an unsigned integer: {v}")))?,
        None if value.is_object() => return Err(malformed("missing field `version`".into())),
        None => return Err(malformed("not a JSON object".into())),
    };
    if version != u64::from(MESSAGE_VERSION) {
        return Err(DecodeError::UnknownVersion { what, version });
    }
    Ok(value)
}

/// A versioned message's value as `T`, or the path of the field that does not fit.
fn shaped<T: DeserializeOwned>(
    value: serde_json::Value,
    what: &'static str,
) -> Result<T, DecodeError> {
    let malformed = |detail: String| DecodeError::Malformed { what, detail };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            malformed(inner.to_string())
        } else {
            malformed(format!("at `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task() -> TaskMessage {
        TaskMessage {
            inputs: vec!["jobs/j1/prepare/shard-0003.parquet".into()],
            outputs: vec!["jobs/j1/teacher/shard-0003.parquet".into()],
            parameters: serde_json::json!({"batch_size": 16, "model": "qwen"}),
            ..TaskMessage::new("j1", "teacher", 3, 1)
        }
    }

    #[test]
    fn task_round_trips() {
        let t = task();
        assert_eq!(t.version, MESSAGE_VERSION);
        assert_eq!(decode_task(&t.encode()).unwrap(), t);
    }

    #[test]
    fn events_round_trip() {
        let t = task();
        let kinds = [
            EventKind::Started,
            EventKind::Finished {
                counters: BTreeMap::from([("rows".into(), 42), ("skipped".into(), 0)]),
            },
            EventKind::Failed {
                error: "out of memory".into(),
            },
        ];
        for kind in kinds {
            let e = EventMessage::for_task(&t, kind, "worker-1");
            assert!(e.at_unix_ms > 0);
            assert_eq!(decode_event(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn event_batches_and_single_events_decode_alike() {
        let t = task();
        let started = EventMessage::for_task(&t, EventKind::Started, "w");
        let finished = EventMessage::for_task(
            &t,
            EventKind::Finished {
                counters: BTreeMap::new(),
            },
            "w",
        );
        let batch = EventBatch::new(vec![started.clone(), finished.clone()]);
        assert_eq!(
            decode_events(&batch.encode()).unwrap(),
            [started, finished.clone()]
        );
        assert_eq!(decode_events(&finished.encode()).unwrap(), [finished]);

        let mut value = serde_json::to_value(&batch).unwrap();
        value["events"][1]["shard"] = "three".into();
        let err = decode_events(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.to_string().contains("at `events[1].shard`"), "{err}");
    }

    #[test]
    fn unknown_version_is_its_own_error() {
        let mut value = serde_json::to_value(task()).unwrap();
        value["version"] = 2.into();
        // A future version may also change other fields: still reported as a version error.
        value["shard"] = "three".into();
        let err = decode_task(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(
            matches!(err, DecodeError::UnknownVersion { version: 2, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("unknown task message version 2"),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bytes in [
            &b"\xff\x00garbage"[..],
            b"",
            b"[1,2]",
            b"\"task\"",
            b"{\"version\": -1}",
        ] {
            let err = decode_task(bytes).unwrap_err();
            assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        }
        let err = decode_event(b"not json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("malformed event message: not JSON"),
            "{err}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut value = serde_json::to_value(task()).unwrap();
        value.as_object_mut().unwrap().remove("stage");
        let err = decode_task(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err:?}");
        assert!(err.to_string().contains("missing field `stage`"), "{err}");

        let mut value = serde_json::to_value(task()).unwrap();
        value.as_object_mut().unwrap().remove("version");
        let err = decode_task(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.to_string().contains("missing field `version`"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let mut value = serde_json::to_value(task()).unwrap();
        value["shard"] = "three".into();
        let err = decode_task(&serde_json::to_vec(&value).unwrap()).unwrap_err();
        assert!(err.to_string().contains("at `shard`"), "{err}");
    }

    #[test]
    fn event_kind_is_tagged() {
        let e = EventMessage::for_task(
            &task(),
            EventKind::Failed {
                error: "boom".into(),
            },
            "w",
        );
        let value: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(
            value["kind"],
            serde_json::json!({"type": "failed", "error": "boom"})
        );
    }
}
