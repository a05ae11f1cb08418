//! `hrk serve` over real HTTP on 127.0.0.1 (the built binary, a tiny random-init model, ureq as the
//! client): every endpoint; landmarks byte-identical to `hrk predict`'s `<name>.json` (detector,
//! whole image, boxes, flip test + DARK); every error status with its one-line JSON body; the API
//! key; and bounded load runs: 16 clients below capacity all succeed with flat RSS, a tiny queue
//! refuses the excess with 503 + Retry-After while the rest succeed, and SIGTERM under load loses
//! no accepted request (exit 0). No timing thresholds: only counts and statuses are checked.

mod common;

use common::model::{tiny_setup, TinySetup};
use common::{assert_cli_ok, assert_one_line, hrk_bin, s};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

/// A running `hrk serve` (killed when dropped, if still running).
struct Server {
    child: Child,
    base: String,
    /// Its stderr lines so far.
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `hrk serve` on a free loopback port with the setup's model and `extra` flags, and
    /// waits until `/readyz` answers 200.
    fn start(st: &TinySetup, extra: &[&str]) -> Server {
        Server::start_env(st, extra, &[])
    }

    fn start_env(st: &TinySetup, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(hrk_bin());
        cmd.args(["serve", "--cfg", s(&st.cfg), "--model-file", s(&st.weights), "--addr", "127.0.0.1:0"])
            .args(extra)
            .env_remove("HRK_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start hrk serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let _ = tx.send(line[at + "listening on ".len()..].trim().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("hrk serve did not start; stderr: {:?}", log.lock().unwrap());
            }
        };
        let server = Server { child, base, log };
        let started = Instant::now();
        while get(&server.url("/readyz")).0 != 200 {
            assert!(started.elapsed() < Duration::from_secs(120), "never ready: {:?}", server.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The server's resident memory, kB (Linux).
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// SIGTERM, then the exit status (waits up to two minutes).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.wait()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "hrk serve did not stop: {:?}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// (status, body, headers) of a response.
type Answer = (u16, String, ureq::http::HeaderMap);

fn answer(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut r = r.expect("HTTP request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.body_mut().read_to_string().expect("response body");
    (status, body, headers)
}

fn get(url: &str) -> Answer {
    match agent().get(url).call() {
        Ok(r) => answer(Ok(r)),
        // Before the listener is up; the caller retries.
        Err(_) => (0, String::new(), Default::default()),
    }
}

fn get_with(url: &str, key: Option<&str>) -> Answer {
    let mut req = agent().get(url);
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    answer(req.call())
}

/// `POST` of `body` as `content_type` (None: no Content-Type) with an optional API key.
fn post(url: &str, content_type: Option<&str>, body: &[u8], key: Option<&str>) -> Answer {
    let mut req = agent().post(url);
    if let Some(t) = content_type {
        req = req.header("Content-Type", t);
    }
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    answer(req.send(body))
}

/// A multipart/form-data body: `(name, file name, bytes)` parts; its Content-Type.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "hrk-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `hrk predict IMAGE --out out/<tag> rest…` run in the setup folder (so that the JSON's "image" is
/// IMAGE as given); the text of its `<stem>.json`.
fn predict_json(st: &TinySetup, image: &str, tag: &str, rest: &[&str]) -> String {
    let out = format!("out/{tag}");
    let o = Command::new(hrk_bin())
        .current_dir(&*st.dir)
        .args(["predict", "--cfg", s(&st.cfg), "--model-file", s(&st.weights), image, "--out", &out, "-q"])
        .args(rest)
        .output()
        .unwrap();
    assert_cli_ok(&o);
    let stem = Path::new(image).file_stem().unwrap().to_str().unwrap();
    std::fs::read_to_string(st.dir.join(&out).join(format!("{stem}.json"))).unwrap()
}

/// A copy of the detector's fixture photo (a real face) in the setup folder.
fn face_photo(st: &TinySetup) -> PathBuf {
    let to = st.dir.join("astronaut.jpg");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mtcnn/astronaut.jpg"), &to).unwrap();
    to
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn every_endpoint_answers_and_landmarks_equal_predicts() {
    let st = tiny_setup("serve-endpoints");
    let photo = std::fs::read(face_photo(&st)).unwrap();
    let server = Server::start(&st, &[]);

    let (status, body, _) = get(&server.url("/healthz"));
    assert_eq!((status, json(&body)), (200, serde_json::json!({ "status": "ok" })));
    let (status, body, _) = get(&server.url("/readyz"));
    assert_eq!(status, 200);
    let ready = json(&body);
    assert_eq!((ready["status"].as_str(), ready["landmarks"].as_u64()), (Some("ready"), Some(68)), "{ready}");
    let (status, body, _) = get(&server.url("/openapi.json"));
    assert_eq!(status, 200);
    let api = json(&body);
    assert!(api["openapi"].as_str().unwrap().starts_with("3."), "{api}");
    for path in ["/v1/landmarks", "/healthz", "/readyz", "/metrics", "/openapi.json"] {
        assert!(api["paths"][path].is_object(), "openapi.json lacks {path}");
    }

    // The detector's faces: a multipart upload named like predict's input gives predict's bytes.
    let want = predict_json(&st, "astronaut.jpg", "detector", &[]);
    assert!(!json(&want)["faces"].as_array().unwrap().is_empty(), "the detector found no face: {want}");
    let (ct, form) = multipart(&[("image", Some("astronaut.jpg"), &photo)]);
    let (status, got, headers) = post(&server.url("/v1/landmarks"), Some(&ct), &form, None);
    assert_eq!(status, 200, "{got}");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert_eq!(got, want);
    // A raw body is "upload"; everything else is the same.
    let (status, raw, _) = post(&server.url("/v1/landmarks"), Some("image/jpeg"), &photo, None);
    assert_eq!(status, 200, "{raw}");
    let mut renamed = json(&want);
    renamed["image"] = "upload".into();
    assert_eq!(json(&raw), renamed);

    // The whole image, given boxes (query and JSON options), flip test with DARK decoding.
    let synth = "images/s68_000000.jpg";
    let synth_bytes = std::fs::read(st.dir.join(synth)).unwrap();
    let cases: [(&str, &[&str], &str); 3] = [
        ("detector=none", &["--detector", "none"], "none"),
        ("boxes=8,6,60,58", &["--box", "8,6,60,58"], "box"),
        (
            "detector=none&flip_test=true&decode=dark",
            &["--detector", "none", "--flip-test", "--decode", "dark"],
            "flip",
        ),
    ];
    for (query, flags, tag) in cases {
        let want = predict_json(&st, synth, tag, flags);
        let (ct, form) = multipart(&[("image", Some(synth), &synth_bytes)]);
        let (status, got, _) = post(&server.url(&format!("/v1/landmarks?{query}")), Some(&ct), &form, None);
        assert_eq!((status, got), (200, want), "{query}");
    }
    let want = predict_json(&st, synth, "box", &["--box", "8,6,60,58"]);
    let (ct, form) =
        multipart(&[("options", None, br#"{"boxes": [[8, 6, 60, 58]]}"#), ("image", Some(synth), &synth_bytes)]);
    let (status, got, _) = post(&server.url("/v1/landmarks"), Some(&ct), &form, None);
    assert_eq!((status, got), (200, want.clone()), "JSON options");
    let (ct, form) = multipart(&[("image", Some(synth), &synth_bytes), ("boxes", None, b"8,6,60,58")]);
    let (status, got, _) = post(&server.url("/v1/landmarks"), Some(&ct), &form, None);
    assert_eq!((status, got), (200, want), "form field options");

    let (status, text, headers) = get(&server.url("/metrics"));
    assert_eq!(status, 200);
    assert!(headers.get("content-type").unwrap().to_str().unwrap().starts_with("text/plain"));
    assert!(text.contains("hrk_requests_total{endpoint=\"/v1/landmarks\",status=\"200\"} 7\n"), "{text}");
    for needle in [
        "hrk_request_duration_seconds_bucket{endpoint=\"/v1/landmarks\",le=\"+Inf\"} 7\n",
        "hrk_batch_requests_count ",
        "hrk_batch_faces_sum ",
        "hrk_faces_per_image_count 7\n",
        "hrk_queue_depth 0\n",
        "hrk_inference_queue 0\n",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
}

/// An error response: `status`, a JSON content type, and a body that is exactly `{"error": one line}`
/// holding `needle`.
#[track_caller]
fn assert_error((status, body, headers): &Answer, want: u16, needle: &str) {
    assert_eq!(*status, want, "{body}");
    assert_eq!(headers.get("content-type").map(|v| v.to_str().unwrap()), Some("application/json"), "{body}");
    let doc = json(body);
    let map = doc.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(map.len(), 1, "{body}");
    assert_one_line(map["error"].as_str().unwrap(), &[needle]);
}

fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[test]
fn every_error_is_json_with_its_status() {
    let st = tiny_setup("serve-errors");
    let key = "s3cret-token";
    let server = Server::start_env(&st, &["--max-body", "64K", "--max-pixels", "100000"], &[("HRK_API_KEY", key)]);
    let url = server.url("/v1/landmarks");
    let k = Some(key);
    let synth = std::fs::read(st.dir.join("images/s68_000000.jpg")).unwrap();

    // The key: health checks are open, everything else needs it.
    assert_eq!(get(&server.url("/healthz")).0, 200);
    assert_eq!(get_with(&server.url("/readyz"), None).0, 200);
    let missing = post(&url, Some("image/jpeg"), &synth, None);
    assert_error(&missing, 401, "API key");
    assert_eq!(missing.2.get("www-authenticate").unwrap(), "Bearer");
    assert_error(&post(&url, Some("image/jpeg"), &synth, Some("wrong")), 401, "wrong API key");
    assert_error(&get_with(&server.url("/metrics"), None), 401, "API key");
    assert_error(&get_with(&server.url("/openapi.json"), None), 401, "API key");
    assert_eq!(post(&url, Some("image/jpeg"), &synth, k).0, 200);
    assert_eq!(get_with(&server.url("/metrics"), k).0, 200);

    // Bad images.
    let png = png_bytes(200, 100);
    assert_error(&post(&url, Some("image/png"), &png[..png.len() / 2], k), 400, "image upload");
    assert_error(&post(&url, Some("image/png"), &png_bytes(4, 4), k), 400, "too small");
    assert_error(&post(&url, Some("image/jpeg"), b"", k), 400, "empty body");
    // Too large: the body, and the pixels (a small file of 400 x 400 pixels).
    assert_error(&post(&url, Some("image/jpeg"), &vec![0xFFu8; 80 << 10], k), 413, "--max-body");
    assert_error(&post(&url, Some("image/png"), &png_bytes(400, 400), k), 413, "--max-pixels");
    // Unsupported types: of the image, and of the body.
    assert_error(&post(&url, Some("image/gif"), b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", k), 415, "Gif");
    assert_error(&post(&url, Some("image/jpeg"), b"hello, world", k), 415, "supported: JPEG");
    assert_error(&post(&url, Some("text/plain"), b"hello", k), 415, "content type text/plain");
    // Bad options.
    for (query, needle) in [
        ("decode=best", "quarter or dark"),
        ("colour=red", "unknown option"),
        ("boxes=1,2,3", "option boxes"),
        ("boxes=500,500,600,600", "entirely outside"),
        ("min_face=-3", ">= 1"),
    ] {
        assert_error(&post(&format!("{url}?{query}"), Some("image/jpeg"), &synth, k), 400, needle);
    }
    let (ct, form) = multipart(&[("options", None, b"{\"flip_test\": 1")]);
    assert_error(&post(&url, Some(&ct), &form, k), 400, "not JSON");
    let (ct, form) = multipart(&[("boxes", None, b"1,2,30,40")]);
    assert_error(&post(&url, Some(&ct), &form, k), 400, "no image");
    // Routes and methods.
    assert_error(&get_with(&server.url("/v2/nothing"), k), 404, "no route GET /v2/nothing");
    assert_error(&get_with(&url, k), 405, "GET is not allowed");
    // The server still answers after all that.
    assert_eq!(post(&url, Some("image/jpeg"), &synth, k).0, 200);
}

#[test]
fn cors_is_off_unless_an_origin_is_given() {
    let st = tiny_setup("serve-cors");
    let origin = "https://example.org";
    let closed = Server::start(&st, &[]);
    assert!(get(&closed.url("/healthz")).2.get("access-control-allow-origin").is_none());
    drop(closed);
    let open = Server::start(&st, &["--cors", origin]);
    assert_eq!(get(&open.url("/healthz")).2.get("access-control-allow-origin").unwrap(), origin);
    let preflight = agent()
        .options(&open.url("/v1/landmarks"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .call();
    let (status, _, headers) = answer(preflight);
    assert_eq!(status, 204);
    assert_eq!(headers.get("access-control-allow-origin").unwrap(), origin);
    assert!(headers.get("access-control-allow-methods").unwrap().to_str().unwrap().contains("POST"));
}

/// What one client saw.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    busy: usize,
    /// Requests the server did not take (connection refused or closed before any answer).
    refused: usize,
    /// Anything else (a wrong status or body): must stay empty.
    wrong: Vec<String>,
}

/// Sends `image` to `url` until `count` requests are done or `stop` says so (checked before each
/// request); connection failures end the client (the server is going away). A 200 must carry
/// `expect` (the answer to the image sent alone), whatever requests shared its forward pass.
fn client(url: &str, image: &[u8], expect: &str, count: usize, stop: &dyn Fn(&Tally) -> bool) -> Tally {
    let agent = agent();
    let mut t = Tally::default();
    for _ in 0..count {
        if stop(&t) {
            break;
        }
        match agent.post(url).header("Content-Type", "image/jpeg").send(image) {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").is_some();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                match status {
                    200 if body == expect => t.ok += 1,
                    503 if retry && body.contains("\"error\"") => t.busy += 1,
                    _ => t.wrong.push(format!("{status} {body}")),
                }
            }
            Err(_) => {
                t.refused += 1;
                break;
            }
        }
    }
    t
}

/// `clients` clients at once (released together), each running `client` with `count` requests; the
/// image is first sent alone for the answer every 200 must repeat.
fn load(
    url: &str, image: &[u8], clients: usize, count: usize, stop: Arc<dyn Fn(&Tally) -> bool + Send + Sync>,
) -> Vec<Tally> {
    let (status, expect, _) = answer(agent().post(url).header("Content-Type", "image/jpeg").send(image));
    assert_eq!(status, 200, "{expect}");
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (url, image, barrier, stop) = (url.to_string(), image.to_vec(), barrier.clone(), stop.clone());
            let expect = expect.clone();
            std::thread::spawn(move || {
                barrier.wait();
                client(&url, &image, &expect, count, &*stop)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn sixteen_clients_below_capacity_all_succeed_with_flat_memory() {
    let st = tiny_setup("serve-load");
    let photo = std::fs::read(face_photo(&st)).unwrap();
    let server = Server::start(&st, &[]);
    let url = server.url("/v1/landmarks");
    let mut rss = Vec::new();
    for round in 0..4 {
        let tallies = load(&url, &photo, 16, 6, Arc::new(|_: &Tally| false));
        for t in &tallies {
            assert_eq!((t.ok, t.busy, t.refused, &t.wrong), (6, 0, 0, &Vec::new()), "round {round}: {t:?}");
        }
        rss.push(server.rss_kb());
    }
    // After the first round has warmed the pools, memory stays where it was (a leak of one decoded
    // 384x384 photo per request would add 96 x 430 kB per round).
    let (first, last) = (rss[1], rss[3]);
    assert!(last <= first + first / 5 + 16 * 1024, "RSS grew across rounds: {rss:?} kB");
    let metrics = get(&server.url("/metrics")).1;
    assert!(metrics.contains("hrk_requests_total{endpoint=\"/v1/landmarks\",status=\"200\"} 388\n"), "{metrics}");
}

#[test]
fn a_tiny_queue_refuses_the_excess_and_serves_the_rest() {
    let st = tiny_setup("serve-queue");
    let photo = std::fs::read(face_photo(&st)).unwrap();
    // Two requests admitted at once, each held at least a second by the batching wait: of 24
    // clients released together, most find the queue full.
    let server = Server::start(&st, &["--queue", "2", "--batch-wait-ms", "1000", "--max-batch", "64"]);
    let tallies = load(&server.url("/v1/landmarks"), &photo, 24, 3, Arc::new(|_: &Tally| false));
    let (ok, busy): (usize, usize) = tallies.iter().fold((0, 0), |(o, b), t| (o + t.ok, b + t.busy));
    for t in &tallies {
        assert!(t.wrong.is_empty() && t.refused == 0, "{t:?}");
    }
    assert_eq!(ok + busy, 72);
    assert!(ok > 0 && busy > 0, "200: {ok}, 503: {busy}");
    // The refused requests were never admitted: the server still answers normally.
    let (status, body, _) = post(&server.url("/v1/landmarks"), Some("image/jpeg"), &photo, None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn sigterm_under_load_loses_no_accepted_request() {
    let st = tiny_setup("serve-sigterm");
    let photo = std::fs::read(face_photo(&st)).unwrap();
    let mut server = Server::start(&st, &[]);
    let url = server.url("/v1/landmarks");
    // Clients run until the server goes away (at most 400 requests each).
    let load_thread = {
        let photo = photo.clone();
        std::thread::spawn(move || load(&url, &photo, 16, 400, Arc::new(|_: &Tally| false)))
    };
    // SIGTERM once the load is under way.
    let started = Instant::now();
    loop {
        let metrics = get(&server.url("/metrics")).1;
        let done = metrics
            .lines()
            .find(|l| l.starts_with("hrk_requests_total{endpoint=\"/v1/landmarks\",status=\"200\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0);
        if done >= 32 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "the load never got going: {:?}", server.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = server.terminate();
    let tallies = load_thread.join().unwrap();
    assert!(status.success(), "exit status {status:?}: {:?}", server.log());
    let ok: usize = tallies.iter().map(|t| t.ok).sum();
    for t in &tallies {
        assert!(t.wrong.is_empty(), "{t:?}");
        assert!(t.ok + t.busy + t.refused < 400, "a client never saw the server go: {t:?}");
    }
    // Every 200 the server sent reached its client: the server's count (its last log line) is the
    // clients' (and the reference request of `load`).
    let log = server.log();
    let summary = log.iter().rev().find(|l| l.contains("answered")).unwrap_or_else(|| panic!("no summary: {log:?}"));
    assert_eq!(landmark_count(summary, 200), ok as u64 + 1, "{summary}");
}

/// `n × STATUS` of `/v1/landmarks` in the server's summary line (`… /v1/landmarks 5 × 200, 1 × 503; …`).
fn landmark_count(summary: &str, status: u16) -> u64 {
    let Some(at) = summary.find("/v1/landmarks ") else { return 0 };
    let part = summary[at + "/v1/landmarks ".len()..].split(';').next().unwrap_or("");
    part.split(',')
        .filter_map(|p| p.trim().split_once(" × "))
        .find(|(_, s)| s.trim() == status.to_string())
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_model_that_fails_to_load_stops_the_server_with_one_error_line() {
    let st = tiny_setup("serve-badmodel");
    let missing = st.dir.join("missing.safetensors");
    let mut child = Command::new(hrk_bin())
        .args(["serve", "--cfg", s(&st.cfg), "--model-file", s(&missing), "--addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("hrk serve kept running without its model");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("hrk: error: "), "{stderr}");
    assert_one_line(last, &["missing.safetensors"]);
}
