"""Small videos for tests/cli_predict_video.rs, made at test time with PyAV (FFmpeg's libraries), and
PyAV's own decode of a file to compare hrk's against.

  videos.py make DIR              the fixture set (below) into DIR
  videos.py encode RAW W H N FPS OUT [CODEC]
                                  N rgb24 frames of W x H from the file RAW into OUT (libx264 by default)
  videos.py pattern OUT W H N     N moving-pattern frames of W x H, libx264 defaults, into OUT (for timing)
  videos.py decode FILE OUT       FILE's frames as PyAV decodes them: OUT.rgb (rgb24, back to back,
                                  display order) and OUT.json (width, height, times, rotation)
"""

import json
import sys

import av
import numpy as np

W, H, N, FPS = 160, 120, 24, 25


def pattern(i, w=W, h=H):
    """Frame i: colour gradients moving 3 px a frame, a bright square moving diagonally, and a fixed
    noise texture (so that the encoder has detail and motion, and B-frames carry real residuals)."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 40, size=(h, w, 3))
    img = np.stack([(x * 255 // w + 3 * i) % 256, (y * 255 // h) % 256, ((x + y + 5 * i) * 2) % 256], -1)
    img = (img + noise) % 256
    s = 4 + 2 * i
    img[s % h : s % h + 16, s % w : s % w + 16] = [250, 240, 30]
    return img.astype(np.uint8)


def write(path, frames, codec="libx264", fmt=None, pix_fmt=None, options=None, container_options=None):
    with av.open(path, "w", format=fmt, options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=FPS)
        h, w = frames[0].shape[:2]
        stream.width, stream.height = w, h
        if pix_fmt:
            stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        for f in frames:
            for p in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)


def patch_rotation(path, out_path):
    """A copy of an MP4 whose track header carries a phone's 90-degree display matrix (a, b, c, d =
    0, 1, -1, 0 in 16.16; what a phone held upright writes): FFmpeg reads it as the stream's
    display-matrix side data."""
    data = bytearray(open(path, "rb").read())
    at = data.find(b"tkhd")
    assert at > 0 and data[at + 4] == 0, "version-0 tkhd expected"
    # After the box type: version/flags 4, times 8, track id 4, reserved 4, duration 4, reserved 8,
    # layer/group/volume/reserved 8, then the 3x3 matrix (big-endian 32-bit words).
    m = at + 4 + 40
    words = [0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000]
    data[m : m + 36] = b"".join(v.to_bytes(4, "big", signed=True) for v in words)
    open(out_path, "wb").write(data)


def corrupt_packet(path, out_path, index):
    """A copy of an MJPEG AVI whose packet `index` holds no JPEG (its bytes zeroed): the decoder
    rejects it."""
    with av.open(path) as c:
        packets = [p for p in c.demux(video=0) if p.size > 0]
        pos, size = packets[index].pos, packets[index].size
    data = bytearray(open(path, "rb").read())
    start = data.find(b"\xff\xd8", pos)
    assert 0 <= start - pos <= 16, "the packet's JPEG data follows its chunk header"
    data[start : start + size] = bytes(size)
    open(out_path, "wb").write(data)


def make(d):
    frames = [pattern(i) for i in range(N)]
    # libx264's defaults: High profile, 3 B-frames.
    write(f"{d}/h264.mp4", frames)
    write(f"{d}/h264.mov", frames)
    write(f"{d}/h264.mkv", frames)
    write(f"{d}/mjpeg.avi", frames, codec="mjpeg", pix_fmt="yuvj420p")
    patch_rotation(f"{d}/h264.mp4", f"{d}/rotated.mp4")
    # The index at the front (faststart), so that a cut file still opens and ends early.
    write(f"{d}/front.mp4", frames, container_options={"movflags": "faststart"})
    data = open(f"{d}/front.mp4", "rb").read()
    open(f"{d}/truncated.mp4", "wb").write(data[: len(data) * 6 // 10])
    corrupt_packet(f"{d}/mjpeg.avi", f"{d}/corrupt.avi", 5)
    with av.open(f"{d}/h264.mp4") as c:
        s = c.streams.video[0]
        info = {"profile": s.codec_context.profile, "has_b_frames": s.codec_context.has_b_frames}
    json.dump(info, open(f"{d}/h264.json", "w"))


def decode(path, out):
    times, w, h, rotation = [], None, None, 0
    with av.open(path) as c, open(out + ".rgb", "wb") as raw:
        s = c.streams.video[0]
        start = s.start_time or 0
        for f in c.decode(s):
            a = f.to_ndarray(format="rgb24")
            h, w = a.shape[:2]
            raw.write(a.tobytes())
            times.append(float((f.pts - start) * s.time_base))
    json.dump({"width": w, "height": h, "times": times}, open(out + ".json", "w"))


def encode(raw, w, h, n, fps, out, codec="libx264"):
    global FPS
    FPS = int(fps)
    data = np.fromfile(raw, dtype=np.uint8).reshape(int(n), int(h), int(w), 3)
    write(out, list(data), codec=codec)


def pattern_video(out, w, h, n):
    write(out, [pattern(i, int(w), int(h)) for i in range(int(n))])


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"make": make, "decode": decode, "encode": encode, "pattern": pattern_video}[cmd](*args)
