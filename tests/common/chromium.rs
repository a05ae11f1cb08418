//! Headless Chromium driven over the DevTools protocol (CDP) for the page tests: a browser process
//! with its own profile, one tab's CDP WebSocket (tungstenite, the server's own WebSocket library,
//! so the tests add no other stack), script evaluation, file-input uploads and screenshots.
//! The machine's network is closed: the flags keep Chromium from trying to reach anything.

use super::{scratch, Scratch};
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// HRK_REQUIRE_CHROMIUM=1 (CI sets it): a missing browser fails the page tests instead of skipping them.
pub fn require_chromium() -> bool {
    std::env::var("HRK_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1")
}

/// Debian's `chromium` (or `chromium-browser`) from PATH; None prints why the caller skips.
pub fn chromium_or_skip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(!require_chromium(), "HRK_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)");
        eprintln!(
            "skipped: no chromium on PATH (apt-get install chromium; HRK_REQUIRE_CHROMIUM=1 makes this a failure)"
        );
    }
    found
}

/// A headless browser; killed when dropped.
pub struct Chromium {
    child: Child,
    port: u16,
    _profile: Scratch,
}

impl Chromium {
    /// Starts `exe` headless on `url` with `extra` flags (e.g. the fake camera's) and waits for
    /// its DevTools port.
    pub fn launch(exe: &Path, url: &str, extra: &[String]) -> Chromium {
        let profile = scratch("chromium");
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=900,720",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it picked to DevToolsActivePort in the profile.
        let port_file = profile.join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|t| t.lines().next()?.parse().ok()) {
                break port;
            }
            assert!(Instant::now() < deadline, "chromium wrote no DevToolsActivePort in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        Chromium { child, port, _profile: profile }
    }

    /// The CDP connection of the tab that shows `url_prefix` (the one `launch` opened).
    pub fn page(&self, url_prefix: &str) -> Page {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let targets: Value = serde_json::from_str(&http_get(self.port, "/json/list")).expect("DevTools /json/list");
            let tab = targets
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url_prefix)));
            if let Some(ws_url) = tab.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                let (ws, _) = tungstenite::connect(ws_url).expect("connect to the tab's DevTools WebSocket");
                return Page { ws, next_id: 0 };
            }
            assert!(Instant::now() < deadline, "no tab on {url_prefix} after 30 s: {targets}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1:`port`, the body as text (DevTools keeps the connection
/// open: the body is read by its Content-Length).
fn http_get(port: u16, path: &str) -> String {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(&stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read DevTools answer");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("Content-Length");
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("read DevTools answer");
    String::from_utf8(body).expect("UTF-8 answer")
}

/// One tab's CDP session.
pub struct Page {
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Calls `method` and gives its result (events in between are dropped); a CDP error panics.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(request.to_string())).expect("send a CDP call");
        loop {
            let msg = self.ws.read().expect("read a CDP message");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("CDP JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page (promises awaited) and gives its value as JSON.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({"expression": expr, "awaitPromise": true, "returnByValue": true}));
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy (its value), failing after `secs` with `what` and the
    /// page's status line.
    pub fn wait_for(&mut self, expr: &str, secs: u64, what: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.eval("document.getElementById('status')?.textContent");
                panic!("{what}: not after {secs} s (page status: {status})");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Puts `file` into the page's `<input type=file>` matched by `selector`, as a user picking
    /// it would (the input's change event fires).
    pub fn set_file(&mut self, selector: &str, file: &Path) {
        let root = self.call("DOM.getDocument", json!({}))["root"]["nodeId"].clone();
        let node = self.call("DOM.querySelector", json!({"nodeId": root, "selector": selector}))["nodeId"].clone();
        assert!(node != 0, "no {selector} in the page");
        let path = std::fs::canonicalize(file).expect("the upload exists");
        self.call("DOM.setFileInputFiles", json!({"nodeId": node, "files": [path.to_str().expect("UTF-8 path")]}));
    }

    /// A PNG of the element `selector` (its bounding box, at `scale` of the page's pixels).
    pub fn screenshot_element(&mut self, selector: &str, scale: f64) -> Vec<u8> {
        let rect = self.eval(&format!(
            "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect(); \
             return {{x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}}; }})()"
        ));
        let clip =
            json!({"x": rect["x"], "y": rect["y"], "width": rect["width"], "height": rect["height"], "scale": scale});
        let shot =
            self.call("Page.captureScreenshot", json!({"format": "png", "clip": clip, "captureBeyondViewport": true}));
        base64_decode(shot["data"].as_str().expect("screenshot data"))
    }
}

/// Standard base64 (CDP's screenshots) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |acc, (i, &d)| acc | (d as u32) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..chunk.len()]);
    }
    out
}
