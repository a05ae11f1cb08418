//! The layer loops MTCNN's three networks share on the CPU without the tensor ops: a K×K conv straight
//! from the taps (no im2col) with bias and PReLU fused, a ceil-mode max-pool, and the dense layers over a batch of crops. Maps are
//! channels-last (HWC). The small maps and channel counts of MTCNN (3…128 channels, 3…46 pixels wide)
//! are shapes where im2col + GEMM spends more time packing than multiplying; here a few output pixels ×
//! a block of output channels stay in registers while the kernel's taps stream past. Callers compile
//! the loops through the [`Kernels`] generic: AVX2+FMA intrinsics ([`Avx2`], picked at run time, see
//! [`has_avx2_fma`]; its convs take their AVX-512 form where [`has_avx512`] holds, the same bits) or
//! portable loops ([`Plain`], the fallback, also the tests' second opinion).

use crate::float::Float;
use crate::ops::max_pool::ceil_pool_extent;

/// The conv and pool loops of one build: [`Plain`] (portable loops, any CPU) or [`Avx2`] (AVX2+FMA
/// intrinsics, usable only where [`has_avx2_fma`] holds; its methods check that).
pub(crate) trait Kernels {
    /// See [`conv_prelu`]; PIX is the portable loop's pixel block (the AVX2 loop picks its own).
    fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize, const PIX: usize>(
        x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
    ) -> (usize, usize);
    /// See [`max_pool`].
    fn max_pool<const K: usize, const S: usize, const C: usize>(
        x: &[f32], h: usize, w: usize, y: &mut [f32],
    ) -> Option<(usize, usize)>;
}
pub(crate) struct Plain;
pub(crate) struct Avx2;

impl Kernels for Plain {
    fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize, const PIX: usize>(
        x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
    ) -> (usize, usize) {
        conv_prelu::<K, CIN, COUT, PIX>(x, h, w, layer, y)
    }
    fn max_pool<const K: usize, const S: usize, const C: usize>(
        x: &[f32], h: usize, w: usize, y: &mut [f32],
    ) -> Option<(usize, usize)> {
        max_pool::<K, S, C>(x, h, w, y)
    }
}

impl Kernels for Avx2 {
    fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize, const PIX: usize>(
        x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
    ) -> (usize, usize) {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(has_avx2_fma(), "the AVX2 loops need AVX2 and FMA");
            if has_avx512() {
                // SAFETY: the CPU supports AVX-512F (checked); the function checks the extents.
                return unsafe { avx512::conv_prelu::<K, CIN, COUT>(x, h, w, layer, y) };
            }
            // SAFETY: the CPU supports AVX2 and FMA (asserted above); the function checks the extents.
            unsafe { avx2::conv_prelu::<K, CIN, COUT>(x, h, w, layer, y) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, h, w, layer, y);
            unreachable!("the AVX2 loops exist on x86_64 only")
        }
    }
    fn max_pool<const K: usize, const S: usize, const C: usize>(
        x: &[f32], h: usize, w: usize, y: &mut [f32],
    ) -> Option<(usize, usize)> {
        #[cfg(target_arch = "x86_64")]
        {
            assert!(has_avx2_fma(), "the AVX2 loops need AVX2 and FMA");
            // SAFETY: the CPU supports AVX2 (asserted above); the function checks the extents.
            unsafe { avx2::max_pool::<K, S, C>(x, h, w, y) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, h, w, y);
            unreachable!("the AVX2 loops exist on x86_64 only")
        }
    }
}

/// Whether the AVX2 build's convs take their AVX-512 form: where the tensor ops' direct convs run their
/// AVX-512 build (`crate::host_isa::simd()`: the AVX-512 level present, `HRK_NO_AVX512` not set).
pub(crate) fn has_avx512() -> bool {
    crate::host_isa::simd() == Some(crate::host_isa::Isa::Avx512)
}

/// The output extent (ho, wo) of `layer` over `x` [h][w][CIN] after checking every operand's size
/// against it; the checks every build's [`conv_prelu`] relies on.
#[cfg(target_arch = "x86_64")]
fn checked_extent<const K: usize, const CIN: usize, const COUT: usize>(
    x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &[f32],
) -> (usize, usize) {
    assert!(layer.cin == CIN && layer.cout == COUT);
    assert!(h >= K && w >= K && x.len() >= h * w * CIN);
    let (ho, wo) = (h + 1 - K, w + 1 - K);
    assert!(y.len() >= ho * wo * COUT);
    assert!(layer.w.len() == COUT.div_ceil(CB) * K * K * CIN * CB && layer.bias.len() == COUT.div_ceil(CB));
    (ho, wo)
}

/// Walks the n flattened output pixels in groups of `pix`: `f(start, true)` for pixels
/// start..start+pix (the last group shifted back over computed pixels, which are rewritten with the
/// same values), or `f(q, false)` for each single pixel when there are fewer than `pix`. Inlined into
/// each build.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn for_pixel_groups(n: usize, pix: usize, mut f: impl FnMut(usize, bool)) {
    if n < pix {
        (0..n).for_each(|q| f(q, false));
        return;
    }
    let mut q = 0;
    while q < n {
        let start = q.min(n - pix);
        f(start, true);
        q = start + pix;
    }
}

/// The input pointers of P consecutive flattened output pixels from `start`: pixel (oy, ox) reads
/// input rows oy..oy+K and columns ox..ox+K of `x` [h][w][CIN], all inside it since oy < h−K+1 and
/// ox < w−K+1 (wrapping arithmetic here; the builds read through them).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn pixel_inputs<const CIN: usize, const P: usize>(x: &[f32], w: usize, wo: usize, start: usize) -> [*const f32; P] {
    std::array::from_fn(|p| {
        let q = start + p;
        let (oy, ox) = (q / wo, q % wo);
        x.as_ptr().wrapping_add((oy * w + ox) * CIN)
    })
}

/// The shared frame of one SIMD build of [`conv_prelu`]: `conv_prelu`, compiled with `$features`, checks
/// the extents and walks the output pixels in groups of `$pix` (one at a time on planes with fewer);
/// each group runs the build's own `channel_block::<K, CIN, COUT, P>` on every block of CB channels. A
/// macro, not a generic function: the target features must sit on the function the blocks inline into.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_conv_entry {
    ($features:literal, $pix:expr) => {
        /// [`super::conv_prelu`] with this build's intrinsics: PIX pixels of the flattened output (across
        /// row ends: each pixel has its own input pointer) × one block of CB channels at a time.
        ///
        /// # Safety
        /// The CPU must support the target features of this build.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize>(
            x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
        ) -> (usize, usize) {
            let (ho, wo) = super::checked_extent::<K, CIN, COUT>(x, h, w, layer, y);
            // SAFETY: the target features as above; the extents are checked and every group (or single
            // pixel) lies inside the ho·wo output pixels.
            super::for_pixel_groups(ho * wo, $pix, |start, whole| unsafe {
                if whole {
                    pixel_group::<K, CIN, COUT, { $pix }>(x, w, wo, start, layer, y)
                } else {
                    pixel_group::<K, CIN, COUT, 1>(x, w, wo, start, layer, y)
                }
            });
            (ho, wo)
        }

        /// Output pixels start..start+P (flattened [ho][wo]) of every channel block.
        ///
        /// # Safety
        /// The build's target features; `x` holds [h][w][CIN] with h ≥ (start+P−1)/wo + K, `y` holds
        /// (start+P)·COUT values and `layer` has COUT/CB blocks of K·K·CIN·CB weights (checked by the caller).
        #[inline(always)]
        unsafe fn pixel_group<const K: usize, const CIN: usize, const COUT: usize, const P: usize>(
            x: &[f32], w: usize, wo: usize, start: usize, layer: &ConvLayer<K>, y: &mut [f32],
        ) {
            let px = super::pixel_inputs::<CIN, P>(x, w, wo, start);
            for blk in 0..COUT.div_ceil(CB) {
                // SAFETY: the caller's guarantees, for block blk of the layer's COUT/CB.
                unsafe { channel_block::<K, CIN, COUT, P>(&px, w * CIN, layer, blk, y, start) }
            }
        }
    };
}

/// Whether this CPU runs the AVX2+FMA loops.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    crate::host_isa::Isa::Avx2.supported()
}

/// Output channels per block of a [`ConvLayer`]: two AVX2 vectors.
pub(crate) const CB: usize = 16;

/// A K×K conv (stride 1, no padding) with bias and PReLU, its weights re-laid once for [`conv_prelu`]:
/// per block of CB output channels, [ky][kx][cin][CB], the last block zero-padded, so the inner loop
/// always runs whole vectors.
pub(crate) struct ConvLayer<const K: usize> {
    w: Vec<f32>,
    bias: Vec<[f32; CB]>,
    slope: Vec<[f32; CB]>,
    cin: usize,
    cout: usize,
}

impl<const K: usize> ConvLayer<K> {
    /// From PyTorch's weight [cout][cin][K][K], bias [cout] and PReLU slopes [cout] (shapes checked at
    /// load).
    pub fn new(weight: &[f32], bias: &[f32], slope: &[f32], cin: usize, cout: usize) -> Self {
        assert_eq!(weight.len(), cout * cin * K * K);
        assert!(bias.len() == cout && slope.len() == cout);
        let blocks = cout.div_ceil(CB);
        let mut w = vec![0f32; blocks * K * K * cin * CB];
        let mut b = vec![[0f32; CB]; blocks];
        let mut a = vec![[0f32; CB]; blocks];
        for o in 0..cout {
            let (blk, lane) = (o / CB, o % CB);
            b[blk][lane] = bias[o];
            a[blk][lane] = slope[o];
            for i in 0..cin {
                for k in 0..K * K {
                    w[((blk * K * K + k) * cin + i) * CB + lane] = weight[(o * cin + i) * K * K + k];
                }
            }
        }
        ConvLayer { w, bias: b, slope: a, cin, cout }
    }
}

/// The conv of `layer` over `x` [h][w][CIN] into `y` [h−K+1][w−K+1][COUT]; returns the output extent.
/// Sums start from the bias and run over ky, kx, cin in that order. PIX output pixels of a row are
/// computed together so each weight load serves PIX multiply-adds. A row whose width is not a
/// multiple of PIX ends with a group shifted left over already computed pixels, which are written
/// again with the same values, rather than with a slow one-pixel loop.
pub(crate) fn conv_prelu<const K: usize, const CIN: usize, const COUT: usize, const PIX: usize>(
    x: &[f32], h: usize, w: usize, layer: &ConvLayer<K>, y: &mut [f32],
) -> (usize, usize) {
    assert!(layer.cin == CIN && layer.cout == COUT);
    assert!(h >= K && w >= K && x.len() >= h * w * CIN);
    let (ho, wo) = (h + 1 - K, w + 1 - K);
    let cout = COUT;
    assert!(y.len() >= ho * wo * cout);
    for (blk, wblock) in layer.w.chunks_exact(K * K * CIN * CB).enumerate() {
        let wt: &[[f32; CB]] = as_rows(wblock);
        let (bias, slope) = (&layer.bias[blk], &layer.slope[blk]);
        let c0 = blk * CB;
        let n = CB.min(cout - c0);
        for oy in 0..ho {
            let mut ox = 0;
            while ox + PIX <= wo || (ox < wo && wo >= PIX) {
                let start = ox.min(wo - PIX);
                let mut acc = [*bias; PIX];
                accumulate::<K, CIN, PIX>(x, w, oy, start, wt, &mut acc);
                for (p, a) in acc.iter().enumerate() {
                    store_prelu::<COUT>(a, slope, &mut y[(oy * wo + start + p) * cout + c0..][..n]);
                }
                ox = start + PIX;
            }
            for ox in ox..wo {
                let mut acc = [*bias; 1];
                accumulate::<K, CIN, 1>(x, w, oy, ox, wt, &mut acc);
                store_prelu::<COUT>(&acc[0], slope, &mut y[(oy * wo + ox) * cout + c0..][..n]);
            }
        }
    }
    (ho, wo)
}

#[inline(always)]
fn accumulate<const K: usize, const CIN: usize, const PIX: usize>(
    x: &[f32], w: usize, oy: usize, ox: usize, wt: &[[f32; CB]], acc: &mut [[f32; CB]; PIX],
) {
    for ky in 0..K {
        let row = &x[((oy + ky) * w + ox) * CIN..((oy + ky) * w + ox + PIX + K - 1) * CIN];
        for kx in 0..K {
            for ci in 0..CIN {
                let wrow = &wt[(ky * K + kx) * CIN + ci];
                for (p, a) in acc.iter_mut().enumerate() {
                    let v = row[(p + kx) * CIN + ci];
                    for c in 0..CB {
                        a[c] += v * wrow[c];
                    }
                }
            }
        }
    }
}

/// PReLU over the whole block, then the block's real channels into `dst` (CB, or the COUT % CB of a
/// last, partial block).
#[inline(always)]
fn store_prelu<const COUT: usize>(acc: &[f32; CB], slope: &[f32; CB], dst: &mut [f32]) {
    let mut out = [0f32; CB];
    for c in 0..CB {
        let v = acc[c];
        out[c] = if v >= 0.0 { v } else { v * slope[c] };
    }
    if dst.len() == CB {
        dst.copy_from_slice(&out);
    } else {
        let rem = COUT % CB;
        dst[..rem].copy_from_slice(&out[..rem]);
    }
}

/// Max-pool with a K×K window and stride S, PyTorch's ceil mode without padding (windows clipped at
/// the edge): `x` [h][w][C] → `y` [ho][wo][C]; returns (ho, wo), or None (nothing written) when the map
/// is smaller than the window. C is a constant so the channel loop is whole vectors.
pub(crate) fn max_pool<const K: usize, const S: usize, const C: usize>(
    x: &[f32], h: usize, w: usize, y: &mut [f32],
) -> Option<(usize, usize)> {
    let (ho, wo) = (ceil_pool_extent(h, K, S)?, ceil_pool_extent(w, K, S)?);
    let (x, y): (&[[f32; C]], &mut [[f32; C]]) = (x.as_chunks().0, y.as_chunks_mut().0);
    debug_assert!(x.len() >= h * w && y.len() >= ho * wo);
    for py in 0..ho {
        let rows = S * py..(S * py + K).min(h);
        for px in 0..wo {
            let cols = S * px..(S * px + K).min(w);
            let mut m = x[rows.start * w + cols.start];
            for yy in rows.clone() {
                for xx in cols.clone() {
                    let v = &x[yy * w + xx];
                    // `>` rather than f32::max: it maps onto vector max instructions (no NaNs here).
                    for c in 0..C {
                        m[c] = if v[c] > m[c] { v[c] } else { m[c] };
                    }
                }
            }
            y[py * wo + px] = m;
        }
    }
    Some((ho, wo))
}

/// Planar [3][h][w] → channels-last [h][w][3].
#[inline(always)]
pub(crate) fn to_hwc(chw: &[f32], plane: usize, hwc: &mut [f32]) {
    for (p, px) in hwc[..3 * plane].chunks_exact_mut(3).enumerate() {
        px[0] = chw[p];
        px[1] = chw[plane + p];
        px[2] = chw[2 * plane + p];
    }
}

/// A dense layer followed by PReLU over a batch of feature rows: `weight` [out][inputs] (PyTorch's
/// layout, the inputs in the order the rows hold them), bias and slopes [out].
pub(crate) struct DensePrelu {
    weight: Vec<f32>,
    bias: Vec<f32>,
    slope: Vec<f32>,
    inputs: usize,
}

impl DensePrelu {
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, slope: Vec<f32>) -> Self {
        let inputs = if bias.is_empty() { 0 } else { weight.len() / bias.len() };
        DensePrelu { weight, bias, slope, inputs }
    }
    pub fn outputs(&self) -> usize {
        self.bias.len()
    }
    /// `x` [n][inputs] → [n][out], one GEMM for the whole batch (the gemm crate spreads it over the
    /// rayon threads).
    pub fn forward(&self, x: &[f32], n: usize) -> Vec<f32> {
        let out = self.outputs();
        debug_assert_eq!(x.len(), n * self.inputs);
        let mut y: Vec<f32> = Vec::with_capacity(n * out);
        for _ in 0..n {
            y.extend_from_slice(&self.bias);
        }
        // y[n][out] += x[n][inputs] · weightᵀ: the weight read as [inputs][out] through its strides.
        f32::gemm(
            n,
            out,
            self.inputs,
            &mut y,
            out as isize,
            1,
            true,
            x,
            self.inputs as isize,
            1,
            &self.weight,
            1,
            self.inputs as isize,
            rayon::current_num_threads(),
        );
        for row in y.chunks_exact_mut(out.max(1)) {
            for (v, &a) in row.iter_mut().zip(&self.slope) {
                if *v < 0.0 {
                    *v *= a;
                }
            }
        }
        y
    }
}

/// The output heads on each row of a batch: dense layers without activation, `rows` stacked as
/// [heads][inputs] with their biases; writes [n][heads].
pub(crate) fn heads(x: &[f32], inputs: usize, rows: &[f32], bias: &[f32]) -> Vec<f32> {
    let nh = bias.len();
    let mut out = Vec::with_capacity(x.len() / inputs.max(1) * nh);
    for feat in x.chunks_exact(inputs.max(1)) {
        for (r, row) in rows.chunks_exact(inputs.max(1)).enumerate() {
            let mut s = 0f32;
            for (a, b) in row.iter().zip(feat) {
                s += a * b;
            }
            out.push(bias[r] + s);
        }
    }
    out
}

/// Softmax of two logits (face / not face), as PyTorch's channel softmax: exp(x − max) / Σ.
#[inline]
pub(crate) fn softmax2(a: f32, b: f32) -> [f32; 2] {
    let m = a.max(b);
    let (e0, e1) = ((a - m).exp(), (b - m).exp());
    let sum = e0 + e1;
    [e0 / sum, e1 / sum]
}

/// A flat slice as rows of N.
#[inline(always)]
pub(crate) fn as_rows<const N: usize>(v: &[f32]) -> &[[f32; N]] {
    let (rows, rest) = v.as_chunks::<N>();
    debug_assert!(rest.is_empty());
    rows
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-512 conv equals the AVX2 one bit for bit (same FMAs in the same order), on MTCNN's
    /// layer shapes and on planes narrower than one pixel group.
    #[test]
    fn avx512_conv_equals_avx2_bits() {
        if !(has_avx2_fma() && has_avx512()) {
            eprintln!("skipped: this CPU lacks AVX2+FMA or AVX-512F (or HRK_NO_AVX512 is set)");
            return;
        }
        let mut state = 7u32;
        let mut values = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
                })
                .collect()
        };
        fn check<const K: usize, const CIN: usize, const COUT: usize>(
            values: &mut dyn FnMut(usize) -> Vec<f32>, h: usize, w: usize,
        ) {
            let layer = ConvLayer::<K>::new(&values(COUT * CIN * K * K), &values(COUT), &values(COUT), CIN, COUT);
            let x = values(h * w * CIN);
            let n = (h + 1 - K) * (w + 1 - K) * COUT;
            let (mut a, mut b) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            // SAFETY: the CPU has AVX2, FMA and AVX-512F (checked by the caller).
            unsafe {
                avx2::conv_prelu::<K, CIN, COUT>(&x, h, w, &layer, &mut a);
                avx512::conv_prelu::<K, CIN, COUT>(&x, h, w, &layer, &mut b);
            }
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "K{K} {CIN}->{COUT} on {h}x{w}");
        }
        check::<3, 3, 10>(&mut values, 31, 24);
        check::<3, 3, 28>(&mut values, 24, 24);
        check::<3, 28, 48>(&mut values, 11, 11);
        check::<2, 48, 64>(&mut values, 4, 4);
        check::<3, 16, 32>(&mut values, 5, 3);
        check::<2, 64, 128>(&mut values, 4, 4);
    }
}
