//! The bf16 weight gradient on the tile unit (AMX `tdpbf16ps`), written once over `TileUnit`: run on
//! `AmxTiles` where `crate::host_isa::bf16_kernels()` says AMX, on `TileModel` where that family is
//! forced (tests and A/B runs on any CPU); `algorithm::choose` names the unit (`ConvAlgorithm::AmxTiles`).
//!
//! Per tap, dW_tap[co][ci] = Σ_img Σ_q dy[co](q) · x[ci](q + off) is a matrix product reducing over
//! positions, so positions are the pair (K) dimension: A is dy, 16 output channels × 16 pairs of
//! consecutive positions (a row is 32 positions of a bf16 dy plane, loaded in place from the planes of
//! `direct::bf16::DwBf16Planes`, their zero border making junk positions contribute nothing); B is x
//! transposed to [position pair][input channel], each 32-bit element the pair (x[ci](2k + p),
//! x[ci](2k + 1 + p)) — packed for both parities p, so a tap offset `off` is a row shift in the copy of
//! parity off & 1; C is 16 × 16 f32, summed over every position block and image. Output channels are
//! padded to 16 with zero dy planes, input channels to 16 with zero columns of B, positions to 32 by
//! the planes' zero tails.
//!
//! Tiles: C in tmm0–2 (three taps, one kernel row, per task), A in tmm3, B in tmm4–6; every tile 16
//! rows of 64 bytes. Tasks are (output block, input block, group of three taps).

use super::direct::amx::{amx_unit, Unit};
use super::direct::bf16::DwBf16Planes;
use super::direct::DwColumns;
use super::Conv2dGeom;
use crate::host_isa::Bf16Kernels;
use crate::tiles::{TileConfig, TileModel, TileShape, TileUnit};
use rayon::prelude::*;

/// Channels per tile block (rows of A and C, 32-bit columns of B and C).
const BLOCK: usize = 16;
/// Positions per tile step: 16 pairs (A's row, B's rows).
const SPAN: usize = 32;
/// Taps per task: the C tiles tmm0–2.
const GROUP: usize = 3;

/// The geometries the tile weight gradient computes: 3×3 pad 1 and 1×1 pad 0, stride 1.
pub fn applies(g: &Conv2dGeom) -> bool {
    super::direct::bf16::weight_grad_applies(g) && g.stride == 1
}

/// The tile unit `--precision bf16` runs on this thread (`bf16_kernels()` is AMX, or the software
/// model forced), None for the other families.
pub fn chosen_unit() -> Option<Unit> {
    match crate::host_isa::bf16_kernels() {
        Bf16Kernels::AmxTiles => Some(Unit::Hardware),
        Bf16Kernels::TileModel => Some(Unit::Model),
        Bf16Kernels::Avx512Bf16 | Bf16Kernels::F32 => None,
    }
}

/// dW += Σ_images dy ⋆ x with bf16 operands and f32 sums on `unit` (`Hardware` only where host_isa
/// found AMX usable, as `chosen_unit` gives it). `applies(g)` must hold (asserted).
pub fn weight_grad(unit: Unit, g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    match unit {
        Unit::Hardware => weight_grad_on(|| amx_unit().expect("the AmxTiles family without AMX"), g, x, dy, dw),
        Unit::Model => weight_grad_on(TileModel::new, g, x, dy, dw),
    }
}

/// `weight_grad` on the tile units `unit` makes (one per task, on the task's thread).
pub fn weight_grad_on<U: TileUnit>(unit: impl Fn() -> U + Sync, g: &Conv2dGeom, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(applies(g), "tile weight gradient: {g:?} is not a 3×3 pad-1 or 1×1 stride-1 conv");
    let planes = DwBf16Planes::new(g);
    let (n, cin, cout, hw, kk) = (g.n, g.cin, g.cout, g.h * g.w, g.k * g.k);
    assert!(x.len() >= n * cin * hw && dy.len() >= n * cout * hw && dw.len() >= cout * cin * kk);
    let (plane, dy_at, q_len) = (planes.grid.plane, planes.grid.dy_at, planes.grid.q_len);
    let taps: Vec<usize> = match planes.columns {
        DwColumns::Taps(taps) => taps.to_vec(),
        DwColumns::Pointwise => vec![0],
    };
    assert!(plane.is_multiple_of(2) && q_len.is_multiple_of(SPAN) && dy_at + q_len <= plane);
    assert!(planes.grid.dy_plane == plane, "stride 1: dy and x share the plane layout");
    assert!(taps.iter().all(|&t| q_len + t <= plane), "a tap reads past the padded plane");
    let (ci16, co16) = (cin.div_ceil(BLOCK) * BLOCK, cout.div_ceil(BLOCK) * BLOCK);

    // dy: co16 bf16 planes per image, those past cout zero.
    let mut dyb = vec![0u16; n * co16 * plane];
    dyb.par_chunks_mut(co16 * plane)
        .zip(dy[..n * cout * hw].par_chunks(cout * hw))
        .for_each(|(d, s)| planes.pad_dy(s, &mut d[..cout * plane]));
    // x: bf16 planes, then per image and parity p the pairs (x(2j + p), x(2j + 1 + p)) as rows j of
    // ci16 input channels (zero past cin and past the plane).
    let mut xb = vec![0u16; n * cin * plane];
    xb.par_chunks_mut(cin * plane)
        .zip(x[..n * cin * hw].par_chunks(cin * hw))
        .for_each(|(d, s)| planes.pad_x(g, s, &mut [], d));
    let pairs = plane / 2;
    let mut xt = vec![0u32; n * 2 * pairs * ci16];
    xt.par_chunks_mut(2 * pairs * ci16).zip(xb.par_chunks(cin * plane)).for_each(|(t, xi)| {
        for (ci, xc) in xi.chunks_exact(plane).enumerate() {
            for p in 0..2 {
                for j in 0..pairs {
                    let lo = u32::from(xc[2 * j + p]);
                    let hi = xc.get(2 * j + 1 + p).map_or(0, |&v| u32::from(v));
                    t[(p * pairs + j) * ci16 + ci] = lo | (hi << 16);
                }
            }
        }
    });

    let (co_blocks, ci_blocks, groups) = (co16 / BLOCK, ci16 / BLOCK, taps.len().div_ceil(GROUP));
    let full = TileShape { rows: BLOCK as u8, row_bytes: 64 };
    let mut shapes = [full; 8];
    shapes[7] = TileShape::default();
    let cfg = TileConfig::new(shapes);
    let task = |i: usize| -> [[f32; BLOCK * BLOCK]; GROUP] {
        let (cb, rest) = (i / (ci_blocks * groups), i % (ci_blocks * groups));
        let (ib, group) = (rest / groups, rest % groups);
        let group_taps = &taps[group * GROUP..taps.len().min((group + 1) * GROUP)];
        let mut u = unit();
        u.configure(&cfg);
        for img in 0..n {
            let dy_block = dyb[(img * co16 + cb * BLOCK) * plane + dy_at..].as_ptr();
            for q0 in (0..q_len).step_by(SPAN) {
                // SAFETY: A's 16 rows of 32 bf16 values at dy_at + q0 of planes co < co16 of this image lie
                // inside dyb (dy_at + q_len ≤ plane, asserted). B's 16 rows of 16 pairs start at pair row
                // (q0 + off) / 2 of parity off & 1 and end at row (q_len + off) / 2 − 1 < pairs, input
                // channels ib·16 + 16 ≤ ci16: inside xt.
                unsafe {
                    u.load::<3>(dy_block.add(q0).cast(), plane * 2);
                    for (slot, &off) in group_taps.iter().enumerate() {
                        let row = (img * 2 + (off & 1)) * pairs + (q0 + off) / 2;
                        let b = xt[row * ci16 + ib * BLOCK..].as_ptr().cast();
                        match slot {
                            0 => {
                                u.load::<4>(b, ci16 * 4);
                                u.dot_bf16::<0, 3, 4>();
                            }
                            1 => {
                                u.load::<5>(b, ci16 * 4);
                                u.dot_bf16::<1, 3, 5>();
                            }
                            _ => {
                                u.load::<6>(b, ci16 * 4);
                                u.dot_bf16::<2, 3, 6>();
                            }
                        }
                    }
                }
            }
        }
        let mut c = [[0.0f32; BLOCK * BLOCK]; GROUP];
        // SAFETY: each C tile is 16 rows of 64 bytes, stored into its 256-float array (stride 64 bytes).
        unsafe {
            u.store::<0>(c[0].as_mut_ptr().cast(), 64);
            u.store::<1>(c[1].as_mut_ptr().cast(), 64);
            u.store::<2>(c[2].as_mut_ptr().cast(), 64);
        }
        u.release();
        c
    };
    let sums: Vec<_> = (0..co_blocks * ci_blocks * groups).into_par_iter().map(task).collect();
    for (i, c) in sums.iter().enumerate() {
        let (cb, rest) = (i / (ci_blocks * groups), i % (ci_blocks * groups));
        let (ib, group) = (rest / groups, rest % groups);
        for (slot, tile) in c.iter().enumerate().take(taps.len() - group * GROUP) {
            let tap = group * GROUP + slot;
            for r in 0..BLOCK.min(cout - cb * BLOCK) {
                let co = cb * BLOCK + r;
                for k in 0..BLOCK.min(cin - ib * BLOCK) {
                    dw[(co * cin + ib * BLOCK + k) * kk + tap] += tile[r * BLOCK + k];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::float::round_bf16;
    use crate::rng::Rng;

    /// f64 sums of dy and x rounded to bf16, and the sums of |terms|: [cout][cin][k·k].
    fn reference(g: &Conv2dGeom, x: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (kk, p) = (g.k * g.k, g.pad as isize);
        let mut want = vec![0.0f64; g.cout * g.cin * kk];
        let mut size = vec![0.0f64; want.len()];
        for img in 0..g.n {
            for co in 0..g.cout {
                for ci in 0..g.cin {
                    for t in 0..kk {
                        let (ky, kx) = ((t / g.k) as isize - p, (t % g.k) as isize - p);
                        for y in 0..g.h as isize {
                            for xx in 0..g.w as isize {
                                let (iy, ix) = (y + ky, xx + kx);
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let d = round_bf16(dy[((img * g.cout + co) * g.h + y as usize) * g.w + xx as usize]);
                                let v = round_bf16(x[((img * g.cin + ci) * g.h + iy as usize) * g.w + ix as usize]);
                                let term = f64::from(d) * f64::from(v);
                                want[(co * g.cin + ci) * kk + t] += term;
                                size[(co * g.cin + ci) * kk + t] += term.abs();
                            }
                        }
                    }
                }
            }
        }
        (want, size)
    }

    /// (n, cin, cout, h, w, k): channel counts below, at and past one 16-block, positions ending
    /// mid-step, batch 1 and 2.
    const SHAPES: &[(usize, usize, usize, usize, usize, usize)] = &[
        (2, 5, 7, 11, 13, 3),
        (1, 17, 19, 6, 9, 3),
        (2, 16, 16, 4, 4, 3),
        (1, 1, 1, 1, 1, 3),
        (2, 19, 3, 5, 7, 1),
        (1, 3, 33, 9, 4, 1),
    ];

    fn normals(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    fn case(
        rng: &mut Rng, &(n, cin, cout, h, w, k): &(usize, usize, usize, usize, usize, usize),
    ) -> (Conv2dGeom, Vec<f32>, Vec<f32>) {
        let g = Conv2dGeom::new([n, cin, h, w], &[cout, cin, k, k], 1, k / 2).unwrap();
        (g, normals(rng, n * cin * h * w), normals(rng, n * cout * h * w))
    }

    #[test]
    fn tile_model_weight_grad_matches_f64_sums_of_rounded_operands() {
        let mut rng = Rng::for_tests(81);
        for shape in SHAPES {
            let (g, x, dy) = case(&mut rng, shape);
            let (want, size) = reference(&g, &x, &dy);
            let start = normals(&mut rng, want.len());
            let mut dw = start.clone();
            weight_grad_on(TileModel::new, &g, &x, &dy, &mut dw);
            // One f32 rounding per product step, summed in sequence over every position of every image.
            let steps = (g.n * DwBf16Planes::new(&g).grid.q_len) as f64;
            let bound = steps * 2f64.powi(-24);
            for (i, ((&d, &s), (&w, &m))) in dw.iter().zip(&start).zip(want.iter().zip(&size)).enumerate() {
                let err = (f64::from(d) - f64::from(s) - w).abs();
                let scale = m + f64::from(s).abs();
                assert!(
                    err <= bound * scale + 1e-30,
                    "{g:?} dW[{i}]: {d} − {s} vs {w} (error {err:e}, Σ|terms| {m:e})"
                );
            }
        }
    }

    #[test]
    fn amx_weight_grad_equals_the_tile_model_bit_for_bit() {
        if !crate::host_isa::amx_usable() {
            eprintln!("skipped: no AMX on this CPU");
            return;
        }
        let mut rng = Rng::for_tests(82);
        for shape in SHAPES {
            let (g, x, dy) = case(&mut rng, shape);
            let mut model = vec![0.0f32; g.cout * g.cin * g.k * g.k];
            let mut hardware = model.clone();
            weight_grad_on(TileModel::new, &g, &x, &dy, &mut model);
            weight_grad_on(|| amx_unit().expect("amx_usable() holds"), &g, &x, &dy, &mut hardware);
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&hardware), bits(&model), "{g:?}: AMX and the tile model differ");
        }
    }

    #[test]
    fn tile_family_takes_the_weight_gradient() {
        use crate::ops::conv2d::algorithm::{choose, Arithmetic, ConvAlgorithm, Pass};
        let g = Conv2dGeom::new([2, 18, 32, 32], &[18, 18, 3, 3], 1, 1).unwrap();
        crate::host_isa::with_bf16_kernels(Bf16Kernels::TileModel, || {
            let Some(unit) = chosen_unit() else {
                eprintln!("skipped: the tile model does not run on this CPU (no AVX2)");
                return;
            };
            let want = ConvAlgorithm::AmxTiles(unit);
            assert_eq!(choose(&g, Pass::BackwardWeight, Arithmetic::Bf16), want);
            assert_ne!(choose(&g, Pass::BackwardWeight, Arithmetic::F32), want);
        });
    }
}
