//! The inference thread: it loads the model (the CLI's loader), then owns it and runs every landmark
//! forward pass. Handlers hand it cropped faces through [`Batcher::infer`]; after the first request
//! of a pass it waits up to [`Batching::wait`] for more (or until [`Batching::max_faces`] faces), so
//! that requests arriving together share one pass. The async event loop only awaits the answer.

use super::errors::ApiError;
use super::state::{AppState, Batching, LoadedModel, Model};
use super::ModelLoader;
use crate::eval::TestOptions;
use crate::model::HrNet;
use crate::predict::{CroppedFaces, FaceResult, LandmarkEngine, LandmarkOptions};
use anyhow::{Context, Result};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tokio::sync::oneshot;

/// One image's faces for the model, with the request's test-time options (requests with different
/// options do not share a pass).
pub struct InferenceJob {
    pub faces: CroppedFaces,
    pub test: TestOptions,
}

/// What travels to the inference thread.
pub(super) enum Message {
    Job(Queued),
    /// Finish the pass at hand and end (sent after the last connection closed).
    Stop,
}

pub(super) struct Queued {
    job: InferenceJob,
    reply: oneshot::Sender<Result<Vec<FaceResult>, String>>,
}

/// The handlers' end of the inference thread's queue.
pub struct Batcher {
    jobs: mpsc::Sender<Message>,
    /// Jobs sent and not yet taken into a pass (the `/metrics` gauge).
    pending: Arc<AtomicUsize>,
}

impl Batcher {
    /// Runs `job`'s faces through the model (sharing a pass with other requests) and gives their
    /// landmarks, in the job's face order, without poses.
    pub async fn infer(&self, job: InferenceJob) -> Result<Vec<FaceResult>, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.jobs.send(Message::Job(Queued { job, reply })).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable("the server is shutting down"));
        }
        match answer.await {
            Ok(Ok(faces)) => Ok(faces),
            Ok(Err(e)) => Err(ApiError::internal(format!("inference failed: {e}"))),
            Err(_) => Err(ApiError::internal("the inference thread dropped the request")),
        }
    }
}

/// Starts the inference thread: it runs `load`, publishes the [`Model`] in `state`, then serves
/// `jobs` until [`Message::Stop`]. A failed load is reported through [`AppState::fail_load`].
pub(super) fn spawn(
    state: Arc<AppState>, jobs: mpsc::Receiver<Message>, load: ModelLoader,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hrk-infer".into())
        .spawn(move || {
            let loaded = match load() {
                Ok(m) => m,
                Err(e) => {
                    state.fail_load(format!("{e:#}"));
                    return;
                }
            };
            let LoadedModel { mut net, detector, image_size, flip_pairs, defaults, description } = loaded;
            let batcher = Batcher { jobs: state.job_sender(), pending: state.metrics.inference_queue.clone() };
            log::info!("ready: {description}");
            state.set_model(Model {
                detector,
                image_size,
                joints: net.spec.num_joints,
                flip_test_available: flip_pairs.is_some(),
                defaults,
                description,
                batcher,
            });
            let pairs = flip_pairs.unwrap_or_default();
            let mut passes = Passes { net: &mut net, image_size, pairs: &pairs, state: &state };
            passes.serve(&jobs, &state.config.batching);
        })
        .context("hrk serve: cannot start the inference thread")
}

struct Passes<'a> {
    net: &'a mut HrNet,
    image_size: [usize; 2],
    pairs: &'a [(usize, usize)],
    state: &'a AppState,
}

impl Passes<'_> {
    /// Gathers and runs passes until told to stop (or every sender is gone).
    fn serve(&mut self, jobs: &mpsc::Receiver<Message>, batching: &Batching) {
        loop {
            let (batch, stop) = gather(jobs, batching, &self.state.metrics.inference_queue);
            if !batch.is_empty() {
                self.run(batch, batching.max_faces);
            }
            if stop {
                return;
            }
        }
    }

    /// One gathered batch: a forward pass per distinct test-time option set (usually one).
    fn run(&mut self, batch: Vec<Queued>, max_faces: usize) {
        // Requests whose client is gone (timed out, disconnected) cost nothing more.
        let live: Vec<Queued> = batch.into_iter().filter(|q| !q.reply.is_closed()).collect();
        let mut groups: Vec<(TestOptions, Vec<Queued>)> = Vec::new();
        for q in live {
            match groups.iter_mut().find(|(t, _)| *t == q.job.test) {
                Some((_, g)) => g.push(q),
                None => groups.push((q.job.test, vec![q])),
            }
        }
        for (test, group) in groups {
            let faces: usize = group.iter().map(|q| q.job.faces.faces.len()).sum();
            self.state.metrics.record_pass(group.len(), faces);
            let (replies, crops): (Vec<_>, Vec<_>) = group.into_iter().map(|q| (q.reply, Some(q.job.faces))).unzip();
            let pairs = if test.flip_test { self.pairs.to_vec() } else { Vec::new() };
            let opts = LandmarkOptions { test, pairs, batch: max_faces.max(1) };
            let image_size = self.image_size;
            let net = &mut *self.net;
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                LandmarkEngine::new(net, opts, image_size)?.infer_batched(&crops)
            }));
            let results: Result<Vec<Vec<FaceResult>>, String> = match ran {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("the model panicked".to_string()),
            };
            match results {
                Ok(per_image) => {
                    for (reply, faces) in replies.into_iter().zip(per_image) {
                        let _ = reply.send(Ok(faces));
                    }
                }
                Err(e) => {
                    log::error!("inference failed: {e}");
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// The next batch: blocks for its first job, then takes more until `batching.wait` has passed
/// since or `batching.max_faces` faces are in; whether a stop came (the batch is still run).
fn gather(jobs: &mpsc::Receiver<Message>, batching: &Batching, pending: &AtomicUsize) -> (Vec<Queued>, bool) {
    let first = match jobs.recv() {
        Ok(Message::Job(q)) => q,
        Ok(Message::Stop) | Err(_) => return (Vec::new(), true),
    };
    pending.fetch_sub(1, Ordering::SeqCst);
    let mut faces = first.job.faces.faces.len();
    let mut batch = vec![first];
    if batching.wait.is_zero() {
        return (batch, false);
    }
    let deadline = Instant::now() + batching.wait;
    while faces < batching.max_faces {
        let left = deadline.saturating_duration_since(Instant::now());
        match jobs.recv_timeout(left) {
            Ok(Message::Job(q)) => {
                pending.fetch_sub(1, Ordering::SeqCst);
                faces += q.job.faces.faces.len();
                batch.push(q);
            }
            Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return (batch, true),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    (batch, false)
}
