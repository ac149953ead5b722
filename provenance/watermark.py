"""Invisible video watermark: a 64-bit code word hidden in the luma of every video, read back by a vote across cells
and frames.

Why our own scheme: H.264 removes small, spread-out changes (its dead-zone quantiser zeroes weak coefficients), so
classic spread-spectrum and DWT/DCT-coefficient schemes fade after one re-encode, and an additive pattern fights the
picture itself (host interference). What survives best per unit of distortion is the mean of a patch of pixels,
held still over several frames, and quantisation index modulation (QIM) on that mean is blind to the picture.

New marks use **v3** (``wm_smooth``: a smooth field, static over segments of 4 frames, the word spread over cells and
time; at most 0.98 luma levels between neighbouring pixels, at least 42.3 dB). Frames too small for v3 (single images
under 64x64, clips under 32x32) get the block scheme **v1**; marks of v1 and of the bump scheme **v2** are still read
(``wm_legacy``). The code word (``wm_code``): 8-bit generator id + 32-bit content id + CRC-24, Chase-decoded.

Luma here is full-range BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in 0..255. Encoders store it as the limited-range
Y plane ``16 + 219/255 * L``; ``provenance.video`` converts both ways. The schemes need the frame geometry intact:
scaling, cropping or rotation remove the watermark (a known limit).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from . import wm_legacy, wm_smooth
from .wm_code import (CHASE_BITS, CODE_BITS, CONTENT_BITS, CRC_BITS, DEFAULT_GENERATOR,  # noqa: F401 (re-exported)
                      GENERATOR_BITS, GENERATORS, PAYLOAD_BITS, WatermarkError, bits_int, chase, crc24,
                      encode_payload, valid_words)

SCHEME_V1 = SCHEME = wm_legacy.SCHEME_V1
SCHEME_V2 = wm_legacy.SCHEME_V2
SCHEME_V3 = wm_smooth.SCHEME_V3
SCHEMES = (SCHEME_V3, SCHEME_V2, SCHEME_V1)


def scheme_for(height: int, width: int, frames: int = 1) -> str:
    """The scheme a clip of this size and length is marked with: the smooth v3 wherever it can hold the word, else
    the block scheme v1."""
    return SCHEME_V3 if wm_smooth.plan(height, width, frames) else SCHEME_V1


def _check_luma(luma) -> np.ndarray:
    arr = np.asarray(luma, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise WatermarkError(f"luma has shape {tuple(arr.shape)}; allowed: [frames, height, width]")
    return arr


# ----------------------------------------------------------------------------------------------------------------------
# Embed
# ----------------------------------------------------------------------------------------------------------------------

SEGMENT_FRAMES = wm_smooth.SEGMENT     # v3 marks runs of this many frames alike: pieces start on their boundaries


def check_size(height: int, width: int):
    """Refuses frames too small for any scheme (the block scheme v1 takes the smallest)."""
    wm_legacy.cell_shape(height, width)


def settled(height: int, width: int, frames: int) -> bool:
    """True when every longer clip of this frame size is marked as ``frames`` frames are (same scheme, same cells):
    a clip that arrives in pieces can be marked from here on without knowing its final length."""
    return wm_smooth.plan(height, width, frames) == wm_smooth.CELLS[0]


def embed_luma(luma, generator_id: int = DEFAULT_GENERATOR, content_id: int = 0, iterations: int = 3,
               scheme: Optional[str] = None, start: int = 0, frames: Optional[int] = None) -> np.ndarray:
    """Watermarked copy of full-range luma frames [T, H, W] (float, 0..255), with ``scheme`` (default:
    ``scheme_for`` the clip; v1 and v2 can still be asked for, e.g. to compare).

    A clip marked piece by piece (``StampWriter``): ``start`` is the index of the piece's first frame in the clip
    (v3: a multiple of its segment length, 4) and ``frames`` the clip's length, or any length at which it is
    ``settled``; the pieces then carry exactly the mark of the whole clip."""
    y = _check_luma(luma).copy()
    t, h, w = y.shape
    frames = t if frames is None else int(frames)
    scheme = scheme or scheme_for(h, w, frames)
    word = encode_payload(generator_id, content_id)
    if scheme == SCHEME_V3:
        cell = wm_smooth.plan(h, w, frames)
        if cell is None:
            raise WatermarkError(f"{frames} frame(s) of {w}x{h} cannot carry {SCHEME_V3}; allowed: a single frame "
                                 f"of at least 64x64, or clips of at least 32x32 with enough frames (13 at 32x32 "
                                 f"and at 64x64 with 16x16 cells)")
        if start % wm_smooth.SEGMENT:
            raise WatermarkError(f"start={start} is not allowed for {SCHEME_V3}; allowed: a multiple of "
                                 f"{wm_smooth.SEGMENT} (its segment length)")
        return wm_smooth.embed(y, word, cell, passes=iterations, first_segment=start // wm_smooth.SEGMENT)
    if scheme == SCHEME_V2:
        return wm_legacy.embed_v2(y, word, iterations)
    if scheme == SCHEME_V1:
        wm_legacy.cell_shape(h, w)             # refuses frames that are too small
        return wm_legacy.embed_v1(y, word, iterations)
    raise WatermarkError(f"scheme={scheme!r} is not known; allowed: {', '.join(SCHEMES)}")


def rgb_luma(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 luma of RGB frames [..., 3] in 0..255."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def embed_rgb(frames: np.ndarray, generator_id: int = DEFAULT_GENERATOR, content_id: int = 0) -> np.ndarray:
    """Watermarked copy of uint8 RGB frames [T, H, W, 3]: the luma change is added to all three channels, so the
    colour (chroma) is unchanged."""
    rgb = np.asarray(frames)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise WatermarkError(f"frames have shape {tuple(rgb.shape)}; allowed: [frames, height, width, 3]")
    luma = rgb_luma(rgb)
    delta = embed_luma(luma, generator_id, content_id) - luma
    return np.clip(np.round(rgb.astype(np.float64) + delta[..., None]), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------------
# Detect
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class WatermarkResult:
    detected: bool                       # a valid code word of a known generator was read
    generator_id: Optional[int] = None
    generator: Optional[str] = None
    content_id: Optional[int] = None
    bit_agreement: float = 0.0           # share of the bit votes (per frame, or per segment for v3) that agree
    strength: float = 0.0                # mean |vote|, 0 (noise) .. 1 (pristine)
    corrected_bits: int = 0              # bits the Chase decoder flipped
    frames: int = 0
    expected_agreement: Optional[float] = None   # share of bits equal to an expected payload (when given)
    scheme: str = SCHEME_V1
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _candidates(y: np.ndarray):
    """(scheme, summed soft votes [64], votes [N, 64], mask [N, 64]) for every reading worth decoding, the newest
    scheme first. Each is one Chase decoding, so each adds about 2.4e-7 to the chance of reading an unmarked video
    as marked."""
    t, h, w = y.shape
    for cell in wm_smooth.readable_cells(h, w, t):
        for r in wm_smooth.readings(y, cell):
            yield SCHEME_V3, r.soft, r.votes, r.mask
    if wm_legacy.fits_v2(h, w):
        v = wm_legacy.votes_v2(y)
        yield SCHEME_V2, v.sum(axis=0), v, np.ones(v.shape, bool)
    if (h // 4) * (w // 4) >= CODE_BITS:
        v = wm_legacy.votes_v1(y)
        yield SCHEME_V1, v.sum(axis=0), v, np.ones(v.shape, bool)


def detect_luma(luma, expected: Optional[tuple[int, int]] = None) -> WatermarkResult:
    """Read the watermark from full-range luma frames [T, H, W] (0..255): v3, then v2, then v1. ``expected`` =
    (generator_id, content_id) adds the share of bits that match it (useful when a manifest names the content id)."""
    y = _check_luma(luma)
    t, h, w = y.shape
    tried = []
    for scheme, soft, votes, mask in _candidates(y):
        word, flipped = chase(soft)
        strength = float(np.abs(votes[mask]).mean()) if mask.any() else 0.0
        tried.append((word is not None, strength, scheme, votes, mask, soft, word, flipped))
        if word is not None:
            break
    if not tried:
        raise WatermarkError(f"frame size {w}x{h} is too small to carry the watermark; allowed: at least "
                             f"{CODE_BITS} blocks of 4x4 pixels (e.g. 32x32)")
    # the decoded reading, else the one whose votes are strongest
    _, strength, scheme, votes, mask, soft, word, flipped = max(tried, key=lambda r: (r[0], r[1]))
    ref = word if word is not None else (soft < 0).astype(np.uint8)
    agree = float(np.mean(((votes < 0) == ref[None].astype(bool))[mask])) if mask.any() else 0.0
    res = WatermarkResult(detected=word is not None, bit_agreement=round(agree, 4), strength=round(strength, 4),
                          corrected_bits=flipped, frames=t, scheme=scheme)
    if word is not None:
        res.generator_id = bits_int(word[:GENERATOR_BITS])
        res.generator = GENERATORS.get(res.generator_id)
        res.content_id = bits_int(word[GENERATOR_BITS:PAYLOAD_BITS])
    if expected is not None:
        exp = encode_payload(*expected)
        res.expected_agreement = round(float(np.mean((soft < 0) == exp.astype(bool))), 4)
    return res


def detect_rgb(frames, expected: Optional[tuple[int, int]] = None) -> WatermarkResult:
    """Read the watermark from RGB frames [T, H, W, 3]: uint8 0..255, or float 0..1."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] < 3:
        raise WatermarkError(f"frames have shape {tuple(arr.shape)}; allowed: [frames, height, width, 3]")
    scale = 255.0 if arr.dtype.kind == "f" else 1.0
    return detect_luma(rgb_luma(arr[..., :3].astype(np.float64) * scale), expected)
