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
/// The arithmetic is PyTorch's CPU kernel's: an f32 sum over the window in row-major order, then ÷kh ÷kw.
pub fn area_resample_normalized(image: &Image, region: Region, out_h: usize, out_w: usize, dst: &mut [f32]) {
    let (h, w) = (region.y1 - region.y0, region.x1 - region.x0);
    let plane = out_h * out_w;
    debug_assert_eq!(dst.len(), 3 * plane);
    let cols: Vec<(usize, usize)> = (0..out_w).map(|ox| area_window(ox, out_w, w)).collect();
    for oy in 0..out_h {
        let (ry0, ry1) = area_window(oy, out_h, h);
        let kh = (ry1 - ry0) as f32;
        for (ox, &(cx0, cx1)) in cols.iter().enumerate() {
            let kw = (cx1 - cx0) as f32;
            let mut sum = [0f32; 3];
            for y in region.y0 + ry0..region.y0 + ry1 {
                let row = &image.data[(y * image.width + region.x0 + cx0) * 3..(y * image.width + region.x0 + cx1) * 3];
                for px in row.chunks_exact(3) {
                    sum[0] += px[0];
                    sum[1] += px[1];
                    sum[2] += px[2];
                }
            }
            for (c, s) in sum.iter().enumerate() {
                let v = s / kh / kw;
                dst[c * plane + oy * out_w + ox] = (v - 127.5) * 0.0078125;
            }
        }
    }
}
