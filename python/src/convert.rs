//! Python values ↔ library values: images in (NumPy arrays, paths, PIL images), errors and panics
//! out as Python exceptions with hrk's one-line message.

use hrk::data::imageio::Rgb8;
use numpy::{PyArrayDescrMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// An error the caller's input caused (a Python `ValueError`): an image that does not decode, a
/// box outside the image, an option out of range.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// The library's error as a Python exception: `FileNotFoundError` for a missing file,
/// `ValueError` for bad input ([`BadInput`]), `RuntimeError` otherwise; the message is hrk's, on
/// one line.
pub fn py_err(e: anyhow::Error) -> PyErr {
    let message = hrk::predict::one_line(&e);
    let not_found = e
        .chain()
        .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound));
    if not_found {
        PyFileNotFoundError::new_err(message)
    } else if e.chain().any(|c| c.is::<BadInput>()) {
        PyValueError::new_err(message)
    } else {
        PyRuntimeError::new_err(message)
    }
}

/// Runs `work` with the GIL released (other Python threads run meanwhile); its error becomes the
/// matching Python exception and a panic a `RuntimeError` (it never unwinds into the interpreter).
pub fn without_gil<T: Send>(py: Python<'_>, work: impl FnOnce() -> anyhow::Result<T> + Send) -> PyResult<T> {
    py.detach(|| caught(work))
}

/// `work`'s result, a panic turned into a `RuntimeError`.
pub fn caught<T>(work: impl FnOnce() -> anyhow::Result<T>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(py_err),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic");
            Err(PyRuntimeError::new_err(format!("hrk: internal error: {}", what.replace('\n', " "))))
        }
    }
}

/// A file argument that must exist: `FileNotFoundError` naming it (`what`: "cfg", "weights", ...).
pub fn existing_file(what: &str, path: PathBuf) -> PyResult<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else if path.exists() {
        Err(PyValueError::new_err(format!("{what} {}: not a file", path.display())))
    } else {
        Err(PyFileNotFoundError::new_err(format!("{what} {}: no such file", path.display())))
    }
}

/// An image argument, before decoding.
pub enum ImageInput {
    /// A file, decoded as `hrk predict` decodes it (with the GIL released).
    File(PathBuf),
    /// Pixels copied out of a NumPy array or a PIL image.
    Pixels(Rgb8),
}

impl ImageInput {
    /// What messages and the JSON's `"image"` call the image: the path, or `<image i>` for pixels.
    pub fn label(&self, index: usize) -> PathBuf {
        match self {
            ImageInput::File(path) => path.clone(),
            ImageInput::Pixels(_) => PathBuf::from(format!("<image {index}>")),
        }
    }

    /// The decoded pixels (a file that does not decode is bad input: `ValueError`).
    pub fn into_rgb(self) -> anyhow::Result<Rgb8> {
        match self {
            ImageInput::Pixels(rgb) => Ok(rgb),
            ImageInput::File(path) => read_file(&path),
        }
    }
}

fn read_file(path: &Path) -> anyhow::Result<Rgb8> {
    if !path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("image {}: no such file", path.display()),
        )
        .into());
    }
    hrk::predict::read_image(path).map_err(|e| BadInput(hrk::predict::one_line(&e)).into())
}

const IMAGE_KINDS: &str = "a NumPy uint8 array (HxWx3 RGB, HxWx4 RGBA or HxW grey), a path or a PIL.Image";

/// Reads an image argument: a NumPy array (copied once, into the RGB layout the library takes), a
/// path (`str` or `os.PathLike`) or a PIL image (converted to RGB by PIL).
pub fn image_input(obj: &Bound<'_, PyAny>) -> PyResult<ImageInput> {
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        return Ok(ImageInput::File(obj.extract::<PathBuf>()?));
    }
    if let Ok(array) = obj.cast::<PyUntypedArray>() {
        return array_pixels(array).map(ImageInput::Pixels);
    }
    let module: String = obj.get_type().module().map(|m| m.to_string()).unwrap_or_default();
    if module.starts_with("PIL.") {
        return pil_pixels(obj).map(ImageInput::Pixels);
    }
    let type_name = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
    Err(PyTypeError::new_err(format!("image: expected {IMAGE_KINDS}, got {type_name}")))
}

fn array_pixels(array: &Bound<'_, PyUntypedArray>) -> PyResult<Rgb8> {
    let shape = array.shape().to_vec();
    let dtype = array.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(array.py())) {
        return Err(PyTypeError::new_err(format!(
            "image: expected a uint8 array, got {} with shape {shape:?} (convert with array.astype(numpy.uint8) if its values are 0-255)",
            dtype.str().map(|s| s.to_string()).unwrap_or_default()
        )));
    }
    let channels = match shape[..] {
        [_, _] => 1,
        [_, _, c] if c == 3 || c == 4 => c,
        _ => return Err(PyValueError::new_err(format!("image: expected shape HxW, HxWx3 or HxWx4, got {shape:?}"))),
    };
    let (height, width) = (shape[0], shape[1]);
    if height == 0 || width == 0 {
        return Err(PyValueError::new_err(format!("image: the array is empty (shape {shape:?})")));
    }
    let readonly = array.extract::<numpy::PyReadonlyArrayDyn<'_, u8>>()?;
    let view = readonly.as_array();
    let mut data = Vec::with_capacity(height * width * 3);
    match (channels, view.as_slice()) {
        (3, Some(contiguous)) => data.extend_from_slice(contiguous),
        (1, _) => view.iter().for_each(|&g| data.extend_from_slice(&[g, g, g])),
        _ => {
            // Channels are the last axis: each lane is one pixel (RGB or RGBA; alpha is dropped).
            for pixel in view.rows() {
                data.extend_from_slice(&[pixel[0], pixel[1], pixel[2]]);
            }
        }
    }
    Rgb8::new(width, height, data).map_err(|e| PyValueError::new_err(hrk::predict::one_line(&e)))
}

fn pil_pixels(image: &Bound<'_, PyAny>) -> PyResult<Rgb8> {
    let rgb = if image.getattr("mode")?.extract::<String>()? == "RGB" {
        image.clone()
    } else {
        image.call_method1("convert", ("RGB",))?
    };
    let (width, height): (usize, usize) = rgb.getattr("size")?.extract()?;
    if width == 0 || height == 0 {
        return Err(PyValueError::new_err(format!("image: the PIL image is empty ({width}x{height})")));
    }
    let bytes = rgb.call_method0("tobytes")?;
    let bytes = bytes.cast::<PyBytes>()?;
    Rgb8::new(width, height, bytes.as_bytes().to_vec()).map_err(|e| PyValueError::new_err(hrk::predict::one_line(&e)))
}
