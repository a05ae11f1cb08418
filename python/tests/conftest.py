"""Shared set-up of the `hrk` module's tests: the hrk binary (the CLI the module must agree with), a
small synthetic data set made by `hrk synth`, a tiny config over it and weights trained for one
epoch by `hrk.train`."""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "mtcnn"


def hrk_bin():
    path = Path(os.environ.get("HRK_BIN", REPO / "target" / "release" / "hrk"))
    if not path.is_file():
        raise RuntimeError(f"the hrk binary {path} is missing: build it with `cargo build --release` (or set HRK_BIN)")
    return path


def run_cli(*args, stdin=None):
    """Runs `hrk ARGS...` and returns its stdout; fails the test with its stderr if it fails."""
    done = subprocess.run([str(hrk_bin()), *map(str, args)], input=stdin, capture_output=True)
    if done.returncode != 0:
        raise AssertionError(f"hrk {' '.join(map(str, args))} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout.decode()


def tiny_yaml(data, out, end_epoch=1):
    """The tests' model: 64x64 input, 16x16 heatmaps, 2/4/8/16 channels (tests/common/model.rs's tiny
    config), training for `end_epoch` epochs into `out`."""
    stages = ""
    for k, name in enumerate(["STAGE2", "STAGE3", "STAGE4"]):
        b = k + 2
        chans = ", ".join(str(2 << i) for i in range(b))
        blocks = ", ".join(["1"] * b)
        stages += (f"    {name}:\n      NUM_MODULES: 1\n      NUM_BRANCHES: {b}\n      BLOCK: BASIC\n"
                   f"      NUM_BLOCKS: [{blocks}]\n      NUM_CHANNELS: [{chans}]\n      FUSE_METHOD: SUM\n")
    return (
        f"GPUS: (0,)\nWORKERS: 2\nPRINT_FREQ: 100\nOUTPUT_DIR: '{out}'\n"
        f"DATASET:\n  DATASET: 300W\n  ROOT: '{data}'\n"
        f"  TRAINSET: '{data / 'face_landmarks_synthetic_train.csv'}'\n"
        f"  TESTSET: '{data / 'face_landmarks_synthetic_test.csv'}'\n"
        "MODEL:\n  NAME: hrnet\n  NUM_JOINTS: 68\n  INIT_WEIGHTS: false\n  SIGMA: 1.0\n"
        "  IMAGE_SIZE: [64, 64]\n  HEATMAP_SIZE: [16, 16]\n  EXTRA:\n    FINAL_CONV_KERNEL: 1\n" + stages +
        f"TRAIN:\n  BATCH_SIZE_PER_GPU: 4\n  END_EPOCH: {end_epoch}\n  LR: 0.002\n"
        "TEST:\n  BATCH_SIZE_PER_GPU: 4\n"
    )


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("synthetic")
    run_cli("synth", "--out", d, "--joints", 68, "--count", 16, "--seed", 11)
    return d


@pytest.fixture(scope="session")
def trained(data, tmp_path_factory):
    """(cfg, weights, epochs seen by on_epoch, train's summary): one epoch of `hrk.train`."""
    import hrk

    d = tmp_path_factory.mktemp("tiny")
    cfg = d / "tiny.yaml"
    cfg.write_text(tiny_yaml(data, d / "output"))
    epochs = []
    summary = hrk.train(cfg, seed=3, on_epoch=epochs.append)
    weights = Path(summary["final_state"])
    return cfg, weights, epochs, summary


@pytest.fixture(scope="session")
def model(trained):
    import hrk

    cfg, weights, _, _ = trained
    return hrk.Model(cfg, weights)


@pytest.fixture(scope="session")
def fixture_images():
    return sorted(FIXTURES.glob("*.jpg")) + [FIXTURES / "odd.png", FIXTURES / "astronaut_small.ppm"]
