//! The HRNetV2 face model and its named parameter store.

pub mod hrnet;
pub mod pretrained;
pub mod store;

pub use hrnet::infer::{self, InferNet};
pub use hrnet::{BlockKind, HrNet, HrnetSpec, StageSpec};
pub use store::{LoadReport, Slot, Store};
