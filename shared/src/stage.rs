//! The stages of a SLIM job and their dependencies (the job's DAG), named as in the
//! object layout of ARCHITECTURE.md.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The stages of a SLIM job, in dependency order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Prepare,
    Teacher,
    Distill,
    Student,
    Encode,
    Train,
    /// A model-free stage for checking a deployment and measuring the runtime: one task per
    /// user shard that fingerprints the shard's histories. Runs only when a job asks for it.
    Probe,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Prepare,
        Stage::Teacher,
        Stage::Distill,
        Stage::Student,
        Stage::Encode,
        Stage::Train,
        Stage::Probe,
    ];

    /// The SLIM pipeline: what a job runs unless its manifest names other stages.
    pub const PIPELINE: [Stage; 6] = [
        Stage::Prepare,
        Stage::Teacher,
        Stage::Distill,
        Stage::Student,
        Stage::Encode,
        Stage::Train,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Prepare => "prepare",
            Stage::Teacher => "teacher",
            Stage::Distill => "distill",
            Stage::Student => "student",
            Stage::Encode => "encode",
            Stage::Train => "train",
            Stage::Probe => "probe",
        }
    }

    /// Stages that must be complete before this one starts.
    pub fn depends_on(self) -> &'static [Stage] {
        match self {
            Stage::Prepare => &[],
            Stage::Teacher => &[Stage::Prepare],
            Stage::Distill => &[Stage::Teacher],
            Stage::Student => &[Stage::Distill],
            Stage::Encode => &[Stage::Student, Stage::Teacher],
            Stage::Train => &[Stage::Encode],
            Stage::Probe => &[Stage::Prepare],
        }
    }

    /// The folder under `{output}/{job}/` that holds this stage's outputs.
    pub fn folder(self) -> &'static str {
        match self {
            Stage::Prepare => "data",
            Stage::Teacher => "teacher",
            Stage::Distill | Stage::Student => "student",
            Stage::Encode => "embeddings",
            Stage::Train => "train",
            Stage::Probe => "probe",
        }
    }

    /// The name of the stage's completion record in its folder. Distill and student share
    /// `student/`, so distill's has its own name.
    pub fn success_file(self) -> &'static str {
        match self {
            Stage::Distill => "_SUCCESS_distill",
            _ => "_SUCCESS",
        }
    }

    /// Whether the stage has one task per user shard (otherwise it is a single task, shard 0).
    pub fn is_sharded(self) -> bool {
        matches!(
            self,
            Stage::Teacher | Stage::Student | Stage::Encode | Stage::Probe
        )
    }

    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Stages in an order where each comes after everything it depends on.
pub fn topological_order() -> Vec<Stage> {
    let mut order: Vec<Stage> = Vec::new();
    while order.len() < Stage::ALL.len() {
        for stage in Stage::ALL {
            if !order.contains(&stage) && stage.depends_on().iter().all(|d| order.contains(d)) {
                order.push(stage);
            }
        }
    }
    order
}

/// The stages a job runs when it asks for `requested`: those plus everything they depend on,
/// in topological order.
pub fn with_dependencies(requested: &[Stage]) -> Vec<Stage> {
    let mut needed: Vec<Stage> = requested.to_vec();
    let mut i = 0;
    while i < needed.len() {
        for dep in needed[i].depends_on() {
            if !needed.contains(dep) {
                needed.push(*dep);
            }
        }
        i += 1;
    }
    topological_order()
        .into_iter()
        .filter(|s| needed.contains(s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_follows_its_dependencies() {
        let order = topological_order();
        assert_eq!(order.len(), Stage::ALL.len());
        for (i, stage) in order.iter().enumerate() {
            for dep in stage.depends_on() {
                let j = order.iter().position(|s| s == dep).unwrap();
                assert!(j < i, "{stage} runs before its dependency {dep}");
            }
        }
        assert_eq!(Stage::parse("encode"), Some(Stage::Encode));
        assert_eq!(Stage::parse("nope"), None);
    }

    #[test]
    fn requested_stages_bring_their_dependencies() {
        assert_eq!(
            with_dependencies(&[Stage::Probe]),
            vec![Stage::Prepare, Stage::Probe]
        );
        assert_eq!(with_dependencies(&[Stage::Train]), Stage::PIPELINE.to_vec());
        assert_eq!(
            with_dependencies(&[Stage::Teacher, Stage::Prepare]),
            vec![Stage::Prepare, Stage::Teacher]
        );
    }
}
