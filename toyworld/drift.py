"""Drift over long videos, measured from pixels against the toy world's truth: the model makes 10 or more consecutive
windows of a toy-world scene (the long-video path: each window continues the tail of the one before), and every
window is scored for

  object colour error      CIEDE2000 Delta E of the object's colour against the prompted colour (and its drift:
                           Delta E against the object's colour in the first window)
  background colour error  Delta E of the backdrop against the prompted background (and its drift)
  object size change       object area against the first window's, minus 1
  identity kept            the analysis finds the same object: the same palette colour and shape as in the first
                           window, an area within 0.5-2x of it, in at least half of the window's frames
  seam ratio               the frame change across the window's first new frame over the median change around it

    python -m spacetime.toyworld.drift [--windows 10] [--quick | --scenes N] [--report docs/drift.md] [--json out.json]
    spacetime eval --drift ...

Summary per run: identity kept (share of windows after the first), colour drift (the largest object colour drift),
background drift, size change (largest), seam ratio (mean over seams); a run *drifts* when identity is kept in under
90 % of the windows, colour drift exceeds 5 Delta E, or the mean seam ratio exceeds 1.5 (the targets of the long-video
work). Four modes: the first window made from the prompt alone ("text") or from the scene's true first frame ("image",
which measures drift apart from prompt following), each without and with an anchor ("+anchor": the first frame
re-used as known frames in every later window).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .analysis import PALETTE, as_uint8, background_color, blobs, foreground_mask, frame_diffs, shape_from_fill
from .world import BACKGROUNDS, COLORS, Obj, Scene, render

TARGETS = {"identity": 0.90, "colour_drift": 5.0, "seam": 1.5}
SEAM_FLOOR = 1.0             # frame change (0-255 mean abs) below which a clip counts as still around a seam

# Scenes that stay in view for a long time (still, bouncing, a still pair).
DRIFT_SCENES = [
    Scene("navy", (Obj("ball", "red", "medium", "stays still", 0.5, 0.5),)),
    Scene("beige", (Obj("box", "blue", "medium", "stays still", 0.45, 0.55),)),
    Scene("black", (Obj("triangle", "yellow", "large", "stays still", 0.5, 0.5),)),
    Scene("gray", (Obj("ball", "cyan", "medium", "bounces", 0.5, 0.3),)),
    Scene("white", (Obj("box", "purple", "small", "stays still", 0.3, 0.5),
                    Obj("ball", "green", "small", "stays still", 0.7, 0.5)), relation="left of", kind="pair"),
    Scene("sky blue", (Obj("triangle", "orange", "medium", "stays still", 0.55, 0.5),)),
]


# ----------------------------------------------------------------------------------------------------------------------
# Colour difference
# ----------------------------------------------------------------------------------------------------------------------

def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB 0..255 [..., 3] -> CIE L*a*b* (D65)."""
    c = np.asarray(rgb, np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    d = 6.0 / 29.0
    f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4.0 / 29.0)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def ciede2000(lab1, lab2) -> np.ndarray:
    """CIEDE2000 colour difference of L*a*b* colours [..., 3] (kL = kC = kH = 1)."""
    L1, a1, b1 = np.moveaxis(np.asarray(lab1, np.float64), -1, 0)
    L2, a2, b2 = np.moveaxis(np.asarray(lab2, np.float64), -1, 0)
    cbar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cbar ** 7 / (cbar ** 7 + 25.0 ** 7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    zero = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(zero, 0.0, dh)
    dL, dC = L2 - L1, c2p - c1p
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh) / 2)
    lbar, cbarp = (L1 + L2) / 2, (c1p + c2p) / 2
    hsum = h1p + h2p
    hbar = np.where(zero, hsum, np.where(np.abs(h1p - h2p) <= 180, hsum / 2,
                                         np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hbar - 30)) + 0.24 * np.cos(np.radians(2 * hbar))
         + 0.32 * np.cos(np.radians(3 * hbar + 6)) - 0.20 * np.cos(np.radians(4 * hbar - 63)))
    dtheta = 30 * np.exp(-(((hbar - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cbarp ** 7 / (cbarp ** 7 + 25.0 ** 7))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / np.sqrt(20 + (lbar - 50) ** 2)
    sc, sh = 1 + 0.045 * cbarp, 1 + 0.015 * cbarp * t
    rt = -np.sin(np.radians(2 * dtheta)) * rc
    return np.sqrt((dL / sl) ** 2 + (dC / sc) ** 2 + (dH / sh) ** 2 + rt * (dC / sc) * (dH / sh))


def delta_e(rgb1, rgb2) -> float:
    """CIEDE2000 between two sRGB colours (0..255)."""
    return float(ciede2000(srgb_to_lab(rgb1), srgb_to_lab(rgb2)))


# ----------------------------------------------------------------------------------------------------------------------
# Measuring one window
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class ObjectView:
    color: str                # nearest palette colour
    rgb: np.ndarray           # median colour of the object's inner pixels
    area: float
    shape: str


def _object(frame: np.ndarray, bg: np.ndarray, want: Optional[str]) -> Optional[ObjectView]:
    """The object of the prompted colour when the frame shows one, else the largest object."""
    found = blobs(frame, bg)
    if not found:
        return None
    b = next((x for x in found if x.color == want), found[0])
    mask = foreground_mask(frame, bg)
    pix = frame.astype(np.float64)
    label = np.argmin(np.linalg.norm(pix[..., None, :] - PALETTE, axis=-1), axis=-1)
    mine = mask & (label == list(COLORS).index(b.color))
    inner = mine.copy()                       # inner pixels: all four neighbours belong to the object too
    inner[1:] &= mine[:-1]
    inner[:-1] &= mine[1:]
    inner[:, 1:] &= mine[:, :-1]
    inner[:, :-1] &= mine[:, 1:]
    sel = inner if inner.sum() >= 4 else mine
    return ObjectView(b.color, np.median(pix[sel], axis=0), b.area, shape_from_fill(b.fill, b.taper))


def window_views(frames: np.ndarray, color: Optional[str]):
    bgs = np.stack([background_color(f) for f in frames])
    bg = np.median(bgs, axis=0)
    return bg, [_object(f, bg, color) for f in frames]


def object_summary(views) -> Optional[ObjectView]:
    seen = [v for v in views if v is not None]
    if len(seen) * 2 < len(views):
        return None
    colors = [v.color for v in seen]
    color = max(set(colors), key=colors.count)
    same = [v for v in seen if v.color == color]
    shapes = [v.shape for v in same]
    return ObjectView(color, np.median([v.rgb for v in same], axis=0), float(np.median([v.area for v in same])),
                      max(set(shapes), key=shapes.count))


def seam_ratio_at(frames: np.ndarray, seam: int, span: int = 8) -> float:
    """Change across frames seam-1 -> seam over the median change of the ``span`` frames on either side (at least
    ``SEAM_FLOOR``, so a still clip with an invisible seam scores near 0, not a division by nothing)."""
    d = frame_diffs(frames)
    around = np.concatenate([d[max(0, seam - 1 - span):seam - 1], d[seam:seam + span]])
    base = max(float(np.median(around)) if len(around) else 0.0, SEAM_FLOOR)
    return float(d[seam - 1] / base)


def measure_drift(frames, segments: Sequence[tuple], color: str, background: str) -> list[dict]:
    """Per window (``segments``: (first, stop) pixel frames of each window's new frames, in order), the drift
    figures against the prompted ``color`` and ``background`` names."""
    frames = as_uint8(frames)
    want_obj, want_bg = np.array(COLORS[color], float), np.array(BACKGROUNDS[background], float)
    rows, first = [], None
    for k, (a, b) in enumerate(segments):
        bg, views = window_views(frames[a:b], color)
        obj = object_summary(views)
        row = {"window": k, "frames": [int(a), int(b)], "background_de": delta_e(bg, want_bg),
               "object_found": obj is not None}
        if obj is not None:
            row.update(object_de=delta_e(obj.rgb, want_obj), object_color=obj.color, object_shape=obj.shape,
                       object_area=obj.area)
        if k == 0:
            first = (bg, obj)
            row["identity"] = obj is not None
        else:
            row["seam_ratio"] = seam_ratio_at(frames, a)
            row["background_drift"] = delta_e(bg, first[0])
            f_obj = first[1]
            if obj is not None and f_obj is not None:
                row.update(object_drift=delta_e(obj.rgb, f_obj.rgb), size_change=obj.area / f_obj.area - 1.0)
            row["identity"] = bool(obj is not None and f_obj is not None and obj.color == f_obj.color
                                   and obj.shape == f_obj.shape and 0.5 <= obj.area / f_obj.area <= 2.0)
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    later, nan = rows[1:], float("nan")
    out = {"windows": len(rows),
           "identity": float(np.mean([r["identity"] for r in later])) if later else float(rows[0]["identity"]),
           # nan when the first window shows no object to compare with
           "colour_drift": max((r["object_drift"] for r in later if "object_drift" in r), default=nan),
           "background_drift": max((r.get("background_drift", 0.0) for r in later), default=0.0),
           "size_change": max((abs(r["size_change"]) for r in later if "size_change" in r), default=nan),
           # the same change with its sign (- = the object shrank)
           "size_change_signed": max((r["size_change"] for r in later if "size_change" in r), key=abs, default=nan),
           "seam": float(np.mean([r["seam_ratio"] for r in later])) if later else 0.0,
           "object_de_first": rows[0].get("object_de", float("nan")),
           "object_de_last": rows[-1].get("object_de", float("nan")),
           "background_de_last": rows[-1]["background_de"]}
    out["drifting"] = bool(out["identity"] < TARGETS["identity"] or out["colour_drift"] > TARGETS["colour_drift"]
                           or out["seam"] > TARGETS["seam"])
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Long clips: ground truth and the model
# ----------------------------------------------------------------------------------------------------------------------

def window_segments(plan, tf: int = 4) -> list[tuple[int, int]]:
    """(first, stop) pixel frames of each window's new latents (latent j holds pixel 0, or 4j-3 .. 4j)."""
    def first_pixel(j):
        return 0 if j == 0 else tf * (j - 1) + 1
    return [(first_pixel(w.start), first_pixel(w.stop)) for w in plan]


def frames_for(windows: int, window_frames: int = 17, overlap_frames: int = 4, anchors: int = 0,
               tf: int = 4) -> int:
    """The video length that gives exactly ``windows`` windows."""
    W = (window_frames - 1) // tf + 1
    step = W - overlap_frames // tf - anchors
    return 1 + tf * (W + (windows - 1) * step - 1)


def ground_truth(scene: Scene, frames: int, size: int = 64) -> np.ndarray:
    return render(scene, frames, size, size).frames


def inject_colour_drift(frames: np.ndarray, color: str, per_frame: float, toward=(255, 255, 255)) -> np.ndarray:
    """A copy where pixels near the object's colour slide towards ``toward`` by ``per_frame`` of the way per frame
    (a drift that grows through the clip)."""
    out = as_uint8(frames).astype(np.float64)
    c = np.array(COLORS[color], float)
    near = np.linalg.norm(out - c, axis=-1) < 40
    k = np.clip(per_frame * np.arange(len(out)), 0, 1)[:, None, None, None]
    shifted = out + (np.array(toward, float) - out) * k
    return np.where(near[..., None], np.round(shifted), out).astype(np.uint8)


def generate_long(st, scene: Scene, frames: int, anchors: Sequence[int], seed: int, steps: Optional[int] = None,
                  window_frames: int = 17, overlap_frames: int = 4, size: int = 64, start: str = "text"):
    """The model's long video of a scene (its detailed caption as every window's prompt; ``start`` "image" gives
    the scene's true first frame as the first window's known frame): uint8 frames and the window plan."""
    import torch
    from ..model.longvideo import long_video_latents, long_video_plan, stream_frames
    from .captions import detailed_caption
    plan = long_video_plan(frames, window_frames, overlap_frames, anchors, st.temporal_factor)
    image = None
    if start == "image":
        image = torch.from_numpy(render(scene, 1, size, size).frames[0].astype(np.float32) / 255.0)
    gen = long_video_latents(st, [detailed_caption(scene)], frames=frames, width=size, height=size,
                             window_frames=window_frames, overlap_frames=overlap_frames, anchor_frames=anchors,
                             seed=seed, steps=steps, image=image)
    out = np.concatenate([as_uint8(f.numpy()) for f in stream_frames(st, (r.latents for r in gen))])
    return out, plan


MODES = {"text": ("text", ()), "text+anchor": ("text", (0,)), "image": ("image", ()), "image+anchor": ("image", (0,))}


def evaluate(st, windows: int = 10, scenes: Sequence[Scene] = DRIFT_SCENES, seeds: Sequence[int] = (0,),
             steps: Optional[int] = None, modes: Sequence[str] = tuple(MODES), log=print) -> dict:
    """Per mode (the first window from the prompt alone, or from the scene's true first frame; with or without the
    first frame as an anchor in every later window): per run the per-window rows and the summary, the mean
    summary of the mode, and the settings the mode sampled with (guidance, shift, steps, windows, seeds)."""
    runs = {}
    settings = {"cfg": st.preset.cfg, "shift": st.preset.shift, "steps": steps or st.preset.steps,
                "windows": windows, "scenes": len(scenes), "seeds": list(seeds)}
    for mode in modes:
        start, anchors = MODES[mode]
        results = []
        for i, scene in enumerate(scenes):
            for s in seeds:
                frames = frames_for(windows, anchors=len(anchors))
                video, plan = generate_long(st, scene, frames, anchors, 9000 + 100 * s + i, steps, start=start)
                rows = measure_drift(video, window_segments(plan), scene.main.color, scene.background)
                summ = summarize(rows)
                results.append({"scene": f"{scene.main.color} {scene.main.shape} on {scene.background}",
                                "seed": s, "frames": frames, "rows": rows, "summary": summ})
                log(f"{mode}: {results[-1]['scene']}: identity {summ['identity']:.0%}, colour drift "
                    f"{summ['colour_drift']:.1f}, background drift {summ['background_drift']:.1f}, seam "
                    f"{summ['seam']:.2f}, size change {summ['size_change_signed']:+.0%}")
        runs[mode] = {"runs": results, "mean": _mean([r["summary"] for r in results]), "settings": dict(settings)}
    return runs


def _mean(summaries: list[dict]) -> dict:
    keys = ("identity", "colour_drift", "background_drift", "size_change", "seam", "object_de_first",
            "object_de_last", "background_de_last")
    out = {k: float(np.nanmean([s[k] for s in summaries])) if any(np.isfinite(s[k]) for s in summaries)
           else float("nan") for k in keys}
    out["drifting_runs"] = float(np.mean([s["drifting"] for s in summaries]))
    return out


def report_md(runs: dict, windows: int, preset: str) -> str:
    lines = [f"# Long-video drift ({preset}, {windows} windows)", "",
             "Each run: windows of 17 frames overlapping by 4 (1 latent frame), the scene's caption as every "
             "window's prompt, 64x64, the preset's steps and CFG. text: the first window from the prompt; image: "
             "from the scene's true first frame; +anchor: the first frame known in every later window. "
             "Figures from the decoded frames; Delta E is CIEDE2000; drift is measured against the first window.",
             "",
             "| mode | identity kept | colour drift (Delta E) | background drift | size change | seam ratio | "
             "object Delta E vs prompt, first / last window | runs drifting |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, r in runs.items():
        m = r["mean"]
        lines.append(f"| {mode} | {m['identity']:.0%} | {m['colour_drift']:.1f} | {m['background_drift']:.1f} | "
                     f"{m['size_change']:.0%} | {m['seam']:.2f} | {m['object_de_first']:.1f} / "
                     f"{m['object_de_last']:.1f} | {m['drifting_runs']:.0%} |")
    lines += ["", f"Targets: identity kept >= {TARGETS['identity']:.0%} of windows, colour drift <= "
              f"{TARGETS['colour_drift']:g} Delta E, seam ratio <= {TARGETS['seam']:g}.", ""]
    for mode, r in runs.items():
        lines += [f"## {mode}", "", "| scene | identity | colour drift | background drift | seam | per-window object "
                  "Delta E vs prompt |", "|---|---|---|---|---|---|"]
        for run in r["runs"]:
            s = run["summary"]
            per = " ".join("-" if "object_de" not in w else f"{w['object_de']:.0f}" for w in run["rows"])
            lines.append(f"| {run['scene']} | {s['identity']:.0%} | {s['colour_drift']:.1f} | "
                         f"{s['background_drift']:.1f} | {s['seam']:.2f} | {per} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--windows", type=int, default=10, help="windows per video (default: 10)")
    ap.add_argument("--quick", action="store_true", help="three scenes instead of six (default: off)")
    ap.add_argument("--scenes", type=int, default=0,
                    help=f"the first N of the {len(DRIFT_SCENES)} scenes (default: 0 = all, or three with --quick)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated (default: {','.join(MODES)})")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (default: 0 = the preset's)")
    ap.add_argument("--report", type=Path, help="write a markdown report here (default: none)")
    ap.add_argument("--json", type=Path, help="write every figure as JSON here (default: none)")
    a = ap.parse_args(argv)
    refuse_existing(ap, a)
    if a.windows < 2:
        ap.error(f"--windows {a.windows}: allowed 2 or more")
    if not 0 <= a.scenes <= len(DRIFT_SCENES):
        ap.error(f"--scenes {a.scenes}: allowed 1 to {len(DRIFT_SCENES)} (0 = all)")
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes {a.modes!r}: allowed {', '.join(MODES)}")
    st = load_model(ap, a)
    scenes = DRIFT_SCENES[:a.scenes or (3 if a.quick else len(DRIFT_SCENES))]
    runs = evaluate(st, a.windows, scenes, steps=a.steps or None, modes=modes)
    for mode, r in runs.items():
        m = r["mean"]
        print(f"{mode}: identity {m['identity']:.0%}, colour drift {m['colour_drift']:.1f}, seam {m['seam']:.2f}")
    write_reports(a.report, lambda: report_md(runs, a.windows, model_label(a)), a.json, runs)
    return 0


# the sampling options of ``add_model_options`` that replace the preset's field of the same name
PRESET_OPTIONS = ("cfg", "shift", "frame_cfg", "frame_cfg_stop", "contrast_cfg", "contrast_cfg_stop",
                  "expert_boundary")


def add_model_options(ap: argparse.ArgumentParser) -> None:
    """--preset, --dit, --dit-low-noise, --expert-boundary, --vae, --cfg, --shift, --frame-cfg and --contrast-cfg: the
    model an evaluation measures, and the guidance, sampler shift, frame and contrast guidance it samples with."""
    ap.add_argument("--preset", default="toyworld", help="model preset (default: toyworld)")
    ap.add_argument("--dit", type=Path, help="a DiT file to evaluate in place of the preset's, e.g. a training run's "
                    "dit_ema.safetensors (default: the preset's)")
    ap.add_argument("--dit-low-noise", type=Path, help="a low-noise expert DiT file: the sampler hands it the steps "
                    "below --expert-boundary, the DiT the others (default: the preset's, none for one DiT)")
    ap.add_argument("--expert-boundary", type=float, help="the noise level (0..1] where the low-noise expert takes "
                    "over (default: the preset's)")
    ap.add_argument("--vae", type=Path, help="a VAE file to evaluate in place of the preset's (the same encoder: a "
                    "decoder fine-tune's vae.safetensors; default: the preset's)")
    ap.add_argument("--cfg", type=float, help="guidance scale of every generation (default: the preset's)")
    ap.add_argument("--shift", type=float, help="sampler noise-schedule shift of every generation (default: the "
                    "preset's)")
    ap.add_argument("--frame-cfg", type=float, help="frame guidance of every generation from known frames, >= 0 "
                    "(0 = off; default: the preset's)")
    ap.add_argument("--frame-cfg-stop", type=float, help="the noise level (0..1) below which frame guidance stops "
                    "(0 = every step; default: the preset's)")
    ap.add_argument("--contrast-cfg", type=float, help="contrast guidance of every generation with a contrast prompt "
                    "and no known frames (the preset's default, which stays off with known frames), >= 0 (0 = off; "
                    "default: the preset's)")
    ap.add_argument("--contrast-cfg-stop", type=float, help="the noise level (0..1) below which contrast guidance "
                    "stops (0 = every step; default: the preset's)")


def load_model(ap: argparse.ArgumentParser, a: argparse.Namespace):
    """The pipeline of ``add_model_options``' choice; a --dit, --dit-low-noise or --vae file that is not there stops
    with a usage error."""
    for opt, path, kind in (("--dit", a.dit, "DiT"), ("--dit-low-noise", a.dit_low_noise, "DiT"),
                            ("--vae", a.vae, "VAE")):
        if path is not None and not path.is_file():
            ap.error(f"{opt} {str(path)!r}: no such file (allowed: a {kind} safetensors file)")
    if a.expert_boundary is not None and not 0 < a.expert_boundary <= 1:
        ap.error(f"--expert-boundary {a.expert_boundary}: allowed a noise level within (0, 1]")
    if a.cfg is not None and not (math.isfinite(a.cfg) and a.cfg >= 1):
        ap.error(f"--cfg {a.cfg}: allowed a number >= 1 (1 = no guidance)")
    if a.shift is not None and not (math.isfinite(a.shift) and a.shift > 0):
        ap.error(f"--shift {a.shift}: allowed a number > 0 (1 = no shift)")
    for name in ("frame_cfg", "contrast_cfg"):                  # guidance scales
        value = getattr(a, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            ap.error(f"--{name.replace('_', '-')} {value}: allowed a number >= 0 (0 = off)")
    for name in ("frame_cfg_stop", "contrast_cfg_stop"):        # the noise levels where they stop
        value = getattr(a, name)
        if value is not None and not 0 <= value <= 1:
            ap.error(f"--{name.replace('_', '-')} {value}: allowed a number within 0..1 (0 = every step)")
    from ..model.pipeline import Spacetime
    from ..model.errors import SpacetimeValueError
    try:
        st = Spacetime.load(a.preset, dit=a.dit, vae=a.vae, dit_low_noise=a.dit_low_noise)
    except SpacetimeValueError as e:                            # e.g. the low-noise expert is the DiT file itself
        ap.error(str(e))
    given = {name: float(getattr(a, name)) for name in PRESET_OPTIONS if getattr(a, name) is not None}
    if given:
        st.preset = replace(st.preset, **given)
    return st


def model_label(a: argparse.Namespace) -> str:
    """The preset, and the DiT, low-noise expert and VAE files, expert boundary, guidance scale, shift, frame and
    contrast guidance where the options replaced the preset's (report headings)."""
    label = a.preset if a.dit is None else f"{a.preset}, DiT {a.dit.name}"
    label = label if a.dit_low_noise is None else f"{label}, low-noise expert {a.dit_low_noise.name}"
    label = label if a.expert_boundary is None else f"{label}, expert boundary {a.expert_boundary:g}"
    label = label if a.vae is None else f"{label}, VAE {a.vae.name}"
    label = label if a.cfg is None else f"{label}, CFG {a.cfg:g}"
    label = label if a.shift is None else f"{label}, shift {a.shift:g}"
    label = label if a.frame_cfg is None else f"{label}, frame guidance {a.frame_cfg:g}"
    label = label if a.frame_cfg_stop is None else f"{label}, down to noise {a.frame_cfg_stop:g}"
    label = label if a.contrast_cfg is None else f"{label}, contrast guidance {a.contrast_cfg:g}"
    return label if a.contrast_cfg_stop is None else f"{label}, contrast down to noise {a.contrast_cfg_stop:g}"


def refuse_existing(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Stop before any work when ``--report``, ``--json`` or ``--sheet`` (those of them the command has) names a file
    that exists (reports never overwrite)."""
    for opt in ("report", "json", "sheet"):
        path = getattr(a, opt, None)
        if path is not None and path.exists():
            ap.error(f"--{opt} {path}: the file exists; give a new path (reports never overwrite a file)")


def write_new(path: Path, text: Union[str, Callable[[Path], None]]) -> None:
    """Write ``text`` (or what ``text(tmp)`` writes) to ``path`` through a temporary file, linked into place only if
    ``path`` does not exist."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{path.suffix}")
    try:
        tmp.write_text(text) if isinstance(text, str) else text(tmp)
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_reports(report: Optional[Path], markdown, json_path: Optional[Path], figures) -> None:
    """Write the Markdown report (``markdown()`` makes it) and every figure as JSON where paths were given."""
    if report:
        write_new(report, markdown())
        print("report:", report)
    if json_path:
        write_new(json_path, json.dumps(figures, indent=1, default=float))


if __name__ == "__main__":
    raise SystemExit(main())
