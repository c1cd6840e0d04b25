//! One home per stage, each implementing [`crate::executor::StageExecutor`].

pub mod encode;
pub mod prepare;
pub mod probe;
pub mod teacher;
pub mod train;
