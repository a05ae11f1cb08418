//! The HRNetV2 face model and its named parameter store.

pub mod hrnet;
pub mod precision;
pub mod pretrained;
pub mod store;

pub use hrnet::{BlockKind, FusionMode, GpuInferNet, HrNet, HrnetSpec, InferNet, StageSpec};
pub use precision::Precision;
pub use store::{LoadReport, Slot, Store};
