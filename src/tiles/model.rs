//! The software tile unit: the Intel SDM's pseudo-code of each instruction, byte for byte.

use super::{check_dot, check_tile, configured, TileConfig, TileUnit, MAX_ROWS, MAX_ROW_BYTES, TILE_REGISTERS};

/// One tile register: 16 rows of 64 bytes.
type Register = [[u8; MAX_ROW_BYTES]; MAX_ROWS];

/// The tile unit in software: a configuration and eight 1 KiB registers.
///
/// TDPBF16PS follows the SDM's operation exactly:
/// ```text
/// for m < C.rows: tmp = C.row[m]
///   for k < A.row_bytes / 4: for n < C.row_bytes / 4:
///     tmp.f32[n] += f32(A.row[m].bf16[2k])     · f32(B.row[k].bf16[2n])
///     tmp.f32[n] += f32(A.row[m].bf16[2k + 1]) · f32(B.row[k].bf16[2n + 1])
///   C.row[m] = tmp, bytes past C.row_bytes zeroed; rows past C.rows zeroed
/// ```
/// with bf16 subnormal inputs read as zero (DAZ), each f32 result rounded to nearest even and flushed
/// to a zero of its sign when subnormal (FTZ), MXCSR ignored. Each `+=` is one rounding of the exact
/// `tmp + a·b` (a product of two bf16 values is exact; it is formed and added in f64, where the sum of a
/// 24-bit and a 16-bit significand is exact whenever it could matter, then rounded once to f32).
///
/// What the SDM leaves open, settled only by the bit-for-bit test on an AMX machine: whether the
/// hardware adds the two products of a pair one after the other (as modelled) or sums them first;
/// whether a result that is subnormal before rounding but normal after is flushed (modelled: tininess
/// after rounding, as SSE); NaN payloads (never compared).
#[derive(Clone)]
pub struct TileModel {
    cfg: Option<TileConfig>,
    regs: [Register; TILE_REGISTERS],
}

impl Default for TileModel {
    fn default() -> TileModel {
        TileModel { cfg: None, regs: [[[0; MAX_ROW_BYTES]; MAX_ROWS]; TILE_REGISTERS] }
    }
}

impl std::fmt::Debug for TileModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileModel").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// bf16 bits → f32, subnormals read as zero (DAZ).
fn bf16_daz(bits: u16) -> f32 {
    let v = f32::from_bits(u32::from(bits) << 16);
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

/// One `acc += a·b` step of TDPBF16PS: rounded once to f32, then flushed to zero when subnormal.
fn fused_step(acc: f32, a: f32, b: f32) -> f32 {
    let r = (f64::from(acc) + f64::from(a) * f64::from(b)) as f32;
    if r.is_subnormal() {
        0.0f32.copysign(r)
    } else {
        r
    }
}

impl TileModel {
    pub fn new() -> TileModel {
        TileModel::default()
    }

    fn register(&self, t: u8) -> &Register {
        &self.regs[usize::from(t)]
    }
}

impl TileUnit for TileModel {
    fn configure(&mut self, cfg: &TileConfig) {
        // LDTILECFG zeroes every tile register.
        self.regs = [[[0; MAX_ROW_BYTES]; MAX_ROWS]; TILE_REGISTERS];
        self.cfg = Some(*cfg);
    }

    fn zero<const T: u8>(&mut self) {
        check_tile(configured(&self.cfg, "tilezero"), T, "tilezero");
        self.regs[usize::from(T)] = [[0; MAX_ROW_BYTES]; MAX_ROWS];
    }

    unsafe fn load<const T: u8>(&mut self, base: *const u8, stride: usize) {
        let s = check_tile(configured(&self.cfg, "tileloadd"), T, "tileloadd");
        let (rows, bytes) = (usize::from(s.rows), usize::from(s.row_bytes));
        let reg = &mut self.regs[usize::from(T)];
        for (r, row) in reg.iter_mut().enumerate() {
            row.fill(0);
            if r < rows {
                // SAFETY: the caller vouches for rows × row_bytes readable at base + r·stride.
                let src = unsafe { std::slice::from_raw_parts(base.wrapping_add(r * stride), bytes) };
                row[..bytes].copy_from_slice(src);
            }
        }
    }

    unsafe fn store<const T: u8>(&mut self, base: *mut u8, stride: usize) {
        let s = check_tile(configured(&self.cfg, "tilestored"), T, "tilestored");
        let (rows, bytes) = (usize::from(s.rows), usize::from(s.row_bytes));
        for (r, row) in self.register(T).iter().take(rows).enumerate() {
            // SAFETY: the caller vouches for rows × row_bytes writable at base + r·stride.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.wrapping_add(r * stride), bytes) };
            dst.copy_from_slice(&row[..bytes]);
        }
    }

    fn dot_bf16<const C: u8, const A: u8, const B: u8>(&mut self) {
        let (sc, sa, _) = check_dot(configured(&self.cfg, "tdpbf16ps"), C, A, B);
        let (rows, n_len, k_len) = (usize::from(sc.rows), usize::from(sc.row_bytes) / 4, usize::from(sa.row_bytes) / 4);
        let (a, b) = (*self.register(A), *self.register(B));
        let bf16 = |row: &[u8; MAX_ROW_BYTES], i: usize| bf16_daz(u16::from_le_bytes([row[2 * i], row[2 * i + 1]]));
        let c = &mut self.regs[usize::from(C)];
        for (m, c_row) in c.iter_mut().enumerate() {
            if m >= rows {
                c_row.fill(0);
                continue;
            }
            let mut tmp: [f32; MAX_ROW_BYTES / 4] =
                std::array::from_fn(|n| f32::from_le_bytes(c_row[4 * n..4 * n + 4].try_into().expect("4 bytes")));
            for (k, b_row) in b.iter().enumerate().take(k_len) {
                let (a0, a1) = (bf16(&a[m], 2 * k), bf16(&a[m], 2 * k + 1));
                for (n, t) in tmp.iter_mut().enumerate().take(n_len) {
                    *t = fused_step(*t, a0, bf16(b_row, 2 * n));
                    *t = fused_step(*t, a1, bf16(b_row, 2 * n + 1));
                }
            }
            c_row.fill(0);
            for (n, t) in tmp.iter().enumerate().take(n_len) {
                c_row[4 * n..4 * n + 4].copy_from_slice(&t.to_le_bytes());
            }
        }
    }

    fn release(&mut self) {
        *self = TileModel::default();
    }
}

/// Random single-instruction programs, shared with the hardware comparison (`ops::conv2d::amx`'s tests:
/// this layer cannot ask `host_isa` whether the hardware may run).
#[cfg(test)]
pub(crate) mod test_programs {
    use super::super::{TileConfig, TileShape, TileUnit};
    use super::bf16_daz;
    use crate::rng::Rng;

    pub fn shape(rows: u8, row_bytes: u16) -> TileShape {
        TileShape { rows, row_bytes }
    }

    /// f32 → bf16 bits, rounded to nearest even (no NaN among the tests' values).
    pub fn bf16_bits(v: f32) -> u16 {
        let b = v.to_bits();
        ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
    }

    /// A random program of one C += A·B on the unit: C starts from loaded values, A is rows × k pairs,
    /// B k rows × n pairs; returns (A, B as bf16 bits, C before and after).
    pub struct DotCase {
        pub rows: usize,
        pub k: usize,
        pub n: usize,
        pub a: Vec<u16>,
        pub b: Vec<u16>,
        pub c0: Vec<f32>,
    }

    impl DotCase {
        pub fn random(rng: &mut Rng) -> DotCase {
            let (rows, k, n) = (1 + rng.below(16), 1 + rng.below(16), 1 + rng.below(16));
            let mut v =
                |len: usize, scale: f64| -> Vec<f32> { (0..len).map(|_| (rng.normal() * scale) as f32).collect() };
            let a = v(rows * 2 * k, 1.0).into_iter().map(bf16_bits).collect();
            let b = v(k * 2 * n, 1.0).into_iter().map(bf16_bits).collect();
            let c0 = v(rows * n, 4.0);
            DotCase { rows, k, n, a, b, c0 }
        }

        pub fn run(&self, unit: &mut impl TileUnit) -> Vec<f32> {
            let mut shapes = [TileShape::default(); 8];
            shapes[0] = shape(self.rows as u8, (4 * self.n) as u16);
            shapes[1] = shape(self.rows as u8, (4 * self.k) as u16);
            shapes[2] = shape(self.k as u8, (4 * self.n) as u16);
            unit.configure(&TileConfig::new(shapes));
            let mut c = self.c0.clone();
            // SAFETY: each buffer holds exactly rows × row_bytes of its tile at a stride of row_bytes.
            unsafe {
                unit.load::<0>(c.as_ptr().cast(), 4 * self.n);
                unit.load::<1>(self.a.as_ptr().cast(), 4 * self.k);
                unit.load::<2>(self.b.as_ptr().cast(), 4 * self.n);
            }
            unit.dot_bf16::<0, 1, 2>();
            // SAFETY: as the loads.
            unsafe { unit.store::<0>(c.as_mut_ptr().cast(), 4 * self.n) };
            unit.release();
            c
        }

        /// The exact f64 sum of C and the products, and the bound of the f32 roundings of its 2k additions.
        pub fn exact(&self, m: usize, j: usize) -> (f64, f64) {
            let f = |bits: u16| f64::from(bf16_daz(bits));
            let mut sum = f64::from(self.c0[m * self.n + j]);
            let mut mag = sum.abs();
            for p in 0..self.k {
                for h in 0..2 {
                    let prod = f(self.a[m * 2 * self.k + 2 * p + h]) * f(self.b[p * 2 * self.n + 2 * j + h]);
                    sum += prod;
                    mag += prod.abs();
                }
            }
            (sum, mag * (2 * self.k) as f64 * f64::from(f32::EPSILON))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::TileShape;
    use super::test_programs::{bf16_bits, shape, DotCase};
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn tile_config_is_the_64_byte_palette_1_operand() {
        let mut shapes = [TileShape::default(); 8];
        shapes[0] = shape(16, 64);
        shapes[7] = shape(3, 12);
        let cfg = TileConfig::new(shapes);
        let b = cfg.as_bytes();
        assert_eq!((b[0], b[1]), (1, 0));
        assert!(b[2..16].iter().all(|&x| x == 0));
        assert_eq!(u16::from_le_bytes([b[16], b[17]]), 64);
        assert_eq!(u16::from_le_bytes([b[16 + 14], b[16 + 15]]), 12);
        assert_eq!((b[48], b[48 + 7]), (16, 3));
        assert_eq!(cfg.shape(7), shape(3, 12));
        assert_eq!(std::mem::align_of::<TileConfig>(), 64);
    }

    #[test]
    fn tile_config_refuses_what_palette_1_cannot_hold() {
        for bad in [shape(17, 64), shape(16, 68), shape(4, 6), shape(0, 8), shape(3, 0)] {
            let mut shapes = [TileShape::default(); 8];
            shapes[2] = bad;
            let err = std::panic::catch_unwind(|| TileConfig::new(shapes)).expect_err("accepted a bad shape");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("tmm2"), "{bad:?}: {msg}");
        }
    }

    #[test]
    fn tile_dot_refuses_mismatched_shapes_naming_the_tiles() {
        let cases = [
            ([shape(4, 64), shape(5, 32), shape(8, 64)], "tmm0 has 4 rows, tmm1 5"),
            ([shape(4, 60), shape(4, 32), shape(8, 64)], "tmm0 rows are 60 bytes, tmm2 rows 64"),
            ([shape(4, 64), shape(4, 28), shape(8, 64)], "tmm1 rows are 28 bytes, 4 × tmm2's 8 rows"),
        ];
        for (s, want) in cases {
            let mut shapes = [TileShape::default(); 8];
            shapes[..3].copy_from_slice(&s);
            let mut t = TileModel::new();
            t.configure(&TileConfig::new(shapes));
            let err = std::panic::catch_unwind(move || t.dot_bf16::<0, 1, 2>()).expect_err("accepted bad shapes");
            let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains(want), "{msg}");
        }
        let err = std::panic::catch_unwind(|| TileModel::new().zero::<0>()).expect_err("ran unconfigured");
        assert!(err.downcast_ref::<String>().is_some_and(|m| m.contains("not configured")));
    }

    #[test]
    fn tile_load_and_store_follow_the_stride_and_zero_the_rest() {
        let mut shapes = [TileShape::default(); 8];
        shapes[3] = shape(5, 12);
        shapes[4] = shape(16, 64);
        let mut t = TileModel::new();
        t.configure(&TileConfig::new(shapes));
        let src: Vec<u8> = (0..200u8).collect();
        let stride = 37;
        // SAFETY: 5 rows of 12 bytes at r·37 lie inside the 200 bytes.
        unsafe { t.load::<3>(src.as_ptr(), stride) };
        let reg = t.register(3);
        for r in 0..MAX_ROWS {
            for c in 0..MAX_ROW_BYTES {
                let want = if r < 5 && c < 12 { src[r * stride + c] } else { 0 };
                assert_eq!(reg[r][c], want, "row {r} byte {c}");
            }
        }
        let mut dst = vec![0xaau8; 200];
        // SAFETY: as the load, on a buffer of the same size.
        unsafe { t.store::<3>(dst.as_mut_ptr(), stride) };
        for (i, &d) in dst.iter().enumerate() {
            let inside = i / stride < 5 && i % stride < 12;
            assert_eq!(d, if inside { src[i] } else { 0xaa }, "byte {i}");
        }
        // A full load, then TILEZERO.
        let big = vec![7u8; 64 * 16];
        // SAFETY: 16 rows of 64 bytes at r·64.
        unsafe { t.load::<4>(big.as_ptr(), 64) };
        assert!(t.register(4).iter().flatten().all(|&b| b == 7));
        t.zero::<4>();
        assert!(t.register(4).iter().flatten().all(|&b| b == 0));
    }

    #[test]
    fn tile_dot_bf16_matches_the_f64_sum_of_the_rounded_operands() {
        let mut rng = Rng::for_tests(24);
        for _ in 0..200 {
            let case = DotCase::random(&mut rng);
            let c = case.run(&mut TileModel::new());
            for m in 0..case.rows {
                for j in 0..case.n {
                    let (want, bound) = case.exact(m, j);
                    let got = f64::from(c[m * case.n + j]);
                    assert!((got - want).abs() <= bound, "({m}, {j}): {got} vs {want} ± {bound}");
                }
            }
        }
    }

    #[test]
    fn tile_dot_bf16_reads_subnormal_inputs_as_zero_and_flushes_subnormal_results() {
        let mut shapes = [TileShape::default(); 8];
        shapes[0] = shape(1, 4);
        shapes[1] = shape(1, 4);
        shapes[2] = shape(1, 4);
        let cfg = TileConfig::new(shapes);
        let run = |c: f32, a: [u16; 2], b: [u16; 2]| {
            let mut t = TileModel::new();
            t.configure(&cfg);
            let mut out = c;
            // SAFETY: each buffer holds one 4-byte row.
            unsafe {
                t.load::<0>((&out as *const f32).cast(), 4);
                t.load::<1>(a.as_ptr().cast(), 4);
                t.load::<2>(b.as_ptr().cast(), 4);
                t.dot_bf16::<0, 1, 2>();
                t.store::<0>((&mut out as *mut f32).cast(), 4);
            }
            out
        };
        let one = bf16_bits(1.0);
        // A subnormal bf16 (exponent 0, significand 1) times one reads as 0.
        assert_eq!(run(0.0, [0x0001, 0], [one, 0]).to_bits(), 0);
        assert_eq!(run(2.5, [0x8001, one], [one, one]), 3.5);
        // 2⁻⁶⁴ · 2⁻⁶⁴ = 2⁻¹²⁸ is subnormal in f32: flushed (sign kept).
        let tiny = bf16_bits(2f32.powi(-64));
        assert_eq!(run(0.0, [tiny, 0], [tiny, 0]).to_bits(), 0);
        // (The second product, −0 · 0, keeps the sum −0.)
        assert_eq!(run(-0.0, [tiny | 0x8000, 0x8000], [tiny, 0]).to_bits(), (-0.0f32).to_bits());
        // The smallest normal stays.
        let min = bf16_bits(2f32.powi(-63));
        assert_eq!(run(0.0, [min, 0], [min, 0]), 2f32.powi(-126));
        // Round to nearest even: 1 + 2⁻²⁴ is a tie between 1 and 1 + 2⁻²³.
        let (e12, e1) = (bf16_bits(2f32.powi(-12)), bf16_bits(1.0));
        assert_eq!(run(1.0, [e12, 0], [e12, 0]), 1.0);
        assert_eq!(run(1.0 + 2f32.powi(-23), [e12, 0], [e12, 0]), 1.0 + 2f32.powi(-22));
        assert_eq!(run(1.0, [e1, e1], [e1, e1]), 3.0);
    }
}
