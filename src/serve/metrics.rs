//! The service's counters, rendered as Prometheus text (`GET /metrics`): requests by endpoint and
//! status, latency histograms, requests and faces per forward pass, faces per image, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Latency bucket bounds, seconds.
const SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Bucket bounds for counts (requests or faces per pass, faces per image).
const COUNTS: &[f64] = &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// A cumulative-bucket histogram in Prometheus's sense.
#[derive(Clone, Debug)]
struct Histogram {
    bounds: &'static [f64],
    /// Observations ≤ each bound (not cumulative here; summed when rendered).
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram { bounds, counts: vec![0; bounds.len()], sum: 0.0, count: 0 }
    }

    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    /// `name_bucket{labels,le=…}` lines, `_sum` and `_count`; `labels` is empty or `k="v",`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() { String::new() } else { format!("{{{bare}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

struct Counters {
    /// (endpoint, status) → requests.
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    pass_requests: Histogram,
    pass_faces: Histogram,
    faces_per_image: Histogram,
}

/// The counters (shared by every handler and the inference thread).
pub struct Metrics {
    counters: Mutex<Counters>,
    /// Jobs handed to the inference thread and not yet in a pass.
    pub inference_queue: Arc<AtomicUsize>,
    queue_capacity: usize,
}

impl Metrics {
    pub fn new(queue_capacity: usize) -> Metrics {
        Metrics {
            counters: Mutex::new(Counters {
                requests: BTreeMap::new(),
                latency: BTreeMap::new(),
                pass_requests: Histogram::new(COUNTS),
                pass_faces: Histogram::new(COUNTS),
                faces_per_image: Histogram::new(COUNTS),
            }),
            inference_queue: Arc::new(AtomicUsize::new(0)),
            queue_capacity,
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One answered request of `endpoint` (a route, e.g. `/v1/landmarks`) and its latency.
    pub fn record_request(&self, endpoint: &str, status: u16, seconds: f64) {
        let mut c = self.counters();
        *c.requests.entry((endpoint.to_string(), status)).or_default() += 1;
        c.latency.entry(endpoint.to_string()).or_insert_with(|| Histogram::new(SECONDS)).observe(seconds);
    }

    /// One forward pass: how many requests and faces shared it.
    pub fn record_pass(&self, requests: usize, faces: usize) {
        let mut c = self.counters();
        c.pass_requests.observe(requests as f64);
        c.pass_faces.observe(faces as f64);
    }

    /// The faces of one answered image.
    pub fn record_faces(&self, faces: usize) {
        self.counters().faces_per_image.observe(faces as f64);
    }

    /// One line: requests answered by endpoint and status (the shutdown log), e.g. `answered 7
    /// requests: /metrics 1 × 200; /v1/landmarks 5 × 200, 1 × 503`.
    pub fn summary(&self) -> String {
        let c = self.counters();
        let total: u64 = c.requests.values().sum();
        let mut parts: Vec<String> = Vec::new();
        for ((endpoint, status), n) in &c.requests {
            match parts.last_mut() {
                Some(last) if last.starts_with(&format!("{endpoint} ")) => *last += &format!(", {n} × {status}"),
                _ => parts.push(format!("{endpoint} {n} × {status}")),
            }
        }
        format!("answered {total} requests: {}", if parts.is_empty() { "none".into() } else { parts.join("; ") })
    }

    /// The Prometheus text exposition; `in_flight` is the admitted requests now.
    pub fn render(&self, in_flight: usize) -> String {
        let c = self.counters();
        let mut out = String::new();
        out +=
            "# HELP hrk_requests_total Requests answered, by endpoint and status.\n# TYPE hrk_requests_total counter\n";
        for ((endpoint, status), n) in &c.requests {
            let _ = writeln!(out, "hrk_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}");
        }
        out += "# HELP hrk_request_duration_seconds Time from request to response, by endpoint.\n# TYPE hrk_request_duration_seconds histogram\n";
        for (endpoint, h) in &c.latency {
            h.render(&mut out, "hrk_request_duration_seconds", &format!("endpoint=\"{endpoint}\","));
        }
        out += "# HELP hrk_batch_requests Requests sharing one landmark forward pass.\n# TYPE hrk_batch_requests histogram\n";
        c.pass_requests.render(&mut out, "hrk_batch_requests", "");
        out += "# HELP hrk_batch_faces Faces in one landmark forward pass.\n# TYPE hrk_batch_faces histogram\n";
        c.pass_faces.render(&mut out, "hrk_batch_faces", "");
        out += "# HELP hrk_faces_per_image Faces found per answered image.\n# TYPE hrk_faces_per_image histogram\n";
        c.faces_per_image.render(&mut out, "hrk_faces_per_image", "");
        let pending = self.inference_queue.load(Ordering::SeqCst);
        let _ = write!(
            out,
            "# HELP hrk_queue_depth Requests admitted and not yet answered.\n# TYPE hrk_queue_depth gauge\nhrk_queue_depth {in_flight}\n\
             # HELP hrk_queue_capacity Requests admitted at once (--queue); more get 503.\n# TYPE hrk_queue_capacity gauge\nhrk_queue_capacity {}\n\
             # HELP hrk_inference_queue Images waiting for a forward pass.\n# TYPE hrk_inference_queue gauge\nhrk_inference_queue {pending}\n",
            self.queue_capacity
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::new(4);
        m.record_request("/v1/landmarks", 200, 0.02);
        m.record_request("/v1/landmarks", 200, 0.3);
        m.record_request("/v1/landmarks", 503, 0.001);
        m.record_pass(3, 5);
        let text = m.render(1);
        assert!(text.contains("hrk_requests_total{endpoint=\"/v1/landmarks\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("hrk_request_duration_seconds_bucket{endpoint=\"/v1/landmarks\",le=\"0.025\"} 2\n"));
        assert!(text.contains("hrk_request_duration_seconds_bucket{endpoint=\"/v1/landmarks\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("hrk_request_duration_seconds_count{endpoint=\"/v1/landmarks\"} 3\n"));
        assert!(text.contains("hrk_batch_faces_bucket{le=\"8\"} 1\n") && text.contains("hrk_batch_faces_sum 5\n"));
        assert!(text.contains("hrk_queue_depth 1\n") && text.contains("hrk_queue_capacity 4\n"));
        m.record_request("/metrics", 200, 0.001);
        assert_eq!(m.summary(), "answered 4 requests: /metrics 1 × 200; /v1/landmarks 2 × 200, 1 × 503");
    }
}
