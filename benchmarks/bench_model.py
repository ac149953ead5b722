"""Model-core benchmarks (prints figures; not a test).

    python benchmarks/bench_model.py [--ref REF_DIR] [--comfy COMFYUI_DIR] [--reps N] [--quick]

1. DiT forward step time at 320, 2,016 and 8,190 tokens (a Wan-architecture DiT: dim 512, 4 layers, head dim 128,
   a 64-token prompt padded to 512) with the same weights and inputs through
   - ours: one forward from the raw prompt (text embedding included), and ``step``: a sampling step as our sampler
     runs it (text keys/values computed once per run);
   - the reference Wan code when available (``--ref`` or SPACETIME_REFERENCE_DIR: a folder holding ``wan21ref/``
     copies of Wan2.1's modules, as described in tests/fixtures/parity/make_fixtures.py);
   - ComfyUI's native Wan model when a ComfyUI checkout is given (``--comfy`` or SPACETIME_COMFY_DIR; it needs
     ``pip install psutil`` beside this pack's requirements), with its default attention for the device, the prompt
     padded to 512 tokens as ComfyUI's text encoder does;
   interleaved in one process, best of ``--reps``; ratios are our time / theirs.
2. VAE decode peak memory at 5, 17, 33 and 65 frames (the Wan 2.1 VAE architecture, random weights): growth from
   17 to 65 frames against the size of the 48 extra output frames.

Each configuration runs in a fresh subprocess (peak resident set on CPU; torch's peak allocation on CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _checkout import PRELUDE  # noqa: E402  (imports this checkout as ``spacetime`` in each subprocess)


def _child(code: str) -> dict:
    # Large buffers straight from mmap, so the resident-set peak tracks live tensors rather than allocator caches.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072", MALLOC_ARENA_MAX="2")
    out = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


DIT_CHILD = r"""
import json, resource, sys, time, torch
from spacetime.model.config import DiTConfig
from spacetime.model.dit import build_dit
dev = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if dev == "cuda" else torch.float32
cfg = DiTConfig(dim={dim}, ffn_dim={ffn}, num_heads={dim} // 128, num_layers={layers}, text_len=512)
torch.manual_seed(0)
m = build_dit(cfg).to(dev, dtype).eval()
torch.nn.init.normal_(m.head.head.weight, std=0.02)
F, H, W = {grid}
x = torch.randn(1, 16, F, 2 * H, 2 * W, device=dev)
ctx = torch.randn(1, 64, 4096, device=dev)
t = torch.tensor([500.0], device=dev)
with torch.no_grad():
    kv = m.text_kv(m.text_tokens(ctx))
fns = {{"ours": lambda: m(x, t, ctx), "step": lambda: m(x, t, text_kv=kv)}}
if {ref!r}:
    sys.path.insert(0, {ref!r})
    from wan21ref import model as R
    def attn(q, k, v, q_lens=None, k_lens=None, **kw):
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2).type_as(q)
    R.flash_attention = attn
    r = R.WanModel(model_type="t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                   num_layers=cfg.num_layers).to(dev, dtype).eval()
    r.load_state_dict(m.state_dict())
    fns["ref"] = lambda: r([x[0]], t=t, context=[ctx[0]], seq_len=F * H * W)[0]
if {comfy!r}:
    sys.path.insert(0, {comfy!r})
    import comfy.cli_args
    comfy.cli_args.args.cpu = dev == "cpu"
    import comfy.ops
    from comfy.ldm.modules import attention as comfy_attention
    from comfy.ldm.wan.model import WanModel as ComfyWan
    c = ComfyWan(model_type="t2v", dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                 num_layers=cfg.num_layers, device=dev, dtype=dtype, operations=comfy.ops.disable_weight_init).eval()
    c.load_state_dict(m.state_dict())
    ctx512 = torch.cat([ctx, ctx.new_zeros(1, 512 - ctx.shape[1], ctx.shape[2])], dim=1).to(dtype)
    fns["comfy"] = lambda: c(x.to(dtype), t, ctx512)
    comfy_attn = comfy_attention.optimized_attention.__name__
res = {{name: [] for name in fns}}
with torch.no_grad():
    outs = {{name: fn().float() for name, fn in fns.items()}}
    for _ in range({reps}):
        for name, fn in fns.items():
            if dev == "cuda": torch.cuda.synchronize()
            t0 = time.perf_counter(); fn()
            if dev == "cuda": torch.cuda.synchronize()
            res[name].append(time.perf_counter() - t0)
out = {{k: min(v) for k, v in res.items()}}
out["diff"] = {{k: (o - outs["ours"].view_as(o)).abs().max().item() for k, o in outs.items() if k != "ours"}}
if {comfy!r}:
    out["comfy_attention"] = comfy_attn
out["peak_mb"] = (torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda"
                  else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
out["device"] = dev
print(json.dumps(out))
"""

VAE_CHILD = r"""
import json, resource, torch
from spacetime.model.config import VAEConfig
from spacetime.model.vae import build_vae
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
vae = build_vae(VAEConfig()).to(dev)
z = torch.randn(1, 16, ({frames} - 1) // 4 + 1, {h} // 8, {w} // 8, device=dev)
base = (torch.cuda.memory_allocated() / 2**20 if dev == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
with torch.no_grad():
    out = vae.decode(z)
peak = (torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps({{"peak_mb": peak, "before_mb": base, "out_mb": out.numel() * 4 / 2**20, "frames": out.shape[2]}}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default=os.environ.get("SPACETIME_REFERENCE_DIR", ""),
                    help="folder holding wan21ref/ (default: $SPACETIME_REFERENCE_DIR or none)")
    ap.add_argument("--comfy", default=os.environ.get("SPACETIME_COMFY_DIR", ""),
                    help="a ComfyUI checkout to compare with (default: $SPACETIME_COMFY_DIR or none)")
    ap.add_argument("--reps", type=int, default=0, help="timed repetitions per model (default: 5, 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="two token counts, 3 repetitions, no VAE figures")
    a = ap.parse_args(argv)
    ref = str(Path(a.ref).resolve()) if a.ref else ""
    comfy = str(Path(a.comfy).resolve()) if a.comfy else ""
    reps = a.reps or (3 if a.quick else 5)
    print("DiT forward step (dim 512, ffn 2048, 4 layers, head dim 128, 64 text tokens padded to 512); "
          "ratio = our time / theirs")
    grids = [(5, 8, 8), (21, 8, 12), (21, 15, 26)] if not a.quick else [(5, 8, 8), (21, 8, 12)]
    for grid in grids:
        tokens = grid[0] * grid[1] * grid[2]
        r = _child(DIT_CHILD.format(ref=ref, comfy=comfy, dim=512, ffn=2048, layers=4, grid=grid, reps=reps))
        line = f"  {tokens:6d} tokens: ours {r['ours'] * 1000:8.1f} ms (step with cached text {r['step'] * 1000:.1f} ms)"
        for name, label in (("ref", "reference"), ("comfy", "ComfyUI")):
            if name in r:
                line += (f", {label} {r[name] * 1000:8.1f} ms, ratio {r['ours'] / r[name]:.2f}x "
                         f"(step {r['step'] / r[name]:.2f}x, max diff {r['diff'][name]:.1e})")
        print(line + (f" [ComfyUI attention: {r['comfy_attention']}]" if "comfy_attention" in r else "")
              + f", process peak {r['peak_mb']:.0f} MB ({r['device']})")
    if a.quick:
        return
    print("VAE decode peak memory (Wan 2.1 VAE architecture, 128x128)")
    rows = {}
    for frames in (5, 17, 33, 65):
        r = _child(VAE_CHILD.format(frames=frames, h=128, w=128))
        rows[frames] = r
        print(f"  {frames:3d} frames: peak {r['peak_mb']:8.1f} MB (output {r['out_mb']:.1f} MB)")
    growth = rows[65]["peak_mb"] - rows[17]["peak_mb"]
    extra = rows[65]["out_mb"] - rows[17]["out_mb"]
    print(f"  growth 17 -> 65 frames: {growth:.1f} MB; the 48 extra output frames are {extra:.1f} MB "
          f"({'within' if growth <= extra * 1.05 + 2 else 'ABOVE'} target)")


if __name__ == "__main__":
    main()
