//! A whole training step (forward in training mode, MSE loss, backward, optimizer update) as CUDA graphs,
//! captured once per batch shape and replayed for every later batch of that shape.
//!
//! Two graphs per shape: forward + loss + backward, then the update. Between them the host reads the loss
//! and can refuse a non-finite one before any weight changes, as the eager step does. The first batch of
//! a shape runs eagerly (its allocations leave in the device allocator's cache every block the capture
//! then takes) and the same work is captured right after it without running. The update kernels read the
//! step's learning rate and bias corrections from device memory (`optim::SplitStep::begin_step` rewrites
//! them), so one graph serves every step and every learning rate of the schedule.
//!
//! A graph bakes in addresses: the parameters, the BN buffers and the optimizer state must stay where they
//! were at capture. Each replay checks that; when anything moved (a checkpoint loaded, the model moved to
//! another device) the shape is captured again.

use super::step::{self, LossSeed, Pass};
use crate::cuda::{GpuBuffer, GpuDevice, GpuGraph, GraphCache, GraphCounts, Lookup};
use crate::model::HrNet;
use crate::optim::SplitStep;
use crate::tensor::{Device, Storage, Tensor};
use anyhow::{anyhow, bail, Context, Result};

/// Batch shapes whose graphs are kept (each holds the activation memory of one step).
const MAX_SHAPES: usize = 2;

/// (input shape, target shape).
type ShapeKey = ([usize; 4], [usize; 4]);

/// The loss and heatmaps of a step, on the host.
pub struct StepResult {
    pub loss: f64,
    pub heatmaps: Vec<f32>,
}

/// One shape's captured step and the buffers its graphs read and write.
struct StepGraphs {
    forward_backward: GpuGraph,
    update: GpuGraph,
    input: GpuBuffer,
    target: GpuBuffer,
    /// The loss gradient (1.0) the captured backward copies as its seed: only kept alive.
    _seed: GpuBuffer,
    pass: Pass,
    /// Where the parameters, buffers and optimizer state were at capture.
    addresses: Vec<u64>,
    /// What one step adds to each BN's `num_batches_tracked`.
    count_increments: Vec<i64>,
}

/// What the first, eager step of a shape leaves for its capture.
struct FirstStep {
    key: ShapeKey,
    input: GpuBuffer,
    target: GpuBuffer,
    seed: GpuBuffer,
    count_increments: Vec<i64>,
}

/// The batch whose forward + backward ran, waiting for `update`.
enum Pending {
    /// The first batch of a shape, run eagerly; `update` applies it and then captures the shape.
    Eager(Box<(Pass, FirstStep)>),
    /// A replay of this shape's forward + backward.
    Replayed { key: ShapeKey },
}

/// The training-step graphs of one model on one GPU device.
pub struct TrainGraphs {
    dev: GpuDevice,
    graphs: GraphCache<ShapeKey, StepGraphs>,
    pending: Option<Pending>,
}

impl TrainGraphs {
    /// Graphs for `net`, which must be on a GPU device.
    pub fn new(net: &HrNet) -> Result<TrainGraphs> {
        match net.device() {
            Device::Gpu(dev) => Ok(TrainGraphs { dev, graphs: GraphCache::new(MAX_SHAPES), pending: None }),
            Device::Cpu => bail!("training graphs: the model is on the CPU"),
        }
    }

    pub fn counts(&self) -> GraphCounts {
        self.graphs.counts()
    }

    /// The forward, loss and backward of one batch (host data, NCHW input and heatmap targets): a graph
    /// replay for a shape seen before, an eager run otherwise. Nothing is updated until `update`.
    pub fn forward_backward(
        &mut self, net: &mut HrNet, input: &[f32], input_shape: [usize; 4], target: &[f32], target_shape: [usize; 4],
        optimizer: &mut dyn SplitStep,
    ) -> Result<StepResult> {
        self.pending = None;
        let key = (input_shape, target_shape);
        for (what, data, shape) in [("input", input, input_shape), ("target", target, target_shape)] {
            if data.len() != shape.iter().product::<usize>() {
                bail!("training graphs: {} {what} values for shape {shape:?}", data.len());
            }
        }
        let addresses = watched_addresses(net, optimizer)?;
        let unmoved = |g: &StepGraphs| {
            let same = g.addresses == addresses;
            if !same {
                log::info!("training graphs: the model or optimizer state moved; capturing {key:?} again");
            }
            same
        };
        // A shape whose capture failed before (`Lookup::Eager`) stays eager.
        if let Lookup::Captured(g) = self.graphs.lookup(&key, unmoved) {
            g.input.write_from_host(input)?;
            g.target.write_from_host(target)?;
            // SAFETY: the graph reads the parameters and buffers of `net` (unmoved: checked above) and the
            // graph's own input, target and seed; it writes the BN buffers and `g.pass`, kept with it.
            unsafe { g.forward_backward.replay() }.context("replaying the training graph")?;
            let counts: Vec<i64> = net.store.counts().iter().zip(&g.count_increments).map(|(c, d)| c + d).collect();
            net.store.set_counts(&counts);
            let result = step_result(&g.pass);
            self.graphs.note_replay();
            let result = result?;
            self.pending = Some(Pending::Replayed { key });
            return Ok(result);
        }
        // Whatever the first update would allocate is allocated now, before the forward: an allocation
        // between the forward and the capture could take a cached block the captured forward needs.
        optimizer.create_state(&net.store.params_mut())?;
        let mut input_buf = self.dev.empty(input.len())?;
        input_buf.write_from_host(input)?;
        let mut target_buf = self.dev.empty(target.len())?;
        target_buf.write_from_host(target)?;
        let seed = self.dev.upload(&[1.0])?;
        let counts = net.store.counts();
        let pass = forward_backward(net, &input_buf, input_shape, &target_buf, target_shape, &seed)?;
        let count_increments = net.store.counts().iter().zip(&counts).map(|(after, before)| after - before).collect();
        let result = step_result(&pass)?;
        let first = FirstStep { key, input: input_buf, target: target_buf, seed, count_increments };
        self.pending = Some(Pending::Eager(Box::new((pass, first))));
        Ok(result)
    }

    /// Applies the update of the batch `forward_backward` ran (replaying the shape's update graph, or
    /// eagerly and then capturing the shape's step).
    pub fn update(&mut self, net: &mut HrNet, optimizer: &mut dyn SplitStep) -> Result<()> {
        match self.pending.take() {
            None => bail!("training graphs: update without a forward_backward"),
            Some(Pending::Replayed { key }) => {
                let Some(g) = self.graphs.get(&key) else { bail!("training graphs: lost the graph") };
                optimizer.begin_step(&net.store.params_mut())?;
                // SAFETY: the update reads `g.pass.grads` (kept with the graph) and writes the parameters and
                // optimizer state, unmoved since capture (checked by `forward_backward`).
                unsafe { g.update.replay() }.context("replaying the optimizer graph")
            }
            Some(Pending::Eager(eager)) => {
                let (pass, first) = *eager;
                let key = first.key;
                let state = optimizer.device_addresses();
                let mut params = net.store.params_mut();
                optimizer.begin_step(&params)?;
                let grads: Vec<&Storage> = pass.grads.iter().collect();
                optimizer.apply(&mut params, &grads)?;
                drop(params);
                drop(pass);
                if self.graphs.failed(&key) {
                    return Ok(()); // capture failed for this shape before
                }
                if optimizer.device_addresses() != state {
                    // The update allocated (state moved): capture on this shape's next step instead.
                    return Ok(());
                }
                let captured = self.capture(net, optimizer, first);
                self.graphs.store(key, captured, |e| {
                    log::warn!("training graphs: capturing the {key:?} step failed, it runs eagerly: {e:#}")
                });
                Ok(())
            }
        }
    }

    /// Captures the step just run eagerly (same requests in the same order, so the allocator's cache
    /// serves every block) without running it.
    fn capture(&mut self, net: &mut HrNet, optimizer: &mut dyn SplitStep, first: FirstStep) -> Result<StepGraphs> {
        let FirstStep { key: (input_shape, target_shape), input, target, seed, count_increments } = first;
        // An update that found its parameter shared would copy it, and a capture only records that copy:
        // the parameter would then hold memory no kernel wrote.
        if let Some((name, _)) = net.store.tensors().find(|(_, t)| t.storage_is_shared()) {
            bail!("`{name}` is shared with another tensor");
        }
        let before = watched_addresses(net, optimizer)?;
        // The capture runs the forward's host code, which counts a batch in every BN: not a step taken.
        let counts = net.store.counts();
        let captured = self.dev.capture(|| forward_backward(net, &input, input_shape, &target, target_shape, &seed));
        net.store.set_counts(&counts);
        let (forward_backward_graph, pass) = captured?;
        let grads: Vec<&Storage> = pass.grads.iter().collect();
        let mut params = net.store.params_mut();
        let (update, ()) = self.dev.capture(|| optimizer.apply(&mut params, &grads))?;
        drop(params);
        drop(grads);
        let addresses = watched_addresses(net, optimizer)?;
        if addresses != before {
            bail!("the capture moved a parameter or optimizer state");
        }
        self.graphs.set_last_launches(forward_backward_graph.launches() + update.launches());
        Ok(StepGraphs {
            forward_backward: forward_backward_graph,
            update,
            input,
            target,
            _seed: seed,
            pass,
            addresses,
            count_increments,
        })
    }
}

/// The shared training step (`step::forward_backward`) on copies of the input and target buffers, seeded
/// from a copy of `seed` (so a capture uploads nothing).
fn forward_backward(
    net: &mut HrNet, input: &GpuBuffer, input_shape: [usize; 4], target: &GpuBuffer, target_shape: [usize; 4],
    seed: &GpuBuffer,
) -> Result<Pass> {
    let x = Tensor::new(input_shape.to_vec(), Storage::Gpu(input.try_clone()?))?;
    let t = Tensor::new(target_shape.to_vec(), Storage::Gpu(target.try_clone()?))?;
    step::forward_backward(net, &x, &t, LossSeed::CopyOf(seed))
}

fn step_result(pass: &Pass) -> Result<StepResult> {
    let loss = pass.loss.storage().gpu("training loss")?.to_vec()?;
    let loss = *loss.first().ok_or_else(|| anyhow!("training step: empty loss"))? as f64;
    Ok(StepResult { loss, heatmaps: pass.heatmaps.storage().gpu("training heatmaps")?.to_vec()? })
}

/// Where every tensor of the model (parameters and BN buffers) and the optimizer's state live.
fn watched_addresses(net: &HrNet, optimizer: &dyn SplitStep) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(net.store.len() + 1);
    for (name, t) in net.store.tensors() {
        out.push(t.storage().gpu(name)?.addr());
    }
    out.extend(optimizer.device_addresses());
    Ok(out)
}
