"""What a call of the hrk Python module costs on a 640x480 photo against the hrk CLI's per-image time
(issue 27). Same model, same photo (tests/fixtures/mtcnn/group.jpg, 640x480, 4 faces), the detector
on, one thread pool of all cores.

    .venv/bin/python benches/python_overhead.py [--cfg YAML --model-file WEIGHTS] [--hrk target/release/hrk]

Default model: the README's demo (experiments/synthetic/synthetic_hrnet_tiny.yaml and
output/300W/synthetic_hrnet_tiny/final_state.safetensors, made by the README's first command).
Prints one line per measurement (median of --calls calls, milliseconds)."""
import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import hrk

REPO = Path(__file__).resolve().parents[1]


def median_ms(call, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cfg", default=REPO / "experiments/synthetic/synthetic_hrnet_tiny.yaml")
    ap.add_argument("--model-file", default=REPO / "output/300W/synthetic_hrnet_tiny/final_state.safetensors")
    ap.add_argument("--hrk", default=REPO / "target/release/hrk")
    ap.add_argument("--image", default=REPO / "tests/fixtures/mtcnn/group.jpg")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--copies", type=int, default=40)
    a = ap.parse_args()
    image = str(a.image)
    model = hrk.Model(a.cfg, a.model_file)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    faces = model.predict(image)
    boxes = [f.box for f in faces]
    for _ in range(3):
        model.predict(image)

    rows = {
        "module predict(path)": median_ms(lambda: model.predict(image), a.calls),
        "module predict(uint8 array)": median_ms(lambda: model.predict(rgb), a.calls),
        "module predict(array, boxes=the 4 faces)": median_ms(lambda: model.predict(rgb, boxes=boxes), a.calls),
        "module heatmaps(4 crops) [model alone]": median_ms(
            lambda: model.heatmaps(np.zeros((len(boxes), 3, *model.input_size), np.float32)), a.calls
        ),
    }
    rows[f"module predict_batch({a.copies} paths) per image"] = (
        median_ms(lambda: model.predict_batch([image] * a.copies), 3) / a.copies
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(a.copies):
            shutil.copy(image, tmp / f"photo{i:03}.jpg")

        def cli(images, out):
            subprocess.run(
                [str(a.hrk), "predict", "-q", "--cfg", str(a.cfg), "--model-file", str(a.model_file),
                 "--out", str(tmp / out), *map(str, images)],
                check=True, capture_output=True,
            )

        one = median_ms(lambda: cli([tmp / "photo000.jpg"], "one"), 5)
        many = median_ms(lambda: cli(sorted(tmp.glob("photo*.jpg")), "many"), 3)
    rows["CLI hrk predict, 1 photo (process, model load, JSON + overlay PNG)"] = one
    rows[f"CLI hrk predict, {a.copies} photos: per photo"] = many / a.copies
    rows[f"CLI marginal per photo ({a.copies} photos minus 1, / {a.copies - 1})"] = (many - one) / (a.copies - 1)
    print(f"faces: {len(faces)}  image: {rgb.shape[1]}x{rgb.shape[0]}  hrk {hrk.__version__}")
    for name, ms in rows.items():
        print(f"{ms:9.2f} ms  {name}")


if __name__ == "__main__":
    main()
