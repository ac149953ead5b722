"""Long-video benchmark (prints figures; not a test): memory and time of the streamed long-video path.

    python benchmarks/bench_longvideo.py [--preset toyworld] [--frames 961] [--steps 0]

Each run is a fresh process: windows of 17 frames (overlap 4, the first frame as anchor) sampled, decoded,
watermarked, encoded and signed as they come (what ``spacetime generate --window-frames`` does), with the frame
classifier's review of every piece (as the CLI does) and without it. The default long run is 2 minutes of 64x64
video at 8 fps (961 frames); a 41-frame run is the baseline. Printed per run: the peak resident memory, the resident
memory after each window (every 10th shown), its change from the 4th window to the end and between the second and
the last quarter of the run, the signed MP4's size, what the whole video would take as float32 frames, and the time
per window. Flat memory: from the 4th window on (the model, the decoder state, the encoder and the classifier
loaded) resident memory grows by less than the output file does.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _checkout import PRELUDE  # noqa: E402  (also imports this checkout as ``spacetime``)

RUN = PRELUDE + """
import json, resource, sys, time
from pathlib import Path
from spacetime.model.longvideo import long_video_latents, stream_frames
from spacetime.model.pipeline import Spacetime
from spacetime.provenance.stamp import StampWriter
from spacetime.safety import FrameReview

preset, frames, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) or None, Path(sys.argv[4])
review = sys.argv[5] == "review"

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
with StampWriter(out, 8, {"model": preset}, review=FrameReview() if review else None) as w:
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


def run(preset: str, frames: int, steps: int, out: Path, review: bool) -> dict:
    proc = subprocess.run([sys.executable, "-c", RUN, preset, str(frames), str(steps), str(out),
                           "review" if review else "no-review"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the run of {frames} frames failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def describe(name: str, r: dict) -> str:
    marks = r["rss_by_window_mb"]
    q = max(1, len(marks) // 4)
    after4 = max(marks[3:], default=marks[-1]) - marks[min(3, len(marks) - 1)]
    trend = statistics.median(marks[-q:]) - statistics.median(marks[q:2 * q])
    flat = after4 * 2 ** 20 < r["file_mb"] * 2 ** 20
    return (f"{name}: {r['frames']} frames, {r['windows']} windows; peak {r['peak_mb']:.0f} MB; resident after "
            f"windows 1, 11, 21, ...: {marks[::10]} MB; from window 4 to the end +{after4:.1f} MB at most, last "
            f"quarter vs second quarter {trend:+.1f} MB; MP4 {r['file_mb'] * 1024:.0f} KB; as float32 frames "
            f"{r['float_frames_mb']:.0f} MB; {r['seconds_per_window']:.2f} s per window -> "
            f"{'flat' if flat else 'grows by more than the file'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="toyworld", help="model preset (default: toyworld)")
    ap.add_argument("--frames", type=int, default=961, help="frames of the long run, 1 + 4k (default: 961 = 2 "
                    "minutes at 8 fps)")
    ap.add_argument("--short", type=int, default=41, help="frames of the baseline run (default: 41)")
    ap.add_argument("--steps", type=int, default=0, help="sampling steps per window; memory does not depend on "
                    "them (default: 0 = the preset's)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        short = run(a.preset, a.short, a.steps, Path(tmp) / "short.mp4", True)
        long_review = run(a.preset, a.frames, a.steps, Path(tmp) / "long.mp4", True)
        long_plain = run(a.preset, a.frames, a.steps, Path(tmp) / "long_plain.mp4", False)
    print(describe("short run, frames reviewed", short))
    print(describe("long run, frames reviewed", long_review))
    print(describe("long run, no frame review", long_plain))
    print(f"peak memory, short -> long run (reviewed): {long_review['peak_mb'] - short['peak_mb']:+.1f} MB; output "
          f"file {short['file_mb'] * 1024:.0f} -> {long_review['file_mb'] * 1024:.0f} KB; the frames as float32 "
          f"{short['float_frames_mb']:.0f} -> {long_review['float_frames_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
