//! Own port of the two Pillow (<= 12.x) operations the reference crop uses on 8-bit RGB images:
//! `Image.resize(size, BILINEAR)` (separable convolution with a triangle filter whose support
//! widens when downscaling, 22-bit fixed-point coefficients, horizontal pass first into an 8-bit
//! intermediate, then vertical) and `Image.rotate(angle, BILINEAR)` (generic affine transform,
//! 2×2 bilinear sampling in double precision, black outside the source).
//!
//! Pillow 13 changed the two-pass resize for tall images; this port follows Pillow 6.2 … 12.3,
//! which agree with each other (and with the 2019 environment of the reference).

use anyhow::{bail, Result};

/// An 8-bit RGB image, row-major, 3 bytes per pixel (Pillow mode "RGB").
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Rgb8> {
        let need = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if need != Some(data.len()) {
            bail!("pillow: RGB image {width}x{height} needs {:?} bytes, got {}", need, data.len());
        }
        Ok(Rgb8 { width, height, data })
    }
}

/// Fixed-point precision of the 8-bit resampler (Pillow's PRECISION_BITS = 32 - 8 - 2).
const PRECISION_BITS: u32 = 22;

/// Largest side we accept for a resize/rotate result (guards against absurd sizes).
const MAX_SIDE: usize = 1 << 16;

/// Pillow's triangle (BILINEAR) filter, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Per output index: first input index, number of taps, and `ksize` fixed-point weights.
struct Taps {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
}

/// `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, in_size) (float box in Pillow).
fn precompute_taps(in_size: usize, out_size: usize) -> Taps {
    let in0 = 0.0f32;
    let in1 = in_size as f32;
    // Pillow computes the box width in float, then divides in double.
    let scale = (in1 - in0) as f64 / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = 1.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = in0 as f64 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C truncation of the rounded value, then clamping, exactly as Pillow.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let taps = (xmax - xmin).max(0) as usize;
        let xmin = xmin as usize;
        let mut ww = 0.0f64;
        for (x, kx) in k.iter_mut().enumerate().take(taps) {
            let w = triangle((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for x in 0..taps {
            let v = if ww != 0.0 { k[x] / ww } else { k[x] };
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            row[x] = if v < 0.0 { (-0.5 + scaled) as i32 } else { (0.5 + scaled) as i32 };
        }
        bounds.push((xmin, taps));
    }
    Taps { ksize, bounds, weights }
}

/// Pillow's clip8: fixed-point accumulator to u8.
#[inline]
fn clip8(acc: i32) -> u8 {
    if acc >= (1i32 << PRECISION_BITS << 8) {
        255
    } else if acc <= 0 {
        0
    } else {
        (acc >> PRECISION_BITS) as u8
    }
}

/// Read access to the rows of an 8-bit RGB image as a resize sees them: optionally mirrored
/// left-right (`np.fliplr` before the crop) and optionally mapped through a per-value table
/// (a bytescale of integer-valued pixels), without materialising the whole image.
///
/// `img` may hold only a rectangle of a larger image (a region decode): its pixel (0, 0) is
/// pixel `origin` of the `full` [width, height] image (unmirrored coordinates). Rows and
/// columns are addressed in the (mirrored) full image; only the present ones may be read.
#[derive(Clone, Copy)]
pub struct RowView<'a> {
    pub img: &'a Rgb8,
    pub flip: bool,
    pub lut: Option<&'a [u8; 256]>,
    pub full: [usize; 2],
    pub origin: [usize; 2],
}

impl<'a> RowView<'a> {
    pub fn plain(img: &'a Rgb8) -> RowView<'a> {
        RowView::whole(img, false, None)
    }

    /// A view of all of `img`.
    pub fn whole(img: &'a Rgb8, flip: bool, lut: Option<&'a [u8; 256]>) -> RowView<'a> {
        RowView { img, flip, lut, full: [img.width, img.height], origin: [0, 0] }
    }

    /// The first column present, in the view's (mirrored when `flip`) coordinates.
    pub fn first_column(&self) -> usize {
        if self.flip {
            self.full[0] - self.origin[0] - self.img.width
        } else {
            self.origin[0]
        }
    }

    /// The columns present, [first, end), in the view's coordinates.
    pub fn columns(&self) -> (usize, usize) {
        let first = self.first_column();
        (first, first + self.img.width)
    }

    /// The rows present, [first, end).
    pub fn rows(&self) -> (usize, usize) {
        (self.origin[1], self.origin[1] + self.img.height)
    }

    /// Row `y` of the full image, the present columns only (index 0 is `first_column()`);
    /// `scratch` holds it when it has to be transformed.
    pub fn row<'s>(&'s self, y: usize, scratch: &'s mut Vec<u8>) -> &'s [u8] {
        let w3 = self.img.width * 3;
        let r = y - self.origin[1];
        let src = &self.img.data[r * w3..(r + 1) * w3];
        if !self.flip && self.lut.is_none() {
            return src;
        }
        scratch.clear();
        scratch.resize(w3, 0);
        if self.flip {
            for (d, s) in scratch.chunks_exact_mut(3).zip(src.chunks_exact(3).rev()) {
                d.copy_from_slice(s);
            }
        } else {
            scratch.copy_from_slice(src);
        }
        if let Some(lut) = self.lut {
            for v in scratch.iter_mut() {
                *v = lut[*v as usize];
            }
        }
        scratch
    }
}

/// The input span `[first, end)` that the outputs `[start, start+count)` of a BILINEAR resize
/// from `in_size` to `out_size` read (all of `0..in_size` when the size does not change).
pub fn resize_input_span(in_size: usize, out_size: usize, start: usize, count: usize) -> (usize, usize) {
    if in_size == out_size || count == 0 || start + count > out_size {
        return (start.min(in_size), (start + count).min(in_size));
    }
    let taps = precompute_taps(in_size, out_size);
    let (last_min, last_len) = taps.bounds[start + count - 1];
    (taps.bounds[start].0, last_min + last_len)
}

fn check_region(what: &str, start: usize, count: usize, size: usize) -> Result<()> {
    if count == 0 || start.checked_add(count).is_none_or(|e| e > size) {
        bail!("pillow {what}: region [{start}, +{count}) outside 0..{size}");
    }
    Ok(())
}

/// The checks of a region entry point after its output size: `img`'s buffer holds its RGB pixels, and
/// the column and row regions lie inside the out_w × out_h output.
fn check_input_and_regions(
    what: &str, img: &Rgb8, out_w: usize, out_h: usize, xr: (usize, usize), yr: (usize, usize),
) -> Result<()> {
    if img.data.len() != img.width * img.height * 3 {
        bail!("pillow {what}: input buffer has {} bytes for {}x{}", img.data.len(), img.width, img.height);
    }
    check_region(what, xr.0, xr.1, out_w)?;
    check_region(what, yr.0, yr.1, out_h)
}

/// `Image.resize((out_w, out_h), BILINEAR)` of an RGB image (Pillow <= 12 arithmetic).
pub fn resize_bilinear(img: &Rgb8, out_w: usize, out_h: usize) -> Result<Rgb8> {
    if out_w == 0 || out_h == 0 || out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow resize: bad output size {out_w}x{out_h}");
    }
    resize_bilinear_region(RowView::plain(img), out_w, out_h, (0, out_w), (0, out_h))
}

/// The output pixels `[x0, x0+nx) × [y0, y0+ny)` (given as (start, count)) of
/// `Image.resize((out_w, out_h), BILINEAR)`. Every output pixel depends only on its own taps,
/// so a region is bit-identical to the same pixels of the whole resize, and only the input
/// rows and intermediate columns it needs are computed.
pub fn resize_bilinear_region(
    src: RowView, out_w: usize, out_h: usize, xr: (usize, usize), yr: (usize, usize),
) -> Result<Rgb8> {
    resize_region_with(src, out_w, out_h, xr, yr, resize_simd_available())
}

/// [`resize_bilinear_region`] compiled for the baseline CPU only (the AVX2 build, used where
/// the CPU has it, must give the same bytes; tests compare the two).
pub fn resize_bilinear_region_portable(
    src: RowView, out_w: usize, out_h: usize, xr: (usize, usize), yr: (usize, usize),
) -> Result<Rgb8> {
    resize_region_with(src, out_w, out_h, xr, yr, false)
}

fn resize_region_with(
    src: RowView, out_w: usize, out_h: usize, xr: (usize, usize), yr: (usize, usize), simd: bool,
) -> Result<Rgb8> {
    let img = src.img;
    let [in_w, in_h] = src.full;
    if out_w == 0 || out_h == 0 || out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow resize: bad output size {out_w}x{out_h}");
    }
    if in_w == 0 || in_h == 0 {
        bail!("pillow resize: empty input image {in_w}x{in_h}");
    }
    check_input_and_regions("resize", img, out_w, out_h, xr, yr)?;
    let (nx, ny) = (xr.1, yr.1);
    // Same size in both directions: Pillow returns a copy.
    let need_horizontal = out_w != in_w;
    let need_vertical = out_h != in_h;
    let vert = need_vertical.then(|| precompute_taps(in_h, out_h));
    let horiz = need_horizontal.then(|| precompute_taps(in_w, out_w));
    // Input rows the requested output rows read (tap bounds are monotone in the output index).
    let (row_first, row_end) = match &vert {
        Some(v) => {
            let (last_min, last_len) = v.bounds[yr.0 + ny - 1];
            (v.bounds[yr.0].0, last_min + last_len)
        }
        None => (yr.0, yr.0 + ny),
    };
    let rows = row_end - row_first;
    // The input columns the requested outputs read must be present (a region source).
    let (col_first, col_end) = match &horiz {
        Some(h) => {
            let (last_min, last_len) = h.bounds[xr.0 + nx - 1];
            (h.bounds[xr.0].0, last_min + last_len)
        }
        None => (xr.0, xr.0 + nx),
    };
    let (have_cols, have_rows) = (src.columns(), src.rows());
    if col_first < have_cols.0 || col_end > have_cols.1 || row_first < have_rows.0 || row_end > have_rows.1 {
        bail!(
            "pillow resize: needs input columns {col_first}..{col_end} and rows {row_first}..{row_end}, the source \
             holds {}..{} and {}..{}",
            have_cols.0,
            have_cols.1,
            have_rows.0,
            have_rows.1
        );
    }
    let col0 = have_cols.0;
    let plan = ResizePlan { horiz: horiz.as_ref(), vert: vert.as_ref(), col0, row_first, rows, xr, yr };
    Ok(resize_passes(src, &plan, simd))
}

/// What [`resize_passes`] computes: the taps of each pass (None: that size does not change),
/// the first present input column, the input rows read, and the output region.
struct ResizePlan<'t> {
    horiz: Option<&'t Taps>,
    vert: Option<&'t Taps>,
    col0: usize,
    row_first: usize,
    rows: usize,
    xr: (usize, usize),
    yr: (usize, usize),
}

/// Both passes of the resize, compiled for AVX2 where `simd` (the CPU has it) and for the
/// baseline otherwise: the same integer sums either way (integer adds and multiplies are
/// exact, so any vectorisation gives the same bytes).
fn resize_passes(src: RowView, plan: &ResizePlan, simd: bool) -> Rgb8 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only where the CPU has AVX2 (`resize_simd_available`).
        return unsafe { resize_passes_avx2(src, plan) };
    }
    let _ = simd;
    resize_passes_body(src, plan, false)
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resize_passes_avx2(src: RowView, plan: &ResizePlan) -> Rgb8 {
    resize_passes_body(src, plan, true)
}

/// The passes; `avx2` (only inside [`resize_passes_avx2`]) adds the gathering horizontal pass.
#[inline(always)]
fn resize_passes_body(src: RowView, plan: &ResizePlan, avx2: bool) -> Rgb8 {
    let &ResizePlan { horiz, vert, col0, row_first, rows, xr, yr } = plan;
    let (nx, ny) = (xr.1, yr.1);
    // For the AVX2 horizontal pass: each output's first byte in the row, and the weights
    // transposed to [tap][output] so that eight outputs' weights of one tap are contiguous.
    let mut first_byte = Vec::new();
    let mut weights_by_tap = Vec::new();
    if let (true, Some(h)) = (avx2, horiz) {
        first_byte.extend((xr.0..xr.0 + nx).map(|xx| ((h.bounds[xx].0 - col0) * 3) as i32));
        weights_by_tap.resize(h.ksize * nx, 0);
        for (i, xx) in (xr.0..xr.0 + nx).enumerate() {
            for t in 0..h.ksize {
                weights_by_tap[t * nx + i] = h.weights[xx * h.ksize + t];
            }
        }
    }
    // Intermediate: the needed input rows, resized horizontally, only the requested columns.
    // Every byte is written below, so no zeroing pass is needed beyond the allocation's.
    let mut mid = vec![0u8; rows * nx * 3];
    let mut scratch = Vec::new();
    let mut padded = Vec::new();
    for (r, dst) in mid.chunks_exact_mut(nx * 3).enumerate() {
        let line = src.row(row_first + r, &mut scratch);
        let Some(h) = horiz else {
            dst.copy_from_slice(&line[(xr.0 - col0) * 3..(xr.0 - col0 + nx) * 3]);
            continue;
        };
        // Fixed tap counts let the compiler unroll; taps past a pixel's own count have weight 0
        // (adding 0 changes no sum) and read the zero padding past the row end.
        padded.clear();
        padded.extend_from_slice(line);
        // (one more pixel than the taps need: the AVX2 pass reads 4-byte words)
        padded.resize(line.len() + (h.ksize + 1) * 3, 0);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            let (first, weights) = (&first_byte[..], &weights_by_tap[..]);
            // SAFETY: `avx2` is true only inside `resize_passes_avx2`, which needs AVX2.
            let done = unsafe {
                match h.ksize {
                    3 => horizontal_row_avx2::<3>(&padded, first, weights, dst),
                    5 => horizontal_row_avx2::<5>(&padded, first, weights, dst),
                    7 => horizontal_row_avx2::<7>(&padded, first, weights, dst),
                    _ => 0,
                }
            };
            if done == nx {
                continue;
            }
            if done > 0 {
                let dst = &mut dst[done * 3..];
                match h.ksize {
                    3 => horizontal_pass_fixed::<3>(&padded, col0, h, xr.0 + done, dst),
                    5 => horizontal_pass_fixed::<5>(&padded, col0, h, xr.0 + done, dst),
                    _ => horizontal_pass_fixed::<7>(&padded, col0, h, xr.0 + done, dst),
                }
                continue;
            }
        }
        let _ = (avx2, &first_byte, &weights_by_tap);
        match h.ksize {
            3 => horizontal_pass_fixed::<3>(&padded, col0, h, xr.0, dst),
            5 => horizontal_pass_fixed::<5>(&padded, col0, h, xr.0, dst),
            7 => horizontal_pass_fixed::<7>(&padded, col0, h, xr.0, dst),
            9 => horizontal_pass_fixed::<9>(&padded, col0, h, xr.0, dst),
            11 => horizontal_pass_fixed::<11>(&padded, col0, h, xr.0, dst),
            _ => horizontal_pass(line, col0, h, xr.0, dst),
        }
    }
    let Some(vert) = vert else {
        return Rgb8 { width: nx, height: ny, data: mid };
    };
    let mut out = vec![0u8; ny * nx * 3];
    let mut acc = vec![0i32; nx * 3];
    for (yy, dst) in out.chunks_exact_mut(nx * 3).enumerate() {
        let (ymin, taps) = vert.bounds[yr.0 + yy];
        let o = (yr.0 + yy) * vert.ksize;
        acc.fill(1i32 << (PRECISION_BITS - 1));
        // Row by row: the same integer sums as Pillow's per-pixel loop, in a vectorisable order.
        for (t, &wy) in vert.weights[o..o + taps].iter().enumerate() {
            let r = ymin + t - row_first;
            let line = &mid[r * nx * 3..(r + 1) * nx * 3];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += v as i32 * wy;
            }
        }
        for (d, &a) in dst.iter_mut().zip(&acc) {
            *d = clip8(a);
        }
    }
    Rgb8 { width: nx, height: ny, data: out }
}

/// [`horizontal_pass_fixed`] eight outputs at a time, one per 32-bit lane: each tap gathers the
/// 4-byte word at the pixel (3 channel bytes and one unused) and adds `byte · weight` to one
/// accumulator per channel; integer products and sums are exact, so the bytes are the same.
/// `first_byte[i]` is output i's first byte in `padded`, `weights` is [K][outputs]. Returns how
/// many outputs it wrote (whole groups of eight; 0 when a word would read past `padded`).
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_row_avx2<const K: usize>(
    padded: &[u8], first_byte: &[i32], weights: &[i32], dst: &mut [u8],
) -> usize {
    use std::arch::x86_64::*;
    let n = dst.len() / 3;
    if first_byte.len() != n || weights.len() != K * n {
        return 0;
    }
    // Every gathered word lies within `padded`: the largest start plus the last tap's word.
    let furthest = first_byte.iter().copied().max().unwrap_or(0) as usize + 3 * (K - 1) + 4;
    if furthest > padded.len() || padded.len() > i32::MAX as usize {
        return 0;
    }
    let base = padded.as_ptr() as *const i32;
    let byte = _mm256_set1_epi32(0xFF);
    let (zero, max8) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
    // Within each 128-bit lane: bytes 0-2 of each word, packed to 12 bytes.
    let pack = _mm256_setr_epi8(
        0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1,
    );
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n = first_byte.len().
        let start = unsafe { _mm256_loadu_si256(first_byte.as_ptr().add(i) as *const __m256i) };
        let half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
        let (mut r, mut g, mut b) = (half, half, half);
        for t in 0..K {
            let at = _mm256_add_epi32(start, _mm256_set1_epi32(3 * t as i32));
            // SAFETY: every offset is at most max(first_byte) + 3(K-1) and the 4 bytes from
            // there lie within `padded` (checked above).
            let word = unsafe { _mm256_i32gather_epi32::<1>(base, at) };
            // SAFETY: t·n + i + 8 <= K·n = weights.len().
            let w = unsafe { _mm256_loadu_si256(weights.as_ptr().add(t * n + i) as *const __m256i) };
            r = _mm256_add_epi32(r, _mm256_mullo_epi32(_mm256_and_si256(word, byte), w));
            g = _mm256_add_epi32(g, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32::<8>(word), byte), w));
            b = _mm256_add_epi32(b, _mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32::<16>(word), byte), w));
        }
        // clip8: an arithmetic shift then [0, 255] is the same as its three cases.
        let clip = |a: __m256i| _mm256_min_epi32(_mm256_max_epi32(_mm256_srai_epi32::<22>(a), zero), max8);
        let words = _mm256_or_si256(
            clip(r),
            _mm256_or_si256(_mm256_slli_epi32::<8>(clip(g)), _mm256_slli_epi32::<16>(clip(b))),
        );
        let mut bytes = [0u8; 32];
        // SAFETY: a 32-byte store into a 32-byte array.
        unsafe { _mm256_storeu_si256(bytes.as_mut_ptr() as *mut __m256i, _mm256_shuffle_epi8(words, pack)) };
        dst[i * 3..i * 3 + 12].copy_from_slice(&bytes[..12]);
        dst[i * 3 + 12..i * 3 + 24].copy_from_slice(&bytes[16..28]);
        i += 8;
    }
    i
}

/// Whether the resize passes can run compiled for AVX2 here.
fn resize_simd_available() -> bool {
    affine_simd_available()
}

/// [`horizontal_pass`] with all `K = ksize` taps per pixel on a row padded by K zero pixels.
#[inline(always)]
fn horizontal_pass_fixed<const K: usize>(padded: &[u8], col0: usize, h: &Taps, x0: usize, dst: &mut [u8]) {
    for (i, d) in dst.chunks_exact_mut(3).enumerate() {
        let xx = x0 + i;
        let xmin = h.bounds[xx].0 - col0;
        let w: &[i32; K] = h.weights[xx * K..xx * K + K].try_into().expect("K = ksize");
        let px = &padded[xmin * 3..xmin * 3 + 3 * K];
        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
        for t in 0..K {
            acc[0] += px[3 * t] as i32 * w[t];
            acc[1] += px[3 * t + 1] as i32 * w[t];
            acc[2] += px[3 * t + 2] as i32 * w[t];
        }
        d[0] = clip8(acc[0]);
        d[1] = clip8(acc[1]);
        d[2] = clip8(acc[2]);
    }
}

/// Pillow's horizontal 8-bit pass for output columns `x0..x0 + dst.len()/3` of one row whose
/// first pixel is input column `col0`.
#[inline(always)]
fn horizontal_pass(line: &[u8], col0: usize, h: &Taps, x0: usize, dst: &mut [u8]) {
    for (i, d) in dst.chunks_exact_mut(3).enumerate() {
        let xx = x0 + i;
        let (xmin, taps) = h.bounds[xx];
        let xmin = xmin - col0;
        let w = &h.weights[xx * h.ksize..xx * h.ksize + taps];
        let px = &line[xmin * 3..(xmin + taps) * 3];
        let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
        for (p, &wx) in px.chunks_exact(3).zip(w) {
            acc[0] += p[0] as i32 * wx;
            acc[1] += p[1] as i32 * wx;
            acc[2] += p[2] as i32 * wx;
        }
        d[0] = clip8(acc[0]);
        d[1] = clip8(acc[1]);
        d[2] = clip8(acc[2]);
    }
}

/// Python's `round(x, 15)`: the double nearest to x correctly rounded to 15 decimals.
fn py_round15(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // Rust's fixed-precision formatting is exact decimal rounding; parsing is correctly rounded.
    format!("{x:.15}").parse::<f64>().unwrap_or(x)
}

/// Python's float `%` (result takes the sign of the divisor).
fn py_mod(x: f64, y: f64) -> f64 {
    let m = x % y;
    if m != 0.0 {
        if (y < 0.0) != (m < 0.0) {
            m + y
        } else {
            m
        }
    } else {
        0.0f64.copysign(y)
    }
}

/// The affine matrix `Image.rotate(angle)` hands to `transform` (no expand, centre (w/2, h/2)).
pub fn rotate_matrix(angle_deg: f64, width: usize, height: usize) -> [f64; 6] {
    let angle = py_mod(angle_deg, 360.0);
    // math.radians multiplies by the double constant pi/180.
    let rad = -(angle * (std::f64::consts::PI / 180.0));
    let (c, s) = (py_round15(rad.cos()), py_round15(rad.sin()));
    let ms = py_round15(-rad.sin());
    let (cx, cy) = (width as f64 / 2.0, height as f64 / 2.0);
    // Pillow: (a·x + b·y + 0) at (−cx, −cy), then + the centre.
    let (tx, ty) = (-cx, -cy);
    let m2 = (c * tx + s * ty + 0.0) + cx;
    let m5 = (ms * tx + c * ty + 0.0) + cy;
    [c, s, m2, ms, c, m5]
}

/// `Image.transform(size, AFFINE, matrix, BILINEAR)` with black fill (Pillow's generic
/// transform + bilinear_filter32RGB: double arithmetic, truncation to u8).
pub fn affine_bilinear(img: &Rgb8, out_w: usize, out_h: usize, m: [f64; 6]) -> Result<Rgb8> {
    if out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow transform: bad output size {out_w}x{out_h}");
    }
    if out_w == 0 || out_h == 0 {
        return Ok(Rgb8 { width: out_w, height: out_h, data: Vec::new() });
    }
    affine_bilinear_region(img, out_w, out_h, m, (0, out_w), (0, out_h))
}

/// The output pixels `[x0, x0+nx) × [y0, y0+ny)` (given as (start, count)) of
/// [`affine_bilinear`]: each output pixel is sampled independently, so this is exactly the
/// same region of the whole transform.
pub fn affine_bilinear_region(
    img: &Rgb8, out_w: usize, out_h: usize, m: [f64; 6], xr: (usize, usize), yr: (usize, usize),
) -> Result<Rgb8> {
    affine_region_with(img, out_w, out_h, m, xr, yr, affine_simd_available())
}

fn affine_region_with(
    img: &Rgb8, out_w: usize, out_h: usize, m: [f64; 6], xr: (usize, usize), yr: (usize, usize), simd: bool,
) -> Result<Rgb8> {
    if out_w > MAX_SIDE || out_h > MAX_SIDE {
        bail!("pillow transform: bad output size {out_w}x{out_h}");
    }
    check_input_and_regions("transform", img, out_w, out_h, xr, yr)?;
    let (nx, ny) = (xr.1, yr.1);
    let mut out = vec![0u8; nx * ny * 3];
    if img.width == 0 || img.height == 0 {
        return Ok(Rgb8 { width: nx, height: ny, data: out });
    }
    for (j, dst_row) in out.chunks_exact_mut(nx * 3).enumerate() {
        let yin0 = (yr.0 + j) as f64 + 0.5;
        affine_row(img, m, yin0, xr.0, dst_row, simd);
    }
    Ok(Rgb8 { width: nx, height: ny, data: out })
}

/// [`affine_bilinear_region`] with the portable scalar sampler only (the AVX2 one, used where the
/// CPU has it, must give the same bytes; tests compare the two).
pub fn affine_bilinear_region_portable(
    img: &Rgb8, out_w: usize, out_h: usize, m: [f64; 6], xr: (usize, usize), yr: (usize, usize),
) -> Result<Rgb8> {
    affine_region_with(img, out_w, out_h, m, xr, yr, false)
}

/// Whether the AVX2 bilinear sampler can run here (the scalar one gives the same bytes).
fn affine_simd_available() -> bool {
    crate::host_isa::cpu().avx2
}

/// One output row (`yin0` = row + 0.5) of [`affine_bilinear_region`] from output column `x0`.
fn affine_row(img: &Rgb8, m: [f64; 6], yin0: f64, x0: usize, dst_row: &mut [u8], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only where the CPU has AVX2 (`affine_simd_available`).
        unsafe { affine_row_avx2(img, m, yin0, x0, dst_row) };
        return;
    }
    let _ = simd;
    let (w, h) = (img.width as i64, img.height as i64);
    let (wf, hf) = (img.width as f64, img.height as f64);
    let stride = img.width * 3;
    let data = &img.data[..];
    // Per-row parts of Pillow's a0·x + a1·y + a2 (same operation order per pixel).
    let (ry_x, ry_y) = (m[1] * yin0, m[4] * yin0);
    for (i, d) in dst_row.chunks_exact_mut(3).enumerate() {
        let xin0 = (x0 + i) as f64 + 0.5;
        let xin = m[0] * xin0 + ry_x + m[2];
        let yin = m[3] * xin0 + ry_y + m[5];
        if !(xin >= 0.0 && xin < wf && yin >= 0.0 && yin < hf) {
            continue; // filled black
        }
        let xs = xin - 0.5;
        let ys = yin - 0.5;
        // floor without a libm call: xs, ys >= -0.5 here, so floor is truncation or -1.
        let xi = if xs < 0.0 { -1 } else { xs as i64 };
        let yi = if ys < 0.0 { -1 } else { ys as i64 };
        let dx = xs - xi as f64;
        let dy = ys - yi as f64;
        let c0 = xi.clamp(0, w - 1) as usize * 3;
        let c1 = (xi + 1).clamp(0, w - 1) as usize * 3;
        let r0 = yi.clamp(0, h - 1) as usize * stride;
        let second_row = yi + 1 >= 0 && yi + 1 < h;
        let r1 = if second_row { (yi + 1) as usize * stride } else { r0 };
        let p00: &[u8; 3] = data[r0 + c0..r0 + c0 + 3].try_into().expect("pixel");
        let p01: &[u8; 3] = data[r0 + c1..r0 + c1 + 3].try_into().expect("pixel");
        let p10: &[u8; 3] = data[r1 + c0..r1 + c0 + 3].try_into().expect("pixel");
        let p11: &[u8; 3] = data[r1 + c1..r1 + c1 + 3].try_into().expect("pixel");
        for b in 0..3 {
            // v = a + (b - a)·d with the integer difference first, as Pillow's macro.
            let a0 = p00[b] as i32;
            let v1 = a0 as f64 + (p01[b] as i32 - a0) as f64 * dx;
            let a1 = p10[b] as i32;
            // (without a second row Pillow uses v1; r1 = r0 then gives the same value)
            let v2 = if second_row { a1 as f64 + (p11[b] as i32 - a1) as f64 * dx } else { v1 };
            d[b] = (v1 + (v2 - v1) * dy) as u8;
        }
    }
}

/// [`affine_row`] four output pixels at a time, one pixel per lane of AVX2 double vectors:
/// the same IEEE operations in the same order per pixel and channel (no fused multiply-add),
/// so the same bytes. The four source pixels of each output pixel are gathered as 32-bit words
/// (3 bytes and one unused); a group that would read past the buffer's end runs the scalar code.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn affine_row_avx2(img: &Rgb8, m: [f64; 6], yin0: f64, x0: usize, dst_row: &mut [u8]) {
    use std::arch::x86_64::*;
    let len = img.data.len();
    // Word offsets must fit i32 gathers; larger images (far beyond a crop window) stay scalar.
    if len < 4 || len > i32::MAX as usize - 8 {
        affine_row(img, m, yin0, x0, dst_row, false);
        return;
    }
    let (wf, hf) = (img.width as f64, img.height as f64);
    let stride = _mm_set1_epi32((img.width * 3) as i32);
    let (wmax, hmax) = (_mm_set1_epi32(img.width as i32 - 1), _mm_set1_epi32(img.height as i32 - 1));
    let (zero_i, one_i, three_i) = (_mm_setzero_si128(), _mm_set1_epi32(1), _mm_set1_epi32(3));
    let (ry_x, ry_y) = (_mm256_set1_pd(m[1] * yin0), _mm256_set1_pd(m[4] * yin0));
    let (m0, m2, m3, m5) = (_mm256_set1_pd(m[0]), _mm256_set1_pd(m[2]), _mm256_set1_pd(m[3]), _mm256_set1_pd(m[5]));
    let (zero, half, minus_one) = (_mm256_setzero_pd(), _mm256_set1_pd(0.5), _mm256_set1_pd(-1.0));
    let (wv, hv) = (_mm256_set1_pd(wf), _mm256_set1_pd(hf));
    let byte = _mm_set1_epi32(0xFF);
    let base = img.data.as_ptr() as *const i32;
    let pixels = dst_row.len() / 3;
    let mut i = 0;
    while i + 4 <= pixels {
        let xin0 = _mm256_add_pd(_mm256_set1_pd((x0 + i) as f64 + 0.5), _mm256_set_pd(3.0, 2.0, 1.0, 0.0));
        let xin = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(m0, xin0), ry_x), m2);
        let yin = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(m3, xin0), ry_y), m5);
        let inside = _mm256_and_pd(
            _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(xin, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(xin, wv)),
            _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(yin, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(yin, hv)),
        );
        let inside_bits = _mm256_movemask_pd(inside);
        if inside_bits == 0 {
            i += 4; // all black (the row is zero-filled)
            continue;
        }
        // Outside lanes sample (0.5, 0.5) harmlessly; their result is masked to black below.
        let xs = _mm256_sub_pd(_mm256_blendv_pd(half, xin, inside), half);
        let ys = _mm256_sub_pd(_mm256_blendv_pd(half, yin, inside), half);
        // floor: truncation for xs >= 0, -1 for -0.5 <= xs < 0 (as the scalar code).
        let xf = _mm256_blendv_pd(
            _mm256_round_pd::<_MM_FROUND_TO_ZERO>(xs),
            minus_one,
            _mm256_cmp_pd::<_CMP_LT_OQ>(xs, zero),
        );
        let yf = _mm256_blendv_pd(
            _mm256_round_pd::<_MM_FROUND_TO_ZERO>(ys),
            minus_one,
            _mm256_cmp_pd::<_CMP_LT_OQ>(ys, zero),
        );
        let (dx, dy) = (_mm256_sub_pd(xs, xf), _mm256_sub_pd(ys, yf));
        let (xi, yi) = (_mm256_cvttpd_epi32(xf), _mm256_cvttpd_epi32(yf));
        let clamp = |v: __m128i, hi: __m128i| _mm_min_epi32(_mm_max_epi32(v, zero_i), hi);
        let c0 = _mm_mullo_epi32(clamp(xi, wmax), three_i);
        let c1 = _mm_mullo_epi32(clamp(_mm_add_epi32(xi, one_i), wmax), three_i);
        let r0 = _mm_mullo_epi32(clamp(yi, hmax), stride);
        let y1 = _mm_add_epi32(yi, one_i);
        // 0 <= yi + 1 <= h - 1, lane by lane (all ones where true).
        let second = _mm_andnot_si128(
            _mm_cmpgt_epi32(zero_i, y1),
            _mm_andnot_si128(_mm_cmpgt_epi32(y1, hmax), _mm_set1_epi32(-1)),
        );
        let r1 = _mm_blendv_epi8(r0, _mm_mullo_epi32(clamp(y1, hmax), stride), second);
        let (o00, o01, o10, o11) =
            (_mm_add_epi32(r0, c0), _mm_add_epi32(r0, c1), _mm_add_epi32(r1, c0), _mm_add_epi32(r1, c1));
        // The largest offsets are o01 / o11 (c1 >= c0); each word read needs 4 bytes.
        let mut far = [0i32; 4];
        // SAFETY: a 16-byte store into a 16-byte array.
        unsafe { _mm_storeu_si128(far.as_mut_ptr() as *mut __m128i, _mm_max_epi32(o01, o11)) };
        if far.iter().any(|&o| o as usize + 4 > len) {
            let (end, from) = (dst_row.len(), i * 3);
            affine_row(img, m, yin0, x0 + i, &mut dst_row[from..end.min(from + 12)], false);
            i += 4;
            continue;
        }
        // SAFETY: every offset is in 0..=len-4 (clamped indices, checked above), so each 4-byte
        // gather stays inside `img.data`.
        let (p00, p01, p10, p11) = unsafe {
            (
                _mm_i32gather_epi32::<1>(base, o00),
                _mm_i32gather_epi32::<1>(base, o01),
                _mm_i32gather_epi32::<1>(base, o10),
                _mm_i32gather_epi32::<1>(base, o11),
            )
        };
        let second_pd = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(second));
        let mut packed = _mm_setzero_si128();
        for shift in [0, 8, 16] {
            let count = _mm_cvtsi32_si128(shift);
            let chan = |p: __m128i| _mm_and_si128(_mm_srl_epi32(p, count), byte);
            let (a0, b0, a1, b1) = (chan(p00), chan(p01), chan(p10), chan(p11));
            // v = a + (b - a)·d with the integer difference first, as Pillow's macro.
            let v1 =
                _mm256_add_pd(_mm256_cvtepi32_pd(a0), _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_sub_epi32(b0, a0)), dx));
            let v2 =
                _mm256_add_pd(_mm256_cvtepi32_pd(a1), _mm256_mul_pd(_mm256_cvtepi32_pd(_mm_sub_epi32(b1, a1)), dx));
            let v2 = _mm256_blendv_pd(v1, v2, second_pd);
            let v = _mm256_add_pd(v1, _mm256_mul_pd(_mm256_sub_pd(v2, v1), dy));
            // Truncation toward zero; the values are in 0..=255.
            packed = _mm_or_si128(packed, _mm_sll_epi32(_mm256_cvttpd_epi32(v), count));
        }
        let inside_i = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(
            _mm256_castpd_si256(inside),
            _mm256_set_epi32(7, 5, 3, 1, 6, 4, 2, 0),
        ));
        let mut words = [0u32; 4];
        // SAFETY: a 16-byte store into a 16-byte array.
        unsafe { _mm_storeu_si128(words.as_mut_ptr() as *mut __m128i, _mm_and_si128(packed, inside_i)) };
        for (k, word) in words.iter().enumerate() {
            let d = (i + k) * 3;
            dst_row[d..d + 3].copy_from_slice(&word.to_le_bytes()[..3]);
        }
        i += 4;
    }
    if i < pixels {
        affine_row(img, m, yin0, x0 + i, &mut dst_row[i * 3..], false);
    }
}

/// `Image.rotate(angle, BILINEAR)`: counter-clockwise about (w/2, h/2), same size, black fill.
pub fn rotate_bilinear(img: &Rgb8, angle_deg: f64) -> Result<Rgb8> {
    if img.width == 0 || img.height == 0 {
        return Ok(img.clone());
    }
    rotate_bilinear_region(img, angle_deg, (0, img.width), (0, img.height))
}

/// The region `[x0, x0+nx) × [y0, y0+ny)` (given as (start, count)) of [`rotate_bilinear`].
pub fn rotate_bilinear_region(img: &Rgb8, angle_deg: f64, xr: (usize, usize), yr: (usize, usize)) -> Result<Rgb8> {
    if !angle_deg.is_finite() {
        bail!("pillow rotate: angle {angle_deg} is not finite");
    }
    if py_mod(angle_deg, 360.0) == 0.0 {
        // Pillow returns a copy.
        check_region("rotate", xr.0, xr.1, img.width)?;
        check_region("rotate", yr.0, yr.1, img.height)?;
        let mut data = Vec::with_capacity(xr.1 * yr.1 * 3);
        for y in yr.0..yr.0 + yr.1 {
            let row = y * img.width * 3;
            data.extend_from_slice(&img.data[row + xr.0 * 3..row + (xr.0 + xr.1) * 3]);
        }
        return Ok(Rgb8 { width: xr.1, height: yr.1, data });
    }
    // Pillow's 90/180/270 fast paths (transpose) sample exactly the same pixel centres as the
    // affine path with the rounded matrix, so the affine path covers them bit for bit.
    let m = rotate_matrix(angle_deg, img.width, img.height);
    affine_bilinear_region(img, img.width, img.height, m, xr, yr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Rgb8 {
        let mut d = Vec::new();
        for y in 0..h {
            for x in 0..w {
                d.extend_from_slice(&[(x * 7 + y) as u8, (y * 5) as u8, ((x ^ y) * 3) as u8]);
            }
        }
        Rgb8::new(w, h, d).unwrap()
    }

    #[test]
    fn resize_same_size_is_copy_and_bad_sizes_error() {
        let im = ramp(9, 7);
        assert_eq!(resize_bilinear(&im, 9, 7).unwrap(), im);
        assert!(resize_bilinear(&im, 0, 7).is_err());
        assert!(resize_bilinear(&im, 9, 1 << 20).is_err());
        assert!(Rgb8::new(3, 3, vec![0; 5]).is_err());
    }

    #[test]
    fn resize_constant_image_stays_constant() {
        let im = Rgb8::new(13, 11, vec![77; 13 * 11 * 3]).unwrap();
        for (w, h) in [(5, 4), (30, 2), (13, 40), (1, 1)] {
            let r = resize_bilinear(&im, w, h).unwrap();
            assert!(r.data.iter().all(|&v| v == 77), "{w}x{h}");
        }
    }

    #[test]
    fn rotate_right_angles_match_transposes() {
        let im = ramp(6, 6);
        let r90 = rotate_bilinear(&im, 90.0).unwrap();
        let r180 = rotate_bilinear(&im, 180.0).unwrap();
        for y in 0..6 {
            for x in 0..6 {
                for b in 0..3 {
                    // counter-clockwise: out[y][x] = in[x][w-1-y]
                    assert_eq!(r90.data[(y * 6 + x) * 3 + b], im.data[(x * 6 + 5 - y) * 3 + b]);
                    assert_eq!(r180.data[(y * 6 + x) * 3 + b], im.data[((5 - y) * 6 + 5 - x) * 3 + b]);
                }
            }
        }
        assert_eq!(rotate_bilinear(&im, 360.0).unwrap(), im);
        assert!(rotate_bilinear(&im, f64::NAN).is_err());
    }

    #[test]
    fn python_rounding_helpers() {
        assert_eq!(py_mod(-25.0, 360.0), 335.0);
        assert_eq!(py_mod(725.0, 360.0), 5.0);
        assert_eq!(py_round15(6.123233995736766e-17), 0.0);
        assert_eq!(py_round15(-1.0), -1.0);
    }
}
