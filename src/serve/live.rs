//! The live mode: camera frames over a WebSocket at `/v1/live`, each connection holding its own
//! [`Tracker`] — the tracking and One Euro smoothing of `hrk predict --stdin-frames`
//! (predict/track.rs, smooth.rs): the detector runs on the first frame, every `--redetect`-like
//! [`REDETECT`] frames and after a lost track; between, each face is cropped from its previous
//! landmarks and keeps its `id`.
//!
//! The protocol (the page's page.js speaks it):
//! 1. the client's first message is text, `{"key": "…", "fps": 15}`: the API key (browsers cannot set
//!    headers on a WebSocket, so the route is open to the upgrade and checks the key here) and the
//!    frame rate of the smoother's clock (frame `i` is at `i / fps` seconds, as with `--fps`);
//!    the server answers `{"ready": true}`, or `{"error": "…"}` and closes;
//! 2. then each binary message is one image (JPEG, PNG, …; the limits of `POST /v1/landmarks`) and
//!    gets one text answer, in order: `hrk predict`'s per-image JSON (faces with their track `id`)
//!    plus `"frame"`, its index; or `{"frame": i, "error": "…"}` for a frame that could not be read
//!    or found the server busy — the stream goes on (the tracks keep, time moves on).
//!
//! Request options (`detector`, `min_face`, `decode`, `flip_test`) come in the URL's query, as for
//! `POST /v1/landmarks`. Frames reach the model the way that route's do: faces found and cropped on
//! the blocking pool (landmarks.rs's `prepare`, or the tracker's faces), landmarks from the
//! batcher. Each frame takes an admission permit like a request: a full server answers that frame
//! busy instead of queueing without bound.

use super::batcher::InferenceJob;
use super::errors::ApiError;
use super::landmarks::{check_header, prepare, Prepared, Upload};
use super::options::{FacesFrom, RequestOptions, Resolved};
use super::router::same_secret;
use super::state::AppState;
use crate::data::image::check_face_image_size;
use crate::data::imageio::decode_rgb8_bytes;
use crate::predict::{add_poses, crop_faces, image_json, ImageResult, OneEuroParams, TrackOptions, Tracker};
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The live route (it answers the upgrade without the API key: the key comes in the first message).
pub const LIVE_PATH: &str = "/v1/live";

/// Frames between detector runs while every face is tracked (`hrk predict --redetect`'s default).
pub const REDETECT: usize = 30;

/// The smoother's frame rate when the first message names none (the page's frame cap).
const DEFAULT_FPS: f64 = 15.0;

/// How long the server waits for the first message.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What each answer's `"image"` is.
const FRAME_LABEL: &str = "frame";

/// The live mode's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route(LIVE_PATH, get(upgrade))
}

async fn upgrade(
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    State(state): State<Arc<AppState>>, uri: Uri,
) -> Response {
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => {
            return ApiError::new(e.status(), format!("{LIVE_PATH} is a WebSocket: {}", e.body_text())).into_response()
        }
    };
    let options = match RequestOptions::from_query(uri.query()) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let max = state.config.limits.max_body;
    upgrade.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| session(socket, state, options))
}

/// The first message.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    fps: Option<f64>,
}

/// One connection: the hello, then frames until the client closes.
async fn session(mut socket: WebSocket, state: Arc<AppState>, options: RequestOptions) {
    let opened = match open(&mut socket, &state, options).await {
        Ok(opened) => opened,
        Err(e) => {
            let _ = socket.send(Message::text(error_json(None, &e))).await;
            let close = CloseFrame { code: axum::extract::ws::close_code::POLICY, reason: "refused".into() };
            let _ = socket.send(Message::Close(Some(close))).await;
            return;
        }
    };
    let (resolved, mut tracker) = opened;
    if socket.send(Message::text(r#"{"ready":true}"#)).await.is_err() {
        return;
    }
    let mut frame = 0usize;
    while let Some(Ok(message)) = socket.recv().await {
        let bytes = match message {
            Message::Binary(bytes) => bytes,
            Message::Close(_) => break,
            // Text after the hello, pings and pongs: nothing to answer (axum answers pings).
            _ => continue,
        };
        let answer = match answer_frame(&state, &resolved, &mut tracker, bytes).await {
            Ok(mut doc) => {
                doc["frame"] = serde_json::json!(frame);
                doc.to_string()
            }
            Err(e) => {
                tracker.skip_frame();
                error_json(Some(frame), &e)
            }
        };
        frame += 1;
        if socket.send(Message::text(answer)).await.is_err() {
            break;
        }
    }
}

/// `{"error": …}`, with the frame's index when it is one frame's.
fn error_json(frame: Option<usize>, e: &ApiError) -> String {
    let mut doc = serde_json::json!({ "error": e.message });
    if let Some(i) = frame {
        doc["frame"] = serde_json::json!(i);
    }
    doc.to_string()
}

/// Reads the hello: the key (when the server has one), the options, the tracker.
async fn open(
    socket: &mut WebSocket, state: &AppState, options: RequestOptions,
) -> Result<(Resolved, Tracker), ApiError> {
    let first = match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
        Ok(Some(Ok(Message::Text(text)))) => text,
        Ok(_) => return Err(ApiError::bad_request("the first message must be text: {\"key\": …, \"fps\": …}")),
        Err(_) => return Err(ApiError::bad_request("no first message within 10 s ({\"key\": …, \"fps\": …})")),
    };
    let hello: Hello = serde_json::from_str(first.as_str())
        .map_err(|e| ApiError::bad_request(format!("first message: {e} (expected {{\"key\": …, \"fps\": …}})")))?;
    if let Some(key) = &state.config.api_key {
        match hello.key.as_deref() {
            None | Some("") => {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNAUTHORIZED,
                    "missing API key (send {\"key\": KEY} first)",
                ))
            }
            Some(given) if !same_secret(given.as_bytes(), key.as_bytes()) => {
                return Err(ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "wrong API key"))
            }
            Some(_) => {}
        }
    }
    let fps = hello.fps.unwrap_or(DEFAULT_FPS);
    if !(fps.is_finite() && fps > 0.0 && fps <= 1000.0) {
        return Err(ApiError::bad_request(format!("fps {fps}: expected frames per second in (0, 1000]")));
    }
    let model = state.model().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    let resolved = options.resolve(model)?;
    let mut track = TrackOptions { redetect: REDETECT, fps, smooth: Some(OneEuroParams::DEFAULT) };
    // As `StreamState::tracked`: the whole image has nothing to track, it is the face on every frame.
    if matches!(resolved.faces, FacesFrom::WholeImage) {
        track.redetect = 1;
    }
    Ok((resolved, Tracker::new(track)))
}

/// One frame: faces from the detector (or given boxes) when the tracker wants a detection, else
/// from the tracks; landmarks; ids and smoothing; poses.
async fn answer_frame(
    state: &Arc<AppState>, resolved: &Resolved, tracker: &mut Tracker, bytes: Bytes,
) -> Result<serde_json::Value, ApiError> {
    let model = state.model().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    let limits = &state.config.limits;
    let _permit = state.admission.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!("server busy: {} requests in progress (--queue); frame skipped", limits.queue))
    })?;
    let detected = tracker.wants_detection();
    let tracked = (!detected).then(|| tracker.tracked_faces());
    let (shared, resolved_here) = (state.clone(), resolved.clone());
    let work = tokio::task::spawn_blocking(move || prepare_frame(&shared, bytes, &resolved_here, tracked));
    let prepared = match tokio::time::timeout(limits.timeout, work).await {
        Ok(joined) => joined.map_err(|_| ApiError::internal("frame preparation panicked"))??,
        Err(_) => {
            return Err(ApiError::internal(format!(
                "frame timed out after {} s (--timeout)",
                limits.timeout.as_secs_f64()
            )))
        }
    };
    let Prepared { width, height, cropped, .. } = prepared;
    let mut faces = if cropped.faces.is_empty() {
        Vec::new()
    } else {
        model.batcher.infer(InferenceJob { faces: cropped, test: resolved.test }).await?
    };
    tracker.update(&mut faces, detected);
    add_poses(&mut faces, width, height);
    Ok(image_json(&ImageResult { path: PathBuf::from(FRAME_LABEL), width, height, faces }))
}

/// Decode and crop a frame (on the blocking pool): at `tracked` faces, or found as `POST
/// /v1/landmarks` finds them.
fn prepare_frame(
    state: &AppState, bytes: Bytes, resolved: &Resolved, tracked: Option<Vec<crate::predict::FoundFace>>,
) -> Result<Prepared, ApiError> {
    let Some(faces) = tracked else {
        return prepare(state, Upload { bytes, name: FRAME_LABEL.to_string() }, resolved);
    };
    let model = state.model().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    check_header(&bytes, state.config.limits.max_pixels)?;
    let rgb = decode_rgb8_bytes(&bytes, Path::new(FRAME_LABEL)).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    check_face_image_size(|| FRAME_LABEL.to_string(), [rgb.width, rgb.height])
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let cropped = crop_faces(&rgb, faces, model.image_size).map_err(|e| ApiError::internal(format!("frame: {e:#}")))?;
    Ok(Prepared { name: FRAME_LABEL.to_string(), width: rgb.width, height: rgb.height, cropped })
}
