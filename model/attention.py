"""Attention for the DiT: PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels where the device
has them), except that half-precision (fp16) inputs whose scores could leave fp16's range are computed in float32.

fp16 tops out at 65504. The fused GPU kernels accumulate scores and softmax in float32, but the reference ("math")
path multiplies q by k in the input precision, and large q/k norms then give inf scores, NaN probabilities and black
frames. The bound |q_i . k_j| * scale <= max|q| * max|k| * scale (Cauchy-Schwarz over each head's channels) is cheap
to compute and decides the precision; bf16 and fp32 share float32's range and never need it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FP16_SAFE_SCORE = 2.0 ** 15          # half of fp16's largest value: room for rounding in the accumulation


def scores_may_overflow(q: torch.Tensor, k: torch.Tensor, limit: float = FP16_SAFE_SCORE) -> bool:
    """True when some scaled score q_i . k_j / sqrt(d) could exceed ``limit`` in magnitude (q, k [..., L, d])."""
    qn = torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32).amax()
    kn = torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32).amax()
    return bool(qn * kn > limit * math.sqrt(q.shape[-1]))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v for q, k, v [B, H, L, d] (``mask``: an additive logit bias broadcastable to
    the scores, or None); the result has q's dtype."""
    if q.dtype == torch.float16 and scores_may_overflow(q, k):
        mask = None if mask is None else mask.float()
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype))
