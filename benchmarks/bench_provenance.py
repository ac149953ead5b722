"""Provenance and frame-review benchmarks (prints figures; not a test).

    python benchmarks/bench_provenance.py [--clips 24] [--frames 17] [--sizes 64,128,256] [--crfs 23,30] [--quick]

1. Watermark robustness: clips of three kinds of content (smooth random colour fields that drift, the same with
   fresh per-frame grain, toy-world scenes) are watermarked with a random content id, encoded as we stamp them
   (H.264 CRF 18), then re-encoded at each CRF (what a re-upload does) and read back from the re-encoded file. A clip
   counts as recovered when the decoded payload equals the embedded one exactly. Also: false detections on the same
   clips without a watermark.
2. Frame review: milliseconds per 256x256 frame of the default frame classifier (batches of 16 after a warm-up).
3. Stamping: wall time of ``stamp_video`` (watermark + encode + C2PA sign + atomic publish) for a 33-frame 256x256
   clip (toy-world content, and grainy content that is hard for H.264), median of 5 runs each, in a throwaway
   config folder (its local identity is made before the timing).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _checkout  # noqa: E402,F401  (imports this checkout as ``spacetime``)

from spacetime.provenance import video, watermark  # noqa: E402

KINDS = ("smooth", "grain", "toy")


def _upsample(field: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a small [h0, w0, 3] field to [h, w, 3]."""
    h0, w0, _ = field.shape
    ys, xs = np.linspace(0, h0 - 1, h), np.linspace(0, w0 - 1, w)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = field[y0][:, x0] * (1 - fx) + field[y0][:, x1] * fx
    bot = field[y1][:, x0] * (1 - fx) + field[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def make_clip(kind: str, seed: int, frames: int, size: int) -> np.ndarray:
    """uint8 RGB [frames, size, size, 3]."""
    rng = np.random.default_rng(seed)
    if kind == "toy":
        from spacetime.toyworld.world import random_clip
        return random_clip(seed, frames=frames, width=size, height=size).frames
    grid = int(rng.integers(3, 7))
    a, b = rng.uniform(0, 255, (grid, grid, 3)), rng.uniform(0, 255, (grid, grid, 3))
    out = []
    for t in range(frames):
        s = t / max(1, frames - 1)
        img = _upsample(a * (1 - s) + b * s, size, size)
        if kind == "grain":
            img = img + rng.normal(0, 12, img.shape)
        out.append(img)
    return np.clip(np.round(np.stack(out)), 0, 255).astype(np.uint8)


def robustness(sizes, crfs, clips: int, frames: int, log=print) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "stamped.mp4", Path(tmp) / "reencoded.mp4"
        for size in sizes:
            for crf in crfs:
                exact, false_pos, agree, by_kind = 0, 0, [], {k: [0, 0] for k in KINDS}
                t0 = time.perf_counter()
                for i in range(clips):
                    kind = KINDS[i % len(KINDS)]
                    rgb = make_clip(kind, 1000 * size + i, frames, size)
                    content = int(np.random.default_rng(i).integers(0, 2 ** 32))
                    for marked in (True, False):
                        luma, u, v = video.rgb_to_yuv420(rgb)
                        if marked:
                            luma = watermark.embed_luma(luma, watermark.DEFAULT_GENERATOR, content)
                        video.encode_yuv(str(first), luma, u, v, fps=16, crf=video.DEFAULT_CRF)
                        video.transcode(first, second, crf=crf)
                        got = watermark.detect_luma(video.read_luma(second)[0])
                        if marked:
                            ok = got.detected and got.content_id == content
                            exact += ok
                            by_kind[kind][0] += ok
                            by_kind[kind][1] += 1
                            agree.append(got.bit_agreement)
                        else:
                            false_pos += got.detected
                rate = exact / clips
                results[(size, crf)] = {"exact": rate, "false_detections": false_pos,
                                        "bit_agreement": float(np.mean(agree)), "by_kind": by_kind}
                kinds = ", ".join(f"{k} {a}/{n}" for k, (a, n) in by_kind.items())
                log(f"  {size:>3} px  CRF {crf}: exact {exact}/{clips} = {rate:6.1%}   mean bit agreement "
                    f"{np.mean(agree):.3f}   false detections {false_pos}/{clips}   ({kinds})   "
                    f"{time.perf_counter() - t0:.1f} s")
    return results


def frame_review(frames: int = 32, batch: int = 16, log=print) -> float:
    from spacetime.safety import frames as frame_safety
    rgb = np.stack([make_clip(KINDS[i % 3], i, 1, 256)[0] for i in range(frames)])
    clf = frame_safety.default_classifiers()
    report = frame_safety.check_frames(rgb[:2], classifiers=clf)          # warm-up (session creation)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = frame_safety.check_frames(rgb, classifiers=clf, batch_size=batch)
        times.append((time.perf_counter() - t0) / frames * 1000)
    ms = min(times)
    log(f"  {ms:.1f} ms per 256x256 frame (best of 3 runs over {frames} frames, batch {batch}); "
        f"max score on these benign frames {max(report.max_scores.values()):.4f}")
    return ms


def stamping(runs: int = 5, log=print) -> float:
    """Median seconds per stamp of a 33-frame 256x256 clip; the slower of a toy-world clip and a grainy one (the
    grain makes H.264 work hard)."""
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SPACETIME_CONFIG_DIR"] = str(Path(tmp) / "config")
        from spacetime.provenance import identity, stamp_video
        identity.signing_identity()                                       # first-use identity, not timed
        for kind in ("toy", "grain"):
            rgb = make_clip(kind, 7, 33, 256)
            times = []
            for i in range(runs):
                t0 = time.perf_counter()
                stamp_video(rgb, Path(tmp) / f"{kind}.mp4", fps=16, generation={"model": "bench", "seed": i},
                            numbered=True)
                times.append(time.perf_counter() - t0)
            s = statistics.median(times)
            worst = max(worst, s)
            log(f"  {kind:<5} {s:.2f} s median of {runs} (min {min(times):.2f}, max {max(times):.2f}) for 33 "
                f"frames of 256x256")
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--crfs", default="23,30")
    ap.add_argument("--quick", action="store_true", help="6 clips per setting")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: watermark, review, stamp")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    clips = 6 if a.quick else a.clips
    sizes = [int(s) for s in a.sizes.split(",")]
    crfs = [int(c) for c in a.crfs.split(",")]
    failed = False
    if "watermark" not in skip:
        print(f"watermark: {clips} clips of {a.frames} frames per setting, stamped at CRF {video.DEFAULT_CRF}, "
              f"then re-encoded")
        res = robustness(sizes, crfs, clips, a.frames)
        failed |= any(r["exact"] < 0.95 for (s, c), r in res.items() if c == 23)
    if "review" not in skip:
        print("frame review (default classifier):")
        failed |= frame_review() > 40
    if "stamp" not in skip:
        print("stamping (watermark + encode + sign):")
        failed |= stamping() > 1.5
    print("targets: watermark exact >= 95% at CRF 23, review <= 40 ms/frame, stamp <= 1.5 s:",
          "missed" if failed else "met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
