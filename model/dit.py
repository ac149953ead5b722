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

Exact speed-ups (equal to the plain computation up to float rounding; tests/test_dit_fast.py checks them):
- Text padding. Wan zero-pads the prompt to ``text_len`` rows before the text embedding and cross-attention attends
  to every row. Zero rows all embed to the same row, and attention over c identical keys/values equals attention over
  one copy whose logit is raised by log(c). ``text_tokens`` keeps the rows up to the longest prompt of the batch plus
  one padding row with that bias (``TextTokens``), so a 20-token prompt costs 21 rows instead of 512.
- Text keys/values are computed once per run (``text_kv``), with the query RMS-norm weight folded into the keys.
- Fewer passes over the token activations: layer norm and modulation in one call when the modulation is shared by
  the batch, RMS norm + 3D RoPE as one complex multiply (the per-token norm scale folded into the rotation), gated
  residuals as one fused multiply-add, in place when no gradient is needed.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import NamedTuple, Optional

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


def rope_table(grid: tuple[int, int, int], head_dim: int, device=None, theta: float = 10000.0,
               offsets: tuple[int, int, int] = (0, 0, 0)) -> torch.Tensor:
    """Complex rotations [L, head_dim/2] (complex64) for a (F', H', W') token grid, positions starting at ``offsets``.

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
    return torch.complex(torch.cos(ang).float(), torch.sin(ang).float())


def apply_rope(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2k, 2k+1) of x [..., D] (float32) by ``rot``, complex and broadcastable to
    [..., D/2]. In place when no gradient is needed."""
    xc = torch.view_as_complex(x.unflatten(-1, (-1, 2)))
    xc = xc.mul_(rot) if not torch.is_grad_enabled() else xc * rot
    return torch.view_as_real(xc).flatten(-2)


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


def _inplace() -> bool:
    """In-place updates of fresh intermediates are safe only when autograd does not need them."""
    return not torch.is_grad_enabled()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] float32; shift/scale [B or 1, G, D] for G groups of L/G contiguous tokens. Writes into x when no
    gradient is needed (callers pass a fresh tensor)."""
    B, L, D = x.shape
    G = shift.shape[1]
    xg = x.view(B, G, L // G, D)
    out = xg if _inplace() else None
    return torch.addcmul(shift[:, :, None], xg, 1 + scale[:, :, None], out=out).view(B, L, D)


def norm_modulate(x: torch.Tensor, eps: float, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """LayerNorm(x) * (1 + scale) + shift in float32; one fused layer norm when the modulation is shared by the
    whole batch and all tokens."""
    if shift.shape[0] == 1 and shift.shape[1] == 1:
        D = x.shape[-1]
        return F.layer_norm(x.float(), (D,), (1 + scale).reshape(D), shift.reshape(D), eps)
    return modulate(layer_norm32(x, eps), shift, scale)


def add_gated(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, inplace: bool = True) -> torch.Tensor:
    """x + y * g for G token groups (g [B or 1, G, D]), as one fused multiply-add; into x when ``inplace`` and no
    gradient is needed."""
    B, L, D = x.shape
    G = g.shape[1]
    xg, yg = x.view(B, G, L // G, D), y.float().view(B, G, L // G, D)
    if inplace and _inplace():
        return xg.addcmul_(yg, g[:, :, None]).view(B, L, D)
    return torch.addcmul(xg, yg, g[:, :, None]).view(B, L, D)


def _mean_square(y: torch.Tensor) -> torch.Tensor:
    """mean(y^2) over the last dim in float32, [.., 1]; one reduction without a squared copy when no gradient."""
    if not _inplace():
        return y.float().pow(2).mean(-1, keepdim=True)
    return torch.linalg.vector_norm(y, dim=-1, keepdim=True, dtype=torch.float32).pow_(2).div_(y.shape[-1])


def norm_rope(y: torch.Tensor, weight: Optional[torch.Tensor], eps: float, rot: torch.Tensor,
              heads: int) -> torch.Tensor:
    """Wan's q/k RMSNorm over the full dim (when ``weight`` [.., 1, D] is given) then 3D RoPE (``rot`` [L, D/heads/2]):
    y [.., L, D] -> [.., L, heads, D/heads] float32. The per-token 1/rms is folded into the rotation, so the
    activations are touched twice (weight, rotation)."""
    *lead, L, D = y.shape
    yf = y.float()
    rot = rot[:, None, :]                                                  # [L, 1 (heads), D/heads/2]
    if weight is not None:
        r = torch.rsqrt(_mean_square(y) + eps)                             # [.., L, 1]
        yf = yf.mul_(weight) if _inplace() else yf * weight
        rot = rot * r[..., None]
    return apply_rope(yf.view(*lead, L, heads, D // heads), rot)


class SelfAttention(nn.Module):
    # Sequence parallelism (model/parallel.py) replaces this with its all-to-all attention while it is active.
    attend = staticmethod(attention)

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
        """x [B, L, D]; rope: complex rotations [L, head_dim/2] of these tokens."""
        B, L, D = x.shape
        H = self.num_heads
        v = self.v(x)
        w = None
        if isinstance(self.norm_q, RMSNorm):
            w = torch.stack([self.norm_q.weight, self.norm_k.weight]).float()[:, None, None]
        qk = norm_rope(torch.stack([self.q(x), self.k(x)]), w, self.norm_q.eps if w is not None else 0.0, rope, H)
        q, k = qk.to(v.dtype).unbind(0)                                    # [B, L, H, d] each
        out = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.view(B, L, H, D // H).transpose(1, 2))
        return self.o(out.transpose(1, 2).reshape(B, L, D))


class TextTokens(NamedTuple):
    """Embedded text in compact form: ``emb`` [B, K, dim] and ``bias`` [K] added to the cross-attention logits (0
    for real rows, log(count) for the last row when it stands for ``count`` identical padding rows), or None."""
    emb: torch.Tensor
    bias: Optional[torch.Tensor] = None


class ShotText:
    """Per-shot text for one block's cross-attention (multi-shot video): keys/values of ``shots`` texts per video,
    rows grouped by video (video b reads rows b*shots .. b*shots+shots-1; one group serves every video), and the
    shot of every token frame ``frame_shots`` [F'] (long). The tokens of a frame attend only to their shot's text:
    the same as one cross-attention over all texts with a block mask, without computing the masked part. Nothing
    in the weights changes, so any Wan-layout DiT takes it. ``bias``: the compact text's logit bias (``TextTokens``),
    shared by every shot's text, or None."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, frame_shots: torch.Tensor, shots: int,
                 bias: Optional[torch.Tensor] = None):
        if k.shape[0] % shots:
            raise ValueError(f"{k.shape[0]} texts are not a whole number of groups of shots={shots}")
        if int(frame_shots.min()) < 0 or int(frame_shots.max()) >= shots:
            raise ValueError(f"frame_shots holds shot numbers {int(frame_shots.min())}..{int(frame_shots.max())}; "
                             f"allowed: 0..{shots - 1}")
        self.k, self.v, self.frame_shots, self.shots, self.bias = k, v, frame_shots.long(), shots, bias
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
        mask = None if self.bias is None else self.bias.to(q.dtype).view(1, 1, 1, -1)
        out = torch.empty_like(q)
        for s, idx in self._token_index(q.shape[2], q.device):
            out[:, :, idx] = attention(q[:, :, idx], k[:, s], v[:, s], mask)
        return out


class CrossAttention(SelfAttention):
    """Queries from video tokens, keys/values from the (padded, unmasked) text tokens. No RoPE."""

    def text_kv(self, context):
        """(keys [B, H, K, d] with the query norm's weight folded in, values, logit bias or None) for embedded text:
        a TextTokens or a full [B, text_len, dim] tensor."""
        emb, bias = context if isinstance(context, TextTokens) else (context, None)
        k = self.norm_k(self.k(emb))
        if isinstance(self.norm_q, RMSNorm):
            k = k * self.norm_q.weight.to(k.dtype)
        return self._heads(k), self._heads(self.v(emb)), bias

    def forward(self, x, context=None, kv=None):
        B, L, D = x.shape
        q = self.q(x)
        if isinstance(self.norm_q, RMSNorm):                      # its weight is in the keys
            r = torch.rsqrt(_mean_square(q) + self.norm_q.eps).to(q.dtype)
            q = q.mul_(r) if _inplace() else q * r
        q = q.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)
        if isinstance(kv, ShotText):
            return self.o(kv.attend(q).transpose(1, 2).reshape(B, L, D))
        k, v, bias = kv if kv is not None else self.text_kv(context)
        if k.shape[0] != B:                                       # one text for several videos
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)
        mask = None if bias is None else bias.to(q.dtype).view(1, 1, 1, -1)
        out = attention(q, k, v, mask)
        return self.o(out.transpose(1, 2).reshape(B, L, D))


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

    def _ffn(self, h):
        a = self.ffn[0](h)
        a = torch.ops.aten.gelu_(a, approximate="tanh") if _inplace() else self.ffn[1](a)
        return self.ffn[2](a)

    def forward(self, x, e0, rope, context=None, kv=None):
        """x [B, L, D] float32 residual stream (left unchanged; a new tensor is returned); e0 [B or 1, G, 6, D]."""
        dt = _dtype(self.self_attn.q)
        m = (self.modulation.float()[:, None] + e0).unbind(2)        # 6 x [B|1, G, D]
        h = norm_modulate(x, self.eps, m[0], m[1])
        x = add_gated(x, self.self_attn(h.to(dt), rope), m[2], inplace=False)
        h = x if self.norm3 is None else layer_norm32(x, self.eps, self.norm3.weight, self.norm3.bias)
        y = self.cross_attn(h.to(dt), context, kv).float()
        x = x.add_(y) if _inplace() else x + y
        h = norm_modulate(x, self.eps, m[3], m[4])
        return add_gated(x, self._ffn(h.to(dt)), m[5])


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig, ops=DEFAULT_OPS):
        super().__init__()
        self.eps = cfg.eps
        self.head = ops.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e):
        """e [B, G, D] (the time embedding itself, not the block projection)."""
        shift, scale = (self.modulation.float()[:, None] + e[:, :, None]).unbind(2)
        h = norm_modulate(x, self.eps, shift, scale)
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
    def _context(self, context: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """[B, L, text_dim] on the model's device and dtype, rows past ``lengths`` zeroed, at most text_len rows."""
        ctx = context[:, :self.cfg.text_len].to(self.device, self.dtype)
        if lengths is not None:
            keep = torch.arange(ctx.shape[1], device=ctx.device)[None, :] < lengths.to(ctx.device)[:, None]
            ctx = ctx * keep[..., None].to(ctx.dtype)
        return ctx

    def embed_text(self, context: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """[B, L, text_dim] token embeddings -> [B, text_len, dim]. Rows past ``lengths`` and up to text_len are
        zero before the embedding MLP (as Wan pads), and every row is attended to. ``text_tokens`` is the same text
        in compact form (what the model uses)."""
        ctx = self._context(context, lengths)
        B, L, C = ctx.shape
        if L < self.cfg.text_len:
            ctx = torch.cat([ctx, ctx.new_zeros(B, self.cfg.text_len - L, C)], dim=1)
        return self.text_embedding(ctx)

    def text_tokens(self, context: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> TextTokens:
        """``embed_text`` without the padding: the rows up to the batch's last non-zero row, plus one zero-input row
        standing for the remaining ``text_len - n`` padding rows through a log-count logit bias. Cross-attention
        over it equals cross-attention over ``embed_text``'s rows (every zero row embeds to the same row)."""
        ctx = self._context(context, lengths)
        B, L, C = ctx.shape
        used = (ctx != 0).any(-1).any(0).nonzero()
        n = int(used.max()) + 1 if used.numel() else 0
        pad = self.cfg.text_len - n
        rows = ctx[:, :n]
        if pad > 0:
            rows = torch.cat([rows, ctx.new_zeros(B, 1, C)], dim=1)
        bias = None
        if pad > 1:
            bias = torch.zeros(n + 1, device=ctx.device)
            bias[-1] = math.log(pad)
        return TextTokens(self.text_embedding(rows), bias)

    def text_kv(self, text, frame_shots: Optional[torch.Tensor] = None, shots: int = 1):
        """Per-block cross-attention keys/values for embedded text (``text_tokens`` or ``embed_text``), reused
        across sampling steps. With ``frame_shots`` [F'] the text holds ``shots`` captions per video and each token
        frame reads its own shot's caption (see ``ShotText``); without it, every token reads the one text as in
        Wan."""
        kv = [blk.cross_attn.text_kv(text) for blk in self.blocks]
        if frame_shots is None:
            return kv
        return [ShotText(k, v, frame_shots.to(self.device), shots, bias) for k, v, bias in kv]

    def rope(self, grid, device, offsets=(0, 0, 0)):
        key = (tuple(grid), str(device), tuple(offsets))
        if key not in self._rope_cache:
            if len(self._rope_cache) > 16:
                self._rope_cache.clear()
            self._rope_cache[key] = rope_table(grid, self.cfg.head_dim, device, offsets=offsets)
        return self._rope_cache[key]

    def _timesteps(self, t: torch.Tensor, B: int, grid) -> torch.Tensor:
        """Timesteps -> tg [B', G]: the timestep of each of G contiguous token groups, G in {1, F', L}. B' is 1 when
        every sample has the same timesteps (CFG's pair), so the modulation is computed once and broadcast."""
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
        if t.shape[0] != B or G not in (1, Fp, L):
            raise ValueError(f"timestep tensor of shape {tuple(t.shape)} does not fit {B} samples of {L} tokens "
                             f"({Fp} latent frames); allowed: [B], [B, {Fp}] or [B, {L}]")
        if G == L and L > 1:
            tv = t.reshape(B, Fp, Hp * Wp)
            if bool((tv == tv[:, :, :1]).all()):       # constant within each frame: per-frame groups are enough
                t = tv[:, :, 0]
        if B > 1 and bool((t == t[:1]).all()):
            t = t[:1]
        return t.float()

    def _embed_time(self, tg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tg [B', G] -> (e [B', G, D], e0 [B', G, 6, D]) float32."""
        e = self.time_embedding(timestep_sinusoid(tg, self.cfg.freq_dim).to(self.dtype)).float()
        e0 = self.time_projection(e.to(self.dtype)).float().unflatten(-1, (6, self.cfg.dim))
        return e, e0

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Latents [B, in_dim, F, H, W] -> patch tokens [B, F'H'W', dim] float32 in (f, h, w) order."""
        return self.patch_embedding(x.to(self.device, self.dtype)).flatten(2).transpose(1, 2).float().contiguous()

    # Set while model/parallel.py's sequence parallelism or model/cache.py's step cache is active.
    sequence_parallel = None
    step_cache = None

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: Optional[torch.Tensor] = None,
                context_lengths: Optional[torch.Tensor] = None, *, text_emb=None, text_kv=None,
                rope_offsets=(0, 0, 0)) -> torch.Tensor:
        """x [B, in_dim, F, H, W]; t [B] | [B, F'] | [B, L] raw timesteps (0..1000); context [B, L_text, text_dim]
        (or precomputed ``text_emb`` (``text_tokens`` / ``embed_text``) or ``text_kv``). Returns
        [B, out_dim, F, H, W] float32."""
        B = x.shape[0]
        pt, ph, pw = self.cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        tg = self._timesteps(t, B, grid)
        if text_kv is None and text_emb is None:
            text_emb = self.text_tokens(context, context_lengths)
        rope = self.rope(grid, self.device, rope_offsets)
        sp = self.sequence_parallel
        if sp is None:
            h = self._tokens(x)
        else:                                                    # this rank's share of the tokens
            h, tg, rope = sp.shard(self, x, tg, rope, grid)
        e, e0 = self._embed_time(tg)
        cache = self.step_cache
        if cache is not None and cache.reusable(self, h, tg, e0, rope_offsets):
            h = cache.reuse(h)
        else:
            h_in = h
            for i, blk in enumerate(self.blocks):
                h = blk(h, e0, rope, context=text_emb, kv=None if text_kv is None else text_kv[i])
            if cache is not None:
                cache.store(h_in, h)
        out = self.head(h, e)                                    # [B, L, pt*ph*pw*out]
        if sp is not None:
            out = sp.gather(out)
        Fp, Hp, Wp = grid
        c = self.cfg.out_dim
        out = out.float().view(B, Fp, Hp, Wp, pt, ph, pw, c)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, c, Fp * pt, Hp * ph, Wp * pw)
        return out


def base_dit(model):
    """The WanDiT inside wrappers that hold it as ``.model`` (e.g. concat.ConcatConditioned), for hooks that must
    reach the DiT itself."""
    while not isinstance(model, WanDiT) and hasattr(model, "model"):
        model = model.model
    return model


def build_dit(cfg: DiTConfig, device="cpu", dtype=torch.float32, ops=DEFAULT_OPS, init: bool = True) -> WanDiT:
    """Build a DiT. ``device='meta'`` builds shapes only (no memory)."""
    with torch.device(device):
        model = WanDiT(cfg, ops)
    if init and str(device) != "meta":
        model.init_weights()
    return model.to(dtype)
