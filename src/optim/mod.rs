//! Optimizers as tape-free in-place updates, PyTorch semantics (torch.optim.Adam / SGD).
//!
//! Parameters are passed in a fixed order (the model's state_dict order); the optimizer state is
//! kept per position and can be exported/imported for checkpoints.

mod cpu_kernel;
mod cuda_kernel;

use crate::host::HostTensor;
use crate::ops::{kernels_for, Cpu, Cuda};
use crate::tensor::{CpuStorage, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// One step's hyper-parameters, as both devices' kernels take them (Adam reads lr, weight_decay, beta1,
/// beta2, eps, bc2_sqrt; SGD lr, weight_decay, momentum, dampening, nesterov, first_step).
#[derive(Default)]
pub(crate) struct Hyper {
    /// Adam: lr/(1−β1ᵗ), rounded once from f64.
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// √(1−β2ᵗ).
    pub bc2_sqrt: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
    /// SGD: the momentum buffer starts as a copy of the step.
    pub first_step: bool,
}

/// The update rules of one device, applied to one parameter in place (shapes, dtypes and devices checked
/// by the optimizers).
pub(crate) trait OptimKernel: Sync {
    /// `m`, `v`: the first and second moment estimates (exp_avg, exp_avg_sq).
    fn adam(&self, p: &mut Tensor, grad: &Storage, m: &mut Storage, v: &mut Storage, h: &Hyper) -> Result<()>;
    /// `momentum_buf` is None without momentum.
    fn sgd(&self, param: &mut Tensor, grad: &Storage, momentum_buf: Option<&mut Storage>, h: &Hyper) -> Result<()>;
}

fn kernels(device: &Device) -> &'static dyn OptimKernel {
    kernels_for(device, &Cpu, &Cuda)
}

fn check_grads(op: &str, params: &[&mut Tensor], grads: &[&Storage]) -> Result<()> {
    if params.len() != grads.len() {
        bail!("{op}: {} parameters but {} gradients", params.len(), grads.len());
    }
    for (i, (p, g)) in params.iter().zip(grads).enumerate() {
        if p.device() != g.device() {
            bail!(
                "{op}: device mismatch: parameter {i} {:?} on {} vs its gradient on {}",
                p.shape(),
                p.device(),
                g.device()
            );
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
        // lr/(1−β1ᵗ) rounded once from f64, the bias correction of v applied as √(1−β2ᵗ).
        let h = Hyper {
            lr: step_size,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bc2_sqrt,
            ..Default::default()
        };
        for (i, p) in params.iter_mut().enumerate() {
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            kernels(&p.device()).adam(p, grads[i], m, v, &h)?;
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
        let h = Hyper {
            lr: self.lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            first_step: first,
            ..Default::default()
        };
        for (i, p) in params.iter_mut().enumerate() {
            kernels(&p.device()).sgd(p, grads[i], self.buf.get_mut(i), &h)?;
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
        Storage::Cpu(CpuStorage::F64(v)) => {
            HostTensor { shape: vec![v.len()], data: crate::host::HostData::F64(v.clone()) }
        }
    }
}

fn host_storage(h: &HostTensor, like: &Tensor) -> Result<Storage> {
    if h.numel() != like.numel() {
        bail!("optimizer state: {} values for a parameter of shape {:?}", h.numel(), like.shape());
    }
    Storage::f64(h.to_f64_vec()).cast(like.dtype())?.to_device(&like.device())
}

fn find<'a>(state: &'a [(String, HostTensor)], key: &str) -> Result<&'a HostTensor> {
    state
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| anyhow::anyhow!("optimizer state: missing `{key}`"))
}
