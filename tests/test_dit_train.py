"""Training through the fast DiT (toyworld/train_dit.py trains the embedded model with this code): with autograd on,
the compact text and the fused norm / RoPE / modulation / residual paths give the loss and parameter gradients of
the plain Wan computation written out below (every padding row attended to, cos/sin RoPE, per-token modulation),
and they also run under bf16 autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from spacetime.model.config import DiTConfig
from spacetime.model.dit import build_dit

TOL = 1e-5


def small():
    torch.manual_seed(0)
    m = build_dit(DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_dim=32, text_len=16)).train()
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m


def batch(seed=0):
    """A training batch as train_dit builds it: per-sample per-frame timesteps with known frames at 0, captions of
    different lengths (one dropped to the empty prompt), a weighted flow-matching loss on unknown frames."""
    g = torch.Generator().manual_seed(seed)
    x0, noise = torch.randn(3, 16, 3, 4, 6, generator=g), torch.randn(3, 16, 3, 4, 6, generator=g)
    known = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]])
    sigma = torch.tensor([0.9, 0.4, 0.05])
    s5, k5 = sigma.view(3, 1, 1, 1, 1), known.view(3, 1, 3, 1, 1)
    xs = ((1 - s5) * x0 + s5 * noise) * (1 - k5) + x0 * k5
    t = (1 - known) * sigma[:, None] * 1000
    ctx, lens = torch.randn(3, 9, 32, generator=g), torch.tensor([5, 9, 0])
    return xs, t, ctx, lens, noise - x0, k5


def loss_of(v, target, k5):
    return (((v.float() - target) ** 2) * (1 - k5)).sum() / (1 - k5).sum() / v[0, :, 0].numel()


# -- the plain computation (Wan's math, nothing fused or compacted) --

def plain_rope(grid, d, theta=10000.0):
    """cos, sin [L, d/2] for (f, h, w) positions; Wan's split of a head's channel pairs over the three axes."""
    third = 2 * (d // 6)
    angles = []
    for axis, (size, da) in enumerate(zip(grid, (d - 2 * third, third, third))):
        pos = torch.arange(size, dtype=torch.float64)
        a = pos[:, None] * theta ** (-torch.arange(0, da, 2, dtype=torch.float64) / da)
        shape = [1, 1, 1, a.shape[1]]
        shape[axis] = size
        angles.append(a.view(shape).expand(*grid, a.shape[1]))
    ang = torch.cat(angles, -1).reshape(-1, d // 2)
    return ang.cos().float(), ang.sin().float()


def rope(x, cos, sin):
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).flatten(-2).to(x.dtype)


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w.to(x.dtype)


def ln(x, eps, w=None, b=None):
    return F.layer_norm(x.float(), (x.shape[-1],), None if w is None else w.float(), None if b is None else b.float(),
                        eps)


def attend(a, x, kv_src, cos_sin=None):
    B, L, D = x.shape
    H = a.num_heads

    def heads(y):
        return y.view(B, -1, H, D // H).transpose(1, 2)
    q, k = rms(a.q(x), a.norm_q.weight, a.norm_q.eps), rms(a.k(kv_src), a.norm_k.weight, a.norm_k.eps)
    q, k, v = heads(q), heads(k), heads(a.v(kv_src))
    if cos_sin is not None:
        q, k = rope(q, *cos_sin), rope(k, *cos_sin)
    return a.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, L, D))


def plain_forward(m, x, t, ctx, lens):
    cfg = m.cfg
    dt = m.dtype
    B, _, Fr, Hh, Ww = x.shape
    tok = m.patch_embedding(x.to(dt))
    grid = tuple(tok.shape[2:])
    h = tok.flatten(2).transpose(1, 2).float()
    tt = t.repeat_interleave(grid[1] * grid[2], dim=1)                     # one timestep per token
    half = cfg.freq_dim // 2
    ang = tt.double()[..., None] * torch.pow(10000.0, -torch.arange(half, dtype=torch.float64) / half)
    e = m.time_embedding(torch.cat([ang.cos(), ang.sin()], -1).float().to(dt)).float()
    e0 = m.time_projection(e.to(dt)).float().unflatten(-1, (6, cfg.dim))   # [B, L, 6, D]
    keep = (torch.arange(ctx.shape[1])[None] < lens[:, None]).to(ctx.dtype)
    padded = torch.zeros(B, cfg.text_len, cfg.text_dim)
    padded[:, :ctx.shape[1]] = ctx * keep[..., None]
    text = m.text_embedding(padded.to(dt))                                 # all text_len rows
    cos_sin = plain_rope(grid, cfg.head_dim)
    for blk in m.blocks:
        mo = (blk.modulation.float() + e0).unbind(2)                       # 6 x [B, L, D]
        y = (ln(h, blk.eps) * (1 + mo[1]) + mo[0]).to(dt)
        h = h + attend(blk.self_attn, y, y, cos_sin).float() * mo[2]
        h = h + attend(blk.cross_attn, ln(h, blk.eps, blk.norm3.weight, blk.norm3.bias).to(dt), text).float()
        h = h + blk.ffn((ln(h, blk.eps) * (1 + mo[4]) + mo[3]).to(dt)).float() * mo[5]
    shift, scale = (m.head.modulation.float()[:, None] + e[:, :, None]).unbind(2)
    out = m.head.head((ln(h, m.head.eps) * (1 + scale) + shift).to(dt)).float()
    pt, ph, pw = cfg.patch_size
    out = out.view(B, *grid, pt, ph, pw, cfg.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return out.reshape(B, cfg.out_dim, Fr, Hh, Ww)


def loss_and_grads(m, fwd):
    xs, t, ctx, lens, target, k5 = batch()
    m.zero_grad(set_to_none=True)
    loss = loss_of(fwd(m, xs, t, ctx, lens), target, k5)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


def fast_forward(m, xs, t, ctx, lens):
    return m(xs, t, ctx, lens)


def worst_diff(grads, ref) -> float:
    """Largest gradient difference over the parameters, each relative to its reference's largest entry (or 0.01)."""
    return max((g - ref[n]).abs().max().item() / max(ref[n].abs().max().item(), 1e-2) for n, g in grads.items())


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def test_training_loss_and_gradients_equal_the_plain_computation():
    m = small()
    loss, grads = loss_and_grads(m, fast_forward)
    ref_loss, ref_grads = loss_and_grads(m, plain_forward)
    assert abs(loss - ref_loss).item() <= TOL * ref_loss.item()
    assert grads.keys() == ref_grads.keys()
    assert all(g.abs().max() > 0 for g in ref_grads.values())              # every parameter gets a gradient
    assert worst_diff(grads, ref_grads) <= TOL
    # the same comparison fails for a model that drops the padding rows' log-count bias (attends to one row)
    m2 = small()
    for blk in m2.blocks:
        blk.cross_attn.text_kv = (lambda f: lambda text: f(text)[:2] + (None,))(blk.cross_attn.text_kv)
    assert worst_diff(loss_and_grads(m2, fast_forward)[1], ref_grads) > 1e-2


def test_no_grad_forward_in_place_equals_the_training_forward():
    """The in-place paths (autograd off) give the training forward's output, and leave their inputs unchanged."""
    m = small()
    xs, t, ctx, lens, _, _ = batch()
    before = xs.clone(), ctx.clone()
    out = m(xs, t, ctx, lens)
    with torch.no_grad():
        fast = m(xs, t, ctx, lens)
        ref = plain_forward(m, xs, t, ctx, lens)
    assert (fast - out.detach()).abs().max().item() <= TOL
    assert (fast - ref).abs().max().item() <= TOL
    assert torch.equal(xs, before[0]) and torch.equal(ctx, before[1])


def test_training_under_bf16_autocast():
    """bf16 autocast (train_dit's GPU default): forward and backward run, gradients are finite and as close to the
    fp32 gradients as the plain computation's under the same autocast."""
    m = small()
    ref_loss, ref = loss_and_grads(m, plain_forward)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(m, fast_forward)
        plain_loss, plain_grads = loss_and_grads(m, plain_forward)
    assert math.isfinite(loss.item()) and all(torch.isfinite(g).all() for g in grads.values())
    assert abs(loss - ref_loss).item() <= 0.02 * ref_loss.item()
    err = sum(rel(grads[n], ref[n]) for n in ref) / len(ref)
    plain_err = sum(rel(plain_grads[n], ref[n]) for n in ref) / len(ref)
    assert err <= 2 * plain_err + 1e-3, (err, plain_err)
