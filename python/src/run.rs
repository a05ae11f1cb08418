//! The library's runs behind the module: `hrk predict`'s frame stream over in-memory frames,
//! `hrk.evaluate` (`hrk test`'s evaluation) and `hrk.train` (`hrk train`'s trainer).

use crate::convert::{caught, existing_file, without_gil, BadInput};
use hrk::eval::TestOptions;
use hrk::model::hrnet::memory::{check_batch_memory, Pass};
use hrk::model::{HrNet, HrnetSpec};
use hrk::predict::{
    run_stream, Frame, FrameContent, FrameOutcome, FrameSource, ImageResult, LandmarkEngine, OutputSink, StreamState,
};
use hrk::tensor::Device;
use hrk::train::{BatchProgress, EpochMetrics, TrainObserver, TrainOptions, Trainer};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Frames the caller handed over, in order (their faces are found by the stream's state).
pub struct GivenFrames(pub VecDeque<Frame>);

impl FrameSource for GivenFrames {
    fn next_frames(&mut self, max: usize) -> Vec<Frame> {
        let n = max.max(1).min(self.0.len());
        self.0.drain(..n).collect()
    }
}

/// Keeps each frame's result (or its one-line error) in stream order.
#[derive(Default)]
pub struct Collected(pub Vec<Result<ImageResult, String>>);

impl OutputSink for Collected {
    fn write_frames(&mut self, frames: &[FrameOutcome]) -> anyhow::Result<Vec<Option<anyhow::Error>>> {
        self.0.extend(frames.iter().map(|o| o.result.as_ref().map(|f| f.image.clone()).map_err(Clone::clone)));
        Ok(frames.iter().map(|_| None).collect())
    }
}

/// A frame of decoded pixels, labelled `label`.
pub fn pixel_frame(label: PathBuf, rgb: anyhow::Result<hrk::data::imageio::Rgb8>) -> Frame {
    Frame { name: label.display().to_string(), label, time: None, content: rgb.map(FrameContent::Pixels) }
}

/// Runs `frames` through `engine` as `hrk predict` does (waves, shared batches, poses), each
/// frame's faces from `state`; the results in order. A failed frame fails the call with its
/// message (a `ValueError`: what fails there is the frame itself, e.g. a detector refusing its size).
pub fn run_frames(
    engine: &mut LandmarkEngine, frames: &mut dyn FrameSource, state: &mut StreamState,
) -> anyhow::Result<Vec<ImageResult>> {
    let mut collected = Collected::default();
    run_stream(engine, frames, state, &mut collected, &mut |_| {})?;
    collected.0.into_iter().map(|r| r.map_err(|e| BadInput(e).into())).collect()
}

/// A config file, checked, with its network buildable (as `hrk` loads it).
pub fn load_config(path: &std::path::Path) -> anyhow::Result<hrk::config::Config> {
    let cfg = hrk::config::Config::load(path)?;
    HrnetSpec::from_config(&cfg)?;
    Ok(cfg)
}

/// The model of `cfg` with `weights` on `device` at `precision` (as the CLI's commands build it).
pub fn load_model(
    cfg: &hrk::config::Config, weights: &std::path::Path, device: &Device, precision: &str,
) -> anyhow::Result<HrNet> {
    let mut net = HrNet::from_config(cfg, 0)?;
    net.load_weights_file(weights)?;
    net.to_device(device)?;
    net.set_precision(precision.parse::<hrk::model::Precision>()?.resolve_cpu());
    Ok(net)
}

/// evaluate(cfg, weights, *, testset=None, device="cpu", precision="f32", batch=None, workers=None, flip_test=False, shift_heatmap=False, decode=None)
/// --
///
/// Evaluates a model file on the config's test set (or `testset`, an annotation file) as `hrk test`
/// does. Returns {"nme", "fr_008", "fr_010", "auc_008", "auc_010"} (fractions, the numbers `hrk test`
/// prints) with "images" and "loss". The GIL is released meanwhile.
#[pyfunction]
#[pyo3(signature = (cfg, weights, *, testset=None, device="cpu", precision="f32", batch=None, workers=None, flip_test=false, shift_heatmap=false, decode=None))]
#[allow(clippy::too_many_arguments)]
pub fn evaluate<'py>(
    py: Python<'py>, cfg: PathBuf, weights: PathBuf, testset: Option<PathBuf>, device: &str, precision: &str,
    batch: Option<usize>, workers: Option<usize>, flip_test: bool, shift_heatmap: bool, decode: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg_path = existing_file("cfg", cfg)?;
    let weights = existing_file("weights", weights)?;
    let testset = testset.map(|t| existing_file("testset", t)).transpose()?;
    let result = without_gil(py, || {
        let device = Device::open(device)?;
        let cfg = load_config(&cfg_path)?;
        let batch = batch.unwrap_or_else(|| cfg.test_batch_size()).max(1);
        let workers = workers.unwrap_or_else(|| cfg.workers.min(4));
        check_batch_memory(&cfg, &device, Pass::Infer, batch, Some(workers), "batch, MODEL.IMAGE_SIZE or workers")?;
        let mut net = load_model(&cfg, &weights, &device, precision)?;
        let opts = TestOptions::from_config(&cfg)?.with_overrides(flip_test, shift_heatmap, decode)?;
        let file = testset.unwrap_or_else(|| PathBuf::from(&cfg.dataset.testset));
        if !file.exists() {
            anyhow::bail!(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("test set {} not found", file.display())
            ));
        }
        Ok(hrk::eval::evaluate_file(&mut net, &cfg, &file, batch, workers, &opts)?.1)
    })?;
    let m = &result.summary;
    let d = PyDict::new(py);
    d.set_item("nme", m.nme)?;
    d.set_item("fr_008", m.fr_008)?;
    d.set_item("fr_010", m.fr_010)?;
    d.set_item("auc_008", m.auc_008)?;
    d.set_item("auc_010", m.auc_010)?;
    d.set_item("images", result.len())?;
    d.set_item("loss", result.loss)?;
    Ok(d)
}

/// What the trainer hears, passed on to Python: log lines as `log` records, each finished epoch to
/// `on_epoch`, Ctrl-C (a pending KeyboardInterrupt, checked after every iteration) as a stop.
struct PythonObserver {
    on_epoch: Option<Py<PyAny>>,
    /// The Python exception that stopped the run (KeyboardInterrupt, or one `on_epoch` raised).
    stopped_by: Arc<Mutex<Option<PyErr>>>,
}

impl PythonObserver {
    fn stop_with(&self, e: PyErr) {
        let mut slot = self.stopped_by.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }
}

impl TrainObserver for PythonObserver {
    fn message(&mut self, text: &str) {
        log::info!("{text}");
    }

    fn batch_done(&mut self, _progress: &BatchProgress) {
        if let Err(e) = Python::attach(|py| py.check_signals()) {
            self.stop_with(e);
        }
    }

    fn epoch_recorded(&mut self, metrics: &EpochMetrics) {
        let Some(callback) = &self.on_epoch else { return };
        let called = Python::attach(|py| -> PyResult<()> {
            let text = serde_json::to_string(metrics).map_err(|e| PyValueError::new_err(e.to_string()))?;
            let dict = py.import("json")?.call_method1("loads", (text,))?;
            callback.call1(py, (dict,))?;
            Ok(())
        });
        if let Err(e) = called {
            self.stop_with(e);
        }
    }

    fn wants_stop(&mut self) -> bool {
        self.stopped_by.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// train(cfg, seed=None, on_epoch=None, *, device="cpu", stop_after_epochs=None)
/// --
///
/// Trains as `hrk train --cfg CFG` does (same trainer, outputs, checkpoints and resume), blocking,
/// with the GIL released. `on_epoch(metrics)` is called after each epoch with its metrics.jsonl line
/// as a dict (epoch, lr, train_loss, train_nme, val_loss, nme, fr_008, fr_010, auc_010, seconds); an
/// exception it raises stops training. Ctrl-C stops after the current iteration and raises
/// KeyboardInterrupt; the checkpoints of finished epochs stay intact (resume with TRAIN.RESUME true).
/// Returns {"out_dir", "epochs_run", "best_nme", "final_state", "history"}.
#[pyfunction]
#[pyo3(signature = (cfg, seed=None, on_epoch=None, *, device="cpu", stop_after_epochs=None))]
pub fn train<'py>(
    py: Python<'py>, cfg: PathBuf, seed: Option<u64>, on_epoch: Option<Py<PyAny>>, device: &str,
    stop_after_epochs: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg_path = existing_file("cfg", cfg)?;
    let stopped_by = Arc::new(Mutex::new(None));
    let observer = PythonObserver { on_epoch, stopped_by: stopped_by.clone() };
    let summary = py.detach(|| {
        caught(|| {
            let mut opts = TrainOptions::new(cfg_path);
            opts.seed = seed.unwrap_or(0);
            opts.stop_after_epochs = stop_after_epochs;
            opts.device = Device::open(device)?;
            Trainer::setup(&opts, Box::new(observer))?.run()
        })
    });
    if let Some(e) = stopped_by.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    let summary = summary?;
    let d = PyDict::new(py);
    d.set_item("out_dir", &summary.out_dir)?;
    d.set_item("epochs_run", summary.epochs_run)?;
    d.set_item("best_nme", summary.best_nme)?;
    d.set_item("final_state", &summary.final_state)?;
    let history = serde_json::to_string(&summary.history).map_err(|e| PyValueError::new_err(e.to_string()))?;
    d.set_item("history", py.import("json")?.call_method1("loads", (history,))?)?;
    Ok(d)
}
