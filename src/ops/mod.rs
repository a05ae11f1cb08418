//! The engine's ops. One folder per op: the tensor-level op with its backward, and its CPU kernels.

pub mod batchnorm;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod loss;
pub mod upsample;

pub use batchnorm::{batch_norm_eval, batch_norm_train, BN_EPS};
pub use concat::concat_channels;
pub use conv2d::{conv2d, Conv2dGeom};
pub use elementwise::{add, relu, scale};
pub use loss::mse_loss;
pub use upsample::{upsample_bilinear, upsample_nearest};
