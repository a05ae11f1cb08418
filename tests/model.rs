//! HRNetV2 structure: official state_dict names, counts and shapes; forward shapes; load errors.

mod common;
use common::model::tiny_spec;

use hrk::model::{HrNet, HrnetSpec, Slot};
use hrk::{DType, Tensor};

#[test]
fn w18_state_dict_matches_the_official_layout() {
    let net = HrNet::new(&HrnetSpec::w18(98), 0).unwrap();
    let sd = net.store.state_dict();
    assert_eq!(sd.len(), 1839, "state_dict entries");
    assert_eq!(net.store.num_params(), 9_662_528, "parameters");
    assert_eq!(net.store.params().len(), 921, "parameter tensors");
    let shape = |k: &str| {
        sd.iter().find(|(n, _)| n == k).map(|(_, h)| h.shape.clone()).unwrap_or_else(|| panic!("missing {k}"))
    };
    assert_eq!(shape("stage4.2.fuse_layers.3.0.2.0.weight"), vec![144, 18, 3, 3]);
    assert_eq!(shape("transition1.1.0.0.weight"), vec![36, 256, 3, 3]);
    assert_eq!(shape("transition2.2.0.0.weight"), vec![72, 36, 3, 3]);
    assert_eq!(shape("layer1.0.downsample.1.running_var"), vec![256]);
    assert_eq!(shape("head.0.weight"), vec![270, 270, 1, 1]);
    assert_eq!(shape("head.3.bias"), vec![98]);
    assert_eq!(shape("bn1.num_batches_tracked"), Vec::<usize>::new());
    assert_eq!(sd[0].0, "conv1.weight");
    assert_eq!(sd.last().unwrap().0, "head.3.bias");
    // Other joint counts: 9,635,970 + 271·J.
    for j in [68, 29, 19] {
        assert_eq!(HrNet::new(&HrnetSpec::w18(j), 0).unwrap().store.num_params(), 9_635_970 + 271 * j);
    }
}

#[test]
fn official_init_statistics() {
    let net = HrNet::new(&HrnetSpec::w18(98), 3).unwrap();
    let w = net.store.get("stage3.1.branches.2.0.conv1.weight").unwrap();
    let Slot::Param(w) = w else { panic!("conv weight must be a parameter") };
    let v = w.to_f64_vec();
    let std = (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt();
    assert!((std - 0.001).abs() < 0.0001, "conv init std {std}");
    let Slot::Param(b) = net.store.get("head.3.bias").unwrap() else { panic!() };
    let bound = 1.0 / 270f64.sqrt();
    assert!(b.to_f64_vec().iter().all(|x| x.abs() <= bound));
}

#[test]
fn forward_shapes_train_and_eval() {
    let mut net = HrNet::new(&tiny_spec(5), 1).unwrap();
    let x = Tensor::full(&[2, 3, 33, 31], DType::F32, 0.5);
    let y = net.forward(&x, true).unwrap();
    assert_eq!(y.shape(), &[2, 5, 9, 8]);
    let y = hrk::no_grad(|| net.forward(&x, false)).unwrap();
    assert_eq!(y.shape(), &[2, 5, 9, 8]);
    let Slot::Count(c) = net.store.get("bn1.num_batches_tracked").unwrap() else { panic!() };
    assert_eq!(*c, 1, "one training forward");
}

#[test]
fn final_conv_kernel_3_keeps_the_map_size() {
    let mut s = tiny_spec(5);
    s.final_conv_kernel = 3;
    let mut net = HrNet::new(&s, 1).unwrap();
    let y = hrk::no_grad(|| net.forward(&Tensor::zeros(&[1, 3, 32, 32], DType::F32), false)).unwrap();
    assert_eq!(y.shape(), &[1, 5, 8, 8]);
}

#[test]
fn load_errors_name_the_tensor() {
    let mut net = HrNet::new(&tiny_spec(5), 1).unwrap();
    let mut sd = net.store.state_dict();
    sd[0].1.shape = vec![1, 2, 3];
    let e = net.store.load(&sd, true, "w.safetensors").unwrap_err().to_string();
    assert!(e.contains("w.safetensors") && e.contains("conv1.weight") && e.contains("[1, 2, 3]"), "{e}");
    let mut sd = net.store.state_dict();
    sd.remove(1);
    let e = net.store.load(&sd, true, "w.safetensors").unwrap_err().to_string();
    assert!(e.contains("missing") && e.contains("bn1.weight"), "{e}");
    let mut sd = net.store.state_dict();
    sd.push(("extra.weight".into(), sd[1].1.clone()));
    let e = net.store.load(&sd, true, "w.safetensors").unwrap_err().to_string();
    assert!(e.contains("unexpected") && e.contains("extra.weight"), "{e}");
    // num_batches_tracked may be absent (older PyTorch).
    let sd: Vec<_> = net.store.state_dict().into_iter().filter(|(n, _)| !n.ends_with("num_batches_tracked")).collect();
    let r = net.store.load(&sd, true, "w.safetensors").unwrap();
    assert!(r.counters_missing > 0);
}

/// The evaluation engine the model keeps follows its weights: a training forward's BN statistics update
/// and a loaded state_dict both reach the next evaluation, which agrees with the graph.
#[test]
fn kept_eval_engine_follows_the_weights() {
    let mut net = HrNet::new(&tiny_spec(5), 1).unwrap();
    common::model::randomize(&mut net, 4);
    let shape = [2, 3, 32, 32];
    let x = common::values(9, shape.iter().product());
    let input = || Tensor::from_f32(&shape, x.clone()).unwrap();
    let graph = |net: &mut HrNet| hrk::no_grad(|| net.forward(&input(), false)).unwrap().to_f32_vec();
    let assert_close = |got: &[f32], want: &[f32], what: &str| {
        let err = got.iter().zip(want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
        assert!(err < 1e-4, "{what}: relative error {err}");
    };
    let saved = net.store.state_dict();
    let (before, dims) = net.eval_heatmaps(x.clone(), shape).unwrap();
    assert_eq!(&dims[..], &[2, 5, 8, 8]);
    assert_close(&before, &graph(&mut net), "folded vs graph");
    net.forward(&input(), true).unwrap();
    let (stepped, _) = net.eval_heatmaps(x.clone(), shape).unwrap();
    assert_ne!(stepped, before, "the running statistics' update did not reach the kept engine");
    assert_close(&stepped, &graph(&mut net), "folded vs graph after a training forward");
    net.store.load(&saved, true, "saved").unwrap();
    let (restored, _) = net.eval_heatmaps(x, shape).unwrap();
    assert_eq!(restored, before, "the loaded weights did not reach the kept engine");
}
