//! The tensor-core path under the host emulator: the mma.sync fragment maps and arithmetic (kernels/emu.h)
//! against a scalar model written here from the PTX ISA text, the tf32/bf16 conversions on edge values,
//! and the tensor-core conv kernels (kernels/conv_mma.cu) against f64 references on odd shapes, with
//! error bounds derived from the operands' mantissa width.
use hrk::cuda::emu::{addr, addr_mut};
use hrk::cuda::kernels;
use hrk::cuda::params::{Conv2dParams, MmaProbeParams};

mod common;
use common::emu::{run, ConvCase};
use common::TestValues;

// ---------- scalar model ----------

/// Lane `lane`'s (group, thread-in-group): PTX's `groupID = %laneid >> 2`, `threadID_in_group = %laneid % 4`.
fn group_of(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

// Fragment maps, transcribed from the PTX ISA "Matrix Fragments for mma.m16n8k8" (.tf32) and "Matrix
// Fragments for mma.m16n8k16 with floating point type" (.bf16), as (row, column) of element i of a lane.

/// m16n8k8 .tf32 A (16×8): row groupID for a0, a2 and groupID + 8 for a1, a3; column threadID_in_group
/// for a0, a1 and threadID_in_group + 4 for a2, a3.
fn tf32_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group_of(lane);
    (if i == 0 || i == 2 { g } else { g + 8 }, if i < 2 { t } else { t + 4 })
}
/// m16n8k8 .tf32 B (8×8, k × n): row threadID_in_group for b0 and threadID_in_group + 4 for b1; column groupID.
fn tf32_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group_of(lane);
    (if i == 0 { t } else { t + 4 }, g)
}
/// m16n8k16 .bf16 A (16×16), elements a0..a7 (two per register, low half first): row groupID for
/// a0, a1, a4, a5 and groupID + 8 otherwise; column threadID_in_group·2 + (i & 1), + 8 for i ≥ 4.
fn bf16_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group_of(lane);
    let row = if matches!(i, 0 | 1 | 4 | 5) { g } else { g + 8 };
    (row, t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 })
}
/// m16n8k16 .bf16 B (16×8), elements b0..b3: row threadID_in_group·2 + (i & 1), + 8 for i ≥ 2; column groupID.
fn bf16_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group_of(lane);
    (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}
/// C and D (16×8, f32) of both shapes: row groupID for c0, c1 and groupID + 8 for c2, c3; column
/// threadID_in_group·2 + (i & 1).
fn acc_at(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group_of(lane);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

/// A rounding candidate as a number: one step past the largest finite value is ±2^128 (where rounding
/// then overflows to infinity), not infinity itself.
fn unbounded(v: f32) -> f64 {
    if v.is_infinite() {
        2f64.powi(128).copysign(v as f64)
    } else {
        v as f64
    }
}

/// cvt.rna.tf32.f32 by its definition: the nearer of the two tf32 values around x (the 13 low bits
/// cleared, or that plus one tf32 ulp, away from zero), a tie going away from zero.
fn tf32_model(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let down = f32::from_bits(x.to_bits() & !0x1fff);
    let up = f32::from_bits((x.to_bits() & !0x1fff) + 0x2000);
    let (d_down, d_up) = ((x as f64 - down as f64).abs(), (unbounded(up) - x as f64).abs());
    if d_down < d_up {
        down
    } else {
        up
    }
}

/// cvt.rn.bf16.f32 by its definition: the nearer of the two bf16 values around x, a tie going to the one
/// with an even last bit. NaN is any bf16 NaN.
fn bf16_model(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let down = (x.to_bits() >> 16) as u16;
    if x.is_infinite() {
        return down;
    }
    let up = down + 1;
    let value = |h: u16| unbounded(f32::from_bits((h as u32) << 16));
    let (d_down, d_up) = ((x as f64 - value(down)).abs(), (value(up) - x as f64).abs());
    if d_down < d_up || (d_down == d_up && down.is_multiple_of(2)) {
        down
    } else {
        up
    }
}

/// D = A·B + C as the emulation defines it: each product exact, summed in f32 from C in order k = 0..K
/// (one rounding per step).
fn mma_model(a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let k_len = b.len();
    (0..16)
        .map(|r| (0..8).map(|n| (0..k_len).fold(c[r][n], |acc, k| a[r][k].mul_add(b[k][n], acc))).collect())
        .collect()
}

/// Per-lane registers of A, B, C for the probe, built with the maps above.
struct Registers {
    a: Vec<u32>,
    b: Vec<u32>,
    c: Vec<f32>,
}

fn tf32_registers(a_bits: &[Vec<u32>], b_bits: &[Vec<u32>], c: &[Vec<f32>]) -> Registers {
    let mut r = Registers { a: vec![0; 128], b: vec![0; 64], c: vec![0.0; 128] };
    for lane in 0..32 {
        for i in 0..4 {
            let (row, col) = tf32_a(lane, i);
            r.a[lane * 4 + i] = a_bits[row][col];
            let (row, col) = acc_at(lane, i);
            r.c[lane * 4 + i] = c[row][col];
        }
        for i in 0..2 {
            let (k, n) = tf32_b(lane, i);
            r.b[lane * 2 + i] = b_bits[k][n];
        }
    }
    r
}

fn bf16_registers(a: &[Vec<u16>], b: &[Vec<u16>], c: &[Vec<f32>]) -> Registers {
    let mut r = Registers { a: vec![0; 128], b: vec![0; 64], c: vec![0.0; 128] };
    for lane in 0..32 {
        for i in 0..8 {
            let (row, col) = bf16_a(lane, i);
            r.a[lane * 4 + i / 2] |= (a[row][col] as u32) << (16 * (i & 1));
        }
        for i in 0..4 {
            let (k, n) = bf16_b(lane, i);
            r.b[lane * 2 + i / 2] |= (b[k][n] as u32) << (16 * (i & 1));
        }
        for i in 0..4 {
            let (row, col) = acc_at(lane, i);
            r.c[lane * 4 + i] = c[row][col];
        }
    }
    r
}

/// Runs one probe warp and returns D as a 16×8 matrix, read back through the C/D map.
fn run_probe(kernel: &kernels::Kernel<MmaProbeParams>, regs: &Registers) -> Vec<Vec<f32>> {
    let mut d = vec![f32::NAN; 128];
    let p = MmaProbeParams {
        a: addr(&regs.a),
        b: addr(&regs.b),
        c: addr(&regs.c),
        d: addr_mut(&mut d),
        ..Default::default()
    };
    run(kernel, &p);
    let mut out = vec![vec![f32::NAN; 8]; 16];
    for lane in 0..32 {
        for i in 0..4 {
            let (row, col) = acc_at(lane, i);
            out[row][col] = d[lane * 4 + i];
        }
    }
    out
}

fn matrix<T: Copy>(rows: usize, cols: usize, f: impl Fn(usize, usize) -> T) -> Vec<Vec<T>> {
    (0..rows).map(|r| (0..cols).map(|c| f(r, c)).collect()).collect()
}

// ---------- fragment maps and arithmetic ----------

/// Distinct small integers (exact in tf32, products and sums exact in f32): any element the emulation
/// takes from the wrong lane or register changes some D element, and every D element is compared.
#[test]
fn mma_tf32_fragment_map_matches_ptx_layout() {
    let sign = |v: usize| if v.is_multiple_of(3) { -1.0 } else { 1.0 };
    let a = matrix(16, 8, |r, k| sign(r + k) * (r * 8 + k + 1) as f32);
    let b = matrix(8, 8, |k, n| sign(k * 2 + n) * (k * 8 + n + 1) as f32);
    let c = matrix(16, 8, |r, n| (1000 * r + 10 * n) as f32);
    let bits = |m: &Vec<Vec<f32>>| m.iter().map(|row| row.iter().map(|v| v.to_bits()).collect()).collect::<Vec<_>>();
    let d = run_probe(&kernels::MMA_PROBE_TF32, &tf32_registers(&bits(&a), &bits(&b), &c));
    for r in 0..16 {
        for n in 0..8 {
            let exact: f64 = c[r][n] as f64 + (0..8).map(|k| a[r][k] as f64 * b[k][n] as f64).sum::<f64>();
            assert_eq!(d[r][n] as f64, exact, "D[{r}][{n}]");
        }
    }
}

#[test]
fn mma_bf16_fragment_map_matches_ptx_layout() {
    let sign = |v: usize| if v.is_multiple_of(3) { -1.0 } else { 1.0 };
    // |A| ≤ 256 and |B| ≤ 128: exact in bf16 (8 significant bits).
    let a = matrix(16, 16, |r, k| sign(r + k) * (r * 16 + k + 1) as f32);
    let b = matrix(16, 8, |k, n| sign(k + 2 * n) * (k * 8 + n + 1) as f32);
    let c = matrix(16, 8, |r, n| (1000 * r + 10 * n) as f32);
    let half = |m: &Vec<Vec<f32>>| {
        m.iter()
            .map(|row| {
                row.iter()
                    .map(|v| {
                        assert_eq!(v.to_bits() & 0xffff, 0, "{v} not exact in bf16");
                        (v.to_bits() >> 16) as u16
                    })
                    .collect()
            })
            .collect::<Vec<_>>()
    };
    let d = run_probe(&kernels::MMA_PROBE_BF16, &bf16_registers(&half(&a), &half(&b), &c));
    for r in 0..16 {
        for n in 0..8 {
            let exact: f64 = c[r][n] as f64 + (0..16).map(|k| a[r][k] as f64 * b[k][n] as f64).sum::<f64>();
            assert_eq!(d[r][n] as f64, exact, "D[{r}][{n}]");
        }
    }
}

/// Registers holding full f32 patterns: the tensor core reads only a .tf32 operand's top 19 bits, and the
/// emulation then rounds each f32 accumulation step in the documented order — bit-exact to the model.
#[test]
fn mma_tf32_ignores_low_operand_bits_and_accumulates_in_order() {
    let mut rng = common::rng(7);
    let a_bits: Vec<Vec<u32>> = (0..16).map(|_| rng.values(8).iter().map(|v| (v * 3.0).to_bits()).collect()).collect();
    let b_bits: Vec<Vec<u32>> = (0..8).map(|_| rng.values(8).iter().map(|v| (v * 5.0).to_bits()).collect()).collect();
    let c: Vec<Vec<f32>> = (0..16).map(|_| rng.values(8)).collect();
    let d = run_probe(&kernels::MMA_PROBE_TF32, &tf32_registers(&a_bits, &b_bits, &c));
    let truncated = |m: &Vec<Vec<u32>>| -> Vec<Vec<f32>> {
        m.iter().map(|row| row.iter().map(|&u| f32::from_bits(u & 0xffff_e000)).collect()).collect()
    };
    let want = mma_model(&truncated(&a_bits), &truncated(&b_bits), &c);
    assert_eq!(d, want);
    // The low bits really were dropped: the full-precision product differs somewhere.
    let full = |m: &Vec<Vec<u32>>| -> Vec<Vec<f32>> {
        m.iter().map(|row| row.iter().map(|&u| f32::from_bits(u)).collect()).collect()
    };
    assert_ne!(d, mma_model(&full(&a_bits), &full(&b_bits), &c));
}

#[test]
fn mma_bf16_accumulates_in_order() {
    let mut rng = common::rng(8);
    let a: Vec<Vec<u16>> = (0..16).map(|_| rng.values(16).iter().map(|v| bf16_model(v * 3.0)).collect()).collect();
    let b: Vec<Vec<u16>> = (0..16).map(|_| rng.values(8).iter().map(|v| bf16_model(v * 5.0)).collect()).collect();
    let c: Vec<Vec<f32>> = (0..16).map(|_| rng.values(8)).collect();
    let d = run_probe(&kernels::MMA_PROBE_BF16, &bf16_registers(&a, &b, &c));
    let value = |m: &Vec<Vec<u16>>| -> Vec<Vec<f32>> {
        m.iter().map(|row| row.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect()).collect()
    };
    assert_eq!(d, mma_model(&value(&a), &value(&b), &c));
}

// ---------- conversions ----------

fn edge_values() -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        1.0 + 2f32.powi(-11),                  // tf32 tie: away from zero
        -(1.0 + 2f32.powi(-11)),               // negative tie
        1.0 + 3.0 * 2f32.powi(-11),            // tf32 tie from an odd last bit
        1.0 + 2f32.powi(-11) + 2f32.powi(-23), // just above a tie
        1.0 + 2f32.powi(-11) - 2f32.powi(-23), // just below a tie
        1.0 + 2f32.powi(-8),                   // bf16 tie from an even last bit: stays
        1.0 + 3.0 * 2f32.powi(-8),             // bf16 tie from an odd last bit: up
        -(1.0 + 3.0 * 2f32.powi(-8)),
        f32::MAX, // rounds up to infinity in both
        -f32::MAX,
        f32::from_bits(0x7f7f_efff), // the largest value tf32 rounds down (below the tie)
        f32::from_bits(0x7f7f_f000), // tie at the top: away from zero, to infinity
        f32::MIN_POSITIVE,
        f32::from_bits(1),      // smallest subnormal
        f32::from_bits(0x1000), // subnormal tf32 tie: away from zero (ties-to-even would give 0)
        f32::from_bits(0x3000),
        f32::from_bits(0x8000),      // subnormal bf16 tie, even: stays 0
        f32::from_bits(0x0001_8000), // subnormal bf16 tie, odd: up
        f32::from_bits(0x007f_ffff), // largest subnormal: rounds up to a normal
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0xffc0_0001), // negative NaN with a payload
        f32::from_bits(0x7fa0_0000), // signalling NaN pattern
        std::f32::consts::PI,
        -std::f32::consts::E,
        1e-30,
        3.0e38,
    ];
    v.extend(common::rng(9).values(200).iter().map(|x| x * 1000.0));
    v
}

#[test]
fn mma_cvt_tf32_and_bf16_round_as_documented() {
    let src = edge_values();
    let n = src.len();
    let (mut tf32, mut bf16x2) = (vec![0u32; n], vec![0u32; n]);
    let p = MmaProbeParams {
        src: addr(&src),
        tf32: addr_mut(&mut tf32),
        bf16x2: addr_mut(&mut bf16x2),
        n: n as i32,
        ..Default::default()
    };
    run(&kernels::MMA_PROBE_CVT, &p);
    for (i, &x) in src.iter().enumerate() {
        let got = f32::from_bits(tf32[i]);
        assert_eq!(tf32[i] & 0x1fff, 0, "tf32({x:e}) keeps low bits: {:#x}", tf32[i]);
        if x.is_nan() {
            assert!(got.is_nan(), "tf32(NaN {:#x}) = {got}", x.to_bits());
        } else {
            assert_eq!(got.to_bits(), tf32_model(x).to_bits(), "tf32({x:e} = {:#x})", x.to_bits());
        }
        // Low half: bf16(src); high half: bf16(-src).
        let (lo, hi) = ((bf16x2[i] & 0xffff) as u16, (bf16x2[i] >> 16) as u16);
        for (got, v, half) in [(lo, x, "low"), (hi, -x, "high")] {
            if v.is_nan() {
                assert!(f32::from_bits((got as u32) << 16).is_nan(), "bf16(NaN) {half} = {got:#x}");
            } else {
                assert_eq!(got, bf16_model(v), "bf16({v:e} = {:#x}) {half} half", v.to_bits());
            }
        }
    }
    // Spot checks of the definitions themselves on the edge cases named above.
    assert_eq!(tf32_model(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-10));
    assert_eq!(tf32_model(f32::from_bits(0x1000)).to_bits(), 0x2000);
    assert_eq!(tf32_model(f32::MAX), f32::INFINITY);
    assert_eq!(bf16_model(1.0 + 2f32.powi(-8)), 0x3f80);
    assert_eq!(bf16_model(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert_eq!(bf16_model(f32::MAX), 0x7f80);
}

// ---------- conv kernels ----------

// Tails in every GEMM dimension (columns not multiples of 64, channels not multiples of 8 or 16, more
// than one 64-channel tile), stride 2, 1×1, batch 3; small enough for the emulator.
const CASES: [ConvCase; 5] = [
    ConvCase { n: 3, ci: 5, h: 7, w: 9, co: 7, k: 3, stride: 1, pad: 1 },
    ConvCase { n: 2, ci: 6, h: 9, w: 11, co: 10, k: 3, stride: 2, pad: 1 },
    ConvCase { n: 3, ci: 70, h: 5, w: 6, co: 66, k: 1, stride: 1, pad: 0 },
    ConvCase { n: 1, ci: 3, h: 8, w: 7, co: 5, k: 3, stride: 2, pad: 0 },
    ConvCase { n: 2, ci: 9, h: 6, w: 5, co: 3, k: 1, stride: 2, pad: 0 },
];

/// The three products of a conv, exact in f64, with Σ|a||b| per output element (the scale of the error).
struct Reference {
    y: Vec<f64>,
    y_mag: Vec<f64>,
    dx: Vec<f64>,
    dx_mag: Vec<f64>,
    dw: Vec<f64>,
    dw_mag: Vec<f64>,
}

fn reference(c: &ConvCase, x: &[f32], w: &[f32], dy: &[f32]) -> Reference {
    let mut r = Reference {
        y: vec![0.0; c.y_len()],
        y_mag: vec![0.0; c.y_len()],
        dx: vec![0.0; c.x_len()],
        dx_mag: vec![0.0; c.x_len()],
        dw: vec![0.0; c.w_len()],
        dw_mag: vec![0.0; c.w_len()],
    };
    c.for_each_tap(|xi, wi, yi| {
        let (xv, wv, g) = (x[xi] as f64, w[wi] as f64, dy[yi] as f64);
        r.y[yi] += xv * wv;
        r.y_mag[yi] += (xv * wv).abs();
        r.dx[xi] += g * wv;
        r.dx_mag[xi] += (g * wv).abs();
        r.dw[wi] += g * xv;
        r.dw_mag[wi] += (g * xv).abs();
    });
    r
}

/// Error bound of one output element computed from operands rounded to `mantissa_bits` explicit bits
/// (unit roundoff u = 2^-(bits+1): tf32 10 → 2^-11, bf16 7 → 2^-8) and `steps` f32 accumulations:
///   |got − exact| ≤ Σ|a||b|·((1+u)² − 1 + γ) + |extra|·2^-23,   γ = steps·2^-24 / (1 − steps·2^-24)
/// (each product's operands carry a relative error ≤ u each; each f32 add rounds once; `extra` holds
/// what the epilogue adds to the sum: bias, residual, the accumulated-into gradient).
fn bound(mantissa_bits: i32, steps: usize, mag: f64, extra: f64) -> f64 {
    let u = 2f64.powi(-(mantissa_bits + 1));
    let e = 2f64.powi(-24) * steps as f64;
    mag * ((1.0 + u) * (1.0 + u) - 1.0 + e / (1.0 - e)) + (extra.abs() + mag) * 2f64.powi(-23)
}

/// How a kernel's results were rounded: explicit mantissa bits of the operands, f32 accumulation steps,
/// and the least worst-case error relative to Σ|a||b| that shows the operands really were rounded (f32
/// FMA arithmetic would stay near 2^-22).
#[derive(Clone, Copy)]
struct Rounding {
    bits: i32,
    steps: usize,
    min_rel: f64,
}

/// Every element within its bound, and the worst error relative to Σ|a||b| above `min_rel`.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f64], mag: &[f64], extra: &[f64], r: Rounding) {
    let Rounding { bits, steps, min_rel } = r;
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst_rel = 0.0f64;
    for i in 0..got.len() {
        let err = (got[i] as f64 - want[i]).abs();
        let b = bound(bits, steps, mag[i], extra[i]);
        assert!(
            err <= b,
            "{what}[{i}]: got {} want {} |d| {err:e} > bound {b:e} (Σ|a||b| {:e})",
            got[i],
            want[i],
            mag[i]
        );
        if mag[i] > 0.0 {
            worst_rel = worst_rel.max(err / mag[i]);
        }
    }
    eprintln!("{what}: worst |d|/Σ|a||b| {worst_rel:e}");
    assert!(worst_rel > min_rel, "{what}: worst relative error {worst_rel:e}: were the operands rounded?");
}

#[test]
fn mma_conv_forward_tf32_and_bf16_within_mantissa_bounds() {
    let mut rng = common::rng(11);
    for (i, c) in CASES.iter().enumerate() {
        let (x, w, bias) = (rng.values(c.x_len()), rng.values(c.w_len()), rng.values(c.co));
        let residual = rng.values(c.y_len());
        let r = reference(c, &x, &w, &vec![0.0; c.y_len()]);
        let steps = c.ci * c.k * c.k + 2;
        let (ho, wo) = c.out();
        for (kernel, bits, name) in
            [(&kernels::CONV2D_FORWARD_TF32, 10, "tf32"), (&kernels::CONV2D_FORWARD_BF16, 7, "bf16")]
        {
            // Plain, then the inference epilogue (bias + residual, ReLU).
            let mut y = vec![f32::NAN; c.y_len()];
            run(kernel, &Conv2dParams { x: addr(&x), weight: addr(&w), y: addr_mut(&mut y), ..c.params() });
            let min_rel = 2f64.powi(-(bits + 6));
            check(
                &format!("case {i} {c:?} fwd {name}"),
                &y,
                &r.y,
                &r.y_mag,
                &vec![0.0; y.len()],
                Rounding { bits, steps, min_rel },
            );

            let mut y = vec![f32::NAN; c.y_len()];
            let p = Conv2dParams {
                x: addr(&x),
                weight: addr(&w),
                bias: addr(&bias),
                residual: addr(&residual),
                relu: 1,
                y: addr_mut(&mut y),
                ..c.params()
            };
            run(kernel, &p);
            let hw = ho * wo;
            let extra: Vec<f64> = (0..y.len()).map(|j| bias[j / hw % c.co] as f64 + residual[j] as f64).collect();
            // ReLU is 1-Lipschitz: the bound of the pre-activation holds after it.
            let want: Vec<f64> = r.y.iter().zip(&extra).map(|(v, e)| (v + e).max(0.0)).collect();
            for (j, (&got, &wv)) in y.iter().zip(&want).enumerate() {
                let b = bound(bits, steps, r.y_mag[j], extra[j]);
                assert!(
                    (got as f64 - wv).abs() <= b,
                    "case {i} fwd {name} epilogue [{j}]: {got} vs {wv} (bound {b:e})"
                );
            }
        }
    }
}

#[test]
fn mma_conv_backward_tf32_within_mantissa_bounds() {
    let mut rng = common::rng(12);
    for (i, c) in CASES.iter().enumerate() {
        let (x, w, dy) = (rng.values(c.x_len()), rng.values(c.w_len()), rng.values(c.y_len()));
        let r = reference(c, &x, &w, &dy);
        let (ho, wo) = c.out();

        let mut dx = vec![f32::NAN; c.x_len()];
        let p = Conv2dParams { weight: addr(&w), dy: addr(&dy), dx: addr_mut(&mut dx), ..c.params() };
        run(&kernels::CONV2D_BACKWARD_DATA_TF32, &p);
        let steps = c.co * c.k * c.k + 1;
        check(
            &format!("case {i} {c:?} dx tf32"),
            &dx,
            &r.dx,
            &r.dx_mag,
            &vec![0.0; dx.len()],
            Rounding { bits: 10, steps, min_rel: 2f64.powi(-16) },
        );

        // Accumulates into a known gradient, without and with split-K (atomics).
        let base = rng.values(c.w_len());
        for splits in [1, 3] {
            let mut dw = base.clone();
            let p = Conv2dParams { x: addr(&x), dy: addr(&dy), dw: addr_mut(&mut dw), k_splits: splits, ..c.params() };
            run(&kernels::CONV2D_BACKWARD_WEIGHT_TF32, &p);
            let want: Vec<f64> = r.dw.iter().zip(&base).map(|(g, b)| g + *b as f64).collect();
            let extra: Vec<f64> = base.iter().map(|&b| b as f64).collect();
            let steps = c.n * ho * wo + splits as usize + 1;
            check(
                &format!("case {i} dw tf32 splits {splits}"),
                &dw,
                &want,
                &r.dw_mag,
                &extra,
                Rounding { bits: 10, steps, min_rel: 2f64.powi(-16) },
            );
        }
    }
}

/// The tensor-core forward's statistics epilogue: per-block partials summed over blocks equal the f64
/// channel sums of the y it wrote, and the epilogue leaves y unchanged.
#[test]
fn mma_conv_forward_stats_match_its_output() {
    let mut rng = common::rng(13);
    for (i, c) in CASES.iter().enumerate() {
        let (x, w, bias) = (rng.values(c.x_len()), rng.values(c.w_len()), rng.values(c.co));
        let base = Conv2dParams { x: addr(&x), weight: addr(&w), bias: addr(&bias), ..c.params() };
        let partials = kernels::conv_stats_partials(&base);
        for kernel in [&kernels::CONV2D_FORWARD_TF32, &kernels::CONV2D_FORWARD_BF16] {
            let mut y = vec![f32::NAN; c.y_len()];
            let mut y_plain = vec![f32::NAN; c.y_len()];
            let mut stats = vec![f64::NAN; 2 * partials * c.co];
            run(kernel, &Conv2dParams { y: addr_mut(&mut y), stats: stats.as_mut_ptr() as u64, ..base });
            run(kernel, &Conv2dParams { y: addr_mut(&mut y_plain), ..base });
            assert_eq!(y, y_plain, "case {i} {}: the stats epilogue changed y", kernel.name);
            let (ho, wo) = c.out();
            for co in 0..c.co {
                let (mut s, mut q) = (0.0f64, 0.0f64);
                for img in 0..c.n {
                    for v in &y[(img * c.co + co) * ho * wo..][..ho * wo] {
                        s += *v as f64;
                        q += *v as f64 * *v as f64;
                    }
                }
                let (ks, kq) = (0..partials)
                    .fold((0.0, 0.0), |(a, b), p| (a + stats[p * 2 * c.co + co], b + stats[p * 2 * c.co + c.co + co]));
                assert!((ks - s).abs() <= 1e-12 * q.max(1.0), "case {i} {} channel {co}: Σy {ks} vs {s}", kernel.name);
                assert!((kq - q).abs() <= 1e-12 * q.max(1.0), "case {i} {} channel {co}: Σy² {kq} vs {q}", kernel.name);
            }
        }
    }
}
