"""Train the embedded model's causal video VAE on toy-world clips of every length it will meet (1 to 33 frames).

    python -m spacetime.toyworld.train vae     --out RUN/vae        # encoder + decoder
    python -m spacetime.toyworld.train decoder --vae RUN/vae --out RUN/vae_dec   # decoder only, encoder frozen

Long clips are in the mix from the first step, so the causal caches learn the state they reach after 33 frames (a
VAE trained on short clips drifts once its caches fill with states it never saw). The decoder-only stage keeps the
encoder, so latents already encoded for the DiT stay valid while reconstruction keeps improving.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model.config import VAEConfig, config_from_dict, config_to_dict
from ..model.embedded import TOY_VAE
from ..model.loading import read_state_dict, write_safetensors_atomic
from ..model.vae import build_vae
from .runs import Checkpointer, clips_to_tensor, device_and_threads, lr_at
from .world import random_clip

TRAIN_SIZES = ((64, 64), (96, 64), (64, 96))           # (width, height): square, landscape, portrait
# (frames, clips per batch, weight): about the same number of pixels per step whatever the length
VAE_LENGTHS = ((1, 16, 0.15), (5, 8, 0.15), (9, 6, 0.2), (17, 4, 0.3), (33, 2, 0.2))


def _batch_plan(rng, scale: float = 1.0, images_only: bool = False):
    frames, nb, _ = VAE_LENGTHS[0 if images_only else int(rng.choice(len(VAE_LENGTHS), p=_length_weights()))]
    w, h = TRAIN_SIZES[int(rng.integers(len(TRAIN_SIZES)))]
    return frames, max(1, int(round(nb * scale))), w, h


def _length_weights():
    w = np.array([x[2] for x in VAE_LENGTHS], np.float64)
    return w / w.sum()


def detail_map(clips, x: torch.Tensor, weight: float) -> torch.Tensor:
    """[B, 1, T, H, W] loss weights: 1 + ``weight`` on pixels that differ from the clip's plain background, grown
    by two pixels (edges and anti-aliasing included)."""
    from .world import BACKGROUNDS
    bg = torch.tensor([BACKGROUNDS[c.scene.background] for c in clips], dtype=torch.float32, device=x.device)
    bg = bg.div(127.5).sub(1.0)[:, :, None, None, None]
    m = ((x - bg).abs().amax(1, keepdim=True) > 8 / 127.5).float()
    b, _, t, h, w = m.shape
    m = F.max_pool2d(m.transpose(1, 2).reshape(b * t, 1, h, w), 5, stride=1, padding=2)
    return 1.0 + weight * m.reshape(b, t, 1, h, w).transpose(1, 2)


def diff_l1(y: torch.Tensor, x: torch.Tensor, dim: int, wmap: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 between the neighbour differences of ``y`` and ``x`` [B, C, T, H, W] along ``dim`` (2: from frame to
    frame, 3 / 4: across a frame), each difference weighted by ``wmap`` [B, 1, T, H, W] at its later element where
    given."""
    n = y.shape[dim] - 1
    d = (y.narrow(dim, 1, n) - y.narrow(dim, 0, n)) - (x.narrow(dim, 1, n) - x.narrow(dim, 0, n))
    return (d.abs() if wmap is None else d.abs() * wmap.narrow(dim, 1, n)).mean()


def edge_loss(y: torch.Tensor, x: torch.Tensor, wmap: torch.Tensor | None = None) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of ``y`` and ``x`` [B, C, T, H, W] (weighted by
    ``wmap`` [B, 1, T, H, W] where given): zero for any change of level alone, large where ``y`` softens an edge
    that ``x`` has (a box's corners rounded read as a ball)."""
    return diff_l1(y, x, 4, wmap) + diff_l1(y, x, 3, wmap)


class Refiner:
    """The inputs of a decoder that learns to draw what the DiT meant: a clip's true latent noised to a random
    level in ``sigmas`` (lo, hi) and the clean latent the DiT of ``dit`` (a safetensors file of the embedded
    layout) predicts from it in one step with the clip's training caption. Those predictions carry the DiT's own
    errors (corners rounded, edges soft) at the strength the last sampling steps leave them; the decoder is taught
    to decode them into the true frames. Nothing here has gradients: the DiT and the text encoder stay frozen."""

    def __init__(self, dit: Path, sigmas: tuple[float, float], device: torch.device):
        from ..model.pipeline import Spacetime
        st = Spacetime.load("toyworld", dit=dit)
        self.dit, self.text = st.dit.to(device).eval(), st.text_encoder
        self.sigmas, self.device = sigmas, device

    @torch.no_grad()
    def __call__(self, clips, mu: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        from .captions import training_caption
        captions = [training_caption(c.scene, rng) for c in clips]
        emb, lens = self.text.encode(captions)
        emb, lens = emb.to(self.device), lens.to(self.device)
        B, Fp = mu.shape[0], mu.shape[2]
        sigma = torch.from_numpy(rng.uniform(*self.sigmas, size=B)).float().to(mu.device)
        noise = torch.from_numpy(rng.standard_normal(mu.shape)).float().to(mu.device)
        s5 = sigma.view(B, 1, 1, 1, 1)
        xs = (1 - s5) * mu.float() + s5 * noise
        v = self.dit(xs, (sigma * 1000.0).view(B, 1).expand(B, Fp), emb, lens)
        return xs - s5 * v.float()


def init_vae(cfg: VAEConfig, seed: int):
    torch.manual_seed(seed)
    vae = build_vae(cfg).train()
    for m in vae.modules():                 # residual branches and attention outputs start at zero (identity)
        if hasattr(m, "residual"):
            torch.nn.init.zeros_(m.residual[-1].weight)
            torch.nn.init.zeros_(m.residual[-1].bias)
        if hasattr(m, "proj") and hasattr(m, "to_qkv"):
            torch.nn.init.zeros_(m.proj.weight)
    with torch.no_grad():                   # start with a small posterior noise (sigma ~ 0.02)
        vae.conv1.bias[cfg.z_dim:] = -8.0
    return vae


@torch.no_grad()
def inflate_to_video(vae):
    """Turn a VAE trained on single frames into one that starts out coding a clip frame by frame.

    On one frame a causal 3x3x3 convolution only ever sees its last time slice (the earlier ones meet the zero
    padding), so after the image stage those slices are still random. Zeroing them makes every convolution act per
    frame; the temporal down-sampling convolutions start by keeping the later frame of each pair and the up-sampling
    ones by repeating each latent frame. The clip stage then begins at the image stage's picture quality (moving
    objects excepted) instead of re-learning the spatial code through random time mixing."""
    for m in vae.modules():
        if not isinstance(m, torch.nn.Conv3d) or m.weight.shape[2] != 3:
            continue
        w = m.weight
        if w.shape[3:] == (1, 1):                                   # a Resample time convolution
            out_ch, in_ch = w.shape[:2]
            w.zero_()
            eye = torch.eye(in_ch, dtype=w.dtype)
            for k in range(out_ch // in_ch):                        # 1 (downsample) or 2 (upsample) output frames
                w[k * in_ch:(k + 1) * in_ch, :, 2, 0, 0] = eye
            if m.bias is not None:
                m.bias.zero_()
        else:
            w[:, :, :2] = 0.0
    return vae


def reconstruct(vae, x, sample: bool):
    """-> (reconstruction, mu, logvar) with the streamed chunked encode/decode the pipeline uses."""
    mom = torch.cat(list(vae.encode_chunks(x, moments=True)), dim=2)
    mu, logvar = mom.chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if sample else mu
    y = torch.cat(list(vae.decode_chunks(z, normalized=False, clamp=False)), dim=2)
    return y, mu, logvar


def train_vae(out: Path, steps: int, lr: float, seed: int = 0, kl_weight: float = 1e-4, cfg: VAEConfig = TOY_VAE,
              batch_scale: float = 1.0, time_limit: float = 0.0, decoder_only_from: Path | None = None,
              bf16: bool = False, detail_weight: float = 0.0, image_steps: int = 0, image_lr: float = 3e-4,
              init_from: Path | None = None, measure_clips: int = 24, temporal_weight: float = 0.0,
              edge_weight: float = 0.0, refine_dit: Path | None = None, refine_share: float = 0.5,
              refine_sigmas: tuple[float, float] = (0.1, 0.5)):
    """Train (or, with ``decoder_only_from``, fine-tune the decoder of) the VAE. Resumes from ``out/state.pt``.
    ``bf16``: autocast the convolutions to bfloat16 (about 1.5x faster on CPUs with AVX512-BF16; weights, losses
    and the final measurements stay float32). ``detail_weight``: extra loss weight on pixels that are not plain
    background (objects, pillar, posts, with a margin), so small objects are learned as early as the backdrop.
    ``image_steps``: a first stage on single frames only (its own warm-up and cosine decay from ``image_lr``): the
    spatial code is learned several times faster alone, and the clip stage then only adds time: it starts from the
    image VAE inflated to act frame by frame (``inflate_to_video``). ``init_from``: a trained VAE folder to start
    from instead of a fresh one (inflated first when it has had no clip training and ``image_steps`` is 0).
    ``measure_clips``: held-out 33-frame clips of the final per-position PSNR (the model card's figure).
    ``temporal_weight``: weight of an L1 loss on the change from each frame to the next (reconstruction against
    clip), so motion is decoded as evenly as the clip moves: without it the decoder moves objects in steps at its
    latent-frame boundaries (``boundary_jump`` in the measurements). ``edge_weight``: weight of ``edge_loss`` (the
    pixel differences across each frame, object pixels weighted as the rest of the loss), so small objects keep
    their corners instead of decoding as soft blobs. ``refine_dit`` (decoder stages only): in a share
    ``refine_share`` of the steps the decoder reads, instead of the true latents, the clean latents that DiT
    predicts from them noised to a level within ``refine_sigmas`` (``Refiner``), and learns to decode the DiT's
    soft shapes into the true frames."""
    dev = device_and_threads()
    ck = Checkpointer(out)
    if decoder_only_from is not None:
        vae, cfg = load_trained_vae(decoder_only_from)
        vae = vae.to(dev).train()
        trainable = [p for n, p in vae.named_parameters() if n.startswith(("decoder.", "conv2."))]
        for n, p in vae.named_parameters():
            p.requires_grad_(n.startswith(("decoder.", "conv2.")))
    elif init_from is not None:
        vae, cfg = load_trained_vae(init_from)
        vae = vae.to(dev).train()
        if image_steps == 0 and json.loads((Path(init_from) / "vae.json").read_text()).get("image_only", False):
            inflate_to_video(vae)
        trainable = list(vae.parameters())
    else:
        vae = init_vae(cfg, seed).to(dev)
        trainable = list(vae.parameters())
    refiner = None
    if refine_dit is not None:
        if decoder_only_from is None:
            raise ValueError("refine_dit needs a decoder stage (decoder_only_from): the latents must stay the DiT's")
        refiner = Refiner(refine_dit, refine_sigmas, dev)
    opt = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    start = 0
    state = ck.load()
    if state is not None:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    rng = np.random.default_rng([seed, start, 17])
    t0 = time.time()
    for step in range(start, steps):
        if image_steps and step == image_steps and decoder_only_from is None:
            inflate_to_video(vae)
        frames, nb, w, h = _batch_plan(rng, batch_scale, images_only=step < image_steps)
        clips = [random_clip(int(rng.integers(2 ** 31)), frames, w, h) for _ in range(nb)]
        x = clips_to_tensor(clips).to(dev)
        wmap = detail_map(clips, x, detail_weight) if detail_weight else None
        for g in opt.param_groups:
            if step < image_steps:
                g["lr"] = lr_at(step, image_steps, image_lr, warmup=50)
            else:
                g["lr"] = lr_at(step - image_steps, steps - image_steps, lr,
                                warmup=100 if decoder_only_from is None else 20)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            if decoder_only_from is not None:
                with torch.no_grad():
                    mu = vae.encode_raw(x)
                    refined = refiner is not None and rng.random() < refine_share
                    if refined:
                        mu = refiner(clips, mu, rng)
                y = torch.cat(list(vae.decode_chunks(mu, normalized=False, clamp=False)), dim=2)
                kl = torch.zeros(())
            else:
                y, mu, logvar = reconstruct(vae, x, sample=True)
                mu, logvar = mu.float(), logvar.float()
                kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).mean()
        y = y.float()
        mse = F.mse_loss(y, x)
        if wmap is None:
            l1 = (y - x).abs().mean()
            loss = l1 + mse + kl_weight * kl
        else:
            d = y - x
            l1 = (d.abs() * wmap).mean()
            loss = l1 + (d.pow(2) * wmap).mean() + kl_weight * kl
        if temporal_weight and x.shape[2] > 1:
            loss = loss + temporal_weight * diff_l1(y, x, 2, wmap)
        if edge_weight:
            loss = loss + edge_weight * edge_loss(y, x, wmap)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        psnr = 10 * math.log10(4.0 / max(mse.item(), 1e-10))
        if step % 10 == 0:
            ck.log({"step": step, "loss": loss.item(), "l1": l1.item(), "kl": kl.item(), "psnr": psnr,
                    "frames": frames, "time": time.time() - t0,
                    **({"refined": bool(refined)} if refiner is not None else {})})
        if step % 50 == 0:
            print(f"vae step {step} {frames}f x{nb} loss {loss.item():.4f} psnr {psnr:.2f} kl {kl.item():.2f} "
                  f"{time.time() - t0:.0f}s", flush=True)
        last = step + 1 == steps or (time_limit and time.time() - t0 > time_limit)
        if (step + 1) % 100 == 0 or last:
            ck.save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1})
            ck.plot(["l1", "loss"], "toy VAE training loss")
        if last:
            break
    vae = vae.cpu().eval()
    if decoder_only_from is not None:
        meta = json.loads((Path(decoder_only_from) / "vae.json").read_text())
        write_safetensors_atomic(vae.state_dict(), Path(out) / "vae.safetensors", overwrite=True)
        # a fine-tune of a fine-tuned decoder adds its steps to the ones before
        meta["decoder_finetune_steps"] = int(meta.get("decoder_finetune_steps", 0)) + int(step + 1)
        meta.update(measure_vae(vae, measure_clips))
        (Path(out) / "vae.json").write_text(json.dumps(meta, indent=1))
    else:
        finalize_vae(out, vae, seed, image_only=step + 1 <= image_steps, measure_clips=measure_clips)


@torch.no_grad()
def latent_stats(vae, seed: int, n_clips: int = 192):
    rng = np.random.default_rng(seed + 99)
    mus = []
    for i in range(0, n_clips, 8):
        w, h = TRAIN_SIZES[i // 8 % len(TRAIN_SIZES)]
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), 17, w, h) for _ in range(8)])
        mu = vae.encode_raw(x)
        mus.append(mu.transpose(0, 1).reshape(mu.shape[1], -1))
    allmu = torch.cat(mus, dim=1)
    return allmu.mean(1), allmu.std(1)


@torch.no_grad()
def measure_vae(vae, n_clips: int = 24, frames: int = 33, seed: int = 123) -> dict:
    """PSNR per frame position on held-out 33-frame clips (the figure the model card reports), and how much more the
    reconstructions change into each latent frame than inside one (``boundary_jump``)."""
    rng = np.random.default_rng(seed)
    per_frame, jumps = [], []
    for i in range(0, n_clips, 4):
        w, h = TRAIN_SIZES[i // 4 % len(TRAIN_SIZES)]
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), frames, w, h, training=False)
                             for _ in range(4)])
        y = vae.decode_raw(vae.encode_raw(x))
        mse = ((y - x) ** 2).mean(dim=(1, 3, 4))                     # [B, T]
        per_frame.append(10 * torch.log10(4.0 / mse.clamp(min=1e-10)))
        jumps.append(frame_changes(y))
    pf = torch.cat(per_frame).mean(0)
    return {"recon_psnr_per_frame_33f": [round(v, 2) for v in pf.tolist()],
            "recon_psnr_min_33f": round(float(pf.min()), 2), "recon_psnr_mean_33f": round(float(pf.mean()), 2),
            "recon_boundary_jump_33f": round(boundary_jump(torch.cat(jumps), vae.temporal_factor), 3)}


def frame_changes(video: torch.Tensor) -> torch.Tensor:
    """[B, T-1]: mean absolute change from each frame of ``video`` [B, C, T, H, W] to the next."""
    return (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(1, 3, 4))


def boundary_jump(changes: torch.Tensor, tf: int) -> float:
    """How much more a clip changes across the decoder's latent-frame boundaries than inside a latent frame: the
    mean frame-to-frame change into the first frame of each latent frame (pixel frames 1, 1 + tf, ...) over the
    mean change between the frames inside one, over all clips ``changes`` [B, T-1] (``frame_changes``). 1.0 for
    evenly decoded motion, as in the clips themselves."""
    into = torch.zeros(changes.shape[1], dtype=torch.bool)
    into[0::tf] = True                      # change k -> k+1 lands on frame k+1 = 1, 1 + tf, ... (a new latent frame)
    return float(changes[:, into].mean() / changes[:, ~into].mean().clamp(min=1e-8))


def finalize_vae(out: Path, vae, seed: int, image_only: bool = False, measure_clips: int = 24):
    """Per-channel latent statistics (the DiT's normalisation), per-frame PSNR; writes vae.safetensors + vae.json."""
    mean, std = latent_stats(vae, seed)
    cfg = replace(vae.cfg, latent_mean=tuple(round(v, 5) for v in mean.tolist()),
                  latent_std=tuple(round(v, 5) for v in std.tolist()))
    write_safetensors_atomic(vae.state_dict(), Path(out) / "vae.safetensors", overwrite=True)
    m = measure_vae(vae, measure_clips)
    (Path(out) / "vae.json").write_text(json.dumps({"config": config_to_dict(cfg), "image_only": image_only, **m},
                                                       indent=1))
    print(f"VAE recon PSNR on 33-frame clips: min over positions {m['recon_psnr_min_33f']:.2f} dB, "
          f"mean {m['recon_psnr_mean_33f']:.2f} dB; latent std {std.min():.2f}..{std.max():.2f}", flush=True)


def load_trained_vae(vae_dir: Path):
    meta = json.loads((Path(vae_dir) / "vae.json").read_text())
    return vae_from_config(meta["config"], Path(vae_dir) / "vae.safetensors")


def vae_from_config(config: dict, weights: Path):
    """(VAE in eval mode, its VAEConfig) from a config dict and a safetensors file of its weights (any float dtype)."""
    cfg = config_from_dict(VAEConfig, config)
    vae = build_vae(cfg)
    vae.load_state_dict(read_state_dict(weights))
    vae.latent_mean = torch.tensor(cfg.latent_mean)
    vae.latent_std = torch.tensor(cfg.latent_std)
    return vae.eval(), cfg
