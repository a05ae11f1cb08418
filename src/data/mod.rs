//! Data pipeline of the official HRNet face code, reproduced bit for bit: geometry and crop
//! (scipy.misc + Pillow semantics), the heatmap codec (targets and decoding), flips and evaluation metrics.

pub mod annotations;
pub mod codec;
pub mod flip;
pub mod image;
pub mod metrics;
pub mod pillow;
pub mod transforms;
// Dataset reading, the per-sample pipeline and the loader.
pub mod augment;
pub mod cofw;
pub mod dataset;
pub mod imageio;
pub mod jpeg;
pub mod loader;
pub mod sample;
