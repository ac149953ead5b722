"""Block offload benchmark (prints figures; not a test): DiT forward time and peak device memory with 0..N blocks kept
in CPU memory, and the cost of an expert switch (one DiT off the device, the other on).

    python benchmarks/bench_offload.py --quick                                  # tiny DiT, CPU: checks the path
    python benchmarks/bench_offload.py --preset wan2.2-t2v-a14b --dtype bf16 --blocks 0 20 30 --grid 21 30 52

Random weights, one fresh subprocess per setting (peak memory: torch's peak allocation on CUDA, the process's peak
resident set on CPU). The 14B presets need about 30 GB of CPU memory per model in bf16.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _checkout import PRELUDE  # noqa: E402  (imports this checkout as ``spacetime`` in each subprocess)

CHILD = r"""
import json, resource, time, torch
from dataclasses import replace
from spacetime.model.config import dit_preset
from spacetime.model.dit import build_dit
from spacetime.model.offload import BlockOffload, place_model
dev = "cuda" if torch.cuda.is_available() else "cpu"
dtype = {{"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}}[{dtype!r}]
cfg = dit_preset({preset!r})
if {layers}:
    cfg = replace(cfg, num_layers={layers})
m = build_dit(cfg, device="meta", init=False).to_empty(device="cpu").to(dtype).eval()
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0.0, 0.02, generator=g)
def sync():
    if dev == "cuda": torch.cuda.synchronize()
if {blocks}:
    off = BlockOffload(m, {blocks}, dev)
t0 = time.perf_counter(); place_model(m, dev); sync(); load_s = time.perf_counter() - t0
resident = sum(p.numel() * p.element_size() for p in m.parameters() if p.device.type == dev) / 2**30
F, H, W = {grid}
x = torch.randn(1, cfg.in_dim, F, 2 * H, 2 * W, device=dev)
ctx = torch.randn(1, 512, cfg.text_dim, device=dev)
t = torch.tensor([500.0], device=dev)
times = []
with torch.no_grad():
    kv = m.text_kv(m.embed_text(ctx))
    if dev == "cuda": torch.cuda.reset_peak_memory_stats()
    for _ in range({reps}):
        sync(); t0 = time.perf_counter(); m(x, t, text_kv=kv); sync(); times.append(time.perf_counter() - t0)
peak = (torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
t0 = time.perf_counter(); place_model(m, "cpu"); sync(); unload_s = time.perf_counter() - t0
print(json.dumps({{"device": dev, "forward_s": min(times), "peak_gb": peak, "resident_gb": resident,
                  "load_s": load_s, "unload_s": unload_s, "tokens": F * H * W, "layers": cfg.num_layers}}))
"""


def run(preset, dtype, blocks, grid, reps, layers=0) -> dict:
    code = PRELUDE + CHILD.format(preset=preset, dtype=dtype, blocks=blocks, grid=tuple(grid), reps=reps,
                                  layers=layers)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wan-tiny", help="DiT preset (default: wan-tiny)")
    ap.add_argument("--layers", type=int, default=0, help="override the layer count (default: 0 = the preset's)")
    ap.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="fp32", help="weights (default: fp32)")
    ap.add_argument("--blocks", type=int, nargs="+", help="offloaded block counts (default: 0, half, all)")
    ap.add_argument("--grid", type=int, nargs=3, default=(5, 8, 8), metavar=("F", "H", "W"),
                    help="token grid: latent frames, height and width in patches (default: 5 8 8)")
    ap.add_argument("--reps", type=int, default=3, help="timed forwards per setting, best kept (default: 3)")
    ap.add_argument("--quick", action="store_true", help="a 4-layer tiny DiT, two settings")
    a = ap.parse_args(argv)
    layers = 4 if a.quick and not a.layers else a.layers
    first = run(a.preset, a.dtype, 0, a.grid, a.reps, layers)
    n = first["layers"]
    counts = a.blocks or ([0, n] if a.quick else [0, n // 2, n])
    print(f"DiT {a.preset} ({n} layers, {a.dtype}), {first['tokens']} tokens, {first['device']}")
    print("  offloaded  forward s   peak GB   weights on device GB   load s   unload s")
    for k in counts:
        r = first if k == 0 else run(a.preset, a.dtype, k, a.grid, a.reps, layers)
        print(f"  {k:9d}  {r['forward_s']:9.3f}  {r['peak_gb']:8.2f}  {r['resident_gb']:21.2f}  {r['load_s']:7.2f}  "
              f"{r['unload_s']:8.2f}")
    print("  (an expert switch costs about one unload plus one load)")


if __name__ == "__main__":
    main()
