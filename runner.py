"""Headless workflow runner: executes the same workflow JSONs ComfyUI runs (UI format or API format) with the same
node classes, in topological order. It runs this pack's nodes only; ComfyUI itself is the real host.

    from spacetime.runner import run_workflow
    outputs = run_workflow("workflows/text_to_video.json", overrides={"5.seed": 3})
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

# Widget types whose value sits in a UI workflow's widgets_values (sockets have other type names).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


class WorkflowError(ValueError):
    """A workflow that cannot run: unknown node, bad link, cycle, bad override."""


def _mappings():
    from .nodes import NODE_CLASS_MAPPINGS
    return NODE_CLASS_MAPPINGS


def _ordered_inputs(cls) -> list[tuple[str, Any, dict]]:
    spec = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 else {}
            out.append((name, kind, opts))
    return out


def _is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def ui_to_api(ui: dict) -> dict:
    """Convert a UI-format workflow (nodes + links, as saved by the frontend) into API format."""
    mappings = _mappings()
    links = {}
    for link in ui.get("links", []):
        if isinstance(link, dict):
            links[link["id"]] = (link["origin_id"], link["origin_slot"])
        else:
            links[link[0]] = (link[1], link[2])
    api = {}
    for node in ui.get("nodes", []):
        ntype = node.get("type")
        if node.get("mode", 0) in (2, 4):          # muted / bypassed
            continue
        if ntype not in mappings:
            if ntype in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"):
                continue
            raise WorkflowError(f"node {node.get('id')} has type {ntype!r}, which is not a Spacetime node "
                                f"(the headless runner runs this pack's nodes only)")
        cls = mappings[ntype]
        inputs: dict = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            inputs.update(node["widgets_values"])
            values = []
        vi = 0
        for name, kind, opts in _ordered_inputs(cls):
            if not _is_widget(kind):
                continue
            if vi < len(values):
                inputs[name] = values[vi]
                vi += 1
                if (opts.get("control_after_generate") and vi < len(values)
                        and values[vi] in SEED_CONTROL_VALUES):
                    vi += 1
        for inp in node.get("inputs", []) or []:
            link = inp.get("link")
            if link is not None:
                if link not in links:
                    raise WorkflowError(f"node {node['id']} input {inp['name']!r} refers to missing link {link}")
                src, slot = links[link]
                inputs[inp["name"]] = [str(src), slot]
        api[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    return api


def load_workflow(path_or_dict) -> dict:
    data = path_or_dict
    if not isinstance(data, dict):
        data = json.loads(Path(path_or_dict).read_text())
    if "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]
    if isinstance(data.get("nodes"), list) and "links" in data:
        return ui_to_api(data)
    return {str(k): v for k, v in data.items() if isinstance(v, dict) and "class_type" in v}


def apply_overrides(api: dict, overrides: Optional[dict]) -> dict:
    """overrides: {"NODE_ID.INPUT": value}."""
    for key, value in (overrides or {}).items():
        node_id, _, name = str(key).partition(".")
        if node_id not in api or not name:
            raise WorkflowError(f"override {key!r}: expected NODE_ID.INPUT with a node id in "
                                f"{', '.join(sorted(api))}")
        api[node_id]["inputs"][name] = value
    return api


def _order(api: dict) -> list[str]:
    order, state = [], {}

    def visit(n, chain=()):
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            raise WorkflowError(f"the workflow has a cycle through nodes {' -> '.join(chain + (n,))}")
        state[n] = 1
        for v in api[n]["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in api:
                visit(str(v[0]), chain + (n,))
            elif isinstance(v, list) and len(v) == 2 and isinstance(v[1], int) and str(v[0]) not in api:
                raise WorkflowError(f"node {n} links to node {v[0]}, which is not in the workflow")
        state[n] = 2
        order.append(n)
    for n in sorted(api, key=lambda k: (len(k), k)):
        visit(n)
    return order


def run_workflow(workflow, overrides: Optional[dict] = None) -> dict:
    """Run every node; returns {node_id: {"result": tuple, "ui": dict or None}}."""
    api = apply_overrides(load_workflow(workflow), overrides)
    mappings = _mappings()
    for nid, node in api.items():
        if node["class_type"] not in mappings:
            raise WorkflowError(f"node {nid} has type {node['class_type']!r}, which is not a Spacetime node")
    results: dict = {}
    for nid in _order(api):
        node = api[nid]
        cls = mappings[node["class_type"]]
        kwargs = {}
        for name, v in node["inputs"].items():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) in api:
                kwargs[name] = results[str(v[0])]["result"][v[1]]
            else:
                kwargs[name] = v
        if hasattr(cls, "VALIDATE_INPUTS"):
            literal = {k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and len(v) == 2)}
            ok = cls.VALIDATE_INPUTS(**literal)
            if ok is not True:
                raise WorkflowError(f"node {nid} ({node['class_type']}): {ok}")
        out = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(out, dict):
            results[nid] = {"result": tuple(out.get("result", ())), "ui": out.get("ui")}
        else:
            results[nid] = {"result": tuple(out), "ui": None}
    return results
