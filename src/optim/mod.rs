//! Optimizers as tape-free in-place updates, PyTorch semantics (torch.optim.Adam / SGD).
//!
//! Parameters are passed in a fixed order (the model's state_dict order); the optimizer state is
//! kept per position and can be exported/imported for checkpoints.

mod cpu_kernel;
mod cuda_kernel;

use crate::cuda::GpuBuffer;
use crate::host_tensor::HostTensor;
use crate::ops::{kernels_for, Cpu, Cuda};
use crate::tensor::{CpuStorage, Device, Storage, Tensor};
use anyhow::{bail, Result};

/// One step's hyper-parameters, as both devices' kernels take them (Adam reads lr, weight_decay, beta1,
/// beta2, eps, bc2_sqrt; SGD lr, weight_decay, momentum, dampening, nesterov, first_step).
#[derive(Default, Debug)]
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
    /// GPU parameters: the device address of [lr, bc2_sqrt, first_step] as f32 (see `StepScalars`); 0 on
    /// the CPU.
    pub step_scalars: u64,
}

/// This step's learning rate, √(1−β2ᵗ) and SGD first-step flag in the parameters' device memory. The
/// kernels read them there rather than from their launch arguments, so an update captured once in a CUDA
/// graph replays every later step with that step's values (the host rewrites the three floats first).
#[derive(Default, Debug)]
struct StepScalars(Option<GpuBuffer>);

impl StepScalars {
    /// Writes `values` on the device of `params` (none on the CPU) and returns their address (0 on the CPU).
    fn write(&mut self, params: &[&mut Tensor], values: [f64; 3]) -> Result<u64> {
        let Some(crate::Device::Gpu(dev)) = params.first().map(|p| p.device()) else {
            self.0 = None;
            return Ok(0);
        };
        let values = values.map(|v| v as f32);
        match &mut self.0 {
            Some(b) if b.device() == &dev => b.write_from_host(&values)?,
            slot => *slot = Some(dev.upload(&values)?),
        }
        Ok(self.0.as_mut().map_or(0, |b| b.addr_mut()))
    }

    /// Creates the buffer (zeros) on the device of `params` if it is not there yet.
    fn create(&mut self, params: &[&mut Tensor]) -> Result<()> {
        match (&self.0, params.first().map(|p| p.device())) {
            (Some(b), Some(crate::Device::Gpu(dev))) if b.device() == &dev => Ok(()),
            (_, Some(crate::Device::Gpu(dev))) => {
                self.0 = Some(dev.zeros(3)?);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn address(&self) -> Option<u64> {
        self.0.as_ref().map(|b| b.addr())
    }
}

/// The device addresses the GPU update kernels touch besides the parameters and gradients: a CUDA graph
/// captured over them stays valid only while none of them moves.
fn device_addresses(state: &[&[Storage]], scalars: &StepScalars) -> Vec<u64> {
    let buffers = state.iter().flat_map(|s| s.iter()).filter_map(|s| s.gpu("optimizer state").ok());
    buffers.map(|b| b.addr()).chain(scalars.address()).collect()
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

/// An optimizer step split into its host half (count the step, set this step's scalars) and its device
/// half (the per-parameter updates): the half a CUDA graph captures once and replays (`train::graph`).
pub trait SplitStep {
    /// Allocates the state and step scalars the first step would (nothing when they exist), so that the
    /// first step allocates nothing between its forward and a graph capture of it.
    fn create_state(&mut self, params: &[&mut Tensor]) -> Result<()>;
    fn begin_step(&mut self, params: &[&mut Tensor]) -> Result<()>;
    fn apply(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()>;
    /// The device addresses of the state and step scalars (a captured update is valid while none moves).
    fn device_addresses(&self) -> Vec<u64>;
}

macro_rules! split_step_by_inherent_methods {
    ($($t:ty),*) => {$(
        impl SplitStep for $t {
            fn create_state(&mut self, params: &[&mut Tensor]) -> Result<()> {
                <$t>::create_state(self, params)
            }
            fn begin_step(&mut self, params: &[&mut Tensor]) -> Result<()> {
                <$t>::begin_step(self, params)
            }
            fn apply(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
                <$t>::apply(self, params, grads)
            }
            fn device_addresses(&self) -> Vec<u64> {
                <$t>::device_addresses(self)
            }
        }
    )*};
}
split_step_by_inherent_methods!(Adam, Sgd);

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
    /// The step begun by `begin_step`, applied by `apply`.
    current: Option<Hyper>,
    scalars: StepScalars,
}

impl Adam {
    pub fn new(lr: f64, weight_decay: f64) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            exp_avg: vec![],
            exp_avg_sq: vec![],
            current: None,
            scalars: StepScalars::default(),
        }
    }

    /// One step: g += wd·p; m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²;
    /// p −= lr/(1−β1ᵗ) · m / (√v/√(1−β2ᵗ) + eps).
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("adam", params, grads)?;
        self.begin_step(params)?;
        self.apply(params, grads)
    }

    /// The host half of `step`: creates or moves the state, counts the step and sets its learning rate and
    /// bias corrections (also in device memory for GPU parameters). `apply` then does the device work.
    pub fn begin_step(&mut self, params: &[&mut Tensor]) -> Result<()> {
        self.create_state(params)?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = self.lr / bc1;
        // lr/(1−β1ᵗ) rounded once from f64, the bias correction of v applied as √(1−β2ᵗ).
        let step_scalars = self.scalars.write(params, [step_size, bc2_sqrt, 0.0])?;
        self.current = Some(Hyper {
            lr: step_size,
            weight_decay: self.weight_decay,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            bc2_sqrt,
            step_scalars,
            ..Default::default()
        });
        Ok(())
    }

    /// The moments (zeros) and step scalars, created or moved to the parameters' device.
    pub fn create_state(&mut self, params: &[&mut Tensor]) -> Result<()> {
        if self.exp_avg.is_empty() {
            self.exp_avg = zeros_like(params)?;
            self.exp_avg_sq = zeros_like(params)?;
        } else if self.exp_avg.len() != params.len() {
            bail!("adam: state holds {} parameters, step got {}", self.exp_avg.len(), params.len());
        }
        follow_params(&mut self.exp_avg, params)?;
        follow_params(&mut self.exp_avg_sq, params)?;
        self.scalars.create(params)
    }

    /// The device half of `step`: updates every parameter and its state with the step `begin_step` set.
    pub fn apply(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("adam", params, grads)?;
        let Some(h) = &self.current else { bail!("adam: apply before begin_step") };
        if self.exp_avg.len() != params.len() {
            bail!("adam: state holds {} parameters, step got {}", self.exp_avg.len(), params.len());
        }
        for (i, p) in params.iter_mut().enumerate() {
            let (m, v) = (&mut self.exp_avg[i], &mut self.exp_avg_sq[i]);
            kernels(&p.device()).adam(p, grads[i], m, v, h)?;
        }
        Ok(())
    }

    /// See `device_addresses`.
    pub fn device_addresses(&self) -> Vec<u64> {
        device_addresses(&[&self.exp_avg, &self.exp_avg_sq], &self.scalars)
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
    /// Whether a step was taken (or its momentum loaded): the first step copies the gradient into the
    /// momentum buffer.
    started: bool,
    /// The step begun by `begin_step`, applied by `apply`.
    current: Option<Hyper>,
    scalars: StepScalars,
}

impl Sgd {
    pub fn new(lr: f64, momentum: f64, weight_decay: f64, nesterov: bool) -> Sgd {
        Sgd {
            lr,
            momentum,
            dampening: 0.0,
            weight_decay,
            nesterov,
            buf: vec![],
            started: false,
            current: None,
            scalars: StepScalars::default(),
        }
    }

    /// d = g + wd·p; buf = d (first step) or μ·buf + (1−dampening)·d; d = d + μ·buf (nesterov) or buf;
    /// p −= lr·d.
    pub fn step(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("sgd", params, grads)?;
        self.begin_step(params)?;
        self.apply(params, grads)
    }

    /// The host half of `step` (creates or moves the momentum buffers, sets the learning rate and the
    /// first-step flag, also in device memory for GPU parameters); `apply` then does the device work.
    pub fn begin_step(&mut self, params: &[&mut Tensor]) -> Result<()> {
        self.create_state(params)?;
        let first = !self.started;
        self.started = true;
        let step_scalars = self.scalars.write(params, [self.lr, 0.0, if first { 1.0 } else { 0.0 }])?;
        self.current = Some(Hyper {
            lr: self.lr,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            first_step: first,
            step_scalars,
            ..Default::default()
        });
        Ok(())
    }

    /// The momentum buffers (zeros; without momentum none) and step scalars, created or moved to the
    /// parameters' device.
    pub fn create_state(&mut self, params: &[&mut Tensor]) -> Result<()> {
        if self.buf.is_empty() && self.momentum != 0.0 {
            self.buf = zeros_like(params)?;
        }
        follow_params(&mut self.buf, params)?;
        self.scalars.create(params)
    }

    /// The device half of `step`: updates every parameter (and momentum buffer) with the step
    /// `begin_step` set.
    pub fn apply(&mut self, params: &mut [&mut Tensor], grads: &[&Storage]) -> Result<()> {
        check_grads("sgd", params, grads)?;
        let Some(h) = &self.current else { bail!("sgd: apply before begin_step") };
        if self.momentum != 0.0 && self.buf.len() != params.len() {
            bail!("sgd: state holds {} momentum buffers, step got {} parameters", self.buf.len(), params.len());
        }
        for (i, p) in params.iter_mut().enumerate() {
            kernels(&p.device()).sgd(p, grads[i], self.buf.get_mut(i), h)?;
        }
        Ok(())
    }

    /// See `device_addresses`.
    pub fn device_addresses(&self) -> Vec<u64> {
        device_addresses(&[&self.buf], &self.scalars)
    }

    pub fn state(&self) -> Vec<(String, HostTensor)> {
        self.buf.iter().enumerate().map(|(i, b)| (format!("momentum_buffer.{i}"), storage_host(b))).collect()
    }

    pub fn load_state(&mut self, state: &[(String, HostTensor)], params: &[&Tensor]) -> Result<()> {
        self.buf.clear();
        self.started = false;
        if state.is_empty() {
            return Ok(());
        }
        for (i, p) in params.iter().enumerate() {
            self.buf.push(host_storage(find(state, &format!("momentum_buffer.{i}"))?, p)?);
        }
        self.started = true;
        Ok(())
    }
}

fn storage_host(s: &Storage) -> HostTensor {
    match s {
        Storage::Gpu(_) => HostTensor::f32(vec![s.len()], s.to_f32_vec()),
        Storage::Cpu(CpuStorage::F32(v)) => HostTensor::f32(vec![v.len()], v.clone()),
        Storage::Cpu(CpuStorage::F64(v)) => {
            HostTensor { shape: vec![v.len()], data: crate::host_tensor::HostData::F64(v.clone()) }
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
