//! The browser page at `/` (plain HTML + JS served by the binary: drop a photo, see its landmarks).
//!
//! A stub for now: the page's helper fills it (issue 28, item 2). Its routes are merged into the
//! service by `router::router`; they pass the same layers (metrics, CORS, API key).

use super::state::AppState;
use axum::Router;
use std::sync::Arc;

/// The page's routes (none yet).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
