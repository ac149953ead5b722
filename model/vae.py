"""The causal video VAE (Wan 2.1 family): 4x8x8 compression for the official weights, configurable for small ones.

Encoding runs in causal chunks of 1, then ``temporal_factor`` frames; decoding runs one latent frame at a time. Every
causal convolution keeps the last two input frames of the previous chunk (a streaming state), so the result equals
running the whole clip at once through a causal network, and decoding memory does not grow with the clip length.
Key names match the official ``Wan2.1_VAE.pth`` / ``wan_2.1_vae.safetensors``.

Pixels are in [-1, 1]. ``encode`` returns *normalised* latents (mu - mean) / std, the space the DiT works in;
``encode_raw`` / ``decode_raw`` work on raw mu.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAE22Config, VAEConfig
from .errors import SpacetimeValueError

CACHE_FRAMES = 2
_REP = "rep"   # marker: an upsampling time conv has seen its first chunk (the next one runs without a cache)
FIRST_CHUNK = "first_chunk"   # StreamState key: True while the first latent frame is decoded


class StreamState(dict):
    """Per-module carry-over between chunks (keyed by the module object)."""


class CausalConv3d(nn.Conv3d):
    """Conv3d whose time axis is padded only in front (2*p frames), or fed the previous chunk's last frames."""

    def __init__(self, in_ch, out_ch, kernel, stride=1, padding=0):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self.time_pad = 2 * p[0]
        self.space_pad = (p[2], p[2], p[1], p[1])

    def forward(self, x, state: Optional[StreamState] = None, use_cache: bool = True):
        pad_t = self.time_pad
        if state is not None and pad_t > 0:
            prev = state.get(self) if use_cache else None
            carry = x[:, :, -CACHE_FRAMES:]
            if carry.shape[2] < CACHE_FRAMES and isinstance(state.get(self), torch.Tensor):
                carry = torch.cat([state[self][:, :, -1:], carry], dim=2)
            if isinstance(prev, torch.Tensor):
                x = torch.cat([prev, x], dim=2)
                pad_t -= prev.shape[2]
            state[self] = carry
        x = F.pad(x, self.space_pad + (pad_t, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel gain (``gamma``)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _frames_2d(fn, x):
    """Apply a 2D op to every frame of [B, C, T, H, W]."""
    b, c, t, h, w = x.shape
    y = fn(x.transpose(1, 2).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).transpose(1, 2)


class Upsample2x(nn.Module):
    def forward(self, x):
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x, state: StreamState):
        if self.mode == "upsample3d":
            mark = state.get(self)
            if mark is None:                     # first latent frame -> a single pixel frame, no time conv
                state[self] = _REP
            else:
                # the second chunk runs the time conv on zero padding; later ones on the carried frames
                x = self.time_conv(x, state, use_cache=(mark != _REP))
                state[self] = True
                b, c2, t, h, w = x.shape
                x = x.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        x = _frames_2d(self.resample, x)
        if self.mode == "downsample3d":
            prev = state.get(self)
            if prev is None:                     # first chunk (1 frame): keep it, no time conv
                state[self] = x[:, :, -1:]
            else:
                last = x[:, :, -1:]
                x = self.time_conv(torch.cat([prev, x], dim=2))
                state[self] = last
        return x


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x, state: StreamState):
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, state) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _attend(self, x):
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).view(n, 3 * c, h * w).transpose(1, 2)[:, None]   # [n, 1, hw, 3c]
        q, k, v = qkv.chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(n, c, h, w)
        return self.proj(y) + x

    def forward(self, x, state=None):
        return _frames_2d(self._attend, x)


def _run(seq, x, state):
    for layer in seq:
        if isinstance(layer, (ResidualBlock, Resample, AttentionBlock)):
            x = layer(x, state)
        elif isinstance(layer, CausalConv3d):
            x = layer(x, state)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * u for u in (1,) + cfg.dim_mult]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(cin, cout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(cout))
                cin = cout
            if i != len(cfg.dim_mult) - 1:
                blocks.append(Resample(cout, "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*blocks)
        c = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(c, c), AttentionBlock(c), ResidualBlock(c, c))
        self.head = nn.Sequential(RMSNorm(c), nn.SiLU(), CausalConv3d(c, 2 * cfg.z_dim, 3, padding=1))

    def forward(self, x, state):
        x = self.conv1(x, state)
        x = _run(self.downsamples, x, state)
        x = _run(self.middle, x, state)
        return _run(self.head, x, state)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * u for u in (mult[-1],) + mult[::-1]]
        temporal_up = cfg.temperal_downsample[::-1]
        scale = 1.0 / 2 ** (len(mult) - 2)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        blocks = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                cin = cin // 2          # the previous upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResidualBlock(cin, cout))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(cout))
                cin = cout
            if i != len(mult) - 1:
                blocks.append(Resample(cout, "upsample3d" if temporal_up[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMSNorm(cout), nn.SiLU(), CausalConv3d(cout, 3, 3, padding=1))

    def forward(self, x, state):
        x = self.conv1(x, state)
        x = _run(self.middle, x, state)
        x = _run(self.upsamples, x, state)
        return _run(self.head, x, state)


def check_restarts(restarts: Sequence[int], total: Optional[int] = None, name: str = "restarts") -> set:
    """The latent frames where decoding restarts after a hard cut, checked: whole numbers >= 1 (latent frame 0
    starts every clip anyway) and, with ``total`` latent frames known, below it. ``name``: the input, for errors."""
    out = set()
    for r in restarts:
        if isinstance(r, bool) or not hasattr(r, "__index__") or r < 1 or (total is not None and r >= total):
            span = f"1..{total - 1}" if total is not None else "whole numbers >= 1"
            raise SpacetimeValueError(f"{name}={list(restarts)!r}: {r!r} is not a latent frame where a shot can "
                                      f"begin; allowed: latent frames {span}")
        out.add(int(r))
    return out


class WanVAE(nn.Module):
    encoder_class, decoder_class = Encoder3d, Decoder3d      # the Wan 2.2 VAE (vae22.py) swaps these

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = self.encoder_class(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = self.decoder_class(cfg)
        self.register_buffer("latent_mean", torch.tensor(cfg.latent_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("latent_std", torch.tensor(cfg.latent_std, dtype=torch.float32), persistent=False)

    # -- sizes --
    @property
    def temporal_factor(self) -> int:
        return self.cfg.temporal_factor

    @property
    def spatial_factor(self) -> int:
        return self.cfg.spatial_factor

    def latent_frames(self, frames: int) -> int:
        return (frames - 1) // self.temporal_factor + 1

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_factor * (latent_frames - 1)

    def check_video(self, video: torch.Tensor, name: str = "video"):
        if video.dim() != 5 or video.shape[1] != 3:
            raise SpacetimeValueError(f"{name} must be [B, 3, T, H, W]; got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        tf, sf = self.temporal_factor, self.spatial_factor
        if (t - 1) % tf:
            raise SpacetimeValueError(
                f"{name} has {t} frames; the VAE needs 1 + {tf}*k frames (e.g. {1 + tf * ((t - 1) // tf)} or "
                f"{1 + tf * ((t - 1) // tf + 1)})")
        if h % sf or w % sf:
            raise SpacetimeValueError(f"{name} is {w}x{h} pixels; width and height must be multiples of {sf}")

    # -- normalisation --
    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return (mu - self.latent_mean.view(shape).to(mu)) / self.latent_std.view(shape).to(mu)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1, 1)
        return z * self.latent_std.view(shape).to(z) + self.latent_mean.view(shape).to(z)

    # pixels <-> encoder channels (identity here; the Wan 2.2 VAE folds 2x2 pixel blocks into channels)
    def to_channels(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def from_channels(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @property
    def dtype(self):
        return self.conv1.weight.dtype

    @property
    def device(self):
        return self.conv1.weight.device

    # -- encode --
    def encode_chunks(self, video: torch.Tensor, moments: bool = False,
                      restarts: Sequence[int] = ()) -> Iterator[torch.Tensor]:
        """Yield raw mu for each causal chunk: frame 0, then every ``temporal_factor`` frames (``moments``: mu and
        log-variance concatenated on channels, for training). ``restarts``: latent frames where a new shot begins
        after a hard cut; the encoder's state starts afresh there, primed with the shot's first frame encoded alone
        (output dropped), so the shot is encoded as if it were a clip of its own (the encoding that matches
        ``decode_stream``'s restarts)."""
        self.check_video(video)
        tf = self.temporal_factor
        x = self.to_channels(video.to(self.device, self.dtype))
        starts = [0] + list(range(1, x.shape[2], tf))
        return self._encode_chunks(x, starts, moments, check_restarts(restarts, len(starts)))

    def _encode_chunks(self, x, starts, moments: bool, restarts: set) -> Iterator[torch.Tensor]:
        tf = self.temporal_factor
        state = StreamState()
        for j, s in enumerate(starts):
            chunk = x[:, :, s:s + (1 if s == 0 else tf)]
            if j in restarts:
                state = StreamState()
                self.encoder(chunk[:, :, :1], state)
            h = self.conv1(self.encoder(chunk, state))
            yield h.float() if moments else h[:, :self.cfg.z_dim].float()

    def encode_raw(self, video: torch.Tensor, restarts: Sequence[int] = ()) -> torch.Tensor:
        return torch.cat(list(self.encode_chunks(video, restarts=restarts)), dim=2)

    def encode(self, video: torch.Tensor, restarts: Sequence[int] = ()) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] -> normalised latent [B, z, 1 + (T-1)/tf, H/sf, W/sf] (float32)
        (``restarts``: hard cuts, see ``encode_chunks``)."""
        return self.normalize(self.encode_raw(video, restarts))

    # -- decode --
    def decode_chunks(self, z: torch.Tensor, normalized: bool = True, clamp: bool = True,
                      restarts: Sequence[int] = ()) -> Iterator[torch.Tensor]:
        """Yield decoded pixel chunks in [-1, 1]: 1 frame for latent 0, ``temporal_factor`` for each later one
        (``clamp=False`` keeps the raw output, for training). ``restarts``: see ``decode_stream``."""
        return self.decode_stream([z], normalized, clamp, restarts, total=z.shape[2])

    def decode_stream(self, pieces: Iterable[torch.Tensor], normalized: bool = True, clamp: bool = True,
                      restarts: Sequence[int] = (), total: Optional[int] = None) -> Iterator[torch.Tensor]:
        """``decode_chunks`` over a latent that arrives in pieces [B, z, n, H, W] (a long video, window by window):
        one causal state runs through every piece, so the frames equal decoding the pieces concatenated, and only
        the piece at hand is ever held.

        ``restarts``: latent frames (counted over all pieces) where a new shot begins after a hard cut. There the
        causal state starts afresh, primed by decoding that latent frame once as a clip's first frame (output
        dropped), so no frame after the cut blends with the shot before it; every latent frame still yields as
        many frames as without restarts. ``total``: the latent frames to come, when known, to check ``restarts``
        against before any work."""
        return self._decode_stream(pieces, normalized, clamp, check_restarts(restarts, total), total)

    def _decode_stream(self, pieces, normalized: bool, clamp: bool, starts: set,
                       total: Optional[int]) -> Iterator[torch.Tensor]:
        state = StreamState()
        first, j = True, 0
        for z in pieces:
            if z.dim() != 5 or z.shape[1] != self.cfg.z_dim:
                raise SpacetimeValueError(f"latent must be [B, {self.cfg.z_dim}, T, H, W]; got {tuple(z.shape)}")
            for i in range(z.shape[2]):
                zi = z[:, :, i:i + 1].float()
                if normalized:
                    zi = self.denormalize(zi)
                x = self.conv2(zi.to(self.device, self.dtype))
                if j in starts:                          # a cut: prime a fresh state with this frame alone
                    state = StreamState()
                    state[FIRST_CHUNK] = True
                    self.decoder(x, state)
                state[FIRST_CHUNK], first = first, False
                y = self.from_channels(self.decoder(x, state)).float()
                j += 1
                yield y.clamp(-1, 1) if clamp else y
        if total is None:                                # streamed of unknown length: checked once it is known
            check_restarts(sorted(starts), j)

    def decode(self, z: torch.Tensor, normalized: bool = True, out: Optional[torch.Tensor] = None,
               restarts: Sequence[int] = ()) -> torch.Tensor:
        """Normalised latent -> [B, 3, T, H, W] in [-1, 1], written chunk by chunk into one output tensor
        (``restarts``: hard cuts, see ``decode_stream``)."""
        B, _, T, H, W = z.shape
        sf = self.spatial_factor
        if out is None:
            out = torch.empty(B, 3, self.pixel_frames(T), H * sf, W * sf, dtype=torch.float32)
        t = 0
        for chunk in self.decode_chunks(z, normalized, restarts=restarts):
            n = chunk.shape[2]
            out[:, :, t:t + n] = chunk.to(out.device)
            t += n
        return out

    def decode_raw(self, mu: torch.Tensor) -> torch.Tensor:
        return self.decode(mu, normalized=False)


def build_vae(cfg: VAEConfig, device="cpu", dtype=torch.float32) -> WanVAE:
    """Build a VAE of either family: ``VAEConfig`` (Wan 2.1) or ``VAE22Config`` (Wan 2.2, see vae22.py)."""
    cls = WanVAE
    if isinstance(cfg, VAE22Config):
        from .vae22 import WanVAE22 as cls
    with torch.device(device):
        model = cls(cfg)
    return model.to(dtype).eval()
