"""Lexical layer: the policy's terms and term combinations, matched on normalised text.

Each term becomes a regular expression over whole words: words of a phrase may be joined by any run of non-letters
or by nothing ("child porn", "child-porn", "childporn"), a trailing ``*`` takes any word ending, ``re:`` gives a raw
expression. Matching runs on two views of the normalised prompt (``normalize.normalize`` and its squashed form),
so spacing, punctuation, leetspeak, homoglyph and case tricks are undone before any term is looked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .normalize import squashed_words

_B0, _B1 = r"(?<![a-z0-9])", r"(?![a-z0-9])"


def _letters(word: str) -> str:
    """A word as a pattern: each letter may repeat ("kiiill") or be masked by "*" ("p*rn")."""
    out = []
    for ch in word:
        if ch.isalpha():
            out.append(f"(?:{ch}+|\\*)")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def term_regex(term: str) -> str:
    term = term.strip().lower()
    if term.startswith("re:"):
        return _B0 + "(?:" + term[3:] + ")" + _B1
    parts = []
    for word in term.split():
        star = word.endswith("*")
        word = word.rstrip("*")
        pieces = [_letters(p) for p in re.split(r"[-']", word)]
        parts.append(r"[-' ]?".join(pieces) + (r"[a-z0-9]*" if star else ""))
    return _B0 + r"[^a-z0-9*]*".join(parts) + _B1


def vocabulary(categories) -> set:
    """Every plain word and phrase of the policy's terms, combinations and exceptions, spaces removed (for
    ``normalize.segment``)."""
    out = set()
    for c in categories:
        for t in list(c.terms) + list(c.exceptions) + [t for combo in c.combos for g in combo.groups for t in g]:
            if not t.startswith("re:"):
                out.add(re.sub(r"[^a-z0-9]", "", t.lower().rstrip("*")))
    return out


@lru_cache(maxsize=256)
def _compiled(terms: tuple) -> re.Pattern:
    if not terms:
        return re.compile(r"(?!x)x")
    return re.compile("|".join(f"(?P<t{i}>{term_regex(t)})" for i, t in enumerate(terms)))


@dataclass
class Hit:
    term: str
    text: str
    start: int
    end: int


def find_terms(text: str, terms) -> list[Hit]:
    terms = tuple(terms)
    out = []
    for m in _compiled(terms).finditer(text):
        idx = int(m.lastgroup[1:])
        hit = m.group(0)
        if hit.count("*") * 3 > sum(ch.isalpha() for ch in hit):
            continue                             # mostly masked: "****" is not every four-letter term
        out.append(Hit(terms[idx], hit, m.start(), m.end()))
    return out


def _word_index(text: str, pos: int) -> int:
    return len(re.findall(r"[a-z0-9'*]+", text[:pos]))


def views(normalized: str) -> list[str]:
    sq = squashed_words(normalized)
    return [normalized] if sq == normalized else [normalized, sq]


@dataclass(frozen=True)
class Negation:
    """``[prompt] negations``: a negation ("no", "without", "nobody") followed by at most ``window`` words, all of
    them ``gap`` words ("any", "a", "is", "or" ...) and no punctuation, negates the term that comes next ("no
    nudity", "without any blood or gore", "nobody is naked"), so "no mercy killing", "nothing but naked bodies"
    and "nothing, naked" negate nothing."""
    words: tuple = ()
    gap: frozenset = frozenset()
    window: int = 3

    def spans(self, view: str, hits: list[Hit]) -> list[tuple[int, int]]:
        """(start, end) of every negated hit, with the negation in front of it."""
        if not self.words or not hits:
            return []
        tokens = [(m.start(), m.end(), m.group(0)) for m in re.finditer(r"[a-z0-9'*]+", view)]
        negs = find_terms(view, self.words)
        out, reach = [], []                  # reach: where a negation's scope may go on (after a negated term)
        for h in sorted(hits, key=lambda x: x.start):
            for start, end in [(n.start, n.end) for n in negs] + reach:
                between = [w for a, b, w in tokens if a >= end and b <= h.start]
                if (end <= h.start and len(between) <= self.window and all(w in self.gap for w in between)
                        and not re.search(r"[,.;:!?]", view[end:h.start])):
                    out.append((start, h.end))
                    reach.append((start, h.end))
                    break
        return out


def negated(h: Hit, spans) -> bool:
    return any(s <= h.start and h.end <= e for s, e in spans)


def match_category(normalized: str, category, opposing=(), window: int = 3, negation: Negation = Negation()
                   ) -> list[dict]:
    """Evidence dicts for every term and combination of ``category`` found in the normalised text. A hit inside
    one of the category's exceptions does not count, nor one that an ``opposing`` term ("against", "anti",
    "prevention", ...) precedes by at most ``window`` words (the harm is named in order to oppose it), nor, in a
    category whose ``negatable`` is not false, one that ``negation`` negates ("no nudity")."""
    evidence, seen = [], set()
    for view in views(normalized):
        excepted = [(h.start, h.end) for h in find_terms(view, category.exceptions)]
        opposed = [(_word_index(view, h.end), h.end) for h in find_terms(view, opposing)] if opposing else []
        negs = negation.spans(view, find_terms(view, category_terms(category))) if category.negatable else []

        def allowed(h: Hit) -> bool:
            if any(s <= h.start < e or s < h.end <= e for s, e in excepted) or negated(h, negs):
                return False
            first = _word_index(view, h.start)
            return not any(end <= h.start and first - word < window for word, end in opposed)
        for h in find_terms(view, category.terms):
            if allowed(h) and ("term", h.text) not in seen:
                seen.add(("term", h.text))
                evidence.append({"category": category.id, "layer": "lexical", "rule": "term", "match": h.text,
                                 "term": h.term, "score": 1.0})
        for combo in category.combos:
            found = []
            for group in combo.groups:
                hits = [h for h in find_terms(view, group) if allowed(h)]
                found.append([(_word_index(view, h.start), h) for h in hits])
            if not all(found):
                continue
            best = _closest(found, combo.window)
            if best is not None:
                key = ("combo", tuple(h.text for h in best))
                if key not in seen:
                    seen.add(key)
                    evidence.append({"category": category.id, "layer": "lexical", "rule": "combination",
                                     "match": " + ".join(h.text for h in best),
                                     "term": " + ".join(h.term for h in best), "score": 1.0})
    return evidence


def category_terms(category) -> tuple:
    return tuple(category.terms) + tuple(t for combo in category.combos for g in combo.groups for t in g)


def _closest(found: list, window: int):
    """One hit per group, all within ``window`` words, or None."""
    anchors = found[0]
    for pos, hit in anchors:
        chosen = [hit]
        for group in found[1:]:
            near = [(abs(p - pos), h) for p, h in group if abs(p - pos) <= window and h.start != hit.start]
            if not near:
                break
            chosen.append(min(near, key=lambda x: x[0])[1])
        else:
            return chosen
    return None
