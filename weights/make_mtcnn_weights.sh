#!/usr/bin/env bash
# Re-creates weights/mtcnn.safetensors from the facenet-pytorch 2.6.0 wheel on PyPI (see weights/NOTICE).
# Usage: weights/make_mtcnn_weights.sh [HRK_BINARY]   (default: target/release/hrk; needs pip and unzip)
set -euo pipefail
cd "$(dirname "$0")/.."
HRK="${1:-target/release/hrk}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 -m pip download --no-deps --only-binary=:all: --dest "$WORK" "facenet-pytorch==2.6.0"
unzip -q -o "$WORK"/facenet_pytorch-2.6.0-*.whl 'facenet_pytorch/data/*.pt' -d "$WORK"
D="$WORK/facenet_pytorch/data"
"$HRK" convert "$D/pnet.pt" weights/mtcnn.safetensors --prefix pnet. --merge "rnet.=$D/rnet.pt" --merge "onet.=$D/onet.pt"
