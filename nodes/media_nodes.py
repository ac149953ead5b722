"""Spacetime Load Video: frames from a video or image file (input folder, or the examples that ship with the pack)."""
from __future__ import annotations

from pathlib import Path

from . import host
from .common import CATEGORY

EXAMPLES_PREFIX = "spacetime-examples/"
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
VIDEO_EXT = {".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def media_files() -> list[str]:
    names = []
    d = host.input_directory()
    if d.is_dir():
        names += sorted(p.name for p in d.iterdir() if p.suffix.lower() in VIDEO_EXT | IMAGE_EXT)
    if EXAMPLES_DIR.is_dir():
        names += sorted(EXAMPLES_PREFIX + p.name for p in EXAMPLES_DIR.iterdir()
                        if p.suffix.lower() in VIDEO_EXT | IMAGE_EXT)
    return names


def resolve_media(name: str) -> Path:
    if name.startswith(EXAMPLES_PREFIX):
        p = EXAMPLES_DIR / name[len(EXAMPLES_PREFIX):]
    else:
        p = Path(name) if Path(name).is_absolute() else host.input_directory() / name
    if not p.is_file():
        raise ValueError(f"file={name!r} was not found (looked for {p.name} in the input folder and the pack's "
                         f"examples); allowed: {', '.join(media_files()[:10]) or 'no files found'}")
    return p


def read_media(path: Path, max_frames: int = 0, skip: int = 0):
    """-> (frames [T, H, W, 3] float 0..1, fps)."""
    import numpy as np
    import torch
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXT:
        from PIL import Image
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        return torch.from_numpy(arr)[None], 0.0
    if suffix not in VIDEO_EXT:
        raise ValueError(f"file {path.name!r} has an unsupported type; allowed: "
                         f"{', '.join(sorted(VIDEO_EXT | IMAGE_EXT))}")
    import av
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        for i, frame in enumerate(container.decode(stream)):
            if i < skip:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames and len(frames) >= max_frames:
                break
    if not frames:
        raise ValueError(f"file {path.name!r} holds no video frames")
    return torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0), fps


class SpacetimeLoadVideo:
    DESCRIPTION = ("Loads frames (IMAGE, frames as the batch) from a video or an image in ComfyUI's input folder, "
                   "or from the examples shipped with the pack (spacetime-examples/...).")
    CATEGORY = f"{CATEGORY}/IO"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("frames", "fps", "frame_count")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "file": (media_files() or [EXAMPLES_PREFIX + "ball_clip.mp4"], {"tooltip": "Video (mp4, webm, mkv, "
                     "mov, gif) or image (png, jpg, webp) in the input folder."}),
            "max_frames": ("INT", {"default": 0, "min": 0, "max": 4096, "tooltip": "Keep at most this many frames "
                                   "(0 = all)."}),
            "skip_frames": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip": "Drop this many frames at "
                                    "the start."}),
        }}

    @classmethod
    def IS_CHANGED(cls, file, **_):
        try:
            p = resolve_media(file)
            return f"{p}:{p.stat().st_mtime_ns}:{p.stat().st_size}"
        except ValueError:
            return file

    @classmethod
    def VALIDATE_INPUTS(cls, file, **_):
        try:
            resolve_media(file)
        except ValueError as exc:
            return str(exc)
        return True

    def load(self, file, max_frames=0, skip_frames=0):
        frames, fps = read_media(resolve_media(file), max_frames, skip_frames)
        return (frames, fps, int(frames.shape[0]))


NODE_CLASS_MAPPINGS = {"SpacetimeLoadVideo": SpacetimeLoadVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeLoadVideo": "Spacetime Load Video"}
