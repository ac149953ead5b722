"""The usage policy as data: categories with a threshold and an action each, lexical rules, semantic exemplars and
the frame classifiers. ``policy.toml`` next to this file is the default; a user file (TOML or JSON) named by
``SPACETIME_SAFETY_POLICY`` or passed as ``path`` is merged over it (see the comments in policy.toml)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from ..model.errors import SpacetimeValueError

HERE = Path(__file__).resolve().parent
DEFAULT_POLICY = HERE / "policy.toml"
ENV_POLICY = "SPACETIME_SAFETY_POLICY"
ACTIONS = ("block", "warn")
SEVERITY = {"allow": 0, "warn": 1, "block": 2}

TOP_KEYS = {"name", "version", "exemplars", "prompt", "frames", "categories", "benign_exemplars", "replace",
            "description"}
PROMPT_KEYS = {"semantic", "l2", "steps", "benign_weight", "gate", "chunk_words", "opposing", "opposing_window",
               "frames", "frame_breakers", "frame_lexical", "frame_semantic", "negations", "negation_gap",
               "negation_window", "negatable", "benign_margin"}
FRAME_KEYS = {"batch_size", "classifiers"}
CATEGORY_KEYS = {"label", "action", "threshold", "frame_threshold", "terms", "except", "combos", "exemplars",
                 "enabled", "description", "framable", "negatable"}
COMBO_KEYS = {"groups", "window"}
PROMPT_DEFAULTS = {"semantic": True, "l2": 1e-4, "steps": 400, "benign_weight": 2.0, "gate": [0.25, 0.35],
                   "chunk_words": 24, "opposing": [], "opposing_window": 3, "frames": [], "frame_breakers": [],
                   "frame_lexical": 1.0, "frame_semantic": 1.0, "negations": [], "negation_gap": [],
                   "negation_window": 3, "negatable": [], "benign_margin": [1.0, 2.0]}


class PolicyError(SpacetimeValueError):
    """A policy file that cannot be read or has a wrong key or value."""


@dataclass
class Combo:
    groups: list                      # [[term, ...], ...]: every group must match
    window: int = 8                   # ... within this many words of each other


@dataclass
class Category:
    id: str
    label: str
    action: str = "block"
    threshold: float = 0.5
    frame_threshold: Optional[float] = None
    terms: list = field(default_factory=list)
    exceptions: list = field(default_factory=list)
    combos: list = field(default_factory=list)
    exemplars: list = field(default_factory=list)
    framable: bool = True             # an acceptable frame ([prompt] frames) may lower its scores
    negatable: bool = True            # a negated term ("no nudity") does not count ([prompt] negations)

    @property
    def frame_limit(self) -> float:
        return self.threshold if self.frame_threshold is None else self.frame_threshold


@dataclass
class Policy:
    name: str
    version: str
    categories: dict                  # id -> Category (enabled ones only)
    benign: list                      # benign counter-exemplars
    prompt: dict
    frames: dict                      # batch_size, classifiers [dict, ...] with "model" resolved to paths
    sources: list                     # file names the policy was read from

    def digest(self) -> str:
        """sha256 of everything that affects a decision (caches key on it)."""
        data = {"categories": {k: vars(c) | {"combos": [vars(x) for x in c.combos]} for k, c in
                               self.categories.items()}, "benign": self.benign, "prompt": self.prompt,
                "frames": self.frames, "name": self.name, "version": self.version}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def label(self, category: str) -> str:
        c = self.categories.get(category)
        return c.label if c else category


PolicySpec = Union[None, str, Path, Policy, dict]


def _read(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"safety policy {str(path)!r} cannot be read ({exc.strerror})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib
            data = tomllib.loads(text)
    except ValueError as exc:
        raise PolicyError(f"safety policy {path.name!r} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}:"
                          f" {exc}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"safety policy {path.name!r} must be a table / object at the top level")
    return data


def _check_keys(table: dict, allowed: set, where: str):
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _exemplar_file(path: Path) -> tuple[dict, list]:
    data = _read(path)
    cats = {}
    for cid, table in (data.get("categories") or {}).items():
        cats[cid] = list(table.get("exemplars", []))
    return cats, list((data.get("benign") or {}).get("exemplars", []))


def _resolve_model(spec, base: Path) -> str:
    if not isinstance(spec, str) or not spec:
        raise PolicyError("frames.classifiers: every classifier needs model = \"builtin:opennsfw\" or a path to an "
                          ".onnx file")
    if spec.startswith("builtin:"):
        return spec
    p = Path(spec).expanduser()
    return str(p if p.is_absolute() else base / p)


def _merge(base: dict, over: dict, base_dir: Path, over_dir: Path) -> dict:
    out = copy.deepcopy(base)
    replace = bool(over.get("replace"))
    if replace:
        out["categories"] = {}
        out["_exemplar_files"] = []
    for key in ("name", "version", "description"):
        if key in over:
            out[key] = over[key]
    for key in ("prompt", "frames"):
        if key in over:
            if not isinstance(over[key], dict):
                raise PolicyError(f"[{key}] must be a table")
            merged = dict(out.get(key) or {})
            merged.update(over[key])
            if key == "frames" and "classifiers" in over[key]:
                merged["classifiers"] = [dict(c, _base=str(over_dir)) for c in over[key]["classifiers"]]
            out[key] = merged
    if "exemplars" in over:
        out.setdefault("_exemplar_files", []).append(str(over_dir / over["exemplars"]))
    out["benign_exemplars"] = list(out.get("benign_exemplars") or []) + list(over.get("benign_exemplars") or [])
    for cid, table in (over.get("categories") or {}).items():
        if not isinstance(table, dict):
            raise PolicyError(f"[categories.{cid}] must be a table")
        cur = out["categories"].setdefault(cid, {})
        for k, v in table.items():
            if k == "exemplars":
                cur["exemplars"] = list(cur.get("exemplars") or []) + list(v)
            else:
                cur[k] = v
    return out


def _build(data: dict, sources: list) -> Policy:
    _check_keys({k: v for k, v in data.items() if not k.startswith("_")}, TOP_KEYS, "safety policy")
    prompt = dict(PROMPT_DEFAULTS)
    prompt.update(data.get("prompt") or {})
    _check_keys(prompt, PROMPT_KEYS, "[prompt]")
    for k in ("opposing", "frames", "frame_breakers", "negations", "negation_gap", "negatable"):
        if not (isinstance(prompt[k], list) and all(isinstance(t, str) and t.strip() for t in prompt[k])):
            raise PolicyError(f"[prompt] {k}={prompt[k]!r} is not allowed; allowed: a list of terms")
    for k in ("frame_lexical", "frame_semantic"):
        if not (isinstance(prompt[k], (int, float)) and 0 <= prompt[k] <= 1):
            raise PolicyError(f"[prompt] {k}={prompt[k]!r} is not allowed; allowed: a number in [0, 1]")
    for k in ("steps", "chunk_words", "opposing_window", "negation_window"):
        if not isinstance(prompt[k], int) or prompt[k] < 1:
            raise PolicyError(f"[prompt] {k}={prompt[k]!r} is not allowed; allowed: an integer >= 1")
    for k in ("l2", "benign_weight"):
        if not isinstance(prompt[k], (int, float)) or prompt[k] < 0:
            raise PolicyError(f"[prompt] {k}={prompt[k]!r} is not allowed; allowed: a number >= 0")
    for k, lo_hi in (("gate", (-1, 1)), ("benign_margin", (0, 2))):
        pair = prompt[k]
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(g, (int, float)) for g in pair)
                and lo_hi[0] <= pair[0] <= pair[1] <= lo_hi[1]):
            raise PolicyError(f"[prompt] {k}={pair!r} is not allowed; allowed: [low, high] cosines, "
                              f"{lo_hi[0]} <= low <= high <= {lo_hi[1]}")
    frames = dict(data.get("frames") or {})
    _check_keys(frames, FRAME_KEYS, "[frames]")
    frames.setdefault("batch_size", 16)
    classifiers = []
    for c in frames.get("classifiers") or []:
        c = dict(c)
        base = Path(c.pop("_base", str(HERE)))
        c["model"] = _resolve_model(c.get("model"), base)
        classifiers.append(c)
    frames["classifiers"] = classifiers

    ex_cats, benign = {}, list(data.get("benign_exemplars") or [])
    for f in data.get("_exemplar_files") or []:
        cats, ben = _exemplar_file(Path(f))
        for cid, items in cats.items():
            ex_cats.setdefault(cid, []).extend(items)
        benign.extend(ben)
    categories = {}
    for cid, t in (data.get("categories") or {}).items():
        _check_keys(t, CATEGORY_KEYS, f"[categories.{cid}]")
        if t.get("enabled", True) is False:
            continue
        action = t.get("action", "block")
        if action not in ACTIONS:
            raise PolicyError(f"[categories.{cid}] action={action!r} is not allowed; allowed: {', '.join(ACTIONS)} "
                              f"(enabled = false switches a category off)")
        for k in ("threshold", "frame_threshold"):
            v = t.get(k)
            if v is not None and not (isinstance(v, (int, float)) and 0 < v <= 1):
                raise PolicyError(f"[categories.{cid}] {k}={v!r} is not allowed; allowed: a number in (0, 1]")
        combos = []
        for i, c in enumerate(t.get("combos") or []):
            _check_keys(c, COMBO_KEYS, f"[[categories.{cid}.combos]] #{i + 1}")
            groups = c.get("groups") or []
            if len(groups) < 2 or not all(isinstance(g, list) and g for g in groups):
                raise PolicyError(f"[[categories.{cid}.combos]] #{i + 1}: groups must be two or more non-empty "
                                  f"lists of terms")
            combos.append(Combo([list(map(str, g)) for g in groups], int(c.get("window", 8))))
        exemplars = list(ex_cats.get(cid, [])) + [e for e in t.get("exemplars") or [] if e not in ex_cats.get(cid, [])]
        categories[cid] = Category(cid, str(t.get("label", cid)), action, float(t.get("threshold", 0.5)),
                                   None if t.get("frame_threshold") is None else float(t["frame_threshold"]),
                                   [str(x) for x in t.get("terms") or []], [str(x) for x in t.get("except") or []],
                                   combos, exemplars, bool(t.get("framable", True)), bool(t.get("negatable", True)))
    for c in classifiers:
        for idx, cat in (c.get("outputs") or {}).items():
            if cat not in categories and cat not in (data.get("categories") or {}):
                raise PolicyError(f"frame classifier {c.get('name', '?')!r} maps output {idx} to category {cat!r}, "
                                  f"which the policy does not define; defined: {', '.join(sorted(categories))}")
    return Policy(str(data.get("name", "custom")), str(data.get("version", "0")), categories, benign, prompt, frames,
                  sources)


_cache: dict = {}
_lock = threading.Lock()


def _stamp(path: Path):
    try:
        st = path.stat()
        return (str(path), st.st_mtime_ns, st.st_size)
    except OSError:
        return (str(path), None, None)


def load_policy(path: PolicySpec = None) -> Policy:
    """The policy in effect: the default merged with ``path`` (a file, or a dict with the same layout), or with the
    file named by ``SPACETIME_SAFETY_POLICY`` when ``path`` is None. A Policy is returned as is. Cached until the
    files change."""
    if isinstance(path, Policy):
        return path
    base = _read(DEFAULT_POLICY)
    over_path = None
    if path is None and os.environ.get(ENV_POLICY):
        path = os.environ[ENV_POLICY]
    if isinstance(path, dict):
        key = ("dict", json.dumps(path, sort_keys=True, default=str), _stamp(DEFAULT_POLICY))
    else:
        if path is not None:
            over_path = Path(path).expanduser()
            if not over_path.is_file():
                raise PolicyError(f"safety policy {str(path)!r} was not found (from "
                                  f"{'SPACETIME_SAFETY_POLICY' if path == os.environ.get(ENV_POLICY) else 'path'}); "
                                  f"allowed: a .toml or .json file")
        key = (_stamp(DEFAULT_POLICY), _stamp(over_path) if over_path else None)
    with _lock:
        if key in _cache:
            return _cache[key]
    data = dict(base)
    data["_exemplar_files"] = [str(HERE / base["exemplars"])] if base.get("exemplars") else []
    data.pop("exemplars", None)
    sources = [DEFAULT_POLICY.name]
    if isinstance(path, dict):
        data = _merge(data, path, HERE, Path.cwd())
        sources.append("(given)")
    elif over_path is not None:
        data = _merge(data, _read(over_path), HERE, over_path.parent)
        sources.append(over_path.name)
    data.pop("exemplars", None)
    policy = _build(data, sources)
    with _lock:
        _cache[key] = policy
    return policy
