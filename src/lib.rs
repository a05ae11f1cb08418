//! hrk: HRNetV2 facial-landmark detection — tensor engine with autograd, CPU and CUDA devices,
//! the official configs, data pipeline, metrics and checkpoint formats.
//!
//! Errors: library functions return `anyhow::Result` with one-line messages that name the
//! file / line / key / tensor / op involved. Library code does not panic on bad input.

pub mod host;
pub mod cuda;
