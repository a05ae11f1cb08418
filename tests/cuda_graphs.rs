//! CUDA graphs and the caching device allocator under the emulated device (a graph there is the recorded
//! launch list, replayed in order): replay equals the eager run exactly, a new input shape captures a new
//! graph, capture refuses host work and fresh allocations, a capture whose body errs, panics or makes a
//! refused call ends without a graph and leaves the device usable, a graph holds one node per recorded
//! launch (on a real device as the driver counts them), the allocator reuses its blocks and reports
//! consistent peak / fragmentation figures, and running out of memory in the middle of inference or a
//! training step is a one-line error. A whole training step (forward, loss, backward, optimizer) replays
//! from its graphs exactly as the eager step runs it. Each test has a private emulated device.
mod common;
use common::model::{randomize, tiny_spec};
use common::TestValues;

use hrk::cuda::alloc::MemoryStats;
use hrk::cuda::buffer::add_assign;
use hrk::cuda::GpuDevice;
use hrk::host_tensor::HostTensor;
use hrk::model::{GpuInferNet, HrNet};
use hrk::optim::{Adam, Sgd, SplitStep};
use hrk::train::graph::TrainGraphs;
use hrk::{Device, Storage, Tensor};

fn input(shape: [usize; 4], seed: u64) -> Vec<f32> {
    common::rng(seed).normals(shape.iter().product())
}

fn tiny_net(dev: &GpuDevice) -> HrNet {
    let mut net = HrNet::new(&tiny_spec(5), 3).unwrap();
    randomize(&mut net, 7);
    net.to_device(&Device::Gpu(dev.clone())).unwrap();
    net
}

#[track_caller]
fn assert_consistent(s: &MemoryStats) {
    assert!(s.peak_in_use >= s.in_use && s.peak_reserved >= s.reserved && s.reserved >= s.in_use, "{s:?}");
    assert!(s.peak_reserved >= s.peak_in_use, "{s:?}");
    let f = s.fragmentation();
    assert!((0.0..=1.0).contains(&f), "fragmentation {f} of {s:?}");
}

#[test]
fn inference_graph_replay_equals_eager_and_a_new_shape_recaptures() {
    let dev = GpuDevice::emulated_with_memory(1 << 30);
    let net = tiny_net(&dev);
    let mut eager = GpuInferNet::new(&net, &dev).unwrap();
    eager.graphs = false;
    let mut graphed = GpuInferNet::new(&net, &dev).unwrap();
    graphed.graphs = true;

    let shape = [2, 3, 24, 32];
    let (a, b) = (input(shape, 11), input(shape, 12));
    let want_a = eager.forward_host(&a, shape).unwrap();
    let want_b = eager.forward_host(&b, shape).unwrap();
    assert_ne!(want_a.0, want_b.0, "two inputs, two answers");

    // First call: eager warm-up + capture; then replays with new inputs.
    assert_eq!(graphed.forward_host(&a, shape).unwrap(), want_a);
    let c = graphed.graph_counts();
    assert_eq!((c.captures, c.replays), (1, 0));
    assert!(c.last_launches > 10, "the graph recorded {} launches", c.last_launches);
    assert_eq!(graphed.forward_host(&b, shape).unwrap(), want_b, "replay with a new input");
    assert_eq!(graphed.forward_host(&a, shape).unwrap(), want_a, "replay again");
    assert_eq!(graphed.graph_counts().replays, 2);

    // Replays take no fresh device memory.
    let before = dev.memory_stats().device_allocations;
    graphed.forward_host(&b, shape).unwrap();
    assert_eq!(dev.memory_stats().device_allocations, before, "a replay allocated");

    // Another shape (batch 1, other size): a second capture, both graphs stay valid.
    let shape2 = [1, 3, 16, 20];
    let d = input(shape2, 13);
    let want_d = eager.forward_host(&d, shape2).unwrap();
    assert_eq!(graphed.forward_host(&d, shape2).unwrap(), want_d);
    assert_eq!(graphed.forward_host(&d, shape2).unwrap(), want_d);
    assert_eq!(graphed.forward_host(&b, shape).unwrap(), want_b);
    let c = graphed.graph_counts();
    assert_eq!((c.captures, c.replays), (2, 5));
    assert_consistent(&dev.memory_stats());
}

#[test]
fn a_recorded_launch_runs_only_on_replay() {
    let dev = GpuDevice::emulated_with_memory(1 << 20);
    let mut acc = dev.upload(&[1.0, 2.0, 3.0]).unwrap();
    let step = dev.upload(&[10.0, 20.0, 30.0]).unwrap();
    let (graph, ()) = dev.capture(|| add_assign(&mut acc, &step)).unwrap();
    assert!(!dev.capturing());
    assert_eq!(graph.launches(), 1);
    assert_eq!(acc.to_vec().unwrap(), [1.0, 2.0, 3.0], "capture must not run the work");
    for _ in 0..2 {
        // SAFETY: `acc` and `step` are alive.
        unsafe { graph.replay() }.unwrap();
    }
    assert_eq!(acc.to_vec().unwrap(), [21.0, 42.0, 63.0]);
    // A zero fill inside a capture is device work too (its block is cached by an eager run first).
    drop(dev.zeros(3).unwrap());
    let (graph, zeros) = dev.capture(|| dev.zeros(3)).unwrap();
    let mut zeros = zeros;
    zeros.write_from_host(&[5.0, 5.0, 5.0]).unwrap();
    // SAFETY: `zeros` is alive.
    unsafe { graph.replay() }.unwrap();
    assert_eq!(zeros.to_vec().unwrap(), [0.0; 3]);
}

#[test]
fn capture_refuses_host_work_and_fresh_allocations() {
    let dev = GpuDevice::emulated_with_memory(1 << 20);
    let buf = dev.upload(&[1.0; 64]).unwrap();
    let one_line = |e: anyhow::Error, want: &str| {
        let msg = format!("{e:#}");
        assert!(msg.contains("CUDA graph capture") && msg.contains(want) && !msg.contains('\n'), "{msg}");
    };
    one_line(dev.capture(|| dev.upload(&[1.0; 4])).unwrap_err(), "uploading host data");
    one_line(dev.capture(|| buf.to_vec()).unwrap_err(), "reading device memory");
    one_line(dev.capture(|| dev.synchronize()).unwrap_err(), "waiting for the device");
    // Nothing of this size was freed before: the capture may not take fresh memory.
    one_line(dev.capture(|| dev.empty(10_000)).unwrap_err(), "needs fresh device memory");
    assert!(!dev.capturing(), "a failed capture must end");
    // A block freed before the capture is reused inside it.
    drop(dev.empty(10_000).unwrap());
    let (_graph, reused) = dev.capture(|| dev.empty(10_000)).unwrap();
    assert_eq!(reused.len(), 10_000);
    assert_consistent(&dev.memory_stats());
}

/// What every capture test checks afterwards: the device is not capturing, a new capture records only its
/// own work and replays it, and eager work runs (the capture state of both backends was left clean).
#[track_caller]
fn device_works_after_a_failed_capture(dev: &GpuDevice) {
    assert!(!dev.capturing(), "a failed capture must end");
    let mut acc = dev.upload(&[1.0, 2.0]).unwrap();
    let step = dev.upload(&[10.0, 20.0]).unwrap();
    let (graph, ()) = dev.capture(|| add_assign(&mut acc, &step)).unwrap();
    assert_eq!(graph.launches(), 1, "the new capture holds only its own launch");
    // SAFETY: `acc` and `step` are alive.
    unsafe { graph.replay() }.unwrap();
    assert_eq!(acc.to_vec().unwrap(), [11.0, 22.0]);
    add_assign(&mut acc, &step).unwrap();
    assert_eq!(acc.to_vec().unwrap(), [21.0, 42.0], "eager work after the failed capture");
    assert_consistent(&dev.memory_stats());
}

#[test]
fn an_erroring_capture_body_ends_the_capture_and_discards_the_graph() {
    let dev = GpuDevice::emulated_with_memory(1 << 20);
    let mut acc = dev.upload(&[1.0; 4]).unwrap();
    let step = dev.upload(&[2.0; 4]).unwrap();
    drop(dev.zeros(4).unwrap()); // a block the capture may reuse
    let e = dev
        .capture(|| -> anyhow::Result<()> {
            add_assign(&mut acc, &step)?;
            let _scratch = dev.zeros(4)?; // freed inside the capture: its block goes back with the discarded graph
            anyhow::bail!("the body failed")
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "the body failed");
    assert_eq!(acc.to_vec().unwrap(), [1.0; 4], "a discarded capture ran nothing");
    assert_eq!(dev.memory_stats().in_use, 2 * 512, "the capture's blocks are back in the cache");
    device_works_after_a_failed_capture(&dev);
}

#[test]
fn a_panicking_capture_body_ends_the_capture_and_the_panic_goes_on() {
    let dev = GpuDevice::emulated_with_memory(1 << 20);
    let mut acc = dev.upload(&[1.0; 4]).unwrap();
    let step = dev.upload(&[2.0; 4]).unwrap();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        dev.capture(|| -> anyhow::Result<()> {
            add_assign(&mut acc, &step)?;
            panic!("the body panicked")
        })
    }));
    let payload = panicked.expect_err("the panic reaches the caller");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"the body panicked"));
    assert_eq!(acc.to_vec().unwrap(), [1.0; 4], "a discarded capture ran nothing");
    device_works_after_a_failed_capture(&dev);
}

#[test]
fn a_refused_call_invalidates_the_capture_even_when_the_body_goes_on() {
    // As the driver in THREAD_LOCAL mode: a capture-unsafe call ends the capture without a graph.
    let dev = GpuDevice::emulated_with_memory(1 << 20);
    let buf = dev.upload(&[1.0; 4]).unwrap();
    let e = dev
        .capture(|| {
            let ignored = buf.to_vec();
            assert!(ignored.is_err());
            Ok(())
        })
        .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("reading device memory on the host") && msg.contains("abandoned"), "{msg}");
    device_works_after_a_failed_capture(&dev);
}

/// Captures conv, bilinear, concat, fusion, add and a zero fill (each run once eagerly first) and checks
/// that the graph holds one node per launch recorded and replays the eager values.
fn captured_nodes_match_launches(dev: &GpuDevice) {
    use hrk::ops::concat::cuda_kernel::concat_into;
    use hrk::ops::conv2d::cuda_kernel::{forward_buffers, ConvEpilogue};
    use hrk::ops::upsample::cuda_kernel::bilinear_buffers;
    let (xd, wd) = ([1, 3, 8, 8], [4, 3, 3, 3]);
    let x = dev.upload(&input(xd, 21)).unwrap();
    let w = dev.upload(&input(wd, 22)).unwrap();
    let b = dev.upload(&input([1, 1, 1, 4], 23)).unwrap();
    let work = || -> anyhow::Result<hrk::cuda::GpuBuffer> {
        let ep = ConvEpilogue { bias: Some(&b), residual: None, relu: true };
        let (y, yd) = forward_buffers(&x, xd, &w, wd, 1, 1, ep)?;
        let small = bilinear_buffers(&y, yd[0] * yd[1], [yd[2], yd[3]], [4, 4])?;
        let up = bilinear_buffers(&small, yd[0] * yd[1], [4, 4], [yd[2], yd[3]])?;
        let mut cat = dev.zeros(2 * y.len())?;
        concat_into(&y, &mut cat, 1, 4, 8, 0, 64)?;
        concat_into(&up, &mut cat, 1, 4, 8, 4, 64)?;
        let terms = [hrk::ops::fusion::UpTerm { z: &small, size: [4, 4] }];
        let mut fused = hrk::ops::fusion::forward(yd, Some(&y), &terms, &[&up])?;
        add_assign(&mut fused, &y)?;
        let mut out = dev.empty(cat.len() + fused.len())?;
        concat_into(&cat, &mut out, 1, 8, 12, 0, 64)?;
        concat_into(&fused, &mut out, 1, 4, 12, 8, 64)?;
        Ok(out)
    };
    let want = work().unwrap().to_vec().unwrap();
    let (graph, out) = dev.capture(work).unwrap();
    let nodes = graph.node_count().unwrap();
    eprintln!("{}: {} launches recorded, {nodes} graph nodes", dev.name(), graph.launches());
    assert_eq!(graph.launches(), 10, "conv, 2 bilinear, zero fill, 4 concat, fusion, add");
    assert_eq!(nodes, graph.launches(), "every queued launch and fill is a node of the graph, nothing else");
    // SAFETY: x, w, b and `out` are alive; the rest the graph owns.
    unsafe { graph.replay() }.unwrap();
    assert_eq!(out.to_vec().unwrap(), want, "replay vs eager");
}

#[test]
fn captured_graph_nodes_match_the_launches_recorded() {
    captured_nodes_match_launches(&GpuDevice::emulated_with_memory(1 << 24));
}

/// The training batch shapes of the graph tests: branches 4×4 … 1×1, the least training BN accepts at
/// batch 2.
const TRAIN_X: [usize; 4] = [2, 3, 16, 16];
const TRAIN_T: [usize; 4] = [2, 5, 4, 4];

fn train_batch(seed: u64) -> (Vec<f32>, Vec<f32>) {
    (input(TRAIN_X, seed), input(TRAIN_T, seed + 1000))
}

/// One eager training step as `hrk train` runs it without graphs: loss, heatmaps.
fn eager_train_step(net: &mut HrNet, opt: &mut dyn SplitStep, x: &[f32], t: &[f32]) -> (f64, Vec<f32>) {
    let dev = net.device();
    let x = Tensor::from_f32(&TRAIN_X, x.to_vec()).unwrap().to_device(&dev).unwrap();
    let t = Tensor::from_f32(&TRAIN_T, t.to_vec()).unwrap().to_device(&dev).unwrap();
    let out = net.forward(&x, true).unwrap();
    let loss = hrk::ops::mse_loss(&out, &t).unwrap();
    let value = loss.item().unwrap();
    let mut grads = hrk::backward(&loss).unwrap();
    let grads: Vec<Storage> = net.store.params().iter().map(|p| grads.take(p).unwrap()).collect();
    let mut params = net.store.params_mut();
    opt.begin_step(&params).unwrap();
    opt.apply(&mut params, &grads.iter().collect::<Vec<_>>()).unwrap();
    (value, out.to_f32_vec())
}

/// Parameters, BN buffers and counters, and the optimizer state, by name.
fn train_state(net: &HrNet, optimizer_state: Vec<(String, HostTensor)>) -> Vec<(String, Vec<f64>)> {
    let all = net.store.state_dict().into_iter().chain(optimizer_state);
    all.map(|(name, t)| (name, t.to_f64_vec())).collect()
}

/// Steps through `TrainGraphs` and eagerly on two copies of the same model: the same losses, heatmaps,
/// weights, BN statistics and counters and optimizer state, bit for bit (`exact`; on a real GPU, whose
/// atomics add in any order, losses and heatmaps within 1e-3). The first step is captured (SGD's
/// first-step flag and the learning rate then change on the device), the second replays without fresh
/// device memory. With `reload_after`, then: a NaN target shows its loss before any weight changes, and
/// reloaded weights (new device memory) make the next step capture again.
fn training_graphs_equal_eager<O: SplitStep>(
    dev: &GpuDevice, exact: bool, make: impl Fn() -> O, set_lr: impl Fn(&mut O, f64),
    state: impl Fn(&O) -> Vec<(String, HostTensor)>, reload_after: bool,
) {
    let graph_net = tiny_net(dev);
    let graphs = TrainGraphs::new(&graph_net).unwrap();
    let mut pair = TrainPair { eager_net: tiny_net(dev), graph_net, eager_opt: make(), graph_opt: make(), graphs };
    pair.step(dev, exact, &state, 0);
    set_lr(&mut pair.eager_opt, 0.02);
    set_lr(&mut pair.graph_opt, 0.02);
    pair.step(dev, exact, &state, 1);
    let c = pair.graphs.counts();
    assert_eq!((c.captures, c.replays), (1, 1));
    assert!(c.last_launches > 20, "the step recorded {} launches", c.last_launches);
    if reload_after {
        let snapshot = pair.graph_net.store.state_dict();
        let weights = |net: &HrNet| net.store.params().iter().map(|p| p.to_f32_vec()).collect::<Vec<_>>();
        let kept = weights(&pair.graph_net);
        let (x, mut t) = train_batch(9);
        t[0] = f32::NAN;
        let step =
            pair.graphs.forward_backward(&mut pair.graph_net, &x, TRAIN_X, &t, TRAIN_T, &mut pair.graph_opt).unwrap();
        assert!(step.loss.is_nan(), "a NaN target gives a NaN loss, got {}", step.loss);
        assert_eq!(pair.graphs.counts().replays, 2);
        assert_eq!(weights(&pair.graph_net), kept, "the forward and backward alone changed a weight");
        // The caller refuses that step (no update) and reloads the weights; loading puts every tensor in
        // new device memory.
        for net in [&mut pair.eager_net, &mut pair.graph_net] {
            net.store.load(&snapshot, true, "the snapshot").unwrap();
        }
        pair.step(dev, exact, &state, 2);
        assert_eq!(pair.graphs.counts().captures, 2, "moved tensors must be captured again");
    }
    assert_consistent(&dev.memory_stats());
}

/// Two copies of one model and optimizer: one stepped eagerly, one through `TrainGraphs`.
struct TrainPair<O> {
    eager_net: HrNet,
    graph_net: HrNet,
    eager_opt: O,
    graph_opt: O,
    graphs: TrainGraphs,
}

impl<O: SplitStep> TrainPair<O> {
    /// One step of both on batch `step`, compared (see `training_graphs_equal_eager`).
    fn step(&mut self, dev: &GpuDevice, exact: bool, state: &impl Fn(&O) -> Vec<(String, HostTensor)>, step: u64) {
        let (x, t) = train_batch(step);
        let (want_loss, want_heatmaps) = eager_train_step(&mut self.eager_net, &mut self.eager_opt, &x, &t);
        let before = dev.memory_stats().device_allocations;
        let replays = self.graphs.counts().replays;
        let got =
            self.graphs.forward_backward(&mut self.graph_net, &x, TRAIN_X, &t, TRAIN_T, &mut self.graph_opt).unwrap();
        self.graphs.update(&mut self.graph_net, &mut self.graph_opt).unwrap();
        if self.graphs.counts().replays > replays {
            assert_eq!(dev.memory_stats().device_allocations, before, "replay {step} took fresh device memory");
        }
        if !exact {
            let rel = (got.loss - want_loss).abs() / want_loss.abs().max(1e-30);
            assert!(rel <= 1e-3, "step {step}: loss {} vs eager {want_loss}", got.loss);
            let err = rel_l2(&got.heatmaps, &want_heatmaps);
            assert!(err <= 1e-3, "step {step}: heatmaps rel_l2 {err:e} vs eager");
            return;
        }
        assert_eq!(got.loss, want_loss, "step {step}: loss");
        assert_eq!(got.heatmaps, want_heatmaps, "step {step}: heatmaps");
        let want = train_state(&self.eager_net, state(&self.eager_opt));
        let got = train_state(&self.graph_net, state(&self.graph_opt));
        assert_eq!(want.len(), got.len());
        for ((name, w), (_, g)) in want.iter().zip(&got) {
            assert_eq!(w, g, "step {step}: `{name}`");
        }
    }
}

#[test]
fn training_step_graphs_equal_eager_with_adam_and_recapture_after_a_reload() {
    let dev = GpuDevice::emulated_with_memory(1 << 30);
    training_graphs_equal_eager(&dev, true, || Adam::new(0.05, 1e-3), |o, lr| o.lr = lr, Adam::state, true);
}

#[test]
fn training_step_graphs_equal_eager_with_sgd_nesterov() {
    let dev = GpuDevice::emulated_with_memory(1 << 30);
    training_graphs_equal_eager(&dev, true, || Sgd::new(0.05, 0.9, 1e-3, true), |o, lr| o.lr = lr, Sgd::state, false);
}

#[test]
fn the_allocator_reuses_blocks_and_reports_peak_and_fragmentation() {
    let dev = GpuDevice::emulated_with_memory(1 << 30);
    let mut net = tiny_net(&dev);
    let model_bytes = dev.memory_stats().in_use;
    assert!(model_bytes > 0);
    let gpu = Device::Gpu(dev.clone());
    let shape = [2, 3, 16, 16]; // branches 4×4 … 1×1: the least training BN accepts at batch 2
    let x = Tensor::from_f32(&shape, input(shape, 5)).unwrap().to_device(&gpu).unwrap();
    let target = Tensor::from_f32(&[2, 5, 4, 4], input([2, 5, 4, 4], 6)).unwrap().to_device(&gpu).unwrap();
    let mut adam = Adam::new(1e-3, 0.0);
    let mut step = |net: &mut HrNet| hrk::cli::bench::train_step(net, &mut adam, &x, &target).unwrap();
    step(&mut net);
    step(&mut net); // Adam's state exists from here on
    let warm = dev.memory_stats();
    assert_consistent(&warm);
    step(&mut net);
    let after = dev.memory_stats();
    assert_consistent(&after);
    assert_eq!(after.device_allocations, warm.device_allocations, "a steady-state step took fresh memory");
    assert!(after.reuses > warm.reuses);
    assert_eq!(after.in_use, warm.in_use, "a step leaked device memory");
    assert!(after.peak_in_use > after.in_use, "a step's intermediates count in the peak");
    assert!(after.cached() > 0 && after.fragmentation() > 0.0, "{after:?}");
    eprintln!("tiny training step on the emulated device: {}", after.summary());
}

/// The peak device memory of `work` on a fresh unlimited device, and the memory in use before it.
fn measure(work: &dyn Fn(&GpuDevice) -> anyhow::Result<()>) -> (usize, usize) {
    let dev = GpuDevice::emulated_with_memory(1 << 30);
    let net_bytes = {
        let _net = tiny_net(&dev);
        dev.memory_stats().in_use
    };
    work(&dev).unwrap();
    (net_bytes, dev.memory_stats().peak_in_use)
}

#[test]
fn out_of_memory_mid_training_and_mid_inference_is_one_line() {
    let shape = [2, 3, 16, 16]; // branches 4×4 … 1×1: the least training BN accepts at batch 2
    let train = |dev: &GpuDevice| -> anyhow::Result<()> {
        let mut net = tiny_net(dev);
        let gpu = Device::Gpu(dev.clone());
        let x = Tensor::from_f32(&shape, input(shape, 5))?.to_device(&gpu)?;
        let target = Tensor::from_f32(&[2, 5, 4, 4], input([2, 5, 4, 4], 6))?.to_device(&gpu)?;
        let mut adam = Adam::new(1e-3, 0.0);
        hrk::cli::bench::train_step(&mut net, &mut adam, &x, &target)?;
        Ok(())
    };
    let infer = |dev: &GpuDevice| -> anyhow::Result<()> {
        let net = tiny_net(dev);
        let mut engine = GpuInferNet::new(&net, dev)?;
        engine.graphs = true;
        engine.forward_host(&input(shape, 5), shape)?;
        Ok(())
    };
    for (what, work) in [("training step", &train as &dyn Fn(&GpuDevice) -> anyhow::Result<()>), ("inference", &infer)]
    {
        let (net_bytes, peak) = measure(work);
        assert!(peak > net_bytes, "{what}: peak {peak} vs model {net_bytes}");
        // Room for the model and half of what the work needs on top of it.
        let dev = GpuDevice::emulated_with_memory(net_bytes + (peak - net_bytes) / 2);
        let e = work(&dev).expect_err("ran in half the memory it needs");
        let msg = format!("{e:#}");
        assert!(msg.contains("CUDA out of memory") && msg.contains(" buffer (in use "), "{what}: {msg}");
        assert!(!msg.contains('\n'), "{what}: {msg}");
        eprintln!("{what}: {msg}");
        assert_consistent(&dev.memory_stats());
    }
}

#[test]
fn out_of_memory_frees_the_cache_and_retries() {
    let dev = GpuDevice::emulated_with_memory(64 << 10);
    drop(dev.empty(10_000).unwrap()); // 40 KB cached
    assert_eq!(dev.memory_stats().cached(), 40_448);
    // 28 KB more would exceed 64 KiB with the cache held: it is handed back, then the request fits.
    let b = dev.empty(7_000).unwrap();
    let s = dev.memory_stats();
    assert_eq!((s.cache_flushes, s.reserved, s.in_use), (1, 28_160, 28_160));
    drop(b);
    let e = dev.empty(20_000).unwrap_err();
    assert!(e.to_string().contains("in use 0 B, reserved 0 B of 64.0 KiB after freeing the cache"), "{e}");
}

// ---------- on a real GPU (skipped with a printed reason otherwise; benches/gpu_check.sh runs them) ----------

fn cuda_device() -> Option<GpuDevice> {
    #[cfg(feature = "cuda")]
    {
        match GpuDevice::cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipped: {e:#}");
                None
            }
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        eprintln!("skipped: built without the `cuda` feature");
        None
    }
}

fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

/// HRNetV2-W18 (98 landmarks, 256×256, batch 2) on the device against the CPU engine; the graph replay
/// must equal the device's own eager run exactly, and one training step's loss must agree with the CPU's.
#[test]
fn cuda_w18_inference_graphs_and_train_step_match_cpu() {
    let Some(dev) = cuda_device() else { return };
    let mut net = HrNet::new(&hrk::model::HrnetSpec::w18(98), 1).unwrap();
    let shape = [2, 3, 256, 256];
    let x = input(shape, 1);
    let xt = Tensor::from_f32(&shape, x.clone()).unwrap();
    let want = hrk::model::InferNet::new(&net).unwrap().forward(&xt).unwrap().to_f32_vec();
    let target = Tensor::from_f32(&[2, 98, 64, 64], input([2, 98, 64, 64], 2)).unwrap();
    let mut cpu_net = HrNet::new(&hrk::model::HrnetSpec::w18(98), 1).unwrap();
    let cpu_loss = hrk::cli::bench::train_step(&mut cpu_net, &mut Adam::new(1e-4, 0.0), &xt, &target).unwrap();

    let gpu = Device::Gpu(dev.clone());
    net.to_device(&gpu).unwrap();
    let mut eager = GpuInferNet::new(&net, &dev).unwrap();
    eager.graphs = false;
    let got = eager.forward_host(&x, shape).unwrap().0;
    let err = rel_l2(&got, &want);
    eprintln!("W18 inference on {}: rel_l2 {err:.2e} vs the CPU engine", dev.name());
    // TF32 convs (10-bit mantissa) through ~100 layers; fp32 lands near 1e-6.
    assert!(err <= 2e-2, "W18 inference on the device: rel_l2 {err:e} vs cpu");
    let mut graphed = GpuInferNet::new(&net, &dev).unwrap();
    graphed.graphs = true;
    assert_eq!(graphed.forward_host(&x, shape).unwrap().0, got, "eager warm-up of the graph engine");
    assert_eq!(graphed.forward_host(&x, shape).unwrap().0, got, "graph replay vs eager");
    assert_eq!(graphed.graph_counts().replays, 1);

    let gpu_loss = hrk::cli::bench::train_step(
        &mut net,
        &mut Adam::new(1e-4, 0.0),
        &xt.to_device(&gpu).unwrap(),
        &target.to_device(&gpu).unwrap(),
    )
    .unwrap();
    let rel = (gpu_loss - cpu_loss).abs() / cpu_loss.abs().max(1e-30);
    eprintln!("W18 train step loss: gpu {gpu_loss} cpu {cpu_loss} (rel {rel:.1e}); {}", dev.memory_stats().summary());
    assert!(rel <= 1e-2, "W18 training loss on the device {gpu_loss} vs cpu {cpu_loss}");
    assert_consistent(&dev.memory_stats());
}

/// The training-step graphs on a real device (skipped without one): replays agree with the eager steps.
#[test]
fn cuda_training_step_graphs_match_eager() {
    let Some(dev) = cuda_device() else { return };
    training_graphs_equal_eager(&dev, false, || Adam::new(0.05, 1e-3), |o, lr| o.lr = lr, Adam::state, true);
    training_graphs_equal_eager(&dev, false, || Sgd::new(0.05, 0.9, 1e-3, true), |o, lr| o.lr = lr, Sgd::state, false);
}

/// On a real device the graph's node count comes from the driver (`cuGraphGetNodes`): it must equal the
/// launches hrk recorded, for a small mixed capture and for the inference forward of the tiny model.
#[test]
fn cuda_captured_graph_nodes_match_the_launches_recorded() {
    let Some(dev) = cuda_device() else { return };
    captured_nodes_match_launches(&dev);
    let net = tiny_net(&dev);
    let mut graphed = GpuInferNet::new(&net, &dev).unwrap();
    graphed.graphs = true;
    let shape = [2, 3, 24, 32];
    graphed.forward_host(&input(shape, 11), shape).unwrap();
    let launches = graphed.graph_counts().last_launches;
    assert_eq!(graphed.last_graph_node_count().unwrap(), Some(launches), "inference graph nodes vs launches");
    device_works_after_a_failed_capture(&dev);
}
