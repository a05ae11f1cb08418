"""Runs an ONNX file exported by `hrk export` with the onnx checker and ONNX Runtime and compares with
hrk's own outputs (written by tests/onnx_export.rs). Usage: check_onnx.py DIR, where DIR holds
model.onnx, case.json ({"cases": [{"input", "shape", "heatmaps", "hm_shape"}], "decode": bool}) and the
raw little-endian f32 files it names. Exits non-zero on any mismatch; prints one JSON line of figures."""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort


def load(d, name, shape):
    return np.fromfile(os.path.join(d, name), dtype="<f4").reshape(shape)


def main(d):
    spec = json.load(open(os.path.join(d, "case.json")))
    path = os.path.join(d, "model.onnx")
    # full_check also runs shape inference over every node.
    onnx.checker.check_model(path, full_check=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    assert outs[0] == "heatmaps", outs
    report = []
    for case in spec["cases"]:
        x = load(d, case["input"], case["shape"])
        want = load(d, case["heatmaps"], case["hm_shape"])
        got = sess.run(None, {"image": x})
        hm = got[0]
        assert hm.shape == want.shape, (hm.shape, want.shape)
        scale = float(np.abs(want).max())
        err = float(np.abs(hm - want).max())
        ok = err <= 1e-4 * scale
        row = {"batch": case["shape"][0], "max_abs": scale, "max_err": err, "rel": err / scale, "ok": ok}
        if spec["decode"]:
            lm = got[1]
            n, j, h, w = want.shape
            assert lm.shape == (n, j, 3), lm.shape
            flat = want.reshape(n, j, h * w)
            idx = (lm[:, :, 1] * w + lm[:, :, 0]).astype(np.int64)
            # ORT's argmax must point at a maximum of hrk's maps up to the tolerance, and the maxima agree.
            at = np.take_along_axis(flat, idx[:, :, None], axis=2)[:, :, 0]
            gap = float((flat.max(axis=2) - at).max())
            max_err = float(np.abs(lm[:, :, 2] - flat.max(axis=2)).max())
            int_ok = bool(np.all(lm[:, :, :2] == np.round(lm[:, :, :2])) and np.all(lm[:, :, 0] < w)
                          and np.all(lm[:, :, 1] < h) and np.all(lm[:, :, :2] >= 0))
            row.update(decode_gap=gap, decode_max_err=max_err, decode_ints=int_ok)
            ok = ok and int_ok and gap <= 2e-4 * scale and max_err <= 1e-4 * scale
            row["ok"] = ok
        report.append(row)
    print(json.dumps({"onnx": onnx.__version__, "ort": ort.__version__, "cases": report}))
    return 0 if all(r["ok"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
