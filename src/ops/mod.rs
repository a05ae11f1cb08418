//! The engine's ops. One folder per op: `mod.rs` holds the op (shape checks, ONE tape record, ONE backward
//! written in terms of kernel calls) and its kernel trait; `cpu_kernel.rs` and `cuda_kernel.rs` implement
//! that trait for host storage and for GPU storage (kernels/*.cu, run on a CUDA device or the emulator).
//! An op picks its kernels with `kernels_for`, the one place that looks at a device.
//!
//! Adding an op `foo`: `ops/foo/mod.rs` declares `trait FooKernel` (forward and backward over `Storage`),
//! checks shapes/dtypes/devices, calls `kernels(&device).forward(..)` and records one `FooBackward` whose
//! `backward` calls the same trait; `cpu_kernel.rs` implements it for `Cpu`, `cuda_kernel.rs` for `Cuda`
//! (launching kernels/foo.cu through a `cuda::kernels` descriptor and a params struct mirrored in
//! params.h / cuda/params.rs, with one builder); a test compares the two devices and a gradient check.

pub mod batchnorm;
pub mod concat;
pub mod conv2d;
pub mod elementwise;
pub mod fusion;
pub mod loss;
pub mod max_pool;
pub mod prelu;
pub mod softmax;
pub mod upsample;

pub use batchnorm::{batch_norm_eval, batch_norm_train, BN_EPS};
pub use concat::concat_channels;
pub use conv2d::{conv2d, Conv2dGeom};
pub use elementwise::{add, relu, scale};
pub use loss::mse_loss;
pub use max_pool::max_pool2d_ceil;
pub use prelu::prelu;
pub use softmax::softmax_channels;
pub use upsample::{upsample_bilinear, upsample_nearest};

use crate::tensor::Device;

/// The CPU kernels of every op (each op's `cpu_kernel.rs` implements its kernel trait for it).
pub(crate) struct Cpu;
/// The CUDA kernels of every op (each op's `cuda_kernel.rs`); they run on the buffers' own device.
pub(crate) struct Cuda;

/// An op's kernels for tensors on `device`: `K` is the op's kernel trait, implemented by [`Cpu`] and [`Cuda`].
pub(crate) fn kernels_for<K: ?Sized>(device: &Device, cpu: &'static K, cuda: &'static K) -> &'static K {
    match device {
        Device::Cpu => cpu,
        Device::Gpu(_) => cuda,
    }
}
