"""Semantic layer: all-MiniLM-L6-v2 sentence embeddings of the prompt against the policy's exemplars.

Every exemplar (violating ones labelled with their category, benign counter-exemplars labelled "benign") is embedded
once, and a softmax regression (a linear probe on the 384-d sentence vectors) is trained on them: classes are the
policy's categories plus "benign", each weighted equally. A category's score is the probe's probability for it,
scaled down when the category's nearest exemplar is far (the ``gate`` cosines), so text unlike anything in the
exemplars is not judged by extrapolation. Because the benign counter-exemplars sit right next to the violating
ones ("a knife slicing bread" beside "a man stabbing a woman"), the probe learns the difference rather than the
topic. The evidence names the nearest exemplar of the category and the nearest benign one.

Long prompts are also judged in overlapping windows of ``chunk_words`` words and per sentence, and the highest
score counts, so a violating sentence cannot hide inside a long benign description.

The encoder is the project's own BERT forward (``model.text_encoders.load_minilm``). The exemplar embeddings are
cached in the user cache folder (a plain .npy array, keyed by the exemplars and the weight file).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

BENIGN = "benign"
_lock = threading.Lock()
_indexes: dict = {}


def cache_dir() -> Path:
    env = os.environ.get("SPACETIME_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "spacetime" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "spacetime"


@contextmanager
def _few_threads(n_texts: int):
    """Small batches run on one thread: the model is tiny, and on a busy CPU extra threads mostly wait for each
    other (measured: 6 ms with one thread against 470 ms with two, for one prompt beside a training job)."""
    import torch
    before = torch.get_num_threads()
    if n_texts <= 16 and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def embed(texts: list[str], batch: int = 64) -> np.ndarray:
    """[N, 384] float32 unit vectors."""
    import torch
    from ..model.text_encoders import load_minilm
    enc = load_minilm()
    out = []
    with _few_threads(len(texts)), torch.inference_mode():
        for i in range(0, len(texts), batch):
            out.append(enc.sentence_embedding(list(texts[i:i + batch])).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def _weights_key() -> str:
    try:
        from ..model.embedded import minilm_dir
        f = minilm_dir() / "model.safetensors"
        st = f.stat()
        return f"{f.name}:{st.st_size}:{st.st_mtime_ns}"
    except Exception:          # noqa: BLE001 (the encoder itself will raise a clear error)
        return "unknown"


class ExemplarIndex:
    """Embedded exemplars of one policy."""

    def __init__(self, policy):
        texts, labels = [], []
        for cid, cat in policy.categories.items():
            for t in cat.exemplars:
                texts.append(t)
                labels.append(cid)
        for t in policy.benign:
            texts.append(t)
            labels.append(BENIGN)
        self.texts, self.labels = texts, np.array(labels)
        self.categories = list(policy.categories)
        self.settings = dict(policy.prompt)
        self._vectors = None
        self._probe = None

    @property
    def vectors(self) -> np.ndarray:
        if self._vectors is None:
            self._vectors = self._load_or_embed()
        return self._vectors

    def _load_or_embed(self) -> np.ndarray:
        from .normalize import normalize
        norm = [normalize(t) for t in self.texts]
        key = hashlib.sha256(("\n".join(norm) + "\0" + _weights_key()).encode()).hexdigest()[:24]
        path = cache_dir() / f"safety-exemplars-{key}.npy"
        try:
            vec = np.load(path, allow_pickle=False)
            if vec.shape == (len(norm), 384) and vec.dtype == np.float32:
                return vec
        except (OSError, ValueError):
            pass
        vec = embed(norm).astype(np.float32)
        _save(path, vec)
        return vec

    @property
    def probe(self) -> np.ndarray:
        """[385, C + 1] weights (last row: bias) of a softmax regression over the categories and "benign",
        trained on the exemplar embeddings (balanced classes, the benign one weighted ``benign_weight``, L2 ``l2``,
        ``steps`` steps of momentum gradient descent: deterministic, about a second). Cached next to the
        embeddings."""
        if self._probe is None:
            key = hashlib.sha256(self.vectors.tobytes() + "|".join(self.labels).encode()
                                 + f"{self.settings['l2']}:{self.settings['steps']}:{self.settings['benign_weight']}"
                                 .encode()).hexdigest()[:24]
            path = cache_dir() / f"safety-probe-{key}.npy"
            try:
                w = np.load(path, allow_pickle=False)
                if w.shape == (self.vectors.shape[1] + 1, len(self.classes)):
                    self._probe = w
                    return w
            except (OSError, ValueError):
                pass
            self._probe = train_probe(self.vectors, self.targets, len(self.classes), float(self.settings["l2"]),
                                      int(self.settings["steps"]), float(self.settings["benign_weight"]))
            _save(path, self._probe)
        return self._probe

    @property
    def classes(self) -> list:
        return self.categories + [BENIGN]

    @property
    def targets(self) -> np.ndarray:
        return np.array([self.classes.index(lb) for lb in self.labels], dtype=np.int64)

    def score(self, vectors: np.ndarray, probe: np.ndarray = None, exclude=None) -> tuple[np.ndarray, list]:
        """Per query vector: [Q, C] category probabilities (benign left out), gated by the similarity of the
        nearest exemplar of each category; and per query the nearest exemplar (index, cosine) per category and of
        the benign set. ``probe`` / ``exclude`` (a boolean mask of exemplars to ignore): for cross-validation."""
        w = self.probe if probe is None else probe
        x = np.hstack([vectors, np.ones((len(vectors), 1), vectors.dtype)]).astype(np.float64)
        p = softmax(x @ w)[:, :len(self.categories)]
        sims = vectors @ self.vectors.T
        if exclude is not None:
            sims = np.where(exclude[None, :], -2.0, sims)
        lo, hi = (float(v) for v in self.settings["gate"])
        near, far = (float(v) for v in self.settings.get("benign_margin", (1.0, 2.0)))
        nearest = [dict() for _ in range(len(vectors))]
        best = np.full((len(self.classes), len(vectors)), -2.0)
        for ci, c in enumerate(self.classes):
            idx = np.nonzero(self.labels == c)[0]
            if not len(idx):
                continue
            j = idx[np.argmax(sims[:, idx], axis=1)]
            best[ci] = sims[np.arange(len(vectors)), j]
            for q in range(len(vectors)):
                nearest[q][c] = (int(j[q]), float(best[ci, q]))
        for ci in range(len(self.categories)):
            p[:, ci] *= np.clip((best[ci] - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
            # a benign exemplar much nearer than any of the category's: the probe is extrapolating
            lead = best[-1] - best[ci]
            p[:, ci] *= np.clip((far - lead) / max(far - near, 1e-6), 0.0, 1.0)
        return p, nearest


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train_probe(x: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-4, steps: int = 400,
                benign_weight: float = 2.0, lr: float = 2.0, momentum: float = 0.9) -> np.ndarray:
    """Softmax regression with class-balanced weights (each category counts as much as any other, however many
    exemplars it has, and the benign class ``benign_weight`` times as much; the benign class is the last),
    Nesterov momentum gradient descent from zero weights."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))]).astype(np.float64)
    onehot = np.eye(classes)[y]
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weight = (1.0 / np.maximum(counts, 1))[y]
    weight[y == classes - 1] *= benign_weight
    weight /= weight.sum()
    w, m = np.zeros((d + 1, classes)), np.zeros((d + 1, classes))
    decay = np.ones((d + 1, 1))
    decay[-1] = 0.0                                            # no penalty on the bias
    for _ in range(steps):
        look = w + momentum * m
        grad = xb.T @ ((softmax(xb @ look) - onehot) * weight[:, None]) + l2 * decay * look
        m = momentum * m - lr * grad
        w = w + m
    return w


def _save(path: Path, arr: np.ndarray):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass                              # a read-only home: compute again next time


def index_for(policy) -> ExemplarIndex:
    key = policy.digest()
    with _lock:
        if key not in _indexes:
            _indexes[key] = ExemplarIndex(policy)
        return _indexes[key]


def units(normalized: str, chunk_words: int) -> list[str]:
    """The whole prompt, and for long prompts its sentences and overlapping windows of ``chunk_words`` words."""
    words = normalized.split()
    out = [normalized]
    if len(words) > chunk_words:
        for s in re.split(r"(?<=[.!?;:])\s+|\n+", normalized):
            if 2 < len(s.split()) and s != normalized:
                out.append(s)
        step = max(1, chunk_words // 2)
        for i in range(0, len(words) - step, step):
            out.append(" ".join(words[i:i + chunk_words]))
    return list(dict.fromkeys(out))


def semantic_scores(normalized: str, policy) -> tuple[dict, list]:
    """({category: score}, evidence) for one normalised prompt."""
    index = index_for(policy)
    if not index.texts or not normalized.strip():
        return {c: 0.0 for c in policy.categories}, []
    parts = units(normalized, int(policy.prompt["chunk_words"]))
    shares, nearest = index.score(embed(parts))
    best = shares.argmax(axis=0)                               # the unit that scores highest, per category
    scores, evidence = {}, []
    for ci, c in enumerate(index.categories):
        q = int(best[ci])
        scores[c] = float(shares[q, ci])
        if c in nearest[q]:
            j, s = nearest[q][c]
            ev = {"category": c, "layer": "semantic", "score": round(scores[c], 4), "nearest": index.texts[j],
                  "similarity": round(s, 4)}
            if BENIGN in nearest[q]:
                jb, sb = nearest[q][BENIGN]
                ev.update(nearest_benign=index.texts[jb], benign_similarity=round(sb, 4))
            if len(parts) > 1 and q > 0:
                ev["window"] = q
            evidence.append(ev)
    return scores, evidence
