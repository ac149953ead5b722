"""benchmarks/bench_gpu.py runs end to end on tiny configurations (on the CPU here), so one GPU run suffices."""
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_benchmark_runs_on_tiny_configurations(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_gpu
    finally:
        sys.path.remove(str(BENCH))
    out = tmp_path / "bench.json"
    assert bench_gpu.main(["--tiny", "--inline", "--steps", "1", "--grid", "1,2,2", "--formats", "bf16,fp8,q8_0,q4_k",
                           "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["arch"], r["format"]) for r in rows] == [(a, f) for a in ("tiny", "tiny-ti2v")
                                                         for f in ("bf16", "fp8", "q8_0", "q4_k")]
    for r in rows:
        assert "error" not in r, r
        assert r["finite"] and r["step_s"] > 0 and r["forward_s"] > 0 and r["tokens"] == 4
    by = {(r["arch"], r["format"]): r for r in rows}
    for arch in ("tiny", "tiny-ti2v"):
        w = {f: by[arch, f]["weights_gb"] for f in ("bf16", "fp8", "q8_0", "q4_k")}
        assert w["q4_k"] < w["fp8"] < w["q8_0"] < w["bf16"], w          # the model holds the packed bytes
        errs = [by[arch, f]["err_vs_bf16"] for f in ("fp8", "q8_0", "q4_k")]
        assert all(0 < e < 0.3 for e in errs), errs
    assert "s/step" in capsys.readouterr().out
