//! Finite-difference gradient checking in f64: analytic vector-Jacobian products from the tape
//! against central differences of ⟨f(x), r⟩ for a random r.

use crate::autograd::{backward_with, no_grad};
use crate::rng::Rng;
use crate::tensor::{Storage, Tensor};
use anyhow::{bail, Result};

/// Worst disagreement per input: max |analytic − numeric| / max(1, max |numeric|).
#[derive(Debug, Clone)]
pub struct GradCheck {
    pub errors: Vec<f64>,
    pub checked: usize,
}

impl GradCheck {
    pub fn worst(&self) -> f64 {
        self.errors.iter().cloned().fold(0.0, f64::max)
    }
}

/// Options: finite-difference step and, for big inputs, how many coordinates to probe per input.
pub struct GradCheckOptions {
    pub step: f64,
    pub max_probes: usize,
    pub seed: u64,
    /// Test hook: scales the analytic gradient of input 0 coordinate 0, to prove a check can fail.
    pub perturb_analytic: Option<f64>,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        GradCheckOptions { step: 1e-6, max_probes: 64, seed: 7, perturb_analytic: None }
    }
}

fn inner(a: &Tensor, r: &[f64]) -> f64 {
    a.to_f64_vec().iter().zip(r).map(|(x, y)| x * y).sum()
}

/// Checks `f`'s gradients w.r.t. every input (all f64). `f` must be deterministic and pure.
pub fn check(f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], opt: &GradCheckOptions) -> Result<GradCheck> {
    let xs: Vec<Tensor> = inputs.iter().map(|t| t.detach().requires_grad()).collect();
    for x in &xs {
        if x.dtype() != crate::DType::F64 {
            bail!("gradcheck: inputs must be f64, got {:?}", x);
        }
    }
    let out = f(&xs)?;
    let mut rng = Rng::new(opt.seed);
    let r: Vec<f64> = (0..out.numel()).map(|_| rng.normal()).collect();
    let grads = backward_with(&out, Storage::f64(r.clone()))?;
    let mut errors = Vec::new();
    let mut checked = 0;
    for (i, x) in xs.iter().enumerate() {
        let mut analytic = match grads.get(x) {
            Some(g) => g.to_f64_vec(),
            None => vec![0.0; x.numel()],
        };
        if i == 0 {
            if let Some(k) = opt.perturb_analytic {
                analytic[0] = analytic[0] * k + 1e-3;
            }
        }
        let n = x.numel();
        let probes: Vec<usize> =
            if n <= opt.max_probes { (0..n).collect() } else { (0..opt.max_probes).map(|_| rng.below(n)).collect() };
        let base = x.to_f64_vec();
        let mut worst = 0.0f64;
        let mut scale = 1.0f64;
        for &j in &probes {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let mut args: Vec<Tensor> = xs.iter().map(|t| t.detach()).collect();
                args[i] = Tensor::from_f64(x.shape(), v)?;
                no_grad(|| f(&args)).map(|o| inner(&o, &r))
            };
            let numeric = (eval(opt.step)? - eval(-opt.step)?) / (2.0 * opt.step);
            scale = scale.max(numeric.abs());
            worst = worst.max((analytic[j] - numeric).abs());
            checked += 1;
        }
        errors.push(worst / scale);
    }
    Ok(GradCheck { errors, checked })
}
