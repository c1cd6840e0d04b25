//! One home per stage, each implementing [`crate::executor::StageExecutor`].

pub mod distill;
pub mod encode;
pub mod prepare;
pub mod probe;
pub mod rationales;
pub mod student;
pub mod teacher;
pub mod train;
