"""Text normalisation for the prompt classifier: undo the tricks people use to slip words past a filter.

* **Case and compatibility forms**: Unicode NFKC (full-width letters, ligatures, circled and styled letters) and
  case folding.
* **Homoglyphs**: Cyrillic, Greek and other letters that look like Latin ones are mapped to them; accents and other
  combining marks are dropped; zero-width and other invisible characters are removed.
* **Leetspeak**: digits and symbols inside words (``n4k3d``, ``$ex``, ``k!ll``) become letters. A token made only of
  digits (``1990``, ``17``) is left alone, so ages and years keep their meaning.
* **Spacing and punctuation**: letters split by spaces, dots, dashes or underscores (``g o r e``, ``g.o.r.e``,
  ``n-u-d-e``) are joined back into one word. When such a run spans several words (``a n u d e k i d``), ``segment``
  splits it again at the words of a vocabulary (the policy's terms): ``a nude kid``.

``normalize(text)`` returns the clean text; ``normalize_runs`` also returns the joined runs. The lexical layer
matches on the segmented text and on ``squashed_words`` of it (punctuation inside words removed); repeated letters
(``kiiill``) and letters masked with ``*`` (``p*rn``) are handled by its patterns. The semantic layer embeds the
segmented text.
"""
from __future__ import annotations

import re
import unicodedata

# Look-alike letters -> Latin. Cyrillic and Greek first (the common homoglyph attacks), then a few others.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d", "ɡ": "g", "һ": "h", "ӏ": "l", "ո": "n",
    "ԛ": "q", "ԝ": "w", "ү": "y", "ь": "b", "ъ": "b", "з": "3", "п": "n", "г": "r", "л": "n", "и": "u", "д": "d",
    "ц": "u", "ш": "w", "щ": "w", "я": "r", "ф": "o", "б": "6", "ч": "4",
    # Greek
    "α": "a", "β": "b", "γ": "y", "δ": "d", "ε": "e", "ζ": "z", "η": "n", "θ": "o", "ι": "i", "κ": "k", "λ": "l",
    "μ": "u", "ν": "v", "ξ": "e", "ο": "o", "π": "n", "ρ": "p", "σ": "o", "ς": "c", "τ": "t", "υ": "u", "φ": "o",
    "χ": "x", "ψ": "w", "ω": "w",
    # Latin extensions and symbols that pass NFKC unchanged
    "ı": "i", "ȷ": "j", "ł": "l", "ø": "o", "đ": "d", "ħ": "h", "ß": "ss", "æ": "ae", "œ": "oe", "þ": "p",
    "ð": "d", "ŋ": "n", "ɑ": "a", "ɛ": "e", "ɪ": "i", "ʏ": "y", "ɴ": "n", "ʀ": "r", "ᴀ": "a", "ʙ": "b", "ᴄ": "c",
    "ᴅ": "d", "ᴇ": "e", "ɢ": "g", "ʜ": "h", "ᴊ": "j", "ᴋ": "k", "ʟ": "l", "ᴍ": "m", "ᴏ": "o", "ᴘ": "p", "ᴛ": "t",
    "ᴜ": "u", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z", "ⅰ": "i", "ⅼ": "l", "∪": "u", "∨": "v", "×": "x",
}

# Capital look-alikes, mapped before case folding (a capital Greek nu looks like N, its small form like v).
_UPPER_HOMOGLYPHS = {
    "Α": "a", "Β": "b", "Ε": "e", "Ζ": "z", "Η": "h", "Ι": "i", "Κ": "k", "Μ": "m", "Ν": "n", "Ο": "o", "Ρ": "p",
    "Τ": "t", "Υ": "y", "Χ": "x", "А": "a", "В": "b", "Е": "e", "Ё": "e", "К": "k", "М": "m", "Н": "h", "О": "o",
    "Р": "p", "С": "c", "Т": "t", "У": "y", "Х": "x", "Ѕ": "s", "І": "i", "Ј": "j", "Ԛ": "q", "Ԝ": "w", "Ү": "y",
    "Ӏ": "i", "З": "3", "Ь": "b",
}

# Leetspeak: characters standing for letters inside words. "1" and "|" are ambiguous (i or l); "i" is used.
_LEET = {"0": "o", "1": "i", "2": "z", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
         "@": "a", "$": "s", "!": "i", "|": "i", "+": "t", "€": "e", "£": "l", "¡": "i", "(": "c", "<": "c",
         "¥": "y", "%": "x", "#": "h", "*": "*", "^": "a"}     # "*" stays: a masked letter (see lexical)
_LEET_CHARS = "".join(re.escape(c) for c in _LEET)
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0]")
# A token: letters with leet characters among them (at least one letter), or a plain run of non-space.
_WORDISH = re.compile(rf"[a-z{_LEET_CHARS}0-9']+")
_SPACED = re.compile(r"(?<![a-z0-9])(?:[a-z0-9@$!|+*](?:[ .\-_/\\~·•,]{1,3})){2,}[a-z0-9@$!|+*](?![a-z0-9])")


def fold(text: str) -> str:
    """NFKC, case folding, homoglyphs to Latin, accents and invisible characters removed."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", str(text)))
    text = "".join(_UPPER_HOMOGLYPHS.get(ch, ch) for ch in text).casefold()
    text = "".join(_HOMOGLYPHS.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if not unicodedata.combining(ch))


# Tokens that mix digits and letters for real: sizes, units, decades, codecs, model names ("3d", "4k", "1080p",
# "35mm", "60fps", "1990s", "17yo", "mp4", "f1").
_TECHNICAL = re.compile(r"^(?:\d+(?:d|k|p|s|x|th|st|nd|rd|fps|mm|cm|km|kg|hz|khz|yo|am|pm|ft|m|gb|mb|hp|mph|kmh|"
                        r"min|sec|h|v|w|bit)|[a-z]\d{1,4}|mp[34]|[hx]26[45]|r2d2|c3po|\d+:\d+)$")


def _deleet_token(tok: str) -> str:
    letters = sum(ch.isalpha() for ch in tok)
    if letters == 0 or _TECHNICAL.match(tok):
        return tok                                  # numbers, ages, years and units stay as they are
    if all(ch.isalpha() or ch == "'" for ch in tok):
        return tok
    core = tok.strip("'")
    # Trailing sentence punctuation ("wow!", "what?!") is punctuation, not leet.
    tail = re.search(r"[!|.]+$", core)
    end = ""
    if tail and sum(ch.isalpha() for ch in core[:tail.start()]) >= 2 and not any(
            ch in _LEET for ch in core[:tail.start()] if not ch.isalnum()):
        core, end = core[:tail.start()], " "
    out = "".join(_LEET.get(ch, ch) if not ch.isalpha() else ch for ch in core)
    return out + end


def normalize_runs(text: str) -> tuple[str, list]:
    """(clean text, the joined spelled-out runs as they appear in it)."""
    t = fold(text)
    runs = []

    def join(match: re.Match) -> str:
        joined = re.sub(r"[ .\-_/\\~·•,]", "", match.group(0))
        runs.append(joined)
        return joined
    t = _SPACED.sub(join, t)
    t = _WORDISH.sub(lambda m: _deleet_token(m.group(0)), t)
    runs = [_deleet_token(r) for r in runs]
    return re.sub(r"\s+", " ", t).strip(), runs


def normalize(text: str) -> str:
    """Clean text: folded, spaced-out words joined, leetspeak undone, whitespace collapsed."""
    return normalize_runs(text)[0]


def segment(text: str, runs, vocabulary) -> str:
    """Split each joined run at the vocabulary words found inside it (longest first, no overlaps):
    ``anudekid`` -> ``a nude kid``. Other text is unchanged."""
    vocab = sorted({v for v in vocabulary if len(v) >= 3}, key=len, reverse=True)
    for run in dict.fromkeys(runs):
        if len(run) < 4 or not vocab:
            continue
        taken = [False] * len(run)
        cuts = set()
        for v in vocab:
            start = run.find(v)
            while start >= 0:
                if not any(taken[start:start + len(v)]):
                    taken[start:start + len(v)] = [True] * len(v)
                    cuts.update((start, start + len(v)))
                start = run.find(v, start + 1)
        if not cuts:
            continue
        bounds = sorted(cuts | {0, len(run)})
        pieces = " ".join(run[a:b] for a, b in zip(bounds, bounds[1:]) if a < b)
        text = re.sub(rf"(?<![a-z0-9]){re.escape(run)}(?![a-z0-9])", pieces, text)
    return text


def words(text: str) -> list[str]:
    """The words of normalised text (letters, digits, apostrophes and masking asterisks)."""
    return re.findall(r"[a-z0-9'*]+", text)


def squashed_words(text: str) -> str:
    """Normalised text with punctuation inside words removed (``s.e.x`` and ``s-e-x`` become ``sex``), words still
    separated by single spaces."""
    t = re.sub(r"(?<=[a-z0-9*])[.\-_'](?=[a-z0-9*])", "", text)
    return " ".join(words(t))
