"""The Wan 2.2 causal video VAE (TI2V-5B): 48 latent channels, 4x16x16 compression.

It shares the Wan 2.1 VAE's pieces (causal convolutions with a two-frame streaming state, RMS norms, residual blocks,
the first-chunk rules of the time convolutions; see vae.py) and differs in four ways:

* pixels are folded into channels first: every 2x2 block of a frame becomes 12 channels (and back after decoding);
* every encoder stage adds a parameter-free shortcut that folds its downsampling (space, and time where the stage
  halves it) into channels and averages groups of them down to the stage's width; every upsampling decoder stage
  adds the mirror image, repeating channels and unfolding them into space and time (the first decoded chunk keeps
  only the last of the frames a time step unfolds into, as the time convolution does);
* the decoder has its own width (``dec_dim``) and its upsamplers keep the channel count;
* 48 channels, with their own normalisation statistics.

Keys match the official ``Wan2.2_VAE.pth`` / ComfyUI's ``wan2.2_vae.safetensors``: ``encoder.downsamples.<stage>.
downsamples.<j>.*`` and ``decoder.upsamples.<stage>.upsamples.<j>.*``.
"""
from __future__ import annotations

import math
import re
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .config import VAE22Config, WAN22_LATENT_MEAN, WAN22_LATENT_STD
from .errors import CheckpointMismatchError
from .vae import (FIRST_CHUNK, AttentionBlock, CausalConv3d, Resample, ResidualBlock, RMSNorm, StreamState, WanVAE,
                  _run)

# A key only the Wan 2.2 layout has (grouped decoder stages); ComfyUI tells the two VAE families apart by it too.
WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"


def is_wan22_vae(sd: Mapping[str, torch.Tensor]) -> bool:
    return WAN22_MARKER in sd or "encoder.downsamples.0.downsamples.0.residual.2.weight" in sd


# ----------------------------------------------------------------------------------------------------------------------
# Shortcuts between stages (no parameters)
# ----------------------------------------------------------------------------------------------------------------------

class FoldDown(nn.Module):
    """Fold ``ft`` frames and ``fs`` x ``fs`` pixels into channels, then average groups of channels to ``out_ch``.
    A clip whose length is not a multiple of ``ft`` gets zero frames in front (the first chunk: one frame)."""

    def __init__(self, in_ch: int, out_ch: int, ft: int, fs: int):
        super().__init__()
        self.out_ch, self.ft, self.fs = out_ch, ft, fs
        folded = in_ch * ft * fs * fs
        if folded % out_ch:
            raise ValueError(f"cannot average {folded} folded channels into {out_ch}")
        self.group = folded // out_ch

    def forward(self, x):
        short = (-x.shape[2]) % self.ft
        if short:
            x = F.pad(x, (0, 0, 0, 0, short, 0))
        x = rearrange(x, "b c (t a) (h p) (w q) -> b (c a p q) t h w", a=self.ft, p=self.fs, q=self.fs)
        return x.unflatten(1, (self.out_ch, self.group)).mean(dim=2)


class UnfoldUp(nn.Module):
    """Repeat channels, then unfold them into ``ft`` frames and ``fs`` x ``fs`` pixels (the inverse layout of
    FoldDown). On the first chunk only the last of the ``ft`` frames is kept."""

    def __init__(self, in_ch: int, out_ch: int, ft: int, fs: int):
        super().__init__()
        self.ft, self.fs = ft, fs
        unfolded = out_ch * ft * fs * fs
        if unfolded % in_ch:
            raise ValueError(f"cannot repeat {in_ch} channels into {unfolded}")
        self.repeats = unfolded // in_ch

    def forward(self, x, first_chunk: bool = False):
        x = x.repeat_interleave(self.repeats, dim=1)
        x = rearrange(x, "b (c a p q) t h w -> b c (t a) (h p) (w q)", a=self.ft, p=self.fs, q=self.fs)
        return x[:, :, self.ft - 1:] if first_chunk else x


class Resample22(Resample):
    """As in Wan 2.1, except that spatial upsampling keeps the channel count."""

    def __init__(self, dim: int, mode: str):
        super().__init__(dim, mode)
        if mode.startswith("up"):
            self.resample[1] = nn.Conv2d(dim, dim, 3, padding=1)


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------

def _stage_layers(in_ch: int, out_ch: int, blocks: int, resample=None) -> nn.Sequential:
    """``blocks`` residual blocks (the first one changes the width), then an optional resampler."""
    layers = [ResidualBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(blocks)]
    if resample:
        layers.append(Resample22(out_ch, resample))
    return nn.Sequential(*layers)


class DownStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, blocks: int, temporal: bool, down: bool):
        super().__init__()
        self.avg_shortcut = FoldDown(in_ch, out_ch, 2 if temporal else 1, 2 if down else 1)
        mode = ("downsample3d" if temporal else "downsample2d") if down else None
        self.downsamples = _stage_layers(in_ch, out_ch, blocks, mode)

    def forward(self, x, state: StreamState):
        return _run(self.downsamples, x, state) + self.avg_shortcut(x)


class UpStage(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, blocks: int, temporal: bool, up: bool):
        super().__init__()
        self.avg_shortcut = UnfoldUp(in_ch, out_ch, 2 if temporal else 1, 2) if up else None
        mode = ("upsample3d" if temporal else "upsample2d") if up else None
        self.upsamples = _stage_layers(in_ch, out_ch, blocks, mode)

    def forward(self, x, state: StreamState):
        y = _run(self.upsamples, x, state)
        if self.avg_shortcut is not None:
            y = y + self.avg_shortcut(x, first_chunk=bool(state.get(FIRST_CHUNK)))
        return y


def _middle(ch: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(ch, ch), AttentionBlock(ch), ResidualBlock(ch, ch))


def _head(ch: int, out: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(ch), nn.SiLU(), CausalConv3d(ch, out, 3, padding=1))


class Encoder22(nn.Module):
    def __init__(self, cfg: VAE22Config):
        super().__init__()
        dims = [cfg.dim * m for m in (1,) + cfg.dim_mult]
        last = len(cfg.dim_mult) - 1
        self.conv1 = CausalConv3d(3 * cfg.patch_size ** 2, dims[0], 3, padding=1)
        self.downsamples = nn.Sequential(*[
            DownStage(cin, cout, cfg.num_res_blocks, i < last and cfg.temperal_downsample[i], i != last)
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))])
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x, state):
        x = self.conv1(x, state)
        for stage in self.downsamples:
            x = stage(x, state)
        x = _run(self.middle, x, state)
        return _run(self.head, x, state)


class Decoder22(nn.Module):
    def __init__(self, cfg: VAE22Config):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dec_dim * m for m in (mult[-1],) + mult[::-1]]
        temporal = cfg.temperal_downsample[::-1]
        last = len(mult) - 1
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        self.upsamples = nn.Sequential(*[
            UpStage(cin, cout, cfg.num_res_blocks + 1, i < last and temporal[i], i != last)
            for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:]))])
        self.head = _head(dims[-1], 3 * cfg.patch_size ** 2)

    def forward(self, x, state):
        x = self.conv1(x, state)
        x = _run(self.middle, x, state)
        for stage in self.upsamples:
            x = stage(x, state)
        return _run(self.head, x, state)


# ----------------------------------------------------------------------------------------------------------------------
# The VAE
# ----------------------------------------------------------------------------------------------------------------------

class WanVAE22(WanVAE):
    """Same interface as ``WanVAE`` (chunked causal encode, streamed decode, normalised latents)."""
    encoder_class, decoder_class = Encoder22, Decoder22

    def to_channels(self, video):
        p = self.cfg.patch_size
        return rearrange(video, "b c t (h p) (w q) -> b (c q p) t h w", p=p, q=p)

    def from_channels(self, x):
        p = self.cfg.patch_size
        return rearrange(x, "b (c q p) t h w -> b c t (h p) (w q)", p=p, q=p)


def infer_vae22_config(sd: Mapping[str, torch.Tensor], latent_mean=None, latent_std=None) -> VAE22Config:
    """The VAE22Config a Wan 2.2-layout state dict (native keys) was saved from."""
    try:
        dim, in_ch = sd["encoder.conv1.weight"].shape[:2]
        z_dim = sd["conv2.weight"].shape[0]
        dec_dim = sd["decoder.head.2.weight"].shape[1]
    except KeyError as exc:
        raise CheckpointMismatchError(f"checkpoint does not look like a Wan 2.2 VAE: key {exc.args[0]!r} is missing",
                                      missing=[exc.args[0]]) from None
    patch = math.isqrt(in_ch // 3)
    if 3 * patch * patch != in_ch:
        raise CheckpointMismatchError(f"Wan 2.2 VAE: encoder.conv1 takes {in_ch} channels; expected 3 x a square "
                                      f"number (12 for 2x2 patches)")
    stage_key = "encoder.downsamples.{}.downsamples.0.residual.2.weight"
    mults, i = [], 0
    while stage_key.format(i) in sd:
        mults.append(sd[stage_key.format(i)].shape[0] // dim)
        i += 1
    block = re.compile(r"encoder\.downsamples\.0\.downsamples\.(\d+)\.residual\.")
    n_res = len({m.group(1) for k in sd if (m := block.match(k))})
    temporal = tuple(f"encoder.downsamples.{s}.downsamples.{n_res}.time_conv.weight" in sd
                     for s in range(len(mults) - 1))
    if latent_mean is None:
        latent_mean, latent_std = ((WAN22_LATENT_MEAN, WAN22_LATENT_STD) if z_dim == len(WAN22_LATENT_MEAN)
                                   else ((0.0,) * z_dim, (1.0,) * z_dim))
    return VAE22Config(dim=dim, dec_dim=dec_dim, z_dim=z_dim, dim_mult=tuple(mults), num_res_blocks=n_res,
                       temperal_downsample=temporal, patch_size=patch, latent_mean=tuple(latent_mean),
                       latent_std=tuple(latent_std))


def _family(wan22: bool) -> str:
    return ("Wan 2.2 VAE (48 channels, 4x16x16, e.g. wan2.2_vae.safetensors)" if wan22 else
            "Wan 2.1 VAE (16 channels, 4x8x8, e.g. wan_2.1_vae.safetensors)")


def check_vae_family(sd: Mapping[str, torch.Tensor], cfg) -> None:
    """Refuse a VAE file of the other family before any key-by-key comparison, naming both."""
    file_22, cfg_22 = is_wan22_vae(sd), isinstance(cfg, VAE22Config)
    if file_22 != cfg_22:
        raise CheckpointMismatchError(f"VAE file is a {_family(file_22)}, but this model needs a {_family(cfg_22)}")


__all__ = ["WanVAE22", "infer_vae22_config", "is_wan22_vae", "check_vae_family", "FoldDown", "UnfoldUp"]

