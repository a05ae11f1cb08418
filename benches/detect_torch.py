"""Times facenet-pytorch's MTCNN (its defaults, keep_all=True) on one image, torch threads = 2 by default.

Usage: python detect_torch.py IMAGE [--runs N] [--threads T]; prints `facenet-pytorch median_ms min_ms`.
Run by `cargo bench --bench detect`, interleaved with hrk's own timing.
"""
import argparse
import statistics
import time

import torch
from facenet_pytorch import MTCNN
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("image")
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.set_grad_enabled(False)
mtcnn = MTCNN(keep_all=True)
img = Image.open(a.image).convert("RGB")
for _ in range(3):
    mtcnn.detect(img, landmarks=True)
times = []
for _ in range(a.runs):
    t = time.perf_counter()
    mtcnn.detect(img, landmarks=True)
    times.append((time.perf_counter() - t) * 1e3)
print(f"facenet-pytorch {statistics.median(times):.2f} {min(times):.2f}")
