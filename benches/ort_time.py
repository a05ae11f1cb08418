"""Times ONNX Runtime (CPU) on any image model, e.g. hrk's own export beside the shared anchor
(benches/compare_anchors.sh ... hrk-onnx). Same protocol and line format as shared/bench/run_ort.py
(3 warm-up runs, median/min/max over the iterations, random inputs).

  python ort_time.py --model M.onnx [--threads 2] [--batch 1] [--iters 10] [--label ort-hrk]
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--label", default="ort")
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    rng = np.random.default_rng(0)
    for b in a.batch:
        x = rng.standard_normal((b, *inp.shape[1:]), dtype=np.float32)
        for _ in range(3):
            sess.run(None, {inp.name: x})
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            sess.run(None, {inp.name: x})
            ts.append(time.perf_counter() - t0)
        med = statistics.median(ts)
        print(f"{a.label} b{b}: median {med * 1e3:.1f} ms (min {min(ts) * 1e3:.1f}, max {max(ts) * 1e3:.1f}), "
              f"{med * 1e3 / b:.1f} ms/img, {b / med:.2f} img/s")


if __name__ == "__main__":
    main()
