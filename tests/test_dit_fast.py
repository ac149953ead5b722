"""The DiT's exact speed-ups equal the plain computation: compact text (one padding row with a log-count logit bias
instead of text_len - n identical rows), text keys/values once per run, fused in-place elementwise work."""
import math

import pytest
import torch

from spacetime.model.config import DiTConfig, dit_preset
from spacetime.model.dit import TextTokens, build_dit
from spacetime.model.sampling import GuidedDenoiser, join_text, sample

TOL = 1e-5


def tiny(text_len=32, seed=0):
    torch.manual_seed(seed)
    m = build_dit(DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, text_dim=48, text_len=text_len)).eval()
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m


def maxdiff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("lengths", [[5, 12, 0], [31, 31, 31], [32, 3, 32], [0, 0, 0]])
def test_compact_text_equals_padded_text(lengths):
    """Mixed prompt lengths in one batch, a prompt one short of text_len (one padding row: no bias), prompts that
    fill text_len (no padding row) and empty prompts (only the padding row)."""
    m = tiny()
    B = len(lengths)
    ctx = torch.randn(B, 32, 48)
    lens = torch.tensor(lengths)
    x, t = torch.randn(B, 16, 2, 4, 6), torch.tensor([700.0, 300.0, 950.0])
    compact = m.text_tokens(ctx, lens)
    n = max(lengths)
    assert compact.emb.shape[1] == n + (1 if n < 32 else 0)
    assert (compact.bias is None) == (32 - n <= 1)
    if compact.bias is not None:
        assert compact.bias[-1].item() == pytest.approx(math.log(32 - n)) and not compact.bias[:-1].any()
    with torch.no_grad():
        full = m(x, t, text_emb=m.embed_text(ctx, lens))
        fast = m(x, t, ctx, lens)
    assert maxdiff(fast, full) <= TOL


def test_compact_text_of_unpadded_short_context_and_trailing_zero_rows():
    """A context shorter than text_len without lengths is padded (as Wan pads); zero rows a caller padded itself
    are recognised as padding."""
    m = tiny()
    ctx = torch.randn(1, 7, 48)
    padded = torch.cat([ctx, torch.zeros(1, 25, 48)], dim=1)
    assert m.text_tokens(ctx).emb.shape[1] == 8 and m.text_tokens(padded).emb.shape[1] == 8
    x, t = torch.randn(1, 16, 3, 4, 4), torch.tensor([500.0])
    with torch.no_grad():
        ref = m(x, t, text_emb=m.embed_text(padded))
        assert maxdiff(m(x, t, ctx), ref) <= TOL and maxdiff(m(x, t, padded), ref) <= TOL


def test_the_comparison_can_fail():
    """Dropping the log-count bias (attending to the padding row once) changes the output beyond the tolerance."""
    m = tiny()
    ctx, x, t = torch.randn(1, 4, 48), torch.randn(1, 16, 2, 4, 4), torch.tensor([600.0])
    tt = m.text_tokens(ctx)
    with torch.no_grad():
        ref = m(x, t, text_emb=m.embed_text(ctx))
        wrong = m(x, t, text_emb=TextTokens(tt.emb, None))
    assert maxdiff(wrong, ref) > 1e-3


def _embedded_or_skip():
    from spacetime.model.pipeline import Spacetime
    try:
        st = Spacetime.load("toyworld", device="cpu")
        return st, st.dit, st.text_encoder
    except Exception as exc:          # weights missing from a partial checkout, or MiniLM not installed
        pytest.skip(f"embedded model unavailable: {exc}")


def test_embedded_model_with_mixed_prompts_and_cfg_equals_padded_text(monkeypatch):
    """The embedded model, two prompts of different lengths and CFG's empty negative prompt in one batch (as the
    sampler joins them): the DiT output with compact text equals the one with the full padded text to 1e-5, and
    sampled latents agree to 1e-5 of their scale (CFG multiplies float rounding by up to 2 * cfg + 1)."""
    st, dit, enc = _embedded_or_skip()
    text = st.encode_text(["a red ball bounces on a navy background", "a small cyan box"], [""], expand=False)
    assert len(set(text.lengths.tolist())) == 2
    noise = torch.randn(2, 16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx, lens = join_text(text.emb, text.lengths, text.neg_emb, text.neg_lengths)
    with torch.no_grad():
        for t in (999.0, 400.0, 20.0):
            tt = torch.full((4,), t)
            full = dit(torch.cat([noise, noise]), tt, text_emb=dit.embed_text(ctx, lens))
            assert maxdiff(dit(torch.cat([noise, noise]), tt, ctx, lens), full) <= TOL
    kw = dict(text_lengths=text.lengths, text_null_lengths=text.neg_lengths, steps=3, shift=3.0, cfg=5.0)
    fast = sample(dit, noise, text.emb, text.neg_emb, **kw)
    monkeypatch.setattr(dit, "text_tokens", dit.embed_text)
    full = sample(dit, noise, text.emb, text.neg_emb, **kw)
    assert maxdiff(fast, full) <= TOL * full.abs().max().item()


def test_text_is_embedded_once_per_run():
    m = tiny()
    calls = []
    m.text_embedding.register_forward_hook(lambda *a: calls.append(a[1][0].shape))
    sample(m, torch.randn(2, 16, 2, 4, 4), torch.randn(2, 6, 48), torch.randn(1, 2, 48), steps=4, cfg=4.0)
    assert len(calls) == 1 and calls[0][0] == 4            # cond and uncond rows of both videos, in one pass


def test_grad_path_equals_inference_path_and_trains():
    """With autograd on, the block runs out of place (same numbers) and backpropagates."""
    m = build_dit(dit_preset("wan-tiny"))
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    x, c = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 5, 64)
    t = torch.tensor([[0.0, 700, 700], [0, 0, 300]])
    with torch.no_grad():
        ref = m(x, t, c)
    out = m(x, t, c)
    assert maxdiff(out.detach(), ref) <= TOL
    out.square().mean().backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_shared_timesteps_are_embedded_once_and_per_sample_ones_are_not():
    m = tiny()
    assert m._timesteps(torch.tensor([400.0, 400.0]), 2, (2, 2, 3)).shape == (1, 1)
    assert m._timesteps(torch.tensor([400.0, 300.0]), 2, (2, 2, 3)).shape == (2, 1)
    assert m._timesteps(torch.tensor([[0.0, 300.0], [0.0, 300.0]]), 2, (2, 2, 3)).shape == (1, 2)
    x, c = torch.randn(2, 16, 2, 4, 6), torch.randn(1, 3, 48)
    with torch.no_grad():
        both = m(x, torch.tensor([400.0, 300.0]), c)
        one = m(x[1:], torch.tensor([300.0]), c)
    assert maxdiff(both[1:], one) <= TOL


def test_guided_denoiser_matches_separate_passes():
    """CFG with joined text (cond and uncond embedded together) equals two separate unguided passes."""
    m = tiny()
    text, null = torch.randn(1, 9, 48), torch.randn(1, 2, 48)
    x = torch.randn(1, 16, 2, 4, 4)
    v = GuidedDenoiser(m, text, None, null, None, cfg=3.0)(x, 600)
    with torch.no_grad():
        vc, vu = m(x, torch.tensor([600.0]), text), m(x, torch.tensor([600.0]), null)
    assert maxdiff(v, vu + 3.0 * (vc - vu)) <= TOL
