"""The spacetime diffusion transformer (Wan 2.1 / 2.2 architecture), readable top to bottom.

Video latent [B, C, F, H, W] --Conv3d patch (1,2,2)--> tokens [B, L, dim] in (f, h, w) order
  --> N blocks: modulated LN -> self-attention (RMS q/k norm, 3D RoPE) -> cross-attention to text -> modulated FFN
  --> modulated LN + Linear head --> unpatchify to [B, out_dim, F, H, W]

Timesteps may be one per sample ``[B]`` (Wan 2.1), one per latent frame ``[B, F']`` (our frame conditioning), or one
per token ``[B, L]`` (the Wan 2.2 form). Internally tokens are grouped into G contiguous runs that share a timestep
(G = 1, F' or L) so the per-token modulation is never materialised larger than it has to be.

Multi-shot video: ``text_kv(..., frame_shots=...)`` gives each token frame its own shot's caption (``ShotText``), an
optional input that changes no weight; without it the cross-attention is Wan's, unchanged.

State-dict keys are the native Wan ones, so official checkpoints load without renaming.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import DiTConfig

DEFAULT_OPS = SimpleNamespace(Linear=nn.Linear, Conv3d=nn.Conv3d, LayerNorm=nn.LayerNorm)


def _dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a layer computes in (a quantised layer keeps bytes and says what it expands to)."""
    return getattr(layer, "compute_dtype", None) or layer.weight.dtype


# ----------------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------------

def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[..] raw timesteps (0..1000) -> [.., dim] features, cosine half first, computed in float64."""
    half = dim // 2
    t = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    ang = t[..., None] * freqs
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1).float()


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real channels of one head given to (time, height, width): 44/42/42 for head dim 128."""
    third = 2 * (head_dim // 6)
    return head_dim - 2 * third, third, third


def rope_cos_sin(grid: tuple[int, int, int], head_dim: int, device=None, theta: float = 10000.0,
                 offsets: tuple[int, int, int] = (0, 0, 0)):
    """cos and sin tables [L, head_dim/2] for a (F', H', W') token grid, positions starting at ``offsets``.

    Channel pair k of a head rotates by angle pos_axis * theta^(-2j/d_axis) where axis and j follow the 22/21/21
    (for d=128) split of the pairs. Angles are computed in float64.
    """
    angles = []
    for size, d_axis, off, shape in zip(grid, rope_axis_dims(head_dim), offsets,
                                        ((-1, 1, 1), (1, -1, 1), (1, 1, -1))):
        inv = theta ** (-torch.arange(0, d_axis, 2, dtype=torch.float64, device=device) / d_axis)
        pos = torch.arange(off, off + size, dtype=torch.float64, device=device)
        a = (pos[:, None] * inv[None, :])                       # [size, d_axis/2]
        angles.append(a.view(*[s if s == -1 else 1 for s in shape], a.shape[-1]).expand(
            grid[0], grid[1], grid[2], a.shape[-1]))
    ang = torch.cat(angles, dim=-1).reshape(-1, head_dim // 2)
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2k, 2k+1) of x [B, H, L, D] by the angles behind cos/sin [L, D/2]."""
    dtype = x.dtype
    x = x.float().unflatten(-1, (-1, 2))
    x0, x1 = x[..., 0], x[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """RMS norm over the last dim with a learned weight, computed in float32 (Wan's q/k norm over the full dim)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight.to(x.dtype)


def layer_norm32(x: torch.Tensor, eps: float, weight=None, bias=None) -> torch.Tensor:
    w = None if weight is None else weight.float()
    b = None if bias is None else bias.float()
    return F.layer_norm(x.float(), (x.shape[-1],), w, b, eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] float32; shift/scale [B, G, D] for G groups of L/G contiguous tokens."""
    B, L, D = x.shape
    G = shift.shape[1]
    xg = x.view(B, G, L // G, D)
    return (xg * (1 + scale[:, :, None]) + shift[:, :, None]).view(B, L, D)


def gate(y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    B, L, D = y.shape
    G = g.shape[1]
    return (y.float().view(B, G, L // G, D) * g[:, :, None]).view(B, L, D)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm=True, eps=1e-6, ops=DEFAULT_OPS):
        super().__init__()
        self.num_heads = num_heads
        self.q = ops.Linear(dim, dim)
        self.k = ops.Linear(dim, dim)
        self.v = ops.Linear(dim, dim)
        self.o = ops.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def _heads(self, x):
        B, L, D = x.shape
        return x.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, x, rope):
        q = self._heads(self.norm_q(self.q(x)))
        k = self._heads(self.norm_k(self.k(x)))
        v = self._heads(self.v(x))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = attention(q, k, v)
        return self.o(out.transpose(1, 2).flatten(2))


class ShotText:
    """Per-shot text for one block's cross-attention (multi-shot video): keys/values of ``shots`` texts per video,
    rows grouped by video (video b reads rows b*shots .. b*shots+shots-1; one group serves every video), and the
    shot of every token frame ``frame_shots`` [F'] (long). The tokens of a frame attend only to their shot's text:
    the same as one cross-attention over all texts with a block mask, without computing the masked part. Nothing
    in the weights changes, so any Wan-layout DiT takes it."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, frame_shots: torch.Tensor, shots: int):
        if k.shape[0] % shots:
            raise ValueError(f"{k.shape[0]} texts are not a whole number of groups of shots={shots}")
        if int(frame_shots.min()) < 0 or int(frame_shots.max()) >= shots:
            raise ValueError(f"frame_shots holds shot numbers {int(frame_shots.min())}..{int(frame_shots.max())}; "
                             f"allowed: 0..{shots - 1}")
        self.k, self.v, self.frame_shots, self.shots = k, v, frame_shots.long(), shots
        self._tokens: dict = {}

    def _token_index(self, L: int, device) -> list:
        """[(shot, token indices)] for L video tokens (computed once per length and device)."""
        key = (L, str(device))
        if key not in self._tokens:
            Fp = self.frame_shots.numel()
            if L % Fp:
                raise ValueError(f"{L} video tokens do not split into {Fp} frames (frame_shots has one entry per "
                                 f"token frame)")
            token_shots = self.frame_shots.to(device).repeat_interleave(L // Fp)
            self._tokens[key] = [(s, (token_shots == s).nonzero().squeeze(1))
                                 for s in torch.unique(self.frame_shots).tolist()]
        return self._tokens[key]

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        """q [B, heads, L, d] with L = F' x tokens per frame -> [B, heads, L, d]."""
        B = q.shape[0]
        k = self.k.unflatten(0, (-1, self.shots))                # [groups, shots, heads, L_text, d]
        v = self.v.unflatten(0, (-1, self.shots))
        if k.shape[0] != B:
            k, v = k.expand(B, -1, -1, -1, -1), v.expand(B, -1, -1, -1, -1)
        out = torch.empty_like(q)
        for s, idx in self._token_index(q.shape[2], q.device):
            out[:, :, idx] = attention(q[:, :, idx], k[:, s], v[:, s])
        return out


class CrossAttention(SelfAttention):
    """Queries from video tokens, keys/values from the (padded, unmasked) text tokens. No RoPE."""

    def text_kv(self, context):
        return self._heads(self.norm_k(self.k(context))), self._heads(self.v(context))

    def forward(self, x, context=None, kv=None):
        q = self._heads(self.norm_q(self.q(x)))
        if isinstance(kv, ShotText):
            return self.o(kv.attend(q).transpose(1, 2).flatten(2))
        k, v = kv if kv is not None else self.text_kv(context)
        if k.shape[0] != q.shape[0]:                      # one text for several videos
            k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        out = attention(q, k, v)
        return self.o(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig, ops=DEFAULT_OPS):
        super().__init__()
        d = cfg.dim
        self.eps = cfg.eps
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps, ops)
        self.norm3 = ops.LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else None
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.qk_norm, cfg.eps, ops)
        self.ffn = nn.Sequential(ops.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), ops.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d ** 0.5)

    def forward(self, x, e0, rope, context=None, kv=None):
        """x [B, L, D] float32 residual stream; e0 [B, G, 6, D] float32."""
        dt = _dtype(self.self_attn.q)
        m = (self.modulation.float()[:, None] + e0).unbind(2)        # 6 x [B, G, D]
        h = modulate(layer_norm32(x, self.eps), m[0], m[1])
        x = x + gate(self.self_attn(h.to(dt), rope), m[2])
        h = x if self.norm3 is None else layer_norm32(x, self.eps, self.norm3.weight, self.norm3.bias)
        x = x + self.cross_attn(h.to(dt), context, kv).float()
        h = modulate(layer_norm32(x, self.eps), m[3], m[4])
        x = x + gate(self.ffn(h.to(dt)), m[5])
        return x


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig, ops=DEFAULT_OPS):
        super().__init__()
        self.eps = cfg.eps
        self.head = ops.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        """e [B, G, D] (the time embedding itself, not the block projection)."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        h = modulate(layer_norm32(x, self.eps), shift, scale)
        return self.head(h.to(_dtype(self.head)))


# ----------------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------------

class WanDiT(nn.Module):
    """Wan video DiT. ``forward(x, t, context)`` returns the flow prediction (noise - data) for latents x."""

    def __init__(self, cfg: DiTConfig, ops=DEFAULT_OPS):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = ops.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(ops.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"),
                                            ops.Linear(d, d))
        self.time_embedding = nn.Sequential(ops.Linear(cfg.freq_dim, d), nn.SiLU(), ops.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(d, 6 * d))
        self.blocks = nn.ModuleList([Block(cfg, ops) for _ in range(cfg.num_layers)])
        self.head = Head(cfg, ops)
        self._rope_cache: dict = {}

    # -- initialisation (Wan's scheme; the head starts at zero so a fresh model predicts 0) --
    def init_weights(self, zero_head: bool = True):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        if zero_head:
            nn.init.zeros_(self.head.head.weight)
        return self

    @property
    def dtype(self):
        return _dtype(self.patch_embedding)

    @property
    def device(self):
        return self.patch_embedding.weight.device

    # -- pieces that a sampler can compute once per generation --
    def embed_text(self, context: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, L, text_dim] token embeddings -> [B, text_len, dim]. Rows past ``lengths`` and up to text_len are
        zero before the embedding MLP (as Wan pads), and every row is attended to."""
        B, L, _ = context.shape
        tl = self.cfg.text_len
        ctx = context.to(self.device, self.dtype)
        if lengths is not None:
            keep = torch.arange(L, device=ctx.device)[None, :] < lengths.to(ctx.device)[:, None]
            ctx = ctx * keep[..., None].to(ctx.dtype)
        if L > tl:
            ctx = ctx[:, :tl]
        elif L < tl:
            ctx = torch.cat([ctx, ctx.new_zeros(B, tl - L, ctx.shape[-1])], dim=1)
        return self.text_embedding(ctx)

    def text_kv(self, text_emb: torch.Tensor, frame_shots: Optional[torch.Tensor] = None, shots: int = 1):
        """Per-block cross-attention keys/values for embedded text (reused across sampling steps). With
        ``frame_shots`` [F'] the text holds ``shots`` captions per video and each token frame reads its own shot's
        caption (see ``ShotText``); without it, every token reads the one text as in Wan."""
        kv = [blk.cross_attn.text_kv(text_emb) for blk in self.blocks]
        if frame_shots is None:
            return kv
        return [ShotText(k, v, frame_shots, shots) for k, v in kv]

    def rope(self, grid, device, offsets=(0, 0, 0)):
        key = (tuple(grid), str(device), tuple(offsets))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 16:
                self._rope_cache.clear()
            self._rope_cache[key] = rope_cos_sin(grid, self.cfg.head_dim, device, offsets=offsets)
        return self._rope_cache[key]

    def _time(self, t: torch.Tensor, B: int, grid) -> tuple[torch.Tensor, torch.Tensor]:
        """Timesteps -> (e [B, G, D], e0 [B, G, 6, D]) with G in {1, F', L}."""
        Fp, Hp, Wp = grid
        L = Fp * Hp * Wp
        t = torch.as_tensor(t, device=self.device)
        if t.dim() == 0:
            t = t.expand(B)
        if t.dim() == 1:
            t = t[:, None]
        if t.shape[0] == 1 and B > 1:
            t = t.expand(B, -1)
        G = t.shape[1]
        if G == L and L > 1:
            tv = t.view(B, Fp, Hp * Wp)
            if bool((tv == tv[:, :, :1]).all()):       # constant within each frame: per-frame groups are enough
                t, G = tv[:, :, 0], Fp
        if G not in (1, Fp, L):
            raise ValueError(f"timestep tensor of shape {tuple(t.shape)} does not fit {B} samples of {L} tokens "
                             f"({Fp} latent frames); allowed: [B], [B, {Fp}] or [B, {L}]")
        e = self.time_embedding(timestep_sinusoid(t, self.cfg.freq_dim).to(self.dtype)).float()
        e0 = self.time_projection(e.to(self.dtype)).float().unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_lengths: Optional[torch.Tensor] = None, *, text_emb: Optional[torch.Tensor] = None,
                text_kv=None, rope_offsets=(0, 0, 0)) -> torch.Tensor:
        """x [B, in_dim, F, H, W]; t [B] | [B, F'] | [B, L] raw timesteps (0..1000); context [B, L_text, text_dim]
        (or precomputed ``text_emb`` / ``text_kv``). Returns [B, out_dim, F, H, W] float32."""
        B = x.shape[0]
        pt, ph, pw = self.cfg.patch_size
        tok = self.patch_embedding(x.to(self.device, self.dtype))
        grid = tuple(tok.shape[2:])
        h = tok.flatten(2).transpose(1, 2).float()
        e, e0 = self._time(t, B, grid)
        if text_kv is None and text_emb is None:
            text_emb = self.embed_text(context, context_lengths)
        rope = self.rope(grid, h.device, rope_offsets)
        for i, blk in enumerate(self.blocks):
            h = blk(h, e0, rope, context=text_emb, kv=None if text_kv is None else text_kv[i])
        out = self.head(h, e)                                    # [B, L, pt*ph*pw*out]
        Fp, Hp, Wp = grid
        c = self.cfg.out_dim
        out = out.float().view(B, Fp, Hp, Wp, pt, ph, pw, c)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, c, Fp * pt, Hp * ph, Wp * pw)
        return out


def build_dit(cfg: DiTConfig, device="cpu", dtype=torch.float32, ops=DEFAULT_OPS, init: bool = True) -> WanDiT:
    """Build a DiT. ``device='meta'`` builds shapes only (no memory)."""
    with torch.device(device):
        model = WanDiT(cfg, ops)
    if init and str(device) != "meta":
        model.init_weights()
    return model.to(dtype)
