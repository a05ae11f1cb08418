//! `hrk.Face`: one face of `Model.predict`, the values of `hrk predict`'s JSON as Python and NumPy
//! values.

use hrk::predict::FaceResult;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One face: where it is and its landmarks, in original-image pixels.
///
/// `box` is (x1, y1, x2, y2); `score` the detector's confidence (None for given boxes and the
/// whole image); `landmarks` a K×2 float32 array (x, y); `landmark_scores` the K heatmap maxima;
/// `pose` the head pose in degrees ({"yaw", "pitch", "roll"}, None for layouts without pose
/// points); `id` the track of a frame stream (`Model.track`), else None. `to_json()` is the face
/// exactly as `hrk predict` writes it.
#[pyclass(frozen, module = "hrk")]
pub struct Face {
    result: FaceResult,
    landmarks: Py<PyArray2<f32>>,
    landmark_scores: Py<PyArray1<f32>>,
}

impl Face {
    pub fn new(py: Python<'_>, result: FaceResult) -> PyResult<Face> {
        let flat: Vec<f32> = result.landmarks.iter().flat_map(|p| [p[0], p[1]]).collect();
        let points = Array2::from_shape_vec((result.landmarks.len(), 2), flat)
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("landmarks: {e}")))?;
        let landmarks = points.into_pyarray(py).unbind();
        let landmark_scores = result.landmark_scores.clone().into_pyarray(py).unbind();
        Ok(Face { result, landmarks, landmark_scores })
    }

    pub fn result(&self) -> &FaceResult {
        &self.result
    }

    pub fn landmarks_array<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        self.landmarks.bind(py).clone()
    }

    pub fn scores_array<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.landmark_scores.bind(py).clone()
    }
}

#[pymethods]
impl Face {
    /// (x1, y1, x2, y2) in pixels.
    #[getter(r#box)]
    fn bbox(&self) -> (f64, f64, f64, f64) {
        let [x1, y1, x2, y2] = self.result.face.bbox;
        (x1, y1, x2, y2)
    }

    /// The detector's confidence, or None.
    #[getter]
    fn score(&self) -> Option<f32> {
        self.result.face.score
    }

    /// K×2 float32 landmarks (x, y) in original-image pixels.
    #[getter]
    fn landmarks<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        self.landmarks_array(py)
    }

    /// Each landmark's heatmap maximum (K float32).
    #[getter]
    fn landmark_scores<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.scores_array(py)
    }

    /// {"yaw", "pitch", "roll"} in degrees, or None.
    #[getter]
    fn pose<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(p) = self.result.pose else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("yaw", p.yaw)?;
        d.set_item("pitch", p.pitch)?;
        d.set_item("roll", p.roll)?;
        Ok(Some(d))
    }

    /// The face's track id in a frame stream, or None.
    #[getter]
    fn id(&self) -> Option<u32> {
        self.result.id
    }

    /// The face as `hrk predict`'s JSON writes it (one element of its "faces" list).
    fn to_json(&self) -> PyResult<String> {
        serde_json::to_string(&hrk::predict::face_json(&self.result))
            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))
    }

    fn __repr__(&self) -> String {
        let [x1, y1, x2, y2] = self.result.face.bbox;
        let id = self.result.id.map(|i| format!(", id={i}")).unwrap_or_default();
        format!(
            "Face(box=({x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}), score={}, landmarks={}x2{id})",
            self.result.face.score.map_or("None".to_string(), |s| format!("{s:.4}")),
            self.result.landmarks.len()
        )
    }
}
