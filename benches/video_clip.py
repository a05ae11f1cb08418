"""The clip of benches/video_speed.sh: 640x480, 30 fps, one real face (the astronaut photo of
tests/fixtures/mtcnn, public domain, NASA) moving along a slow ellipse and breathing in scale over a
still faceless background, encoded by PyAV's libx264 with its defaults (High profile, B-frames).

  python video_clip.py OUT.mp4 [FRAMES]
"""

import math
import os
import sys

import av
import numpy as np
from PIL import Image

W, H, FPS = 640, 480, 30
HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 300
    photo = Image.open(os.path.join(HERE, "..", "tests", "fixtures", "mtcnn", "astronaut.jpg")).convert("RGB")
    # The head and shoulders (the face is about 66 px wide at x 135..202, y 47..130 in the 384 px photo).
    head = photo.crop((96, 10, 256, 190))
    # A faceless background: colour gradients with a fixed noise texture (detail for the encoder).
    y, x = np.mgrid[0:H, 0:W]
    noise = np.random.default_rng(7).integers(0, 30, size=(H, W, 3))
    ramp = np.stack([60 + x * 100 // W, 80 + y * 80 // H, 120 + (x + y) * 60 // (W + H)], -1)
    background = Image.fromarray((ramp + noise).astype(np.uint8))
    with av.open(out, "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height = W, H
        for i in range(n):
            t = i / FPS
            scale = 1.3 + 0.2 * math.sin(2 * math.pi * t / 4)
            w, h = round(head.width * scale), round(head.height * scale)
            x = round(W / 2 - w / 2 + 120 * math.cos(2 * math.pi * t / 6))
            y = round(H / 2 - h / 2 + 60 * math.sin(2 * math.pi * t / 6))
            frame = background.copy()
            frame.paste(head.resize((w, h), Image.BILINEAR), (x, y))
            for p in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(p)
        for p in stream.encode():
            container.mux(p)


if __name__ == "__main__":
    main()
