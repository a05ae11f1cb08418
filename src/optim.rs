//! Optimizers as tape-free in-place updates, PyTorch semantics (torch.optim.Adam / SGD).
//!
//! Parameters are passed in a fixed order (the model's state_dict order); the optimizer state is
//! kept per position and can be exported/imported for checkpoints.

use crate::by_dtype;
use crate::float::{typed, typed_mut, Float};
use crate::host::HostTensor;
use crate::tensor::{CpuStorage, Storage, Tensor};
use anyhow::{bail, Result};

fn check_grads(op: &str, params: &[&mut Tensor], grads: &[&Storage]) -> Result<()> {
    if params.len() != grads.len() {
        bail!("{op}: {} parameters but {} gradients", params.len(), grads.len());
    }
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        if p.device() != g.device() {
            bail!("{op}: device mismatch: parameter {i} {:?} on {} vs its gradient on {}", p.shape(), p.device(), g.device());
        }
        if p.numel() != g.len() || p.dtype() != g.dtype() {
            bail!("{op}: gradient {i} {:?}[{}] does not fit parameter {:?}", g.dtype(), g.len(), p);
        }
    }
    Ok(())
}

/// Zeros shaped like each parameter (lazily created optimizer state), on the parameter's device.
fn zeros_like(params: &[&mut Tensor]) -> Result<Vec<Storage>> {
    params
        .iter()
        .map(|p| match p.device() {
            crate::Device::Cpu => Ok(Storage::zeros(p.dtype(), p.numel())),
            crate::Device::Gpu(d) => Ok(Storage::Gpu(d.zeros(p.numel())?)),
        })
        .collect()
}

/// Moves optimizer state to its parameter's device (state loaded from a checkpoint, or a model moved
/// after the first step).
fn follow_params(state: &mut [Storage], params: &[&mut Tensor]) -> Result<()> {
    for (s, p) in state.iter_mut().zip(params) {
        if s.device() != p.device() {
            *s = s.to_device(&p.device())?;
        }
    }
    Ok(())
}

/// Not `Clone`: its state can live in device memory.
#[derive(Debug)]
pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    exp_avg: Vec<Storage>,
    exp_avg_sq: Vec<Storage>,
}

impl Adam {
    pub fn new(lr: f64, weight_decay: f64) -> Adam {
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step: 0, exp_avg: vec![], exp_avg_sq: vec![] }
    }

    /// One step: g += wd·p; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
    /// p −= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("adam", params, grads)?;
        if self.exp_avg.is_empty() {
            self.exp_avg = zeros_like(params)?;
            self.exp_avg_sq = zeros_like(params)?;
        } else if self.exp_avg.len() != params.len() {
            bail!("adam: state holds {} parameters, step got {}", self.exp_avg.len(), params.len());
        }
        follow_params(&mut self.exp_avg, params)?;
        follow_params(&mut self.exp_avg_sq, params)?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = self.lr / bc1;
        for (i, p) in params.iter_mut().enumerate() {
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            if p.device().is_gpu() {
                // lr/(1−β1ᵗ) rounded once from f64 as on the CPU, with the kernel's division made exact.
                let h = gpu::Hyper { lr: step_size, weight_decay: self.weight_decay, beta1: self.beta1, beta2: self.beta2, eps: self.eps, bc1: 1.0, bc2_sqrt, ..Default::default() };
                gpu::step(&crate::cuda::kernels::ADAM_STEP, p, grads[i], &h, Some(m), Some(v), None)?;
                continue;
            }
            by_dtype!(p.dtype(), T => {
                let g: &[T] = typed(grads[i]);
                let (m, v) = (typed_mut::<T>(m), typed_mut::<T>(v));
                let (b1, b2, wd) = (T::from_f64(self.beta1), T::from_f64(self.beta2), T::from_f64(self.weight_decay));
                let (eps, ss, bc2s) = (T::from_f64(self.eps), T::from_f64(step_size), T::from_f64(bc2_sqrt));
                p.update(|s| {
                    for (((pv, &gv), mv), vv) in typed_mut::<T>(s).iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                        let gv = if self.weight_decay != 0.0 { gv + wd * *pv } else { gv };
                        *mv = *mv + (T::ONE - b1) * (gv - *mv);
                        *vv = b2 * *vv + (T::ONE - b2) * gv * gv;
                        let denom = vv.sqrt() / bc2s + eps;
                        *pv -= ss * (*mv / denom);
                    }
                })?;
            });
        }
        Ok(())
    }

    /// State for checkpoints: `exp_avg.{i}`, `exp_avg_sq.{i}` and `step`.
    pub fn state(&self) -> Vec<(String, HostTensor)> {
        let mut out = vec![("step".to_string(), HostTensor::i64(vec![], vec![self.step as i64]))];
        for (i, (m, v)) in self.exp_avg.iter().zip(&self.exp_avg_sq).enumerate() {
            out.push((format!("exp_avg.{i}"), storage_host(m)));
            out.push((format!("exp_avg_sq.{i}"), storage_host(v)));
        }
        out
    }

    pub fn load_state(&mut self, state: &[(String, HostTensor)], params: &[&Tensor]) -> Result<()> {
        let step = find(state, "step")?;
        self.step = step.to_f64_vec().first().copied().unwrap_or(0.0) as u64;
        self.exp_avg.clear();
        self.exp_avg_sq.clear();
        if self.step == 0 {
            return Ok(());
        }
        for (i, p) in params.iter().enumerate() {
            self.exp_avg.push(host_storage(find(state, &format!("exp_avg.{i}"))?, p)?);
            self.exp_avg_sq.push(host_storage(find(state, &format!("exp_avg_sq.{i}"))?, p)?);
        }
        Ok(())
    }
}

/// Not `Clone`: its state can live in device memory.
#[derive(Debug)]
pub struct Sgd {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    buf: Vec<Storage>,
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64, nesterov: bool) -> Sgd {
        Sgd { lr, momentum, dampening: 0.0, weight_decay, nesterov, buf: vec![] }
    }

    /// d = g + wd·p; buf = d (first step) or μ·buf + (1−dampening)·d; d = d + μ·buf (nesterov) or buf;
    /// p −= lr·d.
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("sgd", params, grads)?;
        let first = self.buf.is_empty();
        if first && self.momentum != 0.0 {
            self.buf = zeros_like(params)?;
        }
        follow_params(&mut self.buf, params)?;
        for (i, p) in params.iter_mut().enumerate() {
            if p.device().is_gpu() {
                let h = gpu::Hyper {
                    lr: self.lr,
                    weight_decay: self.weight_decay,
                    momentum: self.momentum,
                    dampening: self.dampening,
                    nesterov: self.nesterov,
                    first_step: first,
                    ..Default::default()
                };
                gpu::step(&crate::cuda::kernels::SGD_STEP, p, grads[i], &h, None, None, self.buf.get_mut(i))?;
                continue;
            }
            by_dtype!(p.dtype(), T => {
                let g: &[T] = typed(grads[i]);
                let (mu, damp, wd, lr) = (T::from_f64(self.momentum), T::from_f64(self.dampening), T::from_f64(self.weight_decay), T::from_f64(self.lr));
                let mut buf = self.buf.get_mut(i).map(typed_mut::<T>);
                p.update(|s| {
                    for (j, pv) in typed_mut::<T>(s).iter_mut().enumerate() {
                        let mut d = g[j];
                        if self.weight_decay != 0.0 {
                            d += wd * *pv;
                        }
                        if let Some(b) = buf.as_deref_mut() {
                            b[j] = if first { d } else { mu * b[j] + (T::ONE - damp) * d };
                            d = if self.nesterov { d + mu * b[j] } else { b[j] };
                        }
                        *pv -= lr * d;
                    }
                })?;
            });
        }
        Ok(())
    }

    pub fn state(&self) -> Vec<(String, HostTensor)> {
        self.buf.iter().enumerate().map(|(i, b)| (format!("momentum_buffer.{i}"), storage_host(b))).collect()
    }

    pub fn load_state(&mut self, state: &[(String, HostTensor)], params: &[&Tensor]) -> Result<()> {
        self.buf.clear();
        if state.is_empty() {
            return Ok(());
        }
        for (i, p) in params.iter().enumerate() {
            self.buf.push(host_storage(find(state, &format!("momentum_buffer.{i}"))?, p)?);
        }
        Ok(())
    }
}

fn storage_host(s: &Storage) -> HostTensor {
    match s {
        Storage::Gpu(_) => HostTensor::f32(vec![s.len()], s.to_f32_vec()),
        Storage::Cpu(CpuStorage::F32(v)) => HostTensor::f32(vec![v.len()], v.clone()),
        Storage::Cpu(CpuStorage::F64(v)) => HostTensor { shape: vec![v.len()], data: crate::host::HostData::F64(v.clone()) },
    }
}

fn host_storage(h: &HostTensor, like: &Tensor) -> Result<Storage> {
    if h.numel() != like.numel() {
        bail!("optimizer state: {} values for a parameter of shape {:?}", h.numel(), like.shape());
    }
    Storage::f64(h.to_f64_vec()).cast(like.dtype())?.to_device(&like.device())
}

fn find<'a>(state: &'a [(String, HostTensor)], key: &str) -> Result<&'a HostTensor> {
    state.iter().find(|(k, _)| k == key).map(|(_, v)| v).ok_or_else(|| anyhow::anyhow!("optimizer state: missing `{key}`"))
}

#[allow(dead_code)]
fn _assert_float<T: Float>() {}

/// Adam / SGD on a GPU device: one `adam_step` / `sgd_step` launch per parameter, updating the
/// parameter and the optimizer state in place.
mod gpu {
    use crate::cuda::kernels::Kernel;
    use crate::cuda::params::OptimParams;
    use crate::tensor::{Storage, Tensor};
    use anyhow::{anyhow, Result};

    #[derive(Default)]
    pub(super) struct Hyper {
        pub lr: f64,
        pub weight_decay: f64,
        pub beta1: f64,
        pub beta2: f64,
        pub eps: f64,
        pub bc1: f64,
        pub bc2_sqrt: f64,
        pub momentum: f64,
        pub dampening: f64,
        pub nesterov: bool,
        pub first_step: bool,
    }

    pub(super) fn step(
        kernel: &'static Kernel<OptimParams>,
        param: &mut Tensor,
        grad: &Storage,
        h: &Hyper,
        exp_avg: Option<&mut Storage>,
        exp_avg_sq: Option<&mut Storage>,
        momentum_buf: Option<&mut Storage>,
    ) -> Result<()> {
        let op = kernel.name;
        let addr = |s: Option<&mut Storage>| -> Result<u64> { s.map(|s| s.gpu_mut(op).map(|b| b.addr_mut())).transpose().map(|a| a.unwrap_or(0)) };
        let mut p = OptimParams {
            grad: grad.gpu(op)?.addr(),
            exp_avg: addr(exp_avg)?,
            exp_avg_sq: addr(exp_avg_sq)?,
            momentum_buf: addr(momentum_buf)?,
            n: param.numel() as i64,
            lr: h.lr as f32,
            weight_decay: h.weight_decay as f32,
            beta1: h.beta1 as f32,
            beta2: h.beta2 as f32,
            eps: h.eps as f32,
            bias_correction1: h.bc1 as f32,
            bias_correction2_sqrt: h.bc2_sqrt as f32,
            momentum: h.momentum as f32,
            dampening: h.dampening as f32,
            nesterov: h.nesterov as i32,
            first_step: h.first_step as i32,
            pad_: 0,
            param: 0,
        };
        let mut result = Err(anyhow!("{op}: parameter {:?} is not on the GPU", param.shape()));
        param.update(|s| {
            result = (|| {
                let b = s.gpu_mut(op)?;
                p.param = b.addr_mut();
                let dev = b.device().clone();
                // SAFETY: param, grad and the state hold n floats on `dev` (checked by the caller: check_grads,
                // zeros_like / follow_params for the state).
                unsafe { dev.launch(kernel, &p) }
            })();
        })?;
        result
    }
}
