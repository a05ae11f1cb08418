//! HighResolutionNet (HRNetV2) for face alignment, built from MODEL.EXTRA-style stage specs, with the
//! official state_dict names and the official forward order (the official lib/models/hrnet.py, `HighResolutionNet`).
//!
//! One plan (`plan.rs`) is walked by one function (`walk.rs`) with five executors: autograd (training,
//! `HrNet::forward`), the folded CPU engine (`InferNet`), the folded GPU engine (`GpuInferNet`), the
//! multiply-add counter (`flops.rs`) and the ONNX exporter (`exec_onnx.rs`). The model keeps the folded engine it last built for evaluation,
//! rebuilt when its weights change.

mod exec_autograd;
mod exec_cpu;
mod exec_gpu;
mod exec_onnx;
pub mod flops;
pub mod memory;
pub mod plan;
pub mod spec;
pub mod walk;

pub use exec_autograd::{ActivationSink, BN_MOMENTUM};
pub use exec_cpu::InferNet;
pub use exec_gpu::{FusionMode, GpuInferNet, GraphCounts};
pub use exec_onnx::{export_onnx, OnnxOptions, DEFAULT_OPSET, OPSETS};
pub use spec::{BlockKind, HrnetSpec, StageSpec, MAX_PARAMS};

use crate::autograd::no_grad;
use crate::config::Config;
use crate::model::precision::Precision;
use crate::model::pretrained::{self, PretrainedReport};
use crate::model::store::{Slot, Store};
use crate::switches::{self, EvalEngine};
use crate::tensor::{DType, Device, Tensor};
use anyhow::{bail, Result};
use exec_autograd::AutogradExec;
use flops::ConvShape;
use plan::{ConvBn, Plan};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
pub struct HrNet {
    pub spec: HrnetSpec,
    pub store: Store,
    plan: Plan<ConvBn>,
    engines: EvalEngines,
    /// The CPU evaluation engine's conv precision (`set_precision`).
    precision: Precision,
}

impl HrNet {
    /// Builds the network with the official random init (seeded).
    pub fn new(spec: &HrnetSpec, seed: u64) -> Result<HrNet> {
        spec.validate()?;
        let (store, plan) = plan::build(spec, seed);
        Ok(HrNet { spec: spec.clone(), store, plan, engines: EvalEngines::default(), precision: Precision::F32 })
    }

    /// The config's network (MODEL.NUM_JOINTS, MODEL.EXTRA) with the official init, seeded; no weights
    /// loaded (see `for_training` for MODEL.PRETRAINED).
    pub fn from_config(cfg: &Config, seed: u64) -> Result<HrNet> {
        HrNet::new(&HrnetSpec::from_config(cfg)?, seed)
    }

    /// `from_config`, then the reference's MODEL.INIT_WEIGHTS + MODEL.PRETRAINED step (the ImageNet
    /// backbone by key name; a missing file only warns). The report is None when the config asks for
    /// no pretrained weights.
    pub fn for_training(cfg: &Config, seed: u64) -> Result<(HrNet, Option<PretrainedReport>)> {
        let mut net = HrNet::from_config(cfg, seed)?;
        let report = pretrained::load_from_config(&mut net, cfg, false)?;
        Ok((net, report))
    }

    /// The layer plan, its convs pointing at `store` slots (what an exporter walks with its own executor).
    pub fn plan(&self) -> &Plan<ConvBn> {
        &self.plan
    }

    /// Forward pass: `train` selects BN batch statistics (and updates the running buffers).
    /// `acts` receives the named intermediate activations of the parity cases when given.
    pub fn forward_with(&mut self, x: &Tensor, train: bool, acts: ActivationSink) -> Result<Tensor> {
        let d = x.dims4("hrnet")?;
        if d[1] != 3 {
            bail!("hrnet: input must have 3 channels, got shape {:?}", x.shape());
        }
        if train {
            // The weights are about to change: a kept evaluation engine would only hold memory.
            self.engines = EvalEngines::default();
        }
        let mut exec = AutogradExec { store: &mut self.store, train, sink: acts };
        walk::forward(&self.plan, &mut exec, x.clone())
    }

    pub fn forward(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_with(x, train, None)
    }

    /// One evaluation forward (eval-mode BN, no graph) of a normalised NCHW f32 batch: the heatmaps as
    /// f32 and their shape `[n, joints, h, w]`. On a GPU device or an f32 model on the CPU it runs the
    /// folded engine (unless `HRK_GPU_INFER` / `HRK_CPU_INFER` ask for the graph), built once per set of
    /// weights and kept by the model; otherwise the autograd graph, the input cast to the model's dtype.
    pub fn eval_heatmaps(&mut self, input: Vec<f32>, shape: [usize; 4]) -> Result<(Vec<f32>, [usize; 4])> {
        match self.device() {
            Device::Gpu(dev) => {
                let fusion = match switches::gpu_eval_engine() {
                    EvalEngine::Graph => None,
                    EvalEngine::FoldedUnfused => Some(FusionMode::Unfused),
                    EvalEngine::Folded => Some(FusionMode::Fused),
                };
                if let Some(fusion) = fusion {
                    return self.gpu_engine(&dev, fusion)?.forward_host(&input, shape);
                }
            }
            Device::Cpu => {
                let f32_params = self.store.params().first().is_none_or(|t| t.dtype() == DType::F32);
                if f32_params && switches::cpu_eval_engine() != EvalEngine::Graph {
                    let y = self.cpu_engine()?.forward(&Tensor::from_f32(&shape, input)?)?;
                    let dims = y.dims4("hrnet infer")?;
                    return Ok((y.to_f32_vec(), dims));
                }
            }
        }
        let dtype = self.store.params().first().map(|t| t.dtype()).unwrap_or(DType::F32);
        let x = match dtype {
            DType::F32 => Tensor::from_f32(&shape, input)?,
            DType::F64 => Tensor::from_f64(&shape, input.iter().map(|&v| v as f64).collect())?,
        };
        let x = x.to_device(&self.device())?;
        let out = no_grad(|| self.forward(&x, false))?;
        let out_shape = out.dims4("hrnet output")?;
        Ok((out.to_f32_vec(), out_shape))
    }

    /// The folded CPU engine of the current weights (built at the first call after they change).
    pub fn cpu_engine(&self) -> Result<Arc<InferNet>> {
        cached(&self.engines.cpu, self.weights_key(), || InferNet::with_precision(self, self.precision))
    }

    /// Loads .safetensors or an official .pth (zip or legacy; `module.` prefixes stripped) strictly:
    /// every model tensor must be present with its shape; `num_batches_tracked` may be absent.
    pub fn load_weights_file(&mut self, path: &std::path::Path) -> Result<()> {
        let entries = crate::io::load_state_dict(path)?;
        self.store.load(&entries, true, &path.display().to_string())?;
        Ok(())
    }

    /// Sets the conv precision of the folded CPU evaluation engine, as `Precision::resolve_cpu` gives
    /// it (the GPU engines and the autograd graph stay f32).
    pub fn set_precision(&mut self, precision: Precision) {
        if precision != self.precision {
            self.engines = EvalEngines::default();
            self.precision = precision;
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The folded GPU engine of the current weights on `dev` (built at the first call after they change).
    pub fn gpu_engine(&self, dev: &crate::cuda::device::GpuDevice, fusion: FusionMode) -> Result<Arc<GpuInferNet>> {
        cached(&self.engines.gpu, (dev.name(), self.weights_key(), fusion), || {
            let mut built = GpuInferNet::new(self, dev)?;
            built.fusion = fusion;
            Ok(built)
        })
    }

    /// What a folded engine is built from: the ids of the model's tensors and the tensor engine's
    /// storage-write count (any optimizer step, BN update or loaded weight changes it; moving the
    /// model to a device gives new ids).
    fn weights_key(&self) -> WeightsKey {
        let s = &self.store;
        let ids = (0..s.len())
            .filter_map(|i| match s.slot(i) {
                Slot::Param(t) | Slot::Buffer(t) => Some(t.id()),
                Slot::Count(_) => None,
            })
            .collect();
        (ids, crate::tensor::storage_writes())
    }

    /// Moves the parameters and buffers to `device`; inputs must then live there too.
    pub fn to_device(&mut self, device: &Device) -> Result<()> {
        self.engines = EvalEngines::default();
        self.store.to_device(device)
    }

    pub fn device(&self) -> Device {
        self.store.params().first().map(|t| t.device()).unwrap_or_default()
    }

    /// The plan with each conv's weight shape and geometry (what counting needs).
    fn conv_shapes(&self) -> Result<Plan<ConvShape>> {
        self.plan.try_map(&mut |l: &ConvBn| {
            let w = self.store.tensor(l.conv.weight);
            let wshape = match *w.shape() {
                [a, b, k1, k2] => [a, b, k1, k2],
                _ => bail!("hrnet: conv weight {} is not 4-d: {:?}", self.store.name(l.conv.weight), w.shape()),
            };
            Ok(ConvShape { wshape, stride: l.conv.stride, pad: l.conv.pad })
        })
    }

    /// Multiply-adds of all convs for one `h`×`w` image, head included.
    pub fn macs(&self, h: usize, w: usize) -> Result<u64> {
        flops::macs(&self.conv_shapes()?, h, w)
    }

    /// Multiply-adds of the first conv (its input needs no gradient in training).
    pub fn first_conv_macs(&self, h: usize, w: usize) -> Result<u64> {
        flops::first_conv_macs(&self.conv_shapes()?, h, w)
    }
}

type WeightsKey = (Vec<u64>, u64);

/// The last engine built, with the key it was built for.
type EngineCache<K, E> = Mutex<Option<(K, Arc<E>)>>;

/// The folded engines a model keeps for evaluation. A clone of the model starts without them.
#[derive(Default)]
struct EvalEngines {
    cpu: EngineCache<WeightsKey, InferNet>,
    gpu: EngineCache<(String, WeightsKey, FusionMode), GpuInferNet>,
}

impl Clone for EvalEngines {
    fn clone(&self) -> Self {
        EvalEngines::default()
    }
}

impl std::fmt::Debug for EvalEngines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EvalEngines")
    }
}

/// The engine in `cache` when it was built for `key`, else a new one from `build` (the old one dropped
/// first, so its memory is free for the new one).
fn cached<K: PartialEq, E>(cache: &EngineCache<K, E>, key: K, build: impl FnOnce() -> Result<E>) -> Result<Arc<E>> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((k, engine)) = cache.as_ref() {
        if *k == key {
            return Ok(engine.clone());
        }
    }
    *cache = None;
    let engine = Arc::new(build()?);
    *cache = Some((key, engine.clone()));
    Ok(engine)
}
