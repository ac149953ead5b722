"""A procedural toy world: coloured shapes moving on plain backgrounds, rendered with anti-aliased edges, with an
exact scene graph (so captions and evaluations know the ground truth).

    scene = sample_scene(rng)                      # a Scene (scene graph)
    clip = render(scene, frames=17, width=64, height=64)   # Clip: uint8 frames [T, H, W, 3] + per-frame truth

Units: positions are fractions of the frame (x right, y down), sizes are fractions of the short side, speeds are
fractions of the frame per frame, so one scene renders consistently at any size, aspect ratio and duration.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

SHAPES = ("ball", "box", "triangle")
COLORS = {
    "red": (220, 40, 40), "green": (40, 175, 60), "blue": (45, 85, 225), "yellow": (240, 220, 40),
    "orange": (250, 140, 30), "purple": (145, 60, 195), "white": (245, 245, 245), "cyan": (40, 215, 225),
}
BACKGROUNDS = {
    "black": (12, 12, 12), "white": (238, 238, 238), "gray": (128, 128, 128), "navy": (22, 32, 85),
    "sky blue": (135, 190, 235), "beige": (226, 211, 176),
}
SIZES = {"small": 0.16, "medium": 0.24, "large": 0.34}
DIRECTIONS = ("moves left", "moves right", "moves up", "moves down")     # the motions across the frame
CHANGES = ("bounces", "grows", "shrinks")                               # the motions in place
MOTIONS = DIRECTIONS + ("stays still",) + CHANGES
# each motion's opposite: what a caption with the wrong motion word says (the motion word gap, the contrast hinge)
OPPOSITE_MOTION = {"moves right": "moves left", "moves left": "moves right", "moves up": "moves down",
                   "moves down": "moves up", "grows": "shrinks", "shrinks": "grows", "bounces": "stays still",
                   "stays still": "bounces"}
RELATIONS = ("left of", "right of", "above", "below")
# each relation's inverse: what a caption that reads the two objects the wrong way round says (the relation hinge)
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PANS = ("pan left", "pan right")
PILLAR_COLOR = (92, 64, 44)          # a brown pillar, distinct from every object colour
POST_SHADE = 0.72                     # landmarks of panning scenes: the background colour darkened (or lightened)

# Combinations never shown in training (the evaluation asks for them to test compositional generalisation).
HELD_OUT_SHAPE_COLOR = {("triangle", "purple"), ("box", "cyan"), ("ball", "orange")}
HELD_OUT_COLOR_MOTION = {("yellow", "moves up"), ("green", "moves left"), ("white", "bounces")}

BASE_SPEED = 0.018                    # frame fractions per frame for left/right/up/down motion
GROWTH = 0.022                        # log-size change per frame for grows/shrinks
PAN_SPEED = 0.02


def color_distance(a, b) -> float:
    return float(np.linalg.norm(np.array(a, float) - np.array(b, float)))


def visible_on(color: str, background: str) -> bool:
    """Objects must stand out from the background (no white ball on white, no cyan on sky blue)."""
    return color_distance(COLORS[color], BACKGROUNDS[background]) > 110


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    motion: str
    x: float                 # start position, fraction of width
    y: float                 # start position, fraction of height
    speed: float = 1.0       # multiplier of the base speed


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple
    relation: Optional[str] = None          # objects[0] <relation> objects[1]
    occluder: bool = False                  # a pillar in the middle that the object passes behind
    pan: Optional[str] = None               # camera pan left / right
    kind: str = "single"                    # single | pair | occlusion | pan

    @property
    def main(self) -> Obj:
        return self.objects[0]


@dataclass
class Clip:
    frames: np.ndarray                       # uint8 [T, H, W, 3]
    centers: np.ndarray                      # [T, n_objects, 2] pixel centroids (x, y) of each object (even hidden)
    radii: np.ndarray                        # [T, n_objects] pixel half-size
    visible: np.ndarray                      # [T, n_objects] fraction of the object not hidden by the pillar
    scene: Scene
    pillar: Optional[tuple] = None           # (x0, x1) pixel columns of the pillar
    coverage: Optional[np.ndarray] = None    # float32 [T, H, W]: how much of each pixel the objects cover (0..1)


# ----------------------------------------------------------------------------------------------------------------------
# Scene sampling
# ----------------------------------------------------------------------------------------------------------------------

def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _colors_for(rng, background, exclude=()):
    options = [c for c in COLORS if visible_on(c, background) and c not in exclude]
    return _pick(rng, options)


def sample_object(rng, background, motion=None, exclude_colors=(), shape=None, size=None, color=None,
                  free_start: bool = False) -> Obj:
    """A random object. Left / right / up / down movers start near the edge they move away from, so that a long
    clip keeps them in view; with ``free_start`` they start anywhere from 0.2 to 0.8 along their axis, whatever
    their direction, and may leave the frame: the first frame then does not tell the direction, only the caption
    does (image-to-video and extension training data that teaches the direction word)."""
    motion = motion or _pick(rng, MOTIONS)
    color = color or _colors_for(rng, background, exclude_colors)
    shape = shape or _pick(rng, SHAPES)
    size = size or _pick(rng, tuple(SIZES))
    x, y = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))
    if free_start and motion in DIRECTIONS:
        start = float(rng.uniform(0.2, 0.8))
        x, y = (start, y) if motion in ("moves left", "moves right") else (x, start)
    # start so that the motion keeps the object in view for a long clip
    elif motion == "moves right":
        x = float(rng.uniform(0.18, 0.32))
    elif motion == "moves left":
        x = float(rng.uniform(0.68, 0.82))
    elif motion == "moves down":
        y = float(rng.uniform(0.18, 0.32))
    elif motion == "moves up":
        y = float(rng.uniform(0.68, 0.82))
    elif motion == "bounces":
        y = float(rng.uniform(0.2, 0.4))
    return Obj(shape, color, size, motion, x, y, float(rng.uniform(0.85, 1.15)))


def with_main(scene: Scene, **changes) -> Scene:
    """The same scene with fields of its main object changed (``Obj`` fields: motion, x, y, ...)."""
    return replace(scene, objects=(replace(scene.main, **changes),) + tuple(scene.objects[1:]))


def with_opposite_motion(scene: Scene) -> Scene:
    """The same scene with its main object's motion replaced by the opposite one (``OPPOSITE_MOTION``)."""
    return with_main(scene, motion=OPPOSITE_MOTION[scene.main.motion])


def alternatives(scene: Scene, word: str) -> list:
    """The scene with one word changed, every way training may name: of its main object ``motion`` the opposite
    motion, ``shape`` each other shape, ``colour`` each other colour that stands out from the background; of a pair
    ``relation`` the inverse relation, the objects where they are (the caption then reads them the wrong way round;
    none for scenes without a relation). Held-out combinations left out (the contrasting captions of training and
    the probe's word gaps)."""
    o = scene.main
    if word == "relation":
        cands = [replace(scene, relation=INVERSE_RELATION[scene.relation])] if scene.relation in INVERSE_RELATION \
            and len(scene.objects) == 2 else []
    elif word == "motion":
        cands = [with_opposite_motion(scene)]
    elif word == "shape":
        cands = [with_main(scene, shape=x) for x in SHAPES if x != o.shape]
    elif word == "colour":
        cands = [with_main(scene, color=x) for x in COLORS if x != o.color and visible_on(x, scene.background)]
    else:
        raise ValueError(f"word={word!r}: allowed motion, shape, colour, relation")
    return [c for c in cands if not is_held_out(c)]


def is_held_out(scene: Scene) -> bool:
    return any((o.shape, o.color) in HELD_OUT_SHAPE_COLOR or (o.color, o.motion) in HELD_OUT_COLOR_MOTION
               for o in scene.objects)


def sample_scene(rng: np.random.Generator, kind: Optional[str] = None, training: bool = False,
                 free_start: bool = False) -> Scene:
    """A random scene. ``kind``: single (one moving object), pair (two objects in a spatial relation), occlusion
    (an object passes behind a pillar), pan (a still object, camera panning). ``training`` never returns the
    held-out combinations; ``free_start``: see ``sample_object``."""
    while True:
        scene = _sample_scene(rng, kind, free_start)
        if not (training and is_held_out(scene)):
            return scene


def _sample_scene(rng: np.random.Generator, kind: Optional[str] = None, free_start: bool = False) -> Scene:
    kind = kind or _pick(rng, ("single",) * 6 + ("pair",) * 2 + ("occlusion", "pan"))
    bg = _pick(rng, tuple(BACKGROUNDS))
    if kind == "single":
        return Scene(bg, (sample_object(rng, bg, free_start=free_start),), kind="single")
    if kind == "pair":
        rel = _pick(rng, RELATIONS)
        a = sample_object(rng, bg, motion="stays still", size=_pick(rng, ("small", "medium")))
        b = sample_object(rng, bg, motion="stays still", exclude_colors=(a.color,),
                          size=_pick(rng, ("small", "medium")))
        c1, c2 = float(rng.uniform(0.25, 0.33)), float(rng.uniform(0.67, 0.75))
        o1, o2 = float(rng.uniform(0.35, 0.65)), float(rng.uniform(0.35, 0.65))
        if rel == "left of":
            a, b = replace(a, x=c1, y=o1), replace(b, x=c2, y=o2)
        elif rel == "right of":
            a, b = replace(a, x=c2, y=o1), replace(b, x=c1, y=o2)
        elif rel == "above":
            a, b = replace(a, y=c1, x=o1), replace(b, y=c2, x=o2)
        else:
            a, b = replace(a, y=c2, x=o1), replace(b, y=c1, x=o2)
        return Scene(bg, (a, b), relation=rel, kind="pair")
    if kind == "occlusion":
        motion = _pick(rng, ("moves left", "moves right"))
        o = sample_object(rng, bg, motion=motion, size=_pick(rng, ("small", "medium")))
        o = replace(o, x=0.2 if motion == "moves right" else 0.8, y=float(rng.uniform(0.4, 0.6)))
        return Scene(bg, (o,), occluder=True, kind="occlusion")
    if kind == "pan":
        o = sample_object(rng, bg, motion="stays still")
        o = replace(o, x=float(rng.uniform(0.4, 0.6)))
        return Scene(bg, (o,), pan=_pick(rng, PANS), kind="pan")
    raise ValueError(f"kind={kind!r} is not a scene kind; allowed: single, pair, occlusion, pan")


# ----------------------------------------------------------------------------------------------------------------------
# Motion
# ----------------------------------------------------------------------------------------------------------------------

def trajectory(obj: Obj, frames: int, aspect: float, occlusion: bool = False, pan: Optional[str] = None):
    """Per-frame (x, y) in frame fractions and a size scale. ``aspect`` = width / height."""
    t = np.arange(frames, dtype=np.float64)
    x = np.full(frames, obj.x)
    y = np.full(frames, obj.y)
    scale = np.ones(frames)
    v = BASE_SPEED * obj.speed
    if occlusion:
        # cross from one side to the other over the clip, whatever its length
        end = 0.8 if obj.motion == "moves right" else 0.2
        x = obj.x + (end - obj.x) * t / max(1, frames - 1)
    elif obj.motion == "moves right":
        x = obj.x + v * t
    elif obj.motion == "moves left":
        x = obj.x - v * t
    elif obj.motion == "moves down":
        y = obj.y + v * t
    elif obj.motion == "moves up":
        y = obj.y - v * t
    elif obj.motion == "bounces":
        floor = 0.82
        g = 0.006 * obj.speed
        pos, vel = obj.y, 0.0
        ys = []
        for _ in range(frames):
            ys.append(pos)
            vel += g
            pos += vel
            if pos > floor:
                pos = floor - (pos - floor)
                vel = -0.88 * abs(vel)
        y = np.array(ys)
    elif obj.motion == "grows":
        scale = np.exp(GROWTH * obj.speed * t)
    elif obj.motion == "shrinks":
        scale = np.exp(-GROWTH * obj.speed * t)
    if pan is not None:
        # the camera moves one way, the world (and the object with it) drifts the other way in the image
        shift = PAN_SPEED * t * (1 if pan == "pan left" else -1)
        x = x + shift
    return x, y, scale


# ----------------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------------

def _coverage(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance (pixels) for a shape of half-size r at (cx, cy)."""
    dx, dy = px - cx, py - cy
    if shape == "ball":
        d = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "box":
        qx, qy = np.abs(dx) - r * 0.9, np.abs(dy) - r * 0.9
        d = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0)
    elif shape == "triangle":
        # equilateral, pointing up, centroid at (cx, cy), circumradius 1.2 r: max over the three edge half-planes
        h = 0.6 * r                                  # inradius
        d = np.maximum(dy, np.maximum(0.8660254 * dx - 0.5 * dy, -0.8660254 * dx - 0.5 * dy)) - h
    else:
        raise ValueError(f"shape={shape!r} is not a toy-world shape; allowed: {', '.join(SHAPES)}")
    return np.clip(0.5 - d, 0.0, 1.0)


def render(scene: Scene, frames: int = 17, width: int = 64, height: int = 64) -> Clip:
    short = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    xx += 0.5
    yy += 0.5
    bg = np.array(BACKGROUNDS[scene.background], np.float64)
    n = len(scene.objects)
    out = np.empty((frames, height, width, 3), np.uint8)
    cover = np.zeros((frames, height, width), np.float32)
    centers = np.zeros((frames, n, 2))
    radii = np.zeros((frames, n))
    visible = np.ones((frames, n))
    paths = [trajectory(o, frames, width / height, scene.occluder, scene.pan) for o in scene.objects]
    pillar = None
    if scene.occluder:
        pw = max(4, int(round(0.12 * width)))
        x0 = (width - pw) // 2
        pillar = (x0, x0 + pw)
    post_color = bg * POST_SHADE if bg.mean() > 60 else np.minimum(255, bg + 70)
    for f in range(frames):
        img = np.broadcast_to(bg, (height, width, 3)).copy()
        if scene.pan is not None:
            # landmarks: thin posts standing on the floor, fixed in the world, drifting with the pan
            shift = PAN_SPEED * f * (1 if scene.pan == "pan left" else -1) * width
            spacing = 0.25 * width
            for k in range(-2, 7):
                px = k * spacing + shift % spacing
                a = np.clip(1.5 - np.abs(xx - px) / 1.0, 0, 1) * (yy > 0.55 * height)
                img = img * (1 - a[..., None]) + post_color * a[..., None]
        for i, (o, (xs, ys, sc)) in enumerate(zip(scene.objects, paths)):
            cx, cy = xs[f] * width, ys[f] * height
            r = 0.5 * SIZES[o.size] * short * sc[f]
            a = _coverage(o.shape, xx, yy, cx, cy, r)
            img = img * (1 - a[..., None]) + np.array(COLORS[o.color], np.float64) * a[..., None]
            cover[f] = np.maximum(cover[f], a)
            centers[f, i] = (cx, cy)
            radii[f, i] = r
            if pillar is not None:
                total = a.sum()
                hidden = a[:, pillar[0]:pillar[1]].sum()
                visible[f, i] = 1.0 - hidden / max(total, 1e-6)
        if pillar is not None:
            img[:, pillar[0]:pillar[1]] = PILLAR_COLOR
            cover[f, :, pillar[0]:pillar[1]] = 0.0
        out[f] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return Clip(out, centers, radii, visible, scene, pillar, cover)


def random_clip(seed: int, frames: int = 17, width: int = 64, height: int = 64, kind: Optional[str] = None,
                training: bool = True, free_start: bool = False) -> Clip:
    """Deterministic per seed (``free_start``: see ``sample_object``)."""
    rng = np.random.default_rng(seed)
    return render(sample_scene(rng, kind, training, free_start), frames, width, height)
