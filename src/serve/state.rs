//! What every handler shares: the service's settings, its metrics, the admission queue and, once
//! loaded, the [`Model`] (detector, facts about the landmark model, the [`Batcher`] that feeds the
//! inference thread).

use super::batcher::{Batcher, Message};
use super::metrics::Metrics;
use crate::detect::{DetectorOptions, Mtcnn};
use crate::eval::TestOptions;
use crate::model::HrNet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

/// How `hrk serve` runs (its flags).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub limits: Limits,
    pub batching: Batching,
    /// Bearer token every endpoint but `/healthz` and `/readyz` requires (None: open).
    pub api_key: Option<String>,
    /// The one origin CORS allows (None: no CORS headers).
    pub cors: Option<String>,
}

/// What one request may cost.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, bytes (413 beyond).
    pub max_body: usize,
    /// Largest image, pixels (413 beyond; checked from the header, before decoding).
    pub max_pixels: u64,
    /// Requests admitted at once (being read, decoded, waiting for or in the model); one more gets
    /// 503 with `Retry-After`.
    pub queue: usize,
    /// Whole-request time limit (504 beyond).
    pub timeout: Duration,
}

/// How requests share forward passes.
#[derive(Clone, Debug)]
pub struct Batching {
    /// Most faces per forward pass.
    pub max_faces: usize,
    /// How long the inference thread waits for more requests after the first (zero: every request
    /// has its own forward pass, i.e. batching off).
    pub wait: Duration,
}

/// What a request gets unless its options say otherwise (the server's flags).
#[derive(Clone, Debug)]
pub struct RequestDefaults {
    /// Faces from MTCNN (true) or the whole image (false) when no boxes are given.
    pub detector: bool,
    pub detector_options: DetectorOptions,
    pub test: TestOptions,
}

/// What the CLI's loader builds on the inference thread.
pub struct LoadedModel {
    /// The landmark model, on its device, with its precision set.
    pub net: HrNet,
    /// MTCNN (None: started with `--detector none`; requests then cannot ask for it).
    pub detector: Option<Mtcnn>,
    /// The model's input, height × width (MODEL.IMAGE_SIZE).
    pub image_size: [usize; 2],
    /// Mirrored landmark pairs for the flip test (None: the layout has none, flip test refused).
    pub flip_pairs: Option<Vec<(usize, usize)>>,
    pub defaults: RequestDefaults,
    /// What `/readyz` says about the model (config and weights file names).
    pub description: String,
}

/// The loaded model as the handlers see it (the network itself stays on the inference thread).
pub struct Model {
    pub detector: Option<Mtcnn>,
    pub image_size: [usize; 2],
    pub joints: usize,
    pub flip_test_available: bool,
    pub defaults: RequestDefaults,
    pub description: String,
    pub batcher: Batcher,
}

/// The state shared by every handler (`Arc<AppState>` is the router's state).
pub struct AppState {
    pub config: ServeConfig,
    pub metrics: Metrics,
    /// One permit per admitted request ([`Limits::queue`]).
    pub admission: Arc<Semaphore>,
    model: OnceLock<Model>,
    jobs: mpsc::Sender<Message>,
    load_error: Mutex<Option<String>>,
    load_failed: Notify,
    stopping: AtomicBool,
}

impl AppState {
    /// The state and the receiving end of the inference thread's queue.
    pub(super) fn new(config: ServeConfig) -> (Arc<AppState>, mpsc::Receiver<Message>) {
        let (jobs, receiver) = mpsc::channel();
        let state = AppState {
            metrics: Metrics::new(config.limits.queue),
            admission: Arc::new(Semaphore::new(config.limits.queue)),
            config,
            model: OnceLock::new(),
            jobs,
            load_error: Mutex::new(None),
            load_failed: Notify::new(),
            stopping: AtomicBool::new(false),
        };
        (Arc::new(state), receiver)
    }

    /// The model, once loaded (None while loading, or after a failed load).
    pub fn model(&self) -> Option<&Model> {
        self.model.get()
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.config.limits.queue.saturating_sub(self.admission.available_permits())
    }

    /// The inference thread's sender (each [`Batcher`] holds a clone).
    pub(super) fn job_sender(&self) -> mpsc::Sender<Message> {
        self.jobs.clone()
    }

    /// Called once by the inference thread when the model is ready.
    pub(super) fn set_model(&self, model: Model) {
        if self.model.set(model).is_err() {
            log::warn!("the model was loaded twice; keeping the first");
        }
    }

    /// Called by the inference thread when loading failed: the server shuts down with `error`.
    pub(super) fn fail_load(&self, error: String) {
        *self.load_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.load_failed.notify_one();
    }

    pub(super) fn load_error(&self) -> Option<String> {
        self.load_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resolves when loading failed.
    pub(super) async fn load_failed(&self) {
        // `notify_one` keeps a permit when nobody waits yet, so a failure before this call counts.
        self.load_failed.notified().await;
    }

    /// From SIGTERM / Ctrl-C on: new requests get 503 and `/readyz` says so, while the ones in
    /// flight finish.
    pub(super) fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Asks the inference thread to finish (after the jobs already queued).
    pub(super) fn stop_inference(&self) {
        let _ = self.jobs.send(Message::Stop);
    }
}
