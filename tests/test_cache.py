"""Step caching: off by default and exact at threshold 0; never skips the first steps or the last; skips at most
max_skips in a row; keeps known frames; runs and windows never reuse each other's residuals; the node reports it."""
import pytest
import torch

from spacetime.model.cache import CacheSettings, StepCache, step_cache
from spacetime.model.config import DiTConfig
from spacetime.model.dit import build_dit
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.sampling import FrameCondition, sample
from tiny_models import sampling_dit

SHAPE = (1, 16, 3, 4, 6)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SHAPE, generator=g), torch.randn(1, 5, 32, generator=g), torch.zeros(1, 1, 32)


def count_block_calls(m):
    calls = []
    m.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_threshold_zero_computes_every_step_and_equals_no_cache():
    m = sampling_dit()
    noise, text, null = inputs()
    ref = sample(m, noise, text, null, steps=6, cfg=4.0)
    cache = StepCache(CacheSettings(threshold=0.0))
    out = sample(m, noise, text, null, steps=6, cfg=4.0, cache=cache)
    assert torch.equal(out, ref) and cache.skipped == 0 and cache.computed == 6


def test_guards_first_steps_last_step_and_runs_of_skips():
    """Threshold 1 skips whenever a guard allows: the first 15 % (at least 2) and the last step are computed, and
    never more than max_skips in a row are skipped; skipped steps do not run the blocks."""
    m = sampling_dit()
    calls = count_block_calls(m)
    noise, text, null = inputs()
    for steps, max_skips in ((20, 2), (10, 3), (4, 2)):
        calls.clear()
        cache = StepCache(CacheSettings(threshold=1.0, max_skips=max_skips))
        sample(m, noise, text, null, steps=steps, cfg=4.0, cache=cache)
        d = cache.decisions
        warm = max(2, -(-15 * steps // 100))
        assert len(d) == steps and not any(d[:warm]) and not d[-1]
        assert cache.skipped > 0 and len(calls) == cache.computed
        run = longest = 0
        for skipped in d:
            run = run + 1 if skipped else 0
            longest = max(longest, run)
        assert longest == max_skips or steps == 4


def test_skipping_keeps_known_frames_and_stays_close():
    m = sampling_dit()
    noise, text, null = inputs()
    known = torch.randn(SHAPE)
    cond = FrameCondition(known, torch.tensor([1.0, 0.0, 0.0]))
    ref = sample(m, noise, text, null, steps=12, cfg=4.0, cond=cond)
    cache = StepCache(CacheSettings(threshold=1.0))
    out = sample(m, noise, text, null, steps=12, cfg=4.0, cond=cond, cache=cache)
    assert cache.skipped >= 3
    assert torch.equal(out[:, :, 0], known[:, :, 0])
    assert not torch.equal(out, ref) and (out - ref).abs().max() < 0.5 * ref.abs().max()


def test_known_frames_are_left_out_of_the_change_measure():
    """With the generated frame frozen, the step looks unchanged however much the known frames weigh."""
    m = sampling_dit()
    cache = StepCache(CacheSettings(threshold=0.5))
    tg = torch.tensor([[0.0, 0.0, 500.0]])
    with torch.no_grad():
        h = m._tokens(torch.randn(2, 16, 3, 4, 6))                # 3 frames of 2 x 3 tokens
        _, e0 = m._embed_time(tg)
        moved = h.clone()
        moved[:, :12] = torch.randn(2, 12, h.shape[2])              # the known frames change, frame 2 does not
        a, b = cache._modulated(m, h, e0), cache._modulated(m, moved, e0)
        assert float(cache._rel_change(m, b, a, tg)) == 0.0
        assert float(cache._rel_change(m, b, a, torch.tensor([[500.0, 500.0, 500.0]]))) > 0.1


def test_runs_and_windows_never_share_residuals():
    """One StepCache over two runs (as a caller that samples windows one after another would hold it): each run
    equals a run with its own cache. Two windows called alternately within the steps (different RoPE offsets)
    equal each window cached alone."""
    m = sampling_dit()
    settings = CacheSettings(threshold=1.0, steps=10)
    (n1, text, null), (n2, _, _) = inputs(1), inputs(2)
    alone = [sample(m, n, text, null, steps=10, cfg=4.0, cache=settings) for n in (n1, n2)]
    with step_cache(m, settings) as shared:
        both = [sample(m, n, text, null, steps=10, cfg=4.0) for n in (n1, n2)]
    assert shared.skipped > 0
    assert all(torch.equal(a, b) for a, b in zip(alone, both))

    c = torch.randn(1, 5, 32)
    ts = [999.0, 900, 800, 700, 600, 500]
    xs = [torch.randn(SHAPE), torch.randn(SHAPE)]
    offsets = [(0, 0, 0), (2, 0, 0)]

    def run(windows, cache):
        outs = []
        with torch.no_grad(), cache.attach(m):
            for t in ts:
                for w in windows:
                    outs.append(m(xs[w], torch.tensor([t]), c, rope_offsets=offsets[w]))
        return outs
    inter = run([0, 1], StepCache(CacheSettings(threshold=1.0, steps=len(ts))))
    sep = [run([w], StepCache(CacheSettings(threshold=1.0, steps=len(ts)))) for w in (0, 1)]
    assert all(torch.equal(inter[2 * i + w], sep[w][i]) for i in range(len(ts)) for w in (0, 1))


def test_the_cache_reaches_a_dit_inside_a_wrapper():
    """Image-to-video DiTs take extra input channels through a wrapper (model/concat.py): the cache still skips."""
    from spacetime.model.concat import with_concat
    torch.manual_seed(0)
    m = build_dit(DiTConfig(in_dim=33, dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16))
    torch.nn.init.normal_(m.head.head.weight, std=0.1)
    calls = count_block_calls(m)
    noise, text, null = inputs()
    wrapped = with_concat(m.eval(), torch.randn(1, 17, *SHAPE[2:]))
    cache = StepCache(CacheSettings(threshold=1.0))
    sample(wrapped, noise, text, null, steps=8, cfg=4.0, cache=cache)
    assert cache.skipped > 0 and len(calls) == cache.computed == 8 - cache.skipped
    assert m.step_cache is None and "step_cache" not in vars(wrapped)


def test_settings_are_checked():
    with pytest.raises(SpacetimeValueError, match="threshold"):
        CacheSettings(threshold=-0.1)
    with pytest.raises(SpacetimeValueError, match="max_skips"):
        CacheSettings(max_skips=0)


def test_denoise_node_reports_the_cache():
    import json
    from spacetime.model.pipeline import Spacetime, TextEmbedding
    from spacetime.nodes.sampler_nodes import SpacetimeDenoise
    st = Spacetime.load("toyworld-random", device="cpu")
    g = torch.Generator().manual_seed(0)
    text = TextEmbedding(torch.randn(1, 6, 384, generator=g), torch.tensor([6]), torch.zeros(1, 2, 384),
                         torch.tensor([2]), prompts=("p",), negatives=("",), source=("p",))
    latent = {"samples": torch.zeros(1, 16, 3, 8, 8)}
    node = SpacetimeDenoise()
    _, info = node.denoise(st, text, latent, steps=8, cfg=4.0, step_cache=1.0)
    assert json.loads(info)["step_cache"]["skipped"] > 0
    _, info = node.denoise(st, text, latent, steps=8, cfg=4.0)
    assert "step_cache" not in json.loads(info)
    with pytest.raises(ValueError, match="step_cache"):
        node.denoise(st, text, latent, steps=8, step_cache=2.0)
