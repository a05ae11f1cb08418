//! Helpers shared by the integration tests (each test binary includes them with `mod common;`): the
//! test-only HRK_* variables (read here and nowhere else), the shared fixture folder, scratch folders,
//! closeness checks, deterministic test values and the `hrk` binary runner.
#![allow(dead_code)]

pub mod alloc_guard;
pub mod chromium;
pub mod crop_case;
pub mod emu;
pub mod fuzz;
pub mod hostile;
pub mod model;
pub mod photo;
pub mod wflw_csv;

use hrk::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---- test-only variables ----------------------------------------------------------------------

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The variable `name` parsed as a `T`, else `default` (also for ad-hoc knobs like SYNTH_PREVIEW_*).
pub fn env_parsed<T: std::str::FromStr>(name: &str, default: T) -> T {
    var(name).and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// HRK_SHARED: the shared reference data (default `../shared` next to the crate).
pub fn shared_dir() -> PathBuf {
    var("HRK_SHARED").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// HRK_FIXTURES: the Python-made fixture folder (default `$HRK_SHARED/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    var("HRK_FIXTURES").map(PathBuf::from).unwrap_or_else(|| shared_dir().join("fixtures"))
}

/// HRK_PARITY_CASE: the `:`-separated parity case folders to run instead of every one under
/// `$HRK_SHARED/parity`.
pub fn parity_cases() -> Option<Vec<PathBuf>> {
    var("HRK_PARITY_CASE").map(|list| list.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect())
}

/// HRK_KEEP_TEST_OUTPUT: keep scratch folders (their paths are printed) instead of removing them.
pub fn keep_test_output() -> bool {
    std::env::var_os("HRK_KEEP_TEST_OUTPUT").is_some()
}

/// HRK_TORCH_PYTHON: a python with torch, for the real `torch.save` files.
pub fn torch_python() -> Option<String> {
    var("HRK_TORCH_PYTHON")
}

/// HRK_PYTHON: a python with numpy and Pillow for the crop comparison (tried before the usual places).
pub fn data_python() -> Option<PathBuf> {
    var("HRK_PYTHON").map(PathBuf::from)
}

/// The interpreters the Python-backed tests try, in order: HRK_PYTHON, the crate's `.venv/bin/python`,
/// then `python3` on PATH.
pub fn python_candidates() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = data_python().into_iter().collect();
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    candidates.push(PathBuf::from("python3"));
    candidates
}

/// A python that imports every module of `modules` (comma-separated, e.g. "onnx, onnxruntime"), from
/// `python_candidates`. None prints why the caller skips.
/// CI installs `onnx onnxruntime numpy tensorboard` so that the interop tests run there.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let candidates = python_candidates();
    let probe = format!("import {modules}");
    // An interpreter named by HRK_PYTHON (CI sets it) must have the modules: a failure, not a skip.
    if let Some(p) = data_python() {
        let ok = Command::new(&p).args(["-c", &probe]).output().is_ok_and(|o| o.status.success());
        assert!(ok, "HRK_PYTHON={} cannot import {modules}", p.display());
        return Some(p);
    }
    let found = candidates
        .into_iter()
        .find(|p| Command::new(p).args(["-c", &probe]).output().is_ok_and(|o| o.status.success()));
    if found.is_none() {
        eprintln!("skipped: no python with {modules} (set HRK_PYTHON)");
    }
    found
}

/// HRK_FUZZ_SECS: seconds each fuzz target runs (`default` when unset).
pub fn fuzz_secs(default: f64) -> f64 {
    env_parsed("HRK_FUZZ_SECS", default)
}

/// HRK_FUZZ_SLOW_SECS: one fuzz run longer than this is a finding (`default` when unset).
pub fn fuzz_slow_secs(default: f64) -> f64 {
    env_parsed("HRK_FUZZ_SLOW_SECS", default)
}

/// HRK_FUZZ_SEED: the fuzzers' seed (`default` when unset).
pub fn fuzz_seed(default: u64) -> u64 {
    env_parsed("HRK_FUZZ_SEED", default)
}

/// HRK_FUZZ_REPLAY: one input file to replay instead of fuzzing.
pub fn fuzz_replay() -> Option<PathBuf> {
    var("HRK_FUZZ_REPLAY").map(PathBuf::from)
}

/// HRK_WRITE_CORPUS: (re)write the fuzz seed corpus under tests/corpus.
pub fn write_corpus() -> bool {
    var("HRK_WRITE_CORPUS").is_some()
}

/// HRK_CRASH_SEED: the kill schedule of the crash test.
pub fn crash_seed() -> u64 {
    env_parsed("HRK_CRASH_SEED", 0xC0FFEE)
}

/// HRK_CRASH_KILLS: how many times the crash test kills a run.
pub fn crash_kills() -> usize {
    env_parsed("HRK_CRASH_KILLS", 6)
}

/// HRK_REQUIRE_PTX=1: a build without embedded PTX is an error, not a skip.
pub fn require_ptx() -> bool {
    var("HRK_REQUIRE_PTX").is_some_and(|v| v == "1")
}

/// HRK_DEVICE_FULL_MODEL=1: the emulated-GPU model tests use the whole input instead of a crop.
pub fn device_full_model() -> bool {
    var("HRK_DEVICE_FULL_MODEL").is_some_and(|v| v == "1")
}

/// HRK_PROBE_CHILD: set by cuda_runtime's tests on the copy of their binary they start, naming the
/// check that copy runs.
pub fn probe_child_mode() -> Option<String> {
    var("HRK_PROBE_CHILD")
}

// ---- shared data and skips --------------------------------------------------------------------

/// `path` if it exists, else prints why the caller skips (`what` says what is missing) and gives None.
pub fn existing_or_skip(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        Some(path)
    } else {
        eprintln!("skipped: no {what} at {} (set HRK_SHARED)", path.display());
        None
    }
}

/// `$HRK_SHARED/<rel>` if it exists, else a printed skip reason and None.
pub fn shared_or_skip(rel: &str) -> Option<PathBuf> {
    existing_or_skip(shared_dir().join(rel), rel)
}

/// The JSON file `$HRK_SHARED/<rel>`, or a printed skip reason and None when it is absent.
pub fn shared_json_or_skip(rel: &str) -> Option<serde_json::Value> {
    let path = shared_or_skip(rel)?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A JSON array of non-negative integers (a shape, offsets) as usizes.
pub fn json_usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().expect("a JSON array").iter().map(|d| d.as_u64().expect("a non-negative integer") as usize).collect()
}

// ---- scratch folders ---------------------------------------------------------------------------

/// A fresh temporary folder, removed when dropped (kept and printed under HRK_KEEP_TEST_OUTPUT).
pub struct Scratch(Option<tempfile::TempDir>);

/// A fresh scratch folder whose name starts with `hrk-<tag>-`.
pub fn scratch(tag: &str) -> Scratch {
    Scratch(Some(tempfile::Builder::new().prefix(&format!("hrk-{tag}-")).tempdir().expect("create a scratch folder")))
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("scratch folder").path()
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if keep_test_output() {
                eprintln!("kept {}", dir.keep().display());
            }
        }
    }
}

/// `p` as UTF-8 (test paths always are), for argument lists.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

// ---- error messages -----------------------------------------------------------------------------

/// A message is one line, without panic text, and holds every needle.
#[track_caller]
pub fn assert_one_line(msg: &str, needles: &[&str]) {
    let msg = msg.trim_end();
    assert!(!msg.is_empty(), "empty message");
    assert!(!msg.contains('\n'), "not one line: {msg:?}");
    assert!(!msg.contains("panicked"), "panic text: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message {msg:?} lacks {n:?}");
    }
}

/// A command failed and its stderr is one line holding every needle.
#[track_caller]
pub fn assert_cli_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted; stderr: {stderr}");
    assert_one_line(&stderr, needles);
}

/// `text` with the first `old` replaced by `new`; `old` must occur (so a changed fixture cannot make a
/// case silently test nothing).
pub fn replace_once(text: &str, old: &str, new: &str) -> String {
    assert!(text.contains(old), "{old:?} not in the fixture text");
    text.replacen(old, new, 1)
}

/// 1-based number of the first line of `text` containing `needle`.
pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect("needle") + 1
}

// ---- closeness ---------------------------------------------------------------------------------

/// Every `got[i]` within `bound(want[i])` of `want[i]` (a non-finite difference fails unless the two
/// are equal); prints the largest difference.
#[track_caller]
pub fn assert_close_by<G: Copy + Into<f64>, W: Copy + Into<f64>>(
    what: &str, got: &[G], want: &[W], bound: impl Fn(f64) -> f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.into(), w.into());
        let err = (g - w).abs();
        assert!(err.is_finite() || g == w, "{what}[{i}]: got {g}, want {w}");
        assert!(err <= bound(w), "{what}[{i}]: got {g}, want {w} (err {err:e})");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    eprintln!("{what}: {} values, max abs err {:e} at {}", got.len(), worst.0, worst.1);
}

/// Every value within `atol + rtol·|want|`.
#[track_caller]
pub fn assert_close<G: Copy + Into<f64>, W: Copy + Into<f64>>(what: &str, got: &[G], want: &[W], atol: f64, rtol: f64) {
    assert_close_by(what, got, want, |w| atol + rtol * w.abs());
}

/// max |got − want| ≤ `tol` × max(`floor`, max |want|): closeness relative to the largest value; all
/// of `got` finite.
#[track_caller]
pub fn assert_close_scaled<G: Copy + Into<f64>, W: Copy + Into<f64>>(
    what: &str, got: &[G], want: &[W], tol: f64, floor: f64,
) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(got.iter().all(|&v| v.into().is_finite()), "{what}: non-finite output");
    let scale = want.iter().fold(floor, |m, &v| m.max(v.into().abs()));
    let err = got.iter().zip(want).fold(0.0f64, |m, (&g, &w)| m.max((g.into() - w.into()).abs()));
    eprintln!("{what}: {} values, max|d| {err:e} (scale {scale:e})", got.len());
    assert!(err <= tol * scale, "{what}: max|d| {err:e} > {tol:e} × {scale:e}");
}

// ---- deterministic test values -------------------------------------------------------------------

/// The tests' generator for `seed` (the crate's one PRNG).
pub fn rng(seed: u64) -> Rng {
    Rng::for_tests(seed)
}

/// Test data drawn from the tests' generator.
pub trait TestValues {
    /// `n` values uniform in [-1, 1).
    fn values(&mut self, n: usize) -> Vec<f32>;
    /// `n` standard normal values, as f32.
    fn normals(&mut self, n: usize) -> Vec<f32>;
}

impl TestValues for Rng {
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform() as f32 * 2.0 - 1.0).collect()
    }
    fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal() as f32).collect()
    }
}

/// `n` deterministic values in [-1, 1) for `seed`.
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    rng(seed).values(n)
}

// ---- the hrk binary ---------------------------------------------------------------------------------

/// The built `hrk` binary.
pub fn hrk_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hrk")
}

/// A command running the built `hrk` binary.
pub fn hrk_cmd() -> Command {
    Command::new(hrk_bin())
}

/// Runs `hrk args…` to completion.
pub fn hrk(args: &[&str]) -> Output {
    hrk_cmd().args(args).output().expect("run hrk")
}

/// Runs `hrk <cmd> --cfg <cfg> --model-file <weights> <rest…>` to completion.
pub fn hrk_model(cmd: &str, cfg: &Path, weights: &Path, rest: &[&str]) -> Output {
    hrk_cmd().args([cmd, "--cfg", s(cfg), "--model-file", s(weights)]).args(rest).output().expect("run hrk")
}

/// Starts `hrk predict --cfg <cfg> --model-file <weights> --out out <rest…>` in `dir` on the host
/// (no emulated device), stdin, stdout and stderr piped: a frame stream's test writes the frames.
pub fn spawn_predict(dir: &Path, cfg: &Path, weights: &Path, rest: &[&str]) -> std::process::Child {
    hrk_cmd()
        .current_dir(dir)
        .args(["predict", "--cfg", s(cfg), "--model-file", s(weights), "--out", "out"])
        .args(rest)
        .env_remove("HRK_DEVICE_EMU")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hrk")
}

/// A command succeeded (its stdout and stderr are in the failure message).
#[track_caller]
pub fn assert_cli_ok(out: &Output) {
    assert!(
        out.status.success(),
        "stdout {}\nstderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small textured image whose values span [lo, hi].
pub fn random_image(rng: &mut Rng, w: usize, h: usize, lo: u8, hi: u8) -> hrk::data::imageio::Rgb8 {
    let span = (hi - lo) as f64 + 1.0;
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let smooth = ((x as f64 * 0.11 + c as f64).sin() * (y as f64 * 0.07).cos() + 1.0) * 0.4;
                let v = (smooth + rng.range(0.0, 0.2)).min(0.999) * span;
                data.push(lo + v as u8);
            }
        }
    }
    hrk::data::imageio::Rgb8::new(w, h, data).unwrap()
}
