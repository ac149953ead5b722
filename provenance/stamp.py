"""Provenance stamp: frames -> watermarked H.264 MP4 -> C2PA-signed, published atomically without overwriting.

Order of work: check the safety reports (a blocked clip is never written), pad to even size, convert to YUV 4:2:0,
embed the watermark in the luma, encode to a temporary file next to the target, sign it with C2PA into a second
temporary file (the signature is the last write of the content), then hard-link that file to the final name, which
fails rather than replaces when the name exists. If the target exists the next free numbered name
(``name_00001.mp4``, ``name_00002.mp4``, ...) is used, or ``on_exists="raise"`` refuses. On file systems without
hard links the name is reserved with an exclusive create and the signed file is renamed onto that reservation.

Streaming (``StampWriter``, for long videos): the same steps, piece by piece. Every piece is reviewed, watermarked
(in whole segments of 4 frames counted from the clip's start, a few frames held over to the next piece, so the
pieces carry exactly the mark of the whole clip) and appended to the temporary H.264 file as it arrives; after the
last piece the manifest is built (it records the review of every frame and the watermark payload) and signed, which
remains the last write of the content, then published as above. Until then no file with the target's name exists,
and an abort removes the temporary file.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import secrets
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ..model.errors import SpacetimeValueError
from . import manifest, video, watermark

PROMPT_KEYS = ("prompt", "expanded_prompt", "negative", "negative_prompt")
ON_EXISTS = ("rename", "raise")


class OutputExistsError(SpacetimeValueError):
    """The output file exists and ``on_exists="raise"``."""


class WithheldError(SpacetimeValueError):
    """A safety report says the clip is blocked: it is not written."""


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _report_dict(report) -> dict:
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    if not isinstance(report, dict):
        raise SpacetimeValueError(f"safety report of type {type(report).__name__} is not allowed; allowed: a dict "
                                  f"or a report object with to_dict()")
    return report


def _safety_record(report: dict, include_text: bool) -> dict:
    """What the manifest keeps of a safety report: verdict, categories and scores; matched words only when the
    prompt itself is recorded (they would reveal it)."""
    keep = ("kind", "verdict", "blocked", "policy", "policy_version", "categories", "scores", "max_scores",
            "frames_checked", "flagged_frames", "classifiers")
    out = {k: report[k] for k in keep if k in report}
    if include_text and "evidence" in report:
        out["evidence"] = report["evidence"]
    return out


def generation_record(generation: Optional[dict], prompt: Optional[str], include_prompt: bool,
                      safety_reports: Iterable = (), fps: float = 0.0, watermark_info: Optional[dict] = None) -> dict:
    """Our custom assertion: generation settings, prompt sha256 (the text only when opted in), safety verdicts,
    watermark payload. Paths are reduced to file names."""
    gen = dict(generation or {})
    texts = {k: gen.pop(k) for k in PROMPT_KEYS if k in gen}
    texts = {k: v for k, v in texts.items() if v}
    text = prompt if prompt is not None else texts.get("prompt")
    if text:
        gen["prompt_sha256"] = _sha256_text(str(text))
    negative = texts.get("negative") or texts.get("negative_prompt")
    if negative:
        gen["negative_sha256"] = _sha256_text(str(negative))
    if include_prompt:
        gen.update(texts)
        if text:
            gen["prompt"] = str(text)
    if "ingredients" in gen:
        gen["ingredients"] = [Path(str(p)).name for p in gen["ingredients"] or []]
    gen["prompt_included"] = bool(include_prompt and text)
    if fps:
        gen["fps"] = float(fps)
    gen["safety"] = [_safety_record(_report_dict(r), include_prompt) for r in safety_reports]
    if watermark_info:
        gen["watermark"] = watermark_info
    gen["software"] = {"name": manifest.SOFTWARE, "version": manifest.software_version()}
    return gen


def _check_json(value, name="generation"):
    import json
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise SpacetimeValueError(f"{name} must hold JSON values only (numbers, strings, lists, dicts): {exc}") \
            from None


def candidate_names(target: Path, first_numbered: bool = False):
    """The target itself (unless ``first_numbered``), then stem_00001.ext, stem_00002.ext, ... starting after the
    highest number already in the folder."""
    stem, ext = target.stem, target.suffix
    if not first_numbered:
        yield target
    highest = 0
    if target.parent.is_dir():
        pat = re.compile(re.escape(stem) + r"_(\d{5,})" + re.escape(ext) + "$")
        for p in target.parent.iterdir():
            m = pat.match(p.name)
            if m:
                highest = max(highest, int(m.group(1)))
    n = highest + 1
    while True:
        yield target.with_name(f"{stem}_{n:05d}{ext}")
        n += 1


def _publish(tmp: Path, final: Path) -> bool:
    """Give ``tmp`` the name ``final`` without ever replacing an existing file. False when ``final`` exists."""
    try:
        os.link(tmp, final)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.EACCES):
            raise
    try:                                                   # no hard links here: reserve the name, then rename onto it
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    os.replace(tmp, final)
    return True


def stamp_video(frames, path, fps: float, generation: Optional[dict] = None, prompt: Optional[str] = None,
                include_prompt: bool = False, ingredients: Iterable = (), safety_reports: Iterable = (), *,
                content_id: Optional[int] = None, generator_id: int = watermark.DEFAULT_GENERATOR,
                crf: int = video.DEFAULT_CRF, on_exists: str = "rename", numbered: bool = False,
                identity=None, preview_path=None) -> dict:
    """Write frames [T, H, W, C] (float 0..1 or uint8) as a watermarked, C2PA-signed MP4 at ``path``.

    ``generation``: settings to record (model, checkpoint_sha256, seed, steps, cfg, ...); prompt text is replaced by
    its sha256 unless ``include_prompt``. ``ingredients``: files of input images / videos. ``safety_reports``: prompt
    and frame reports (dicts or report objects); a blocked one stops the write. ``on_exists``: "rename" (the next
    free numbered name) or "raise". ``numbered``: always use a numbered name (prefix_00001.mp4, ...).
    ``preview_path``: also write an animated WebP of the watermarked frames there (a UI preview), after the video is
    in place.
    Returns path, sha256, bytes, frames, width, height, fps, content_id, generator_id, watermark_psnr, signer, seconds.
    """
    with StampWriter(path, fps, generation, prompt, include_prompt, ingredients, safety_reports,
                     content_id=content_id, generator_id=generator_id, crf=crf, on_exists=on_exists,
                     numbered=numbered, identity=identity, preview_path=preview_path) as writer:
        writer.write(frames)
    return writer.info


class StampWriter:
    """``stamp_video`` for frames that arrive in pieces (a long video, written as it is generated), so no more
    than one piece is ever held: each piece is reviewed (when a ``review`` such as ``safety.FrameReview`` is given:
    a blocked piece stops the write before it is encoded), watermarked and encoded into a temporary file next to the
    target as it comes; ``finish`` then builds the manifest (with the review of every frame), signs (still the last
    write of the content) and publishes atomically under a name that never replaces a file. ``abort`` (or an
    exception inside ``with``) removes the temporary files: a cancelled run leaves nothing behind.

        with StampWriter("out.mp4", fps=8, generation=info) as w:
            for piece in pieces:          # [n, H, W, C] float 0..1 or uint8
                w.write(piece)
        print(w.info["path"])

    ``preview_stride``: the WebP preview keeps every n-th frame (long videos)."""

    def __init__(self, path, fps: float, generation: Optional[dict] = None, prompt: Optional[str] = None,
                 include_prompt: bool = False, ingredients: Iterable = (), safety_reports: Iterable = (), *,
                 content_id: Optional[int] = None, generator_id: int = watermark.DEFAULT_GENERATOR,
                 crf: int = video.DEFAULT_CRF, on_exists: str = "rename", numbered: bool = False,
                 identity=None, preview_path=None, review=None, preview_stride: int = 1):
        self.t0 = time.perf_counter()
        from .identity import signing_identity
        if on_exists not in ON_EXISTS:
            raise SpacetimeValueError(f"on_exists={on_exists!r} is not allowed; allowed: {', '.join(ON_EXISTS)}")
        self.reports = [_report_dict(r) for r in safety_reports or ()]
        for r in self.reports:
            if r.get("blocked") or r.get("verdict") == "block":
                raise WithheldError(f"not written: the {r.get('kind', 'safety')} report says blocked "
                                    f"({r.get('summary') or ', '.join(r.get('categories', [])) or 'policy violation'})")
        target = Path(path)
        if target.suffix.lower() != ".mp4":
            raise SpacetimeValueError(f"path={str(path)!r} is not allowed: the output must be an .mp4 file")
        if not target.parent.is_dir():
            raise SpacetimeValueError(f"path={str(path)!r}: folder {str(target.parent)!r} does not exist")
        if generation is not None and not isinstance(generation, dict):
            raise SpacetimeValueError(f"generation of type {type(generation).__name__} is not allowed; allowed: a "
                                      f"dict")
        video._fps(fps)
        if int(preview_stride) < 1:
            raise SpacetimeValueError(f"preview_stride={preview_stride} is not allowed; allowed: 1 or more")
        self.ingredients = [Path(p) for p in ingredients or ()]
        for p in self.ingredients:
            if not p.is_file():
                raise SpacetimeValueError(f"ingredient {str(p)!r} was not found; allowed: existing image or video "
                                          f"files")
        self.target, self.fps, self.crf, self.on_exists, self.numbered = target, fps, crf, on_exists, numbered
        self.generation, self.prompt, self.include_prompt = generation, prompt, include_prompt
        self.generator_id = generator_id
        self.content_id = secrets.randbits(watermark.CONTENT_BITS) if content_id is None else int(content_id)
        # the scheme and cells follow the frame size and length (watermark.scheme_for), known once settled
        self.wm_info = {"scheme": None, "generator_id": generator_id, "content_id": self.content_id}
        _check_json(self._record())
        self.identity = identity or signing_identity()
        token = secrets.token_hex(4)
        self.encoded = target.with_name(f".{target.stem}.{token}.encoded.mp4")
        self.signed = target.with_name(f".{target.stem}.{token}.signed.mp4")
        if on_exists == "raise" and target.exists():
            raise OutputExistsError(f"path={str(path)!r} already exists; outputs are never overwritten (choose a "
                                    f"new name, or on_exists='rename')")
        self.review, self.preview_path, self.preview_stride = review, preview_path, int(preview_stride)
        self.frames, self.size, self.info = 0, None, None
        self._writer = None
        self._held: Optional[tuple] = None         # (luma, u, v) of frames not yet marked
        self._marked = 0                           # frames marked and encoded so far
        self._plan_frames = 0                      # the clip length the watermark is planned for, once settled
        self._sse, self._count = 0.0, 0
        self._preview: list = []

    def _record(self) -> dict:
        reports = self.reports + ([self.review.report().to_dict()] if getattr(self, "review", None) else [])
        return generation_record(self.generation, self.prompt, self.include_prompt, reports, self.fps, self.wm_info)

    def write(self, frames):
        """Review, watermark and encode a piece of frames [n, H, W, C] (float 0..1 or uint8). The watermark's
        segments run across pieces: frames are held until a whole segment (4 frames) is there, and at the start
        until the clip is long enough to know its cells (13 frames at 64x64, 1 from 128x128), so the file carries
        exactly the mark of the whole clip whatever the pieces."""
        rgb = video.pad_even(video.to_uint8_rgb(frames))
        if self.size is None:
            watermark.check_size(*rgb.shape[1:3])
            self.size = rgb.shape[1:3]
        elif rgb.shape[1:3] != self.size:
            raise SpacetimeValueError(f"frames of {rgb.shape[2]}x{rgb.shape[1]} do not match the earlier frames' "
                                      f"{self.size[1]}x{self.size[0]}")
        if self.review is not None:
            self.review.add(rgb)                       # raises before a blocked frame is encoded
        planes = video.rgb_to_yuv420(rgb)
        self._held = planes if self._held is None else tuple(np.concatenate(p) for p in zip(self._held, planes))
        self.frames += len(rgb)
        if not self._plan_frames and watermark.settled(*self.size, self.frames):
            self._plan_frames = self.frames
            self.wm_info["scheme"] = watermark.scheme_for(*self.size, self.frames)
        if self._plan_frames:
            self._encode(len(self._held[0]) // watermark.SEGMENT_FRAMES * watermark.SEGMENT_FRAMES)

    def _encode(self, n: int):
        """Watermark and encode the first ``n`` held frames."""
        if n == 0:
            return
        luma, u, v = (p[:n] for p in self._held)
        self._held = tuple(p[n:] for p in self._held)
        marked = watermark.embed_luma(luma, self.generator_id, self.content_id, scheme=self.wm_info["scheme"],
                                      start=self._marked, frames=self._plan_frames)
        self._sse += float(((marked - luma) ** 2).sum())
        self._count += marked.size
        if self._writer is None:
            self._writer = video.YuvWriter(str(self.encoded), self.size[1], self.size[0], self.fps, self.crf)
        self._writer.write(marked, u, v)
        if self.preview_path is not None:
            keep = [i for i in range(n) if (self._marked + i) % self.preview_stride == 0]
            if keep:
                self._preview.append(video.yuv420_to_rgb(marked[keep], u[keep], v[keep]))
        self._marked += n

    def finish(self) -> dict:
        """Sign and publish; returns what ``stamp_video`` returns."""
        if self.frames == 0:
            self.abort()
            raise SpacetimeValueError("no frames were written; a video needs at least one frame")
        try:
            if not self._plan_frames:                  # a short clip: its length decides the scheme and cells
                self._plan_frames = self.frames
                self.wm_info["scheme"] = watermark.scheme_for(*self.size, self.frames)
            self._encode(len(self._held[0]))
            self._writer.close()
            record = self._record()
            final = None
            for name in candidate_names(self.target, first_numbered=self.numbered):
                if name.exists():
                    if self.on_exists == "raise":
                        raise OutputExistsError(f"path={str(self.target)!r} already exists; outputs are never "
                                                f"overwritten")
                    continue
                manifest.sign(self.encoded, self.signed, name.name, record, self.ingredients, self.identity)
                if _publish(self.signed, name):
                    final = name
                    break
                self.signed.unlink(missing_ok=True)
        finally:
            self._cleanup()
        if self.preview_path is not None:
            write_preview(self.preview_path, np.concatenate(self._preview), self.fps)
            self._preview = []
        mse = self._sse / max(1, self._count)
        psnr = round(10 * math.log10(255.0 ** 2 / mse), 2) if mse > 0 else float("inf")
        h, w = self.size
        self.info = {"path": str(final), "sha256": _file_sha256(final), "bytes": final.stat().st_size,
                     "frames": self.frames, "width": w, "height": h, "fps": float(self.fps),
                     "content_id": self.content_id, "generator_id": self.generator_id, "watermark_psnr": psnr,
                     "signer": self.identity.source, "seconds": round(time.perf_counter() - self.t0, 3)}
        return self.info

    def abort(self):
        """Stop without publishing: the temporary files are removed."""
        self._cleanup(flush=False)
        self._preview, self._held = [], None

    def _cleanup(self, flush: bool = True):
        try:
            if self._writer is not None:
                self._writer.close(flush=flush)
        finally:
            for p in (self.encoded, self.signed):
                p.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is not None:
            self.abort()
        elif self.info is None:
            self.finish()


def write_preview(path, rgb, fps: float, max_side: int = 512):
    """An animated WebP of uint8 RGB frames (a UI preview; downscaled to ``max_side``), written atomically."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(f) for f in rgb]
    h, w = rgb.shape[1:3]
    if max(h, w) > max_side:
        size = (max(1, round(w * max_side / max(h, w))), max(1, round(h * max_side / max(h, w))))
        frames = [f.resize(size, Image.Resampling.BILINEAR) for f in frames]
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp.webp")
    frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:], loop=0,
                   duration=max(1, round(1000 / float(fps or 8))), quality=85)
    os.replace(tmp, path)
    return path
