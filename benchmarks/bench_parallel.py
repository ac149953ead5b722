"""Sequence / CFG parallel sampling: per-rank activation memory, step time and agreement with one rank (prints
figures; not a test). Runs on the CPU (gloo) or on every GPU of a machine (NCCL, one rank per GPU).

    python benchmarks/bench_parallel.py [--device cpu|cuda] [--ranks 1,2,4] [--config NAME] [--frames F]
                                        [--size WxH] [--steps S] [--reps N] [--json PATH]

For each rank count R: the layouts sequence R x cfg 1 and, for even R, sequence R/2 x cfg 2. Every rank builds the
same random-weight DiT (``--config``: ``tiny``, ``bench`` (dim 512, 4 layers, as bench_model.py) or a Wan preset such
as ``wan2.1-t2v-1.3b`` / ``wan2.1-t2v-14b``; bf16 on GPUs, fp32 on the CPU) and runs
- one guided sampling step (cond + uncond, 64-token prompt) after a warm-up step: the activation memory it adds on
  each rank (CUDA: the peak allocation above what was allocated before; CPU, Linux: the peak resident set above the
  one before) and the step time (best of ``--reps``);
- ``--steps`` UniPC steps from the same noise: the largest difference of the sampled latents from the one-rank run.
Defaults on a GPU machine: ranks 1, 2, 4, 8 up to the GPU count, ``wan2.1-t2v-1.3b``, 81 frames at 832x480
(32,760 tokens). On the CPU: ranks 1, 2, 4, ``bench`` at 17 frames 512x448 (4,480 tokens).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from _checkout import ROOT  # noqa: F401,E402  (imports this checkout as ``spacetime``)

CONFIGS = {
    "tiny": dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_len=512),
    "bench": dict(dim=512, ffn_dim=2048, num_heads=4, num_layers=4, text_len=512),
}


def dit_config(name):
    from spacetime.model.config import DiTConfig, dit_preset
    return DiTConfig(**CONFIGS[name]) if name in CONFIGS else dit_preset(name)


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak_rss():
    """Restart the peak resident set (VmHWM) at the current size (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def worker(rank, world, port, layout, opts, out_dir):
    """One rank: build, measure one guided step, sample, write results (rank 0 also the latents)."""
    import time
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from safetensors.torch import save_file
    from spacetime.model.dit import build_dit
    from spacetime.model.parallel import Layout, setup, teardown
    from spacetime.model.sampling import GuidedDenoiser, sample
    par = setup(Layout(*layout), opts["device"])
    dev = par.device
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = dit_config(opts["config"])
    torch.manual_seed(0)
    model = build_dit(cfg, device=dev, dtype=dtype).eval()
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    g = torch.Generator().manual_seed(1)
    F_, H, W = opts["latent"]
    noise = torch.randn(1, cfg.in_dim, F_, H, W, generator=g).to(dev)
    text = torch.randn(1, 64, cfg.text_dim, generator=g).to(dev, dtype)
    null = torch.randn(1, 16, cfg.text_dim, generator=g).to(dev, dtype)
    den = GuidedDenoiser(model, text, None, null, None, cfg=5.0, parallel=par)
    den(noise, 900)                                        # warm-up: one-time buffers are not activations
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_peak_rss()
        before = _status_mb("VmRSS")
    den(noise, 900)
    if cuda:
        torch.cuda.synchronize()
        act_mb = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        act_mb = _status_mb("VmHWM") - before
    times = []
    for _ in range(opts["reps"]):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        den(noise, 900)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    lat = sample(model, noise, text, null, steps=opts["steps"], shift=5.0, cfg=5.0, parallel=par)
    res = {"activation_mb": act_mb, "step_s": min(times)}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(res))
    if rank == 0:
        save_file({"latents": lat.float().cpu().contiguous()}, str(Path(out_dir, "latents.safetensors")))
    teardown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(layout, opts) -> dict:
    """Run one layout; -> {activation_mb (largest rank), step_s (slowest rank), latents}."""
    from safetensors.torch import load_file
    world = layout[0] * layout[1]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(worker, args=(world, _free_port(), layout, opts, d), nprocs=world)
        ranks = [json.loads(Path(d, f"rank{r}.json").read_text()) for r in range(world)]
        lat = load_file(str(Path(d, "latents.safetensors")))["latents"]
    return {"activation_mb": max(r["activation_mb"] for r in ranks), "step_s": max(r["step_s"] for r in ranks),
            "latents": lat}


def main(argv=None) -> list[dict]:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu",
                    help="default: cuda when available, else cpu")
    ap.add_argument("--ranks", default="", help="comma-separated rank counts (default: 1,2,4,8 up to the GPU "
                    "count on cuda; 1,2,4 on cpu)")
    ap.add_argument("--config", default="", help="tiny, bench or a Wan DiT preset (default: wan2.1-t2v-1.3b on cuda, "
                    "bench on cpu)")
    ap.add_argument("--frames", type=int, default=0, help="video frames, 1 + 4k (default: 81 on cuda, 17 on cpu)")
    ap.add_argument("--size", default="", help="WxH in pixels (default: 832x480 on cuda, 512x448 on cpu)")
    ap.add_argument("--steps", type=int, default=2, help="UniPC steps for the agreement check (default: 2)")
    ap.add_argument("--reps", type=int, default=3, help="timed guided steps per layout (default: 3)")
    ap.add_argument("--json", default="", help="also write the figures to this file (default: none)")
    a = ap.parse_args(argv)
    on_gpu = a.device == "cuda"
    if on_gpu and not cuda:
        raise SystemExit("bench_parallel: --device cuda but CUDA is not available")
    n_gpu = torch.cuda.device_count() if on_gpu else 0
    ranks = [int(r) for r in a.ranks.split(",")] if a.ranks else (
        [r for r in (1, 2, 4, 8) if r <= n_gpu] if on_gpu else [1, 2, 4])
    if on_gpu and max(ranks) > n_gpu:
        raise SystemExit(f"bench_parallel: {max(ranks)} ranks need {max(ranks)} GPUs; {n_gpu} visible")
    config = a.config or ("wan2.1-t2v-1.3b" if on_gpu else "bench")
    frames = a.frames or (81 if on_gpu else 17)
    w, h = (int(v) for v in (a.size or ("832x480" if on_gpu else "512x448")).lower().split("x"))
    latent = ((frames - 1) // 4 + 1, h // 8, w // 8)
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    opts = dict(device=a.device, config=config, latent=latent, steps=a.steps, reps=a.reps)
    if not on_gpu:     # large buffers straight from mmap, so the resident set follows live tensors (read at start)
        os.environ.update(MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    print(f"{config} DiT, random weights, {frames} frames {w}x{h} = {tokens} tokens, CFG 5, "
          f"{'bf16 on ' + str(n_gpu) + ' GPU(s), NCCL' if on_gpu else 'fp32 on the CPU, gloo'}")
    print("  layout              | tokens / rank | activation / rank | step time | max diff vs 1 rank")
    rows, ref = [], None
    layouts = [(1, 1)] if 1 in ranks else []
    for r in ranks:
        if r > 1:
            layouts += [(r, 1)] + ([(r // 2, 2)] if r % 2 == 0 else [])
    for layout in layouts:
        m = measure(layout, opts)
        if ref is None:
            ref = m["latents"]
        diff = (m["latents"] - ref).abs().max().item()
        row = {"sequence": layout[0], "cfg": layout[1], "tokens_per_rank": -(-tokens // layout[0]),
               "activation_mb": m["activation_mb"], "step_s": m["step_s"], "max_diff": diff}
        rows.append(row)
        print(f"  sequence {layout[0]} x cfg {layout[1]} | {row['tokens_per_rank']:13d} | "
              f"{row['activation_mb']:13.1f} MB | {row['step_s']:7.3f} s | {diff:.1e}")
    if a.json:
        Path(a.json).write_text(json.dumps({"config": config, "tokens": tokens, "device": a.device, "rows": rows},
                                           indent=1))
    return rows


if __name__ == "__main__":
    main()
