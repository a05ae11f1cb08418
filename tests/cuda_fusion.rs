//! The fused multi-resolution fusion kernel (kernels/fusion.cu) and the residual epilogue of the conv
//! kernel, run under the host emulator and compared with the CPU ops (upsample_bilinear, add, relu,
//! conv2d, with autograd for the backward) on odd shapes: odd sizes, non-integer resize ratios, 1–4 inputs.
use hrk::autograd::backward_with;
use hrk::cuda::{GpuBuffer, GpuDevice};
use hrk::ops::conv2d::cuda_kernel::{forward_buffers as conv2d_forward, ConvEpilogue};
use hrk::ops::fusion::{self, UpTerm};
use hrk::{ops, Storage, Tensor};

mod common;
use common::values;

/// Every value within `tol` × max(1, |want|).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    common::assert_close_by(what, got, want, |w| f64::from(tol) * w.abs().max(1.0));
}

struct Case {
    /// Output [n, c, h, w].
    dims: [usize; 4],
    with_identity: bool,
    ups: Vec<[usize; 2]>,
    downs: usize,
}

fn cases() -> Vec<Case> {
    vec![
        // Branch 0 of a 4-branch module: identity + 3 upsampled terms (ratios 7/4, 9/5, 7/2, 9/3, 7/1).
        Case { dims: [2, 3, 7, 9], with_identity: true, ups: vec![[4, 5], [2, 3], [1, 1]], downs: 0 },
        // Branch 2 of 4: two down terms, identity, one up term with non-integer ratios.
        Case { dims: [1, 5, 5, 3], with_identity: true, ups: vec![[3, 2]], downs: 2 },
        // Last branch of 4: identity + 3 down terms.
        Case { dims: [3, 2, 3, 5], with_identity: true, ups: vec![], downs: 3 },
        // One input only (a 1-branch module's ReLU), and a lone up term without identity.
        Case { dims: [1, 4, 6, 11], with_identity: true, ups: vec![], downs: 0 },
        Case { dims: [2, 1, 9, 7], with_identity: false, ups: vec![[5, 4]], downs: 0 },
    ]
}

/// The CPU reference's output and gradients: (y, d_up per term, d_down per term, dx when x is given).
type Reference = (Vec<f32>, Vec<Vec<f32>>, Vec<Vec<f32>>, Option<Vec<f32>>);

/// CPU reference: relu(x + Σ down + Σ upsample_bilinear(up)) with autograd, and its gradients for `dy`.
fn cpu_reference(c: &Case, x: &[f32], ups: &[Vec<f32>], downs: &[Vec<f32>], dy: &[f32]) -> Reference {
    let [n, ch, h, w] = c.dims;
    let xt = Tensor::from_f32(&c.dims, x.to_vec()).unwrap().requires_grad();
    let ut: Vec<Tensor> = ups
        .iter()
        .zip(&c.ups)
        .map(|(v, s)| Tensor::from_f32(&[n, ch, s[0], s[1]], v.clone()).unwrap().requires_grad())
        .collect();
    let dt: Vec<Tensor> = downs.iter().map(|v| Tensor::from_f32(&c.dims, v.clone()).unwrap().requires_grad()).collect();
    let mut acc: Option<Tensor> = c.with_identity.then(|| xt.clone());
    let mut push = |t: Tensor| {
        acc = Some(match acc.take() {
            None => t,
            Some(a) => ops::add(&a, &t).unwrap(),
        })
    };
    for d in &dt {
        push(d.clone());
    }
    for u in &ut {
        push(ops::upsample_bilinear(u, [h, w]).unwrap());
    }
    let y = ops::relu(&acc.unwrap()).unwrap();
    let grads = backward_with(&y, Storage::f32(dy.to_vec())).unwrap();
    let g = |t: &Tensor| grads.get(t).map(|s| s.to_f32_vec()).unwrap_or_else(|| vec![0.0; t.numel()]);
    (y.to_f32_vec(), ut.iter().map(g).collect(), dt.iter().map(g).collect(), c.with_identity.then(|| g(&xt)))
}

#[test]
fn fusion_forward_backward_match_cpu_ops() {
    let dev = GpuDevice::emulated();
    for (ci, c) in cases().iter().enumerate() {
        let [n, ch, h, w] = c.dims;
        let len = n * ch * h * w;
        let seed = 100 * ci as u64;
        let x = values(seed + 1, len);
        let ups: Vec<Vec<f32>> =
            c.ups.iter().enumerate().map(|(k, s)| values(seed + 10 + k as u64, n * ch * s[0] * s[1])).collect();
        let downs: Vec<Vec<f32>> = (0..c.downs).map(|k| values(seed + 20 + k as u64, len)).collect();
        let dy = values(seed + 30, len);
        let (want_y, want_dup, want_ddown, want_dx) = cpu_reference(c, &x, &ups, &downs, &dy);

        let xb = dev.upload(&x).unwrap();
        let ub: Vec<GpuBuffer> = ups.iter().map(|v| dev.upload(v).unwrap()).collect();
        let db: Vec<GpuBuffer> = downs.iter().map(|v| dev.upload(v).unwrap()).collect();
        let terms: Vec<UpTerm> = ub.iter().zip(&c.ups).map(|(z, &size)| UpTerm { z, size }).collect();
        let downs_ref: Vec<&GpuBuffer> = db.iter().collect();
        let ident = c.with_identity.then_some(&xb);
        let y = fusion::forward(c.dims, ident, &terms, &downs_ref).unwrap();
        let y_host = y.to_vec().unwrap();
        assert_close(&format!("case {ci} fused y"), &y_host, &want_y, 1e-5);
        let y_unfused = fusion::forward_unfused(c.dims, ident, &terms, &downs_ref).unwrap().to_vec().unwrap();
        assert_close(&format!("case {ci} unfused rung y"), &y_unfused, &want_y, 1e-5);

        let (g, d_up) = fusion::backward(c.dims, &y, &dev.upload(&dy).unwrap(), &c.ups).unwrap();
        let g = g.to_vec().unwrap();
        if let Some(want) = &want_dx {
            assert_close(&format!("case {ci} d identity"), &g, want, 1e-6);
        }
        for (k, want) in want_ddown.iter().enumerate() {
            assert_close(&format!("case {ci} d down[{k}]"), &g, want, 1e-6);
        }
        for (k, (got, want)) in d_up.iter().zip(&want_dup).enumerate() {
            assert_close(&format!("case {ci} d up[{k}]"), &got.to_vec().unwrap(), want, 1e-5);
        }
    }
}

#[test]
fn fusion_rejects_bad_shapes_with_one_line_errors() {
    let dev = GpuDevice::emulated();
    let x = dev.upload(&values(1, 2 * 3 * 4)).unwrap();
    let small = dev.upload(&values(2, 5)).unwrap();
    let e =
        fusion::forward([1, 2, 3, 4], Some(&x), &[UpTerm { z: &small, size: [2, 2] }], &[]).unwrap_err().to_string();
    assert!(e.contains("up term") && !e.contains('\n'), "{e}");
    let four = [&x, &x, &x, &x];
    let e = fusion::forward([1, 2, 3, 4], Some(&x), &[], &four).unwrap_err().to_string();
    assert!(e.contains("at most 3"), "{e}");
    let e = fusion::forward([1, 2, 3, 4], None, &[], &[]).unwrap_err().to_string();
    assert!(e.contains("nothing to sum"), "{e}");
}

/// The f32 FMA conv's epilogue (the tensor-core kernels' epilogue is checked in tests/cuda_mma.rs).
#[test]
fn conv_residual_epilogue_matches_cpu_ops() {
    hrk::cuda::with_gpu_math(hrk::cuda::GpuMath::Fp32, conv_residual_epilogue_fp32);
}

fn conv_residual_epilogue_fp32() {
    let dev = GpuDevice::emulated();
    // (input dims, weight dims, stride, pad): odd sizes, 3x3 stride 1/2, 1x1.
    for (i, (xd, wd, stride, pad)) in
        [([2, 3, 7, 6], [5, 3, 3, 3], 1, 1), ([1, 4, 9, 7], [6, 4, 3, 3], 2, 1), ([2, 5, 5, 3], [3, 5, 1, 1], 1, 0)]
            .into_iter()
            .enumerate()
    {
        let x = values(i as u64 * 7 + 1, xd.iter().product());
        let wt = values(i as u64 * 7 + 2, wd.iter().product());
        let bias = values(i as u64 * 7 + 3, wd[0]);
        let xt = Tensor::from_f32(&xd, x.clone()).unwrap();
        let conv = ops::conv2d(
            &xt,
            &Tensor::from_f32(&wd, wt.clone()).unwrap(),
            Some(&Tensor::from_f32(&[wd[0]], bias.clone()).unwrap()),
            stride,
            pad,
        )
        .unwrap();
        let res = values(i as u64 * 7 + 4, conv.numel());
        let want = ops::relu(&ops::add(&conv, &Tensor::from_f32(conv.shape(), res.clone()).unwrap()).unwrap())
            .unwrap()
            .to_f32_vec();
        let (xb, wb, bb, rb) =
            (dev.upload(&x).unwrap(), dev.upload(&wt).unwrap(), dev.upload(&bias).unwrap(), dev.upload(&res).unwrap());
        let ep = ConvEpilogue { bias: Some(&bb), residual: Some(&rb), relu: true };
        let (y, yd) = conv2d_forward(&xb, xd, &wb, wd, stride, pad, ep).unwrap();
        assert_eq!(&yd[..], conv.shape());
        assert_close(&format!("conv {i} + bias + residual + relu"), &y.to_vec().unwrap(), &want, 1e-5);
        // Without the epilogue extras it is the plain convolution.
        let (y0, _) =
            conv2d_forward(&xb, xd, &wb, wd, stride, pad, ConvEpilogue { bias: Some(&bb), ..Default::default() })
                .unwrap();
        assert_close(&format!("conv {i} + bias"), &y0.to_vec().unwrap(), &conv.to_f32_vec(), 1e-5);
    }
}
