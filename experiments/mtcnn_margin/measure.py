"""Measures how facenet-pytorch's MTCNN boxes relate to the tight landmark boxes of the official
CSV convention (center = box center, scale = longer side / 200), on a dataset in the official CSV
format whose landmarks are known (e.g. `hrk synth --out DIR`).

usage: python measure.py DATASET_CSV IMAGE_ROOT

For every image, the detection whose box holds the landmark box's centre and overlaps it most is
paired with the face; prints the detection rate and the distribution of
  ratio = landmark-box side / MTCNN-box side   (sides: max(w, h))
  dx, dy = (landmark-box centre - MTCNN-box centre) / MTCNN-box side
The margin hrk predict applies to detector boxes is the median ratio.
"""
import csv
import math
import os
import statistics
import sys

import numpy as np
from facenet_pytorch import MTCNN
from PIL import Image


def tight_box(pts):
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return [math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))]


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def main():
    csv_path, root = sys.argv[1], sys.argv[2]
    mtcnn = MTCNN(keep_all=True, device="cpu")  # defaults: min_face 20, thresholds 0.6/0.7/0.7, factor 0.709
    ratios, dxs, dys, ious = [], [], [], []
    total = found = 0
    with open(csv_path) as f:
        rows = list(csv.reader(f))[1:]
    for row in rows:
        total += 1
        vals = [float(v) for v in row[4:]]
        pts = list(zip(vals[0::2], vals[1::2]))
        lb = tight_box(pts)
        img = Image.open(os.path.join(root, row[0])).convert("RGB")
        boxes, probs = mtcnn.detect(img)
        if boxes is None:
            continue
        cx, cy = (lb[0] + lb[2]) / 2, (lb[1] + lb[3]) / 2
        holding = [b for b in boxes if b[0] <= cx <= b[2] and b[1] <= cy <= b[3]]
        if not holding:
            continue
        b = max(holding, key=lambda b: iou(b, lb))
        found += 1
        side_l = max(lb[2] - lb[0], lb[3] - lb[1])
        side_m = max(b[2] - b[0], b[3] - b[1])
        ratios.append(side_l / side_m)
        dxs.append((cx - (b[0] + b[2]) / 2) / side_m)
        dys.append((cy - (b[1] + b[3]) / 2) / side_m)
        ious.append(iou(b, lb))
    print(f"faces: {total}, paired with an MTCNN box: {found}")
    if not ratios:
        return
    q = lambda v: np.percentile(v, [10, 25, 50, 75, 90]).round(3).tolist()
    print(f"ratio landmark side / MTCNN side: median {statistics.median(ratios):.3f} mean {statistics.mean(ratios):.3f} "
          f"p10..p90 {q(ratios)}")
    print(f"dx: median {statistics.median(dxs):+.3f} p10..p90 {q(dxs)}")
    print(f"dy: median {statistics.median(dys):+.3f} p10..p90 {q(dys)}")
    print(f"IoU: median {statistics.median(ious):.3f}")


if __name__ == "__main__":
    main()
