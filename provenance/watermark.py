"""Invisible video watermark: a 64-bit code word hidden in the luma of every frame, read back by a vote across frames.

Why our own scheme: H.264 removes small, spread-out changes (its dead-zone quantiser zeroes weak coefficients), so
classic spread-spectrum and DWT/DCT-coefficient schemes fade after one re-encode, and an additive pattern fights the
picture itself (host interference). What survives best per unit of distortion is the mean of a block of pixels,
and quantisation index modulation (QIM) on that mean is blind to the picture. So:

* **Carrier**: the mean luma of each block of 8x8 pixels (4x8, 8x4 or 4x4 on frames too small for 64 blocks). Each block
  carries one code bit: its mean is moved to the nearest point of a lattice ``step * (Z + dither + bit / 2)``,
  with a keyed per-block dither, so a flat picture reads as noise, not as a word.
* **Redundancy**: blocks are assigned to the 64 code bits by a keyed interleaver (every bit spread over the whole
  frame, about ``blocks / 64`` times), and the same pattern is in every frame (static, so an encoder's inter
  prediction carries it from frame to frame). The reader sums, for every bit, a soft vote ``cos(2 pi (mean/step -
  dither))`` over its blocks and over all frames: a weighted majority vote across frames.
* **Code word**: 8-bit generator id + 32-bit content id + CRC-24. Decoding flips up to the ``CHASE_BITS`` least
  reliable bits (Chase decoding) and accepts the first word whose CRC holds and whose generator id is known: a
  picture without a watermark passes with probability about ``2**CHASE_BITS / 2**32`` (2.4e-7 for 10 bits).
* **Distortion**: the mean of a block moves by at most ``step / 2``; the lattice step (full-range luma levels) is 10
  at 1-2 repeats per bit (64x64 frames), 9 at 2-4, 7 at 4-8 (128x128) and 6 from 8 repeats up (256x256): about
  39, 40, 42 and 43 dB PSNR.

Luma here is full-range BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` in 0..255. Encoders store it as the limited-range
Y plane ``16 + 219/255 * L``; ``provenance.video`` converts both ways. The scheme needs the frame geometry intact:
scaling, cropping or rotation remove the watermark (a known limit).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Optional

import numpy as np

from ..model.errors import SpacetimeValueError

SCHEME = "spacetime-qim-v1"
KEY = b"spacetime-watermark-v1"
GENERATOR_BITS, CONTENT_BITS, CRC_BITS = 8, 32, 24
PAYLOAD_BITS = GENERATOR_BITS + CONTENT_BITS
CODE_BITS = PAYLOAD_BITS + CRC_BITS
GENERATORS = {0x53: "spacetime"}            # generator ids this reader accepts
DEFAULT_GENERATOR = 0x53
CHASE_BITS = 10
_CRC_POLY, _CRC_INIT = 0x864CFB, 0xB704CE  # CRC-24 (OpenPGP polynomial and initial value)


class WatermarkError(SpacetimeValueError):
    """Frames that cannot carry the watermark, or a payload out of range."""


# ----------------------------------------------------------------------------------------------------------------------
# Code word: payload bits + CRC-24
# ----------------------------------------------------------------------------------------------------------------------

def _int_bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def _bits_int(bits) -> int:
    out = 0
    for b in bits:
        out = (out << 1) | int(b)
    return out


def crc24(bits) -> int:
    """CRC-24 of a bit sequence (most significant bit first)."""
    reg = _CRC_INIT
    for b in bits:
        top = ((reg >> 23) & 1) ^ int(b)
        reg = (reg << 1) & 0xFFFFFF
        if top:
            reg ^= _CRC_POLY
    return reg


@lru_cache(maxsize=1)
def _crc_affine() -> tuple[np.ndarray, np.ndarray]:
    """The CRC is affine over GF(2): crc(p) = A p + c. Returns (A [24, 40], c [24]) for vectorised checks."""
    c = np.array(_int_bits(crc24([0] * PAYLOAD_BITS), CRC_BITS), dtype=np.uint8)
    cols = []
    for i in range(PAYLOAD_BITS):
        unit = [0] * PAYLOAD_BITS
        unit[i] = 1
        cols.append(np.array(_int_bits(crc24(unit), CRC_BITS), dtype=np.uint8) ^ c)
    return np.stack(cols, axis=1), c


def encode_payload(generator_id: int, content_id: int) -> np.ndarray:
    """[64] uint8 code word: generator id (8 bits), content id (32 bits), CRC-24."""
    if not 0 <= int(generator_id) < 2 ** GENERATOR_BITS:
        raise WatermarkError(f"generator_id={generator_id} is out of range; allowed: 0..{2 ** GENERATOR_BITS - 1}")
    if not 0 <= int(content_id) < 2 ** CONTENT_BITS:
        raise WatermarkError(f"content_id={content_id} is out of range; allowed: 0..{2 ** CONTENT_BITS - 1}")
    payload = _int_bits(int(generator_id), GENERATOR_BITS) + _int_bits(int(content_id), CONTENT_BITS)
    return np.array(payload + _int_bits(crc24(payload), CRC_BITS), dtype=np.uint8)


def _valid_words(words: np.ndarray) -> np.ndarray:
    """[N, 64] candidate words -> [N] bool: CRC holds and the generator id is known."""
    a, c = _crc_affine()
    crc = (words[:, :PAYLOAD_BITS].astype(np.int64) @ a.T.astype(np.int64) + c) % 2
    ok = (crc == words[:, PAYLOAD_BITS:]).all(axis=1)
    weights = 1 << np.arange(GENERATOR_BITS - 1, -1, -1)
    gen = words[:, :GENERATOR_BITS].astype(np.int64) @ weights
    return ok & np.isin(gen, list(GENERATORS))


# ----------------------------------------------------------------------------------------------------------------------
# Layout: which block carries which bit, with which dither
# ----------------------------------------------------------------------------------------------------------------------

CELL_SHAPES = ((8, 8), (4, 8), (8, 4), (4, 4))     # (height, width) of a block, largest first


def cell_shape(height: int, width: int) -> tuple[int, int]:
    """The largest block shape that gives at least 64 blocks; raises when even 4x4 blocks are too few."""
    for ch, cw in CELL_SHAPES:
        if (height // ch) * (width // cw) >= CODE_BITS:
            return ch, cw
    raise WatermarkError(f"frame size {width}x{height} is too small to carry the watermark; allowed: at least "
                         f"{CODE_BITS} blocks of 4x4 pixels (e.g. 32x32)")


def lattice_step(height: int, width: int) -> float:
    ch, cw = cell_shape(height, width)
    repeats = (height // ch) * (width // cw) / CODE_BITS
    if ch * cw < 64 or repeats < 2:
        return 10.0
    if repeats < 4:
        return 9.0
    return 7.0 if repeats < 8 else 6.0


@lru_cache(maxsize=32)
def _layout(height: int, width: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """(block shape, bit index per block [N], dither per block [N] in [0, 1)), from the key and the frame size."""
    ch, cw = cell_shape(height, width)
    n = (height // ch) * (width // cw)
    stream = hashlib.shake_256(KEY + f":{height}x{width}:{ch}x{cw}".encode()).digest(8 * n)
    order = np.argsort(np.frombuffer(stream[:4 * n], dtype="<u4"), kind="stable")
    bit = np.empty(n, dtype=np.int64)
    bit[order] = np.arange(n) % CODE_BITS
    dither = np.frombuffer(stream[4 * n:], dtype="<u4").astype(np.float64) / 2 ** 32
    return (ch, cw), bit, dither


def _block_means(luma: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    (ch, cw), (t, h, w) = cell, luma.shape
    hb, wb = h // ch, w // cw
    return luma[:, :hb * ch, :wb * cw].reshape(t, hb, ch, wb, cw).mean(axis=(2, 4)).reshape(t, -1)


def _check_luma(luma) -> np.ndarray:
    arr = np.asarray(luma, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise WatermarkError(f"luma has shape {tuple(arr.shape)}; allowed: [frames, height, width]")
    return arr


# ----------------------------------------------------------------------------------------------------------------------
# v2: smooth carriers
# ----------------------------------------------------------------------------------------------------------------------

SCHEME_V2 = "spacetime-smooth-v2"
KEY_V2 = b"spacetime-watermark-v2"
SMOOTH_CELL = 16                 # pixels per side of a cell
MAX_STEP = 0.98                  # largest luma change the mark makes between neighbouring pixels


@lru_cache(maxsize=1)
def _bump() -> tuple[np.ndarray, float]:
    """(the cell's carrier [16, 16]: a raised-cosine bump, 0 at the cell's border and 1 in its middle; the lattice
    step that keeps the change between neighbouring pixels under MAX_STEP)."""
    x = (np.arange(SMOOTH_CELL) + 0.5) / SMOOTH_CELL
    w1 = np.sin(np.pi * x) ** 2
    bump = np.outer(w1, w1)
    slope = max(np.abs(np.diff(bump, axis=0)).max(), np.abs(np.diff(bump, axis=1)).max(), bump[0].max())
    return bump, 2 * MAX_STEP / slope        # the amplitude moves by at most step / 2


@lru_cache(maxsize=32)
def _smooth_layout(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(bit index per cell [N], dither per cell [N] in [0, 1)) from the v2 key and the frame size."""
    n = (height // SMOOTH_CELL) * (width // SMOOTH_CELL)
    stream = hashlib.shake_256(KEY_V2 + f":{height}x{width}".encode()).digest(8 * n)
    order = np.argsort(np.frombuffer(stream[:4 * n], dtype="<u4"), kind="stable")
    bit = np.empty(n, dtype=np.int64)
    bit[order] = np.arange(n) % CODE_BITS
    return bit, np.frombuffer(stream[4 * n:], dtype="<u4").astype(np.float64) / 2 ** 32


def _amplitudes(luma: np.ndarray) -> np.ndarray:
    """[T, cells]: least-squares amplitude of the bump in every cell (the picture's projection on its carrier)."""
    bump, _ = _bump()
    c, (t, h, w) = SMOOTH_CELL, luma.shape
    hb, wb = h // c, w // c
    cells = luma[:, :hb * c, :wb * c].reshape(t, hb, c, wb, c)
    return np.einsum("tiajb,ab->tij", cells, bump).reshape(t, -1) / float((bump ** 2).sum())


def _embed_smooth(y: np.ndarray, word: np.ndarray, iterations: int) -> np.ndarray:
    """Each cell's bump amplitude is moved to the nearest point of ``step * (Z + dither + bit / 2)`` by adding a
    multiple of the bump itself: a smooth change that vanishes at the cell's border."""
    t, h, w = y.shape
    bump, step = _bump()
    bit, dither = _smooth_layout(h, w)
    offset = (dither + 0.5 * word[bit]) * step
    c = SMOOTH_CELL
    hb, wb = h // c, w // c
    for _ in range(iterations):                 # again where clipping at 0 / 255 left a cell short of its point
        a = _amplitudes(y)
        delta = (np.round((a - offset) / step) * step + offset - a).reshape(t, hb, 1, wb, 1)
        y[:, :hb * c, :wb * c] += (delta * bump[None, None, :, None, :]).reshape(t, hb * c, wb * c)
        np.clip(y, 0.0, 255.0, out=y)
    return y


def _smooth_votes(luma: np.ndarray) -> np.ndarray:
    t, h, w = luma.shape
    _, step = _bump()
    bit, dither = _smooth_layout(h, w)
    vote = np.cos(2 * np.pi * (_amplitudes(luma) / step - dither))
    counts = np.bincount(bit, minlength=CODE_BITS)
    return np.stack([np.bincount(bit, weights=v, minlength=CODE_BITS) for v in vote]) / counts


# ----------------------------------------------------------------------------------------------------------------------
# Embed
# ----------------------------------------------------------------------------------------------------------------------

V2_MIN_CELLS = 4 * CODE_BITS     # v2 is used where every bit gets at least 4 cells (256x256 frames and up)


def scheme_for(height: int, width: int) -> str:
    """The scheme a frame of this size is marked with: the smooth v2 where each bit gets at least 4 of its cells
    (at 128x128, with one cell per bit, v2 is not yet as robust as v1), else the block scheme v1."""
    return SCHEME_V2 if (height // SMOOTH_CELL) * (width // SMOOTH_CELL) >= V2_MIN_CELLS else SCHEME


def _fits_v2(height: int, width: int) -> bool:
    return (height // SMOOTH_CELL) * (width // SMOOTH_CELL) >= CODE_BITS


def embed_luma(luma, generator_id: int = DEFAULT_GENERATOR, content_id: int = 0, iterations: int = 3,
               scheme: Optional[str] = None) -> np.ndarray:
    """Watermarked copy of full-range luma frames [T, H, W] (float, 0..255), with ``scheme`` (default:
    ``scheme_for`` the frame size)."""
    y = _check_luma(luma).copy()
    t, h, w = y.shape
    scheme = scheme or scheme_for(h, w)
    if scheme == SCHEME_V2:
        if not _fits_v2(h, w):
            raise WatermarkError(f"frame size {w}x{h} is too small for {SCHEME_V2}; allowed: at least {CODE_BITS} "
                                 f"cells of {SMOOTH_CELL}x{SMOOTH_CELL} pixels (e.g. 128x128)")
        return _embed_smooth(y, encode_payload(generator_id, content_id), iterations)
    if scheme != SCHEME:
        raise WatermarkError(f"scheme={scheme!r} is not known; allowed: {SCHEME_V2}, {SCHEME}")
    cell, bit, dither = _layout(h, w)
    (ch, cw), step = cell, lattice_step(h, w)
    word = encode_payload(generator_id, content_id)
    offset = (dither + 0.5 * word[bit]) * step
    hb, wb = h // ch, w // cw
    for _ in range(iterations):                 # repeat: clipping at 0 / 255 can leave a block short of its point
        m = _block_means(y, cell)
        target = np.round((m - offset) / step) * step + offset
        delta = (target - m).reshape(t, hb, 1, wb, 1)
        y[:, :hb * ch, :wb * cw] += np.broadcast_to(delta, (t, hb, ch, wb, cw)).reshape(t, hb * ch, wb * cw)
        np.clip(y, 0.0, 255.0, out=y)
    return y


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
    bit_agreement: float = 0.0           # mean share of per-frame bit votes that agree with the word read
    strength: float = 0.0                # mean |vote| per bit per frame, 0 (noise) .. 1 (pristine)
    corrected_bits: int = 0              # bits the Chase decoder flipped
    frames: int = 0
    expected_agreement: Optional[float] = None   # share of bits equal to an expected payload (when given)
    scheme: str = SCHEME
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def _votes(luma: np.ndarray) -> np.ndarray:
    """[T, 64] soft votes per frame and bit: > 0 for bit 0, < 0 for bit 1, scaled to -1..1."""
    t, h, w = luma.shape
    cell, bit, dither = _layout(h, w)
    vote = np.cos(2 * np.pi * (_block_means(luma, cell) / lattice_step(h, w) - dither))
    counts = np.bincount(bit, minlength=CODE_BITS)
    return np.stack([np.bincount(bit, weights=v, minlength=CODE_BITS) for v in vote]) / counts


def _chase(soft: np.ndarray) -> tuple[Optional[np.ndarray], int]:
    """Most likely valid word near the hard decision: flip subsets of the least reliable bits, cheapest first."""
    hard = (soft < 0).astype(np.uint8)
    weak = np.argsort(np.abs(soft), kind="stable")[:CHASE_BITS]
    patterns = ((np.arange(2 ** CHASE_BITS)[:, None] >> np.arange(CHASE_BITS)) & 1).astype(np.uint8)
    cost = patterns @ np.abs(soft[weak])
    patterns = patterns[np.argsort(cost, kind="stable")]
    words = np.repeat(hard[None], len(patterns), axis=0)
    words[:, weak] ^= patterns
    ok = np.nonzero(_valid_words(words))[0]
    if not len(ok):
        return None, 0
    return words[ok[0]], int(patterns[ok[0]].sum())


def detect_luma(luma, expected: Optional[tuple[int, int]] = None) -> WatermarkResult:
    """Read the watermark from full-range luma frames [T, H, W] (0..255): the smooth v2 scheme where the frame has
    room for it, then the block scheme v1 (marks made before v2, and small frames). ``expected`` = (generator_id,
    content_id) adds the share of bits that match it (useful when a manifest names the content id)."""
    y = _check_luma(luma)
    t, h, w = y.shape
    tried = []
    for scheme in ((SCHEME_V2, SCHEME) if _fits_v2(h, w) else (SCHEME,)):
        votes = _smooth_votes(y) if scheme == SCHEME_V2 else _votes(y)
        soft = votes.sum(axis=0)
        word, flipped = _chase(soft)
        tried.append((word is not None, float(np.abs(votes).mean()), scheme, votes, soft, word, flipped))
        if word is not None:
            break
    # the decoded scheme, else the one whose votes are strongest
    _, _, scheme, votes, soft, word, flipped = max(tried, key=lambda r: (r[0], r[1]))
    ref = word if word is not None else (soft < 0).astype(np.uint8)
    agree = float(np.mean((votes < 0) == ref[None].astype(bool)))
    res = WatermarkResult(detected=word is not None, bit_agreement=round(agree, 4),
                          strength=round(float(np.abs(votes).mean()), 4), corrected_bits=flipped,
                          frames=int(y.shape[0]), scheme=scheme)
    if word is not None:
        res.generator_id = _bits_int(word[:GENERATOR_BITS])
        res.generator = GENERATORS.get(res.generator_id)
        res.content_id = _bits_int(word[GENERATOR_BITS:PAYLOAD_BITS])
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
