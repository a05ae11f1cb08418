//! Load generator for `hrk serve`: C concurrent clients (keep-alive connections, released together)
//! send the same photo to `POST /v1/landmarks` until R requests are done in all; prints requests/s
//! and the latency percentiles, one line per client count. benches/serve_rounds.sh starts the
//! server variants and runs this against each.
//!
//! ```text
//! cargo bench --bench serve_load -- --url http://127.0.0.1:8080 [--image P | --photo640] \
//!     [--clients 1,4,16] [--requests 64] [--warmup 4] [--key KEY]
//! ```
//! `--photo640` (the default without `--image`): the detector's fixture photo (a real face) centred on a
//! 640×480 canvas, as JPEG. Exits non-zero if any request fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

struct Args {
    url: String,
    image: Option<String>,
    clients: Vec<usize>,
    requests: usize,
    warmup: usize,
    key: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { url: String::new(), image: None, clients: vec![1, 4, 16], requests: 64, warmup: 4, key: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // cargo bench passes --bench to every bench binary.
        if flag == "--bench" || flag == "--photo640" {
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => a.url = value.trim_end_matches('/').to_string(),
            "--image" => a.image = Some(value),
            "--clients" => {
                a.clients = value
                    .split(',')
                    .map(|c| c.trim().parse().map_err(|_| format!("--clients {value}")))
                    .collect::<Result<_, _>>()?
            }
            "--requests" => a.requests = value.parse().map_err(|_| format!("--requests {value}"))?,
            "--warmup" => a.warmup = value.parse().map_err(|_| format!("--warmup {value}"))?,
            "--key" => a.key = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.url.is_empty() {
        return Err("--url http://HOST:PORT is required".into());
    }
    Ok(a)
}

/// The fixture face photo (384²) centred on a mid-grey 640×480 canvas, as JPEG (quality 90).
fn photo640() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mtcnn/astronaut.jpg");
    let face = image::open(path).expect("tests/fixtures/mtcnn/astronaut.jpg").to_rgb8();
    let mut canvas = image::RgbImage::from_pixel(640, 480, image::Rgb([128, 128, 128]));
    image::imageops::overlay(&mut canvas, &face, (640 - face.width() as i64) / 2, (480 - face.height() as i64) / 2);
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&canvas).expect("JPEG encoding");
    out
}

/// One request; its latency, or what went wrong.
fn request(agent: &ureq::Agent, url: &str, image: &[u8], key: Option<&str>) -> Result<Duration, String> {
    let started = Instant::now();
    let mut req = agent.post(url).header("Content-Type", "image/jpeg");
    if let Some(k) = key {
        req = req.header("Authorization", &format!("Bearer {k}"));
    }
    let mut r = req.send(image).map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let body = r.body_mut().read_to_string().map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("{status} {}", body.trim()));
    }
    Ok(started.elapsed())
}

/// `clients` clients share `total` requests; (wall time, every latency, failures).
fn run(a: &Args, image: &Arc<Vec<u8>>, clients: usize, total: usize) -> (Duration, Vec<Duration>, Vec<String>) {
    let url = format!("{}/v1/landmarks", a.url);
    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (url, image, next, barrier, key) =
                (url.clone(), image.clone(), next.clone(), barrier.clone(), a.key.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build()
                    .into();
                let (mut times, mut failures) = (Vec::new(), Vec::new());
                barrier.wait();
                while next.fetch_add(1, Ordering::SeqCst) < total {
                    match request(&agent, &url, &image, key.as_deref()) {
                        Ok(t) => times.push(t),
                        Err(e) => failures.push(e),
                    }
                }
                (times, failures)
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let (mut times, mut failures) = (Vec::new(), Vec::new());
    for h in handles {
        let (t, f) = h.join().expect("client thread");
        times.extend(t);
        failures.extend(f);
    }
    (started.elapsed(), times, failures)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[at].as_secs_f64() * 1e3
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("serve_load: {e}");
            std::process::exit(2);
        }
    };
    let image = Arc::new(match &a.image {
        Some(p) => std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}")),
        None => photo640(),
    });
    let mut failed = false;
    for &clients in &a.clients {
        let _ = run(&a, &image, clients, a.warmup.max(clients));
        let (wall, mut times, failures) = run(&a, &image, clients, a.requests);
        times.sort();
        println!(
            "clients={clients} requests={} ok={} failed={} req_per_s={:.2} p50_ms={:.1} p99_ms={:.1}",
            a.requests,
            times.len(),
            failures.len(),
            times.len() as f64 / wall.as_secs_f64(),
            percentile(&times, 50.0),
            percentile(&times, 99.0)
        );
        if let Some(f) = failures.first() {
            eprintln!("serve_load: first failure: {f}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
