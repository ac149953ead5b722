"""Node-pack benchmarks (prints figures; not a test).

    python benchmarks/bench_pack.py [--preset toyworld] [--repeat 5]

1. Import time of the pack as ComfyUI imports it (a fresh interpreter importing the package's ``__init__`` and
   reading NODE_CLASS_MAPPINGS), median of ``--repeat`` runs, and which heavy modules that import pulled in.
2. The text-to-video workflow run twice in one process: wall time of each run and how many times model weights were
   read from disk (must be once).
3. A default generation with the embedded model (17 frames, the preset's steps and CFG) in a fresh process,
   including model load: wall time.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _checkout import ROOT  # noqa: E402  (also imports this checkout as ``spacetime``)
HEAVY = ("torch", "av", "c2pa", "onnxruntime", "numpy", "safetensors", "tokenizers", "cryptography", "PIL")

IMPORT_PROBE = f"""
import importlib.util, sys, time, json
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("comfyui_spacetime", {str(ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(ROOT)!r}])
mod = importlib.util.module_from_spec(spec)
sys.modules["comfyui_spacetime"] = mod
spec.loader.exec_module(mod)
n = len(mod.NODE_CLASS_MAPPINGS)
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "nodes": n, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""

GENERATE_PROBE = """
import time, sys
t0 = time.perf_counter()
from spacetime.model.pipeline import Spacetime
st = Spacetime.load(sys.argv[1])
v = st.generate("a red ball bounces on a navy background", frames=17, seed=7)
print(time.perf_counter() - t0, tuple(v.shape))
"""


def bench_import(repeat: int) -> dict:
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"median_s": statistics.median(r["seconds"] for r in runs), "nodes": runs[0]["nodes"],
            "heavy_modules_loaded": runs[0]["heavy"]}


def bench_run_twice(preset: str) -> dict:
    from spacetime.model import loading
    from spacetime.runner import run_workflow
    wf = json.loads((ROOT / "workflows" / "text_to_video.json").read_text())
    for n in wf["nodes"]:
        if n["type"] == "SpacetimeModelLoader":
            n["widgets_values"][0] = preset
    reads = []
    original = loading.read_state_dict

    def counting(path, *a, **k):
        reads.append(str(path))
        return original(path, *a, **k)
    loading.read_state_dict = counting
    times, counts = [], []
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            run_workflow(wf)
            times.append(time.perf_counter() - t0)
            counts.append(len(reads))
    finally:
        loading.read_state_dict = original
    return {"first_run_s": times[0], "second_run_s": times[1], "reads_first_run": counts[0],
            "reads_second_run": counts[1] - counts[0]}


def bench_generate(preset: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", GENERATE_PROBE, preset], capture_output=True, text=True, check=True)
    inner, shape = out.stdout.split(maxsplit=1)
    return {"process_s": time.perf_counter() - t0, "load_and_generate_s": float(inner), "shape": shape.strip()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="toyworld")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    imp = bench_import(a.repeat)
    print(f"pack import: {imp['median_s'] * 1000:.1f} ms median of {a.repeat}, {imp['nodes']} nodes, heavy modules "
          f"loaded: {imp['heavy_modules_loaded'] or 'none'}")
    twice = bench_run_twice(a.preset)
    print(f"text_to_video twice in one process: {twice['first_run_s']:.2f} s, then {twice['second_run_s']:.2f} s; "
          f"weight files read: {twice['reads_first_run']} in the first run, {twice['reads_second_run']} in the second")
    gen = bench_generate(a.preset)
    print(f"default generation (17 frames, load included): {gen['load_and_generate_s']:.2f} s in-process, "
          f"{gen['process_s']:.2f} s with interpreter start; output {gen['shape']}")


if __name__ == "__main__":
    main()
