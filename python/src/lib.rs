//! The `hrk` Python module: a thin PyO3 layer over the hrk library. Every result comes from the
//! library's own code paths (`hrk predict`'s frame stream and JSON values, `hrk test`'s evaluation,
//! `hrk train`'s trainer); this file converts arguments, releases the GIL around the work, and turns
//! errors — and panics, which never cross into the interpreter — into Python exceptions.

mod convert;
mod faces;
mod model;
mod run;

use pyo3::prelude::*;

/// hrk: HRNetV2 facial landmarks from hrk's Rust engine — `Model` (predict, predict_batch, track,
/// heatmaps), `detect`, `evaluate`, `train` and face_alignment's `FaceAlignment`. Results equal the
/// `hrk` command line's bit for bit.
#[pymodule]
fn hrk(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // `log` records (warnings such as a bf16 fallback, the trainer's log lines) go to Python's
    // `logging`, logger names following the Rust module paths (`hrk.predict`, ...).
    let _ = pyo3_log::try_init();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<faces::Face>()?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::TrackedFrames>()?;
    m.add_class::<model::FaceAlignment>()?;
    m.add_function(wrap_pyfunction!(model::detect, m)?)?;
    m.add_function(wrap_pyfunction!(run::evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(run::train, m)?)?;
    Ok(())
}
