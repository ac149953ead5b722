"""The prompt classifier: normalisation, lexical layer, semantic layer, policy decision."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Optional

from ..model.errors import SpacetimeValueError
from . import lexical
from .normalize import normalize_runs, segment
from .policy import SEVERITY, PolicySpec, load_policy


class PromptBlockedError(SpacetimeValueError):
    """A prompt the policy blocks. ``verdict`` holds the full PromptVerdict."""

    def __init__(self, verdict: "PromptVerdict"):
        super().__init__(f"prompt blocked by the safety policy: {verdict.summary()}")
        self.verdict = verdict


@dataclass
class PromptVerdict:
    verdict: str                               # allow | warn | block
    categories: list                           # categories at or above their threshold
    scores: dict                               # category -> combined score 0..1
    evidence: list                             # matched terms and nearest exemplars
    labels: dict = field(default_factory=dict)  # category -> human label
    actions: dict = field(default_factory=dict)  # fired category -> block | warn
    layers: dict = field(default_factory=dict)  # category -> {"lexical": x, "semantic": y}
    policy: str = ""
    policy_version: str = ""
    prompt_sha256: str = ""
    semantic: bool = True

    @property
    def blocked(self) -> bool:
        return self.verdict == "block"

    def summary(self) -> str:
        """One line naming the categories (for messages such as "prompt blocked by the safety policy: ...")."""
        if not self.categories:
            top = max(self.scores, key=self.scores.get, default=None)
            return "no policy category reached its threshold" + (
                f" (highest: {top} {self.scores[top]:.2f})" if top else "")
        return "; ".join(f"{self.labels.get(c, c)} ({c} {self.scores[c]:.2f}, {self.actions[c]})"
                         for c in self.categories)

    def to_dict(self) -> dict:
        return {"kind": "prompt", "blocked": self.blocked, "verdict": self.verdict, "summary": self.summary(),
                "categories": list(self.categories), "labels": {c: self.labels[c] for c in self.categories},
                "scores": {c: round(s, 4) for c, s in self.scores.items()},
                "layers": {c: {k: round(v, 4) for k, v in d.items()} for c, d in self.layers.items()},
                "evidence": list(self.evidence), "policy": self.policy, "policy_version": self.policy_version,
                "prompt_sha256": self.prompt_sha256, "semantic": self.semantic}


_vocab_cache: dict = {}


def _vocabulary(pol) -> set:
    key = pol.digest()
    if key not in _vocab_cache:
        _vocab_cache[key] = lexical.vocabulary(pol.categories.values())
    return _vocab_cache[key]


def _negation(pol) -> lexical.Negation:
    p = pol.prompt
    gap = frozenset(w for t in p["negation_gap"] for w in t.lower().split())
    return lexical.Negation(tuple(p["negations"]), gap, int(p["negation_window"]))


def _semantic_text(text: str, pol) -> str:
    """The text the semantic layer embeds: phrases the policy declares harmless ("naked eye", "nude heels") are
    taken out, so their words do not pull the embedding towards a category, and so are negated harms ("no
    nudity", "without any blood or gore": a negation, then a term of a negatable category or a ``[prompt]
    negatable`` word), which the encoder would otherwise read as naming them."""
    spans = []
    for cat in pol.categories.values():
        spans += [(h.start, h.end) for h in lexical.find_terms(text, cat.exceptions)]
    harms = tuple(pol.prompt["negatable"]) + tuple(t for c in pol.categories.values() if c.negatable
                                                   for t in lexical.category_terms(c))
    spans += _negation(pol).spans(text, lexical.find_terms(text, harms))
    if not spans:
        return text
    out, pos = [], 0
    for a, b in sorted(spans):
        if a >= pos:
            out.append(text[pos:a])
            pos = b
        else:
            pos = max(pos, b)
    out.append(text[pos:])
    cleaned = " ".join("".join(out).split())
    return cleaned or text


def _frame(norm: str, pol) -> str:
    """The first acceptable-frame term of the prompt (news, a lesson, a museum, a vigil, care: ``[prompt] frames``)
    when none of ``[prompt] frame_breakers`` (graphic, explicit, a tutorial, glorifying ...) is there, else ""."""
    hits = lexical.find_terms(norm, pol.prompt["frames"]) if pol.prompt["frames"] else []
    if not hits or lexical.find_terms(norm, pol.prompt["frame_breakers"]):
        return ""
    return hits[0].text


def check_prompt(text: str, policy: PolicySpec = None, semantic: Optional[bool] = None) -> PromptVerdict:
    """Judge one prompt against the policy (default: the shipped policy merged with ``SPACETIME_SAFETY_POLICY``).
    ``semantic=False`` uses the lexical layer only (no MiniLM)."""
    if not isinstance(text, str):
        raise SpacetimeValueError(f"prompt of type {type(text).__name__} is not allowed; allowed: a string")
    pol = load_policy(policy)
    norm, runs = normalize_runs(text)
    if runs:
        norm = segment(norm, runs, _vocabulary(pol))
    use_sem = pol.prompt.get("semantic", True) if semantic is None else bool(semantic)
    lex_scores, evidence = {}, []
    negation = _negation(pol)
    for cid, cat in pol.categories.items():
        ev = lexical.match_category(norm, cat, pol.prompt["opposing"], pol.prompt["opposing_window"], negation)
        lex_scores[cid] = max((e["score"] for e in ev), default=0.0)
        evidence += ev
    sem_scores = {c: 0.0 for c in pol.categories}
    if use_sem and norm.strip():
        from .semantic import semantic_scores
        sem_scores, sem_ev = semantic_scores(_semantic_text(norm, pol), pol)
        evidence += [e for e in sem_ev if e["score"] >= 0.05]
    frame = _frame(norm, pol)
    if frame:
        evidence.append({"category": None, "layer": "context", "rule": "frame", "match": frame, "score": 0.0})
    scores, layers, fired, actions = {}, {}, [], {}
    for cid, cat in pol.categories.items():
        lx, sm = lex_scores.get(cid, 0.0), sem_scores.get(cid, 0.0)
        if frame and cat.framable:
            lx, sm = lx * pol.prompt["frame_lexical"], sm * pol.prompt["frame_semantic"]
        scores[cid] = 1.0 - (1.0 - lx) * (1.0 - sm)            # noisy-OR of the two layers
        layers[cid] = {"lexical": lx, "semantic": sm}
        if scores[cid] >= cat.threshold:
            fired.append(cid)
            actions[cid] = cat.action
    fired.sort(key=lambda c: (-SEVERITY[actions[c]], -scores[c]))
    verdict = max((actions[c] for c in fired), key=SEVERITY.get, default="allow")
    return PromptVerdict(verdict, fired, scores, evidence, {c: pol.label(c) for c in pol.categories}, actions,
                         layers, pol.name, pol.version, hashlib.sha256(text.encode("utf-8")).hexdigest(), use_sem)
