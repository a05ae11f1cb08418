//! `lib/utils/transforms.py` of the official code: `get_transform`, `transform_pixel` and
//! `crop` with the scipy.misc (<= 1.2) behaviour it relied on: `bytescale` min-max stretch of
//! float arrays, `imresize` = Pillow BILINEAR resize, `imrotate` = Pillow BILINEAR rotate.
//!
//! Precision follows the reference: `center` is float32 (a torch FloatTensor), `scale` float64,
//! the matrices float64, truncation toward zero (`astype(int)`).

use anyhow::{bail, Context, Result};

use super::image::Image;
use super::pillow::{
    resize_bilinear, resize_bilinear_region, resize_input_span, rotate_bilinear, rotate_bilinear_region, Rgb8, RowView,
};

/// Largest window/image side the crop accepts (far beyond any real face crop).
const MAX_SIDE: i64 = 1 << 15;

type Mat3 = [[f64; 3]; 3];

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut c = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            c[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
        }
    }
    c
}

/// Appends the rotation about the output centre: `T(+res/2)·R(-rot)·T(-res/2)·t`.
fn apply_rotation(t: Mat3, res: [usize; 2], rot: f64) -> Mat3 {
    if rot == 0.0 {
        return t;
    }
    // Same association as the reference: ((-rot)·π)/180.
    let ang = -rot * std::f64::consts::PI / 180.0;
    let (sn, cs) = (ang.sin(), ang.cos());
    let rmat = [[cs, -sn, 0.0], [sn, cs, 0.0], [0.0, 0.0, 1.0]];
    let tm = [[1.0, 0.0, -(res[1] as f64) / 2.0], [0.0, 1.0, -(res[0] as f64) / 2.0], [0.0, 0.0, 1.0]];
    let ti = [[1.0, 0.0, res[1] as f64 / 2.0], [0.0, 1.0, res[0] as f64 / 2.0], [0.0, 0.0, 1.0]];
    matmul(&ti, &matmul(&rmat, &matmul(&tm, &t)))
}

/// `get_transform(center, scale, res, rot)`: original pixels → a res[1]×res[0] (w×h) frame.
pub fn get_transform(center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> [[f64; 3]; 3] {
    let (cx, cy) = (center[0] as f64, center[1] as f64);
    let h = 200.0 * scale;
    let (r0, r1) = (res[0] as f64, res[1] as f64);
    let t = [[r1 / h, 0.0, r1 * (-cx / h + 0.5)], [0.0, r0 / h, r0 * (-cy / h + 0.5)], [0.0, 0.0, 1.0]];
    apply_rotation(t, res, rot)
}

/// The same matrix when `scale` is a torch float64 tensor (the decode path): torch evaluates
/// `a / h` as `reciprocal(h) · a`.
pub fn get_transform_tensor_scale(center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> [[f64; 3]; 3] {
    let (cx, cy) = (center[0] as f64, center[1] as f64);
    let h = 200.0 * scale;
    let r = 1.0 / h;
    let (r0, r1) = (res[0] as f64, res[1] as f64);
    let t = [[r * r1, 0.0, (r * -cx + 0.5) * r1], [0.0, r * r0, (r * -cy + 0.5) * r0], [0.0, 0.0, 1.0]];
    apply_rotation(t, res, rot)
}

/// Inverse of an affine 3×3 matrix (last row 0 0 1), as LAPACK's LU solve forms it for the
/// unrotated case: diagonal reciprocals, translation `-(c · (1/a))`.
fn invert_affine(t: &Mat3) -> Mat3 {
    if t[0][1] == 0.0 && t[1][0] == 0.0 {
        let (ia, ib) = (1.0 / t[0][0], 1.0 / t[1][1]);
        return [[ia, 0.0, -(t[0][2] * ia)], [0.0, ib, -(t[1][2] * ib)], [0.0, 0.0, 1.0]];
    }
    let det = t[0][0] * t[1][1] - t[0][1] * t[1][0];
    let (a, b, c, d) = (t[1][1] / det, -t[0][1] / det, -t[1][0] / det, t[0][0] / det);
    [[a, b, -(a * t[0][2] + b * t[1][2])], [c, d, -(c * t[0][2] + d * t[1][2])], [0.0, 0.0, 1.0]]
}

fn apply(t: &Mat3, pt: [f64; 2]) -> [f64; 2] {
    let v = [pt[0] - 1.0, pt[1] - 1.0, 1.0];
    [t[0][0] * v[0] + t[0][1] * v[1] + t[0][2] * v[2], t[1][0] * v[0] + t[1][1] * v[1] + t[1][2] * v[2]]
}

/// The float64 point before truncation: `M·[pt0-1, pt1-1, 1]`, M = t or inv(t).
pub fn transform_pixel_raw(
    pt: [f64; 2], center: [f32; 2], scale: f64, res: [usize; 2], invert: bool, rot: f64,
) -> [f64; 2] {
    let t = get_transform(center, scale, res, rot);
    let m = if invert { invert_affine(&t) } else { t };
    apply(&m, pt)
}

/// `transform_pixel`: `trunc(M·[pt-1, 1]) + 1` (truncation toward zero), as f64 integers.
pub fn transform_pixel(
    pt: [f64; 2], center: [f32; 2], scale: f64, res: [usize; 2], invert: bool, rot: f64,
) -> [f64; 2] {
    let q = transform_pixel_raw(pt, center, scale, res, invert, rot);
    [q[0].trunc() + 1.0, q[1].trunc() + 1.0]
}

/// `transform_pixel(..., invert=1)` with the torch-tensor `scale` arithmetic of `decode_preds`.
pub fn transform_pixel_tensor_scale(
    pt: [f64; 2], center: [f32; 2], scale: f64, res: [usize; 2], invert: bool, rot: f64,
) -> [f64; 2] {
    let t = get_transform_tensor_scale(center, scale, res, rot);
    let m = if invert { invert_affine(&t) } else { t };
    let q = apply(&m, pt);
    [q[0].trunc() + 1.0, q[1].trunc() + 1.0]
}

/// A numpy-like HWC... array of 3 axes (d0, d1, d2), row-major. Used because scipy's
/// `toimage` picks the FIRST axis of length 3 as the channel axis.
#[derive(Clone, Debug)]
struct Array3<T> {
    dims: [usize; 3],
    data: Vec<T>,
}

/// `scipy.misc.bytescale` of a float32 array (all channels jointly), in float32.
pub fn bytescale(values: &[f32]) -> Vec<u8> {
    if values.is_empty() {
        return Vec::new();
    }
    let mut lo = values[0];
    let mut hi = values[0];
    for &v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let mut rng = hi - lo;
    if rng == 0.0 {
        rng = 1.0;
    }
    // 255/rng rounded once to f32 (the f64 quotient of two f32 values rounds the same).
    let s = (255.0f64 / rng as f64) as f32;
    values
        .iter()
        .map(|&x| {
            let v = (x - lo) * s;
            (v.clamp(0.0, 255.0) + 0.5f32) as u8
        })
        .collect()
}

/// `scipy.misc.toimage` of a 3-axis u8 array: the first axis of length 3 holds the channels.
fn to_pil(a: &Array3<u8>) -> Result<Rgb8> {
    let [d0, d1, d2] = a.dims;
    let ca = a.dims.iter().position(|&d| d == 3).context("crop: array has no axis of length 3")?;
    let (w, h) = match ca {
        2 => (d1, d0),
        1 => (d2, d0),
        _ => (d2, d1),
    };
    if ca == 2 {
        return Rgb8::new(w, h, a.data.clone());
    }
    let mut out = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let idx = if ca == 1 { (y * d1 + c) * d2 + x } else { (c * d1 + y) * d2 + x };
                out[(y * w + x) * 3 + c] = a.data[idx];
            }
        }
    }
    Rgb8::new(w, h, out)
}

fn from_pil(im: Rgb8) -> Array3<u8> {
    Array3 { dims: [im.height, im.width, 3], data: im.data }
}

/// Python slice `[start:stop]` on a sequence of length `len`: (begin, count).
pub(crate) fn py_slice(len: i64, start: i64, stop: i64) -> (usize, usize) {
    let norm = |i: i64| -> i64 {
        let i = if i < 0 { i + len } else { i };
        i.clamp(0, len)
    };
    let (a, b) = (norm(start), norm(stop));
    (a as usize, (b - a).max(0) as usize)
}

/// Intermediate values of one crop (for tests and debugging).
#[derive(Clone, Debug, Default)]
pub struct CropTrace {
    pub predownscale: bool,
    pub downscaled_hw: Option<[usize; 2]>,
    pub center_after_downscale: Option<[f32; 2]>,
    pub scale_after_downscale: Option<f64>,
    pub ul: [i64; 2],
    pub br: [i64; 2],
    pub pad: i64,
    /// The uint8 image handed to the final resize: (width, height, RGB bytes).
    pub window_u8: Option<(usize, usize, Vec<u8>)>,
}

/// `crop(img, center, scale, res, rot)` of the reference → a res[0]×res[1] uint8 image (as f32).
pub fn crop(img: &Image, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> Result<Image> {
    crop_traced(img, center, scale, res, rot, &mut CropTrace::default())
}

fn check_int(v: f64, what: &str) -> Result<i64> {
    if !v.is_finite() || v.abs() > MAX_SIDE as f64 * 4.0 {
        bail!("crop: {what} = {v} is out of range (center/scale/rot not sensible)");
    }
    Ok(v.trunc() as i64)
}

/// The reference's preconditions of a crop, as one-line errors: an image of `values` = w·h·3 numbers,
/// an output size in range, a finite center/scale/rotation and a positive scale.
fn check_crop_request(
    [wd, ht]: [usize; 2], values: usize, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64,
) -> Result<()> {
    if wd == 0 || ht == 0 || values != wd * ht * 3 {
        bail!("crop: image {}x{} has {} values (need {})", wd, ht, values, wd * ht * 3);
    }
    if res[0] == 0 || res[1] == 0 || res[0] as i64 > MAX_SIDE || res[1] as i64 > MAX_SIDE {
        bail!("crop: output size {:?} out of range", res);
    }
    let finite = scale.is_finite() && rot.is_finite() && center[0].is_finite() && center[1].is_finite();
    if !finite || scale <= 0.0 {
        bail!("crop: bad center {:?} / scale {scale} / rot {rot}", center);
    }
    Ok(())
}

/// The window a crop cuts from its source: the reference's ul/br corners (1-based, grown by `pad`
/// on every side when rotating) and its size.
struct CropWindow {
    ul: [i64; 2],
    br: [i64; 2],
    pad: i64,
    win_h: i64,
    win_w: i64,
}

fn crop_window(c: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> Result<CropWindow> {
    let ul_raw = transform_pixel_raw([0.0, 0.0], c, scale, res, true, 0.0);
    let br_raw = transform_pixel_raw([res[0] as f64, res[1] as f64], c, scale, res, true, 0.0);
    let mut ul = [check_int(ul_raw[0], "ul.x")? + 1, check_int(ul_raw[1], "ul.y")? + 1];
    let mut br = [check_int(br_raw[0], "br.x")? + 1, check_int(br_raw[1], "br.y")? + 1];
    let (dx, dy) = ((br[0] - ul[0]) as f64, (br[1] - ul[1]) as f64);
    let pad = ((dx * dx + dy * dy).sqrt() / 2.0 - dy / 2.0).trunc() as i64;
    if rot != 0.0 {
        ul = [ul[0] - pad, ul[1] - pad];
        br = [br[0] + pad, br[1] + pad];
    }
    let (win_h, win_w) = (br[1] - ul[1], br[0] - ul[0]);
    if win_h <= 0 || win_w <= 0 || win_h > MAX_SIDE || win_w > MAX_SIDE {
        bail!("crop: window {win_w}x{win_h} (ul {:?}, br {:?}) is empty or too large", ul, br);
    }
    Ok(CropWindow { ul, br, pad, win_h, win_w })
}

/// The reference's four slices of the window copy (`new_img[new_y, new_x] = img[old_y, old_x]`) as
/// (start, len) with Python's negative-index semantics: [new_x, new_y, old_x, old_y].
fn window_slices(ul: [i64; 2], br: [i64; 2], [win_w, win_h]: [i64; 2], [sw, sh]: [i64; 2]) -> [(usize, usize); 4] {
    [
        py_slice(win_w, 0.max(-ul[0]), br[0].min(sw) - ul[0]),
        py_slice(win_h, 0.max(-ul[1]), br[1].min(sh) - ul[1]),
        py_slice(sw, 0.max(ul[0]), sw.min(br[0])),
        py_slice(sh, 0.max(ul[1]), sh.min(br[1])),
    ]
}

/// [`crop`] with the reference's input array type (see [`InputType`]); `img` holds integers
/// 0..255 when `input` is `Uint8`.
pub fn crop_input(
    img: &Image, input: InputType, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64,
) -> Result<Image> {
    crop_traced_input(img, input, center, scale, res, rot, &mut CropTrace::default())
}

/// [`crop`] that also records its intermediate values in `trace`.
pub fn crop_traced(
    img: &Image, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64, trace: &mut CropTrace,
) -> Result<Image> {
    crop_traced_input(img, InputType::Float32, center, scale, res, rot, trace)
}

/// [`crop_input`] that also records its intermediate values in `trace`. This is the plain
/// transcription of the reference on float arrays; [`crop_rgb8`] is the fast equivalent.
pub fn crop_traced_input(
    img: &Image, input: InputType, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64, trace: &mut CropTrace,
) -> Result<Image> {
    let (wd, ht) = (img.width, img.height);
    check_crop_request([wd, ht], img.data.len(), center, scale, res, rot)?;
    let mut c = center;
    let mut scale = scale;
    let sf = scale * 200.0 / res[0] as f64;
    trace.predownscale = sf >= 2.0;
    // The image the window is cut from: the original (float) or the downscaled (uint8) one.
    let mut downscaled: Option<Image> = None;
    if sf >= 2.0 {
        let new_size = ((ht.max(wd) as f64) / sf).floor();
        let new_ht = (ht as f64 / sf).floor() as usize;
        let new_wd = (wd as f64 / sf).floor() as usize;
        trace.downscaled_hw = Some([new_ht, new_wd]);
        if new_size < 2.0 {
            // The reference returns torch.zeros(res) here.
            return Ok(Image::zeros(res[1], res[0]));
        }
        // scipy's toimage: float arrays are stretched, uint8 arrays pass unchanged.
        let bytes = match input {
            InputType::Float32 => bytescale(&img.data),
            InputType::Uint8 => img.to_u8(),
        };
        let im = Rgb8::new(wd, ht, bytes)?;
        let small = resize_bilinear(&im, new_wd, new_ht).context("crop: pre-downscale")?;
        downscaled = Some(Image {
            width: small.width,
            height: small.height,
            data: small.data.iter().map(|&v| v as f32).collect(),
        });
        let sf32 = sf as f32;
        c = [c[0] / sf32, c[1] / sf32];
        scale /= sf;
        trace.center_after_downscale = Some(c);
        trace.scale_after_downscale = Some(scale);
    }
    let src = downscaled.as_ref().unwrap_or(img);

    let CropWindow { ul, br, pad, win_h, win_w } = crop_window(c, scale, res, rot)?;
    (trace.pad, trace.ul, trace.br) = (pad, ul, br);
    let mut win = vec![0f32; (win_h * win_w * 3) as usize];
    // Same slicing expressions as the reference, with Python's negative-index semantics and
    // numpy's broadcasting rule for the assignment (a mismatch is the reference's ValueError).
    let (sw, sh) = (src.width as i64, src.height as i64);
    let [new_x, new_y, old_x, old_y] = window_slices(ul, br, [win_w, win_h], [sw, sh]);
    for (new, old, axis) in [(new_x, old_x, "x"), (new_y, old_y, "y")] {
        if new.1 != old.1 && old.1 != 1 {
            bail!(
                "crop: window [{:?}, {:?}) does not overlap the {}x{} image along {axis} (the reference raises here)",
                ul,
                br,
                sw,
                sh
            );
        }
    }
    for yy in 0..new_y.1 {
        let sy = old_y.0 + if old_y.1 == 1 { 0 } else { yy };
        let dst_row = (new_y.0 + yy) * win_w as usize;
        for xx in 0..new_x.1 {
            let sx = old_x.0 + if old_x.1 == 1 { 0 } else { xx };
            let s = (sy * src.width + sx) * 3;
            let d = (dst_row + new_x.0 + xx) * 3;
            win[d..d + 3].copy_from_slice(&src.data[s..s + 3]);
        }
    }

    let win_dims = [win_h as usize, win_w as usize, 3];
    let final_input: Array3<u8> = if rot != 0.0 {
        let pil = to_pil(&Array3 { dims: win_dims, data: bytescale(&win) })?;
        let rotated = from_pil(rotate_bilinear(&pil, rot)?);
        // [pad:-pad, pad:-pad]
        let [rh, rw, _] = rotated.dims;
        let ys = py_slice(rh as i64, pad, -pad);
        let xs = py_slice(rw as i64, pad, -pad);
        if ys.1 == 0 || xs.1 == 0 {
            bail!("crop: rotation padding {pad} leaves an empty window ({rw}x{rh})");
        }
        let mut data = Vec::with_capacity(ys.1 * xs.1 * 3);
        for y in ys.0..ys.0 + ys.1 {
            let row = y * rw * 3;
            data.extend_from_slice(&rotated.data[row + xs.0 * 3..row + (xs.0 + xs.1) * 3]);
        }
        Array3 { dims: [ys.1, xs.1, 3], data }
    } else {
        Array3 { dims: win_dims, data: bytescale(&win) }
    };
    let pil = to_pil(&final_input)?;
    trace.window_u8 = Some((pil.width, pil.height, pil.data.clone()));
    let out = resize_bilinear(&pil, res[1], res[0]).context("crop: final resize")?;
    Ok(Image { width: out.width, height: out.height, data: out.data.iter().map(|&v| v as f32).collect() })
}

/// The array type the reference's dataset hands to `crop`: it decides whether the
/// pre-downscale `imresize` min–max stretches the whole image first (scipy's `toimage`
/// bytescales every non-uint8 array and passes uint8 unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputType {
    /// `np.array(PIL image, dtype=np.float32)`: the CSV datasets (300W, WFLW, AFLW).
    Float32,
    /// The uint8 arrays of the COFW .mat files.
    Uint8,
}

/// `bytescale` restricted to integer-valued inputs 0..=255 whose min/max are `lo`/`hi`:
/// the same float32 arithmetic as [`bytescale`], tabulated per value.
fn bytescale_lut(lo: u8, hi: u8) -> [u8; 256] {
    let (lo, hi) = (lo as f32, hi as f32);
    let mut rng = hi - lo;
    if rng == 0.0 {
        rng = 1.0;
    }
    let s = (255.0f64 / rng as f64) as f32;
    let mut lut = [0u8; 256];
    for (v, out) in lut.iter_mut().enumerate() {
        *out = (((v as f32 - lo) * s).clamp(0.0, 255.0) + 0.5f32) as u8;
    }
    lut
}

fn is_identity(lut: &[u8; 256]) -> bool {
    lut.iter().enumerate().all(|(v, &o)| v == o as usize)
}

/// Min and max byte of the pixel columns `[x0, x0+nx)` of rows `[y0, y0+ny)` (all channels).
fn region_min_max(img: &Rgb8, flip: bool, xr: (usize, usize), yr: (usize, usize)) -> (u8, u8) {
    let (mut lo, mut hi) = (255u8, 0u8);
    // A mirrored column range is the same bytes as a plain one, reflected.
    let x0 = if flip { img.width - xr.0 - xr.1 } else { xr.0 };
    for y in yr.0..yr.0 + yr.1 {
        let row = &img.data[(y * img.width + x0) * 3..(y * img.width + x0 + xr.1) * 3];
        // Independent lanes so the compiler vectorises the reduction.
        let mut l = [255u8; 16];
        let mut h = [0u8; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for k in 0..16 {
                l[k] = l[k].min(c[k]);
                h[k] = h[k].max(c[k]);
            }
        }
        for &v in chunks.remainder() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        lo = lo.min(*l.iter().min().unwrap_or(&255));
        hi = hi.max(*h.iter().max().unwrap_or(&0));
    }
    (lo, hi)
}

/// Where a crop reads its source, from the image size and crop parameters alone.
enum CropPlan {
    /// The reference returns zeros (degenerate pre-downscale).
    Zeros,
    /// Rare shapes left to the general float path: an axis of length 3 (scipy then takes it as
    /// the channel axis), numpy's broadcast of a single source row/column, errors.
    Float,
    Window(WindowPlan),
}

/// A crop window on the (mirrored, possibly downscaled) source: its size, the slices of the
/// window copy and the part kept after the rotation padding is removed (all (start, len)).
struct WindowPlan {
    /// The downscaled source size (w, h) when the pre-downscale runs.
    downscaled: Option<[usize; 2]>,
    win: [usize; 2],
    new_x: (usize, usize),
    new_y: (usize, usize),
    old_x: (usize, usize),
    old_y: (usize, usize),
    kept_x: (usize, usize),
    kept_y: (usize, usize),
}

fn crop_plan([wd, ht]: [usize; 2], center: [f32; 2], scale: f64, res: [usize; 2], rot: f64) -> Result<CropPlan> {
    let mut c = center;
    let mut scale = scale;
    let sf = scale * 200.0 / res[0] as f64;
    // The source the window is cut from: the (mirrored) image, or its downscaled size.
    let (mut sw, mut sh) = (wd as i64, ht as i64);
    let mut downscaled = None;
    if sf >= 2.0 {
        let new_size = ((ht.max(wd) as f64) / sf).floor();
        let new_ht = (ht as f64 / sf).floor() as usize;
        let new_wd = (wd as f64 / sf).floor() as usize;
        if new_size < 2.0 {
            return Ok(CropPlan::Zeros);
        }
        (sw, sh) = (new_wd as i64, new_ht as i64);
        downscaled = Some([new_wd, new_ht]);
        let sf32 = sf as f32;
        c = [c[0] / sf32, c[1] / sf32];
        scale /= sf;
    }
    let CropWindow { ul, br, pad, win_h, win_w } = crop_window(c, scale, res, rot)?;
    let (kept_y, kept_x) = if rot != 0.0 {
        (py_slice(win_h, pad, -pad), py_slice(win_w, pad, -pad))
    } else {
        ((0, win_h as usize), (0, win_w as usize))
    };
    let [new_x, new_y, old_x, old_y] = window_slices(ul, br, [win_w, win_h], [sw, sh]);
    let odd = [win_h as usize, win_w as usize, kept_y.1, kept_x.1].contains(&3)
        || kept_y.1 == 0
        || kept_x.1 == 0
        || new_x.1 != old_x.1
        || new_y.1 != old_y.1;
    if odd {
        return Ok(CropPlan::Float);
    }
    let win = [win_w as usize, win_h as usize];
    Ok(CropPlan::Window(WindowPlan { downscaled, win, new_x, new_y, old_x, old_y, kept_x, kept_y }))
}

/// The pixels of its source image that a crop reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CropSource {
    /// All of them (the general float path, or an error the crop will report).
    Whole,
    /// Columns `[x, x+w)` and rows `[y, y+h)` of the unmirrored image (possibly empty: the crop
    /// is then all zeros).
    Rect { x: usize, y: usize, w: usize, h: usize },
}

/// Which pixels of a `full` = [width, height] image [`crop_rgb8`] reads with these parameters
/// (`center` in the mirrored frame when `flip`, as `crop_rgb8` takes it). The pre-downscale of a
/// float32 input stretches by the whole image's min/max: it reads the whole image.
pub fn crop_source(
    full: [usize; 2], flip: bool, input: InputType, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64,
) -> CropSource {
    let [wd, ht] = full;
    if check_crop_request(full, wd * ht * 3, center, scale, res, rot).is_err() {
        return CropSource::Whole;
    }
    let plan = match crop_plan(full, center, scale, res, rot) {
        Ok(CropPlan::Window(p)) => p,
        Ok(CropPlan::Zeros) => return CropSource::Rect { x: 0, y: 0, w: 0, h: 0 },
        Ok(CropPlan::Float) | Err(_) => return CropSource::Whole,
    };
    if plan.old_x.1 == 0 || plan.old_y.1 == 0 {
        return CropSource::Rect { x: 0, y: 0, w: 0, h: 0 };
    }
    if plan.downscaled.is_some() && input == InputType::Float32 {
        return CropSource::Whole;
    }
    // Source columns/rows in the mirrored frame; through the resize taps when downscaling.
    let ((x0, x1), (y0, y1)) = match plan.downscaled {
        Some([sw, sh]) => (
            resize_input_span(wd, sw, plan.old_x.0, plan.old_x.1),
            resize_input_span(ht, sh, plan.old_y.0, plan.old_y.1),
        ),
        None => ((plan.old_x.0, plan.old_x.0 + plan.old_x.1), (plan.old_y.0, plan.old_y.0 + plan.old_y.1)),
    };
    let (x0, x1) = if flip { (wd - x1, wd - x0) } else { (x0, x1) };
    CropSource::Rect { x: x0, y: y0, w: x1 - x0, h: y1 - y0 }
}

/// [`crop`] of an 8-bit RGB image, mirrored first when `flip` (the reference's `np.fliplr`),
/// handed to the reference as `input` (float32 for the CSV datasets, uint8 for COFW).
/// Bit-identical to the reference crop, but it only computes what the result needs: the
/// pre-downscale only over the window's part of the downscaled image, the rotation only over
/// the part kept after removing the padding, and bytescale stretches as 256-entry tables
/// from exact integer min/max (all intermediate arrays hold integers 0..255).
#[allow(clippy::too_many_arguments)]
pub fn crop_rgb8(
    img: &Rgb8, flip: bool, input: InputType, center: [f32; 2], scale: f64, res: [usize; 2], rot: f64,
) -> Result<Rgb8> {
    match crop_rgb8_region(img, [img.width, img.height], [0, 0], flip, input, center, scale, res, rot)? {
        Some(out) => Ok(out),
        None => bail!("crop: the whole {}x{} image did not suffice (a bug)", img.width, img.height),
    }
}

/// [`crop_rgb8`] from a rectangle of the image: `region` holds the pixels at `origin` (x, y) of a
/// `full` = [width, height] image, at least the [`crop_source`] rectangle. `Ok(None)` when the
/// crop needs the whole image after all: the general float path, or the pre-downscale of a
/// float32 input, which stretches by the whole image's min/max (known from the region only
/// when it already holds both 0 and 255).
#[allow(clippy::too_many_arguments)]
pub fn crop_rgb8_region(
    region: &Rgb8, full: [usize; 2], origin: [usize; 2], flip: bool, input: InputType, center: [f32; 2], scale: f64,
    res: [usize; 2], rot: f64,
) -> Result<Option<Rgb8>> {
    let [wd, ht] = full;
    let whole = origin == [0, 0] && [region.width, region.height] == full;
    if whole {
        check_crop_request(full, region.data.len(), center, scale, res, rot)?;
    } else {
        check_crop_request(full, wd * ht * 3, center, scale, res, rot)?;
        let inside = origin[0] + region.width <= wd && origin[1] + region.height <= ht;
        if !inside || region.data.len() != region.width * region.height * 3 {
            bail!(
                "crop: region {}x{} at {:?} ({} bytes) does not fit the {wd}x{ht} image",
                region.width,
                region.height,
                origin,
                region.data.len()
            );
        }
    }
    let plan = match crop_plan(full, center, scale, res, rot)? {
        CropPlan::Zeros => return Ok(Some(Rgb8 { width: res[1], height: res[0], data: vec![0; res[0] * res[1] * 3] })),
        CropPlan::Float if !whole => return Ok(None),
        CropPlan::Float => {
            let float = super::imageio::rgb8_to_image(region, flip)?;
            let out = match input {
                InputType::Float32 => crop(&float, center, scale, res, rot)?,
                InputType::Uint8 => crop_input(&float, input, center, scale, res, rot)?,
            };
            return Ok(Some(Rgb8::new(out.width, out.height, out.to_u8())?));
        }
        CropPlan::Window(p) => p,
    };
    let WindowPlan { downscaled, win: [win_w, win_h], new_x, new_y, old_x, old_y, kept_x, kept_y } = plan;

    // The overlap of window and source: source pixels old_x × old_y land at new_x × new_y.
    let mut win = vec![0u8; win_w * win_h * 3];
    if old_x.1 > 0 && old_y.1 > 0 {
        let view = RowView { img: region, flip, lut: None, full, origin };
        // The overlapping part of the source (downscaled region or original pixels), as bytes.
        let part: Rgb8 = if let Some([sw, sh]) = downscaled {
            let mut full_lut = None;
            if input == InputType::Float32 {
                // scipy's toimage stretches the whole float image by its min/max first.
                let (lo, hi) = region_min_max(region, false, (0, region.width), (0, region.height));
                if !whole && (lo, hi) != (0, 255) {
                    return Ok(None);
                }
                full_lut = Some(bytescale_lut(lo, hi));
            }
            let lut = full_lut.as_ref().filter(|l| !is_identity(l));
            resize_bilinear_region(RowView { lut, ..view }, sw, sh, old_x, old_y)?
        } else {
            let (have_x, have_y) = (view.columns(), view.rows());
            if old_x.0 < have_x.0 || old_x.0 + old_x.1 > have_x.1 || old_y.0 < have_y.0 || old_y.0 + old_y.1 > have_y.1
            {
                bail!(
                    "crop: region {:?} at {:?} misses the window's source pixels",
                    [region.width, region.height],
                    origin
                );
            }
            let mut data = Vec::with_capacity(old_x.1 * old_y.1 * 3);
            let mut scratch = Vec::new();
            for y in old_y.0..old_y.0 + old_y.1 {
                let line = view.row(y, &mut scratch);
                data.extend_from_slice(&line[(old_x.0 - have_x.0) * 3..(old_x.0 - have_x.0 + old_x.1) * 3]);
            }
            Rgb8 { width: old_x.1, height: old_y.1, data }
        };
        // bytescale of the float32 window: min/max over the copied pixels and the zero padding.
        let (mut lo, mut hi) = region_min_max(&part, false, (0, part.width), (0, part.height));
        if new_x.1 < win_w || new_y.1 < win_h {
            lo = 0;
        }
        hi = hi.max(lo);
        let lut = bytescale_lut(lo, hi);
        for (r, line) in part.data.chunks_exact(part.width * 3).enumerate() {
            let d = ((new_y.0 + r) * win_w + new_x.0) * 3;
            for (o, &v) in win[d..d + line.len()].iter_mut().zip(line) {
                *o = lut[v as usize];
            }
        }
        // Zero padding maps to lut[0], which is 0 whenever padding exists (lo = 0).
    }
    // (A window entirely outside the source is all zeros: bytescale of zeros is zeros.)
    let window = Rgb8 { width: win_w, height: win_h, data: win };
    let kept = if rot != 0.0 { rotate_bilinear_region(&window, rot, kept_x, kept_y)? } else { window };
    Ok(Some(resize_bilinear(&kept, res[1], res[0]).context("crop: final resize")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: usize, h: usize) -> Image {
        let mut data = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                data.extend_from_slice(&[(x % 256) as f32, (y % 256) as f32, ((x + y) % 256) as f32]);
            }
        }
        Image { width: w, height: h, data }
    }

    #[test]
    fn transform_pixel_round_trip_and_truncation() {
        let c = [100.5f32, 80.25];
        let p = transform_pixel([110.0, 90.0], c, 1.0, [64, 64], false, 0.0);
        let raw = transform_pixel_raw([110.0, 90.0], c, 1.0, [64, 64], false, 0.0);
        assert_eq!(p, [raw[0].trunc() + 1.0, raw[1].trunc() + 1.0]);
        // negative values truncate toward zero
        let raw = transform_pixel_raw([-50.0, -50.0], c, 1.0, [64, 64], false, 0.0);
        assert!(raw[0] < 0.0 && raw[0] > -1.0 || raw[0] <= -1.0);
        let p = transform_pixel([-50.0, -50.0], c, 1.0, [64, 64], false, 0.0);
        assert_eq!(p[0], raw[0].trunc() + 1.0);
        // inverse maps the frame back (up to truncation)
        let fwd = transform_pixel_raw([120.0, 70.0], c, 1.3, [256, 256], false, 17.0);
        let back = transform_pixel_raw([fwd[0] + 1.0, fwd[1] + 1.0], c, 1.3, [256, 256], true, 17.0);
        assert!((back[0] - 119.0).abs() < 1e-9 && (back[1] - 69.0).abs() < 1e-9, "{back:?}");
    }

    #[test]
    fn bytescale_stretches_jointly() {
        assert_eq!(bytescale(&[10.0, 20.0, 30.0]), vec![0, 128, 255]);
        assert_eq!(bytescale(&[5.0, 5.0]), vec![0, 0]);
        assert!(bytescale(&[]).is_empty());
    }

    #[test]
    fn crop_shapes_and_errors() {
        let img = gradient(160, 120);
        let out = crop(&img, [80.0, 60.0], 0.5, [256, 256], 0.0).unwrap();
        assert_eq!((out.width, out.height, out.data.len()), (256, 256, 256 * 256 * 3));
        let out = crop(&img, [80.0, 60.0], 3.0, [256, 256], 12.5).unwrap();
        assert_eq!((out.width, out.height), (256, 256));
        // window right of / below the image by less than its own size: Python's negative
        // slice stop gives a shape mismatch, the reference raises ValueError
        assert!(crop(&img, [230.0, 60.0], 0.5, [256, 256], 0.0).is_err());
        assert!(crop(&img, [80.0, 190.0], 0.5, [256, 256], 0.0).is_err());
        // ... and further away both slices are empty: the reference returns a black crop
        let far = crop(&img, [2000.0, 60.0], 0.5, [256, 256], 0.0).unwrap();
        assert!(far.data.iter().all(|&v| v == 0.0));
        // absurd inputs
        assert!(crop(&img, [80.0, 60.0], 1e12, [256, 256], 0.0).is_ok()); // degenerate: zeros
                                                                          // a tiny scale still gives a (1-pixel) window, as in the reference
        assert_eq!(crop(&img, [80.0, 60.0], 1e-12, [256, 256], 0.0).unwrap().width, 256);
        assert!(crop(&img, [80.0, 60.0], -1.0, [256, 256], 0.0).is_err());
        assert!(crop(&img, [80.0, 60.0], f64::NAN, [256, 256], 0.0).is_err());
        assert!(crop(&img, [f32::INFINITY, 60.0], 1.0, [256, 256], 0.0).is_err());
        assert!(crop(&img, [1e30, 60.0], 1.0, [256, 256], 0.0).is_err());
        assert!(crop(&img, [80.0, 60.0], 1.0, [0, 256], 0.0).is_err());
        assert!(crop(&img, [80.0, 60.0], 1.0, [256, 1 << 20], 0.0).is_err());
        let bad = Image { width: 10, height: 10, data: vec![0.0; 7] };
        assert!(crop(&bad, [5.0, 5.0], 0.1, [256, 256], 0.0).is_err());
        let empty = Image { width: 0, height: 0, data: vec![] };
        assert!(crop(&empty, [5.0, 5.0], 0.1, [256, 256], 0.0).is_err());
    }

    #[test]
    fn degenerate_predownscale_returns_zeros() {
        let img = gradient(20, 20);
        let out = crop(&img, [10.0, 10.0], 1e6, [256, 256], 0.0).unwrap();
        assert!(out.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn to_pil_uses_first_axis_of_length_three() {
        // (2, 3, 3): scipy takes axis 1 as channels -> a 3-wide, 2-high image, pixel(y,x,c) = a[y][c][x]
        let a = Array3 { dims: [2, 3, 3], data: (0..18u8).collect() };
        let im = to_pil(&a).unwrap();
        assert_eq!((im.width, im.height), (3, 2));
        assert_eq!(&im.data[..6], &[0, 3, 6, 1, 4, 7]);
        // (3, 4, 3): axis 0 -> 3 wide, 4 high, pixel(y,x,c) = a[c][y][x]
        let a = Array3 { dims: [3, 4, 3], data: (0..36u8).collect() };
        let im = to_pil(&a).unwrap();
        assert_eq!((im.width, im.height), (3, 4));
        assert_eq!(&im.data[..3], &[0, 12, 24]);
        // a crop whose window is 3 pixels high does not fail
        let img = gradient(50, 50);
        let out = crop(&img, [25.0, 25.0], 0.015, [256, 256], 0.0).unwrap();
        assert_eq!((out.width, out.height), (256, 256));
    }

    #[test]
    fn python_slices() {
        assert_eq!(py_slice(10, 2, 5), (2, 3));
        assert_eq!(py_slice(10, 0, -3), (0, 7));
        assert_eq!(py_slice(10, 3, -3), (3, 4));
        assert_eq!(py_slice(10, 12, 15), (10, 0));
        assert_eq!(py_slice(10, 5, 2), (5, 0));
    }
}
