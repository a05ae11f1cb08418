//! CUDA engine: hand-written kernels (kernels/*.cu, PTX embedded by build.rs), their parameter structs and
//! launch geometry, a host emulator that runs the same kernels on the CPU (tests), the driver probe and
//! device selection (always compiled), and the cudarc runtime (feature `cuda`).
//!
//! Files, lowest first (a file imports only from files above it in this list, never from this one):
//! `params` (the parameter structs), `kernels` (descriptors and geometry), `alloc` (the caching
//! allocator's books), `driver` (PTX, probe, device choice), `emu` (one emulated launch), `emu_device`
//! (the emulated device: host memory, recorded launches), `runtime` (the CUDA device), `device`
//! (`GpuDevice` and its backend dispatch), `buffer` (`GpuBuffer`), `graph` (capture, replay and the
//! shape-keyed graph cache), `math` (the convolutions' arithmetic).
pub mod alloc;
pub mod buffer;
pub mod device;
pub mod driver;
pub mod emu;
mod emu_device;
pub mod graph;
pub mod kernels;
pub mod math;
pub mod params;
#[cfg(feature = "cuda")]
pub mod runtime;

pub use crate::switches::GpuMath;
pub use buffer::GpuBuffer;
pub use device::GpuDevice;
pub use driver::{
    cu_result_name, cuda_ready, probe_driver, ptx, select_device, CudaUnavailable, DeviceChoice, DeviceRequest,
    DriverInfo, MIN_DRIVER_VERSION,
};
pub use graph::{GpuGraph, GraphCache, GraphCounts, Lookup};
pub use math::{gpu_math, gpu_math_on, set_gpu_math, with_gpu_math};
