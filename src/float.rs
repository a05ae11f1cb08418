//! The element types the CPU engine computes in: f32 (training and inference) and f64 (exact gradient checks),
//! and bf16 rounding of f32 values (the bf16 convs' operands).

use crate::storage::{CpuStorage, Storage};

/// A floating-point element type the CPU kernels are generic over.
pub trait Float:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// The typed view of a storage of this element type (None for another dtype).
    fn of(s: &Storage) -> Option<&[Self]>;
    fn of_mut(s: &mut Storage) -> Option<&mut [Self]>;
    fn into_storage(v: Vec<Self>) -> Storage;
    /// `dst = lhs·rhs (+ dst when accumulate)` with explicit row/column strides (`dst_cs = 1`: a row-major
    /// destination); a column-major destination stops the gemm crate from transposing the problem, which
    /// decides which operand it packs as its LHS.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize, n: usize, k: usize, dst: &mut [Self], dst_rs: isize, dst_cs: isize, accumulate: bool, lhs: &[Self],
        lhs_rs: isize, lhs_cs: isize, rhs: &[Self], rhs_rs: isize, rhs_cs: isize, threads: usize,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        // Bounds of the strided views, checked once so the unsafe call below stays in range.
        let span =
            |rows: usize, cols: usize, rs: isize, cs: isize| (rows as isize - 1) * rs + (cols as isize - 1) * cs + 1;
        assert!(span(m, n, dst_rs, dst_cs) as usize <= dst.len(), "gemm: dst too small");
        if k == 0 {
            if !accumulate {
                for r in 0..m {
                    for c in 0..n {
                        dst[r * dst_rs as usize + c * dst_cs as usize] = Self::ZERO;
                    }
                }
            }
            return;
        }
        assert!(span(m, k, lhs_rs, lhs_cs) as usize <= lhs.len(), "gemm: lhs too small");
        assert!(span(k, n, rhs_rs, rhs_cs) as usize <= rhs.len(), "gemm: rhs too small");
        let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        // SAFETY: the three views were bounds-checked above; dst does not alias lhs/rhs (&mut).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst.as_mut_ptr(),
                dst_cs,
                dst_rs,
                accumulate,
                lhs.as_ptr(),
                lhs_cs,
                lhs_rs,
                rhs.as_ptr(),
                rhs_cs,
                rhs_rs,
                Self::ONE,
                Self::ONE,
                false,
                false,
                false,
                par,
            )
        }
    }
}

macro_rules! impl_float {
    ($t:ty, $V:ident) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn max(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn of(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::Cpu(CpuStorage::$V(v)) => Some(v),
                    _ => None,
                }
            }
            fn of_mut(s: &mut Storage) -> Option<&mut [Self]> {
                match s {
                    Storage::Cpu(CpuStorage::$V(v)) => Some(v),
                    _ => None,
                }
            }
            fn into_storage(v: Vec<Self>) -> Storage {
                Storage::Cpu(CpuStorage::$V(v))
            }
        }
    };
}
impl_float!(f32, F32);
impl_float!(f64, F64);

/// Runs `$body` with the type alias `$T` bound to the element type of `$dtype`.
#[macro_export]
macro_rules! by_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::storage::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::storage::DType::F64 => {
                type $T = f64;
                $body
            }
        }
    };
}

/// `v` rounded to the nearest bf16 (ties to even), as an f32: the top 16 bits kept. NaN stays NaN;
/// values beyond bf16's largest finite round to ±∞, as the hardware conversion does.
pub fn round_bf16(v: f32) -> f32 {
    if v.is_nan() {
        return v;
    }
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    f32::from_bits(rounded & 0xffff_0000)
}

/// Every value of `v` rounded to bf16 in place.
pub fn round_bf16_slice(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = round_bf16(*x));
}

/// Typed read-only view; callers have checked the dtype (an op's inputs share one).
pub fn typed<T: Float>(s: &Storage) -> &[T] {
    T::of(s).expect("dtype checked by the op")
}
pub fn typed_mut<T: Float>(s: &mut Storage) -> &mut [T] {
    T::of_mut(s).expect("dtype checked by the op")
}

/// Elements per task of [`par_zip`]: 64 KiB of f32, so a batch-8 64×64 map splits into dozens of tasks.
const PAR_CHUNK: usize = 16 * 1024;

/// `f` over matching chunks of `out` and of each input (each at least as long as `out`), spread over
/// the rayon threads when `out` is large. The elementwise passes of a training step (ReLU masks,
/// residual adds, gradient accumulation) are memory-bound, but on the calling thread alone they left
/// the other cores idle between the conv kernels' parallel loops. Element-wise results, so the
/// split changes no value.
pub fn par_zip<T: Send, U: Sync, const N: usize>(
    out: &mut [T], ins: [&[U]; N], f: impl Fn(&mut [T], [&[U]; N]) + Sync + Send,
) {
    use rayon::prelude::*;
    if out.len() < 2 * PAR_CHUNK {
        return f(out, ins);
    }
    out.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(i, o)| {
        let start = i * PAR_CHUNK;
        f(o, ins.map(|x| &x[start..start + o.len()]));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_zip_equals_one_serial_pass_on_split_and_unsplit_lengths() {
        for len in [5, 2 * PAR_CHUNK + 77, 5 * PAR_CHUNK] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut got = vec![f32::NAN; len];
            par_zip(&mut got, [&a[..], &b[..]], |o, [a, b]| {
                o.iter_mut().zip(a.iter().zip(b)).for_each(|(o, (x, y))| *o = x * y + 1.0)
            });
            let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y + 1.0).collect();
            assert_eq!(got, want, "len {len}");
        }
    }
}
