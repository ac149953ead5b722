"""Writes the shared workflow JSONs in this folder (UI format, as the ComfyUI frontend saves them).

    python workflows/make_workflows.py                      # all workflows, preset "toyworld" (what is committed)
    python workflows/make_workflows.py --preset toyworld-random --out /tmp/wf
    python workflows/make_workflows.py --check              # exit 1 if a committed JSON is out of date

Each node's ``widgets_values`` are laid out from its class's INPUT_TYPES (required, then optional, in order; an INT
with ``control_after_generate`` is followed by "fixed", as the frontend saves it), so the files stay in step with the
nodes. Nodes sit in columns from left to right (model and inputs, prompt, latent, sampling, decode and save), each
column inside a titled group.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PRESET = "toyworld"
# the workflows that generate from a still image, or forward from a clip or between two clips, load the embedded
# model's image-to-video weights (its backward extension seams are worse than the text-to-video weights': see
# weights/MODEL_CARD.md)
I2V_PRESET = {"toyworld": "toyworld-i2v"}

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
COLUMN_X = 40
COLUMN_WIDTH = 320
COLUMN_GAP = 60
ROW_GAP = 100
TOP = 90
TITLE_H = 30               # LiteGraph draws the title bar above pos[1]
SLOT_H = 22
WIDGET_H = 26
MULTILINE_H = 90
GROUP_PAD = 14
GROUP_TITLE_H = 48          # room for the group's title and the frontend's node badge above each node
GROUP_COLORS = ["#3f789e", "#8A8", "#b58b2a", "#a1309b", "#88A", "#b06634"]

EXAMPLES = "spacetime-examples/"
SIZE = {"width": 64, "height": 64}


@dataclass
class Node:
    key: str                                     # name used in this script's wiring
    type: str                                    # node id (NODE_CLASS_MAPPINGS key)
    column: int
    title: str = ""
    values: dict = field(default_factory=dict)   # widget values that differ from the defaults
    links: dict = field(default_factory=dict)    # input name -> "node_key.output_name"


@dataclass
class Workflow:
    name: str
    summary: str
    nodes: list
    groups: list                                 # [(title, [node key, ...])]
    frames: int = 17                             # frames of the video it saves (checked by tests/test_comfyui.py)


def _model(preset, column=0):
    return Node("model", "SpacetimeModelLoader", column, "Model (embedded toy world)",
                {"preset": preset, "device": "auto"})


def _text(prompt, column=1, prompt_link=None):
    links = {"model": "model.model"}
    if prompt_link:
        links["prompt"] = prompt_link
    return Node("text", "SpacetimeTextEncode", column, "Prompt", {"prompt": prompt, "negative": ""}, links)


def _latent(column=1):
    return Node("latent", "SpacetimeNoiseLatent", column, "Video size, length, seed",
                {**SIZE, "frames": 17, "batch": 1, "seed": 7}, {"model": "model.model"})


def _denoise(latent_from, column):
    return Node("denoise", "SpacetimeDenoise", column, "Generate (denoise)",
                {"steps": 20, "cfg": 5.0, "shift": 3.0, "sampler": "unipc", "seed": 0, "strength": 1.0},
                {"model": "model.model", "text": "text.text", "latent": latent_from})


def _decode(column):
    return Node("decode", "SpacetimeVAEDecode", column, "Decode frames",
                links={"model": "model.model", "latent": "denoise.latent"})


def _stamp(column, frames_from="decode.frames", reports=()):
    links = {"frames": frames_from, "generation_info": "denoise.generation_info", **dict(reports)}
    return Node("stamp", "SpacetimeProvenanceStamp", column, "Save signed MP4", {"filename_prefix": "spacetime"},
                links)


def _load(key, file, title, column=0, **values):
    return Node(key, "SpacetimeLoadVideo", column, title, {"file": EXAMPLES + file, **values})


def _extend(direction, title, column=1, after=False):
    links = {"model": "model.model", "frames": "clip.frames"}
    if after:
        links["after_frames"] = "after.frames"
    return Node("extend", "SpacetimeExtend", column, title, {"direction": direction, "new_frames": 8}, links)


def _long_video(preset) -> Workflow:
    prompts = "a red ball stays still on a navy background\na red ball bounces on a navy background"
    return Workflow(
        "long_video", "Long video: 41 frames as 3 overlapping windows over one latent timeline, the first frame as "
        "an anchor, a prompt per window; saved as a signed MP4 while it decodes.",
        [_model(preset),
         Node("long", "SpacetimeLongVideo", 1, "Long video (windows)",
              {"prompts": prompts, **SIZE, "frames": 41, "window_frames": 17, "overlap_frames": 4,
               "anchor_frames": "0", "seed": 7, "steps": 20, "cfg": 5.0, "shift": 3.0, "sampler": "unipc"},
              {"model": "model.model"}),
         Node("save", "SpacetimeSaveLongVideo", 2, "Decode, sign, save (streamed)",
              {"filename_prefix": "spacetime_long"}, {"model": "model.model", "latent": "long.latent",
                                                      "generation_info": "long.generation_info"})],
        [("Model", ["model"]), ("Long video", ["long"]), ("Save while decoding", ["save"])], frames=41)


def _multi_shot(preset) -> Workflow:
    shots = ("17: a red ball stays still on a navy background\n"
             "16: a red ball bounces on a beige background")
    return Workflow(
        "multi_shot", "Multi-shot: a storyboard of two shots (17 + 16 frames) in one video with a hard cut at frame "
        "17; each shot's frames read their own prompt.",
        [_model(preset),
         Node("story", "SpacetimeStoryboard", 1, "Storyboard (one shot per line)",
              {"shots": shots, **SIZE, "frames": 0, "conditioning": "text", "seed": 7, "steps": 20, "cfg": 5.0,
               "shift": 3.0, "sampler": "unipc"}, {"model": "model.model"}),
         Node("decode", "SpacetimeVAEDecode", 2, "Decode frames", links={"model": "model.model",
                                                                         "latent": "story.latent"}),
         Node("stamp", "SpacetimeProvenanceStamp", 2, "Save signed MP4", {"filename_prefix": "spacetime_story"},
              {"frames": "decode.frames", "generation_info": "story.generation_info"})],
        [("Model", ["model"]), ("Storyboard", ["story"]), SAVE], frames=33)


SAMPLE = ("Sample", ["denoise"])
SAVE = ("Decode, sign, save", ["decode", "stamp"])


def workflows(preset: str = DEFAULT_PRESET) -> list[Workflow]:
    t2v_prompt = "a red ball bounces on a navy background"
    ball_prompt = "a red ball moves right on a navy background"
    extend_tail = [_denoise("extend.latent", 2), _decode(3), _stamp(3)]
    i2v = I2V_PRESET.get(preset, preset)
    return [
        Workflow("text_to_video", "Text to video: a prompt becomes a 64x64, 17-frame clip.",
                 [_model(preset), _text(t2v_prompt), _latent(), _denoise("latent.latent", 2), _decode(3),
                  _stamp(3)],
                 [("Model", ["model"]), ("Prompt", ["text"]), ("Video size", ["latent"]), SAMPLE, SAVE]),
        Workflow("image_to_video", "Image to video: a still image becomes the first frame; the rest is generated.",
                 [_model(i2v),
                  _load("image", "yellow_box.png", "Still image (first frame)"),
                  _text("a yellow box moves up on a sky blue background"), _latent(),
                  Node("i2v", "SpacetimeImageToVideo", 2, "Image as first frame", {"position": "start"},
                       {"model": "model.model", "latent": "latent.latent", "image": "image.frames"}),
                  _denoise("i2v.latent", 3), _decode(4), _stamp(4)],
                 [("Model", ["model"]), ("Input image", ["image"]), ("Prompt", ["text"]),
                  ("Video size", ["latent"]), ("Image to video", ["i2v"]), SAMPLE, SAVE]),
        Workflow("extend_forward", "Extend forward: 9 frames of a clip, then 8 new frames that continue it.",
                 [_model(i2v),
                  _load("clip", "ball_clip.mp4", "Clip to continue (first 9 frames)", max_frames=9),
                  _text(ball_prompt), _extend("forward", "Extend forward (+8 frames after)"), *extend_tail],
                 [("Model", ["model"]), ("Input clip", ["clip"]), ("Prompt", ["text"]), ("Extend", ["extend"]),
                  SAMPLE, SAVE]),
        Workflow("extend_backward", "Extend backward: 8 new frames that lead into a 9-frame clip.",
                 [_model(preset), _load("clip", "ball_clip_later.mp4", "Clip to lead into (9 frames)"),
                  _text(ball_prompt), _extend("backward", "Extend backward (+8 frames before)"), *extend_tail],
                 [("Model", ["model"]), ("Input clip", ["clip"]), ("Prompt", ["text"]), ("Extend", ["extend"]),
                  SAMPLE, SAVE]),
        Workflow("fill_frames", "Fill frames: 8 new frames bridge the end of one clip and the start of a later one.",
                 [_model(preset),
                  _load("clip", "ball_clip.mp4", "Clip before the gap (last 4 frames)", skip_frames=13),
                  _load("after", "ball_clip_later.mp4", "Clip after the gap (first 5 frames)", max_frames=5),
                  _text(ball_prompt), _extend("fill", "Fill the gap (8 frames)", after=True), *extend_tail],
                 [("Model", ["model"]), ("Input clips", ["clip", "after"]), ("Prompt", ["text"]),
                  ("Fill between the clips", ["extend"]), SAMPLE, SAVE]),
        Workflow("safe_text_to_video", "Text to video with safety checks: the prompt is checked before encoding, "
                 "every frame before saving, and the signed MP4 records both verdicts.",
                 [_model(preset),
                  Node("prompt_check", "SpacetimeSafetyPromptFilter", 0, "Check the prompt", {"prompt": t2v_prompt}),
                  _text(t2v_prompt, prompt_link="prompt_check.prompt"), _latent(),
                  _denoise("latent.latent", 2), _decode(3),
                  Node("frame_check", "SpacetimeSafetyFrameFilter", 3, "Check every frame",
                       links={"frames": "decode.frames"}),
                  _stamp(4, "frame_check.frames", reports=(("prompt_report", "prompt_check.report"),
                                                           ("frame_report", "frame_check.report")))],
                 [("Model", ["model"]), ("Prompt safety check", ["prompt_check"]), ("Prompt", ["text"]),
                  ("Video size", ["latent"]), SAMPLE, ("Decode, check frames", ["decode", "frame_check"]),
                  ("Sign and save", ["stamp"])]),
        _long_video(preset),
        _multi_shot(preset),
    ]


# ----------------------------------------------------------------------------------------------------------------------
# UI-format writer
# ----------------------------------------------------------------------------------------------------------------------

def _mappings():
    from spacetime.nodes import NODE_CLASS_MAPPINGS
    return NODE_CLASS_MAPPINGS


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            yield name, entry[0], (entry[1] if len(entry) > 1 else {}), section


def _is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _default(kind, opts):
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[kind]


def _size(cls, n_widgets, n_multiline, n_in, n_out):
    rows = max(n_in, n_out)
    h = 8 + rows * SLOT_H + (n_widgets - n_multiline) * WIDGET_H + n_multiline * MULTILINE_H
    return [COLUMN_WIDTH, h]


def build(wf: Workflow) -> dict:
    """One workflow as the frontend saves it."""
    mappings = _mappings()
    missing = sorted({n.type for n in wf.nodes if n.type not in mappings})
    if missing:
        raise SystemExit(f"{wf.name}: node type(s) {', '.join(missing)} are not in NODE_CLASS_MAPPINGS "
                         f"(is this checkout missing a node module?)")
    ids = {n.key: i + 1 for i, n in enumerate(wf.nodes)}
    by_key = {n.key: n for n in wf.nodes}

    # links: [id, origin_id, origin_slot, target_id, target_slot, type]
    links, out_links, link_of = [], {}, {}
    for n in wf.nodes:
        cls = mappings[n.type]
        in_names = [name for name, *_ in _inputs(cls)]
        for name, src in n.links.items():
            if name not in in_names:
                raise SystemExit(f"{wf.name}: {n.type} has no input {name!r} (inputs: {', '.join(in_names)})")
            skey, _, sname = src.partition(".")
            scls = mappings[by_key[skey].type]
            snames = list(getattr(scls, "RETURN_NAMES", scls.RETURN_TYPES))
            if sname not in snames:
                raise SystemExit(f"{wf.name}: {scls.__name__} has no output {sname!r} (outputs: {', '.join(snames)})")
            slot = snames.index(sname)
            link_id = len(links) + 1
            links.append([link_id, ids[skey], slot, ids[n.key], None, scls.RETURN_TYPES[slot]])
            link_of[(n.key, name)] = links[-1]
            out_links.setdefault((skey, slot), []).append(link_id)

    # execution order (the frontend's "order"): a topological sort, stable in declaration order
    order, seen = [], set()

    def visit(key):
        if key in seen:
            return
        seen.add(key)
        for src in by_key[key].links.values():
            visit(src.partition(".")[0])
        order.append(key)
    for n in wf.nodes:
        visit(n.key)

    nodes, col_y = [], {}
    for n in wf.nodes:
        cls = mappings[n.type]
        values, inputs = [], []
        n_widgets = n_multiline = 0
        known = set()
        for name, kind, opts, _section in _inputs(cls):
            known.add(name)
            if _is_widget(kind):
                values.append(n.values.get(name, _default(kind, opts)))
                n_widgets += 1
                if kind == "STRING" and opts.get("multiline"):
                    n_multiline += 1
                if opts.get("control_after_generate"):
                    values.append("fixed")
                    n_widgets += 1
                if name in n.links:                  # a widget fed by a link: "converted to input"
                    inputs.append({"name": name, "type": kind if isinstance(kind, str) else "COMBO",
                                   "link": None, "widget": {"name": name}})
            else:
                if _section == "required" and name not in n.links:
                    raise SystemExit(f"{wf.name}: required input {n.type}.{name} is not linked")
                inputs.append({"name": name, "type": kind, "link": None})
        unknown = set(n.values) - known
        if unknown:
            raise SystemExit(f"{wf.name}: {n.type} has no widget(s) {', '.join(sorted(unknown))}")
        for slot, entry in enumerate(inputs):
            link = link_of.get((n.key, entry["name"]))
            if link is not None:
                entry["link"] = link[0]
                link[4] = slot
        names = list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
        outputs = [{"name": names[i], "type": t, "links": out_links.get((n.key, i), []), "slot_index": i}
                   for i, t in enumerate(cls.RETURN_TYPES)]
        n_sockets = sum(1 for e in inputs if "widget" not in e)
        size = _size(cls, n_widgets, n_multiline, n_sockets, len(outputs))
        x = COLUMN_X + n.column * (COLUMN_WIDTH + COLUMN_GAP)
        y = col_y.get(n.column, TOP + GROUP_TITLE_H + TITLE_H)
        col_y[n.column] = y + size[1] + TITLE_H + ROW_GAP
        node = {"id": ids[n.key], "type": n.type, "pos": [x, y], "size": size, "flags": {},
                "order": order.index(n.key), "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": n.type}, "widgets_values": values}
        if n.title:
            node["title"] = n.title
        if getattr(cls, "OUTPUT_NODE", False):
            node["color"], node["bgcolor"] = "#232", "#353"
        nodes.append(node)

    groups = []
    for gi, (title, columns) in enumerate(wf.groups):
        members = [nd for nd, n in zip(nodes, wf.nodes) if n.key in columns]
        if not members:
            raise SystemExit(f"{wf.name}: group {title!r} has no nodes")
        x0 = min(m["pos"][0] for m in members) - GROUP_PAD
        y0 = min(m["pos"][1] for m in members) - TITLE_H - GROUP_PAD - GROUP_TITLE_H
        x1 = max(m["pos"][0] + m["size"][0] for m in members) + GROUP_PAD
        y1 = max(m["pos"][1] + m["size"][1] for m in members) + GROUP_PAD
        groups.append({"id": gi + 1, "title": f"{gi + 1}. {title}", "bounding": [x0, y0, x1 - x0, y1 - y0],
                       "color": GROUP_COLORS[gi % len(GROUP_COLORS)], "font_size": 22, "flags": {}})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": groups, "config": {}, "extra": {"ds": _fit_view(groups), "spacetime": {"summary": wf.summary, "frames": wf.frames}},
            "version": 0.4}


def _fit_view(groups, box=(60, 90, 1380, 800)) -> dict:
    """The canvas view saved with the workflow: the whole graph inside the part of a 1400x900 window that the
    frontend's side bar and tab bar leave free (LiteGraph: screen = (pos + offset) * scale)."""
    x0 = min(g["bounding"][0] for g in groups)
    y0 = min(g["bounding"][1] for g in groups)
    x1 = max(g["bounding"][0] + g["bounding"][2] for g in groups)
    y1 = max(g["bounding"][1] + g["bounding"][3] for g in groups)
    scale = min(1.0, (box[2] - box[0]) / (x1 - x0), (box[3] - box[1]) / (y1 - y0))
    scale = int(scale * 100) / 100
    return {"scale": scale, "offset": [round(box[0] / scale - x0, 1), round(box[1] / scale - y0, 1)]}


def render(preset: str = DEFAULT_PRESET) -> dict[str, str]:
    """{file name: JSON text} for every workflow."""
    return {f"{wf.name}.json": json.dumps(build(wf), indent=1) + "\n" for wf in workflows(preset)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default=DEFAULT_PRESET, help="Model Loader preset written into every workflow")
    ap.add_argument("--out", type=Path, default=HERE, help="folder to write to (default: this folder)")
    ap.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    a = ap.parse_args(argv)
    stale = []
    for name, text in render(a.preset).items():
        path = a.out / name
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        a.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"out of date (run python workflows/make_workflows.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
