"""Long-video benchmark (prints figures; not a test): memory and time of the streamed long-video path.

    python benchmarks/bench_longvideo.py [--preset toyworld] [--frames 961] [--steps 0] [--out-dir DIR]

Each length runs in a fresh process: windows of 17 frames (overlap 4, the first frame as anchor) sampled, decoded,
reviewed by the frame classifier, watermarked, encoded and signed as they come (what ``spacetime generate
--window-frames`` does). Printed per length: the peak resident memory, the memory after the first window (the model,
the classifier, the encoder and the decoder state loaded), their difference (what the run added while it grew), the
signed MP4's size, what the whole video would take as float32 frames, and the time per window. The default long run
is 2 minutes of 64x64 video at 8 fps (961 frames); a short run of 41 frames is the baseline. Flat memory: the
resident memory of the long run grows by less from its third window to its end than the output file does (and the
peak grows less than the file between the short and the long run).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _checkout import PRELUDE  # noqa: E402  (also imports this checkout as ``spacetime``)

RUN = PRELUDE + """
import json, resource, sys, time
from pathlib import Path
import torch
from spacetime.model.longvideo import long_video_latents, stream_frames
from spacetime.model.pipeline import Spacetime
from spacetime.provenance.stamp import StampWriter
from spacetime.safety import FrameReview

preset, frames, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) or None, Path(sys.argv[4])

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20

st = Spacetime.load(preset, device="cpu")
marks, times = [], []
t0 = time.perf_counter()
def on_step(k, i, n):
    if i == n:
        times.append(time.perf_counter())
        marks.append(rss_mb())
gen = long_video_latents(st, ["a red ball rests on a navy background"], frames=frames, width=64, height=64,
                         window_frames=17, overlap_frames=4, anchor_frames=[0], seed=1, steps=steps,
                         callback=on_step)
with StampWriter(out, 8, {"model": preset}, review=FrameReview()) as w:
    for piece in stream_frames(st, (r.latents for r in gen)):
        w.write(piece)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
per_window = (times[-1] - times[0]) / max(1, len(times) - 1)
print(json.dumps({"frames": w.info["frames"], "windows": len(marks), "peak_mb": peak,
                  "after_first_window_mb": marks[0],
                  "rss_by_window_mb": [round(m, 1) for m in marks], "file_mb": w.info["bytes"] / 2 ** 20,
                  "float_frames_mb": frames * 64 * 64 * 3 * 4 / 2 ** 20, "seconds_per_window": per_window,
                  "seconds": time.perf_counter() - t0}))
"""


def run(preset: str, frames: int, steps: int, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, preset, str(frames), str(steps), str(out)], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"the run of {frames} frames failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="toyworld", help="model preset (default: toyworld)")
    ap.add_argument("--frames", type=int, default=961, help="frames of the long run, 1 + 4k (default: 961 = 2 "
                    "minutes at 8 fps)")
    ap.add_argument("--short", type=int, default=41, help="frames of the baseline run (default: 41)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps per window (default: 0 = the preset's)")
    ap.add_argument("--out-dir", type=Path, help="keep the MP4s here (default: a temporary folder)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.out_dir or Path(tmp)
        res = {n: run(a.preset, n, a.steps, folder / f"long_{n}.mp4") for n in (a.short, a.frames)}
    for n, r in res.items():
        added = r["peak_mb"] - r["after_first_window_mb"]
        print(f"{n} frames ({r['windows']} windows): peak {r['peak_mb']:.0f} MB, after the first window "
              f"{r['after_first_window_mb']:.0f} MB, added while running {added:.1f} MB; MP4 "
              f"{r['file_mb'] * 1024:.0f} KB; as float32 frames {r['float_frames_mb']:.0f} MB; "
              f"{r['seconds_per_window']:.2f} s per window, {r['seconds']:.0f} s in all")
    s, l_ = res[a.short], res[a.frames]
    growth = l_["peak_mb"] - s["peak_mb"]
    file_growth = l_["file_mb"] - s["file_mb"]
    floats = l_["float_frames_mb"] - s["float_frames_mb"]
    print(f"peak memory grew by {growth:.1f} MB from {a.short} to {a.frames} frames; the output file by "
          f"{file_growth * 1024:.0f} KB; the frames as float32 by {floats:.0f} MB")
    marks = l_["rss_by_window_mb"]
    within = max(marks[2:]) - marks[2] if len(marks) > 2 else 0.0
    print(f"resident memory every 10th window of the long run (MB): {marks[::10]}")
    print(f"within the long run, resident memory grew by {within * 1024:.0f} KB after window 3 while the MP4 grew to "
          f"{l_['file_mb'] * 1024:.0f} KB: {'flat' if within < l_['file_mb'] else 'GROWS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
