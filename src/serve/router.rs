//! Every route of the service, built in [`router`], with the layers around them: the per-request
//! metrics, CORS (`--cors ORIGIN`), the bearer token (`--api-key`, not on the health checks), and
//! JSON answers for unknown routes and methods.

use super::errors::json_error;
use super::landmarks::landmarks;
use super::state::AppState;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Instant;

/// The routes that answer without the API key (probes of orchestrators and load balancers).
const OPEN_PATHS: &[&str] = &["/healthz", "/readyz"];

/// Whether `path` answers without the bearer token: the health checks, the page (where the key is
/// typed) and the live WebSocket's upgrade (browsers cannot set its headers: it checks the key in
/// its first message, live.rs).
fn is_open(path: &str) -> bool {
    OPEN_PATHS.contains(&path) || super::page::is_page_path(path) || path == super::live::LIVE_PATH
}

/// The routes metrics name; any other path is counted as `other` (so that scans cannot grow the
/// label set).
const NAMED_PATHS: &[&str] = &["/", "/v1/landmarks", "/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/live"];

/// The whole service: the API routes, the page's and the live mode's (page.rs, live.rs), and the
/// layers, outermost first: metrics, CORS, API key.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/landmarks", post(landmarks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(super::page::routes())
        .merge(super::live::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // The landmark handler reads bodies under its own limit (--max-body), with a JSON 413.
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(state.clone(), require_api_key))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .layer(middleware::from_fn_with_state(state.clone(), count_request));
    api.with_state(state)
}

async fn healthz() -> Response {
    json_ok(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.is_shutting_down() {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down");
    }
    match state.model() {
        Some(m) => json_ok(serde_json::json!({
            "status": "ready",
            "model": m.description,
            "landmarks": m.joints,
            "detector": m.detector.is_some(),
        })),
        None => json_error(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading"),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let body = state.metrics.render(state.in_flight());
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response()
}

async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    json_ok(super::openapi::document(&state.config))
}

async fn not_found(request: Request) -> Response {
    json_error(StatusCode::NOT_FOUND, format!("no route {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Response {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", request.method(), request.uri().path()),
    )
}

fn json_ok(value: serde_json::Value) -> Response {
    let body = value.to_string() + "\n";
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Counts every answered request by route and status, with its latency.
async fn count_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let endpoint = NAMED_PATHS.iter().find(|p| **p == path).copied().unwrap_or("other");
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record_request(endpoint, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `Authorization: Bearer KEY` on every route but the health checks, when a key is set (401 with
/// `WWW-Authenticate: Bearer` otherwise).
async fn require_api_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(key) = &state.config.api_key else { return next.run(request).await };
    if is_open(request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if given.is_some_and(|g| same_secret(g.as_bytes(), key.as_bytes())) {
        return next.run(request).await;
    }
    let why = if given.is_none() { "missing API key (send Authorization: Bearer KEY)" } else { "wrong API key" };
    super::landmarks::drain(request.into_body(), state.config.limits.max_body).await;
    let mut response = json_error(StatusCode::UNAUTHORIZED, why);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Compares without stopping at the first difference (the time does not tell how much matched).
pub(super) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `--cors ORIGIN`: answers preflights (before the key check: browsers send no credentials on
/// them) and adds `Access-Control-Allow-Origin` for that origin; without the flag, nothing.
async fn cors(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(origin) = state.config.cors.as_deref() else { return next.run(request).await };
    let Ok(allowed) = HeaderValue::from_str(origin) else { return next.run(request).await };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd") && !same_secret(b"abc", b"abcd") && !same_secret(b"", b"a"));
    }
}
