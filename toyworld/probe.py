"""The prompt-following probe: fixed prompts, fixed seeds, generated with the sampler users get and scored from the
pixels by ``toyworld.analysis``. Training runs it every few hundred steps on the EMA weights; its curve, not the
loss, decides what a training change is worth.

Two prompt sets: ``SEEN`` (attribute combinations the training data shows, varied over every colour, shape, size,
motion, background and relation) and ``HELD`` (combinations training never shows, in free wording). Each item
knows the scene it asks for, so the same scorer rates ground-truth renders (all right) and mismatched captions
(wrong) — the tests check both.

Per item: the object is drawn, its colour, its shape, the background, exactly the asked number of objects on a
plain backdrop, and for clips the motion (single objects) or the spatial relation (pairs). ``all`` needs every one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .analysis import analyse, background_flatness, motion_of, object_count, relation_of
from .captions import expand_prompt
from .world import (BACKGROUNDS, COLORS, DIRECTIONS, MOTIONS, OPPOSITE_MOTION, SHAPES, Obj, Scene, is_held_out,
                    visible_on, with_opposite_motion)

METRICS = ("drawn", "color", "shape", "background", "count", "motion", "relation", "all")


@dataclass(frozen=True)
class ProbeItem:
    prompt: str
    scene: Scene              # what the prompt asks for (positions are typical start positions)
    seed: int


def typical_object(shape, color, size, motion, x=None, y=None) -> Obj:
    """An object placed where training clips with this motion start."""
    x0 = {"moves right": 0.25, "moves left": 0.75}.get(motion, 0.5)
    y0 = {"moves down": 0.25, "moves up": 0.75, "bounces": 0.3}.get(motion, 0.5)
    return Obj(shape, color, size, motion, x0 if x is None else x, y0 if y is None else y)


def pair_scene(bg, a: tuple, rel: str, b: tuple) -> Scene:
    """a, b: (shape, colour, size)."""
    near, far = 0.29, 0.71
    pos = {"left of": ((near, 0.5), (far, 0.5)), "right of": ((far, 0.5), (near, 0.5)),
           "above": ((0.5, near), (0.5, far)), "below": ((0.5, far), (0.5, near))}[rel]
    oa = Obj(a[0], a[1], a[2], "stays still", *pos[0])
    ob = Obj(b[0], b[1], b[2], "stays still", *pos[1])
    return Scene(bg, (oa, ob), relation=rel, kind="pair")


_MOTION_TEXT = {"moves left": "moving left", "moves right": "moving right", "moves up": "moving up",
                "moves down": "moving down", "stays still": "staying still", "bounces": "bouncing",
                "grows": "growing", "shrinks": "shrinking"}
_REL_TEXT = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def _seen_items() -> list[ProbeItem]:
    colors, bgs = list(COLORS), list(BACKGROUNDS)
    sizes = ("medium", "large", "small", "medium")
    items = []
    for j in range(6):                      # every colour with every shape and six of the eight motions
        for c, color in enumerate(colors):
            shape, motion = SHAPES[(c + j) % 3], MOTIONS[(c + 3 * j) % 8]
            size = sizes[(c + j) % 4]
            bg = next(b for i in range(6) for b in [bgs[(c + j + i) % 6]] if visible_on(color, b))
            sc = Scene(bg, (typical_object(shape, color, size, motion),))
            if is_held_out(sc) or len(items) >= 40:
                continue
            prompt = f"a {size} {color} {shape} {_MOTION_TEXT[motion]} on a {bg} background"
            items.append(ProbeItem(prompt, sc, 100 + len(items)))
    rels = ("left of", "right of", "above", "below")
    for j in range(8):
        c1 = colors[(j * 3) % 8]
        bg = next(b for i in range(6) for b in [bgs[(j + i) % 6]] if visible_on(c1, b))
        c2 = next(c for i in range(1, 8) for c in [colors[(j * 3 + i * 5) % 8]] if c != c1 and visible_on(c, bg))
        a, b = (SHAPES[j % 3], c1, "small"), (SHAPES[(j + 1) % 3], c2, "small")
        sc = pair_scene(bg, a, rels[j % 4], b)
        if is_held_out(sc):
            continue
        prompt = f"a {c1} {a[0]} {_REL_TEXT[rels[j % 4]]} a {c2} {b[0]} on a {bg} background"
        items.append(ProbeItem(prompt, sc, 200 + j))
    return items


def _held_items() -> list[ProbeItem]:
    """The evaluation's held-out prompts; each scene is what the prompt expansion reads from it (sizes included)."""
    from .captions import scene_from_prompt
    from .eval import PAIRS, SINGLE
    items = [ProbeItem(p[0], scene_from_prompt(p[0]), 300 + i) for i, p in enumerate(SINGLE[:16])]
    items += [ProbeItem(p[0], scene_from_prompt(p[0]), 400 + i) for i, p in enumerate(PAIRS[:4])]
    return items


SEEN = _seen_items()
HELD = _held_items()


def reseeded(items: Sequence[ProbeItem], k: int) -> list[ProbeItem]:
    """The same prompts with another noise: seed + 1000 k (k = 0: the items themselves)."""
    return [replace(it, seed=it.seed + 1000 * k) for it in items]


# ----------------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------------

def asked_object(tracks: list, color: str):
    """The track the verdicts judge: the one of the asked colour, else the dominant one (None when nothing is drawn)."""
    return next((t for t in tracks if t.color == color), tracks[0] if tracks else None)


def score(frames, scene: Scene) -> dict:
    """Verdicts for one generated clip (uint8 [T, H, W, 3] or float 0..1) against the scene it was asked for.
    Metrics that do not apply (motion of a still image, relation of a single object) are None."""
    a = analyse(frames)
    n = np.asarray(frames).shape[0]
    tracks = {t.color: t for t in a["tracks"]}
    main = a["tracks"][0] if a["tracks"] else None
    want = scene.main
    t = tracks.get(want.color)
    obj = asked_object(a["tracks"], want.color)
    res = {"drawn": main is not None, "background": a["background"] == scene.background}
    if scene.kind == "pair":
        t2 = tracks.get(scene.objects[1].color)
        res["color"] = t is not None and t2 is not None
        res["relation"] = bool(res["color"] and relation_of(t, t2) == scene.relation)
    else:
        res["color"] = main is not None and main.color == want.color
        res["relation"] = None
    res["shape"] = obj is not None and obj.shape() == want.shape
    if scene.kind in ("single", "pair"):
        res["count"] = object_count(frames, a["bg_rgb"]) == len(scene.objects) and \
            background_flatness(frames, a["bg_rgb"]) < 12.0
    else:
        res["count"] = None
    if n > 1 and scene.kind == "single":
        res["motion"] = obj is not None and motion_of(obj, n) == want.motion
    else:
        res["motion"] = None
    res["all"] = all(v for k, v in res.items() if v is not None)
    return res


def summarize(scores: Sequence[dict]) -> dict:
    """Rates of every metric over the items it applies to."""
    out = {}
    for m in METRICS:
        vals = [s[m] for s in scores if s.get(m) is not None]
        if vals:
            out[m] = float(np.mean(vals))
    out["n"] = len(scores)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def generate_items(dit, vae, text_encoder, items: Sequence[ProbeItem], frames: int = 17, size=(64, 64),
                   steps: int = 20, cfg: float = 5.0, shift: float = 3.0, batch: int = 16,
                   expand: bool = True) -> list[np.ndarray]:
    """uint8 clips [T, H, W, 3], one per item, with the pipeline's sampler and noise convention."""
    from ..model.pipeline import noise_for
    from ..model.sampling import sample
    module = isinstance(dit, torch.nn.Module)                       # or an ExpertPair (two experts, one sampler)
    was_training = module and dit.training
    if module:
        dit.eval()
    dev = next(dit.parameters()).device if module else dit.device
    w, h = size
    sf, tf = vae.spatial_factor, vae.temporal_factor
    shape = (1, vae.cfg.z_dim, (frames - 1) // tf + 1, h // sf, w // sf)
    null, null_len = text_encoder.encode([""])
    out = []
    for b0 in range(0, len(items), batch):
        chunk = items[b0:b0 + batch]
        prompts = [expand_prompt(it.prompt) if expand else it.prompt for it in chunk]
        ctx, lens = text_encoder.encode(prompts)
        noise = torch.cat([noise_for(shape, it.seed) for it in chunk])
        B = len(chunk)
        lat = sample(dit, noise.to(dev), ctx.to(dev), null.expand(B, -1, -1).to(dev), text_lengths=lens.to(dev),
                     text_null_lengths=null_len.expand(B).to(dev), steps=steps, shift=shift, cfg=cfg)
        vid = vae.decode(lat.to(vae.device).float())                      # [B, 3, T, H, W] in [-1, 1]
        arr = ((vid.permute(0, 2, 3, 4, 1).clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).cpu().numpy()
        out.extend(list(arr))
    if module:
        dit.train(was_training)
    return out


def drawn_shapes(clips: Sequence[np.ndarray], items: Sequence[ProbeItem]) -> dict:
    """Which shape the analysis reads where each single-object item asked for one: {asked: {drawn: count}} ("none"
    where no object is found, "unknown" where it is too small to tell). The shape rate says how often the shape is
    right; this table says what is drawn instead (a model that draws every object as a round blob fills the ball
    column)."""
    return _drawn(clips, items, "shape", lambda obj, n: obj.shape())


def drawn_motions(clips: Sequence[np.ndarray], items: Sequence[ProbeItem]) -> dict:
    """Which motion the analysis reads where each single-object clip asked for one: {asked: {drawn: count}} ("none"
    where the asked colour's object is not found, "unknown" where it is seen in too few frames). The motion rate
    pools every motion; this table says which ones are followed and what is drawn instead (a model that ignores
    the word keeps objects still or moves them the way their start position suggests). Single frames are skipped."""
    return _drawn(clips, items, "motion", motion_of, min_frames=2)


def _drawn(clips, items, field: str, read, min_frames: int = 1) -> dict:
    """{asked ``field`` of the main object: {what ``read(object, frames)`` gives, or "none": count}} over the
    single-object items whose clips have at least ``min_frames`` frames."""
    table: dict = {}
    for clip, it in zip(clips, items):
        if it.scene.kind != "single" or clip.shape[0] < min_frames:
            continue
        obj = asked_object(analyse(clip)["tracks"], it.scene.main.color)
        got = read(obj, clip.shape[0]) if obj is not None else "none"
        row = table.setdefault(getattr(it.scene.main, field), {})
        row[got] = row.get(got, 0) + 1
    return table


def shape_rate(drawn: dict) -> tuple:
    """(drawn in the asked shape, asked) over a ``drawn_shapes`` table."""
    return sum(row.get(a, 0) for a, row in drawn.items()), sum(sum(row.values()) for row in drawn.values())


def merge_tables(*tables: dict) -> dict:
    """The cell-by-cell sum of ``drawn_shapes`` (or ``drawn_motions``) tables."""
    out: dict = {}
    for t in tables:
        for asked, row in t.items():
            mine = out.setdefault(asked, {})
            for got, n in row.items():
                mine[got] = mine.get(got, 0) + n
    return out


def run_probe(dit, vae, text_encoder, frames: int = 17, sets: Optional[dict] = None, **kw) -> tuple[dict, dict]:
    """-> ({set name: summary}, {set name: list of clips}) for the SEEN and HELD sets (or ``sets``)."""
    sets = sets or {"seen": SEEN, "held": HELD}
    summaries, clips = {}, {}
    for name, items in sets.items():
        vids = generate_items(dit, vae, text_encoder, items, frames=frames, **kw)
        summaries[name] = summarize([score(v, it.scene) for v, it in zip(vids, items)])
        clips[name] = vids
    return summaries, clips


def probe_sheet(clips: Sequence[np.ndarray], path: Path, cols: int = 8, scale: int = 2):
    """A grid of the probe's samples (first, middle and last frame side by side for clips), for people to look
    at: the scores can hide broken pictures."""
    from PIL import Image
    tiles = []
    for v in clips:
        idx = [0] if v.shape[0] == 1 else [0, v.shape[0] // 2, v.shape[0] - 1]
        tiles.append(np.concatenate([v[i] for i in idx], axis=1))
    th, tw = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (th + 4), cols * (tw + 4), 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (th + 4):r * (th + 4) + t.shape[0], c * (tw + 4):c * (tw + 4) + t.shape[1]] = t
    im = Image.fromarray(sheet)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    im.save(tmp)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------------------------------
# Does the model read the motion word? (a loss-level check, seconds instead of a generation probe)
# ----------------------------------------------------------------------------------------------------------------------

OPPOSITE_DIRECTION = {m: OPPOSITE_MOTION[m] for m in DIRECTIONS}


FRAME_WORDS = ("shape", "colour", "relation")


def frame_word_gap(dit, vae, text_encoder, word: str, frames: int = 32, sigmas: Sequence[float] = (0.5, 0.85, 0.99),
                   seed: int = 11) -> dict:
    """How much worse the DiT fits single toy-world frames of one object when their caption names another shape
    (``word="shape"``) or another colour that stands out from the background (``"colour"``), or frames of two
    objects when it names the inverse relation (``"relation"``: "left of" for "right of", the objects where they
    are), everything else equal (same frames, noise and wording): per noise level sigma, 100 x (loss with the other
    word / loss with the true one - 1) in percent. A model that ignores the word scores 0, whatever its pictures
    look like; a frame shows shape, colour and where objects are, so a model that reads the word scores above 0 at
    every level. -> {sigma: gap}."""
    from .captions import detailed_caption
    from .world import alternatives, render, sample_scene
    if word not in FRAME_WORDS:
        raise ValueError(f"word={word!r}: allowed {', '.join(FRAME_WORDS)}")
    rng = np.random.default_rng(seed)
    scenes, others = [], []
    while len(scenes) < frames:
        s = sample_scene(rng, "pair" if word == "relation" else "single", True)
        alts = alternatives(s, word)
        if alts:
            scenes.append(s)
            others.append(alts[int(rng.integers(len(alts)))])
    x = torch.from_numpy(np.stack([render(s, 1, 64, 64).frames for s in scenes])).permute(0, 4, 1, 2, 3)
    x = x.float().div(127.5).sub(1)
    dev = next(dit.parameters()).device
    was_training = dit.training
    dit.eval()
    out: dict = {}
    with torch.no_grad():
        x0 = vae.encode(x.to(vae.device)).float().to(dev)
        texts = [tuple(t.to(dev) for t in text_encoder.encode([detailed_caption(s) for s in group]))
                 for group in (scenes, others)]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
        for sig in sigmas:
            xs = (1 - sig) * x0 + sig * noise
            t = torch.full((x0.shape[0], x0.shape[2]), float(sig) * 1000.0, device=dev)
            losses = [float(((dit(xs, t, ctx, lens).float() - (noise - x0)) ** 2).mean()) for ctx, lens in texts]
            out[float(sig)] = 100.0 * (losses[1] / max(losses[0], 1e-12) - 1.0)
    dit.train(was_training)
    return out


def motion_word_gap(dit, vae, text_encoder, clips: int = 48, sigmas: Sequence[float] = (0.85, 0.95, 0.99),
                    seed: int = 5, free_start: bool = True, motions: Sequence[str] = tuple(OPPOSITE_DIRECTION)) -> dict:
    """How much worse the DiT fits toy-world clips of one moving object when their caption names the opposite
    direction (right <-> left, up <-> down), everything else equal: same clips, noise and wording. Per noise level
    sigma and for text-to-video (every latent frame noised) and image-to-video (latent frame 0 known, the loss on the
    rest), the gap is 100 x (loss with the opposite caption / loss with the true caption - 1) in percent. A model
    that ignores the direction word scores 0 at every level, whatever its pictures look like; where the first frame
    is known and little noise is left to read the motion from, a model that follows the word scores far above 0.
    ``free_start`` (default): the clips' movers start anywhere along their axis (``world.sample_object``); with the
    default world's edge starts the first frame tells the direction, and a model that reads the position instead
    of the word scores near 0 there too. ``motions``: the asked motions of the clips (default the four directions;
    e.g. ("grows", "shrinks") asks whether the size words are read), each captioned against its opposite.
    -> {"t2v": {sigma: gap}, "i2v": {sigma: gap}}."""
    bad = [m for m in motions if m not in OPPOSITE_MOTION]
    if not motions or bad:
        raise ValueError(f"motions={list(motions)!r}: allowed any of {', '.join(OPPOSITE_MOTION)}")
    from .captions import detailed_caption
    from .world import render, sample_scene
    rng = np.random.default_rng(seed)
    scenes, opposites = [], []
    while len(scenes) < clips:
        s = sample_scene(rng, "single", True, free_start=free_start)
        if s.main.motion in motions and not is_held_out(o := with_opposite_motion(s)):
            scenes.append(s)
            opposites.append(o)
    frames = np.stack([render(s, 17, 64, 64).frames for s in scenes])
    x = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
    dev = next(dit.parameters()).device
    was_training = dit.training
    dit.eval()
    out: dict = {"t2v": {}, "i2v": {}}
    with torch.no_grad():
        x0 = vae.encode(x.to(vae.device)).float().to(dev)
        true = [detailed_caption(s) for s in scenes]
        other = [detailed_caption(o) for o in opposites]
        texts = [tuple(t.to(dev) for t in text_encoder.encode(c)) for c in (true, other)]
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(dev)
        B, Fp = x0.shape[0], x0.shape[2]
        for mode in ("t2v", "i2v"):
            for sig in sigmas:
                xs = (1 - sig) * x0 + sig * noise
                t = torch.full((B, Fp), float(sig) * 1000.0, device=dev)
                first = 1 if mode == "i2v" else 0
                if first:
                    xs[:, :, 0], t[:, 0] = x0[:, :, 0], 0.0
                losses = []
                for ctx, lens in texts:
                    v = dit(xs, t, ctx, lens).float()
                    losses.append(float(((v - (noise - x0)) ** 2)[:, :, first:].mean()))
                out[mode][float(sig)] = 100.0 * (losses[1] / max(losses[0], 1e-12) - 1.0)
    dit.train(was_training)
    return out
