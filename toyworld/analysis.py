"""Measure what a toy-world clip shows, from its pixels alone: background, objects (colour, shape, size), their
paths, motion, spatial relations, visibility. Used by the evaluation; tested on rendered ground truth.

Frames are uint8 [T, H, W, 3] (or float in 0..1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .world import BACKGROUNDS, COLORS, PILLAR_COLOR

PALETTE = np.array(list(COLORS.values()), np.float64)
PALETTE_NAMES = list(COLORS)
FG_THRESHOLD = 70.0


def as_uint8(frames) -> np.ndarray:
    a = np.asarray(frames)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    return a


def background_color(frame: np.ndarray, inset: int = 2) -> np.ndarray:
    """Median colour of a ring ``inset`` pixels inside the frame border (objects rarely touch every edge; decoders
    often leave the outermost pixels off-colour)."""
    f = frame.astype(np.float64)
    i = min(inset, (min(f.shape[:2]) - 1) // 2)
    ring = f[i:f.shape[0] - i, i:f.shape[1] - i]
    border = np.concatenate([ring[0], ring[-1], ring[:, 0], ring[:, -1]])
    return np.median(border, axis=0)


def nearest_background(color) -> str:
    names = list(BACKGROUNDS)
    d = [np.linalg.norm(np.array(BACKGROUNDS[n]) - color) for n in names]
    return names[int(np.argmin(d))]


def foreground_mask(frame: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Pixels that differ clearly from the background and are neither the pillar nor pan landmarks."""
    f = frame.astype(np.float64)
    dist_bg = np.linalg.norm(f - bg, axis=-1)
    not_pillar = np.linalg.norm(f - np.array(PILLAR_COLOR, np.float64), axis=-1) > 45
    post = bg * 0.72 if bg.mean() > 60 else np.minimum(255, bg + 70)
    not_post = np.linalg.norm(f - post, axis=-1) > 35
    return (dist_bg > FG_THRESHOLD) & not_pillar & not_post


def nearest_color(rgb) -> str:
    return PALETTE_NAMES[int(np.argmin(np.linalg.norm(PALETTE - np.asarray(rgb, np.float64), axis=1)))]


@dataclass
class Blob:
    color: str
    area: float
    cx: float          # centroid, fraction of width
    cy: float          # fraction of height
    fill: float        # area / bounding-box area (ball ~0.79, box ~1, triangle ~0.5)
    w: float
    h: float
    taper: float = 1.0  # mean row width of the top third / bottom third (triangle << 1, ball and box ~1)


def blobs(frame: np.ndarray, bg: Optional[np.ndarray] = None, min_area: int = 6) -> list[Blob]:
    """Foreground pixels grouped by their nearest palette colour, largest first."""
    frame = as_uint8(frame)
    bg = background_color(frame) if bg is None else bg
    m = foreground_mask(frame, bg)
    if not m.any():
        return []
    H, W = m.shape
    pix = frame[m].astype(np.float64)
    labels = np.argmin(np.linalg.norm(pix[:, None, :] - PALETTE[None], axis=-1), axis=1)
    ys, xs = np.nonzero(m)
    out = []
    for k in np.unique(labels):
        sel = labels == k
        if sel.sum() < min_area:
            continue
        x, y = largest_component(xs[sel], ys[sel])
        area = float(len(x))
        if area < min_area:
            continue
        bw, bh = x.max() - x.min() + 1, y.max() - y.min() + 1
        out.append(Blob(PALETTE_NAMES[k], area, (x.mean() + 0.5) / W, (y.mean() + 0.5) / H, area / (bw * bh),
                        bw / W, bh / H, _taper(y)))
    return sorted(out, key=lambda b: -b.area)


def largest_component(xs: np.ndarray, ys: np.ndarray):
    """The largest 8-connected group among the given pixel coordinates."""
    pts = set(zip(xs.tolist(), ys.tolist()))
    best: list = []
    seen: set = set()
    for start in pts:
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            x, y = stack.pop()
            comp.append((x, y))
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    q = (x + dx, y + dy)
                    if q in pts and q not in seen:
                        seen.add(q)
                        stack.append(q)
        if len(comp) > len(best):
            best = comp
    arr = np.array(best)
    return arr[:, 0], arr[:, 1]


def _taper(ys: np.ndarray) -> float:
    rows = np.bincount(ys - ys.min()).astype(np.float64)
    n = len(rows)
    if n < 3:
        return 1.0
    k = max(1, n // 3)
    return float(rows[:k].mean() / max(rows[-k:].mean(), 1e-6))


def shape_from_fill(fill: float, taper: float = 1.0) -> str:
    if fill >= 0.88:
        return "box"
    if fill < 0.6 or taper < 0.62:
        return "triangle"
    return "ball"


@dataclass
class Track:
    """One object (by colour) across frames; None entries where it is not visible."""
    color: str
    frames: list

    def visible(self) -> np.ndarray:
        return np.array([b is not None for b in self.frames])

    def path(self) -> np.ndarray:
        return np.array([(b.cx, b.cy) if b is not None else (np.nan, np.nan) for b in self.frames])

    def areas(self) -> np.ndarray:
        return np.array([b.area if b is not None else np.nan for b in self.frames])

    def shape(self) -> str:
        seen = [b for b in self.frames if b is not None and b.area >= 12]
        if not seen:
            return "unknown"
        return shape_from_fill(float(np.median([b.fill for b in seen])), float(np.median([b.taper for b in seen])))


def analyse(frames) -> dict:
    """Background, and tracks of the (up to two) dominant object colours."""
    frames = as_uint8(frames)
    bg = np.median(np.stack([background_color(f) for f in frames]), axis=0)
    per_frame = [blobs(f, bg) for f in frames]
    totals: dict = {}
    for bl in per_frame:
        for b in bl:
            totals[b.color] = totals.get(b.color, 0.0) + b.area
    colors = sorted(totals, key=lambda c: -totals[c])
    tracks = []
    for c in colors[:3]:
        tracks.append(Track(c, [next((b for b in bl if b.color == c), None) for bl in per_frame]))
    return {"background": nearest_background(bg), "bg_rgb": bg, "tracks": tracks, "blob_totals": totals}


def motion_of(track: Track, frames: int) -> str:
    """moves left/right/up/down, stays still, bounces, grows, shrinks."""
    p = track.path()
    ok = ~np.isnan(p[:, 0])
    if ok.sum() < max(2, frames // 3):
        return "unknown"
    idx = np.nonzero(ok)[0]
    n = max(1, len(idx) // 4)
    first, last = idx[:n], idx[-n:]
    dx = np.nanmean(p[last, 0]) - np.nanmean(p[first, 0])
    dy = np.nanmean(p[last, 1]) - np.nanmean(p[first, 1])
    a = track.areas()
    ratio = np.nanmean(a[last]) / max(1e-6, np.nanmean(a[first]))
    ys = p[idx, 1]
    # a bounce: the object goes down and comes back up at least once
    dys = np.diff(ys)
    went_down = np.nancumsum(np.where(dys > 0, dys, 0))
    rebound = len(dys) > 2 and (np.nanmax(ys) - ys[-1] > 0.04) and (np.nanmax(ys) - ys[0] > 0.04) and \
        went_down[-1] > 0.06
    step = max(abs(dx), abs(dy))
    if ratio > 1.25 and step < 0.08:
        return "grows"
    if ratio < 0.8 and step < 0.08:
        return "shrinks"
    if rebound and abs(dx) < 0.05:
        return "bounces"
    if step < 0.04:
        return "stays still"
    if abs(dx) >= abs(dy):
        return "moves right" if dx > 0 else "moves left"
    return "moves down" if dy > 0 else "moves up"


def relation_of(a: Track, b: Track) -> str:
    """Where a is relative to b (left of / right of / above / below), by mean positions."""
    pa, pb = np.nanmean(a.path(), axis=0), np.nanmean(b.path(), axis=0)
    dx, dy = pa[0] - pb[0], pa[1] - pb[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def psnr(a, b) -> float:
    a = as_uint8(a).astype(np.float64)
    b = as_uint8(b).astype(np.float64)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def frame_diffs(frames) -> np.ndarray:
    f = as_uint8(frames).astype(np.float64)
    return np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))


def seam_ratio(frames, seam: int) -> float:
    """Mean abs difference across the seam (frame seam-1 -> seam) over the median frame difference."""
    d = frame_diffs(frames)
    return float(d[seam - 1] / max(np.median(d), 1e-3))


def flicker(frames) -> float:
    """Mean abs change of background pixels between frames (0 = stable), in 0..255 units."""
    f = as_uint8(frames)
    bg = np.median(np.stack([background_color(x) for x in f]), axis=0)
    stable = np.all(np.stack([~foreground_mask(x, bg) for x in f]), axis=0)
    if stable.sum() < 16:
        return 0.0
    vals = f.astype(np.float64)[:, stable]
    return float(np.abs(np.diff(vals, axis=0)).mean())


def components(mask: np.ndarray, min_area: int = 12) -> list[int]:
    """Areas of the 8-connected groups of True pixels with at least ``min_area`` pixels, largest first."""
    H, W = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    areas = []
    ys, xs = np.nonzero(mask)
    for y0, x0 in zip(ys.tolist(), xs.tolist()):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        stack, n = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            n += 1
            for yy in (y - 1, y, y + 1):
                if 0 <= yy < H:
                    for xx in (x - 1, x, x + 1):
                        if 0 <= xx < W and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            stack.append((yy, xx))
        if n >= min_area:
            areas.append(n)
    return sorted(areas, reverse=True)


def group_counts(frames, bg=None, min_area: int = 12) -> np.ndarray:
    """Per frame, the number of foreground groups of at least ``min_area`` pixels (bg: the clip's median background
    colour when not given)."""
    frames = as_uint8(frames)
    if bg is None:
        bg = np.median(np.stack([background_color(f) for f in frames]), axis=0)
    return np.array([len(components(foreground_mask(f, bg), min_area)) for f in frames])


def object_count(frames, bg=None, min_area: int = 12) -> int:
    """The number of separate objects a clip shows: the median over frames of the foreground groups of at least
    ``min_area`` pixels (a shape split by the pillar counts once per visible part)."""
    return int(np.median(group_counts(frames, bg, min_area)))


def ghosting(frames, bg=None, min_area: int = 12) -> float:
    """The share of frames of a one-object clip in which the object shows as two or more separate groups of at
    least ``min_area`` pixels (a ghost: the object drawn twice, where it was and where it went). 0 for a rendered
    clip without a pillar."""
    return float(np.mean(group_counts(frames, bg, min_area) >= 2))


def background_flatness(frames, bg=None) -> float:
    """Mean distance (0-255 units) of the background-classified pixels from the background colour: 0 for a plain
    backdrop, large for a patchy or noisy one."""
    frames = as_uint8(frames)
    if bg is None:
        bg = np.median(np.stack([background_color(f) for f in frames]), axis=0)
    f = frames.astype(np.float64)
    d = np.linalg.norm(f - bg, axis=-1)
    bgpix = d <= FG_THRESHOLD
    return float(d[bgpix].mean()) if bgpix.any() else 255.0
