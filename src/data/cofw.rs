//! COFW annotations: MATLAB v7.3 (HDF5) files `COFW_train_color.mat` (`IsTr`, `phisTr`)
//! and `COFW_test_color.mat` (`IsT`, `phisT`), read like `hdf5storage.loadmat`.
//!
//! MATLAB stores arrays column-major and the HDF5 shape is the MATLAB shape reversed: a
//! MATLAB H×W×3 uint8 image is an HDF5 [3, W, H] dataset, the MATLAB N×87 `phis` matrix an
//! HDF5 [87, N] dataset. The image cell array is a dataset of object references.

use super::image::check_dimensions;
use super::imageio::Rgb8;
use anyhow::{anyhow, bail, Result};
use hdf5_pure::{File, Object};
use std::path::Path;

/// Number of COFW landmarks.
pub const COFW_JOINTS: usize = 29;

/// The images (grey ones already expanded to 3 channels) and their landmarks.
#[derive(Debug, Default)]
pub struct CofwData {
    pub images: Vec<Rgb8>,
    /// (x, y) per landmark: phis row [0..29] = x, [29..58] = y.
    pub pts: Vec<Vec<[f64; 2]>>,
}

/// The reference's COFW box: center = ((floor(xmin)+ceil(xmax))/2, (floor(ymin)+ceil(ymax))/2),
/// scale = max(ceil(xmax)-floor(xmin), ceil(ymax)-floor(ymin)) / 200.
pub fn cofw_center_scale(pts: &[[f64; 2]]) -> ([f32; 2], f64) {
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for p in pts {
        xmin = xmin.min(p[0]);
        xmax = xmax.max(p[0]);
        ymin = ymin.min(p[1]);
        ymax = ymax.max(p[1]);
    }
    let cx = (xmin.floor() + xmax.ceil()) / 2.0;
    let cy = (ymin.floor() + ymax.ceil()) / 2.0;
    let scale = (xmax.ceil() - xmin.floor()).max(ymax.ceil() - ymin.floor()) / 200.0;
    ([cx as f32, cy as f32], scale)
}

/// Reads the train (`IsTr`/`phisTr`) or test (`IsT`/`phisT`) variables of a COFW .mat file.
pub fn read_cofw(path: &Path, is_train: bool) -> Result<CofwData> {
    let (img_var, phis_var) = if is_train { ("IsTr", "phisTr") } else { ("IsT", "phisT") };
    let file_name = path.display();
    if !path.exists() {
        bail!("cannot read COFW file {file_name}: file not found");
    }
    let file = File::open(path).map_err(|e| anyhow!("cannot read COFW file {file_name} as MATLAB v7.3/HDF5: {e}"))?;
    let h5err = |what: &str, e: hdf5_pure::Error| anyhow!("{file_name}: {what}: {e}");

    let phis_ds = file
        .dataset(phis_var)
        .map_err(|e| anyhow!("{file_name}: variable '{phis_var}' missing or unreadable ({e}); a COFW {} file needs '{img_var}' and '{phis_var}'", if is_train { "train" } else { "test" }))?;
    let phis_shape = phis_ds.shape().map_err(|e| h5err(phis_var, e))?;
    // HDF5 [cols, rows] = MATLAB rows×cols; the reference needs N×(≥58).
    if phis_shape.len() != 2 || phis_shape[0] < 2 * COFW_JOINTS as u64 {
        bail!(
            "{file_name}: '{phis_var}' has MATLAB shape {}, expected N×87 (at least 58 columns)",
            matlab_shape(&phis_shape)
        );
    }
    let (cols, n) = (phis_shape[0] as usize, phis_shape[1] as usize);
    let phis = phis_ds.read_f64().map_err(|e| h5err(phis_var, e))?;
    if phis.len() != cols * n {
        bail!("{file_name}: '{phis_var}' holds {} values, shape says {}", phis.len(), cols * n);
    }

    let img_ds =
        file.dataset(img_var).map_err(|e| anyhow!("{file_name}: variable '{img_var}' missing or unreadable ({e})"))?;
    let cell_shape = img_ds.shape().map_err(|e| h5err(img_var, e))?;
    let refs = img_ds
        .dereference()
        .map_err(|e| anyhow!("{file_name}: '{img_var}' is not a MATLAB cell array of images ({e})"))?;
    if refs.len() != n {
        bail!(
            "{file_name}: '{img_var}' has {} images (MATLAB shape {}) but '{phis_var}' has {n} rows",
            refs.len(),
            matlab_shape(&cell_shape)
        );
    }

    let mut data = CofwData { images: Vec::with_capacity(n), pts: Vec::with_capacity(n) };
    for (i, obj) in refs.into_iter().enumerate() {
        let place = format!("{img_var}{{{}}}", i + 1);
        let ds = match obj {
            Object::Dataset(ds) => ds,
            _ => bail!("{file_name}: {place} is not a dataset, expected an image array"),
        };
        let shape = ds.shape().map_err(|e| h5err(&place, e))?;
        // HDF5 [W, H] (grey) or [C, W, H].
        let (c, w, h) = match shape.as_slice() {
            [w, h] => (1usize, *w, *h),
            [c, w, h] if *c == 1 || *c == 3 => (*c as usize, *w, *h),
            _ => bail!("{file_name}: {place} has MATLAB shape {}, expected H×W or H×W×3", matlab_shape(&shape)),
        };
        check_dimensions(Path::new(&format!("{file_name}:{place}")), w, h)?;
        let (w, h) = (w as usize, h as usize);
        let raw = ds.read_u8().map_err(|e| h5err(&place, e))?;
        if raw.len() != c * w * h {
            bail!("{file_name}: {place} holds {} values, expected {}", raw.len(), c * w * h);
        }
        // raw[(ch*W + x)*H + y] is MATLAB img(y, x, ch); grey is repeated to 3 channels.
        let mut rgb = vec![0u8; w * h * 3];
        for ch in 0..3 {
            let src = &raw[if c == 1 { 0 } else { ch * w * h }..][..w * h];
            for x in 0..w {
                let col = &src[x * h..(x + 1) * h];
                for (y, &v) in col.iter().enumerate() {
                    rgb[(y * w + x) * 3 + ch] = v;
                }
            }
        }
        data.images.push(Rgb8 { width: w, height: h, data: rgb });

        // MATLAB row i of phis: element (i, j) is phis[j*n + i].
        let mut pts = Vec::with_capacity(COFW_JOINTS);
        for j in 0..COFW_JOINTS {
            let x = phis[j * n + i];
            let y = phis[(j + COFW_JOINTS) * n + i];
            if !x.is_finite() || !y.is_finite() {
                bail!("{file_name}: {phis_var} row {} landmark {} is not finite ({x}, {y})", i + 1, j + 1);
            }
            pts.push([x, y]);
        }
        data.pts.push(pts);
    }
    if data.images.is_empty() {
        bail!("{file_name}: '{img_var}' is empty");
    }
    Ok(data)
}

/// MATLAB's view of an HDF5 shape (reversed), e.g. "1345×87".
fn matlab_shape(h5: &[u64]) -> String {
    h5.iter().rev().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}
