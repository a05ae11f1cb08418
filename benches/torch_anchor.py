"""PyTorch anchors for `benches/compare_anchors.sh`: HRNetV2-W18 face (98 joints, 3x256x256) on the CPU,
the same model as shared/reference-py/hrnet_ref.py, timed one row per call so the script can interleave
them with hrk and ONNX Runtime.

  python benches/torch_anchor.py --row infer_cl --batch 1 --iters 10
  python benches/torch_anchor.py --row infer_bf16 --batch 8 --iters 5
  python benches/torch_anchor.py --row train_cl --batch 8 --iters 3
  python benches/torch_anchor.py --row train_bf16 --batch 8 --iters 3

Rows: infer_cl (f32, channels_last, eval + no_grad), infer_bf16 (channels_last, weights and inputs in
bf16: PyTorch's own bf16 inference, oneDNN picks AVX512-BF16/AMX where the CPU has them and emulates
otherwise), infer_autocast (f32 weights, torch.autocast bf16), train_cl (f32 channels_last: forward
with batch statistics, MSE, backward, Adam), train_bf16 (train_cl with the forward under
torch.autocast("cpu", dtype=torch.bfloat16): bf16 conv operands, f32 weights, MSE in f32, the same Adam; the
mixed-precision anchor for `hrk train --precision bf16`), train_eager (train_cl in NCHW). Prints one line:
"torch-<row> b<batch>: median X ms (min Y) Z ms/img".
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

SHARED = os.environ.get("HRK_SHARED", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared"))
sys.path.insert(0, os.path.join(SHARED, "reference-py"))
import hrnet_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--row", required=True,
                    choices=["infer_cl", "infer_bf16", "infer_autocast", "train_cl", "train_bf16", "train_eager"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = hrnet_ref.build(98)
    channels_last = a.row != "train_eager"
    x = torch.randn(a.batch, 3, 256, 256)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if a.row.startswith("infer"):
        model.eval()
        if a.row == "infer_bf16":
            model = model.to(torch.bfloat16)
            x = x.to(torch.bfloat16)

        def step():
            with torch.no_grad():
                if a.row == "infer_autocast":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        model(x)
                else:
                    model(x)
    else:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        target = torch.rand(a.batch, 98, 64, 64)

        def step():
            opt.zero_grad(set_to_none=True)
            if a.row == "train_bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    heatmaps = model(x)
                # The loss and the backward call outside the autocast region, as PyTorch's AMP recipe has it.
                loss = F.mse_loss(heatmaps.float(), target)
            else:
                loss = F.mse_loss(model(x), target)
            loss.backward()
            opt.step()
    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"torch-{a.row} b{a.batch}: median {med * 1e3:.1f} ms (min {min(times) * 1e3:.1f}) "
          f"{med * 1e3 / a.batch:.1f} ms/img", flush=True)


if __name__ == "__main__":
    main()
