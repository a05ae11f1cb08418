//! hrk: HRNetV2 facial-landmark detection — tensor engine with autograd, CPU and CUDA devices,
//! the official configs, data pipeline, metrics and checkpoint formats.
//!
//! Errors: library functions return `anyhow::Result` with one-line messages that name the
//! file / line / key / tensor / op involved. Library code does not panic on bad input.
//!
//! Layers: `cli` (and `main.rs`) sit on top and are the only code that prints; the library
//! reports through returned values, `log` records and observers (`train::TrainObserver`), and never
//! imports `cli`. `config` knows nothing of `model`. Which top-level module may import which is the
//! layer table of docs/INTERNALS.md ("Layering"), checked by tests/layering.rs.

pub mod atomic_file;
pub mod autograd;
pub mod float;
pub mod gradcheck;
pub mod host_isa;
pub mod host_tensor;
pub mod input_file;
pub mod io;
pub mod memory_budget;
pub mod model;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod scoped;
pub mod storage;
pub mod switches;
pub mod tensor;
pub mod tiles;

pub use autograd::{backward, backward_with, no_grad, Gradients};
pub use tensor::{DType, Device, Storage, Tensor};
pub mod cli;
pub mod config;
pub mod cuda;
pub mod data;
pub mod detect;
pub mod draw;
pub mod eval;
pub mod export;
pub mod plot;
pub mod predict;
pub mod serve;
pub mod synth;
pub mod train;
pub mod video;
