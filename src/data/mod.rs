//! Data pipeline. (data2 branch copy: the sibling `data` branch owns this file; at merge keep
//! theirs and add the `pub mod` lines below.)

pub mod augment;
pub mod cofw;
pub mod dataset;
pub mod image;
pub mod loader;
pub mod pending;
pub mod sample;
