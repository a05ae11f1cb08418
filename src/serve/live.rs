//! The live mode: webcam frames over a WebSocket (`/v1/live`), each connection holding its own
//! tracker state (the video issue's tracking and smoothing).
//!
//! A stub for now: the page's helper fills it (issue 28, item 2). Frames reach the model the way
//! `POST /v1/landmarks` does: faces found on the blocking pool (`Model::detector`), cropped with
//! `predict::crop_faces`, landmarks from `Model::batcher` (`Batcher::infer`).

use super::state::AppState;
use axum::Router;
use std::sync::Arc;

/// The live mode's routes (none yet).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
