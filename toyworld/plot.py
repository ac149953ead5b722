"""A dependency-free line plot (PIL) for loss curves."""
from __future__ import annotations

import math

from PIL import Image, ImageDraw


def smooth(values, k: int):
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def loss_plot(series: dict, path, title: str = "", width: int = 720, height: int = 400, log: bool = True):
    """series: name -> list of (step, value). Draws smoothed curves on a log scale."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    pad_l, pad_r, pad_t, pad_b = 60, 20, 30, 40
    pts = [(s, v) for vals in series.values() for s, v in vals if v > 0 or not log]
    if not pts:
        img.save(path)
        return
    f = (lambda v: math.log10(max(v, 1e-12))) if log else (lambda v: v)
    xs = [s for s, _ in pts]
    ys = [f(v) for _, v in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    y0, y1 = min(ys), max(max(ys), min(ys) + 1e-6)

    def px(s, v):
        return (pad_l + (s - x0) / (x1 - x0) * (width - pad_l - pad_r),
                height - pad_b - (f(v) - y0) / (y1 - y0) * (height - pad_t - pad_b))
    d.rectangle([pad_l, pad_t, width - pad_r, height - pad_b], outline="black")
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        yy = height - pad_b - (yv - y0) / (y1 - y0) * (height - pad_t - pad_b)
        d.line([pad_l - 4, yy, pad_l, yy], fill="black")
        d.text((4, yy - 6), f"{10 ** yv:.3g}" if log else f"{yv:.3g}", fill="black")
    d.text((pad_l, height - pad_b + 8), f"step {x0}", fill="black")
    d.text((width - pad_r - 90, height - pad_b + 8), f"step {x1}", fill="black")
    d.text((pad_l, 8), title, fill="black")
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
              "#bcbd22", "#17becf"]
    for i, (name, vals) in enumerate(series.items()):
        vals = [(s, v) for s, v in vals if v > 0 or not log]
        if len(vals) < 2:
            continue
        sm = smooth([v for _, v in vals], max(1, len(vals) // 100))
        d.line([px(s, v) for (s, _), v in zip(vals, sm)], fill=colors[i % len(colors)], width=2)
        d.text((width - pad_r - 160, pad_t + 6 + 14 * i), name, fill=colors[i % len(colors)])
    img.save(path)
