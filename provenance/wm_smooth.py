"""Watermark v3 (``spacetime-smooth-v3``): a smooth field of per-cell offsets, the same over runs of frames, with the
code word spread over space and time.

* **Carrier**: the mean full-range luma of each 16x16 cell (8x8 where the clip is too short for 16x16 cells, see
  below), averaged over a *segment* of 4 consecutive frames. Each (cell, segment) carries one code bit by
  quantisation index modulation (QIM): its mean is moved to the nearest point of ``step * (Z + dither + bit / 2)``.
* **Smooth**: the change is not added block by block but as one smooth field, the bilinear interpolation of per-cell
  offsets placed at the cell centres (constant beyond the outer centres). The offsets that put every cell mean on
  its lattice point are found by a few fixed-point iterations on the small [cells] grid (the field of one cell
  spills into its neighbours' means). The field never changes neighbouring pixels by more than ``MAX_STEP`` levels
  and its PSNR never falls below ``MIN_PSNR`` dB (it is scaled down in the rare segment that would break either).
* **Static over a segment**: a segment's field is computed from the segment's mean picture and added unchanged to
  each of its frames, so an encoder's motion compensation carries it from frame to frame (a mark that changes every
  frame with the picture is what H.264 removes first). Where the picture is still, consecutive segments get the
  same field.
* **Spread over time**: a frame with fewer cells than code bits (64x64: 16 cells) carries a share of the word: the
  ``phases = ceil(64 / cells)`` segments in a row carry different bits, so a 17-frame 64x64 clip (5 segments) holds
  the word once. Frames with more cells spread every bit over several cells of each segment. A keyed interleaver
  chooses which cell and phase carries which bit.
* **Strength follows the picture**: a cell that is flat and still (no texture, no motion) stops 10 % of a step
  short of its lattice point (less change where a change is easiest to see, and where an encoder adds the least
  noise); busy cells go all the way.
* **Reading**: cell means per frame, averaged per segment, voted per bit ``cos(2 pi (mean / step - dither))`` and
  summed over cells and segments. The reader does not know where a trimmed clip starts: it tries the 4 segment
  alignments and every phase, keeps the strongest, and decodes it (and the untrimmed alignment when that differs).
* **Cells of 8x8** are used where 16x16 cells cannot hold the word in the clip's length (a single 64x64 image, a
  64x64 clip under 13 frames); frames that cannot hold it even then (under 64x64 single images, under 32x32 clips)
  are left to the block scheme v1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from .wm_code import CODE_BITS, bit_votes, keyed_layout

SCHEME_V3 = "spacetime-smooth-v3"
KEY_V3 = b"spacetime-watermark-v3"
CELLS = (16, 8)                  # cell sizes in pixels, the largest that fits first
SEGMENT = 4                      # frames per segment
MAX_STEP = 0.98                  # largest luma change the mark makes between neighbouring pixels
MIN_PSNR = 42.3                  # dB: the field is scaled down where it would spend more of the picture
FLAT_TOLERANCE = 0.1             # share of a step a flat, still cell stops short of its lattice point
BUSY_LEVEL = 4.0                 # luma activity (second differences + motion per pixel) of a fully busy cell
ITERATIONS = 10


@dataclass(frozen=True)
class Layout:
    cell: int
    rows: int
    cols: int
    phases: int
    step: float
    bit: np.ndarray              # [phases, cells] code bit per slot
    dither: np.ndarray           # [phases, cells]
    ry: np.ndarray               # [H, rows] interpolation of offsets at the cell centres, down
    rx: np.ndarray               # [W, cols] ... and across
    ky: np.ndarray               # [rows, rows] the cell means (down) of an interpolated offset grid
    kx: np.ndarray               # [cols, cols]

    @property
    def cells(self) -> int:
        return self.rows * self.cols


def _interpolation(n: int, cell: int) -> np.ndarray:
    """[n, n // cell]: linear interpolation between cell centres, constant beyond the outer ones."""
    nb = n // cell
    pos = np.clip((np.arange(n) + 0.5) / cell - 0.5, 0, nb - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, nb - 1)
    r = np.zeros((n, nb))
    np.add.at(r, (np.arange(n), i0), 1 - (pos - i0))
    np.add.at(r, (np.arange(n), i1), pos - i0)
    return r


def _cell_means_matrix(r: np.ndarray, cell: int) -> np.ndarray:
    nb = r.shape[1]
    return r[:nb * cell].reshape(nb, cell, nb).mean(axis=1)


def lattice_step(cells: int) -> float:
    """6.5 luma levels where each bit has one cell per cycle of phases; less where a frame holds the word several
    times over (5 at 64 cells, 128x128; 3.5 from about 200 cells, 256x256)."""
    if cells < CODE_BITS:
        return 6.5
    return float(np.clip(5.0 * math.sqrt(CODE_BITS / cells), 3.5, 6.5))


@lru_cache(maxsize=32)
def layout(height: int, width: int, cell: int) -> Layout:
    rows, cols = height // cell, width // cell
    n = rows * cols
    phases = -(-CODE_BITS // n)
    bit, dither = keyed_layout(KEY_V3 + f":{height}x{width}:{cell}:{phases}".encode(), n * phases)
    ry, rx = _interpolation(height, cell), _interpolation(width, cell)
    return Layout(cell, rows, cols, phases, lattice_step(n), bit.reshape(phases, n), dither.reshape(phases, n),
                  ry, rx, _cell_means_matrix(ry, cell), _cell_means_matrix(rx, cell))


def plan(height: int, width: int, frames: int) -> Optional[int]:
    """The cell size v3 marks these frames with (16, else 8), or None where the clip cannot hold the word."""
    segments = -(-max(int(frames), 1) // SEGMENT)
    for cell in CELLS:
        n = (height // cell) * (width // cell)
        if n and -(-CODE_BITS // n) <= segments:
            return cell
    return None


def readable_cells(height: int, width: int, frames: int) -> list[int]:
    """Cell sizes worth trying on frames of this size (the reader does not know the clip's original length)."""
    segments = -(-max(int(frames), 1) // SEGMENT)
    return [c for c in CELLS if (height // c) * (width // c) and -(-CODE_BITS // ((height // c) * (width // c)))
            <= max(segments, 1)]


def cell_means(y: np.ndarray, cell: int) -> np.ndarray:
    """[T, rows, cols] mean of every cell."""
    t, h, w = y.shape
    rows, cols = h // cell, w // cell
    return y[:, :rows * cell, :cols * cell].reshape(t, rows, cell, cols, cell).mean(axis=(2, 4))


def _activity(seg: np.ndarray, lay: Layout) -> np.ndarray:
    """[rows, cols] luma activity of a segment per cell: mean absolute second difference of its mean picture
    (texture), plus the mean absolute change from frame to frame (motion)."""
    c = lay.cell
    mean = seg.mean(axis=0)
    tex = np.zeros_like(mean)
    tex[1:-1, :] += np.abs(np.diff(mean, 2, axis=0))
    tex[:, 1:-1] += np.abs(np.diff(mean, 2, axis=1))
    if len(seg) > 1:
        tex += np.abs(np.diff(seg, axis=0)).mean(axis=0)
    return cell_means(tex[None], c)[0]


def _solve(a0: np.ndarray, offset: np.ndarray, tol: np.ndarray, lay: Layout, step: float) -> np.ndarray:
    """Per-cell offsets [rows, cols] whose interpolated field moves the cell means ``a0`` to within ``tol * step``
    of their nearest lattice points."""
    d = np.zeros_like(a0)
    for _ in range(ITERATIONS):
        a = a0 + lay.ky @ d @ lay.kx.T
        e = np.round((a - offset) / step) * step + offset - a
        d += np.sign(e) * np.maximum(np.abs(e) - tol * step, 0.0)
    return d


def _rms_limit() -> float:
    return 255.0 / 10 ** (MIN_PSNR / 20)


def _fitted(a0: np.ndarray, offset: np.ndarray, tol: np.ndarray, lay: Layout) -> np.ndarray:
    """``_solve``, with every cell stopping a little further short of its point where the field would otherwise
    spend more than MIN_PSNR allows (a shortfall shared by all cells loses less of the worst cell's margin than
    scaling the whole field down would)."""
    d = _solve(a0, offset, tol, lay, lay.step)
    if float(np.sqrt(np.mean((lay.ry @ d @ lay.rx.T) ** 2))) <= _rms_limit():
        return d
    lo, hi = 0.0, 0.25
    for _ in range(8):                   # bisect the extra shortfall (a share of the step)
        mid = (lo + hi) / 2
        trial = _solve(a0, offset, tol + mid, lay, lay.step)
        if float(np.sqrt(np.mean((lay.ry @ trial @ lay.rx.T) ** 2))) <= _rms_limit():
            hi, d = mid, trial
        else:
            lo = mid
    return d


def _guarded(field: np.ndarray) -> np.ndarray:
    """The field scaled down where it would change neighbouring pixels by more than MAX_STEP, or its PSNR would
    fall below MIN_PSNR."""
    slope = max(np.abs(np.diff(field, axis=0)).max(initial=0.0), np.abs(np.diff(field, axis=1)).max(initial=0.0))
    scale = min(1.0, MAX_STEP / slope) if slope > 0 else 1.0
    rms = float(np.sqrt(np.mean(field ** 2)))
    limit = _rms_limit()
    if rms * scale > limit:
        scale = limit / rms
    return field * scale


def embed(y: np.ndarray, word: np.ndarray, cell: int, passes: int = 3, first_segment: int = 0) -> np.ndarray:
    """Mark full-range luma frames ``y`` [T, H, W] (float, 0..255) in place. ``first_segment``: the index of the
    segment ``y`` starts with, for a clip marked piece by piece (each piece but the last a whole number of
    segments); the pieces then carry exactly the mark of the whole clip."""
    t, h, w = y.shape
    lay = layout(h, w, cell)
    for k, start in enumerate(range(0, t, SEGMENT), start=first_segment):
        host = y[start:start + SEGMENT].copy()
        phase = k % lay.phases
        offset = ((lay.dither[phase] + 0.5 * word[lay.bit[phase]]) * lay.step).reshape(lay.rows, lay.cols)
        busy = np.clip(_activity(host, lay) / BUSY_LEVEL, 0.0, 1.0)
        tol = FLAT_TOLERANCE * (1.0 - busy)
        d = _fitted(cell_means(host, cell).mean(axis=0), offset, tol, lay)
        for _ in range(passes - 1):      # again where clipping at 0 / 255 left cells short of their points
            marked = np.clip(host + _guarded(lay.ry @ d @ lay.rx.T)[None], 0.0, 255.0)
            if not ((marked <= 0.0) | (marked >= 255.0)).any():
                break
            d += _solve(cell_means(marked, cell).mean(axis=0), offset, tol, lay, lay.step)
        y[start:start + SEGMENT] = np.clip(host + _guarded(lay.ry @ d @ lay.rx.T)[None], 0.0, 255.0)
    return y


@dataclass
class Reading:
    soft: np.ndarray             # [64] summed votes
    votes: np.ndarray            # [segments, 64] mean vote per bit per segment (0 where the segment has no slot)
    mask: np.ndarray             # [segments, 64] True where the segment carries the bit
    alignment: tuple             # (first segment's offset in frames, phase of the first segment)


def _read(means: np.ndarray, lay: Layout, offset: int, phase0: int) -> Reading:
    t = len(means)
    starts = [0] + list(range((SEGMENT - offset) % SEGMENT or SEGMENT, t, SEGMENT))
    sums = np.add.reduceat(means, starts, axis=0)
    lengths = np.diff(starts + [t])
    votes = np.zeros((len(starts), CODE_BITS))
    mask = np.zeros((len(starts), CODE_BITS), dtype=bool)
    soft = np.zeros(CODE_BITS)
    for k, (s, n) in enumerate(zip(sums, lengths)):
        p = (k + phase0) % lay.phases
        v = bit_votes((s / n)[None], lay.step, lay.bit[p], lay.dither[p])[0]
        has = np.bincount(lay.bit[p], minlength=CODE_BITS) > 0
        votes[k], mask[k] = v * has, has
        soft += v * has * n
    return Reading(soft, votes, mask, (offset, phase0))


def readings(luma: np.ndarray, cell: int) -> list[Reading]:
    """The strongest alignment of segments and phases (by the summed size of the votes), and the untrimmed one
    (offset 0, phase 0) when that is not it."""
    t, h, w = luma.shape
    lay = layout(h, w, cell)
    means = cell_means(luma, cell).reshape(t, -1)
    tries = [_read(means, lay, o, p) for o in range(min(SEGMENT, t)) for p in range(lay.phases)]
    best = max(tries, key=lambda r: float(np.abs(r.soft).sum()))
    return [best] if best is tries[0] else [best, tries[0]]
