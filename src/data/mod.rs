//! Data pipeline of the official HRNet face code, reproduced bit for bit: geometry and crop
//! (scipy.misc + Pillow semantics), heatmap targets, flips, decoding and evaluation metrics.

pub mod decode;
pub mod flip;
pub mod heatmap;
pub mod image;
pub mod metrics;
pub mod pillow;
pub mod transforms;
// Dataset reading, the per-sample pipeline and the loader.
pub mod augment;
pub mod cofw;
pub mod dataset;
pub mod imageio;
pub mod loader;
pub mod sample;
