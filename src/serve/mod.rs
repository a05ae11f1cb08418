//! `hrk serve`: the landmark model behind HTTP (axum on tokio). The model and detector are loaded once
//! (on the inference thread, while the server already answers `/healthz`); requests go through:
//!
//! - **router.rs**: every route in one function ([`router`]), the bearer-token check, CORS, the JSON
//!   404/405, the per-request metrics;
//! - **landmarks.rs**: `POST /v1/landmarks`: admission (a bounded queue: 503 + `Retry-After` when
//!   full), the body (raw image or multipart, size-limited), the options (options.rs), decode →
//!   faces → crops on the blocking pool, then the batcher, then the same JSON as `hrk predict`'s
//!   `<name>.json` (`predict::image_json`);
//! - **batcher.rs**: the inference thread that owns the model: requests arriving together (within
//!   the batching wait) share one landmark forward pass; the event loop never runs the model;
//! - **state.rs**: [`AppState`], what every handler shares (limits, metrics, the loaded [`Model`]);
//! - **metrics.rs** (Prometheus text), **openapi.rs** (`/openapi.json`), **errors.rs** (every error
//!   is `{"error": "…"}`);
//! - **page.rs** and **live.rs**: the browser page at `/` and the WebSocket live mode (their own
//!   routes, merged into the router by [`router`]).
//!
//! [`serve`] binds, serves until SIGTERM or Ctrl-C, then lets in-flight requests finish (new
//! connections are refused), stops the inference thread and returns.

mod batcher;
mod errors;
mod landmarks;
pub mod live;
mod metrics;
mod openapi;
mod options;
pub mod page;
mod router;
mod state;

pub use batcher::{Batcher, InferenceJob};
pub use errors::ApiError;
pub use metrics::Metrics;
pub use options::RequestOptions;
pub use router::router;
pub use state::{AppState, Batching, Limits, LoadedModel, Model, RequestDefaults, ServeConfig};

use anyhow::{anyhow, Context, Result};
use std::sync::Arc;

/// Builds the model on the inference thread (the CLI's closure: config, weights, device, detector).
pub type ModelLoader = Box<dyn FnOnce() -> Result<LoadedModel> + Send>;

/// Serves until SIGTERM or Ctrl-C (or until `load` fails: then its error). Logs the address it
/// listens on (`listening on http://ADDR`, the bound port for `:0`) and, at the end, what it answered.
pub fn serve(config: ServeConfig, load: ModelLoader) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hrk-serve")
        .build()
        .context("hrk serve: cannot start the async runtime")?;
    runtime.block_on(run(config, load))
}

async fn run(config: ServeConfig, load: ModelLoader) -> Result<()> {
    let addr = config.addr;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("the listening socket has no address")?;
    let (state, jobs) = AppState::new(config);
    let worker = batcher::spawn(state.clone(), jobs, load)?;
    log::info!("listening on http://{bound}");
    let app = router(state.clone());
    let shutdown = shutdown_signal(state.clone());
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("hrk serve: the server failed")?;
    // Every connection is closed: no request can reach the batcher any more.
    state.stop_inference();
    worker.join().map_err(|_| anyhow!("hrk serve: the inference thread panicked"))?;
    if let Some(e) = state.load_error() {
        return Err(anyhow!("{e}"));
    }
    log::info!("stopped; {}", state.metrics.summary());
    Ok(())
}

/// SIGTERM, Ctrl-C, or a model that failed to load.
async fn shutdown_signal(state: Arc<AppState>) {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => log::info!("Ctrl-C: finishing {} request(s) in flight, refusing new ones", state.in_flight()),
        _ = term => log::info!("SIGTERM: finishing {} request(s) in flight, refusing new ones", state.in_flight()),
        _ = state.load_failed() => {}
    }
    state.begin_shutdown();
}
