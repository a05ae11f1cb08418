//! `hrk.Model` (a landmark model with its detector), `hrk.FaceAlignment` (face_alignment's
//! interface over it) and `hrk.detect` (the MTCNN detector alone).

use crate::convert::{existing_file, image_input, without_gil, BadInput, ImageInput};
use crate::faces::Face;
use crate::run::{load_config, load_model, pixel_frame, run_frames, GivenFrames};
use anyhow::Context;
use hrk::config::Config;
use hrk::detect::{DetectorOptions, Mtcnn};
use hrk::eval::TestOptions;
use hrk::model::hrnet::memory::{check_batch_memory, Pass};
use hrk::model::HrNet;
use hrk::predict::{
    stream_wave, FaceBox, FaceFinder, FaceSource, Frame, FrameSource, ImageResult, LandmarkEngine, LandmarkOptions,
    OneEuroParams, StreamState, TrackOptions, Tracker, MTCNN_CENTER_SHIFT, MTCNN_MARGIN,
};
use hrk::tensor::Device;
use numpy::ndarray::{Array2, Array4};
use numpy::{IntoPyArray, PyArray4, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

/// What one call runs with: the model (and its detector, loaded at first use) behind the lock.
struct Loaded {
    net: HrNet,
    cfg: Config,
    device: Device,
    detector: Option<Mtcnn>,
}

/// How a call finds faces (`boxes`, `detector`, `min_face`, `thresholds`).
#[derive(Clone)]
struct FindFaces {
    boxes: Option<Vec<FaceBox>>,
    detector: bool,
    options: DetectorOptions,
}

/// How a call runs the model (`flip_test`, `decode`).
#[derive(Clone)]
struct RunOptions {
    flip_test: bool,
    decode: Option<String>,
}

impl Loaded {
    fn detector(&mut self) -> anyhow::Result<&Mtcnn> {
        if self.detector.is_none() {
            self.detector = Some(Mtcnn::load(None, &self.device)?);
        }
        Ok(self.detector.as_ref().expect("loaded above"))
    }

    /// `hrk predict`'s engine and face source for one call (the same batches, crops and decoding),
    /// handed to `body`.
    fn with_stream<'s, T>(
        &'s mut self, find: &FindFaces, run: &RunOptions, batch: usize,
        body: impl FnOnce(&mut LandmarkEngine<'s>, FaceSource<'s>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let test = TestOptions::from_config(&self.cfg)?.with_overrides(run.flip_test, false, run.decode.as_deref())?;
        let opts = LandmarkOptions::for_config(&self.cfg, test, batch)?;
        let image_size = self.cfg.model.image_size;
        if find.detector && find.boxes.is_none() {
            self.detector()?;
        }
        let Loaded { net, detector, .. } = self;
        let finder = match (&find.boxes, detector.as_ref()) {
            (Some(boxes), _) => FaceFinder::Boxes(boxes.clone()),
            (None, Some(mtcnn)) if find.detector => FaceFinder::Detector {
                mtcnn,
                options: find.options.clone(),
                margin: MTCNN_MARGIN,
                center_shift: MTCNN_CENTER_SHIFT,
            },
            _ => FaceFinder::WholeImage,
        };
        let mut engine = LandmarkEngine::new(net, opts, image_size)?;
        body(&mut engine, FaceSource::Same(finder))
    }

    /// `hrk predict`'s stream over `frames` as independent images: the same waves, batches, crops,
    /// decoding and poses.
    fn predict(
        &mut self, frames: &mut dyn FrameSource, find: &FindFaces, run: &RunOptions, batch: usize,
    ) -> anyhow::Result<Vec<ImageResult>> {
        self.with_stream(find, run, batch, |engine, faces| run_frames(engine, frames, &mut StreamState::new(faces)))
    }

    /// One frame of a tracked stream as `--stdin-frames` runs it (the library's `stream_wave`: the
    /// model, the tracker, poses), the stream's `tracker` kept between frames (None before the first).
    /// A frame that fails fails the call with its message (a `ValueError`, as `run_frames`).
    fn track_frame(
        &mut self, frame: Frame, find: &FindFaces, run: &RunOptions, batch: usize, tracker: &mut Option<Tracker>,
        options: TrackOptions,
    ) -> anyhow::Result<ImageResult> {
        self.with_stream(find, run, batch, |engine, faces| {
            let mut state = match tracker.take() {
                Some(kept) => StreamState::resumed(faces, kept),
                None => StreamState::tracked(faces, options),
            };
            let outcomes = stream_wave(engine, &mut state, vec![frame]);
            *tracker = state.into_tracker();
            let outcome = outcomes?.pop().context("a tracked frame gave no result")?;
            outcome.result.map(|f| f.image).map_err(|e| BadInput(e).into())
        })
    }
}

/// A landmark model: `Model(cfg, weights, device="cpu", precision="f32", batch=None)`.
///
/// `cfg` is an experiment YAML (official schema), `weights` a .safetensors or official .pth file,
/// `device` "cpu", "cuda" or "auto", `precision` "f32" or "bf16" (CPU convs; falls back to f32 with
/// a warning where the CPU has no bf16 kernels), `batch` faces per forward pass (default
/// TEST.BATCH_SIZE_PER_GPU). Each Model keeps its own device and precision, so Models of different
/// precisions work side by side.
///
/// Calls release the GIL while they run. One Model may be used from several threads: a lock inside
/// runs its calls one at a time (use one Model per thread to run them in parallel).
#[pyclass(frozen, module = "hrk")]
pub struct Model {
    loaded: Mutex<Loaded>,
    batch: usize,
    joints: usize,
    image_size: [usize; 2],
    device_name: String,
    precision: String,
}

impl Model {
    fn run<T: Send>(&self, py: Python<'_>, work: impl FnOnce(&mut Loaded) -> anyhow::Result<T> + Send) -> PyResult<T> {
        // The lock is taken with the GIL released: a thread waiting here lets the running call log.
        without_gil(py, || work(&mut self.lock()))
    }

    /// The model for one call. Calls do not change the weights, so a lock that a panicking call
    /// poisoned (its panic became a RuntimeError) is taken over.
    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Decodes `inputs` (before taking the lock: another thread's call runs meanwhile) and runs them
    /// as independent images.
    fn predict_images(
        &self, py: Python<'_>, inputs: Vec<ImageInput>, find: FindFaces, run: RunOptions,
    ) -> PyResult<Vec<ImageResult>> {
        let batch = self.batch;
        without_gil(py, move || {
            let mut frames = GivenFrames(decode_frames(inputs)?.into());
            self.lock().predict(&mut frames, &find, &run, batch)
        })
    }

    fn faces(py: Python<'_>, result: ImageResult) -> PyResult<Vec<Face>> {
        result.faces.into_iter().map(|f| Face::new(py, f)).collect()
    }
}

/// The iterator `Model.track` returns: each `next()` pulls one frame from the caller's iterable
/// (with the GIL), decodes and runs it (without it, the Model's lock held for that frame only) and
/// gives its faces; the stream's tracker is kept here between frames.
#[pyclass(module = "hrk")]
pub struct TrackedFrames {
    model: Py<Model>,
    /// The caller's frames; None once they ended or the stream failed.
    frames: Option<Py<PyIterator>>,
    options: TrackOptions,
    find: FindFaces,
    run: RunOptions,
    /// None before the first frame.
    tracker: Option<Tracker>,
    /// The index of the next frame (its label where the frame has no path).
    next: usize,
}

#[pymethods]
impl TrackedFrames {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Vec<Face>>> {
        let Some(frames) = &self.frames else { return Ok(None) };
        let pulled = frames.bind(py).clone().next().map(|item| image_input(&item?));
        let result = match pulled {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(input)) => {
                let label = input.label(self.next);
                self.next += 1;
                let model = self.model.get();
                let TrackedFrames { find, run, tracker, options, .. } = self;
                without_gil(py, || {
                    let frame = pixel_frame(label, input.into_rgb());
                    model.lock().track_frame(frame, find, run, model.batch, tracker, *options)
                })
                .and_then(|image| Model::faces(py, image))
                .map(Some)
            }
        };
        if !matches!(result, Ok(Some(_))) {
            self.frames = None;
        }
        result
    }
}

/// The image arguments of a call, read with the GIL held (arrays copied once); decoding files
/// comes later, without it.
fn frame_inputs(images: &Bound<'_, PyAny>) -> PyResult<Vec<ImageInput>> {
    if images.is_instance_of::<PyList>() || images.is_instance_of::<pyo3::types::PyTuple>() {
        images.try_iter()?.map(|item| image_input(&item?)).collect()
    } else if images.cast::<PyUntypedArray>().is_ok() {
        Err(PyTypeError::new_err("images: expected a list of images (a single array is one image: use predict)"))
    } else {
        images.try_iter()?.map(|item| image_input(&item?)).collect()
    }
}

/// The frames of `inputs`, files decoded as `hrk predict` decodes them (in parallel); an image
/// that cannot be read fails the call (`FileNotFoundError`, `ValueError`).
fn decode_frames(inputs: Vec<ImageInput>) -> anyhow::Result<Vec<hrk::predict::Frame>> {
    use rayon::prelude::*;
    inputs
        .into_par_iter()
        .enumerate()
        .map(|(i, input)| {
            let label = input.label(i);
            Ok(pixel_frame(label, Ok(input.into_rgb()?)))
        })
        .collect()
}

fn find_faces(
    boxes: Option<Vec<(f64, f64, f64, f64)>>, detector: bool, min_face: f32, thresholds: (f32, f32, f32),
) -> PyResult<FindFaces> {
    let boxes = boxes
        .map(|list| {
            list.into_iter()
                .map(|(x1, y1, x2, y2)| FaceBox::new(x1, y1, x2, y2))
                .collect::<anyhow::Result<Vec<_>>>()
                .map_err(|e| PyValueError::new_err(format!("boxes: {}", hrk::predict::one_line(&e))))
        })
        .transpose()?;
    Ok(FindFaces { boxes, detector, options: detector_options(min_face, thresholds)? })
}

fn run_options(flip_test: bool, decode: Option<String>) -> PyResult<RunOptions> {
    if let Some(d) = &decode {
        d.parse::<hrk::config::DecodeMode>().map_err(|e| PyValueError::new_err(format!("decode: {e}")))?;
    }
    Ok(RunOptions { flip_test, decode })
}

fn detector_options(min_face: f32, (a, b, c): (f32, f32, f32)) -> PyResult<DetectorOptions> {
    if !(min_face.is_finite() && min_face >= 1.0) {
        return Err(PyValueError::new_err(format!("min_face {min_face}: expected a size in pixels >= 1")));
    }
    if ![a, b, c].iter().all(|t| *t > 0.0 && *t < 1.0) {
        return Err(PyValueError::new_err(format!("thresholds ({a}, {b}, {c}): expected three values in (0, 1)")));
    }
    Ok(DetectorOptions { min_face, thresholds: [a, b, c], ..Default::default() })
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (cfg, weights, device="cpu", precision="f32", batch=None))]
    fn new(
        py: Python<'_>, cfg: PathBuf, weights: PathBuf, device: &str, precision: &str, batch: Option<usize>,
    ) -> PyResult<Model> {
        let cfg_path = existing_file("cfg", cfg)?;
        let weights = existing_file("weights", weights)?;
        if precision != "f32" && precision != "bf16" {
            return Err(PyValueError::new_err(format!("precision {precision:?}: expected \"f32\" or \"bf16\"")));
        }
        let loaded = without_gil(py, || {
            let device = Device::open(device)?;
            let cfg = load_config(&cfg_path)?;
            let net = load_model(&cfg, &weights, &device, precision)?;
            Ok(Loaded { net, cfg, device, detector: None })
        })?;
        let batch = batch.unwrap_or(loaded.cfg.test.batch_size_per_gpu);
        if batch == 0 {
            return Err(PyValueError::new_err("batch must be positive"));
        }
        check_batch_memory(&loaded.cfg, &loaded.device, Pass::Infer, batch, None, "batch or MODEL.IMAGE_SIZE")
            .map_err(crate::convert::py_err)?;
        Ok(Model {
            batch,
            joints: loaded.net.spec.num_joints,
            image_size: loaded.cfg.model.image_size,
            device_name: loaded.device.to_string(),
            precision: loaded.net.precision().name().to_string(),
            loaded: Mutex::new(loaded),
        })
    }

    /// Landmarks per face (K).
    #[getter]
    fn num_landmarks(&self) -> usize {
        self.joints
    }

    /// The model's input crop (height, width).
    #[getter]
    fn input_size(&self) -> (usize, usize) {
        (self.image_size[0], self.image_size[1])
    }

    /// The device the model runs on ("cpu", or the GPU's name).
    #[getter]
    fn device(&self) -> &str {
        &self.device_name
    }

    /// The conv precision it runs ("f32" or "bf16"; "f32" where bf16 fell back).
    #[getter]
    fn precision(&self) -> &str {
        &self.precision
    }

    /// predict(image, boxes=None, detector=True, flip_test=False, decode=None, min_face=20.0, thresholds=(0.6, 0.7, 0.7))
    /// --
    ///
    /// The faces of one image with their landmarks, exactly as `hrk predict` finds them.
    ///
    /// `image`: a NumPy uint8 array (H×W×3 RGB, H×W×4 RGBA — alpha ignored —, or H×W grey), a path,
    /// or a PIL.Image. `boxes`: faces as (x1, y1, x2, y2) in pixels (no detector then);
    /// `detector=False` without boxes takes the whole image as the face. `flip_test` and `decode`
    /// ("quarter" or "dark"; default TEST.DECODE) are `hrk predict`'s test-time options, `min_face`
    /// and `thresholds` the detector's. Returns a list of `Face`.
    #[pyo3(signature = (image, boxes=None, detector=true, flip_test=false, decode=None, min_face=20.0, thresholds=(0.6, 0.7, 0.7)))]
    #[allow(clippy::too_many_arguments)]
    fn predict(
        &self, py: Python<'_>, image: &Bound<'_, PyAny>, boxes: Option<Vec<(f64, f64, f64, f64)>>, detector: bool,
        flip_test: bool, decode: Option<String>, min_face: f32, thresholds: (f32, f32, f32),
    ) -> PyResult<Vec<Face>> {
        let input = image_input(image)?;
        let find = find_faces(boxes, detector, min_face, thresholds)?;
        let run = run_options(flip_test, decode)?;
        let mut results = self.predict_images(py, vec![input], find, run)?;
        Model::faces(py, results.pop().expect("one image in, one result out"))
    }

    /// predict_batch(images, boxes=None, detector=True, flip_test=False, decode=None, min_face=20.0, thresholds=(0.6, 0.7, 0.7))
    /// --
    ///
    /// `predict` over a list of images, their faces sharing forward passes as in `hrk predict`
    /// (the results do not depend on the batching). `boxes`, when given, apply to every image.
    /// Returns one list of `Face` per image.
    #[pyo3(signature = (images, boxes=None, detector=true, flip_test=false, decode=None, min_face=20.0, thresholds=(0.6, 0.7, 0.7)))]
    #[allow(clippy::too_many_arguments)]
    fn predict_batch(
        &self, py: Python<'_>, images: &Bound<'_, PyAny>, boxes: Option<Vec<(f64, f64, f64, f64)>>, detector: bool,
        flip_test: bool, decode: Option<String>, min_face: f32, thresholds: (f32, f32, f32),
    ) -> PyResult<Vec<Vec<Face>>> {
        let inputs = frame_inputs(images)?;
        let find = find_faces(boxes, detector, min_face, thresholds)?;
        let run = run_options(flip_test, decode)?;
        let results = self.predict_images(py, inputs, find, run)?;
        results.into_iter().map(|r| Model::faces(py, r)).collect()
    }

    /// track(frames, fps=30.0, redetect=30, smooth="0.5,0.05", detector=True, min_face=20.0, thresholds=(0.6, 0.7, 0.7))
    /// --
    ///
    /// A frame stream (video frames in order, any iterable of images, endless ones too: a webcam) as
    /// `hrk predict --stdin-frames` runs it: the detector every `redetect` frames, faces tracked
    /// between, ids kept across frames, landmarks One-Euro smoothed (`smooth` "min_cutoff,beta" or
    /// "none"). Returns an iterator (`TrackedFrames`) whose each `next()` pulls one frame from
    /// `frames` and gives that frame's faces, a list of `Face` with `id` set; it ends with `frames`.
    /// The GIL is released while a frame runs. The Model's lock is held only during a frame: other
    /// calls on the same Model may run between two frames. A bad frame or an error of `frames`
    /// raises from `next()` and ends the stream.
    #[pyo3(signature = (frames, fps=30.0, redetect=30, smooth="0.5,0.05", detector=true, min_face=20.0, thresholds=(0.6, 0.7, 0.7)))]
    #[allow(clippy::too_many_arguments)]
    fn track(
        slf: &Bound<'_, Self>, frames: &Bound<'_, PyAny>, fps: f64, redetect: usize, smooth: &str, detector: bool,
        min_face: f32, thresholds: (f32, f32, f32),
    ) -> PyResult<TrackedFrames> {
        if !(fps.is_finite() && fps > 0.0) {
            return Err(PyValueError::new_err(format!("fps {fps}: expected frames per second > 0")));
        }
        if redetect == 0 {
            return Err(PyValueError::new_err("redetect 0: expected a number of frames >= 1"));
        }
        let smooth = OneEuroParams::parse(smooth).map_err(|e| PyValueError::new_err(hrk::predict::one_line(&e)))?;
        Ok(TrackedFrames {
            model: slf.clone().unbind(),
            frames: Some(frames.try_iter()?.unbind()),
            options: TrackOptions { redetect, fps, smooth },
            find: find_faces(None, detector, min_face, thresholds)?,
            run: run_options(false, None)?,
            tracker: None,
            next: 0,
        })
    }

    /// heatmaps(crops)
    /// --
    ///
    /// The model's raw output for input crops: an N×3×H×W float32 array (normalised as the model
    /// takes them, H×W = `input_size`) → N×K×h×w float32 heatmaps (the ONNX export's output).
    fn heatmaps<'py>(&self, py: Python<'py>, crops: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray4<f32>>> {
        let array = crops
            .cast::<PyUntypedArray>()
            .map_err(|_| PyTypeError::new_err("crops: expected a float32 NumPy array N x 3 x H x W"))?;
        let shape = array.shape().to_vec();
        let crops = array.extract::<numpy::PyReadonlyArray4<'_, f32>>().map_err(|_| {
            PyTypeError::new_err(format!(
                "crops: expected a float32 array N x 3 x H x W, got {} with shape {shape:?}",
                array.dtype().str().map(|s| s.to_string()).unwrap_or_default()
            ))
        })?;
        let [ih, iw] = self.image_size;
        if shape.len() != 4 || shape[1] != 3 || shape[2] != ih || shape[3] != iw || shape[0] == 0 {
            return Err(PyValueError::new_err(format!(
                "crops: expected shape N x 3 x {ih} x {iw} (N >= 1), got {shape:?}"
            )));
        }
        let n = shape[0];
        // The one copy of the input, already split into the forward passes' batches.
        let per = 3 * ih * iw;
        let chunk_len = self.batch * per;
        let view = crops.as_array();
        let chunks: Vec<Vec<f32>> = match view.as_slice() {
            Some(values) => values.chunks(chunk_len).map(<[f32]>::to_vec).collect(),
            None => {
                let mut chunks: Vec<Vec<f32>> = Vec::new();
                for (i, &v) in view.iter().enumerate() {
                    if i % chunk_len == 0 {
                        chunks.push(Vec::with_capacity(chunk_len.min(n * per - i)));
                    }
                    chunks.last_mut().expect("pushed at index 0").push(v);
                }
                chunks
            }
        };
        let (values, hshape) = self.run(py, move |m| {
            let (mut out, mut out_shape) = (Vec::new(), [0usize; 4]);
            for chunk in chunks {
                let len = chunk.len() / per;
                let (hm, s) =
                    hrk::eval::test_heatmaps(&mut m.net, chunk, [len, 3, ih, iw], &TestOptions::default(), &[])?;
                out.extend_from_slice(&hm);
                out_shape = [n, s[1], s[2], s[3]];
            }
            Ok((out, out_shape))
        })?;
        let [n, k, h, w] = hshape;
        let array = Array4::from_shape_vec((n, k, h, w), values).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(array.into_pyarray(py))
    }

    fn __repr__(&self) -> String {
        format!(
            "hrk.Model({} landmarks, input {}x{}, device={}, precision={})",
            self.joints, self.image_size[0], self.image_size[1], self.device_name, self.precision
        )
    }
}

/// face_alignment's interface over an hrk model: `FaceAlignment(cfg, weights, device="cpu",
/// precision="f32", flip_input=False)`; `get_landmarks(image)` returns what face_alignment's
/// `get_landmarks` returns — a list with one K×2 float32 array per face, or None when no face is
/// found — so scripts switch with one line.
#[pyclass(frozen, module = "hrk")]
pub struct FaceAlignment {
    model: Py<Model>,
    flip_input: bool,
}

#[pymethods]
impl FaceAlignment {
    #[new]
    #[pyo3(signature = (cfg, weights, device="cpu", precision="f32", flip_input=false))]
    fn new(
        py: Python<'_>, cfg: PathBuf, weights: PathBuf, device: &str, precision: &str, flip_input: bool,
    ) -> PyResult<Self> {
        let model = Py::new(py, Model::new(py, cfg, weights, device, precision, None)?)?;
        Ok(FaceAlignment { model, flip_input })
    }

    /// get_landmarks(image_or_path, detected_faces=None, return_bboxes=False, return_landmark_score=False)
    /// --
    ///
    /// As face_alignment's: a list of K×2 float32 arrays (one per face), or None when there is no
    /// face. `detected_faces`: boxes (x1, y1, x2, y2[, score]) instead of the detector. With
    /// `return_bboxes` or `return_landmark_score`: (landmarks, landmark_scores, bboxes), each None when
    /// there is no face; bboxes as [x1, y1, x2, y2, score] float32 arrays.
    #[pyo3(signature = (image_or_path, detected_faces=None, return_bboxes=false, return_landmark_score=false))]
    fn get_landmarks<'py>(
        &self, py: Python<'py>, image_or_path: &Bound<'py, PyAny>, detected_faces: Option<Vec<Vec<f64>>>,
        return_bboxes: bool, return_landmark_score: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.get_landmarks_from_image(py, image_or_path, detected_faces, return_bboxes, return_landmark_score)
    }

    /// get_landmarks_from_image(image_or_path, detected_faces=None, return_bboxes=False, return_landmark_score=False)
    /// --
    ///
    /// The same as `get_landmarks` (face_alignment has both names).
    #[pyo3(signature = (image_or_path, detected_faces=None, return_bboxes=false, return_landmark_score=false))]
    fn get_landmarks_from_image<'py>(
        &self, py: Python<'py>, image_or_path: &Bound<'py, PyAny>, detected_faces: Option<Vec<Vec<f64>>>,
        return_bboxes: bool, return_landmark_score: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let boxes = detected_faces
            .map(|list| {
                list.into_iter()
                    .map(|b| match b[..] {
                        [x1, y1, x2, y2] | [x1, y1, x2, y2, _] => Ok((x1, y1, x2, y2)),
                        _ => Err(PyValueError::new_err(format!(
                            "detected_faces: expected [x1, y1, x2, y2(, score)], got {b:?}"
                        ))),
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?;
        let model = self.model.bind(py).get();
        let faces = model.predict(py, image_or_path, boxes, true, self.flip_input, None, 20.0, (0.6, 0.7, 0.7))?;
        let none = py.None().into_bound(py);
        if faces.is_empty() {
            log::warn!("No faces were detected.");
            if return_bboxes || return_landmark_score {
                return Ok(pyo3::types::PyTuple::new(py, [none.clone(), none.clone(), none])?.into_any());
            }
            return Ok(none);
        }
        let landmarks = PyList::new(py, faces.iter().map(|f| f.landmarks_array(py)))?;
        if !(return_bboxes || return_landmark_score) {
            return Ok(landmarks.into_any());
        }
        let scores = PyList::new(py, faces.iter().map(|f| f.scores_array(py)))?;
        let bboxes = faces
            .iter()
            .map(|f| {
                let r = f.result();
                let b = r.face.bbox;
                let row = vec![b[0] as f32, b[1] as f32, b[2] as f32, b[3] as f32, r.face.score.unwrap_or(1.0)];
                row.into_pyarray(py)
            })
            .collect::<Vec<_>>();
        let scores = if return_landmark_score { scores.into_any() } else { none.clone() };
        let bboxes = if return_bboxes { PyList::new(py, bboxes)?.into_any() } else { none };
        Ok(pyo3::types::PyTuple::new(py, [landmarks.into_any(), scores, bboxes])?.into_any())
    }
}

/// The detector of `hrk.detect`, loaded once (CPU).
fn cpu_detector() -> anyhow::Result<&'static Mtcnn> {
    static DETECTOR: OnceLock<Mtcnn> = OnceLock::new();
    if let Some(d) = DETECTOR.get() {
        return Ok(d);
    }
    let loaded = Mtcnn::load(None, &Device::Cpu)?;
    Ok(DETECTOR.get_or_init(|| loaded))
}

/// detect(image, min_face=20.0, thresholds=(0.6, 0.7, 0.7))
/// --
///
/// The built-in MTCNN face detector (CPU) alone: a list of {"box": (x1, y1, x2, y2), "score",
/// "points": 5×2 float32 array (eyes, nose, mouth corners)}, as `hrk predict`'s detector finds them.
#[pyfunction]
#[pyo3(signature = (image, min_face=20.0, thresholds=(0.6, 0.7, 0.7)))]
pub fn detect<'py>(
    py: Python<'py>, image: &Bound<'py, PyAny>, min_face: f32, thresholds: (f32, f32, f32),
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let input = image_input(image)?;
    let options = detector_options(min_face, thresholds)?;
    let detections = without_gil(py, move || {
        let rgb = input.into_rgb()?;
        options.check_work(rgb.width, rgb.height).map_err(|e| BadInput(hrk::predict::one_line(&e)))?;
        let image = hrk::data::imageio::rgb8_to_image(&rgb, false)?;
        cpu_detector()?.detect(&image, &options)
    })?;
    detections
        .into_iter()
        .map(|d| {
            let dict = PyDict::new(py);
            let [x1, y1, x2, y2] = d.bbox;
            dict.set_item("box", (x1, y1, x2, y2))?;
            dict.set_item("score", d.score)?;
            let flat: Vec<f32> = d.points.iter().flat_map(|p| [p[0], p[1]]).collect();
            let points = Array2::from_shape_vec((5, 2), flat).map_err(|e| PyValueError::new_err(e.to_string()))?;
            dict.set_item("points", points.into_pyarray(py))?;
            Ok(dict)
        })
        .collect()
}
