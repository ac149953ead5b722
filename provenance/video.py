"""Frames in and out of H.264 MP4 files with PyAV, in our own BT.601 limited-range YUV 4:2:0.

We convert RGB to YUV ourselves (rather than letting the encoder's scaler do it) so the watermark is embedded in the
exact Y plane the encoder compresses, and the stream is tagged BT.601 / limited range so players show the colours we
meant. PyAV is imported inside the functions.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from ..model.errors import SpacetimeValueError

Y_SCALE = 219.0 / 255.0       # full-range luma L -> limited-range Y = 16 + Y_SCALE * L
C_SCALE = 224.0 / 255.0
BT601 = 6                     # ISO/IEC 23091-4 code for SMPTE 170M (BT.601 525) primaries / transfer / matrix
DEFAULT_CRF = 18


def to_uint8_rgb(frames, name: str = "frames") -> np.ndarray:
    """IMAGE frames [T, H, W, C] (torch or numpy; float 0..1 or uint8) -> contiguous uint8 RGB [T, H, W, 3]."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape:
        raise SpacetimeValueError(f"{name} have shape {tuple(arr.shape)}; allowed: [frames, height, width, 3] "
                                  f"(IMAGE, frames as the batch; 1 or 4 channels are converted)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0)
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(arr)


def pad_even(rgb: np.ndarray) -> np.ndarray:
    """Repeat the last row / column so height and width are even (4:2:0 needs it)."""
    ph, pw = rgb.shape[1] % 2, rgb.shape[2] % 2
    if ph or pw:
        rgb = np.pad(rgb, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return rgb


def rgb_to_yuv420(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB [T, H, W, 3] (even H, W) -> (full-range luma L float [T, H, W], U, V uint8 [T, H/2, W/2])."""
    x = rgb.astype(np.float32)
    luma = x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114
    t, h, w = luma.shape

    def chroma(diff, k):
        sub = diff.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4)) / k
        return np.clip(np.round(128.0 + sub * C_SCALE), 0, 255).astype(np.uint8)
    return luma.astype(np.float64), chroma(x[..., 2] - luma, 1.772), chroma(x[..., 0] - luma, 1.402)


def yuv420_to_rgb(luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inverse of ``rgb_to_yuv420`` (chroma upsampled by repetition) -> uint8 RGB, for previews."""
    cb = np.repeat(np.repeat((u.astype(np.float32) - 128.0) / C_SCALE, 2, axis=1), 2, axis=2)
    cr = np.repeat(np.repeat((v.astype(np.float32) - 128.0) / C_SCALE, 2, axis=1), 2, axis=2)
    y = luma.astype(np.float32)
    r = y + 1.402 * cr
    b = y + 1.772 * cb
    g = (y - 0.299 * r - 0.114 * b) / 0.587
    return np.clip(np.round(np.stack([r, g, b], axis=-1)), 0, 255).astype(np.uint8)


def _planes(luma: np.ndarray, u: np.ndarray, v: np.ndarray):
    """PyAV's yuv420p array layout: the three planes back to back, viewed as rows of width W."""
    y = np.clip(np.round(16.0 + luma * Y_SCALE), 0, 255).astype(np.uint8)
    w = y.shape[2]
    for i in range(y.shape[0]):
        yield np.concatenate([y[i].ravel(), u[i].ravel(), v[i].ravel()]).reshape(-1, w)


def _fps(fps: float) -> Fraction:
    if not fps or fps <= 0 or fps > 1000:
        raise SpacetimeValueError(f"fps={fps} is not allowed; allowed: a frame rate > 0 and <= 1000")
    return Fraction(float(fps)).limit_denominator(1001)


def encode_yuv(path, luma: np.ndarray, u: np.ndarray, v: np.ndarray, fps: float, crf: int = DEFAULT_CRF,
               preset: str = "medium"):
    """Write an H.264 (yuv420p, BT.601 limited range) MP4 from our planes. ``path`` may be a file object."""
    with YuvWriter(path, luma.shape[2], luma.shape[1], fps, crf, preset) as writer:
        writer.write(luma, u, v)


class YuvWriter:
    """An H.264 MP4 written frame by frame from our planes (the ``encode_yuv`` encoder, for videos that arrive in
    pieces): ``write`` any number of times, then ``close`` (or use it as a context manager)."""

    def __init__(self, path, width: int, height: int, fps: float, crf: int = DEFAULT_CRF, preset: str = "medium"):
        import av
        if height % 2 or width % 2:
            raise SpacetimeValueError(f"frame size {width}x{height}: width and height must be even (pad first)")
        self.rate = _fps(fps)
        self.size = (height, width)
        self.frames = 0
        self.container = av.open(path, "w", format="mp4")
        self.stream = _video_stream(self.container, width, height, self.rate, crf, preset)

    def write(self, luma: np.ndarray, u: np.ndarray, v: np.ndarray):
        import av
        if tuple(luma.shape[1:]) != self.size:
            raise SpacetimeValueError(f"frames of {luma.shape[2]}x{luma.shape[1]} do not match the video's "
                                      f"{self.size[1]}x{self.size[0]}")
        for plane in _planes(luma, u, v):
            frame = av.VideoFrame.from_ndarray(plane, format="yuv420p")
            frame.pts, frame.time_base = self.frames, 1 / self.rate   # without timestamps x264 misjudges the rate
            self.frames += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self, flush: bool = True):
        if self.container is None:
            return
        try:
            if flush:
                for packet in self.stream.encode():
                    self.container.mux(packet)
        finally:
            self.container.close()
            self.container = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.close(flush=exc_type is None)


# Our encodes are a function of the planes alone. With MB-tree on, x264 (as PyAV's wheels bundle it) reads heap memory
# it never wrote when its AVX-512 code is in use: the same planes encoded in two processes, or twice in one process
# whose heap has been reused, gave files that decode up to ~20 levels apart at 64x64. MB-tree off (or AVX-512 off)
# removes the dependence.
X264_PARAMS = "mbtree=0"


def _video_stream(container, w, h, fps, crf, preset, x264_params: Optional[str] = X264_PARAMS):
    stream = container.add_stream("libx264", rate=fps if isinstance(fps, Fraction) else _fps(fps))
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    options = {"crf": str(int(crf)), "preset": preset}
    if x264_params:
        options["x264-params"] = x264_params
    stream.options = options
    cc = stream.codec_context
    cc.colorspace = cc.color_primaries = cc.color_trc = BT601
    cc.color_range = 1                      # limited ("MPEG") range
    return stream


def read_luma(path, max_frames: Optional[int] = None) -> tuple[np.ndarray, float]:
    """Full-range luma [T, H, W] float of a video file's first video stream (from its Y plane, no RGB round trip),
    and its frame rate."""
    import av
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise SpacetimeValueError(f"file {Path(str(path)).name!r} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        for frame in container.decode(stream):
            if frame.format.name not in ("yuv420p", "yuvj420p", "yuv422p", "yuv444p", "yuvj444p", "yuvj422p"):
                frame = frame.reformat(format="yuv420p")
            plane = frame.planes[0]
            y = np.frombuffer(plane, dtype=np.uint8).reshape(frame.height, plane.line_size)[:, :frame.width]
            full = frame.format.name.startswith("yuvj") or str(getattr(frame, "color_range", "")) in ("2", "JPEG")
            frames.append(y.astype(np.float64) if full else (y.astype(np.float64) - 16.0) / Y_SCALE)
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise SpacetimeValueError(f"file {Path(str(path)).name!r} holds no video frames")
    return np.stack(frames), fps


def transcode(src, dst, crf: int = 23, preset: str = "medium"):
    """Re-encode a video as a plain H.264 MP4 (what a re-upload or a user's converter does): decoded YUV frames go
    straight back into the encoder, with x264's defaults (MB-tree on, so the bytes may vary from run to run). The
    result has no C2PA manifest."""
    import av
    with av.open(str(src)) as inp:
        stream_in = inp.streams.video[0]
        fps = float(stream_in.average_rate or 16)
        with av.open(str(dst), "w", format="mp4") as out:
            stream = None
            for frame in inp.decode(stream_in):
                if stream is None:
                    stream = _video_stream(out, frame.width, frame.height, fps, crf, preset, x264_params=None)
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                for packet in stream.encode(frame):
                    out.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
