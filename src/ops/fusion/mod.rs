//! The multi-resolution fuse-row sum as one GPU kernel, on raw device buffers: inference-only (no tape),
//! used by the GPU inference engine (model/hrnet/exec_gpu.rs); the CPU engine sums its fuse rows itself.

pub mod cuda_kernel;

pub use cuda_kernel::{backward, forward, forward_unfused, UpTerm};
