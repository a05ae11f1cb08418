//! The device checks `benches/gpu_check.sh --device` runs first on a lent GPU, one group per step (the test
//! names are its filters): `cuda_ptx_*` every embedded PTX module loads and a kernel runs; `cuda_mma_*` the
//! mma.sync probes on integer matrices (exact whatever the order in which the tensor core accumulates) and the
//! tf32/bf16 conversions; `cuda_conv_*` the tensor-core convolutions (tf32 and bf16) with ≥ 16 output channels,
//! K tails and odd shapes against an f64 host reference, within bounds from the operands' mantissa width.
//! Each `cuda_*` test skips with a printed reason where no CUDA device is found (HRK_REQUIRE_DEVICE=1, as the
//! script sets, makes that a failure); its `emu_*` twin runs the same body on the emulated device, so the checks
//! themselves are tested here without a GPU. `embedded_ptx_loads_from_r535_on` needs no device.
mod common;
use common::TestValues;

use hrk::autograd::backward_with;
use hrk::cuda::device::GpuDevice;
use hrk::cuda::params::MmaProbeParams;
use hrk::cuda::{kernels, ptx, with_gpu_math, GpuMath};
use hrk::{ops, Device, Storage, Tensor};

// ---------- which device ----------

/// The CUDA device, or None with the reason printed; HRK_REQUIRE_DEVICE=1 turns a missing device into a failure
/// (on the lent machine a skipped check is a failed one).
fn cuda_device() -> Option<GpuDevice> {
    #[cfg(feature = "cuda")]
    let reason = match GpuDevice::cuda(0) {
        Ok(d) => return Some(d),
        Err(e) => format!("{e:#}"),
    };
    #[cfg(not(feature = "cuda"))]
    let reason = "built without the `cuda` feature".to_string();
    assert!(
        std::env::var("HRK_REQUIRE_DEVICE").map_or(true, |v| v != "1"),
        "HRK_REQUIRE_DEVICE=1 but no CUDA device: {reason}"
    );
    eprintln!("skipped: {reason}");
    None
}

// ---------- the PTX headers (no device) ----------

/// Drivers from the R535 branch on (CUDA 12.2) load PTX ISA 8.2; every module is built for compute_80.
#[test]
fn embedded_ptx_loads_from_r535_on() {
    if ptx::PTX_MODULES.is_empty() {
        assert!(!common::require_ptx(), "HRK_REQUIRE_PTX=1 but no PTX embedded");
        eprintln!("skipped: built without a CUDA compiler, no PTX embedded");
        return;
    }
    for (module, text) in ptx::PTX_MODULES {
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .unwrap_or_else(|| panic!("{module}.ptx has no {key} line"))
                .trim()
                .to_string()
        };
        let version = header(".version");
        let (major, minor) = version.split_once('.').expect("`.version X.Y`");
        let isa: (u32, u32) = (major.parse().unwrap(), minor.parse().unwrap());
        assert!(isa <= (8, 2), "{module}.ptx is PTX ISA {version} > 8.2: drivers before CUDA 12.2 / R535 reject it");
        assert_eq!(version, ptx::PTX_ISA, "{module}.ptx: the ISA the driver floor was computed from");
        // PTX ISA 8.x (x ≤ 5) came with CUDA 12.x: the floor checked against cuDriverGetVersion at start-up.
        assert!(isa.0 == 8, "{module}.ptx: PTX ISA {version} is not CUDA 12's");
        assert_eq!(hrk::cuda::MIN_DRIVER_VERSION, 12000 + 10 * isa.1 as i32, "driver floor for PTX ISA {version}");
        assert_eq!(header(".target"), "sm_80", "{module}.ptx not built for compute_80");
    }
    // The message a too-old driver gets names the driver found and the one needed, on one line.
    let msg = hrk::cuda::CudaUnavailable::DriverTooOld { driver_version: 11080 }.to_string();
    for part in ["supports CUDA 11.8", "PTX ISA 8.2", "need CUDA 12.2", "R535"] {
        assert!(msg.contains(part) && !msg.contains('\n'), "{part:?} not in {msg:?}");
    }
}

// ---------- every module loads, one kernel runs ----------

/// Opening the device loads every embedded module and finds every kernel (`CudaDev::new`); one ReLU launch
/// then runs and its result comes back.
fn one_launch(dev: &GpuDevice) {
    let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.5) * 0.25).collect();
    let t = Tensor::from_f32(&[1000], x.clone()).unwrap().to_device(&Device::Gpu(dev.clone())).unwrap();
    let y = ops::relu(&t).unwrap().to_f32_vec();
    assert_eq!(y, x.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), "relu on {}", dev.name());
}

#[test]
fn cuda_ptx_modules_load_and_a_kernel_runs() {
    let Some(dev) = cuda_device() else { return };
    let driver = hrk::cuda::probe_driver().map(|d| d.driver_version).unwrap_or(0);
    eprintln!(
        "{}: driver CUDA {}.{}, {} PTX modules of ISA {} loaded, {} kernels found",
        dev.name(),
        driver / 1000,
        driver % 1000 / 10,
        ptx::PTX_MODULES.len(),
        ptx::PTX_ISA,
        kernels::ALL.len()
    );
    one_launch(&dev);
}

#[test]
fn emu_ptx_one_launch() {
    one_launch(&GpuDevice::emulated());
}

// ---------- mma.sync probes on integer matrices ----------

/// The fragments of mma.m16n8k8 (.tf32) and mma.m16n8k16 (.bf16) with f32 C/D, from the PTX ISA's "Matrix
/// Fragments" figures: (row, column) of element `i` held by `lane` (g = lane / 4, t = lane % 4).
#[derive(Clone, Copy)]
enum Fragment {
    Tf32A,
    Tf32B,
    Bf16A,
    Bf16B,
    Accumulator,
}

impl Fragment {
    fn at(self, lane: usize, i: usize) -> (usize, usize) {
        let (g, t) = (lane / 4, lane % 4);
        match self {
            Fragment::Tf32A => (g + 8 * (i % 2), t + 4 * (i / 2)),
            Fragment::Tf32B => (t + 4 * i, g),
            Fragment::Bf16A => (g + 8 * (i / 2 % 2), 2 * t + i % 2 + 8 * (i / 4)),
            Fragment::Bf16B => (2 * t + i % 2 + 8 * (i / 2), g),
            Fragment::Accumulator => (g + 8 * (i / 2), 2 * t + i % 2),
        }
    }
}

/// Random integers in [-limit, limit] as a rows × cols matrix.
fn integers(rng: &mut hrk::rng::Rng, rows: usize, cols: usize, limit: f32) -> Vec<Vec<f32>> {
    (0..rows).map(|_| rng.values(cols).iter().map(|v| (v * limit).round()).collect()).collect()
}

/// The 32 lanes' registers of one operand: `per_lane` 32-bit registers, element i of a lane in register
/// i / `per_register`, at bit 32 / `per_register` · (i % `per_register`); `bits` gives an element's pattern.
fn registers(m: &[Vec<f32>], f: Fragment, per_lane: usize, per_register: usize, bits: impl Fn(f32) -> u32) -> Vec<f32> {
    let mut regs = vec![0u32; 32 * per_lane];
    for lane in 0..32 {
        for i in 0..per_lane * per_register {
            let (r, c) = f.at(lane, i);
            regs[lane * per_lane + i / per_register] |= bits(m[r][c]) << (32 / per_register * (i % per_register));
        }
    }
    regs.into_iter().map(f32::from_bits).collect()
}

/// D = A·B + C by one warp of `kernel` on `dev`, read back as 16 × 8 through the accumulator fragment.
fn probe(dev: &GpuDevice, kernel: &kernels::Kernel<MmaProbeParams>, a: &[f32], b: &[f32], c: &[f32]) -> Vec<Vec<f32>> {
    let (a, b, c) = (dev.upload(a).unwrap(), dev.upload(b).unwrap(), dev.upload(c).unwrap());
    let mut d = dev.upload(&[f32::NAN; 128]).unwrap();
    let p = MmaProbeParams { a: a.addr(), b: b.addr(), c: c.addr(), d: d.addr_mut(), ..Default::default() };
    // SAFETY: a holds 32 × 4 registers, b 32 × 2, c and d 32 × 4 floats, all on `dev`: what the probe reads and writes.
    unsafe { dev.launch(kernel, &p) }.unwrap();
    let d = d.to_vec().unwrap();
    let mut out = vec![vec![f32::NAN; 8]; 16];
    for lane in 0..32 {
        for i in 0..4 {
            let (r, n) = Fragment::Accumulator.at(lane, i);
            out[r][n] = d[lane * 4 + i];
        }
    }
    out
}

/// Integers small enough that every product and partial sum is exact in f32: D equals the exact product
/// whatever order the tensor core adds in, so any element taken from a wrong lane or register shows.
fn mma_probes_exact(dev: &GpuDevice) {
    let mut rng = common::rng(29);
    for (name, kernel, k, limit) in
        [("tf32 m16n8k8", &kernels::MMA_PROBE_TF32, 8, 256.0), ("bf16 m16n8k16", &kernels::MMA_PROBE_BF16, 16, 127.0)]
    {
        let (a, b, c) =
            (integers(&mut rng, 16, k, limit), integers(&mut rng, k, 8, limit), integers(&mut rng, 16, 8, 1e4));
        let c_regs = registers(&c, Fragment::Accumulator, 4, 1, f32::to_bits);
        let d = if k == 8 {
            let (ra, rb) = (
                registers(&a, Fragment::Tf32A, 4, 1, f32::to_bits),
                registers(&b, Fragment::Tf32B, 2, 1, f32::to_bits),
            );
            probe(dev, kernel, &ra, &rb, &c_regs)
        } else {
            let bf16 = |v: f32| v.to_bits() >> 16; // exact: |v| ≤ 127 has ≤ 8 significant bits
            let (ra, rb) = (registers(&a, Fragment::Bf16A, 4, 2, bf16), registers(&b, Fragment::Bf16B, 2, 2, bf16));
            probe(dev, kernel, &ra, &rb, &c_regs)
        };
        for r in 0..16 {
            for n in 0..8 {
                let exact = c[r][n] as f64 + (0..k).map(|j| a[r][j] as f64 * b[j][n] as f64).sum::<f64>();
                assert_eq!(d[r][n] as f64, exact, "{name} on {}: D[{r}][{n}]", dev.name());
            }
        }
    }
}

/// cvt.rna.tf32.f32 (nearest, ties away from zero: add half a tf32 ulp to the magnitude, clear the 13 low bits)
/// and cvt.rn.bf16x2.f32 (nearest even, as `half::bf16::from_f32`) on normal values, ties included.
fn conversions_round_as_documented(dev: &GpuDevice) {
    let mut src: Vec<f32> =
        common::rng(30).values(4000).iter().enumerate().map(|(i, v)| v * 10f32.powi(i as i32 % 9 - 4)).collect();
    for base in [1.0f32, -3.5, 1234.5, -7e-3] {
        let b = base.to_bits() & !0xffff;
        src.extend([b | 0x1000, b | 0x3000, b | 0x8000, b | 0x1_8000, b | 0x7fff].map(f32::from_bits));
    }
    let input = dev.upload(&src).unwrap();
    let (mut tf32, mut bf16x2) = (dev.zeros(src.len()).unwrap(), dev.zeros(src.len()).unwrap());
    let p = MmaProbeParams {
        src: input.addr(),
        tf32: tf32.addr_mut(),
        bf16x2: bf16x2.addr_mut(),
        n: src.len() as i32,
        ..Default::default()
    };
    // SAFETY: src, tf32 and bf16x2 hold n floats each on `dev`, what the probe reads and writes.
    unsafe { dev.launch(&kernels::MMA_PROBE_CVT, &p) }.unwrap();
    let (tf32, bf16x2) = (tf32.to_vec().unwrap(), bf16x2.to_vec().unwrap());
    for (i, &x) in src.iter().enumerate() {
        // The mma reads a .tf32 operand's top 19 bits only: compare those.
        let want_tf32 = (x.to_bits() + 0x1000) & !0x1fff;
        assert_eq!(tf32[i].to_bits() & !0x1fff, want_tf32, "cvt.rna.tf32 of {x:e} on {}", dev.name());
        let half = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
        assert_eq!(bf16x2[i].to_bits(), half(x) | half(-x) << 16, "cvt.rn.bf16x2 of {x:e} on {}", dev.name());
    }
}

#[test]
fn cuda_mma_probes_exact_on_integer_matrices() {
    let Some(dev) = cuda_device() else { return };
    mma_probes_exact(&dev);
    conversions_round_as_documented(&dev);
}

#[test]
fn emu_mma_probes_exact_on_integer_matrices() {
    let dev = GpuDevice::emulated();
    mma_probes_exact(&dev);
    conversions_round_as_documented(&dev);
}

// ---------- tensor-core convolutions against an f64 reference ----------

/// One convolution: input [n, ci, h, w], weight [co, ci, k, k].
#[derive(Clone, Copy, Debug)]
struct Shape {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
}

impl Shape {
    fn out(&self) -> (usize, usize) {
        let o = |x: usize| (x + 2 * self.pad - self.k) / self.stride + 1;
        (o(self.h), o(self.w))
    }
}

/// Odd sizes; 17–70 output channels (fragment rows 8–15 and a partial 64-channel tile); reductions of 171, 37
/// and 45 (tails of the 16-wide k tiles, and of the 8- and 16-wide mma steps).
const SHAPES: [Shape; 3] = [
    Shape { n: 2, ci: 19, h: 13, w: 11, co: 17, k: 3, stride: 1, pad: 1 },
    Shape { n: 1, ci: 37, h: 9, w: 7, co: 70, k: 1, stride: 1, pad: 0 },
    Shape { n: 3, ci: 5, h: 10, w: 9, co: 24, k: 3, stride: 2, pad: 1 },
];

/// Exact value and Σ|a·b| of each element of y, dx and dw, in f64.
struct Reference {
    y: Vec<(f64, f64)>,
    dx: Vec<(f64, f64)>,
    dw: Vec<(f64, f64)>,
}

fn reference(s: &Shape, x: &[f32], w: &[f32], dy: &[f32]) -> Reference {
    let (ho, wo) = s.out();
    let mut r = Reference {
        y: vec![(0.0, 0.0); s.n * s.co * ho * wo],
        dx: vec![(0.0, 0.0); x.len()],
        dw: vec![(0.0, 0.0); w.len()],
    };
    let add = |acc: &mut (f64, f64), a: f32, b: f32| {
        acc.0 += a as f64 * b as f64;
        acc.1 += (a as f64 * b as f64).abs();
    };
    for (img, o, c, oy, ox, ky, kx) in taps(s) {
        let (iy, ix) = ((oy * s.stride + ky) as isize - s.pad as isize, (ox * s.stride + kx) as isize - s.pad as isize);
        if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
            continue;
        }
        let xi = ((img * s.ci + c) * s.h + iy as usize) * s.w + ix as usize;
        let wi = ((o * s.ci + c) * s.k + ky) * s.k + kx;
        let yi = ((img * s.co + o) * ho + oy) * wo + ox;
        add(&mut r.y[yi], x[xi], w[wi]);
        add(&mut r.dx[xi], dy[yi], w[wi]);
        add(&mut r.dw[wi], dy[yi], x[xi]);
    }
    r
}

/// Every (image, out channel, in channel, out y, out x, ky, kx) of the convolution.
fn taps(s: &Shape) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize, usize)> + '_ {
    let (ho, wo) = s.out();
    (0..s.n * s.co * s.ci * ho * wo * s.k * s.k).map(move |mut i| {
        let mut next = |m: usize| {
            let v = i % m;
            i /= m;
            v
        };
        let (kx, ky, ox, oy, c, o) = (next(s.k), next(s.k), next(wo), next(ho), next(s.ci), next(s.co));
        (i, o, c, oy, ox, ky, kx)
    })
}

/// Every element within |got − exact| ≤ Σ|a·b| · ((1 + u)² − 1 + steps · 2^-23), u = 2^-(bits + 1) the operands'
/// rounding (tf32 10 explicit bits, bf16 7); a full f32 ulp per accumulation step because the tensor core need
/// not round to nearest when it adds. And the worst error over Σ|a·b| above `min_rel`: the operands were rounded
/// (f32 FMA kernels would stay near 2^-22).
#[track_caller]
fn check(what: &str, got: &[f32], want: &[(f64, f64)], bits: i32, steps: usize, min_rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let u = 2f64.powi(-(bits + 1));
    let per_mag = (1.0 + u) * (1.0 + u) - 1.0 + steps as f64 * 2f64.powi(-23);
    let mut worst = 0.0f64;
    for (i, (&g, &(exact, mag))) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - exact).abs();
        assert!(
            err <= mag * per_mag,
            "{what}[{i}]: got {g} want {exact} |d| {err:e} > {:e} (Σ|a·b| {mag:e})",
            mag * per_mag
        );
        if mag > 0.0 {
            worst = worst.max(err / mag);
        }
    }
    eprintln!("{what}: worst |d| / Σ|a·b| {worst:.2e}");
    assert!(worst > min_rel, "{what}: worst relative error {worst:e}: were the operands rounded?");
}

/// Forward, backward-data and backward-weight of each shape through `ops::conv2d` under `math` on `dev`.
/// bf16 rounds the forward operands only (the gradients stay tf32).
fn convs_within_mantissa_bounds(dev: &GpuDevice, math: GpuMath) {
    let gpu = Device::Gpu(dev.clone());
    let mut rng = common::rng(31);
    let forward_bits = if math == GpuMath::Bf16 { 7 } else { 10 };
    for s in SHAPES {
        let (ho, wo) = s.out();
        let x = rng.values(s.n * s.ci * s.h * s.w);
        let w = rng.values(s.co * s.ci * s.k * s.k);
        let dy = rng.values(s.n * s.co * ho * wo);
        let r = reference(&s, &x, &w, &dy);
        let on_device = |v: &[f32], shape: &[usize]| {
            Tensor::from_f32(shape, v.to_vec()).unwrap().to_device(&gpu).unwrap().requires_grad()
        };
        let (xt, wt) = (on_device(&x, &[s.n, s.ci, s.h, s.w]), on_device(&w, &[s.co, s.ci, s.k, s.k]));
        let (y, grads) = with_gpu_math(math, || {
            let y = ops::conv2d(&xt, &wt, None, s.stride, s.pad).unwrap();
            let grads = backward_with(&y, Storage::f32(dy.clone()).to_device(&gpu).unwrap()).unwrap();
            (y, grads)
        });
        let what = |part: &str| format!("{math:?} {part} {s:?} on {}", dev.name());
        let taps = s.ci * s.k * s.k;
        check(&what("y"), &y.to_f32_vec(), &r.y, forward_bits, taps, 2f64.powi(-(forward_bits + 6)));
        check(&what("dx"), &grads.get(&xt).unwrap().to_f32_vec(), &r.dx, 10, s.co * s.k * s.k, 2f64.powi(-16));
        check(&what("dw"), &grads.get(&wt).unwrap().to_f32_vec(), &r.dw, 10, s.n * ho * wo + 256, 2f64.powi(-16));
    }
}

#[test]
fn cuda_conv_tf32_within_mantissa_bounds() {
    let Some(dev) = cuda_device() else { return };
    convs_within_mantissa_bounds(&dev, GpuMath::Tf32);
}

#[test]
fn cuda_conv_bf16_within_mantissa_bounds() {
    let Some(dev) = cuda_device() else { return };
    convs_within_mantissa_bounds(&dev, GpuMath::Bf16);
}

#[test]
fn emu_conv_tf32_and_bf16_within_mantissa_bounds() {
    let dev = GpuDevice::emulated();
    convs_within_mantissa_bounds(&dev, GpuMath::Tf32);
    convs_within_mantissa_bounds(&dev, GpuMath::Bf16);
}
