"""The storyboard (multi-shot) evaluation, from pixels against the toy world's truth: the model makes toy-world
stories (``shots.sample_story``: the same objects across 2-3 shots with a new background, a close-up or a pan) from
their per-shot captions, and every story is scored for

  cut placed          a cut is found within one latent frame (4 frames) of each requested cut
  spurious cuts       cuts found away from every requested one
  prompt followed     each shot shows its prompted background and the main object's colour and shape (the same
                      check on single-shot generations of the same captions gives the single-shot rate to compare)
  identity            across every cut the main object keeps its colour and shape, and its area matches the first
                      shot's times the change in zoom (within 0.5-2x)

Cuts are found from motion-compensated frame differences (the smallest mean change over shifts of up to 2 pixels, so
a camera pan is not a cut) that stand out from the differences around them. Videos are decoded with the decoder
restarted at the cuts, as the storyboard node and CLI do; the true stories through the same VAE give the ceiling.

    python -m spacetime.toyworld.storyboard_eval [--stories 8] [--modes text,reference] [--quick] [--report PATH]
    spacetime eval --storyboard ...
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .analysis import as_uint8, nearest_background
from .drift import (add_model_options, load_model, model_label, object_summary, refuse_existing, window_views,
                    write_reports)
from .shots import Story, render_story, sample_story

CUT_RATIO = 3.0               # a cut changes the picture 3x more than the frames around it ...
CUT_MIN = 2.0                 # ... and by at least 2 levels (0-255 mean abs change)
MAX_SHIFT = 2
TARGETS = {"cut_placed": 0.90, "identity": 0.90}


def shifted_change(a: np.ndarray, b: np.ndarray, shift: int = MAX_SHIFT) -> float:
    """The smallest mean abs difference between two frames over translations of up to ``shift`` pixels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    H, W = a.shape[:2]
    best = np.inf
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            pa = a[max(0, dy):H + min(0, dy), max(0, dx):W + min(0, dx)]
            pb = b[max(0, -dy):H + min(0, -dy), max(0, -dx):W + min(0, -dx)]
            best = min(best, float(np.abs(pa - pb).mean()))
    return best


def cut_scores(frames) -> tuple[np.ndarray, np.ndarray]:
    """Per frame p (the first frame after a possible cut): the change from frame p-1, and that change over the
    median change of the 4 frames on either side (floored at 0.5). Frame 0 scores 0."""
    f = as_uint8(frames)
    d = np.zeros(len(f))
    for p in range(1, len(f)):
        d[p] = shifted_change(f[p - 1], f[p])
    ratio = np.zeros(len(f))
    for p in range(1, len(f)):
        around = np.concatenate([d[max(1, p - 4):p], d[p + 1:p + 5]])
        ratio[p] = d[p] / max(0.5, float(np.median(around)) if len(around) else 0.0)
    return d, ratio


def detect_cuts(frames) -> list[int]:
    d, ratio = cut_scores(frames)
    return [int(p) for p in np.nonzero((ratio >= CUT_RATIO) & (d >= CUT_MIN))[0]]


def _shot_ranges(story: Story) -> list[tuple[int, int]]:
    ends = np.cumsum([s.frames for s in story.shots])
    return [(int(e - s.frames), int(e)) for e, s in zip(ends, story.shots)]


def _core(a: int, b: int, tf: int) -> slice:
    """A shot's frames without the latent frame next to each cut (where a cut placed one latent frame off would
    show the neighbouring shot)."""
    return slice(a + tf, b - tf) if b - a > 3 * tf else slice(a, b)


def shot_followed(frames: np.ndarray, scene) -> tuple[bool, object]:
    """(the frames show the scene's background and its main object's colour and shape, the object's summary)."""
    bg, views = window_views(frames, scene.main.color)
    obj = object_summary(views)
    ok = (nearest_background(bg) == scene.background and obj is not None and obj.color == scene.main.color
          and obj.shape == scene.main.shape)
    return bool(ok), obj


def measure_story(frames, story: Story, tf: int = 4) -> dict:
    """Cuts, per-shot prompt following and identity across cuts of a video made from ``story``."""
    frames = as_uint8(frames)
    if len(frames) != story.frames:
        raise ValueError(f"the video has {len(frames)} frames; the story has {story.frames}")
    found = detect_cuts(frames)
    placed = [any(abs(p - c) <= tf for p in found) for c in story.cuts]
    spurious = [p for p in found if all(abs(p - c) > tf for c in story.cuts)]
    followed, objs = [], []
    for (a, b), shot in zip(_shot_ranges(story), story.shots):
        ok, obj = shot_followed(frames[_core(a, b, tf)], shot.scene)
        followed.append(ok)
        objs.append(obj)
    identity = []
    first, z0 = objs[0], story.shots[0].zoom
    for obj, shot in zip(objs[1:], story.shots[1:]):
        expect = (shot.zoom / z0) ** 2
        identity.append(bool(first is not None and obj is not None and obj.color == first.color
                             and obj.shape == first.shape and 0.5 <= obj.area / (first.area * expect) <= 2.0))
    return {"cuts_found": found, "cut_placed": placed, "spurious_cuts": len(spurious), "followed": followed,
            "identity": identity}


def summarize(results: Sequence[dict]) -> dict:
    def share(key):
        vals = [v for r in results for v in r[key]]
        return float(np.mean(vals)) if vals else float("nan")
    return {"stories": len(results), "cut_placed": share("cut_placed"), "followed": share("followed"),
            "identity": share("identity"),
            "spurious_cuts": float(np.mean([r["spurious_cuts"] for r in results])) if results else float("nan")}


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------

def stories(n: int, seed: int = 0) -> list[Story]:
    """``n`` evaluation stories (deterministic), two and three shots alternating."""
    return [sample_story(np.random.default_rng(7000 + seed + i), shots=2 + i % 2) for i in range(n)]


def generate_story(st, story: Story, mode: str, seed: int, steps: Optional[int] = None, size: int = 64,
                   reference_frames: int = 4) -> np.ndarray:
    from ..model.storyboard import storyboard_latents
    raw, plan = storyboard_latents(st, story.storyboard(), width=size, height=size, mode=mode, seed=seed,
                                   steps=steps, reference_frames=reference_frames, expand_prompt=False)
    return as_uint8(st.decode(raw, cuts=plan.latent_cuts)[0].numpy())


def single_shot_rate(st, items: Sequence[Story], seed: int = 0, steps: Optional[int] = None, size: int = 64,
                     tf: int = 4) -> float:
    """Prompt following of each shot's caption generated alone (1 + 4k frames)."""
    ok = []
    for i, story in enumerate(items):
        for k, shot in enumerate(story.shots):
            n = shot.frames if (shot.frames - 1) % tf == 0 else shot.frames + 1
            v = st.generate(shot.caption, width=size, height=size, frames=n, seed=seed + 100 * i + k, steps=steps,
                            expand_prompt=False)
            frames = as_uint8(v[0].numpy())
            ok.append(shot_followed(frames[_core(0, n, tf)], shot.scene)[0])
    return float(np.mean(ok))


@torch.no_grad()
def vae_ceiling(st, items: Sequence[Story]) -> dict:
    """The scores of the true stories after the model's VAE, encoded and decoded with restarts at the cuts (as
    ``encode-stories`` encodes training stories and storyboards are decoded): what a DiT that made exactly the
    true latents would score."""
    from ..model.conditioning import to_video
    results = []
    for story in items:
        truth = render_story(story).frames
        cuts = story.latent_cuts(st.temporal_factor)
        video = to_video(torch.from_numpy(truth.astype(np.float32) / 255.0)).to(st.vae.device)
        raw = st.vae.encode_raw(video, restarts=cuts).cpu()
        results.append(measure_story(as_uint8(st.decode(raw, cuts=cuts)[0].numpy()), story))
    return summarize(results)


def evaluate(st, n: int = 8, modes: Sequence[str] = ("text", "reference", "text+reference"), seed: int = 0,
             steps: Optional[int] = None, log=print) -> dict:
    items = stories(n, seed)
    out = {"settings": {"cfg": st.preset.cfg, "shift": st.preset.shift, "steps": steps or st.preset.steps,
                        "stories": n, "seed": seed},
           "single_shot_followed": single_shot_rate(st, items, seed, steps), "modes": {}}
    log(f"single-shot prompt following: {out['single_shot_followed']:.0%}")
    out["vae_ceiling"] = c = vae_ceiling(st, items)
    log(f"true stories through the VAE: cut placed {c['cut_placed']:.0%}, prompt followed {c['followed']:.0%}, "
        f"identity across cuts {c['identity']:.0%}")
    for mode in modes:
        results = []
        for i, story in enumerate(items):
            res = measure_story(generate_story(st, story, mode, seed + i, steps), story)
            res["changes"] = [s.change for s in story.shots[1:]]
            results.append(res)
        out["modes"][mode] = {"summary": summarize(results), "stories": results}
        s = out["modes"][mode]["summary"]
        log(f"{mode}: cut placed {s['cut_placed']:.0%}, spurious cuts {s['spurious_cuts']:.2f} per story, prompt "
            f"followed {s['followed']:.0%}, identity across cuts {s['identity']:.0%}")
    return out


def report_md(res: dict, preset: str) -> str:
    lines = [f"# Storyboard evaluation ({preset})", "",
             "Toy-world stories of 2-3 shots (17 + 16 (+ 16) frames, 64x64; the same objects with a new background, "
             "a close-up or a pan after each cut), the per-shot captions as the shots' prompts, the preset's steps "
             "and CFG. Figures from the decoded frames.", "",
             f"Single-shot prompt following (each caption generated alone): {res['single_shot_followed']:.0%}", "",
             "| conditioning | cut placed (+-1 latent frame) | spurious cuts per story | prompt followed per shot | "
             "identity across cuts |", "|---|---|---|---|---|"]
    for mode, r in res["modes"].items():
        s = r["summary"]
        lines.append(f"| {mode} | {s['cut_placed']:.0%} | {s['spurious_cuts']:.2f} | {s['followed']:.0%} | "
                     f"{s['identity']:.0%} |")
    c = res.get("vae_ceiling")
    if c:
        lines.append(f"| the true stories through the VAE (ceiling) | {c['cut_placed']:.0%} | "
                     f"{c['spurious_cuts']:.2f} | {c['followed']:.0%} | {c['identity']:.0%} |")
    lines += ["", "Every video is decoded with the decoder restarted at the cuts "
              "(``Spacetime.decode(..., cuts=...)``); the last row scores the true stories encoded and decoded the "
              "same way, the most a DiT could reach through this VAE and analysis.", "",
              f"Targets: cut placed >= {TARGETS['cut_placed']:.0%}, prompt followed at the single-shot rate, "
              f"identity across cuts >= {TARGETS['identity']:.0%}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--stories", type=int, default=8, help="stories per conditioning mode (default: 8)")
    ap.add_argument("--modes", default="text,reference,text+reference",
                    help="conditioning modes, comma-separated (default: text,reference,text+reference)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps (default: 0 = the preset's)")
    ap.add_argument("--quick", action="store_true", help="three stories (default: off)")
    ap.add_argument("--report", type=Path, help="write a markdown report here (default: none)")
    ap.add_argument("--json", type=Path, help="write every figure as JSON here (default: none)")
    a = ap.parse_args(argv)
    refuse_existing(ap, a)
    if a.quick:
        a.stories = min(a.stories, 3)
    from ..model.storyboard import MODES
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"--modes {a.modes!r}: allowed {', '.join(MODES)}")
    if a.stories < 1:
        ap.error(f"--stories {a.stories}: allowed 1 or more")
    for opt in ("contrast_cfg", "contrast_cfg_stop"):
        if getattr(a, opt) is not None:
            ap.error(f"--{opt.replace('_', '-')}: storyboards sample without contrast guidance; leave it out")
    st = load_model(ap, a)
    res = evaluate(st, a.stories, modes, steps=a.steps or None)
    write_reports(a.report, lambda: report_md(res, model_label(a)), a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
