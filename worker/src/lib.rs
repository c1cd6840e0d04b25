//! slim's worker: runs stage executors and owns the ML code on Burn.
//!
//! The compute backend is chosen at build time: `flex` (CPU, default) or `cuda` (GPU, cargo
//! feature `cuda`). Stage code is generic over `burn::tensor::backend::Backend`; this module
//! names the concrete backend the binary was built with.

pub mod backend;
pub mod chat;
pub mod encoder;
pub mod executor;
pub mod llm;
pub mod nn;
pub mod recommend;
pub mod serve;
pub mod stages;
pub mod weights;
