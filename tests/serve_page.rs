//! `hrk serve`'s page (issue 28): `/` and its assets; the live WebSocket `/v1/live` spoken by a
//! plain client (the key in the first message, tracked ids, frame 0 equal to the API); and the page
//! itself in headless Chromium: an uploaded photo's drawn landmarks are the API's, and the fake
//! camera (a Y4M clip made here from a real face photo) streams frames whose tracked landmarks are
//! drawn live. A tiny random-init model with the real MTCNN detector: real boxes, arbitrary points.
//! HRK_WRITE_SCREENSHOTS=1 rewrites docs/serve_page_photo.png and docs/serve_page_live.png.

mod common;

use common::chromium::{chromium_or_skip, Chromium};
use common::model::{tiny_config, write_tiny_model};
use common::{hrk_cmd, s, scratch, Scratch};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;
use tungstenite::Message;

const KEY: &str = "page-test-key";

/// The screenshots' scale (docs/ keeps them small).
const SHOT_SCALE: f64 = 0.6;

/// A running `hrk serve` on 127.0.0.1 (a port of its own) with the tiny model; killed when dropped.
struct Server {
    child: Child,
    base: String,
    _dir: Scratch,
}

impl Server {
    fn start(tag: &str, extra: &[&str]) -> Server {
        let dir = scratch(&format!("serve-page-{tag}"));
        hrk::synth::generate(&dir, 68, 1, 11).unwrap();
        let (cfg, weights) = write_tiny_model(&dir, &tiny_config(&dir, 68, 64, 16, hrk::synth::TEST_CSV), 3);
        let mut child = hrk_cmd()
            .args(["serve", "--cfg", s(&cfg), "--model-file", s(&weights), "--addr", "127.0.0.1:0", "--device", "cpu"])
            .args(extra)
            .env_remove("HRK_DEVICE_EMU")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hrk serve");
        // The log line `listening on http://ADDR` names the port; the rest of stderr is drained.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("hrk serve ended before listening").expect("read hrk serve's log");
            if let Some(i) = line.find("listening on ") {
                break line[i + "listening on ".len()..].trim().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        let server = Server { child, base, _dir: dir };
        server.wait_ready();
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits for `/readyz` (the model loads after the server listens).
    fn wait_ready(&self) {
        for _ in 0..600 {
            if ureq::get(&self.url("/readyz")).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("hrk serve not ready after 60 s");
    }

    /// POST /v1/landmarks`query` of `photo` (with the key): the JSON.
    fn landmarks(&self, photo: &Path, query: &str) -> Value {
        let bytes = std::fs::read(photo).unwrap();
        let name = photo.file_name().unwrap().to_str().unwrap();
        let mut resp = ureq::post(&self.url(&format!("/v1/landmarks{query}")))
            .header("Content-Disposition", &format!("attachment; filename=\"{name}\""))
            .header("Authorization", &format!("Bearer {KEY}"))
            .header("Content-Type", "image/jpeg")
            .send(&bytes[..])
            .expect("POST /v1/landmarks");
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
    }

    /// The live route's URL with `query` ("" or "?…").
    fn ws_url(&self, query: &str) -> String {
        self.url(&format!("/v1/live{query}")).replacen("http://", "ws://", 1)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn photo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn").join(name)
}

/// The faces of a JSON document as (box, landmarks) numbers, in order.
fn faces_of(doc: &Value) -> Vec<(Vec<f64>, Vec<f64>)> {
    let nums = |v: &Value| -> Vec<f64> {
        let mut out = Vec::new();
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(a) => stack.extend(a.iter().rev()),
                Value::Number(n) => out.push(n.as_f64().unwrap()),
                other => panic!("not a number: {other}"),
            }
        }
        out
    };
    doc["faces"].as_array().expect("faces").iter().map(|f| (nums(&f["box"]), nums(&f["landmarks"]))).collect()
}

/// Keeps `png` as docs/`name` under HRK_WRITE_SCREENSHOTS=1, else in the scratch folder `dir`.
fn keep_screenshot(png: &[u8], dir: &Path, name: &str) {
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let docs = std::env::var("HRK_WRITE_SCREENSHOTS").is_ok_and(|v| v == "1");
    let path = if docs { Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name) } else { dir.join(name) };
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
}

// ---- without a browser ---------------------------------------------------------------------------

#[test]
fn the_page_and_its_assets_are_served_without_the_key() {
    let server = Server::start("assets", &["--api-key", KEY]);
    for (path, kind, needle) in [
        ("/", "text/html", "<canvas id=\"view\""),
        ("/page.js", "text/javascript", "v1/live"),
        ("/page.css", "text/css", "#view"),
    ] {
        let mut resp = ureq::get(&server.url(path)).call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let ctype = resp.headers().get("content-type").unwrap().to_str().unwrap().to_string();
        assert!(ctype.starts_with(kind), "{path}: {ctype}");
        assert!(resp.body_mut().read_to_string().unwrap().contains(needle), "{path}");
    }
}

/// A WebSocket to the server's live route.
type Stream = tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

fn next_json(ws: &mut Stream) -> Value {
    loop {
        match ws.read().expect("read from /v1/live") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

#[test]
fn the_stream_needs_the_key_first_then_tracks_faces_with_ids() {
    let server = Server::start("stream", &["--api-key", KEY]);
    // A wrong key: one JSON error, then the close.
    let (mut ws, _) = tungstenite::connect(server.ws_url("")).expect("connect /v1/live");
    ws.send(Message::text(json!({"key": "nope", "fps": 10}).to_string())).unwrap();
    let err = next_json(&mut ws);
    common::assert_one_line(err["error"].as_str().expect("an error"), &["key"]);
    assert!(matches!(ws.read(), Ok(Message::Close(_)) | Err(_)), "still open after a wrong key");

    // The key: ready, then every frame answered in order. The first frame is a detection and the
    // smoother passes its first sample through: exactly the API's faces. (The tiny random model's
    // landmark scores may drop a tracked face, so later frames are only checked for ids.)
    let astronaut = photo("astronaut.jpg");
    let jpeg = std::fs::read(&astronaut).unwrap();
    let (mut ws, _) = tungstenite::connect(server.ws_url("")).expect("connect /v1/live");
    ws.send(Message::text(json!({"key": KEY, "fps": 10}).to_string())).unwrap();
    assert_eq!(next_json(&mut ws)["ready"], true);
    for frame in 0..4 {
        ws.send(Message::binary(jpeg.clone())).unwrap();
        let answer = next_json(&mut ws);
        assert_eq!(answer["frame"], frame, "{answer}");
        assert_eq!((answer["width"].as_u64(), answer["height"].as_u64()), (Some(384), Some(384)));
        let faces = answer["faces"].as_array().unwrap();
        assert!(faces.iter().all(|f| f["id"].is_u64() && f["landmarks"].as_array().unwrap().len() == 68), "{answer}");
        if frame == 0 {
            assert_eq!(faces_of(&answer), faces_of(&server.landmarks(&astronaut, "")), "frame 0 vs POST /v1/landmarks");
        }
    }
    // Bytes that are not an image: that frame's error, and the stream goes on.
    ws.send(Message::binary(b"not an image".to_vec())).unwrap();
    let bad = next_json(&mut ws);
    assert_eq!(bad["frame"], 4, "{bad}");
    common::assert_one_line(bad["error"].as_str().expect("an error"), &[]);
    ws.send(Message::binary(jpeg.clone())).unwrap();
    assert_eq!(next_json(&mut ws)["frame"], 5);
    ws.close(None).unwrap();

    // The whole image as the face (options in the URL's query, as for POST): a detection on every
    // frame, each face with an id, and the smoothed landmarks of a repeated frame stay the API's (a
    // constant through One Euro, up to rounding). (Ids continuing across frames need landmarks that
    // span a box: the tiny random model puts every point on one pixel; the tracker's own tests and
    // tests/cli_predict_stream.rs's demo model cover that.)
    let api = faces_of(&server.landmarks(&astronaut, "?detector=none"));
    let (mut ws, _) = tungstenite::connect(server.ws_url("?detector=none")).expect("connect /v1/live");
    ws.send(Message::text(json!({"key": KEY}).to_string())).unwrap();
    assert_eq!(next_json(&mut ws)["ready"], true);
    for frame in 0..3 {
        ws.send(Message::binary(jpeg.clone())).unwrap();
        let answer = next_json(&mut ws);
        assert_eq!(answer["faces"].as_array().unwrap().len(), 1, "{answer}");
        assert!(answer["faces"][0]["id"].is_u64(), "{answer}");
        let got = faces_of(&answer);
        common::assert_close(&format!("frame {frame} landmarks"), &got[0].1, &api[0].1, 1e-3, 0.0);
        assert_eq!(got[0].0, api[0].0, "frame {frame}: the whole image's box");
    }
    ws.close(None).unwrap();
}

#[test]
fn sigterm_with_a_live_stream_open_still_exits_cleanly() {
    let mut server = Server::start("sigterm", &[]);
    let (mut ws, _) = tungstenite::connect(server.ws_url("")).expect("connect /v1/live");
    ws.send(Message::text(json!({"fps": 10}).to_string())).unwrap();
    assert_eq!(next_json(&mut ws)["ready"], true);
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // An open WebSocket does not hold the shutdown: exit status 0 within seconds.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "hrk serve still running 20 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

// ---- in the browser ------------------------------------------------------------------------------

/// Types `KEY` into the page's key field.
fn enter_key(page: &mut common::chromium::Page) {
    page.wait_for(
        "document.readyState === 'complete' && document.getElementById('key') !== null",
        30,
        "the page loads",
    );
    page.eval(&format!(
        "(() => {{ const k = document.getElementById('key'); k.value = {KEY:?}; \
         k.dispatchEvent(new Event('input')); return true; }})()"
    ));
}

#[test]
fn the_page_draws_the_apis_landmarks_over_an_uploaded_photo() {
    let Some(exe) = chromium_or_skip() else { return };
    let server = Server::start("photo", &["--api-key", KEY]);
    let browser = Chromium::launch(&exe, &server.url("/"), &[]);
    let mut page = browser.page(&server.url("/"));
    enter_key(&mut page);
    let astronaut = photo("astronaut.jpg");
    page.set_file("#photo", &astronaut);
    page.wait_for(
        "document.body.dataset.state === 'done' || document.body.dataset.state === 'error'",
        60,
        "the photo's answer",
    );
    let last = page.eval("window.hrkLast");
    assert_eq!(
        page.eval("document.body.dataset.state"),
        "done",
        "{}",
        page.eval("document.getElementById('status').textContent")
    );
    assert_eq!(last["mode"], "photo");
    assert_eq!(last["image"], "astronaut.jpg");
    let api = server.landmarks(&astronaut, "");
    let drawn = faces_of(&last);
    assert!(!drawn.is_empty(), "no face drawn: {last}");
    assert_eq!(drawn, faces_of(&api), "the drawn faces are the API's");
    assert_eq!(page.eval("document.getElementById('view').dataset.faces"), drawn.len().to_string());
    assert_eq!((last["width"].as_u64(), last["height"].as_u64()), (Some(384), Some(384)));
    let dir = scratch("serve-page-shots");
    keep_screenshot(&page.screenshot_element("body", SHOT_SCALE), &dir, "serve_page_photo.png");
}

/// A Y4M clip (YUV4MPEG2, 4:2:0, BT.601 full range) of `frames` 640×480 frames: `photo` on grey,
/// drifting a few pixels a frame, for Chromium's fake camera (which loops it).
fn face_clip(photo: &hrk::data::imageio::Rgb8, frames: usize) -> Vec<u8> {
    let (w, h) = (640usize, 480usize);
    let mut out = format!("YUV4MPEG2 W{w} H{h} F15:1 Ip A1:1 C420jpeg\n").into_bytes();
    for f in 0..frames {
        let drift = (f % 8).min(8 - f % 8) as isize * 3;
        let (ox, oy) = ((w - photo.width) as isize / 2 - 12 + drift, (h - photo.height) as isize / 2);
        let rgb = |x: usize, y: usize| -> [f32; 3] {
            let (px, py) = (x as isize - ox, y as isize - oy);
            if px < 0 || py < 0 || px >= photo.width as isize || py >= photo.height as isize {
                return [128.0; 3];
            }
            let i = (py as usize * photo.width + px as usize) * 3;
            [photo.data[i] as f32, photo.data[i + 1] as f32, photo.data[i + 2] as f32]
        };
        let byte = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        out.extend_from_slice(b"FRAME\n");
        for y in 0..h {
            for x in 0..w {
                let [r, g, b] = rgb(x, y);
                out.push(byte(0.299 * r + 0.587 * g + 0.114 * b));
            }
        }
        let mean2x2 = |x: usize, y: usize| -> [f32; 3] {
            let p = [rgb(2 * x, 2 * y), rgb(2 * x + 1, 2 * y), rgb(2 * x, 2 * y + 1), rgb(2 * x + 1, 2 * y + 1)];
            [0, 1, 2].map(|c| p.iter().map(|q| q[c]).sum::<f32>() / 4.0)
        };
        let chroma: Vec<[f32; 3]> =
            (0..h / 2).flat_map(|y| (0..w / 2).map(move |x| (x, y))).map(|(x, y)| mean2x2(x, y)).collect();
        out.extend(chroma.iter().map(|&[r, g, b]| byte(128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b)));
        out.extend(chroma.iter().map(|&[r, g, b]| byte(128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b)));
    }
    out
}

#[test]
fn the_page_streams_the_camera_and_draws_tracked_landmarks_live() {
    let Some(exe) = chromium_or_skip() else { return };
    let server = Server::start("live", &["--api-key", KEY]);
    let dir = scratch("serve-page-camera");
    let clip = dir.join("face.y4m");
    let face = hrk::data::imageio::decode_rgb8(&photo("astronaut.jpg")).unwrap();
    std::fs::write(&clip, face_clip(&face, 16)).unwrap();
    let camera = [
        "--use-fake-device-for-media-stream".to_string(),
        "--use-fake-ui-for-media-stream".to_string(),
        format!("--use-file-for-fake-video-capture={}", s(&clip)),
        // 127.0.0.1 is a secure context like localhost; this keeps any other host name working too.
        format!("--unsafely-treat-insecure-origin-as-secure={}", server.base),
    ];
    let browser = Chromium::launch(&exe, &server.url("/"), &camera);
    let mut page = browser.page(&server.url("/"));
    enter_key(&mut page);
    page.eval("document.getElementById('camera').click(), true");
    let frames = "Number(document.getElementById('view').dataset.frames)";
    page.wait_for(&format!("{frames} >= 3"), 90, "three live frames answered");
    // A live frame with faces (the tiny random model may drop a tracked face; the next frame detects).
    page.wait_for("window.hrkLast?.mode === 'live' && window.hrkLast.faces.length > 0", 60, "a live frame with faces");
    let last = page.eval("window.hrkLast");
    let first = page.eval(frames).as_u64().unwrap();
    assert_eq!(last["mode"], "live", "{last}");
    assert_eq!((last["width"].as_u64(), last["height"].as_u64()), (Some(640), Some(480)));
    let faces = last["faces"].as_array().unwrap();
    assert!(!faces.is_empty(), "no face on a live frame: {last}");
    assert!(faces.iter().all(|f| f["id"].is_u64() && f["landmarks"].as_array().unwrap().len() == 68), "{last}");
    assert_eq!(faces_of(&last), faces_of(&last["response"]), "the drawn faces are the answer's");
    page.wait_for(&format!("{frames} >= {}", first + 2), 60, "the frame counter advances");
    let fps = page.eval("document.getElementById('fps').textContent");
    assert!(fps.as_str().is_some_and(|t| t.ends_with("frames/s")), "{fps}");
    // The screenshot: the camera stopped (in the same script turn) on a frame with faces; the page
    // keeps that frame and the last rate on screen.
    let stop_on_faces = "window.hrkLast.faces.length > 0 && (document.getElementById('camera').click(), true)";
    page.wait_for(stop_on_faces, 60, "a live frame with faces to stop on");
    let shot = page.screenshot_element("body", SHOT_SCALE);
    assert!(page
        .eval("document.getElementById('status').textContent")
        .as_str()
        .is_some_and(|t| t.starts_with("Camera off")));
    keep_screenshot(&shot, &dir, "serve_page_live.png");
}
