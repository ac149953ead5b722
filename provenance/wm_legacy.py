"""The two earlier watermark schemes. New videos use the smooth scheme v3 (``wm_smooth``) wherever it fits; these
are kept so that marks made before it are still read, for frames too small for v3 (v1), and as the benchmark's
baseline.

* **v1** ``spacetime-qim-v1``, blocks: the mean luma of each 8x8 block (4x8, 8x4 or 4x4 on frames too small for 64
  blocks) carries one code bit by quantisation index modulation (QIM): the mean is moved to the nearest point of a
  lattice ``step * (Z + dither + bit / 2)`` with a keyed per-block dither, by adding the same value to every pixel
  of the block. Lattice step 10 (64x64 frames), 9, 7 (128x128), 6 (256x256 and up) full-range luma levels. Robust,
  but the blocks step by up to ``step`` levels at their edges, which shows on flat backgrounds.
* **v2** ``spacetime-smooth-v2``, bumps: each 16x16 cell carries one bit in the amplitude of a raised-cosine bump
  (0 at the cell's border), moved onto the lattice by adding a multiple of the bump; no step over 0.98 levels, but
  only robust with 4+ cells per bit (256x256 and up).

Both put the same pattern in every frame, changed frame by frame to follow the picture, and read it with a soft
vote per bit over blocks and frames.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .wm_code import CODE_BITS, WatermarkError, bit_votes, keyed_layout

SCHEME_V1 = "spacetime-qim-v1"
KEY_V1 = b"spacetime-watermark-v1"
SCHEME_V2 = "spacetime-smooth-v2"
KEY_V2 = b"spacetime-watermark-v2"

# ----------------------------------------------------------------------------------------------------------------------
# v1: block means
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
def _layout_v1(height: int, width: int) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    ch, cw = cell_shape(height, width)
    n = (height // ch) * (width // cw)
    return (ch, cw), *keyed_layout(KEY_V1 + f":{height}x{width}:{ch}x{cw}".encode(), n)


def _block_means(luma: np.ndarray, cell: tuple[int, int]) -> np.ndarray:
    (ch, cw), (t, h, w) = cell, luma.shape
    hb, wb = h // ch, w // cw
    return luma[:, :hb * ch, :wb * cw].reshape(t, hb, ch, wb, cw).mean(axis=(2, 4)).reshape(t, -1)


def embed_v1(y: np.ndarray, word: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Mark full-range luma frames ``y`` [T, H, W] in place with the block scheme."""
    t, h, w = y.shape
    cell, bit, dither = _layout_v1(h, w)
    (ch, cw), step = cell, lattice_step(h, w)
    offset = (dither + 0.5 * word[bit]) * step
    hb, wb = h // ch, w // cw
    for _ in range(iterations):                 # repeat: clipping at 0 / 255 can leave a block short of its point
        m = _block_means(y, cell)
        delta = (np.round((m - offset) / step) * step + offset - m).reshape(t, hb, 1, wb, 1)
        y[:, :hb * ch, :wb * cw] += np.broadcast_to(delta, (t, hb, ch, wb, cw)).reshape(t, hb * ch, wb * cw)
        np.clip(y, 0.0, 255.0, out=y)
    return y


def votes_v1(luma: np.ndarray) -> np.ndarray:
    """[T, 64] soft votes per frame and bit."""
    t, h, w = luma.shape
    cell, bit, dither = _layout_v1(h, w)
    return bit_votes(_block_means(luma, cell), lattice_step(h, w), bit, dither)


# ----------------------------------------------------------------------------------------------------------------------
# v2: raised-cosine bumps
# ----------------------------------------------------------------------------------------------------------------------

BUMP_CELL = 16                   # pixels per side of a cell
BUMP_MAX_STEP = 0.98             # largest luma change the mark makes between neighbouring pixels


@lru_cache(maxsize=1)
def _bump() -> tuple[np.ndarray, float]:
    """(the cell's carrier [16, 16]: sin² across and down, 0 at the border; the lattice step that keeps the change
    between neighbouring pixels under BUMP_MAX_STEP)."""
    x = (np.arange(BUMP_CELL) + 0.5) / BUMP_CELL
    w1 = np.sin(np.pi * x) ** 2
    bump = np.outer(w1, w1)
    slope = max(np.abs(np.diff(bump, axis=0)).max(), np.abs(np.diff(bump, axis=1)).max(), bump[0].max())
    return bump, 2 * BUMP_MAX_STEP / slope        # the amplitude moves by at most step / 2


def fits_v2(height: int, width: int) -> bool:
    return (height // BUMP_CELL) * (width // BUMP_CELL) >= CODE_BITS


@lru_cache(maxsize=32)
def _layout_v2(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    n = (height // BUMP_CELL) * (width // BUMP_CELL)
    return keyed_layout(KEY_V2 + f":{height}x{width}".encode(), n)


def _amplitudes(luma: np.ndarray) -> np.ndarray:
    """[T, cells]: least-squares amplitude of the bump in every cell."""
    bump, _ = _bump()
    c, (t, h, w) = BUMP_CELL, luma.shape
    hb, wb = h // c, w // c
    cells = luma[:, :hb * c, :wb * c].reshape(t, hb, c, wb, c)
    return np.einsum("tiajb,ab->tij", cells, bump).reshape(t, -1) / float((bump ** 2).sum())


def embed_v2(y: np.ndarray, word: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Mark full-range luma frames ``y`` [T, H, W] in place with the bump scheme."""
    t, h, w = y.shape
    if not fits_v2(h, w):
        raise WatermarkError(f"frame size {w}x{h} is too small for {SCHEME_V2}; allowed: at least {CODE_BITS} "
                             f"cells of {BUMP_CELL}x{BUMP_CELL} pixels (e.g. 128x128)")
    bump, step = _bump()
    bit, dither = _layout_v2(h, w)
    offset = (dither + 0.5 * word[bit]) * step
    c = BUMP_CELL
    hb, wb = h // c, w // c
    for _ in range(iterations):
        a = _amplitudes(y)
        delta = (np.round((a - offset) / step) * step + offset - a).reshape(t, hb, 1, wb, 1)
        y[:, :hb * c, :wb * c] += (delta * bump[None, None, :, None, :]).reshape(t, hb * c, wb * c)
        np.clip(y, 0.0, 255.0, out=y)
    return y


def votes_v2(luma: np.ndarray) -> np.ndarray:
    t, h, w = luma.shape
    _, step = _bump()
    bit, dither = _layout_v2(h, w)
    return bit_votes(_amplitudes(luma), step, bit, dither)
