"""Evaluate the embedded model: generate from held-out prompts with fixed seeds and measure the decoded frames.

    python -m spacetime.toyworld.eval [--quick] [--report eval.md] [--sheet sheet.png]
    python -m spacetime.toyworld.eval --dit RUN/dit_ema.safetensors --parts extension,fill --json figures.json

Held-out prompts use attribute combinations the training data never showed (see world.HELD_OUT_*) and wordings
outside the caption templates. Measured: colour, shape, motion direction, left/right and above/below, object
permanence through an occlusion, temporal stability, image-to-video first-frame PSNR and whether the direction
word is read (the same image asked the opposite way; a centred object asked each of four ways), extension seam ratio
(forward and backward), fill PSNR, and the wall time of a default generation including model load.
Reports, sheets and JSON are new files: a path that exists stops the run before any work (remove the old
weights/EVAL.md first to redo it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .analysis import analyse, flicker, ghosting, motion_of, psnr, relation_of, seam_ratio
from .captions import detailed_caption
from .world import CHANGES, DIRECTIONS, Obj, Scene, render, with_main, with_opposite_motion

# (prompt, expected) -- expected: kind, color, shape, motion or relation (+ second color), background
SINGLE = [
    ("a purple triangle sliding to the right across a beige backdrop", "purple", "triangle", "moves right", "beige"),
    ("cyan cube drifting downward on black", "cyan", "box", "moves down", "black"),
    ("an orange sphere moving left on a gray background", "orange", "ball", "moves left", "gray"),
    ("a yellow ball rising on navy", "yellow", "ball", "moves up", "navy"),
    ("a green square heading left over a white background", "green", "box", "moves left", "white"),
    ("small white disc bouncing on the ground, sky blue background", "white", "ball", "bounces", "sky blue"),
    ("a big purple pyramid moving down on black", "purple", "triangle", "moves down", "black"),
    ("a cyan block travelling rightward on navy", "cyan", "box", "moves right", "navy"),
    ("an orange ball that grows bigger on beige", "orange", "ball", "grows", "beige"),
    ("a tiny yellow circle going upward on a black background", "yellow", "ball", "moves up", "black"),
    ("a red wedge slides left against a gray backdrop", "red", "triangle", "moves left", "gray"),
    ("blue box shrinking on white", "blue", "box", "shrinks", "white"),
    ("a green dot moving to the left on beige", "green", "ball", "moves left", "beige"),
    ("purple triangle sitting still on sky blue", "purple", "triangle", "stays still", "sky blue"),
    ("an orange orb travelling up on navy", "orange", "ball", "moves up", "navy"),
    ("a white sphere bouncing on the floor on a navy background", "white", "ball", "bounces", "navy"),
    ("a cyan cube moving up on black", "cyan", "box", "moves up", "black"),
    ("a large red box moving right on beige", "red", "box", "moves right", "beige"),
    ("yellow pyramid drifting right over gray", "yellow", "triangle", "moves right", "gray"),
    ("a blue triangle moving down on a sky blue background", "blue", "triangle", "moves down", "sky blue"),
]
PAIRS = [
    ("a purple triangle to the left of a green ball on black", "purple", "triangle", "left of", "green", "black"),
    ("a cyan box right of an orange circle on navy", "cyan", "box", "right of", "orange", "navy"),
    ("an orange ball above a blue square on white", "orange", "ball", "above", "blue", "white"),
    ("a yellow triangle below a red box on gray", "yellow", "triangle", "below", "red", "gray"),
    ("a green cube on the left of a purple pyramid on beige", "green", "box", "left of", "purple", "beige"),
    ("a white dot over a cyan block on navy", "white", "ball", "above", "cyan", "navy"),
    ("a red triangle on the right of a yellow ball on black", "red", "triangle", "right of", "yellow", "black"),
    ("a blue ball beneath an orange triangle on sky blue", "blue", "ball", "below", "orange", "sky blue"),
]
OCCLUSION = [
    ("a purple triangle moving right passes behind a pillar on beige", "purple", "triangle", "moves right", "beige"),
    ("an orange ball moving left behind a pillar on navy", "orange", "ball", "moves left", "navy"),
    ("a cyan box passes behind a pillar moving right on black", "cyan", "box", "moves right", "black"),
    ("a yellow sphere going left hides behind a pillar on gray", "yellow", "ball", "moves left", "gray"),
    ("a green block moving right behind a pillar on white", "green", "box", "moves right", "white"),
    ("a red disc moving left passes behind a pillar on sky blue", "red", "ball", "moves left", "sky blue"),
]
# ground-truth scenes for image-to-video, extension and fill (most of them held-out combinations)
GT_SCENES = [
    Scene("beige", (Obj("triangle", "purple", "medium", "moves right", 0.25, 0.5),)),
    Scene("navy", (Obj("ball", "orange", "medium", "moves left", 0.75, 0.45),)),
    Scene("black", (Obj("box", "cyan", "medium", "moves down", 0.5, 0.25),)),
    Scene("gray", (Obj("ball", "yellow", "large", "moves up", 0.45, 0.72),)),
    Scene("white", (Obj("box", "green", "medium", "moves left", 0.72, 0.55),)),
    Scene("sky blue", (Obj("triangle", "red", "medium", "moves right", 0.28, 0.4),)),
    Scene("black", (Obj("ball", "yellow", "medium", "moves up", 0.4, 0.7),)),
    Scene("beige", (Obj("box", "cyan", "medium", "moves right", 0.25, 0.45),)),
    Scene("navy", (Obj("triangle", "purple", "medium", "moves left", 0.72, 0.5),)),
    Scene("gray", (Obj("ball", "green", "medium", "moves left", 0.7, 0.4),)),
    Scene("white", (Obj("ball", "orange", "medium", "moves down", 0.5, 0.3),)),
    Scene("sky blue", (Obj("box", "blue", "medium", "moves up", 0.55, 0.7),)),
]


def _put(res: dict, **rates) -> None:
    """Store each metric's mean of its per-sample values (nan when none) and, in res["n"], how many samples it has."""
    for key, vals in rates.items():
        vals = [float(v) for v in vals]
        res[key] = float(np.mean(vals)) if vals else float("nan")
        res.setdefault("n", {})[key] = len(vals)


def _track(a, color):
    return next((t for t in a["tracks"] if t.color == color), None)


def _gen(st, prompt, seed, frames=17, size=(64, 64), **kw):
    out = st.generate(prompt, "", width=size[0], height=size[1], frames=frames, seed=seed, **kw)
    return (out[0].numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def _gt(scene, frames, size=(64, 64)):
    return render(scene, frames, size[0], size[1]).frames


def _frames_tensor(arr):
    return torch.from_numpy(arr.astype(np.float32) / 255.0)


def evaluate_seen(st, quick=False, seeds=(0, 1), log=print) -> dict:
    """Prompts whose attribute combinations the training data shows (the probe's SEEN set), fixed seeds."""
    from .probe import SEEN, score
    items = SEEN[::3] if quick else SEEN
    seeds = seeds[:1] if quick else seeds
    rows = []
    for it in items:
        for s in seeds:
            v = _gen(st, it.prompt, it.seed + 10000 * s)
            rows.append((it.scene, score(v, it.scene)))
    single = [(sc, r) for sc, r in rows if sc.kind == "single"]

    def vals(sel, key):
        return [r[key] for _, r in sel if r.get(key) is not None]
    res: dict = {}
    _put(res, seen_color=vals(single, "color"), seen_shape=vals(single, "shape"),
         seen_direction=vals([x for x in single if x[0].main.motion in DIRECTIONS], "motion"),
         seen_bounce_grow_shrink=vals([x for x in single if x[0].main.motion in CHANGES], "motion"),
         seen_relation=vals([x for x in rows if x[0].kind == "pair"], "relation"), seen_all=vals(rows, "all"))
    log(f"seen combinations: colour {res['seen_color']:.0%} shape {res['seen_shape']:.0%} direction "
        f"{res['seen_direction']:.0%} bounce/grow/shrink {res['seen_bounce_grow_shrink']:.0%} all {res['seen_all']:.0%}")
    return res


PARTS = ("seen", "single", "pairs", "occlusion", "i2v", "extension", "fill")


def evaluate(st, quick=False, seeds=(0, 1), log=print, parts=PARTS) -> tuple[dict, dict]:
    """Every part of the evaluation named in ``parts`` (see PARTS); figures of the other parts are absent."""
    bad = [x for x in parts if x not in PARTS]
    if bad or not parts:
        raise ValueError(f"parts={list(parts)!r}: allowed any of {', '.join(PARTS)}")
    res: dict = evaluate_seen(st, quick, seeds, log) if "seen" in parts else {}
    samples: dict = {}
    res["rows"] = []
    seeds = seeds[:1] if quick else seeds
    rel_seeds = seeds if quick else tuple(range(2 * len(seeds)))   # few prompts: 16 samples a relation, 24 occlusions
    gts = GT_SCENES[:3] if quick else GT_SCENES
    if "single" in parts:
        _eval_single(st, SINGLE[:8] if quick else SINGLE, seeds, res, samples, log)
    if "pairs" in parts:
        _eval_pairs(st, PAIRS[:4] if quick else PAIRS, rel_seeds, res, samples, log)
    if "occlusion" in parts:
        _eval_occlusion(st, OCCLUSION[:3] if quick else OCCLUSION, rel_seeds, res, samples, log)
    if "i2v" in parts:
        _eval_i2v(st, gts, res, log)
    if "extension" in parts:
        _eval_extension(st, gts, res, samples, log)
    if "fill" in parts:
        _eval_fill(st, gts, res, log)
    return res, samples


def _eval_single(st, single, seeds, res, samples, log):
    color_ok, shape_ok, dir_ok, motion_ok, bg_ok, stable_ok, flick, ghost = [], [], [], [], [], [], [], []
    rows = []
    for i, (prompt, color, shape, motion, bg) in enumerate(single):
        for s in seeds:
            v = _gen(st, prompt, 1000 * s + i)
            a = analyse(v)
            t = _track(a, color)
            main = a["tracks"][0] if a["tracks"] else None
            color_ok.append(main is not None and main.color == color)
            obj = t or main
            shape_ok.append(obj is not None and obj.shape() == shape)
            m = motion_of(obj, v.shape[0]) if obj is not None else "none"
            motion_ok.append(m == motion)
            if motion in DIRECTIONS:
                dir_ok.append(m == motion)
            bg_ok.append(a["background"] == bg)
            fl = flicker(v)
            flick.append(fl)
            ghost.append(ghosting(v))
            ident = obj is not None and obj.visible().mean() > 0.8
            stable_ok.append(fl < 3.0 and ident)
            rows.append((prompt, s, main.color if main else "-", obj.shape() if obj else "-", m))
            samples.setdefault(prompt, v)
    log(f"single-object prompts: colour {np.mean(color_ok):.0%} shape {np.mean(shape_ok):.0%} "
        f"direction {np.mean(dir_ok):.0%}")
    _put(res, color=color_ok, shape=shape_ok, direction=dir_ok, motion=motion_ok, background=bg_ok,
         stability=stable_ok, flicker=flick, ghosting=ghost)
    res["rows"] = rows


def _eval_pairs(st, pairs, seeds, res, samples, log):
    lr, ab = [], []
    for i, (prompt, c1, sh1, rel, c2, bg) in enumerate(pairs):
        for s in seeds:
            v = _gen(st, prompt, 2000 + 1000 * s + i)
            a = analyse(v)
            t1, t2 = _track(a, c1), _track(a, c2)
            ok = t1 is not None and t2 is not None and relation_of(t1, t2) == rel
            (lr if rel in ("left of", "right of") else ab).append(ok)
            samples.setdefault(prompt, v)
    log(f"two-object prompts: left/right {np.mean(lr):.0%} above/below {np.mean(ab):.0%}")
    _put(res, left_right=lr, above_below=ab)


def _eval_occlusion(st, occl, seeds, res, samples, log):
    perm = []
    for i, (prompt, color, shape, motion, bg) in enumerate(occl):
        for s in seeds:
            v = _gen(st, prompt, 3000 + 1000 * s + i)
            a = analyse(v)
            t = _track(a, color)
            ok = False
            if t is not None:
                vis = t.visible()
                p = t.path()
                n = len(vis)
                start, end = slice(0, n // 4), slice(n - n // 4, n)
                if vis[start].sum() >= 2 and vis[end].sum() >= 2:
                    x0, x1 = np.nanmean(p[start, 0]), np.nanmean(p[end, 0])
                    crossed = (x0 < 0.5 < x1) if motion == "moves right" else (x1 < 0.5 < x0)
                    ar = t.areas()
                    same_size = 0.5 < np.nanmean(ar[end]) / max(1e-6, np.nanmean(ar[start])) < 2.0
                    ok = crossed and same_size
            perm.append(ok)
            samples.setdefault(prompt, v)
    log(f"occlusion: permanence {np.mean(perm):.0%}")
    _put(res, permanence=perm)


def _eval_i2v(st, gts, res, log):
    # image-to-video: the first frame must reproduce the image; the rest must move as the prompt says. The same
    # image and noise are asked again with the opposite direction word: a model that reads the word moves the object
    # the other way (one that ignores it can be right at most once of the two)
    i2v_psnr, i2v_motion, swapped, both = [], [], [], []
    for i, sc in enumerate(gts):
        gt = _gt(sc, 17)
        img = _frames_tensor(gt[:1])[0]
        v = _gen(st, detailed_caption(sc), 4000 + i, image=img)
        i2v_psnr.append(psnr(v[0], gt[0]))
        t = _track(analyse(v), sc.main.color)
        i2v_motion.append(t is not None and motion_of(t, 17) == sc.main.motion)
        other = with_opposite_motion(sc)
        t = _track(analyse(_gen(st, detailed_caption(other), 4000 + i, image=img)), sc.main.color)
        swapped.append(t is not None and motion_of(t, 17) == other.main.motion)
        both.append(i2v_motion[-1] and swapped[-1])
    # the same objects moved to the centre of the frame, where the start position tells nothing, asked with each of
    # the four direction words (same image and noise for the four): only the word can pick the path (chance 25 %)
    centred = []
    for i, sc in enumerate(gts):
        if sc.main.motion not in DIRECTIONS:
            continue
        mid = with_main(sc, x=0.5, y=0.5)
        img = _frames_tensor(_gt(mid, 1))[0]
        for m in DIRECTIONS:
            asked = with_main(mid, motion=m)
            t = _track(analyse(_gen(st, detailed_caption(asked), 4500 + i, image=img)), sc.main.color)
            centred.append(t is not None and motion_of(t, 17) == m)
    log(f"image-to-video: first-frame PSNR {np.mean(i2v_psnr):.1f} dB, motion as prompted {np.mean(i2v_motion):.0%}, "
        f"with the opposite word {np.mean(swapped):.0%}, both ways {np.mean(both):.0%}, "
        f"centred object, four direction words {np.mean(centred):.0%} (chance 25%)")
    _put(res, i2v_psnr=i2v_psnr, i2v_motion=i2v_motion, i2v_swapped=swapped, i2v_both_ways=both, i2v_centred=centred)


def _eval_extension(st, gts, res, samples, log):
    # extension: a 17-frame ground-truth clip extended by 16 frames forward and backward. The seam is where generated
    # latent frames meet known ones; the same ratio on the VAE's reconstruction of the true 33-frame clip is the floor
    # (the causal VAE alone changes frames more across its latent-frame boundaries than inside them).
    fwd, bwd, cont, floor = [], [], [], []
    tf = st.temporal_factor
    for i, sc in enumerate(gts):
        gt = _gt(sc, 17)
        cap = detailed_caption(sc)
        v = _gen(st, cap, 5000 + i, frames=16, extend=_frames_tensor(gt), direction="forward")
        fwd.append(seam_ratio(v, 17))
        cont.append(_continues(v[17:], sc))
        # backward: the clip that follows is the scene continued; new frames lead into it
        later = render(_advance(sc, 16), 17, 64, 64).frames
        v = _gen(st, cap, 6000 + i, frames=16, extend=_frames_tensor(later), direction="backward")
        seam = known_from(v.shape[0] - 17, tf)
        bwd.append(seam_ratio(v, seam))
        cont.append(_continues(v[:v.shape[0] - 17], sc))
        truth = _vae_roundtrip(st, _gt(sc, v.shape[0]))
        floor += [seam_ratio(truth, 17), seam_ratio(truth, seam)]
        if i == 0:
            samples["extend forward: " + cap] = v
    log(f"extension seam ratio: forward {np.mean(fwd):.2f}, backward {np.mean(bwd):.2f} (the VAE alone on the true "
        f"clip: {np.mean(floor):.2f}); motion continues {np.mean(cont):.0%}")
    _put(res, seam_forward=fwd, seam_backward=bwd, seam=fwd + bwd, seam_floor=floor, extend_motion=cont)


def known_from(start: int, tf: int = 4) -> int:
    """The first pixel frame of the first latent frame that is wholly known when known pixel frames begin at
    ``start`` (latent frame 0 holds pixel frame 0, latent frame j >= 1 pixel frames tf*j-tf+1 .. tf*j): the frame
    before it was generated, so this is where a tail extension's seam lies."""
    from ..model.conditioning import slot_of, slot_pixels
    j = slot_of(start, tf)
    if slot_pixels(j, tf).start < start:          # start falls inside latent frame j: j is partly generated
        j += 1
    return slot_pixels(j, tf).start


@torch.no_grad()
def _vae_roundtrip(st, frames: np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] through the model's VAE and back."""
    from ..model.conditioning import to_frames, to_video
    x = to_video(_frames_tensor(frames)).to(st.vae.device)
    rec = to_frames(st.vae.decode(st.vae.encode(x)).cpu())[0]
    return (rec.numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def _eval_fill(st, gts, res, log):
    # fill: 33-frame clip with its first and last 9 frames known
    fills = []
    for i, sc in enumerate(gts):
        gt = _gt(sc, 33)
        v = _gen(st, detailed_caption(sc), 7000 + i, frames=15, extend=_frames_tensor(gt[:9]), direction="fill",
                 after=_frames_tensor(gt[-9:]))
        fills.append(np.mean([psnr(v[k], gt[k]) for k in range(9, 24)]))
    log(f"fill: PSNR on the missing frames {np.mean(fills):.1f} dB")
    _put(res, fill_psnr=fills)


def _continues(new_frames, scene: Scene) -> bool:
    """The generated frames of an extension show the scene's object moving as before."""
    t = _track(analyse(new_frames), scene.main.color)
    return t is not None and motion_of(t, new_frames.shape[0]) == scene.main.motion


def _advance(scene: Scene, frames: int) -> Scene:
    """The same scene ``frames`` frames later (linear motions only)."""
    from .world import BASE_SPEED
    o = scene.main
    d = BASE_SPEED * o.speed * frames
    dx = {"moves right": d, "moves left": -d}.get(o.motion, 0.0)
    dy = {"moves down": d, "moves up": -d}.get(o.motion, 0.0)
    return with_main(scene, x=o.x + dx, y=o.y + dy)


def wall_time(preset="toyworld", dit=None, vae=None) -> dict:
    """A default generation (17 frames, 20 steps, CFG) in a fresh bundle, model load included (``dit``, ``vae``: files
    in place of the preset's). A preset that generates from given frames only (``toyworld-i2v``) is timed on
    image-to-video from a rendered first frame of the same scene."""
    from ..model import text_encoders
    from ..model.pipeline import Spacetime
    text_encoders._MINILM_CACHE.clear()
    runs = [("a red ball bounces on a navy background", Obj("ball", "red", "medium", "bounces", 0.5, 0.3), "navy"),
            ("a blue box moves left on a beige background", Obj("box", "blue", "medium", "moves left", 0.7, 0.5),
             "beige")]
    t0 = time.time()
    st = Spacetime.load(preset, dit=dit, vae=vae)
    times = []
    for seed, (prompt, obj, bg) in enumerate(runs):
        image = _frames_tensor(_gt(Scene(bg, (obj,)), 1))[0] if st.needs_known_frames else None
        st.generate(prompt, frames=17, steps=20, seed=seed, image=image)
        times.append(time.time() - t0)
        t0 = time.time()
    return {"cold_s": times[0], "warm_s": times[1]}


def contact_sheet(samples: dict, path: Path, per_row: int = 6, scale: int = 2):
    from PIL import Image, ImageDraw
    items = list(samples.items())[:8]
    tiles = []
    for prompt, v in items:
        idx = np.linspace(0, v.shape[0] - 1, per_row).round().astype(int)
        row = np.concatenate([v[k] for k in idx], axis=1)
        tiles.append((prompt, row))
    w = max(r.shape[1] for _, r in tiles) * scale
    h_row = max(r.shape[0] for _, r in tiles) * scale + 14
    sheet = Image.new("RGB", (w, h_row * len(tiles)), "white")
    d = ImageDraw.Draw(sheet)
    for k, (prompt, row) in enumerate(tiles):
        im = Image.fromarray(row).resize((row.shape[1] * scale, row.shape[0] * scale), Image.NEAREST)
        sheet.paste(im, (0, k * h_row + 14))
        d.text((2, k * h_row + 1), prompt[:110], fill="black")
    from .drift import write_new
    write_new(path, lambda tmp: sheet.save(tmp, format="PNG"))


TARGETS = {"seen_color": 0.95, "seen_shape": 0.90, "seen_direction": 0.90, "seen_bounce_grow_shrink": 0.80,
           "color": 0.90, "shape": 0.80, "direction": 0.85, "left_right": 0.90, "above_below": 0.90,
           "permanence": 0.80, "i2v_psnr": 30.0, "i2v_motion": 0.85, "extend_motion": 0.85, "fill_psnr": 26.0,
           "seam": 1.5, "cold_s": 10.0}


def report_md(res: dict, timing: dict, preset: str, quick: bool) -> str:
    def mark(key, val):
        t = TARGETS.get(key)
        if t is None:
            return ""
        good = val <= t if key in ("seam", "cold_s") else val >= t
        if val != val:                       # nan: nothing measured
            return ""
        return "yes" if good else "no"
    lines = [f"# Embedded model evaluation ({preset}{', quick' if quick else ''})", "",
             "Seen combinations (the probe's fixed prompts) and held-out prompts (attribute combinations never seen in "
             "training, free wording), fixed seeds, 64x64, 17 frames, sampling defaults of the preset. Figures from the "
             "decoded frames.", "",
             "| metric | value | samples | target | met |", "|---|---|---|---|---|"]
    rows = [("seen: object colour", "seen_color", "{:.0%}", ">= 95%"), ("seen: shape", "seen_shape", "{:.0%}", ">= 90%"),
            ("seen: motion direction", "seen_direction", "{:.0%}", ">= 90%"),
            ("seen: bounce / grow / shrink", "seen_bounce_grow_shrink", "{:.0%}", ">= 80%"),
            ("seen: left/right/above/below (two objects)", "seen_relation", "{:.0%}", ""),
            ("seen: everything right in one clip", "seen_all", "{:.0%}", ""),
            ("held-out: object colour accuracy", "color", "{:.0%}", ">= 90%"),
            ("held-out: shape accuracy", "shape", "{:.0%}", ">= 80%"),
            ("held-out: motion direction accuracy", "direction", "{:.0%}", ">= 85%"),
            ("all motion types (incl. still, bounce, grow, shrink)", "motion", "{:.0%}", ""),
            ("background colour", "background", "{:.0%}", ""),
            ("left/right correctness", "left_right", "{:.0%}", ">= 90%"),
            ("above/below correctness", "above_below", "{:.0%}", ">= 90%"),
            ("object permanence after occlusion", "permanence", "{:.0%}", ">= 80%"),
            ("temporal stability (no flicker, no identity change)", "stability", "{:.0%}", ""),
            ("background flicker (mean abs change, 0-255)", "flicker", "{:.2f}", ""),
            ("ghosting: frames showing the one object as two or more groups", "ghosting", "{:.0%}", ""),
            ("image-to-video first-frame PSNR", "i2v_psnr", "{:.1f} dB", ">= 30 dB"),
            ("image-to-video motion as prompted", "i2v_motion", "{:.0%}", ">= 85%"),
            ("image-to-video, the same image asked with the opposite word", "i2v_swapped", "{:.0%}", ""),
            ("image-to-video, moved as asked both ways (reads the word)", "i2v_both_ways", "{:.0%}", ""),
            ("image-to-video, centred object, each of 4 direction words (chance 25%)", "i2v_centred", "{:.0%}", ""),
            ("extension: motion continues (forward and backward)", "extend_motion", "{:.0%}", ">= 85%"),
            ("extension seam ratio, forward", "seam_forward", "{:.2f}", ""),
            ("extension seam ratio, backward", "seam_backward", "{:.2f}", ""),
            ("extension seam ratio, both", "seam", "{:.2f}", "<= 1.5"),
            ("same ratio, VAE reconstruction of the true clip (floor)", "seam_floor", "{:.2f}", ""),
            ("fill PSNR on missing frames", "fill_psnr", "{:.1f} dB", ">= 26 dB")]
    n = res.get("n", {})
    for name, key, fmt, target in rows:
        if key in res:
            lines.append(f"| {name} | {fmt.format(res[key])} | {n.get(key, '')} | {target} | {mark(key, res[key])} |")
        else:
            lines.append(f"| {name} | not measured | | {target} | |")
    lines.append(f"| default generation, 17 frames, 20 steps, CFG, incl. model load | {timing['cold_s']:.1f} s | 1 | "
                 f"<= 10 s | {mark('cold_s', timing['cold_s'])} |")
    lines.append(f"| same, model already loaded | {timing['warm_s']:.1f} s | 1 | | |")
    if res.get("rows"):
        lines += ["", "Per-prompt results (single objects): prompt, seed, detected colour, shape, motion.", ""]
        lines += [f"- {p} (seed {s}): {c}, {sh}, {m}" for p, s, c, sh, m in res["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    from .drift import add_model_options, load_model, model_label, refuse_existing, write_reports
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--quick", action="store_true", help="fewer prompts and one seed")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help=f"comma-separated parts to measure (default: all: {','.join(PARTS)})")
    ap.add_argument("--report", type=Path, help="write a markdown report to this new file")
    ap.add_argument("--sheet", type=Path, help="write a PNG contact sheet to this new file")
    ap.add_argument("--json", type=Path, help="write the figures as JSON to this new file")
    a = ap.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    if not parts or any(x not in PARTS for x in parts):
        ap.error(f"--parts {a.parts!r}: allowed a comma-separated choice of {', '.join(PARTS)}")
    refuse_existing(ap, a)                  # reports never overwrite: an existing path stops here
    st = load_model(ap, a)                  # a missing --dit or --vae file stops here, before any work
    torch.set_num_threads(max(1, torch.get_num_threads()))
    timing = wall_time(a.preset, a.dit, a.vae)
    print(f"default generation: {timing['cold_s']:.1f} s including model load, {timing['warm_s']:.1f} s warm")
    res, samples = evaluate(st, quick=a.quick, parts=parts)
    label = model_label(a)
    write_reports(a.report, lambda: report_md(res, timing, label, a.quick), a.json,
                  {**{k: v for k, v in res.items() if k != "rows"}, **timing, "cfg": st.preset.cfg,
                   "shift": st.preset.shift, "frame_cfg": st.preset.frame_cfg,
                   "frame_cfg_stop": st.preset.frame_cfg_stop, "contrast_cfg": st.preset.contrast_cfg,
                   "contrast_cfg_stop": st.preset.contrast_cfg_stop})
    if a.sheet:
        contact_sheet(samples, a.sheet)
        print("contact sheet:", a.sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
