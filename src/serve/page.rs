//! The browser page at `/`: plain HTML, JS and CSS (src/serve/page/, no build step, nothing from a
//! CDN) compiled into the binary. Pick or drop a photo and its faces come from `POST
//! /v1/landmarks`; the camera streams frames to the live WebSocket (live.rs). The page answers
//! without the API key (it is where the key is typed); every request it makes sends the key.

use super::state::AppState;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

/// The page's files: path, media type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("page/index.html")),
    ("/page.js", "text/javascript; charset=utf-8", include_str!("page/page.js")),
    ("/page.css", "text/css; charset=utf-8", include_str!("page/page.css")),
];

/// Whether `path` is one of the page's files (they answer without the API key).
pub fn is_page_path(path: &str) -> bool {
    ASSETS.iter().any(|(p, _, _)| *p == path)
}

/// The page's routes.
pub fn routes() -> Router<Arc<AppState>> {
    ASSETS.iter().fold(Router::new(), |router, &(path, media_type, body)| {
        router.route(path, get(move || async move { asset(media_type, body) }))
    })
}

fn asset(media_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(media_type)),
        // A new binary may bring a new page: browsers revalidate instead of keeping a stale copy.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    ];
    (headers, body).into_response()
}
