//! `POST /v1/landmarks`: one image in, `hrk predict`'s `<name>.json` out. The body is the image
//! itself (any `image/*` type, `application/octet-stream`, curl's default form-urlencoded, or none) or a `multipart/form-data`
//! form (the image as a file part, options as text fields or an `options` JSON part); options also
//! come in the query string (options.rs). Decoding, face finding and cropping run on the blocking
//! pool; the landmarks come from the inference thread (batcher.rs).

use super::batcher::InferenceJob;
use super::errors::ApiError;
use super::options::{FacesFrom, RequestOptions, Resolved};
use super::state::{AppState, Limits};
use crate::data::image::{box_misses_image, check_face_image_size};
use crate::data::imageio::decode_rgb8_bytes;
use crate::predict::{
    add_poses, crop_faces, image_json, CroppedFaces, FaceFinder, ImageResult, MTCNN_CENTER_SHIFT, MTCNN_MARGIN,
};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the JSON's `"image"` is when the upload has no file name.
pub const UNNAMED_UPLOAD: &str = "upload";

/// The handler: every failure is an [`ApiError`] response.
pub async fn landmarks(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Reads and drops what a refused request still sends (at most `limit` bytes, for at most a
/// second), so that its connection stays usable and the client reads the refusal: a server that
/// closes a socket with unread data resets it, and the client may lose the answer.
pub(super) async fn drain(body: Body, limit: usize) {
    let read = http_body_util::Limited::new(body, limit).collect();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read).await;
}

async fn handle(state: &Arc<AppState>, request: Request) -> Result<Response, ApiError> {
    let limits = &state.config.limits;
    // Admission first, before the body is used: a full server answers at once.
    let admitted = if state.is_shutting_down() {
        Err(ApiError::unavailable("the server is shutting down"))
    } else if state.model().is_none() {
        Err(ApiError::unavailable("the model is still loading"))
    } else {
        state.admission.clone().try_acquire_owned().map_err(|_| {
            ApiError::unavailable(format!("server busy: {} requests in progress (--queue); retry later", limits.queue))
        })
    };
    let _permit = match admitted {
        Ok(permit) => permit,
        Err(e) => {
            drain(request.into_body(), limits.max_body).await;
            return Err(e);
        }
    };
    match tokio::time::timeout(limits.timeout, answer(state, request)).await {
        Ok(answered) => answered,
        // The body may be unread: the connection closes after the answer.
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("request timed out after {} s (--timeout)", limits.timeout.as_secs_f64()),
        )
        .closing()),
    }
}

/// The uploaded image and what the JSON calls it.
pub(super) struct Upload {
    pub(super) bytes: Bytes,
    pub(super) name: String,
}

/// An image decoded, its faces found and cropped.
pub(super) struct Prepared {
    pub(super) name: String,
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) cropped: CroppedFaces,
}

async fn answer(state: &Arc<AppState>, request: Request) -> Result<Response, ApiError> {
    let mut options = RequestOptions::from_query(request.uri().query())?;
    let upload = read_upload(request, &state.config.limits, &mut options).await?;
    let model = state.model().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    let resolved = options.resolve(model)?;
    let test = resolved.test;
    let shared = state.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&shared, upload, &resolved))
        .await
        .map_err(|_| ApiError::internal("image preparation panicked"))??;
    let Prepared { name, width, height, cropped } = prepared;
    let mut faces = if cropped.faces.is_empty() {
        Vec::new()
    } else {
        model.batcher.infer(InferenceJob { faces: cropped, test }).await?
    };
    add_poses(&mut faces, width, height);
    state.metrics.record_faces(faces.len());
    let doc = image_json(&ImageResult { path: PathBuf::from(name), width, height, faces });
    // The bytes `hrk predict` writes to `<name>.json`.
    let body = serde_json::to_string_pretty(&doc).map_err(|e| ApiError::internal(format!("JSON: {e}")))? + "\n";
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// The request's media type, lower case, without parameters ("" when absent).
fn media_type(headers: &HeaderMap) -> String {
    let raw = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    raw.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// `filename="x.jpg"` of a `Content-Disposition` header, for a raw upload.
fn disposition_file_name(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_DISPOSITION)?.to_str().ok()?;
    let at = v.find("filename=")? + "filename=".len();
    let name = v[at..].split(';').next()?.trim().trim_matches('"').to_string();
    (!name.is_empty()).then_some(name)
}

/// Reads the body (at most `limits.max_body` bytes) and takes the image and any form options out of it.
async fn read_upload(request: Request, limits: &Limits, options: &mut RequestOptions) -> Result<Upload, ApiError> {
    let too_large =
        || ApiError::too_large(format!("request body over the limit of {} bytes (--max-body)", limits.max_body));
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        // Not read: the connection closes after the answer.
        return Err(too_large().closing());
    }
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, limits.max_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large().closing()),
        Err(e) => return Err(ApiError::bad_request(format!("cannot read the request body: {e}")).closing()),
    };
    let media = media_type(&parts.headers);
    // curl's `--data-binary @photo.jpg` sends the form-urlencoded type unless told otherwise.
    let raw = media.is_empty()
        || media.starts_with("image/")
        || media == "application/octet-stream"
        || media == "application/x-www-form-urlencoded";
    if !raw && media != "multipart/form-data" {
        return Err(ApiError::unsupported(format!(
            "content type {media}: send the image itself (image/jpeg, image/png, …, application/octet-stream) or multipart/form-data"
        )));
    }
    if raw {
        if bytes.is_empty() {
            return Err(ApiError::bad_request("empty body: send an image (JPEG, PNG, PPM/PGM or BMP)"));
        }
        let name = disposition_file_name(&parts.headers).unwrap_or_else(|| UNNAMED_UPLOAD.to_string());
        return Ok(Upload { bytes, name });
    }
    let form = Request::from_parts(parts, Body::from(bytes));
    let multipart_error = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("multipart form: {}", e.body_text()))
    };
    let mut form = Multipart::from_request(form, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart form: {}", e.body_text())))?;
    let mut image: Option<Upload> = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        let file_name = field.file_name().map(str::to_string);
        let data = field.bytes().await.map_err(multipart_error)?;
        if name == "image" || (file_name.is_some() && name != "options") {
            if image.is_some() {
                return Err(ApiError::bad_request("multipart form: more than one image (one image per request)"));
            }
            let name = file_name.filter(|n| !n.is_empty()).unwrap_or_else(|| UNNAMED_UPLOAD.to_string());
            image = Some(Upload { bytes: data, name });
            continue;
        }
        let text = std::str::from_utf8(&data)
            .map_err(|_| ApiError::bad_request(format!("multipart form: field {name:?} is not UTF-8 text")))?;
        if name == "options" {
            options.set_json(text)?;
        } else {
            options.set_text(&name, text)?;
        }
    }
    let image = image
        .ok_or_else(|| ApiError::bad_request("multipart form: no image (send the file as a part named \"image\")"))?;
    if image.bytes.is_empty() {
        return Err(ApiError::bad_request("multipart form: the image part is empty"));
    }
    Ok(image)
}

/// Width and height from a JPEG's frame header (SOFn), without decoding.
fn jpeg_dimensions(bytes: &[u8]) -> Option<(u64, u64)> {
    let mut at = 2;
    loop {
        // Markers may be padded with fill bytes 0xFF.
        while *bytes.get(at)? == 0xFF && *bytes.get(at + 1)? == 0xFF {
            at += 1;
        }
        if *bytes.get(at)? != 0xFF {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        if marker == 0x01 || (0xD0..=0xD8).contains(&marker) {
            at += 2;
            continue;
        }
        let len = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]) as usize;
        // SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC).
        if (0xC0..=0xCF).contains(&marker) && ![0xC4, 0xC8, 0xCC].contains(&marker) {
            let h = u16::from_be_bytes([*bytes.get(at + 5)?, *bytes.get(at + 6)?]);
            let w = u16::from_be_bytes([*bytes.get(at + 7)?, *bytes.get(at + 8)?]);
            return Some((w as u64, h as u64));
        }
        at += 2 + len;
    }
}

/// The image's size from its header, refusing types the decoder does not read (415) and images
/// over `max_pixels` (413) before any pixel is decoded.
pub(super) fn check_header(bytes: &[u8], max_pixels: u64) -> Result<(), ApiError> {
    const SUPPORTED: &str = "supported: JPEG, PNG, PPM/PGM, BMP";
    let (w, h) = if crate::data::jpeg::is_jpeg(bytes) {
        jpeg_dimensions(bytes).ok_or_else(|| ApiError::bad_request("corrupt JPEG: no frame header"))?
    } else {
        let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ApiError::bad_request(format!("cannot read the image: {e}")))?;
        match reader.format() {
            Some(image::ImageFormat::Png | image::ImageFormat::Pnm | image::ImageFormat::Bmp) => {}
            Some(other) => {
                return Err(ApiError::unsupported(format!("unsupported image type {other:?} ({SUPPORTED})")));
            }
            None => return Err(ApiError::unsupported(format!("not an image type the server reads ({SUPPORTED})"))),
        }
        let (w, h) =
            reader.into_dimensions().map_err(|e| ApiError::bad_request(format!("corrupt image header: {e}")))?;
        (w as u64, h as u64)
    };
    if w.saturating_mul(h) > max_pixels {
        return Err(ApiError::too_large(format!(
            "image of {w}x{h} pixels over the limit of {max_pixels} pixels (--max-pixels)"
        )));
    }
    Ok(())
}

/// Decode, find the faces, crop them (on the blocking pool).
pub(super) fn prepare(state: &AppState, upload: Upload, resolved: &Resolved) -> Result<Prepared, ApiError> {
    let model = state.model().ok_or_else(|| ApiError::unavailable("the model is still loading"))?;
    check_header(&upload.bytes, state.config.limits.max_pixels)?;
    let label = Path::new(&upload.name);
    let rgb = decode_rgb8_bytes(&upload.bytes, label).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let size = [rgb.width, rgb.height];
    check_face_image_size(|| format!("image {}", upload.name), size)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    let found = match &resolved.faces {
        FacesFrom::Boxes(boxes) => {
            if let Some(b) = boxes.iter().find(|b| box_misses_image(b.corners(), size)) {
                return Err(ApiError::bad_request(format!(
                    "option boxes: box {:?} lies entirely outside the {}x{} image",
                    b.corners(),
                    size[0],
                    size[1]
                )));
            }
            FaceFinder::Boxes(boxes.clone()).find(&rgb)
        }
        FacesFrom::Detector(options) => {
            options.check_work(rgb.width, rgb.height).map_err(|e| ApiError::too_large(format!("{e:#}")))?;
            let mtcnn = model.detector.as_ref().ok_or_else(|| ApiError::internal("the detector is not loaded"))?;
            let finder = FaceFinder::Detector {
                mtcnn,
                options: options.clone(),
                margin: MTCNN_MARGIN,
                center_shift: MTCNN_CENTER_SHIFT,
            };
            finder.find(&rgb)
        }
        FacesFrom::WholeImage => FaceFinder::WholeImage.find(&rgb),
    }
    .map_err(|e| ApiError::internal(format!("image {}: {e:#}", upload.name)))?;
    let cropped = crop_faces(&rgb, found, model.image_size)
        .map_err(|e| ApiError::internal(format!("image {}: {e:#}", upload.name)))?;
    Ok(Prepared { name: upload.name, width: rgb.width, height: rgb.height, cropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_frame_header_gives_the_size() {
        let img = image::RgbImage::from_pixel(37, 21, image::Rgb([10, 20, 30]));
        let mut bytes = std::io::Cursor::new(Vec::new());
        img.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
        assert_eq!(jpeg_dimensions(bytes.get_ref()), Some((37, 21)));
        assert_eq!(jpeg_dimensions(&[0xFF, 0xD8, 0xFF]), None);
        assert!(check_header(bytes.get_ref(), 37 * 21).is_ok());
        assert_eq!(check_header(bytes.get_ref(), 37 * 21 - 1).unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(check_header(b"GIF89a....", 100).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(check_header(b"hello world", 100).unwrap_err().status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
