"""Captions from the scene graph, in a short form and a detailed form, and prompt expansion.

The detailed form is the "recaption" the model trains on (the recaptioning idea of DALL-E 3 / Sora, in miniature):
every attribute spelled out in a fixed order. ``expand_prompt`` turns a free-form user prompt into that style: it
parses the prompt into a scene graph (``parse_prompt``), fills what the prompt leaves open with the world's defaults
(``complete_graph``) and writes the training template's exact text when a template states the whole graph, so what
users type lands where the model was trained. What no template states (two moving objects, a position in the frame,
a pan with a moving object, a pillar with vertical motion, colours outside the palette) is written in the same words,
never dropped. ``prompt_set.json`` holds free-form prompts labelled with their graphs (dev and held-out splits).
"""
from __future__ import annotations

import bisect
import re
from typing import Optional

import numpy as np

from .world import BACKGROUNDS, COLORS, INVERSE_RELATION, Obj, Scene, color_distance

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
    g = complete_graph(scene_graph(scene))
    if _template_kind(g) != scene.kind:
        return _free_caption(g)
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


def placed_caption(scene: Scene, rng: Optional[np.random.Generator] = None) -> str:
    """A pair's caption that gives each object its own place in the frame ("A small red ball on the left side of the
    frame and a small blue box on the right side of the frame ...") instead of the relation between them: the same
    scene graph (``parse_prompt`` reads the relation back), with the place next to the object it belongs to."""
    if scene.kind != "pair" or scene.relation not in _REL_TO_POS or len(scene.objects) != 2:
        raise ValueError(f"scene kind={scene.kind!r}, relation={scene.relation!r}: allowed a pair of two objects in "
                         f"one of the relations {', '.join(_REL_TO_POS)}")
    canonical = rng is None or rng.random() < 0.7
    (a, b), (pa, pb) = scene.objects, _REL_TO_POS[scene.relation]
    bg = f"on a plain {BACKGROUND_WORDS[scene.background][0]} background"
    return (f"{_a(_noun(a, rng, canonical)).capitalize()} {_WHERE[pa]} and {_a(_noun(b, rng, canonical))} "
            f"{_WHERE[pb]} {bg}. Both objects stay still. The camera is static.")


def training_caption(scene: Scene, rng: np.random.Generator, p_short: float = 0.25, pair_places: float = 0.0) -> str:
    """A short or a detailed caption; with ``pair_places`` > 0 that share of the detailed captions of pairs gives
    each object its place (``placed_caption``) instead of the relation."""
    if rng.random() < p_short:
        return short_caption(scene, rng)
    if pair_places > 0 and scene.kind == "pair" and rng.random() < pair_places:
        return placed_caption(scene, rng)
    return detailed_caption(scene, rng)


# ----------------------------------------------------------------------------------------------------------------------
# Parsing a prompt into a scene graph
# ----------------------------------------------------------------------------------------------------------------------
#
# The scene graph of a prompt is a plain dict
#     {"objects": [{"shape", "color", "size", "motion", "position"}, ...], "relation", "background", "pan", "occlusion"}
# holding None for what the prompt leaves open ("occlusion" is a bool). "relation" reads objects[0] <relation>
# objects[1]; "position" (left, right, top, bottom) is where one object is in the frame. Colours outside the world's
# palette (OFF_PALETTE) are kept by name.
#
# Parsing works on words. Phrases are recognised class by class, the most specific first (camera, occluder,
# background, relations, motions, positions, then single words), each claiming its words so that later classes do not
# see them ("dark blue background" is no object colour, "to the left of" no motion). Then noun phrases are grouped
# ("a small crimson sphere"), negated phrases dropped ("not a triangle", "doesn't bounce"), and motions, positions and
# loose adjectives attached to the object named before them, or to the one after them when they open a clause
# ("on the left, a red ball").

OFF_PALETTE = {"gray": (128, 128, 128), "black": (12, 12, 12), "pink": (240, 130, 180), "brown": (120, 75, 40)}

_COLOR_LEX = {
    "red": ("red", "crimson", "scarlet", "ruby", "cherry", "vermilion"),
    "green": ("green", "emerald", "lime", "jade"),
    "blue": ("blue", "cobalt", "sapphire", "navy", "navy blue", "dark blue", "royal blue"),
    "yellow": ("yellow", "golden", "gold", "lemon", "mustard"),
    "orange": ("orange", "tangerine", "amber", "apricot"),
    "purple": ("purple", "violet", "magenta", "lilac", "lavender", "indigo", "plum", "mauve"),
    "white": ("white", "ivory", "snowy", "snow white"),
    "cyan": ("cyan", "turquoise", "aqua", "teal", "aquamarine", "light blue", "sky blue", "pale blue", "baby blue"),
    "gray": ("gray", "silver", "charcoal"), "black": ("black", "jet black"), "pink": ("pink", "rose", "hot pink"),
    "brown": ("brown", "chocolate"),
}
_BG_LEX = {"black": ("black", "dark"), "white": ("white", "light"), "gray": ("gray", "silver"),
           "navy": ("navy", "navy blue", "dark blue", "midnight blue", "blue"),
           "sky blue": ("sky blue", "light blue", "pale blue", "baby blue", "sky"),
           "beige": ("beige", "tan", "cream", "sand", "sandy", "khaki")}
_SIZE_LEX = {"small": ("small", "little", "tiny", "mini", "smallish", "wee"),
             "medium": ("medium", "medium sized", "mid sized", "midsize", "midsized", "average sized", "normal sized",
                        "regular sized"),
             "large": ("large", "big", "huge", "giant", "enormous", "massive", "largish")}
_SHAPE_LEX = {"ball": ("ball", "circle", "sphere", "disc", "disk", "dot", "orb", "bead"),
              "box": ("box", "square", "cube", "block", "crate", "rectangle"),
              "triangle": ("triangle", "pyramid", "wedge")}
_GENERIC = ("object", "thing", "shape", "item", "something", "one")
_FRAME = r"(?:frame|screen|image|picture|view|scene|canvas|shot|video|clip)"
_ADV = (r"(?:steadily|slowly|quickly|smoothly|gently|fast|rapidly|gradually|straight|constantly|continuously|along"
        rf"|away|off|back|all the way|further|farther|across(?: the {_FRAME})?)")
_DIR = {"left": "moves left", "right": "moves right", "up": "moves up", "down": "moves down", "top": "moves up",
        "bottom": "moves down", "west": "moves left", "east": "moves right", "north": "moves up", "south": "moves down"}
_DIR_TAIL = (rf"(?:(?:to|towards|toward|into) (?:the )?(?:far |very )?(?:left|right|top|bottom)(?: hand)?"
             rf"(?: side| edge| half| part| corner)?(?: of the {_FRAME})?"
             r"|(?:left|right|up|down|west|east|north|south)(?:wards?)?"
             r"|from (?:the )?(?:left|right|top|bottom)(?: side)? to (?:the )?(?:left|right|top|bottom)(?: side)?)")
_VERB_ALONG = ("move", "moves", "moving", "moved", "go", "goes", "going", "head", "heads", "heading", "slide",
               "slides", "sliding", "roll", "rolls", "rolling", "travel", "travels", "travelling", "traveling",
               "drift", "drifts", "drifting", "glide", "glides", "gliding", "fly", "flies", "flying", "run", "runs",
               "running", "shift", "shifts", "shifting", "drive", "drives", "driving", "walk", "walks", "walking",
               "crawl", "crawls", "crawling", "zoom", "zooms", "zooming", "race", "races", "racing", "speed",
               "speeds", "speeding", "float", "floats", "floating", "swim", "swims", "swimming", "sail", "sails",
               "sailing", "cross", "crosses", "crossing", "sweep", "sweeps", "sweeping", "creep", "creeps",
               "creeping", "coast", "coasts", "coasting", "scoot", "scoots", "scooting", "travelled", "traveled")
_VERB_UP = ("rise", "rises", "rising", "ascend", "ascends", "ascending", "climb", "climbs", "climbing", "soar",
            "soars", "soaring", "lift", "lifts", "lifting")
_VERB_DOWN = ("fall", "falls", "falling", "sink", "sinks", "sinking", "drop", "drops", "dropping", "descend",
              "descends", "descending", "plummet", "plummets", "plummeting", "plunge", "plunges", "plunging")
_NOT_MOVING = (r"(?:is |are )?(?:not|never) (?:moving|move|moves|moved|in motion)|(?:does|do|did|will) not move"
               r"|without moving")
_STILL = (r"stays? still(?: in place)?|staying still|remains? still|standing still|stands still|sitting still"
          r"|sits still|stays? put|staying put|stays? in place|keeps? still|holds? still|motionless|stationary"
          r"|unmoving|immobile|at rest|resting|rests|sitting|sits|still|static|idle|frozen|hovers|hovering|hover"
          r"|in place")
_BOUNCE = (rf"(?:bounces|bouncing|bounce|bounced|hops|hopping|hop|jumps|jumping|jump|bobs|bobbing|bob)(?: {_ADV})*"
           r"(?: up and down)?(?: (?:on|off|along) (?:the )?(?:floor|ground|bottom))?|up and down")
_BIGGER, _SMALLER = r"(?:bigger|larger)(?: and (?:bigger|larger))?", r"smaller(?: and smaller)?"
_BECOME = r"(?:gets|getting|get|becomes|becoming|become|keeps getting|keep getting|growing|grows)"
_GROW = (rf"{_BECOME} {_BIGGER}|(?:grows|growing|grow|expands|expanding|expand|swells|swelling|swell|enlarges"
         rf"|enlarging|inflates|inflating|balloons|ballooning)(?: {_ADV})*(?: {_BIGGER}| in size)?"
         r"|(?:bigger|larger) and (?:bigger|larger)|(?:increases|increasing) in size")
_SHRINK = (rf"{_BECOME} {_SMALLER}|(?:shrinks|shrinking|shrink|contracts|contracting|contract|dwindles|dwindling"
           rf"|dwindle|deflates|deflating|deflate)(?: {_ADV})*(?: {_SMALLER}| away| in size)?"
           r"|smaller and smaller|(?:decreases|decreasing) in size")
_CAM_VERB = ("pans", "panning", "pan", "panned", "moves", "moving", "move", "tracks", "tracking", "track", "slides",
             "sliding", "sweeps", "sweeping", "swings", "swinging", "drifts", "drifting", "glides", "gliding",
             "travels", "travelling", "traveling", "turns", "turning", "trucks", "trucking", "goes", "going",
             "heads", "heading", "rotates", "rotating", "shifts", "shifting", "dollies", "dollying")
_CAM_DIR = r"(?:(?:to|towards|toward) (?:the )?)?(?:left|right|west|east)(?:wards?)?(?! of(?![a-z0-9]))"
_CAM_STATIC = (r"(?:a |the )?(?:static|still|fixed|locked|locked off|stationary|steady|unmoving|motionless|stable) "
               r"(?:camera|shot)|(?:the )?camera (?:is |stays |remains |being |held |holds )?(?:completely "
               r"|perfectly |totally )?(?:static|still|fixed|stationary|steady|locked off|locked|not moving"
               r"|motionless|unmoving|stable)|(?:the )?camera (?:does|do|did|will) not (?:move|pan)"
               r"|(?:the )?camera never (?:moves|pans)|(?:with )?no (?:camera (?:movement|motion|moves|pan|panning)"
               r"|panning|pan)|without (?:any )?(?:camera (?:movement|motion)|panning|a pan)")
_BG_PRE = r"(?:(?:on|against|over|in front of|with|before|in) (?:a |an |the )?)"
_BG_ADJ = r"(?:(?:plain|solid|flat|simple|uniform|empty|blank|pure) )?"
_BG_NOUN = r"(?:background|backdrop|backround|wall|canvas|bg)s?"
_REL_LR = rf"(?:(?:to|on|at) the |to its )?(?:left|right)(?: hand)?(?: side)? of(?! (?:the |this )?{_FRAME})"
_REL_UD = r"above|over|on top of|atop|higher than|below|under|underneath|beneath|lower than"
_BESIDE = r"next to|beside|alongside|side by side|near|close to|by the side of"
_POS = (rf"(?:on|at|in|to|towards|toward|near|along|from) the (?:far |very )?(?:left|right|top|bottom|upper|lower)"
        rf"(?: hand)?(?: side| edge| half| part| area| corner| portion)?(?: of the {_FRAME})?")
_OCC = (r"(?:(?:passes|passing|pass|goes|going|go|moves|moving|slides|sliding|disappears|disappearing|vanishes"
        r"|vanishing|hides|hiding|hidden|ducks|ducking) )?(?:behind|by|past) (?:a |the )?(?:brown |tall |thin "
        r"|wooden )?(?:pillar|column)s?|(?:a |the )?(?:brown |tall |thin |wooden )?(?:pillar|column)s?|occlu[a-z]*"
        r"|(?:then )?(?:comes|coming|come|reappears|reappearing|emerges|emerging) (?:back )?(?:out )?"
        r"(?:on |at |from |of )?(?:the )?other side|reappears|reappearing")
_NUM = r"two|2|a pair of|pair of|a couple of|couple of"
_NEG_SKIP = {"a", "an", "the", "any", "is", "are", "be", "being", "so", "very", "really", "too", "of", "at", "all",
             "even", "quite", "but"}
_ALL = {"both", "they", "each", "all", "together"}
_DEFINITE = {"the", "this", "that"}
_DETS = {"a", "an", "the", "this", "that", "another", "some"}
_ADJ_FILLER = {",", "and", "very", "bright", "shiny", "glossy", "matte", "solid", "round", "flat", "plain", "pretty",
               "vivid", "deep", "dark", "light", "pale", "glowing", "single", "lone", "simple", "colored",
               "coloured", "wooden", "rubber", "metal", "metallic", "3d", "cute", "nice", "perfect", "sized"}
_BOUNDARY = {",", ";", ".", ":", "!", "?"}
_POS_TO_REL = {("left", "right"): "left of", ("right", "left"): "right of", ("top", "bottom"): "above",
               ("bottom", "top"): "below"}
_REL_TO_POS = {rel: pos for pos, rel in _POS_TO_REL.items()}       # "left of" -> ("left", "right"): placed_caption
_POS_WORD = {"left": "left", "right": "right", "top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def _words(spec) -> str:
    """Regex alternation of phrases, longest first."""
    return "|".join(sorted(set(spec), key=len, reverse=True))


def _table(table: dict) -> tuple[str, dict]:
    phrase = {p: k for k, ps in table.items() for p in ps}
    return _words(phrase), phrase


_COLORS_RE, _COLOR_OF = _table(_COLOR_LEX)
_BG_RE, _BG_OF = _table(_BG_LEX)
_SIZES_RE, _SIZE_OF = _table(_SIZE_LEX)
_SHAPE_OF = {**{p: k for k, ps in _SHAPE_LEX.items() for p in ps},
             **{(p + "es" if p.endswith("x") else p + "s"): k for k, ps in _SHAPE_LEX.items() for p in ps}}
_GENERIC_OF = {**{g: g for g in _GENERIC}, **{g + "s": g + "s" for g in ("object", "thing", "shape", "item")}}
_NOUNS_RE = _words(list(_SHAPE_OF) + list(_GENERIC_OF))


def _direction(text: str) -> Optional[str]:
    """The motion named by the last direction word of a phrase ('from left to right' -> moves right)."""
    words = [w for w in re.findall(r"[a-z]+", text) if w.rstrip("s").removesuffix("ward") in _DIR]
    return _DIR[words[-1].rstrip("s").removesuffix("ward")] if words else None


def _phrases() -> list[tuple[str, str, object]]:
    """(kind, regex, value) in claiming order; value is a constant or a function of the matched text."""
    along, up, down = _words(_VERB_ALONG), _words(_VERB_UP), _words(_VERB_DOWN)
    cam_verb = _words(_CAM_VERB)
    pan = lambda t: "pan left" if _direction(t) == "moves left" else "pan right"  # noqa: E731
    return [
        ("cam", _CAM_STATIC, "static"),
        ("cam", rf"(?:the |a )?camera(?: (?:slowly|steadily|smoothly|gently|quickly|then|is|also))* (?:{cam_verb})"
                rf"(?: (?:slowly|steadily|smoothly|gently|across))* {_CAM_DIR}", pan),
        ("cam", rf"(?:pans|panning|pan|panned)(?: (?:slowly|steadily|smoothly|gently|across))* {_CAM_DIR}", pan),
        ("cam", r"(?:a |the )?(?:slow |steady )?(?:left|right)(?:ward)? pan(?:ning)?", pan),
        ("mot", _NOT_MOVING, "stays still"),
        ("occ", _OCC, True),
        ("bg", rf"{_BG_PRE}?{_BG_ADJ}(?:{_BG_RE})(?: colou?red)? {_BG_NOUN}", None),
        ("bg", rf"(?:background|backdrop)s? (?:(?:is|being|colou?r|colou?r is|of|:|=|in) )*(?:a |an |the )?{_BG_ADJ}"
               rf"(?:{_BG_RE})(?: colou?red)?", None),
        ("bg", rf"(?:on|against|over|in front of) (?:a |an |the )?{_BG_ADJ}(?:{_BG_RE})(?: colou?red)?"
               rf"(?! (?:[a-z]+ )?(?:{_NOUNS_RE})(?![a-z0-9]))", None),
        ("rel", _REL_LR, lambda t: "left of" if "left" in t else "right of"),
        ("rel", _REL_UD, lambda t: "below" if re.search(r"below|under|beneath|lower", t) else "above"),
        ("rel", _BESIDE, "beside"),
        ("mot", rf"(?:{along})(?: {_ADV})* {_DIR_TAIL}", _direction),
        ("mot", r"(?:from )?(?:the )?(?:left|right|top|bottom) to (?:the )?(?:left|right|top|bottom)", _direction),
        ("mot", r"(?:left|right|up|down|west|east|north|south)wards?", _direction),
        ("mot", rf"(?:{up})(?: {_ADV})*(?: {_DIR_TAIL})?", "moves up"),
        ("mot", rf"(?:{down})(?: {_ADV})*(?: {_DIR_TAIL})?", "moves down"),
        ("mot", _BOUNCE, "bounces"),
        ("mot", _GROW, "grows"),
        ("mot", _SHRINK, "shrinks"),
        ("mot", _STILL, "stays still"),
        ("pos", _POS, lambda t: _POS_WORD[re.search(r"left|right|top|bottom|upper|lower", t).group(0)]),
        ("num", _NUM, 2),
        ("color", _COLORS_RE, _COLOR_OF.get),
        ("size", _SIZES_RE, _SIZE_OF.get),
        ("noun", _NOUNS_RE, None),
        ("neg", r"not|no|never|without|nor", None),
    ]


_PHRASES = [(k, re.compile(r"(?<![a-z0-9~])(?:" + rx + r")(?![a-z0-9])"), v) for k, rx, v in _phrases()]


def _tokens(prompt: str) -> list[str]:
    t = prompt.lower().replace("n't", " not").replace("&", " and ")
    t = re.sub(r"\bgrey", "gray", t)
    t = re.sub(r"(?<=[a-z0-9])-(?=[a-z])", " ", t)          # sky-blue, medium-sized, left-hand
    return re.findall(r"[a-z0-9]+|[.,;:!?]", t)


def _items(tokens: list[str]) -> list[dict]:
    """Every token becomes part of one item: a recognised phrase {kind, value, text} or a plain word (kind 'w')."""
    owner: list[Optional[int]] = [None] * len(tokens)
    found: list[dict] = []
    for kind, rx, value in _PHRASES:
        text, starts = "", []
        for i, tok in enumerate(tokens):
            starts.append(len(text))
            text += ("~" if owner[i] is not None else tok) + " "
        for m in rx.finditer(text):
            i0, i1 = bisect.bisect_left(starts, m.start()), bisect.bisect_left(starts, m.end())
            v = value(m.group(0)) if callable(value) else value
            if kind == "bg":
                v = _BG_OF[re.search(rf"(?<![a-z])(?:{_BG_RE})(?![a-z])", m.group(0)).group(0)]
            found.append({"kind": kind, "value": v, "text": m.group(0)})
            for i in range(i0, i1):
                owner[i] = len(found) - 1
    out, seen = [], set()
    for i, tok in enumerate(tokens):
        if owner[i] is None:
            out.append({"kind": "punct" if tok in _BOUNDARY else "w", "value": tok, "text": tok})
        elif owner[i] not in seen:
            seen.add(owner[i])
            out.append(found[owner[i]])
    return out


def _noun_phrases(items: list[dict]) -> list[dict]:
    """Group [determiner] [number] (adjective | motion | filler)* noun into one 'np' item. A motion word joins only
    between a determiner and the noun ('a bouncing red ball'), so 'a ball moving left and a box' keeps it loose."""
    out: list[dict] = []
    for it in items:
        if it["kind"] != "noun":
            out.append(it)
            continue
        k, det = len(out), None
        while k > 0:
            prev = out[k - 1]
            if prev["kind"] in ("color", "size", "num") or (prev["kind"] == "w" and prev["value"] in _ADJ_FILLER):
                k -= 1
            elif prev["kind"] == "mot" and " " not in prev["text"]:
                k -= 1
            elif prev["kind"] == "w" and prev["value"] in _DETS:
                det, k = prev["value"], k - 1
                break
            else:
                break
        part = out[k:]
        if det is None:                      # no determiner: give motions back, they describe something else
            while part and part[0]["kind"] == "mot":
                part, k = part[1:], k + 1
            if any(p["kind"] == "mot" for p in part):
                cut = max(i for i, p in enumerate(part) if p["kind"] == "mot") + 1
                part, k = part[cut:], k + cut
        noun = it["text"]
        obj = _object(shape=_SHAPE_OF.get(noun))
        count = 1
        for p in part:
            if p["kind"] in ("color", "size") and obj[p["kind"]] is None:
                obj[p["kind"]] = p["value"]
            elif p["kind"] == "mot" and obj["motion"] is None:
                obj["motion"] = p["value"]
            elif p["kind"] == "num":
                count = p["value"]
        del out[k:]
        out.append({"kind": "np", "obj": obj, "count": count, "definite": det in _DEFINITE, "text": noun,
                    "generic": noun in _GENERIC_OF, "plural": noun.endswith("s")})
    return out


def _drop_negated(items: list[dict]) -> list[dict]:
    """'not a triangle', 'doesn't bounce', 'without any pillar', 'not on white': the negated phrase says nothing."""
    out, skip = [], False
    for it in items:
        if it["kind"] == "neg":
            skip = True
            continue
        if skip:
            if it["kind"] == "w" and it["value"] in _NEG_SKIP:
                continue
            skip = False
            if it["kind"] in ("np", "color", "size", "mot", "pos", "bg", "occ", "rel", "cam"):
                continue
        out.append(it)
    return out


def _is_object(it: dict) -> bool:
    """Generic nouns ('object', 'thing', 'one') name an object only with an attribute ('a red one', 'something')."""
    if it["kind"] != "np":
        return False
    if not it["generic"]:
        return True
    o = it["obj"]
    described = o["color"] is not None or o["size"] is not None
    return described or it["text"] == "something" or (it["definite"] and not it["plural"])


def parse_prompt(prompt: str) -> dict:
    """The scene graph a free-form prompt states (see the comment above for its form); what it leaves open is None."""
    items = [it if it["kind"] != "np" or _is_object(it) else {**it, "kind": "w", "value": it["text"]}
             for it in _drop_negated(_noun_phrases(_items(_tokens(prompt))))]
    _name_loose_object(items)
    return _Reader(items).graph()


class _Reader:
    """Reads the items in order, creating objects and attaching what is said about them."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.g = {"objects": [], "relation": None, "background": None, "pan": None, "occlusion": False}
        self.objects = self.g["objects"]
        self.last: list[int] = []                       # the objects named last
        self.pending: list[tuple[str, str]] = []        # said before the object it belongs to
        self.pairs: list[tuple[list, str, list]] = []   # (subject, relation, target) object indices
        self.waiting: Optional[tuple[list, str]] = None  # a relation waiting for its target
        self.everyone = False                           # 'both' / 'they': the next motion is everyone's
        self.camera_said = False

    def graph(self) -> dict:
        for k, it in enumerate(self.items):
            self.read(k, it)
        for subject, rel, target in self.pairs:
            if rel == "beside":
                break
            if (subject, target) in (([0], [1]), ([1], [0])):
                self.g["relation"] = rel if subject == [0] else INVERSE_RELATION[rel]
                break
        if len(self.objects) == 2 and self.g["relation"] is None:
            _positions_to_relation(self.g)
        return self.g

    def attach(self, idx, kind: str, value: str):
        key = {"mot": "motion", "pos": "position", "color": "color", "size": "size"}[kind]
        for j in idx:
            if self.objects[j][key] is None:
                self.objects[j][key] = value

    def next_item(self, k: int, skip_comma: bool = False) -> Optional[dict]:
        return next((it for it in self.items[k + 1:] if not (skip_comma and it["kind"] == "punct"
                                                               and it["value"] == ",")), None)

    def read(self, k: int, it: dict):
        kind, value, g = it["kind"], it.get("value"), self.g
        if kind == "np":
            idx = _resolve(it, self.objects)
            if self.waiting:
                self.pairs.append((*self.waiting, idx))
                self.waiting = None
            for pk, pv in self.pending:
                self.attach(idx, pk, pv)
            self.pending, self.last = [], idx
        elif kind == "w" and value in ("it", "them") and self.waiting:
            earlier = [j for j in range(len(self.objects)) if j not in self.waiting[0]]
            if earlier:
                self.pairs.append((*self.waiting, [earlier[-1]]))
            self.waiting = None
        elif kind == "rel" or (kind == "w" and value == "on"):
            self.relation(k, "above" if value == "on" else value)
        elif kind in ("mot", "pos", "color", "size"):
            if kind == "mot" and self.everyone and self.objects:
                self.attach(range(len(self.objects)), kind, value)
                self.everyone = False
                return
            opens = k == 0 or self.items[k - 1]["kind"] == "punct"
            nxt = self.next_item(k, skip_comma=True)
            if (opens and nxt is not None and nxt["kind"] == "np") or not self.last:
                self.pending.append((kind, value))       # 'on the left, a red ball'
            else:
                self.attach(self.last, kind, value)      # 'a red ball on the left'
        elif kind == "w" and value in _ALL:
            self.everyone = True
        elif kind == "punct" and value in ".;!?":
            self.everyone = False
        elif kind == "bg" and g["background"] is None:
            g["background"] = value
        elif kind == "cam" and not self.camera_said:
            g["pan"], self.camera_said = (None if value == "static" else value), True
        elif kind == "occ":
            g["occlusion"] = True

    def relation(self, k: int, rel: str):
        """A relation word before an object ('above a box', 'above it') relates it to the object named last; without
        one ('a ball above and a box below') 'above' / 'below' place the object named last."""
        nxt = self.next_item(k)
        if nxt is not None and (nxt["kind"] == "np" or (nxt["kind"] == "w" and nxt["value"] in ("it", "them"))):
            if self.last:
                self.waiting = (self.last, rel)
        elif self.items[k]["kind"] == "rel" and rel in ("above", "below"):
            where = "top" if rel == "above" else "bottom"
            if self.last:
                self.attach(self.last, "pos", where)
            else:
                self.pending.append(("pos", where))


def _object(**attrs) -> dict:
    return {"shape": None, "color": None, "size": None, "motion": None, "position": None, **attrs}


def _name_loose_object(items: list[dict]):
    """Without a known noun ('a red car driving left'), loose colour or size words name the object when the prompt
    says something else of the toy world about it ('a blue sky' names none)."""
    if any(it["kind"] == "np" for it in items):
        return
    loose = [i for i, it in enumerate(items) if it["kind"] in ("color", "size")]
    other = any(it["kind"] in ("mot", "pos", "bg", "occ") or (it["kind"] == "cam" and it["value"] != "static")
                for it in items)
    if loose and (other or {items[i]["kind"] for i in loose} == {"color", "size"}):
        it = items[loose[0]]
        items[loose[0]] = {"kind": "np", "obj": _object(**{it["kind"]: it["value"]}), "count": 1, "definite": False,
                           "text": it["text"], "generic": True, "plural": False}


def _resolve(np_item: dict, objects: list) -> list[int]:
    """Indices of the objects a noun phrase names: an earlier one ('the circle' after 'a red circle') or new ones."""
    o = np_item["obj"]
    if np_item["definite"] and objects:
        given = [k for k in ("shape", "color", "size") if o[k] is not None]
        match = [j for j, ob in enumerate(objects) if all(ob[k] in (None, o[k]) for k in given)]
        if match and (given or np_item["generic"]):
            j = match[-1]
            for k in ("shape", "color", "size", "motion"):
                if objects[j][k] is None:
                    objects[j][k] = o[k]
            return [j]
    objects.extend(dict(o) for _ in range(np_item["count"]))
    return list(range(len(objects) - np_item["count"], len(objects)))


def _positions_to_relation(g: dict):
    """Two objects placed on opposite sides ('a box on the left and a ball on the right') stand in a relation."""
    a, b = (o["position"] for o in g["objects"])
    if a is None and b is None:
        return
    a, b = a or _OPPOSITE.get(b), b or _OPPOSITE.get(a)
    rel = _POS_TO_REL.get((a, b))
    if rel is not None:
        g["relation"] = rel
        for o in g["objects"]:
            o["position"] = None


# ----------------------------------------------------------------------------------------------------------------------
# From a scene graph to a scene and to the training caption style
# ----------------------------------------------------------------------------------------------------------------------

def _rgb(color: str):
    return COLORS.get(color) or OFF_PALETTE[color]


def _visible(color: str, background: str) -> bool:
    return color_distance(_rgb(color), BACKGROUNDS[background]) > 110


def complete_graph(graph: dict) -> dict:
    """The graph with every open attribute set to what the toy world draws by default: a black background (or the
    first one every stated colour shows on), red then blue objects (unused colours that show on the background),
    balls, medium for one object and small for several, no motion (an object passing a pillar moves right), and
    two objects side by side in the order named (the first on the left)."""
    g = {**graph, "objects": [dict(o) for o in graph["objects"]]}
    objs = g["objects"]
    stated = [o["color"] for o in objs if o["color"] is not None]
    if g["background"] is None:
        g["background"] = next((b for b in BACKGROUNDS if all(_visible(c, b) for c in stated)), "black")
    used = set(stated)
    for o in objs:
        if o["color"] is None:
            order = ("red", "blue") + tuple(c for c in COLORS if c not in ("red", "blue"))
            o["color"] = next((c for c in order if c not in used and _visible(c, g["background"])), "red")
            used.add(o["color"])
        o["shape"] = o["shape"] or "ball"
        o["size"] = o["size"] or ("medium" if len(objs) == 1 else "small")
        o["motion"] = o["motion"] or ("moves right" if g["occlusion"] and len(objs) == 1 else "stays still")
    if len(objs) >= 2 and g["relation"] is None:
        g["relation"] = "left of"
    return g


def _template_kind(g: dict) -> Optional[str]:
    """The scene kind whose caption template states everything in a complete graph, or None."""
    objs = g["objects"]
    if any(o["position"] or o["color"] not in COLORS for o in objs):
        return None
    still = all(o["motion"] == "stays still" for o in objs)
    if len(objs) == 1 and not g["pan"] and not g["occlusion"]:
        return "single"
    if len(objs) == 2 and g["relation"] and still and not g["pan"] and not g["occlusion"]:
        return "pair"
    if len(objs) == 1 and g["occlusion"] and objs[0]["motion"] in ("moves left", "moves right") and not g["pan"]:
        return "occlusion"
    if len(objs) == 1 and g["pan"] and still and not g["occlusion"]:
        return "pan"
    return None


def scene_graph(scene: Scene) -> dict:
    """The (complete) scene graph of a scene; object positions in the frame are not part of it."""
    return {"objects": [_object(shape=o.shape, color=o.color, size=o.size, motion=o.motion) for o in scene.objects],
            "relation": scene.relation if len(scene.objects) >= 2 else None, "background": scene.background,
            "pan": scene.pan, "occlusion": scene.occluder}


_START = {"moves right": (0.25, None), "moves left": (0.75, None), "moves down": (None, 0.25),
          "moves up": (None, 0.75), "bounces": (None, 0.3)}
_PLACE = {"left": (0.25, None), "right": (0.75, None), "top": (None, 0.25), "bottom": (None, 0.75)}
_LAYOUT = {"left of": ((0.29, None), (0.71, None)), "right of": ((0.71, None), (0.29, None)),
           "above": ((None, 0.29), (None, 0.71)), "below": ((None, 0.71), (None, 0.29))}


def _scene(g: dict) -> Scene:
    """A scene for a complete graph: objects start where training clips with their motion start, at their stated
    position, or laid out by the relation."""
    objs, n = [], len(g["objects"])
    for i, o in enumerate(g["objects"]):
        x, y = 0.5, 0.5
        for dx, dy in (_START.get(o["motion"], (None, None)), _PLACE.get(o["position"], (None, None)),
                       _LAYOUT[g["relation"]][i] if n >= 2 and i < 2 else (None, None)):
            x, y = (x if dx is None else dx), (y if dy is None else dy)
        if g["occlusion"] and o["motion"] in ("moves left", "moves right"):
            x = 0.2 if o["motion"] == "moves right" else 0.8
        objs.append(Obj(o["shape"], o["color"], o["size"], o["motion"], x, y))
    kind = "occlusion" if g["occlusion"] else "pan" if g["pan"] else "pair" if n >= 2 else "single"
    return Scene(g["background"], tuple(objs), relation=g["relation"] if n >= 2 else None, occluder=g["occlusion"],
                 pan=g["pan"], kind=kind)


_WHERE = {"left": "on the left side of the frame", "right": "on the right side of the frame",
          "top": "at the top of the frame", "bottom": "at the bottom of the frame"}


def _free_caption(g: dict) -> str:
    """The detailed style for a complete graph no template covers (several moving objects, a position in the frame,
    a pillar with vertical motion, a pan with a moving object, colours outside the palette): every attribute stated
    in the templates' words."""
    objs = g["objects"]
    moving = any(o["motion"] != "stays still" for o in objs)
    bg = f"on a plain {g['background']} background" + (" with thin posts" if g["pan"] else "")

    def noun(o, lead=False):
        text = _a(f"{o['size']} {o['color']} {o['shape']}")
        return text[0].upper() + text[1:] if lead else text

    if len(objs) == 1:
        o = objs[0]
        text = f"{noun(o, True)} {MOTION_DETAILED[o['motion']]}"
        if o["position"]:
            text += (", starting " if o["motion"] != "stays still" else " ") + _WHERE[o["position"]] + ","
        text += f" {bg}."
    else:
        def desc(o, lead=False):
            d = noun(o, lead) + (" " + _WHERE[o["position"]] if o["position"] else "")
            return d + (f" that {MOTION_DETAILED[o['motion']]}" if moving else "")

        text = (f"{desc(objs[0], True)} is {RELATION_WORDS[g['relation']][0]} {desc(objs[1])}"
                f"{',' if moving else ''} {bg}.")
        text += "".join(f" {desc(o, True)} is also in the scene." for o in objs[2:])
        if not moving:
            text += " Both objects stay still." if len(objs) == 2 else " All objects stay still."
    if g["occlusion"]:
        text += " It passes behind a brown pillar." if len(objs) == 1 else " A brown pillar stands in the scene."
    return text + (f" The camera {PAN_WORDS[g['pan']][0]}." if g["pan"] else " The camera is static.")


def scene_from_prompt(prompt: str, rng: Optional[np.random.Generator] = None) -> Optional[Scene]:
    """The scene a prompt describes, with the defaults of ``complete_graph`` for what it leaves open (None if it
    names no object). Everything the graph states that a Scene can hold is kept, also where the world's sampler
    never goes (two moving objects, a pan with a moving object); a position in the frame becomes the start point."""
    g = parse_prompt(prompt)
    return _scene(complete_graph(g)) if g["objects"] else None


def caption_from_graph(graph: dict) -> str:
    """The detailed caption of a scene graph: the training template's exact text when a template states it all,
    else the same wording extended so that no stated attribute is dropped."""
    g = complete_graph(graph)
    return detailed_caption(_scene(g)) if _template_kind(g) else _free_caption(g)


def expand_prompt(prompt: str) -> str:
    """A user prompt in the detailed caption style the model was trained on. Prompts that name no object of the toy
    world are returned unchanged."""
    g = parse_prompt(prompt)
    return caption_from_graph(g) if g["objects"] else prompt.strip()


# contrast guidance: what the model is pushed away from for each stated motion. The opposite direction for a
# direction; for growing, shrinking and bouncing what the model draws in their place (a size kept, a fall without
# the rebound: weights/MODEL_CARD.md), which contrasts better than the opposite change (measured there)
CONTRAST_MOTION = {"moves right": "moves left", "moves left": "moves right", "moves up": "moves down",
                   "moves down": "moves up", "grows": "stays still", "shrinks": "stays still", "bounces": "moves down"}


def contrast_prompt(prompt: str) -> Optional[str]:
    """The contrast prompt of contrast guidance (model/sampling.py) for a toy-world prompt: its detailed caption with
    every motion the prompt states replaced by its ``CONTRAST_MOTION`` ("moves left" for "moves right", "stays
    still" for "grows"), everything else as stated. None when the prompt names no object or states no motion to
    contrast (an object that stays still): sampling then runs without the extra pass."""
    g = parse_prompt(prompt)
    if not any(o["motion"] in CONTRAST_MOTION for o in g["objects"]):
        return None
    c = complete_graph(g)
    for stated, o in zip(g["objects"], c["objects"]):
        if stated["motion"] in CONTRAST_MOTION:
            o["motion"] = CONTRAST_MOTION[stated["motion"]]
    return caption_from_graph(c)
