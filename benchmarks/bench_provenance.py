"""Provenance and frame-review benchmarks (prints figures; not a test).

    python benchmarks/bench_provenance.py [--clips 24] [--frames 17] [--sizes 64,128,256] [--crfs 23,28,30]
                                         [--schemes v3,v1] [--model-clips 3] [--sheet PREFIX] [--quick]

1. Watermark robustness and visibility, the smooth scheme v3 (used for new marks) beside the block scheme v1 (used
   before) and the bump scheme v2 (used before at 256x256 and up): clips of five kinds of content (flat colour,
   navy first; smooth random colour fields that drift; the same with fresh per-frame grain; toy-world scenes;
   clips made by the embedded model, at 64 and 128 px) are watermarked with a random content id, encoded as we
   stamp them (H.264 CRF 18), then re-encoded at each CRF (what a re-upload does) and read back from the re-encoded
   file. A clip counts as recovered when the decoded payload equals the embedded one exactly. Also: false
   detections on the same clips without a watermark (read by the full reader, which tries every scheme), the
   largest luma change the mark adds between neighbouring pixels, and the PSNR of the marked luma. For the scheme
   in use: the same clips read after dropping their first 2 frames (a trimmed copy), and single frames (stills).
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

KINDS = ("flat", "smooth", "grain", "toy", "model")
SCHEMES = {"v3": watermark.SCHEME_V3, "v2": watermark.SCHEME_V2, "v1": watermark.SCHEME_V1}
MODEL_PROMPTS = ("a red ball bounces on a navy background", "a yellow box moves left on a white background",
                 "a green triangle grows on a black background", "a blue ball moves right on a beige background")
MODEL_SIZES = (64, 128)           # the embedded model's own size and twice it (256 takes minutes per clip on a CPU)


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


_model_cache: dict = {}


def model_clip(seed: int, frames: int, size: int) -> np.ndarray:
    """uint8 RGB [frames, size, size, 3] made by the embedded model (cached for the run)."""
    key = (seed, frames, size)
    if key not in _model_cache:
        from spacetime.model.pipeline import Spacetime
        if "pipe" not in _model_cache:
            _model_cache["pipe"] = Spacetime.load("toyworld")
        out = _model_cache["pipe"].generate(MODEL_PROMPTS[seed % len(MODEL_PROMPTS)], width=size, height=size,
                                            frames=frames, seed=seed)
        _model_cache[key] = video.to_uint8_rgb(out[0])
    return _model_cache[key]


def make_clip(kind: str, seed: int, frames: int, size: int) -> np.ndarray:
    """uint8 RGB [frames, size, size, 3]."""
    rng = np.random.default_rng(seed)
    if kind == "flat":                                   # one flat colour (the first clip of a run: navy)
        colour = (20, 30, 80) if seed % 1000 == 0 else rng.integers(0, 256, 3)
        return np.broadcast_to(np.array(colour, np.uint8), (frames, size, size, 3)).copy()
    if kind == "toy":
        from spacetime.toyworld.world import random_clip
        return random_clip(seed, frames=frames, width=size, height=size).frames
    if kind == "model":
        return model_clip(seed, frames, size)
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


def mark_visibility(luma: np.ndarray, marked: np.ndarray) -> tuple[float, float]:
    """(largest luma change the mark adds between horizontally or vertically neighbouring pixels, PSNR in dB)."""
    d = marked - luma
    step = max(float(np.abs(np.diff(d, axis=1)).max()), float(np.abs(np.diff(d, axis=2)).max()))
    mse = float(np.mean(d ** 2))
    return step, (10 * np.log10(255.0 ** 2 / mse) if mse > 0 else float("inf"))


def can_mark(scheme: str, size: int, frames: int) -> bool:
    try:
        watermark.embed_luma(np.zeros((frames, size, size)), scheme=scheme)
        return True
    except watermark.WatermarkError:
        return False


def _kinds(size: int, model_clips: int) -> list:
    """The kind of each clip index: flat, smooth, grain, toy in turn, with model clips in place of every fifth."""
    return [k for k in KINDS if k != "model" or (size in MODEL_SIZES and model_clips)]


def robustness(sizes, crfs, clips: int, frames: int, scheme: str = watermark.SCHEME_V3, model_clips: int = 3,
               extras: bool = False, log=print) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "stamped.mp4", Path(tmp) / "reencoded.mp4"
        for size in sizes:
            if not can_mark(scheme, size, frames):
                log(f"  {size:>3} px  {scheme}: cannot mark {frames} frames of this size")
                continue
            kinds = _kinds(size, model_clips)
            plan = [(kinds[i % len(kinds)], 1000 * size + i) for i in range(clips)]
            if "model" in kinds:                          # at most model_clips of them; the rest toy-world
                seen = [i for i, (k, _) in enumerate(plan) if k == "model"]
                for i in seen[model_clips:]:
                    plan[i] = ("toy", plan[i][1])
            for crf in crfs:
                exact, false_pos, agree, trimmed = 0, 0, [], 0
                by_kind = {k: [0, 0] for k in kinds}
                steps, psnrs = {k: [] for k in kinds}, {k: [] for k in kinds}
                t0 = time.perf_counter()
                for i, (kind, seed) in enumerate(plan):
                    rgb = make_clip(kind, seed, frames, size)
                    content = int(np.random.default_rng(i).integers(0, 2 ** 32))
                    for marked in (True, False):
                        luma, u, v = video.rgb_to_yuv420(rgb)
                        if marked:
                            plain = luma
                            luma = watermark.embed_luma(luma, watermark.DEFAULT_GENERATOR, content, scheme=scheme)
                            step, psnr = mark_visibility(plain, luma)
                            steps[kind].append(step)
                            psnrs[kind].append(psnr)
                        video.encode_yuv(str(first), luma, u, v, fps=16, crf=video.DEFAULT_CRF)
                        video.transcode(first, second, crf=crf)
                        back = video.read_luma(second)[0]
                        got = watermark.detect_luma(back)
                        if marked:
                            ok = got.detected and got.content_id == content
                            exact += ok
                            by_kind[kind][0] += ok
                            by_kind[kind][1] += 1
                            agree.append(got.bit_agreement)
                            if extras:
                                cut = watermark.detect_luma(back[2:])
                                trimmed += cut.detected and cut.content_id == content
                        else:
                            false_pos += got.detected
                rate = exact / clips
                flat_step = max(steps["flat"], default=0.0)
                gen_step = max((x for k in kinds if k != "flat" for x in steps[k]), default=0.0)
                flat_psnr = min(psnrs["flat"], default=float("inf"))
                gen_psnr = min((x for k in kinds if k != "flat" for x in psnrs[k]), default=float("inf"))
                results[(size, crf)] = {"exact": rate, "false_detections": false_pos, "scheme": scheme,
                                        "bit_agreement": float(np.mean(agree)), "by_kind": by_kind,
                                        "max_step_flat": flat_step, "max_step_generated": gen_step,
                                        "min_psnr_flat": flat_psnr, "min_psnr_generated": gen_psnr,
                                        "trimmed_exact": trimmed / clips if extras else None}
                kinds_txt = ", ".join(f"{k} {a}/{n}" for k, (a, n) in by_kind.items())
                cut_txt = f"   trimmed by 2 frames {trimmed}/{clips}" if extras else ""
                log(f"  {size:>3} px  {scheme:<20} CRF {crf}: exact {exact}/{clips} = {rate:6.1%}   bit agreement "
                    f"{np.mean(agree):.3f}   false detections {false_pos}/{clips}   ({kinds_txt}){cut_txt}   "
                    f"largest step flat {flat_step:.2f} / other {gen_step:.2f}   min PSNR flat {flat_psnr:.1f} / "
                    f"other {gen_psnr:.1f} dB   {time.perf_counter() - t0:.1f} s")
    return results


def stills(sizes, crf: int, clips: int, scheme: str = watermark.SCHEME_V3, log=print) -> dict:
    """Single frames: read back from the marked pixels (uint8, as in a PNG), and from a one-frame H.264 video
    re-encoded at ``crf``."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "still.mp4", Path(tmp) / "still2.mp4"
        for size in sizes:
            if not can_mark(scheme, size, 1):
                log(f"  {size:>3} px  single frames: {scheme} cannot mark them (the block scheme v1 does)")
                continue
            pixels = coded = 0
            psnrs = []
            for i in range(clips):
                kind = KINDS[i % 4]
                rgb = make_clip(kind, 7000 + 1000 * size + i, 1, size)
                content = int(np.random.default_rng(100 + i).integers(0, 2 ** 32))
                luma, u, v = video.rgb_to_yuv420(rgb)
                marked = watermark.embed_luma(luma, watermark.DEFAULT_GENERATOR, content, scheme=scheme)
                psnrs.append(mark_visibility(luma, marked)[1])
                got = watermark.detect_luma(np.round(marked))
                pixels += got.detected and got.content_id == content
                video.encode_yuv(str(first), marked, u, v, fps=16, crf=video.DEFAULT_CRF)
                video.transcode(first, second, crf=crf)
                got = watermark.detect_luma(video.read_luma(second)[0])
                coded += got.detected and got.content_id == content
            out[size] = {"pixels": pixels / clips, "coded": coded / clips, "min_psnr": min(psnrs)}
            log(f"  {size:>3} px  single frames ({scheme}): from the pixels {pixels}/{clips}, after H.264 CRF "
                f"{crf} {coded}/{clips}, min PSNR {min(psnrs):.1f} dB")
    return out


def navy_sheet(path: Path, zoom: int = 6, scheme: str = watermark.SCHEME_V3, frames: int = 17) -> Path:
    """A PNG to look at: the first frame of a 64x64 navy clip (128x128 for v2, which needs it), unmarked beside
    marked, enlarged ``zoom`` times (nearest neighbour), plus the mark itself (the luma change, stretched so that
    1 level = 40 grey levels around mid grey)."""
    from PIL import Image
    size = 64 if can_mark(scheme, 64, frames) else 128
    rgb = make_clip("flat", 0, frames, size)
    luma, u, v = video.rgb_to_yuv420(rgb)
    marked = watermark.embed_luma(luma, watermark.DEFAULT_GENERATOR, 0x5EED, scheme=scheme)
    out = video.yuv420_to_rgb(np.round(marked), u, v)[0]
    diff = np.clip(128 + 40 * (marked - luma)[0], 0, 255).astype(np.uint8)
    row = np.concatenate([rgb[0], np.full((size, 4, 3), 255, np.uint8), out, np.full((size, 4, 3), 255, np.uint8),
                          np.repeat(diff[..., None], 3, axis=2)], axis=1)
    Image.fromarray(row).resize((row.shape[1] * zoom, row.shape[0] * zoom), Image.NEAREST).save(path)
    return path


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
    ap.add_argument("--clips", type=int, default=24, help="clips per size and CRF (default: 24)")
    ap.add_argument("--frames", type=int, default=17, help="frames per clip (default: 17)")
    ap.add_argument("--sizes", default="64,128,256", help="frame sizes in pixels (default: 64,128,256)")
    ap.add_argument("--crfs", default="23,28,30", help="re-encode CRFs (default: 23,28,30)")
    ap.add_argument("--schemes", default="v3,v1", help="watermark schemes to compare: v3 (smooth, in use), v2 "
                    "(bumps), v1 (blocks) (default: v3,v1)")
    ap.add_argument("--model-clips", type=int, default=3, help="clips made by the embedded model per size, at 64 and "
                    "128 px (about a minute each on a CPU; default: 3)")
    ap.add_argument("--quick", action="store_true", help="8 clips per setting")
    ap.add_argument("--sheet", help="also write enlarged navy frames (unmarked, marked, the mark) as PNGs with "
                    "this prefix (default: none)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: watermark, stills, review, stamp")
    a = ap.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    clips = 8 if a.quick else a.clips
    sizes = [int(s) for s in a.sizes.split(",")]
    crfs = [int(c) for c in a.crfs.split(",")]
    failed = False
    if a.sheet:
        for name in a.schemes.split(","):
            print("wrote", navy_sheet(Path(f"{a.sheet}-{name}.png"), scheme=SCHEMES[name]))
    if "watermark" not in skip:
        for name in a.schemes.split(","):
            print(f"watermark {name} ({SCHEMES[name]}): {clips} clips of {a.frames} frames per setting "
                  f"({', '.join(KINDS)}), stamped at CRF {video.DEFAULT_CRF}, then re-encoded")
            res = robustness(sizes, crfs, clips, a.frames, SCHEMES[name], a.model_clips, extras=name == "v3")
            if name == "v3":
                failed |= any(r["exact"] < 0.95 for (s, c), r in res.items() if c == 23)
                failed |= any(r["false_detections"] for r in res.values())
                failed |= any(r["max_step_flat"] > 1 or r["max_step_generated"] > 1 or r["min_psnr_flat"] < 42
                              or r["min_psnr_generated"] < 42 for r in res.values())
    if "stills" not in skip:
        print("single frames:")
        stills(sizes, 23, max(4, clips // 2))
    if "review" not in skip:
        print("frame review (default classifier):")
        failed |= frame_review() > 40
    if "stamp" not in skip:
        print("stamping (watermark + encode + sign):")
        failed |= stamping() > 1.5
    print("targets: v3 exact >= 95% at CRF 23, no false detection, step <= 1 level, PSNR >= 42 dB; review <= 40 "
          "ms/frame, stamp <= 1.5 s:", "missed" if failed else "met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
