"""Captions from the scene graph, in a short form and a detailed form, and prompt expansion.

The detailed form is the "recaption" the model trains on (the recaptioning idea of DALL-E 3 / Sora, in miniature):
every attribute spelled out in a fixed order. ``expand_prompt`` turns a short user prompt into that style by parsing
it back into a scene description, so what users type lands where the model was trained.
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from .world import BACKGROUNDS, COLORS, MOTIONS, RELATIONS, SHAPES, SIZES, Obj, Scene, visible_on

SHAPE_WORDS = {
    "ball": ("ball", "circle", "sphere", "disc", "dot", "orb"),
    "box": ("box", "square", "cube", "block"),
    "triangle": ("triangle", "pyramid", "wedge"),
}
SIZE_WORDS = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium", "medium-sized", "mid-sized", "average-sized"),
    "large": ("large", "big", "huge"),
}
COLOR_WORDS = {c: (c,) for c in COLORS}
COLOR_WORDS["gray"] = ("gray",)
COLOR_WORDS["purple"] = ("purple", "violet")
COLOR_WORDS["cyan"] = ("cyan", "turquoise", "aqua")
BACKGROUND_WORDS = {
    "black": ("black",), "white": ("white",), "gray": ("gray", "grey"), "navy": ("navy", "dark blue"),
    "sky blue": ("sky blue", "light blue", "sky-blue"), "beige": ("beige", "tan", "cream"),
}
MOTION_SHORT = {
    "moves left": ("moves left", "moving left", "slides to the left", "goes left", "travels leftward",
                   "drifting left"),
    "moves right": ("moves right", "moving right", "slides to the right", "goes right", "travels rightward",
                    "drifting right"),
    "moves up": ("moves up", "moving up", "rises", "floats upward", "goes up", "rising"),
    "moves down": ("moves down", "moving down", "sinks", "drops downward", "goes down", "falling slowly"),
    "stays still": ("stays still", "sitting still", "resting", "not moving", "motionless", "stationary"),
    "bounces": ("bounces", "bouncing", "hops on the floor", "bouncing on the ground"),
    "grows": ("grows", "growing", "gets bigger", "expands", "growing larger"),
    "shrinks": ("shrinks", "shrinking", "gets smaller", "contracts", "shrinking away"),
}
MOTION_DETAILED = {
    "moves left": "moves steadily to the left", "moves right": "moves steadily to the right",
    "moves up": "moves steadily upward", "moves down": "moves steadily downward",
    "stays still": "stays still in place", "bounces": "bounces up and down on the floor",
    "grows": "grows larger and larger", "shrinks": "shrinks smaller and smaller",
}
RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
PAN_WORDS = {"pan left": ("pans to the left", "pans left", "panning left"),
             "pan right": ("pans to the right", "pans right", "panning right")}


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun(o: Obj, rng=None, canonical=True) -> str:
    words = [SIZE_WORDS[o.size][0], COLOR_WORDS[o.color][0], SHAPE_WORDS[o.shape][0]]
    if not canonical and rng is not None:
        words = [_pick(rng, SIZE_WORDS[o.size]), _pick(rng, COLOR_WORDS[o.color]), _pick(rng, SHAPE_WORDS[o.shape])]
    return " ".join(words)


def detailed_caption(scene: Scene, rng: Optional[np.random.Generator] = None) -> str:
    """The canonical long description (rng adds light synonym variation)."""
    canonical = rng is None or rng.random() < 0.7
    o = scene.main
    bg = f"on a plain {BACKGROUND_WORDS[scene.background][0]} background"
    if scene.kind == "pair":
        b = scene.objects[1]
        return (f"{_a(_noun(o, rng, canonical)).capitalize()} is {RELATION_WORDS[scene.relation][0]} "
                f"{_a(_noun(b, rng, canonical))} {bg}. Both objects stay still. The camera is static.")
    if scene.kind == "occlusion":
        side = "right" if o.motion == "moves right" else "left"
        return (f"{_a(_noun(o, rng, canonical)).capitalize()} moves to the {side} and passes behind a brown "
                f"pillar, then comes out on the other side, {bg}. The camera is static.")
    if scene.kind == "pan":
        return (f"{_a(_noun(o, rng, canonical)).capitalize()} stays still {bg} with thin posts. "
                f"The camera {PAN_WORDS[scene.pan][0]}.")
    return f"{_a(_noun(o, rng, canonical)).capitalize()} {MOTION_DETAILED[o.motion]} {bg}. The camera is static."


def short_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A terse, varied description a user might type."""
    o = scene.main
    color, shape = _pick(rng, COLOR_WORDS[o.color]), _pick(rng, SHAPE_WORDS[o.shape])
    size = _pick(rng, SIZE_WORDS[o.size]) + " " if rng.random() < 0.5 else ""
    bg = f" on {_pick(rng, BACKGROUND_WORDS[scene.background])}" if rng.random() < 0.5 else ""
    if scene.kind == "pair":
        b = scene.objects[1]
        return (f"{_a(size + color + ' ' + shape)} {_pick(rng, RELATION_WORDS[scene.relation])} "
                f"{_a(_pick(rng, COLOR_WORDS[b.color]) + ' ' + _pick(rng, SHAPE_WORDS[b.shape]))}{bg}")
    if scene.kind == "occlusion":
        side = "right" if o.motion == "moves right" else "left"
        return f"{_a(size + color + ' ' + shape)} moving {side} behind a pillar{bg}"
    if scene.kind == "pan":
        return f"{_a(size + color + ' ' + shape)}{bg}, camera {_pick(rng, PAN_WORDS[scene.pan])}"
    return f"{_a(size + color + ' ' + shape)} {_pick(rng, MOTION_SHORT[o.motion])}{bg}"


def training_caption(scene: Scene, rng: np.random.Generator, p_short: float = 0.25) -> str:
    return short_caption(scene, rng) if rng.random() < p_short else detailed_caption(scene, rng)


# ----------------------------------------------------------------------------------------------------------------------
# Parsing a prompt back into a scene description, and expansion
# ----------------------------------------------------------------------------------------------------------------------

def _find_all(text: str, table: dict) -> list[tuple[int, str]]:
    """(position, canonical) for every synonym of every entry found as whole words, longest phrases first."""
    hits, taken = [], []
    pairs = sorted(((w, k) for k, ws in table.items() for w in ws), key=lambda p: -len(p[0]))
    for word, key in pairs:
        for m in re.finditer(r"(?<![a-z])" + re.escape(word) + r"(?![a-z])", text):
            span = range(m.start(), m.end())
            if any(s in t for t in taken for s in (span.start, span.stop - 1)):
                continue
            taken.append(span)
            hits.append((m.start(), key))
    return sorted(hits)


def parse_prompt(prompt: str) -> dict:
    """Extract toy-world attributes from free text: objects (shape, colour, size), motion, background, relation,
    occlusion, pan. Unknown attributes are missing from the result."""
    text = " " + prompt.lower().replace("grey", "gray") + " "
    out: dict = {}
    bg_hits = []
    alts = "|".join(sorted((re.escape(w) for ws in BACKGROUND_WORDS.values() for w in ws), key=len, reverse=True))
    patterns = (rf"(?<![a-z])({alts})\s+(?:background|backdrop|wall|screen)",
                rf"(?:\bon|\bagainst|\bin front of)\s+(?:a\s+|an\s+|the\s+)?(?:plain\s+|solid\s+)?({alts})"
                rf"(?=\s*(?:$|[.,;]|\bwith\b|\bbackground\b|\bbackdrop\b))")
    for pat in patterns:
        for m in re.finditer(pat, text):
            key = next(k for k, ws in BACKGROUND_WORDS.items() if m.group(1) in ws)
            bg_hits.append((m.start(1), m.end(1), key))
    bg_hits.sort()
    if bg_hits:
        out["background"] = bg_hits[0][2]
    bg_spans = [(s, e) for s, e, _ in bg_hits]

    def outside_bg(pos):
        return not any(s <= pos < e for s, e in bg_spans)

    shapes = [(p, k) for p, k in _find_all(text, SHAPE_WORDS)]
    colors = [(p, k) for p, k in _find_all(text, COLOR_WORDS) if outside_bg(p)]
    sizes = [(p, k) for p, k in _find_all(text, SIZE_WORDS)]
    objects = []
    prev = -1
    for pos, shape in shapes[:2]:
        color = next((k for p, k in reversed(colors) if prev < p < pos), None)
        size = next((k for p, k in reversed(sizes) if prev < p < pos), None)
        objects.append({"shape": shape, "color": color, "size": size})
        prev = pos
    if not objects and colors:
        objects.append({"shape": None, "color": colors[0][1], "size": sizes[0][1] if sizes else None})
    out["objects"] = objects
    motions = _find_all(text, MOTION_SHORT)
    more = {"moves left": ("left",), "moves right": ("right",), "moves up": ("upward", "upwards"),
            "moves down": ("downward", "downwards")}
    rel = _find_all(text, RELATION_WORDS)
    if rel and len(objects) >= 2:
        out["relation"] = rel[0][1]
    if re.search(r"behind|pillar|occlu|hidden|hides", text):
        out["occlusion"] = True
    pan = _find_all(text, PAN_WORDS)
    if pan or re.search(r"\bpan", text):
        out["pan"] = pan[0][1] if pan else ("pan left" if "left" in text else "pan right")
    if motions:
        out["motion"] = motions[0][1]
    elif "relation" not in out and "pan" not in out:
        found = _find_all(text, more)
        if found:
            out["motion"] = found[0][1]
    return out


def scene_from_prompt(prompt: str, rng: Optional[np.random.Generator] = None) -> Optional[Scene]:
    """The scene a prompt describes, with defaults for what it leaves open (None if it names nothing we know)."""
    p = parse_prompt(prompt)
    if not p.get("objects"):
        return None
    bg = p.get("background", "black")
    objs = []
    for i, o in enumerate(p["objects"][:2]):
        color = o["color"] or ("red" if i == 0 else "blue")
        if not visible_on(color, bg):
            bg = "gray" if visible_on(color, "gray") else "black"
        objs.append(Obj(o["shape"] or "ball", color, o["size"] or ("medium" if len(p["objects"]) == 1 else "small"),
                        "stays still", 0.5, 0.5))
    if "relation" in p and len(objs) == 2:
        return Scene(bg, tuple(objs), relation=p["relation"], kind="pair")
    main = objs[0]
    if p.get("occlusion"):
        motion = p.get("motion") if p.get("motion") in ("moves left", "moves right") else "moves right"
        return Scene(bg, (Obj(main.shape, main.color, main.size if main.size != "large" else "medium", motion,
                              0.2, 0.5),), occluder=True, kind="occlusion")
    if "pan" in p:
        return Scene(bg, (main,), pan=p["pan"], kind="pan")
    return Scene(bg, (Obj(main.shape, main.color, main.size, p.get("motion", "stays still"), 0.5, 0.5),),
                 kind="single")


def expand_prompt(prompt: str) -> str:
    """Short user prompt -> the detailed caption style the model was trained on. Prompts that name nothing of the
    toy world are returned unchanged."""
    scene = scene_from_prompt(prompt)
    return detailed_caption(scene) if scene is not None else prompt.strip()
