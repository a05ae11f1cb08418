//! Multiply-adds of the network's convs for one image, counted by walking the plan with conv shapes
//! (resizes, sums and BN are not counted: they are a rounding error next to the convs).

use super::plan::Plan;
use super::walk::{self, Executor, Term};
use crate::ops::Conv2dGeom;
use anyhow::Result;

/// What counting needs of a conv: its weight shape and geometry.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub wshape: [usize; 4],
    pub stride: usize,
    pub pad: usize,
}

/// Activations are their dims [1, c, h, w]; the count is the sum over the convs met.
struct MacCounter {
    total: u64,
}

impl MacCounter {
    fn count(&mut self, c: &ConvShape, x: &[usize; 4]) -> Result<[usize; 4]> {
        let g = Conv2dGeom::new(*x, &c.wshape, c.stride, c.pad)?;
        self.total += g.macs();
        Ok([1, g.cout, g.ho, g.wo])
    }
}

impl Executor for MacCounter {
    type Act = [usize; 4];
    type Conv = ConvShape;
    type Row = ();

    fn conv(&mut self, c: &ConvShape, x: &[usize; 4]) -> Result<[usize; 4]> {
        self.count(c, x)
    }
    fn block_out(
        &mut self, last: &ConvShape, y: &[usize; 4], x: &[usize; 4], downsample: Option<&ConvShape>,
    ) -> Result<[usize; 4]> {
        let out = self.count(last, y)?;
        if let Some(d) = downsample {
            self.count(d, x)?;
        }
        Ok(out)
    }
    fn copy(&mut self, x: &[usize; 4]) -> Result<[usize; 4]> {
        Ok(*x)
    }
    fn row_begin(&mut self, _row: usize, _target: &[usize; 4]) -> Result<()> {
        Ok(())
    }
    fn row_identity(&mut self, _sum: &mut (), _y: &[usize; 4], _term: Term) -> Result<()> {
        Ok(())
    }
    fn row_up(
        &mut self, _sum: &mut (), c: &ConvShape, y: &[usize; 4], _target: &[usize; 4], _term: Term,
    ) -> Result<()> {
        self.count(c, y).map(drop)
    }
    fn row_down(&mut self, _sum: &mut (), last_link: &ConvShape, y: &[usize; 4], _term: Term) -> Result<()> {
        self.count(last_link, y).map(drop)
    }
    fn row_end(&mut self, _sum: (), target: &[usize; 4]) -> Result<[usize; 4]> {
        Ok(*target)
    }
    fn head_input(&mut self, branches: &[[usize; 4]]) -> Result<[usize; 4]> {
        let [n, _, h, w] = branches[0];
        Ok([n, branches.iter().map(|d| d[1]).sum(), h, w])
    }
}

/// Multiply-adds of all convs for one `h`×`w` image, head included.
pub fn macs(plan: &Plan<ConvShape>, h: usize, w: usize) -> Result<u64> {
    let mut counter = MacCounter { total: 0 };
    walk::forward(plan, &mut counter, [1, 3, h, w])?;
    Ok(counter.total)
}

/// Multiply-adds of the first conv (its input needs no gradient in training).
pub fn first_conv_macs(plan: &Plan<ConvShape>, h: usize, w: usize) -> Result<u64> {
    let s = &plan.stem[0];
    Ok(Conv2dGeom::new([1, 3, h, w], &s.wshape, s.stride, s.pad)?.macs())
}
