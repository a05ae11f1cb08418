//! Running CUDA kernels under the host emulator from the kernel tests.

use hrk::cuda::emu;
use hrk::cuda::kernels::Kernel;
use hrk::cuda::params::Conv2dParams;

/// Launches `k` with `p` under the emulator; a launch error fails the test with the kernel's name.
pub fn run<P: Copy>(k: &Kernel<P>, p: &P) {
    // SAFETY: every caller builds `p` from `addr`/`addr_mut` of live host buffers sized for the
    // launch's shape, which is the contract `emu::launch` needs.
    unsafe { emu::launch(k, p) }.unwrap_or_else(|e| panic!("{}: {e}", k.name));
}

/// A convolution case of the kernel tests: NCHW input n×ci×h×w, co output channels, k×k taps.
#[derive(Clone, Copy, Debug)]
pub struct ConvCase {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvCase {
    pub fn out(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.k) / self.stride + 1, (self.w + 2 * self.pad - self.k) / self.stride + 1)
    }
    /// The kernel parameters' shape fields (the pointers are the caller's).
    pub fn params(&self) -> Conv2dParams {
        let (ho, wo) = self.out();
        Conv2dParams::new(
            "conv case",
            [self.n, self.ci, self.h, self.w],
            self.co,
            self.k,
            self.stride,
            self.pad,
            [ho, wo],
        )
        .unwrap()
    }
    pub fn x_len(&self) -> usize {
        self.n * self.ci * self.h * self.w
    }
    pub fn w_len(&self) -> usize {
        self.co * self.ci * self.k * self.k
    }
    pub fn y_len(&self) -> usize {
        let (ho, wo) = self.out();
        self.n * self.co * ho * wo
    }
    /// Calls `f(x index, w index, y index)` for every product of the convolution (padding taps skipped).
    pub fn for_each_tap(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = self.out();
        for img in 0..self.n {
            for co in 0..self.co {
                for oh in 0..ho {
                    for ow in 0..wo {
                        let yi = ((img * self.co + co) * ho + oh) * wo + ow;
                        for ci in 0..self.ci {
                            for r in 0..self.k {
                                for s in 0..self.k {
                                    let ih = (oh * self.stride + r) as isize - self.pad as isize;
                                    let iw = (ow * self.stride + s) as isize - self.pad as isize;
                                    if ih < 0 || iw < 0 || ih as usize >= self.h || iw as usize >= self.w {
                                        continue;
                                    }
                                    let xi = ((img * self.ci + ci) * self.h + ih as usize) * self.w + iw as usize;
                                    f(xi, ((co * self.ci + ci) * self.k + r) * self.k + s, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
