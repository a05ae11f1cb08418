"""The `hrk` Python module against the hrk CLI it wraps: predict equals `hrk predict`'s JSON bit for
bit (paths, arrays, PIL images, batches, both precisions), heatmaps equal the ONNX export under ONNX
Runtime, evaluate equals `hrk test`, train calls back per epoch and stops cleanly on Ctrl-C; bad input
raises the right exception; no leak over 1000 calls; threads."""
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hrk
from conftest import FIXTURES, run_cli, tiny_yaml


def cli_predict(cfg, weights, images, out, *flags):
    """`hrk predict` on `images`: {image path: its JSON document}."""
    run_cli("predict", "--cfg", cfg, "--model-file", weights, "--out", out, "-q", *flags, *images)
    docs = {}
    for f in Path(out).glob("*.json"):
        doc = json.loads(f.read_text())
        docs[doc["image"]] = doc
    return docs


def assert_faces_equal(faces, doc):
    """The module's faces are the JSON's faces: the same values, bit for bit."""
    assert [json.loads(f.to_json()) for f in faces] == doc["faces"]
    for face, want in zip(faces, doc["faces"]):
        assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (len(want["landmarks"]), 2)
        assert np.array_equal(face.landmarks, np.array(want["landmarks"], dtype=np.float32))
        assert np.array_equal(face.landmark_scores, np.array(want["landmark_scores"], dtype=np.float32))
        # Boxes print f32-exact values in their shortest f32 form (sink.rs `json_num`).
        for got, w in zip(face.box, want["box"]):
            assert got == w or np.float32(got) == np.float32(w)
        assert face.score == (None if want["score"] is None else np.float32(want["score"]))


@pytest.fixture(scope="module")
def cli_docs(trained, fixture_images, tmp_path_factory):
    cfg, weights, _, _ = trained
    return cli_predict(cfg, weights, fixture_images, tmp_path_factory.mktemp("predict"))


def test_train_called_back_per_epoch(trained):
    _, weights, epochs, summary = trained
    assert weights.is_file() and summary["epochs_run"] == 1
    assert len(epochs) == 1 and epochs[0]["epoch"] == 0
    assert set(epochs[0]) >= {"epoch", "lr", "train_loss", "val_loss", "nme", "fr_008", "fr_010", "auc_010"}
    assert summary["history"] == epochs


def test_predict_paths_equal_cli_json(model, cli_docs, fixture_images):
    for path in fixture_images:
        assert_faces_equal(model.predict(str(path)), cli_docs[str(path)])
    # os.PathLike too.
    assert_faces_equal(model.predict(fixture_images[0]), cli_docs[str(fixture_images[0])])


def test_predict_batch_equals_one_at_a_time(model, cli_docs, fixture_images):
    batched = model.predict_batch([str(p) for p in fixture_images])
    assert len(batched) == len(fixture_images)
    for path, faces in zip(fixture_images, batched):
        assert_faces_equal(faces, cli_docs[str(path)])
    # Whole images, one face each, 4 per forward pass: batches mix images.
    whole = model.predict_batch([str(p) for p in fixture_images], detector=False)
    for path, faces in zip(fixture_images, whole):
        assert [f.to_json() for f in faces] == [f.to_json() for f in model.predict(str(path), detector=False)]


def test_arrays_and_pil_equal_cli_json(model, cli_docs):
    # PNG and PPM decode to the same pixels everywhere, so arrays from Pillow equal the CLI's input.
    for name in ["odd.png", "astronaut_small.ppm"]:
        path = FIXTURES / name
        rgb = np.asarray(Image.open(path).convert("RGB"))
        doc = cli_docs[str(path)]
        assert_faces_equal(model.predict(rgb), doc)
        assert_faces_equal(model.predict(Image.open(path)), doc)
        # A strided view (every channel, reversed twice) is read correctly too.
        assert_faces_equal(model.predict(rgb[:, ::-1][:, ::-1]), doc)
        rgba = np.dstack([rgb, np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])])
        assert_faces_equal(model.predict(rgba), doc)


def test_grey_array_equals_cli_on_grey_png(trained, model, tmp_path):
    cfg, weights, _, _ = trained
    grey = np.asarray(Image.open(FIXTURES / "odd.png").convert("L"))
    path = tmp_path / "grey.png"
    Image.fromarray(grey).save(path)
    doc = cli_predict(cfg, weights, [path], tmp_path / "out")[str(path)]
    assert_faces_equal(model.predict(grey), doc)


def test_boxes_and_whole_image_equal_cli(trained, model, tmp_path):
    cfg, weights, _, _ = trained
    path = FIXTURES / "group.jpg"
    doc = cli_predict(cfg, weights, [path], tmp_path / "box", "--box", "40,50,140,160")[str(path)]
    assert_faces_equal(model.predict(str(path), boxes=[(40, 50, 140, 160)]), doc)
    doc = cli_predict(cfg, weights, [path], tmp_path / "none", "--detector", "none", "--flip-test", "--decode", "dark")
    assert_faces_equal(model.predict(str(path), detector=False, flip_test=True, decode="dark"), doc[str(path)])


def test_f32_and_bf16_models_side_by_side(trained, fixture_images, tmp_path):
    cfg, weights, _, _ = trained
    images = [str(p) for p in fixture_images[:3]]
    want = {p: cli_predict(cfg, weights, images, tmp_path / p, "--precision", p) for p in ["f32", "bf16"]}
    m32 = hrk.Model(cfg, weights, precision="f32")
    m16 = hrk.Model(cfg, weights, precision="bf16")
    for _ in range(2):  # interleaved: neither model's precision leaks into the other
        for path in images:
            assert_faces_equal(m16.predict(path), want["bf16"][path])
            assert_faces_equal(m32.predict(path), want["f32"][path])
    # At the same time, from two threads.
    got = {}
    barrier = threading.Barrier(2)

    def run(name, m):
        barrier.wait()
        got[name] = [m.predict(p) for p in images * 2]

    threads = [threading.Thread(target=run, args=a) for a in [("f32", m32), ("bf16", m16)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in ["f32", "bf16"]:
        for path, faces in zip(images * 2, got[name]):
            assert_faces_equal(faces, want[name][path])


def test_cpu_and_emulated_gpu_models_side_by_side(trained, model, tmp_path):
    """Two devices in one process: the emulated GPU (`device="emu"`: the CUDA kernels run on the host)
    gives what `hrk predict --device emu` gives, and the CPU model is unaffected."""
    cfg, weights, _, _ = trained
    path = str(FIXTURES / "group.jpg")
    box = "40,50,140,160"
    want = {d: cli_predict(cfg, weights, [path], tmp_path / d, "--box", box, "--device", d)[path] for d in ["cpu", "emu"]}
    gpu = hrk.Model(cfg, weights, device="emu")
    assert gpu.device != "cpu"
    assert_faces_equal(gpu.predict(path, boxes=[(40, 50, 140, 160)]), want["emu"])
    assert_faces_equal(model.predict(path, boxes=[(40, 50, 140, 160)]), want["cpu"])


def test_heatmaps_equal_onnx_runtime(trained, model, tmp_path):
    import onnxruntime as ort

    cfg, weights, _, _ = trained
    onnx_path = tmp_path / "tiny.onnx"
    run_cli("export", "--cfg", cfg, "--model-file", weights, "--onnx", onnx_path)
    crops = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)
    got = model.heatmaps(crops)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"image": crops})[0]
    assert got.dtype == np.float32 and got.shape == want.shape == (5, 68, 16, 16)
    # The bound of tests/onnx_export.rs: the export folds BN into the convs and ONNX Runtime sums in
    # its own order, so the two differ by f32 rounding that grows with the output's magnitude;
    # 1e-4 x max|output| leaves room for that and none for a wrong layer.
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # Batching (5 crops run as 4 + 1) and the input's memory layout do not change them.
    assert np.array_equal(np.concatenate([model.heatmaps(crops[:2]), model.heatmaps(crops[2:])]), got)
    assert np.array_equal(model.heatmaps(np.asfortranarray(crops)), got)


def test_evaluate_equals_hrk_test(trained, tmp_path):
    cfg, weights, _, _ = trained
    run_cli("test", "--cfg", cfg, "--model-file", weights, "--out", tmp_path)
    want = json.loads((tmp_path / "metrics.json").read_text())["subsets"][0]
    got = hrk.evaluate(cfg, weights)
    for key in ["nme", "fr_008", "fr_010", "auc_008", "auc_010"]:
        assert got[key] == want[key], key
    assert got["images"] == want["images"]


def test_face_alignment_returns_what_face_alignment_documents(trained):
    cfg, weights, _, _ = trained
    fa = hrk.FaceAlignment(cfg, weights)
    # face_alignment: "a list of 68x2 (2D) arrays, one per face, or None if no face is found".
    found = fa.get_landmarks(str(FIXTURES / "group.jpg"))
    assert isinstance(found, list) and len(found) > 0
    for points in found:
        assert isinstance(points, np.ndarray) and points.shape == (68, 2) and points.dtype == np.float32
    assert fa.get_landmarks(str(FIXTURES / "noface.jpg")) is None
    assert fa.get_landmarks_from_image(np.asarray(Image.open(FIXTURES / "group.jpg"))) is not None
    landmarks, scores, boxes = fa.get_landmarks(str(FIXTURES / "group.jpg"), return_bboxes=True, return_landmark_score=True)
    assert len(landmarks) == len(scores) == len(boxes)
    assert scores[0].shape == (68,) and boxes[0].shape == (5,)
    assert fa.get_landmarks(str(FIXTURES / "noface.jpg"), return_bboxes=True) == (None, None, None)
    given = fa.get_landmarks(str(FIXTURES / "group.jpg"), detected_faces=[[40, 50, 140, 160, 0.9]])
    assert len(given) == 1 and given[0].shape == (68, 2)


def one_line_error(kind, call):
    with pytest.raises(kind) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message, message
    return message


def test_bad_input_raises_one_line_errors(model, tmp_path):
    assert "float32" in one_line_error(TypeError, lambda: model.predict(np.zeros((8, 8, 3), np.float32)))
    assert "float64" in one_line_error(TypeError, lambda: model.predict(np.zeros((8, 8, 4), np.float64)))
    assert "(8, 8, 2)" in one_line_error(ValueError, lambda: model.predict(np.zeros((8, 8, 2), np.uint8))).replace("[", "(").replace("]", ")")
    assert "empty" in one_line_error(ValueError, lambda: model.predict(np.zeros((0, 8, 3), np.uint8)))
    assert "int" in one_line_error(TypeError, lambda: model.predict(3))
    missing = tmp_path / "missing.jpg"
    assert "missing.jpg" in one_line_error(FileNotFoundError, lambda: model.predict(str(missing)))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4)
    assert "corrupt.jpg" in one_line_error(ValueError, lambda: model.predict(str(corrupt)))
    one_line_error(ValueError, lambda: model.predict(np.zeros((64, 64, 3), np.uint8), boxes=[(10, 10, 5, 5)]))
    one_line_error(ValueError, lambda: model.predict(str(FIXTURES / "group.jpg"), decode="cubic"))
    one_line_error(TypeError, lambda: model.heatmaps(np.zeros((1, 3, 64, 64), np.float64)))
    one_line_error(ValueError, lambda: model.heatmaps(np.zeros((1, 3, 32, 32), np.float32)))
    one_line_error(TypeError, lambda: list(model.track([np.zeros((64, 64, 3), np.uint8), 3])))  # raised at that frame
    one_line_error(FileNotFoundError, lambda: hrk.Model(tmp_path / "none.yaml", tmp_path / "none.safetensors"))
    # The interpreter survives and the model still works.
    assert len(model.predict(str(FIXTURES / "group.jpg"))) > 0


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_no_leak_over_1000_calls(model):
    image = np.asarray(Image.open(FIXTURES / "odd.png").convert("RGB"))
    bad = np.zeros((4, 4, 3), np.float32)

    def calls(n):
        for _ in range(n):
            faces = model.predict(image, detector=False)
            assert faces[0].landmarks.shape == (68, 2)
            with pytest.raises(TypeError):
                model.predict(bad)

    calls(100)  # warm: caches, the allocator's pools
    before = rss_bytes()
    calls(1000)
    grown = rss_bytes() - before
    # A leak of even one copy of the image (or of the 68x2 result) per call would add over 1000 x it.
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 1000 calls"


def test_two_threads_predict_at_once(model, cli_docs, fixture_images):
    paths = [str(p) for p in fixture_images[:4]]
    results = {}
    barrier = threading.Barrier(2)

    def work(mine):
        barrier.wait()
        for _ in range(3):
            for p in mine:
                results.setdefault(p, []).append(model.predict(p))

    threads = [threading.Thread(target=work, args=(paths[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in paths:
        assert len(results[p]) == 3
        for faces in results[p]:
            assert_faces_equal(faces, cli_docs[p])


def test_other_threads_run_during_a_call(model, fixture_images):
    """The GIL is released: with a switch interval far longer than the call, a counting thread can only
    run during the call if the call lets go of the GIL."""
    state = {"in_call": False, "counted": 0, "stop": False}

    def count():
        import time

        while not state["stop"]:
            if state["in_call"]:
                state["counted"] += 1
            time.sleep(0)  # gives the GIL back each round

    old = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    counter = threading.Thread(target=count)
    try:
        counter.start()
        state["in_call"] = True
        model.predict_batch([str(p) for p in fixture_images] * 2)
        state["in_call"] = False
    finally:
        state["stop"] = True
        sys.setswitchinterval(old)
        counter.join()
    assert state["counted"] > 0


def test_track_equals_cli_stdin_frames(trained, model, tmp_path):
    """`Model.track` is `hrk predict --stdin-frames`: the same faces, ids and smoothing per frame."""
    cfg, weights, _, _ = trained
    rgb = np.asarray(Image.open(FIXTURES / "group.jpg").convert("RGB"))
    frames = [rgb, rgb[:, ::-1].copy(), rgb, rgb]
    h, w, _ = rgb.shape
    run_cli("predict", "--cfg", cfg, "--model-file", weights, "--out", tmp_path, "-q", "--stdin-frames", f"{w}x{h}",
            "--fps", 25, "--redetect", 2, stdin=b"".join(f.tobytes() for f in frames))
    want = [json.loads(line)["faces"] for line in (tmp_path / "stdin.jsonl").read_text().splitlines()]
    tracked = list(model.track((f for f in frames), fps=25.0, redetect=2))  # a generator, pulled as it runs
    assert len(tracked) == len(want) == 4
    for faces, doc in zip(tracked, want):
        assert [json.loads(f.to_json()) for f in faces] == doc
        assert all(f.id is not None for f in faces)


def test_track_yields_each_frame_of_an_endless_stream(model):
    """An endless stream (a webcam) gives each frame's faces as it comes, its frames pulled one per result."""
    rgb = np.asarray(Image.open(FIXTURES / "group.jpg").convert("RGB"))
    produced = []

    def webcam():
        for i in itertools.count():
            produced.append(i)
            yield rgb if i % 2 == 0 else rgb[:, ::-1].copy()

    stream = model.track(webcam(), redetect=2)
    assert iter(stream) is stream
    assert produced == []
    results = []
    for k in range(1, 4):
        results.append(next(stream))
        assert len(produced) <= k + 1
        if k == 1:
            assert len(model.predict(rgb)) > 0  # the Model serves other calls between frames
    assert any(results)
    assert all(f.id is not None for faces in results for f in faces)


def test_detect_equals_predict_boxes(model):
    path = str(FIXTURES / "group.jpg")
    detections = hrk.detect(path)
    faces = model.predict(path)
    assert [d["score"] for d in detections] == [f.score for f in faces]
    assert all(d["points"].shape == (5, 2) for d in detections)


def test_train_stops_cleanly_on_ctrl_c(data, tmp_path):
    cfg = tmp_path / "long.yaml"
    cfg.write_text(tiny_yaml(data, tmp_path / "output", end_epoch=1000))
    out = tmp_path / "output"

    timers = []

    def interrupt_soon(metrics):
        # Ctrl-C from another thread shortly after the first epoch: it lands during training (checked
        # after every iteration) or in a callback; either way training stops with KeyboardInterrupt.
        if not timers:
            timers.append(threading.Timer(0.05, lambda: os.kill(os.getpid(), signal.SIGINT)))
            timers[0].start()

    with pytest.raises(KeyboardInterrupt):
        hrk.train(cfg, seed=1, on_epoch=interrupt_soon)
    run_dirs = [p for p in out.rglob("latest.safetensors")]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0].parent
    assert (run_dir / "checkpoint_0.safetensors").is_file() and not (run_dir / "final_state.safetensors").exists()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(lines) < 1000


def test_log_records_reach_python_logging(trained):
    cfg, weights, _, _ = trained
    script = (
        "import logging, sys, hrk\n"
        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s|%(levelname)s|%(message)s')\n"
        f"hrk.Model({str(cfg)!r}, {str(weights)!r}, device='auto')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert any(line.startswith("hrk") and "--device auto: using the CPU" in line for line in done.stdout.splitlines()), done.stdout
