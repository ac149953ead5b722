"""Train the embedded toy-world model: first the small causal VAE, then the DiT on its latents.

    python -m spacetime.toyworld.train vae    --out runs/vae --steps 4000
    python -m spacetime.toyworld.train encode --vae runs/vae --out runs/data --clips 24000
    python -m spacetime.toyworld.train dit    --data runs/data --out runs/dit --steps 30000
    python -m spacetime.toyworld.train export --vae runs/vae --dit runs/dit --out weights

Every stage is resumable (run the same command again) and writes a loss curve PNG next to its checkpoints. It uses
a CUDA GPU when one is available and all CPU cores otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model.config import DiTConfig, VAEConfig, config_from_dict, config_to_dict
from ..model.dit import build_dit
from ..model.embedded import TOY_DIT, TOY_VAE
from ..model.loading import read_state_dict, write_safetensors_atomic
from ..model.vae import build_vae
from .plot import loss_plot
from .world import random_clip

TRAIN_SIZES = ((64, 64), (96, 64), (64, 96))           # (width, height): square, landscape, portrait
TRAIN_FRAMES = (9, 17, 33)


def device_and_threads():
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return torch.device("cpu")


def clips_to_tensor(clips) -> torch.Tensor:
    """list of Clip -> [B, 3, T, H, W] in [-1, 1]."""
    arr = np.stack([c.frames for c in clips])                    # B T H W C
    return torch.from_numpy(arr).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


class Checkpointer:
    """Resumable training state: ``state.pt`` (plain tensors/numbers, read with weights_only=True) + a log."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"

    def load(self):
        p = self.out / "state.pt"
        return torch.load(p, map_location="cpu", weights_only=True) if p.exists() else None

    def save(self, state: dict):
        tmp = self.out / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "state.pt")

    def log(self, row: dict):
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self):
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def plot(self, keys, title):
        rows = self.rows()
        loss_plot({k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}, self.out / "loss.png", title)


def lr_at(step: int, total: int, peak: float, warmup: int = 200, floor: float = 0.1) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


# ----------------------------------------------------------------------------------------------------------------------
# VAE
# ----------------------------------------------------------------------------------------------------------------------

def train_vae(out: Path, steps: int, batch: int, lr: float, seed: int = 0, kl_weight: float = 1e-4):
    dev = device_and_threads()
    ck = Checkpointer(out)
    cfg = TOY_VAE
    vae = build_vae(cfg).to(dev).train()
    torch.manual_seed(seed)
    for m in vae.modules():                 # residual branches and attention outputs start at zero (identity)
        if hasattr(m, "residual"):
            torch.nn.init.zeros_(m.residual[-1].weight)
            torch.nn.init.zeros_(m.residual[-1].bias)
        if hasattr(m, "proj") and hasattr(m, "to_qkv"):
            torch.nn.init.zeros_(m.proj.weight)
    with torch.no_grad():                                      # start with a small posterior noise (sigma ~ 0.02)
        vae.conv1.bias[cfg.z_dim:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    state = ck.load()
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}")
    rng = np.random.default_rng(seed + 1000 * start)
    t0 = time.time()
    for step in range(start, steps):
        w, h = TRAIN_SIZES[int(rng.integers(len(TRAIN_SIZES)))]
        frames = (1, 5, 9, 9)[int(rng.integers(4))]
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), frames, w, h) for _ in range(batch)]).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        mom = torch.cat(list(vae.encode_chunks(x, moments=True)), dim=2)
        mu, logvar = mom.chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        y = torch.cat(list(vae.decode_chunks(z, normalized=False, clamp=False)), dim=2)
        l1 = (y - x).abs().mean()
        mse = F.mse_loss(y, x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = l1 + mse + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
        if step % 10 == 0:
            ck.log({"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr,
                    "mu_std": mu.std().item(), "time": time.time() - t0})
        if step % 50 == 0:
            print(f"vae step {step} loss {loss.item():.4f} psnr {psnr:.2f} kl {kl.item():.2f} "
                  f"mu_std {mu.std().item():.2f} {time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 200 == 0 or step + 1 == steps:
            ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
            ck.plot(["l1", "loss"], "toy VAE training loss")
    finalize_vae(out, vae.cpu().eval(), seed)


@torch.no_grad()
def finalize_vae(out: Path, vae, seed: int, n_clips: int = 256):
    """Measure per-channel latent statistics (for normalisation) and reconstruction PSNR; write vae.safetensors."""
    rng = np.random.default_rng(seed + 99)
    mus, psnrs = [], []
    for i in range(0, n_clips, 8):
        w, h = TRAIN_SIZES[i // 8 % len(TRAIN_SIZES)]
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), 17, w, h) for _ in range(8)])
        mu = vae.encode_raw(x)
        y = vae.decode_raw(mu)
        mus.append(mu.transpose(0, 1).reshape(mu.shape[1], -1))
        psnrs.append(10 * torch.log10(4.0 / ((y - x) ** 2).mean(dim=(1, 2, 3, 4))).mean().item())
    allmu = torch.cat(mus, dim=1)
    mean, std = allmu.mean(1), allmu.std(1)
    cfg = replace(TOY_VAE, latent_mean=tuple(round(v, 5) for v in mean.tolist()),
                  latent_std=tuple(round(v, 5) for v in std.tolist()))
    write_safetensors_atomic(vae.state_dict(), Path(out) / "vae.safetensors", overwrite=True)
    (Path(out) / "vae.json").write_text(json.dumps({"config": config_to_dict(cfg),
                                                    "recon_psnr_17f": float(np.mean(psnrs))}, indent=1))
    print(f"VAE recon PSNR (17 frames) {np.mean(psnrs):.2f} dB; latent std {std.min():.2f}..{std.max():.2f}")


def finetune_decoder(vae_dir: Path, out: Path, steps: int, batch: int, lr: float, seed: int = 0):
    """Fine-tune only the VAE decoder on long clips (17 and 33 frames) with the encoder frozen, so latents already
    encoded for DiT training stay valid. Fixes decoders trained on short clips whose causal caches drift on long
    ones. Writes a complete VAE folder (vae.safetensors + vae.json with the original latent statistics) to ``out``."""
    dev = device_and_threads()
    vae, cfg = load_trained_vae(vae_dir)
    vae = vae.to(dev).train()
    ck = Checkpointer(out)
    params = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "conv2."))]
    for n, p in vae.named_parameters():
        p.requires_grad_(n.startswith(("decoder.", "conv2.")))
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    state = ck.load()
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
    rng = np.random.default_rng(seed + 7 + 1000 * start)
    t0 = time.time()
    for step in range(start, steps):
        w, h = TRAIN_SIZES[int(rng.integers(len(TRAIN_SIZES)))]
        frames = (17, 33)[int(rng.integers(2))]
        nb = batch if frames == 17 else max(1, batch // 2)
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), frames, w, h) for _ in range(nb)]).to(dev)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=20)
        with torch.no_grad():
            mu = vae.encode_raw(x)
        y = torch.cat(list(vae.decode_chunks(mu, normalized=False, clamp=False)), dim=2)
        mse = F.mse_loss(y, x)
        loss = (y - x).abs().mean() + mse
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tail = 10 * math.log10(4.0 / max(F.mse_loss(y[:, :, -4:], x[:, :, -4:]).item(), 1e-10))
        ck.log({"step": step, "loss": loss.item(), "psnr": 10 * math.log10(4.0 / max(mse.item(), 1e-10)),
                "psnr_last4": tail, "time": time.time() - t0})
        if step % 10 == 0:
            print(f"decoder step {step} loss {loss.item():.4f} psnr last 4 frames {tail:.2f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 25 == 0 or step + 1 == steps:
            ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
    vae = vae.cpu().eval()
    write_safetensors_atomic(vae.state_dict(), Path(out) / "vae.safetensors", overwrite=True)
    meta = json.loads((Path(vae_dir) / "vae.json").read_text())
    meta["decoder_finetune_steps"] = steps
    (Path(out) / "vae.json").write_text(json.dumps(meta, indent=1))


def load_trained_vae(vae_dir: Path):
    meta = json.loads((Path(vae_dir) / "vae.json").read_text())
    cfg = config_from_dict(VAEConfig, meta["config"])
    vae = build_vae(cfg)
    vae.load_state_dict(read_state_dict(Path(vae_dir) / "vae.safetensors"))
    vae.latent_mean = torch.tensor(cfg.latent_mean)
    vae.latent_std = torch.tensor(cfg.latent_std)
    return vae.eval(), cfg


# ----------------------------------------------------------------------------------------------------------------------
# Dataset of latents
# ----------------------------------------------------------------------------------------------------------------------

FRAME_WEIGHTS = {9: 0.35, 17: 0.45, 33: 0.2}


def bucket_name(w, h, f):
    return f"{w}x{h}_{f}f"


@torch.no_grad()
def encode_dataset(vae_dir: Path, out: Path, clips: int, seed: int = 1, batch: int = 16, part: int = 256):
    """Render training clips (held-out combinations excluded) and store their normalised latents, fp16, in parts
    of ``part`` clips per (size, duration) bucket, with the scene graphs as JSON. Resumable part by part."""
    from dataclasses import asdict
    device_and_threads()
    vae, _ = load_trained_vae(vae_dir)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for bi, (w, h) in enumerate(TRAIN_SIZES):
        for f, wf in FRAME_WEIGHTS.items():
            n = int(round(clips * wf / len(TRAIN_SIZES)))
            for p0 in range(0, n, part):
                name = f"{bucket_name(w, h, f)}_{p0 // part:03d}"
                if (out / f"{name}.safetensors").exists():
                    continue
                rng = np.random.default_rng([seed, bi, f, p0])
                lat, scenes = [], []
                for b0 in range(p0, min(n, p0 + part), batch):
                    nb = min(batch, min(n, p0 + part) - b0)
                    cl = [random_clip(int(rng.integers(2 ** 31)), f, w, h, training=True) for _ in range(nb)]
                    lat.append(vae.encode(clips_to_tensor(cl)).half())
                    scenes += [asdict(c.scene) for c in cl]
                write_safetensors_atomic({"latents": torch.cat(lat)}, out / f"{name}.safetensors")
                (out / f"{name}.json").write_text(json.dumps(scenes))
                print(f"{name}: {len(scenes)} clips, {time.time() - t0:.0f}s", flush=True)


def load_dataset(data_dir: Path):
    """-> dict bucket -> (latents fp16 [N, C, F, H, W], list of Scene)."""
    from .world import Obj, Scene
    buckets: dict = {}
    for p in sorted(Path(data_dir).glob("*.safetensors")):
        bucket = p.stem.rsplit("_", 1)[0]
        lat = read_state_dict(p)["latents"]
        raw = json.loads(p.with_suffix(".json").read_text())
        scenes = [Scene(**{**s, "objects": tuple(Obj(**o) for o in s["objects"])}) for s in raw]
        old = buckets.get(bucket)
        buckets[bucket] = (lat if old is None else torch.cat([old[0], lat]), (old[1] if old else []) + scenes)
    if not buckets:
        raise FileNotFoundError(f"no latent buckets in {data_dir}; run the encode stage first")
    return buckets


# ----------------------------------------------------------------------------------------------------------------------
# Frame masks: one model for every task
# ----------------------------------------------------------------------------------------------------------------------

MASK_MIX = (("t2v", 0.40), ("i2v_head", 0.18), ("i2v_tail", 0.06), ("head", 0.10), ("tail", 0.08),
            ("head_tail", 0.09), ("random", 0.09))


def sample_mask(n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A per-latent-frame known mask (1 = known) for one training example, with at least one unknown frame."""
    kinds, weights = zip(*MASK_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=np.array(weights) / sum(weights)))]
    m = np.zeros(n, np.float32)
    half = max(1, n // 2)
    if kind == "i2v_head":
        m[0] = 1
    elif kind == "i2v_tail":
        m[-1] = 1
    elif kind == "head":
        m[:int(rng.integers(1, half + 1))] = 1
    elif kind == "tail":
        m[n - int(rng.integers(1, half + 1)):] = 1
    elif kind == "head_tail":
        m[:int(rng.integers(1, max(2, n // 3 + 1)))] = 1
        m[n - int(rng.integers(1, max(2, n // 3 + 1))):] = 1
    elif kind == "random":
        m = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(np.float32)
    if m.all():
        m[int(rng.integers(1, n)) if n > 1 else 0] = 0
    return m, kind


def sample_sigma(b: int, gen: torch.Generator) -> torch.Tensor:
    """Logit-normal noise levels with a uniform share so both ends are seen."""
    ln = torch.sigmoid(torch.randn(b, generator=gen))
    un = torch.rand(b, generator=gen)
    pick = torch.rand(b, generator=gen) < 0.8
    return torch.where(pick, ln, un).clamp(1e-4, 1 - 1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# DiT
# ----------------------------------------------------------------------------------------------------------------------

def train_dit(data_dir: Path, out: Path, steps: int, lr: float, tokens: int, seed: int = 0,
              p_drop: float = 0.1, ema_decay: float = 0.999):
    from ..model.text_encoders import load_minilm
    from .captions import training_caption
    dev = device_and_threads()
    ck = Checkpointer(out)
    data = load_dataset(data_dir)
    names = sorted(data)
    counts = np.array([data[k][0].shape[0] for k in names], np.float64)
    print("buckets:", {k: int(c) for k, c in zip(names, counts)})
    torch.manual_seed(seed)
    model = build_dit(TOY_DIT).to(dev).train()
    ema = build_dit(TOY_DIT).to(dev).eval().requires_grad_(False)
    text = load_minilm(device=dev)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (decay if p.dim() >= 2 and "modulation" not in n_ else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    start = 0
    state = ck.load()
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}")
    else:
        ema.load_state_dict(model.state_dict())
    rng = np.random.default_rng([seed, start])
    gen = torch.Generator().manual_seed(seed * 7919 + start)
    t0 = time.time()
    for step in range(start, steps):
        k = names[int(rng.choice(len(names), p=counts / counts.sum()))]
        lat, scenes = data[k]
        C, Fp, Hp, Wp = lat.shape[1:]
        n_tok = Fp * (Hp // 2) * (Wp // 2)
        B = int(np.clip(tokens // n_tok, 4, 64))
        idx = rng.integers(0, lat.shape[0], B)
        x0 = lat[idx].float().to(dev)
        caps = [training_caption(scenes[i], rng) if rng.random() >= p_drop else "" for i in idx]
        with torch.no_grad():
            ctx, lens = text.encode(caps)
        masks = np.stack([sample_mask(Fp, rng)[0] for _ in range(B)])
        m = torch.from_numpy(masks).to(dev)
        sigma = sample_sigma(B, gen).to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        s5 = sigma.view(B, 1, 1, 1, 1)
        xs = (1 - s5) * x0 + s5 * noise
        known = m.view(B, 1, Fp, 1, 1)
        xs = xs * (1 - known) + x0 * known
        t = (1 - m) * sigma.view(B, 1) * 1000.0
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=500)
        v = model(xs, t, ctx, lens)
        w = 1 - known
        loss = (((v - (noise - x0)) ** 2) * w).sum() / (w.sum() * C * Hp * Wp).clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        if step % 10 == 0:
            ck.log({"step": step, "loss": loss.item(), "grad_norm": float(gn), "bucket": k, "batch": B,
                    "time": time.time() - t0})
        if step % 100 == 0:
            print(f"dit step {step} loss {loss.item():.4f} gn {float(gn):.2f} {k} B={B} "
                  f"{time.time() - t0:.0f}s", flush=True)
        if (step + 1) % 250 == 0 or step + 1 == steps:
            ck.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "step": step + 1})
            ck.plot(["loss"], "toy DiT training loss (flow matching, unknown frames)")
    write_safetensors_atomic(ema.state_dict(), Path(out) / "dit_ema.safetensors", overwrite=True)


# ----------------------------------------------------------------------------------------------------------------------
# Export into weights/
# ----------------------------------------------------------------------------------------------------------------------

def export(vae_dir: Path, dit_dir: Path, out: Path, dtype=torch.float16):
    """Write weights/embedded_dit.safetensors, embedded_vae.safetensors (fp16) and the config json."""
    _, vcfg = load_trained_vae(vae_dir)
    vsd = read_state_dict(Path(vae_dir) / "vae.safetensors")
    state = torch.load(Path(dit_dir) / "state.pt", map_location="cpu", weights_only=True)
    dsd = state["ema"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic({k: v.to(dtype) for k, v in dsd.items()}, out / "embedded_dit.safetensors",
                             overwrite=True)
    write_safetensors_atomic({k: v.to(dtype) for k, v in vsd.items()}, out / "embedded_vae.safetensors",
                             overwrite=True)
    meta_path = out / "embedded.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta.update({"dit": config_to_dict(TOY_DIT), "vae": config_to_dict(vcfg), "text_encoder": "all-MiniLM-L6-v2",
                 "dit_steps": int(state["step"]), "latent_rgb": fit_latent_rgb(vae_dir)})
    meta_path.write_text(json.dumps(meta, indent=1))
    print("exported to", out)


@torch.no_grad()
def fit_latent_rgb(vae_dir: Path, n_clips: int = 64, seed: int = 5) -> dict:
    """A linear map from raw latent channels to RGB in [-1, 1] (least squares against the pooled pixels of the
    frame each latent frame starts at), used for the cheap previews shown while sampling."""
    vae, cfg = load_trained_vae(vae_dir)
    rng = np.random.default_rng(seed)
    sf = 2 ** len(cfg.temperal_downsample)
    tf = 2 ** sum(cfg.temperal_downsample)
    xs, ys = [], []
    for _ in range(n_clips // 8):
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), 9, 64, 64) for _ in range(8)])
        mu = vae.encode_raw(x)                                                   # B C F' h w
        pix = x[:, :, ::tf]                                                      # frame 0, tf, 2tf, ...
        pooled = F.avg_pool3d(pix, (1, sf, sf))                                  # B 3 F' h w
        xs.append(mu.permute(0, 2, 3, 4, 1).reshape(-1, mu.shape[1]))
        ys.append(pooled.permute(0, 2, 3, 4, 1).reshape(-1, 3))
    X, Y = torch.cat(xs).double(), torch.cat(ys).double()
    X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(X1, Y).solution                                     # [C+1, 3]
    return {"weight": [[round(v, 5) for v in row] for row in sol[:-1].T.tolist()],
            "bias": [round(v, 5) for v in sol[-1].tolist()]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("vae", help="train the causal VAE on toy-world clips")
    a.add_argument("--out", type=Path, default=Path("runs/vae"))
    a.add_argument("--steps", type=int, default=4000)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("decoder", help="fine-tune the VAE decoder on long clips (encoder frozen)")
    a.add_argument("--vae", type=Path, default=Path("runs/vae"))
    a.add_argument("--out", type=Path, default=Path("runs/vae_dec"))
    a.add_argument("--steps", type=int, default=300)
    a.add_argument("--batch", type=int, default=4)
    a.add_argument("--lr", type=float, default=1e-4)
    a = sub.add_parser("encode", help="encode a dataset of toy-world clips into latents")
    a.add_argument("--vae", type=Path, default=Path("runs/vae"))
    a.add_argument("--out", type=Path, default=Path("runs/data"))
    a.add_argument("--clips", type=int, default=24000)
    a.add_argument("--seed", type=int, default=1)
    a = sub.add_parser("dit", help="train the DiT on encoded latents")
    a.add_argument("--data", type=Path, default=Path("runs/data"))
    a.add_argument("--out", type=Path, default=Path("runs/dit"))
    a.add_argument("--steps", type=int, default=30000)
    a.add_argument("--lr", type=float, default=5e-4)
    a.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    a.add_argument("--seed", type=int, default=0)
    a = sub.add_parser("export", help="write the trained weights into weights/")
    a.add_argument("--vae", type=Path, default=Path("runs/vae"))
    a.add_argument("--dit", type=Path, default=Path("runs/dit"))
    a.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "weights")
    args = ap.parse_args(argv)
    if args.cmd == "vae":
        train_vae(args.out, args.steps, args.batch, args.lr, args.seed)
    elif args.cmd == "decoder":
        finetune_decoder(args.vae, args.out, args.steps, args.batch, args.lr)
    elif args.cmd == "encode":
        encode_dataset(args.vae, args.out, args.clips, args.seed)
    elif args.cmd == "dit":
        train_dit(args.data, args.out, args.steps, args.lr, args.tokens, args.seed)
    elif args.cmd == "export":
        export(args.vae, args.dit, args.out)


if __name__ == "__main__":
    main()
