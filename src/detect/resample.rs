//! PyTorch's `F.interpolate(mode="area")` (= adaptive average pooling) of an image region, the resampling
//! facenet-pytorch's `imresample` uses for the pyramid and for the R-Net / O-Net crops.

use crate::data::image::Image;

/// The input rows (or columns) output index `i` of `out` averages over `len` inputs: PyTorch's
/// `start_index` = ⌊i·len/out⌋ and `end_index` = ⌈(i+1)·len/out⌉, in integers.
pub fn area_window(i: usize, out: usize, len: usize) -> (usize, usize) {
    let start = (i * len) / out;
    let end = ((i + 1) * len).div_ceil(out);
    (start, end)
}

/// A rectangle of an image: rows y0..y1, columns x0..x1 (exclusive ends), inside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl Region {
    pub fn whole(image: &Image) -> Region {
        Region { x0: 0, y0: 0, x1: image.width, y1: image.height }
    }
}

/// Area-resamples `region` of `image` (RGB HWC) to `out_h`×`out_w`, normalises each value as facenet-pytorch
/// does ((v − 127.5) · 0.0078125) and writes it planar (CHW) into `dst` (3·out_h·out_w values).
pub fn area_resample_normalized(image: &Image, region: Region, out_h: usize, out_w: usize, dst: &mut [f32]) {
    let plane = out_h * out_w;
    debug_assert_eq!(dst.len(), 3 * plane);
    area_resample_with(image, region, out_h, out_w, 0..out_h, |oy, ox, c, v| dst[c * plane + oy * out_w + ox] = v);
}

/// Rows `rows` of [`area_resample_normalized`]'s output, channels-last: `dst` [rows][out_w][3].
pub fn area_resample_rows_hwc(
    image: &Image, region: Region, out_h: usize, out_w: usize, rows: std::ops::Range<usize>, dst: &mut [f32],
) {
    debug_assert_eq!(dst.len(), 3 * rows.len() * out_w);
    let first = rows.start;
    area_resample_with(image, region, out_h, out_w, rows, |oy, ox, c, v| dst[((oy - first) * out_w + ox) * 3 + c] = v);
}

/// PyTorch's CPU kernel divides an f32 sum over the window by kh then kw. Its sum runs row-major over
/// the window; here the window's rows are summed first (one vectorisable pass over each image row),
/// then the columns. For 8-bit images (integer values, window sums far below 2²⁴) every partial sum
/// is exact, so the result is bit-identical to the row-major order; other inputs differ by rounding.
#[inline(always)]
fn area_resample_with(
    image: &Image, region: Region, out_h: usize, out_w: usize, rows: std::ops::Range<usize>,
    mut put: impl FnMut(usize, usize, usize, f32),
) {
    let (h, w) = (region.y1 - region.y0, region.x1 - region.x0);
    let cols: Vec<(usize, usize)> = (0..out_w).map(|ox| area_window(ox, out_w, w)).collect();
    let image_row = |y: usize| {
        let start = ((region.y0 + y) * image.width + region.x0) * 3;
        &image.data[start..start + w * 3]
    };
    let mut column_sums = vec![0f32; w * 3];
    for oy in rows {
        let (ry0, ry1) = area_window(oy, out_h, h);
        let kh = (ry1 - ry0) as f32;
        column_sums.copy_from_slice(image_row(ry0));
        for y in ry0 + 1..ry1 {
            for (s, v) in column_sums.iter_mut().zip(image_row(y)) {
                *s += v;
            }
        }
        for (ox, &(cx0, cx1)) in cols.iter().enumerate() {
            let kw = (cx1 - cx0) as f32;
            let mut sum = [0f32; 3];
            for px in column_sums[cx0 * 3..cx1 * 3].chunks_exact(3) {
                sum[0] += px[0];
                sum[1] += px[1];
                sum[2] += px[2];
            }
            for (c, s) in sum.iter().enumerate() {
                let v = s / kh / kw;
                put(oy, ox, c, (v - 127.5) * 0.0078125);
            }
        }
    }
}
