"""Provenance stamp: frames -> watermarked H.264 MP4 -> C2PA-signed, published atomically without overwriting.

Order of work: check the safety reports (a blocked clip is never written), pad to even size, convert to YUV 4:2:0,
embed the watermark in the luma, encode to a temporary file next to the target, sign it with C2PA into a second
temporary file (the signature is the last write of the content), then hard-link that file to the final name, which
fails rather than replaces when the name exists. If the target exists the next free numbered name
(``name_00001.mp4``, ``name_00002.mp4``, ...) is used, or ``on_exists="raise"`` refuses. On file systems without
hard links the name is reserved with an exclusive create and the signed file is renamed onto that reservation.
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
    t0 = time.perf_counter()
    from .identity import signing_identity
    if on_exists not in ON_EXISTS:
        raise SpacetimeValueError(f"on_exists={on_exists!r} is not allowed; allowed: {', '.join(ON_EXISTS)}")
    reports = [_report_dict(r) for r in safety_reports or ()]
    for r in reports:
        if r.get("blocked") or r.get("verdict") == "block":
            raise WithheldError(f"not written: the {r.get('kind', 'safety')} report says blocked "
                                f"({r.get('summary') or ', '.join(r.get('categories', [])) or 'policy violation'})")
    target = Path(path)
    if target.suffix.lower() != ".mp4":
        raise SpacetimeValueError(f"path={str(path)!r} is not allowed: the output must be an .mp4 file")
    if not target.parent.is_dir():
        raise SpacetimeValueError(f"path={str(path)!r}: folder {str(target.parent)!r} does not exist")
    if generation is not None and not isinstance(generation, dict):
        raise SpacetimeValueError(f"generation of type {type(generation).__name__} is not allowed; allowed: a dict")
    ingredients = [Path(p) for p in ingredients or ()]
    for p in ingredients:
        if not p.is_file():
            raise SpacetimeValueError(f"ingredient {str(p)!r} was not found; allowed: existing image or video files")
    rgb = video.pad_even(video.to_uint8_rgb(frames))
    t, h, w, _ = rgb.shape
    content_id = secrets.randbits(watermark.CONTENT_BITS) if content_id is None else int(content_id)
    luma, u, v = video.rgb_to_yuv420(rgb)
    marked = watermark.embed_luma(luma, generator_id, content_id)
    mse = float(((marked - luma) ** 2).mean())
    psnr = round(10 * math.log10(255.0 ** 2 / mse), 2) if mse > 0 else float("inf")
    wm_info = {"scheme": watermark.scheme_for(*luma.shape[1:]), "generator_id": generator_id,
               "content_id": content_id}
    record = generation_record(generation, prompt, include_prompt, reports, fps, wm_info)
    _check_json(record)

    identity = identity or signing_identity()
    token = secrets.token_hex(4)
    encoded = target.with_name(f".{target.stem}.{token}.encoded.mp4")
    signed = target.with_name(f".{target.stem}.{token}.signed.mp4")
    if on_exists == "raise" and target.exists():
        raise OutputExistsError(f"path={str(path)!r} already exists; outputs are never overwritten (choose a new "
                                f"name, or on_exists='rename')")
    try:
        video.encode_yuv(str(encoded), marked, u, v, fps, crf)
        final = None
        for name in candidate_names(target, first_numbered=numbered):
            if name.exists():
                if on_exists == "raise":
                    raise OutputExistsError(f"path={str(path)!r} already exists; outputs are never overwritten")
                continue
            manifest.sign(encoded, signed, name.name, record, ingredients, identity)
            if _publish(signed, name):
                final = name
                break
            signed.unlink(missing_ok=True)
    finally:
        for p in (encoded, signed):
            p.unlink(missing_ok=True)
    if preview_path is not None:
        write_preview(preview_path, video.yuv420_to_rgb(marked, u, v), fps)
    return {"path": str(final), "sha256": _file_sha256(final), "bytes": final.stat().st_size, "frames": t,
            "width": w, "height": h, "fps": float(fps), "content_id": content_id, "generator_id": generator_id,
            "watermark_psnr": psnr, "signer": identity.source,
            "seconds": round(time.perf_counter() - t0, 3)}


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
