"""GPU benchmark of the real Wan architectures with random weights (prints figures; not a test).

    python benchmarks/bench_gpu.py [--archs 1.3b,5b,14b] [--formats bf16,fp8,q8_0,q4_k] [--grid F,H,W]
                                   [--steps 2] [--ref REF_DIR] [--json OUT.json]
    python benchmarks/bench_gpu.py --tiny          # the same code on tiny configurations (CPU, seconds)

For each architecture (Wan 2.1 T2V 1.3B, Wan 2.2 TI2V 5B, Wan 2.1 T2V 14B) and weight format (bf16; fp8 e4m3fn with a
per-tensor scale; GGUF Q8_0 / Q4_K, any of Q4_K Q5_K Q6_K Q8_0 F16 by name), in a fresh subprocess:
  * weights: every Linear gets the same seeded random bf16 matrix in every format, then is packed the way the
    loader keeps it (fp8 bytes + scale, GGUF blocks) and expanded per layer at run time; ``weights_gb`` is what the
    model holds on the device;
  * ``step_s``: seconds per sampling step (UniPC with CFG, i.e. two forwards) at the token grid (default 21 x 30 x 52
    latent patches = 32,760 tokens, Wan's 832x480x81 at 1.3B/14B; the same count for 5B), averaged over --steps;
  * ``forward_s``: one forward; ``peak_gb``: peak device memory while sampling (torch's peak allocation on CUDA,
    peak resident set on CPU);
  * ``err_vs_bf16``: relative difference of one forward's prediction from the bf16 run's (same weights before
    packing, same input): the format's own error at this size.
With ``--ref`` (a folder holding ``wan21ref/`` copies of Wan2.1's ``model.py`` and ``attention.py``, as described
in tests/fixtures/parity/make_fixtures.py) the reference WanModel runs too, in bf16 with PyTorch SDPA attention:
its forward time, two forwards per step, and its memory. Each case has a timeout; out-of-memory is reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _checkout import PRELUDE  # noqa: F401  (imports this checkout as ``spacetime``)

ARCHS = {"1.3b": "wan2.1-t2v-1.3b", "5b": "wan2.2-ti2v-5b", "14b": "wan2.1-t2v-14b"}
FORMATS = ("bf16", "fp8", "q8_0", "q4_k")
TINY = {"tiny": dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, text_len=32),
        "tiny-ti2v": dict(model_type="ti2v", in_dim=48, out_dim=48, dim=256, ffn_dim=768, num_heads=2, num_layers=2,
                          text_dim=64, text_len=32)}


def _config(arch: str):
    from spacetime.model.config import DiTConfig, dit_preset
    if arch in TINY:
        return DiTConfig(**TINY[arch])
    return dit_preset(ARCHS[arch])


def _seeded(shape, seed: int, std: float, device, dtype):
    import torch
    g = torch.Generator(device=device).manual_seed(seed)
    return (torch.randn(shape, generator=g, device=device, dtype=torch.float32) * std).to(dtype)


def build(arch: str, fmt: str, device):
    """A DiT with seeded random weights; Linear layers packed in ``fmt`` (none for bf16)."""
    import torch
    import torch.nn as nn
    from spacetime.model.dit import build_dit
    from spacetime.model.gguf import BLOCKS, quantize
    from spacetime.model.quant import install_packed, pack_fp8
    cfg = _config(arch)
    dtype = torch.bfloat16
    model = build_dit(cfg, device="meta", init=False)
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    packed = {}
    if fmt != "bf16":
        block = BLOCKS.get(fmt.upper(), (1, 0))[0]
        for i, (name, mod) in enumerate(linears):
            if mod.weight.shape[1] % block:             # as the GGUF converter does: such rows stay unquantised
                continue
            w = _seeded(mod.weight.shape, 1000 + i, mod.weight.shape[1] ** -0.5, device, dtype)
            packed[f"{name}.weight"] = (pack_fp8(w, torch.float8_e4m3fn, scaled=True) if fmt == "fp8"
                                        else quantize(w, fmt.upper()))
            del w
        install_packed(model, packed, {}, dtype)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        index = {name: i for i, (name, _) in enumerate(linears)}
        for name, p in model.named_parameters():
            owner, _, leaf = name.rpartition(".")
            if leaf == "weight" and owner in index:                 # dense Linear (bf16, or not packable)
                p.copy_(_seeded(p.shape, 1000 + index[owner], p.shape[1] ** -0.5, device, dtype))
            elif name.endswith("modulation"):
                p.copy_(_seeded(p.shape, hash(name) % 10007, cfg.dim ** -0.5, device, dtype))
            elif leaf == "bias":
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:                                               # patch embedding
                p.copy_(_seeded(p.shape, 7, p[0].numel() ** -0.5, device, dtype))
    return model.eval(), cfg


def _diffusers_stand_in():
    """The reference model module imports three diffusers names only for its config plumbing."""
    import types
    import torch
    try:
        import diffusers  # noqa: F401
        return
    except ImportError:
        pass
    cu = types.ModuleType("diffusers.configuration_utils")
    cu.ConfigMixin = object
    cu.register_to_config = lambda f: f
    mu = types.ModuleType("diffusers.models.modeling_utils")
    mu.ModelMixin = torch.nn.Module
    for name, mod in (("diffusers", types.ModuleType("diffusers")), ("diffusers.models",
                                                                     types.ModuleType("diffusers.models")),
                      ("diffusers.configuration_utils", cu), ("diffusers.models.modeling_utils", mu)):
        sys.modules.setdefault(name, mod)


def build_reference(ref_dir: str, cfg, device):
    import torch
    sys.path.insert(0, ref_dir)
    _diffusers_stand_in()
    from wan21ref import model as R

    def attn(q, k, v, q_lens=None, k_lens=None, **kw):
        o = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2).type_as(q)
    R.flash_attention = attn
    with torch.device("meta"):
        r = R.WanModel(model_type="t2v", in_dim=cfg.in_dim, out_dim=cfg.out_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim,
                       num_heads=cfg.num_heads, num_layers=cfg.num_layers, text_dim=cfg.text_dim,
                       text_len=cfg.text_len)
    # bf16 on the GPU under autocast (its pipeline's setting); on the CPU, where its fp32 islands need CUDA
    # autocast, in fp32 (a check of this script only)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    r = r.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for i, p in enumerate(r.parameters()):
            p.copy_(_seeded(p.shape, 50 + i, 0.02, device, dtype))
    d = cfg.dim // cfg.num_heads                                 # its RoPE table is a plain attribute, built anew
    r.freqs = torch.cat([R.rope_params(1024, d - 4 * (d // 6)), R.rope_params(1024, 2 * (d // 6)),
                         R.rope_params(1024, 2 * (d // 6))], dim=1).to(device)
    return r.eval()


def _mem(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run_case(arch: str, fmt: str, grid, steps: int, ref_dir: str = "", save: str = "") -> dict:
    import torch
    from spacetime.model.sampling import sample
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {"arch": arch, "format": fmt, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
           "tokens": grid[0] * grid[1] * grid[2]}
    try:
        cfg = _config(arch)
        if fmt == "reference":
            model = build_reference(ref_dir, cfg, device)
        else:
            model, cfg = build(arch, fmt, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            out["weights_gb"] = torch.cuda.memory_allocated() / 2 ** 30
            torch.cuda.reset_peak_memory_stats()
        else:
            out["weights_gb"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2 ** 30
        F, H, W = grid
        pt, ph, pw = cfg.patch_size
        g = torch.Generator().manual_seed(0)
        noise = torch.randn(1, cfg.in_dim, F * pt, H * ph, W * pw, generator=g).to(device)
        n_text = min(64, cfg.text_len)                          # prompt tokens (zero-padded to text_len inside)
        ctx = torch.randn(1, n_text, cfg.text_dim, generator=g).to(device, torch.bfloat16)
        null = torch.randn(1, n_text, cfg.text_dim, generator=g).to(device, torch.bfloat16)
        t = torch.tensor([500.0], device=device)

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize()
        with torch.no_grad():
            if fmt == "reference":
                L = F * H * W

                dt = next(model.parameters()).dtype

                def fwd():                     # under autocast, as the reference's own pipeline calls it
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                        return model([noise[0].to(dt)], t=t, context=[ctx[0].to(dt)], seq_len=L)[0]
                fwd()
                sync()
                t0 = time.perf_counter()
                fwd()
                sync()
                out["forward_s"] = time.perf_counter() - t0
                out["step_s"] = 2 * out["forward_s"]           # cond + uncond, the reference's CFG loop
            else:
                model(noise, t, ctx)                          # warm-up
                sync()
                t0 = time.perf_counter()
                pred = model(noise, t, ctx)
                sync()
                out["forward_s"] = time.perf_counter() - t0
                if save:
                    torch.save(pred.float().cpu(), save)
                sample(model, noise, ctx, null, steps=1, shift=5.0, cfg=5.0)
                sync()
                t0 = time.perf_counter()
                lat = sample(model, noise, ctx, null, steps=steps, shift=5.0, cfg=5.0)
                sync()
                out["step_s"] = (time.perf_counter() - t0) / steps
                out["finite"] = bool(torch.isfinite(lat).all())
        out["peak_gb"] = _mem(device)
    except torch.cuda.OutOfMemoryError:
        out["error"] = "out of memory"
    except Exception as exc:                                   # reported in the table, the other cases go on
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    return out


def _child(arch, fmt, grid, steps, ref, save, timeout) -> dict:
    cmd = [sys.executable, __file__, "--case", f"{arch}:{fmt}", "--grid", ",".join(map(str, grid)),
           "--steps", str(steps), "--save", save] + (["--ref", ref] if ref else [])
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=os.path.dirname(__file__))
    except subprocess.TimeoutExpired:
        return {"arch": arch, "format": fmt, "error": f"timed out after {timeout} s"}
    lines = [x for x in p.stdout.splitlines() if x.startswith("{")]
    if not lines:
        return {"arch": arch, "format": fmt, "error": (p.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return json.loads(lines[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="1.3b,5b,14b", help="comma list of 1.3b, 5b, 14b (default: %(default)s)")
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma list of bf16, fp8, q8_0, q4_k, q5_k, q6_k, "
                    "f16 (default: %(default)s)")
    ap.add_argument("--grid", default="21,30,52", help="latent patches F,H,W (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=2, help="timed sampling steps per case (default: %(default)s)")
    ap.add_argument("--ref", default=os.environ.get("SPACETIME_REFERENCE_DIR", ""),
                    help="folder with wan21ref/ (default: $SPACETIME_REFERENCE_DIR or none)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per case (default: %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="tiny configurations and grid (a CPU check of this script)")
    ap.add_argument("--inline", action="store_true", help="run the cases in this process (default: one subprocess "
                    "each, so peak memory is per case)")
    ap.add_argument("--json", help="also write the results to this file (default: none)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--save", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    grid = tuple(int(v) for v in a.grid.split(","))
    if a.case:
        arch, fmt = a.case.split(":")
        print(json.dumps(run_case(arch, fmt, grid, a.steps, a.ref, a.save)))
        return 0
    archs = list(TINY) if a.tiny else [x.strip() for x in a.archs.split(",") if x.strip()]
    if a.tiny and a.grid == ap.get_default("grid"):
        grid = (2, 4, 4)
    bad = [x for x in archs if x not in ARCHS and x not in TINY]
    if bad:
        ap.error(f"--archs {','.join(bad)}: allowed {', '.join(ARCHS)}")
    formats = [x.strip().lower() for x in a.formats.split(",") if x.strip()]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            outputs = {}
            cases = formats + (["reference"] if a.ref else [])
            for fmt in cases:
                save = os.path.join(tmp, f"{arch}-{fmt}.pt") if fmt != "reference" else ""
                r = (run_case(arch, fmt, grid, a.steps, a.ref, save) if a.inline
                     else _child(arch, fmt, grid, a.steps, a.ref, save, a.timeout))
                if save and os.path.exists(save):
                    import torch
                    outputs[fmt] = torch.load(save, weights_only=True)
                    if "bf16" in outputs and fmt != "bf16":
                        base = outputs["bf16"]
                        r["err_vs_bf16"] = float((outputs[fmt] - base).norm() / base.norm())
                results.append(r)
                _print_row(r)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


def _print_row(r):
    if "error" in r:
        print(f"{r['arch']:>9} {r['format']:>9}: {r['error']}")
        return
    err = f", err vs bf16 {r['err_vs_bf16']:.4f}" if "err_vs_bf16" in r else ""
    print(f"{r['arch']:>9} {r['format']:>9}: {r['step_s']:8.3f} s/step, forward {r['forward_s']:7.3f} s, weights "
          f"{r['weights_gb']:8.3f} GB, peak {r['peak_gb']:7.2f} GB, {r['tokens']} tokens on {r['device']}{err}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
