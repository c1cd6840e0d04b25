//! One home per stage, each implementing [`crate::executor::StageExecutor`].

pub mod prepare;
