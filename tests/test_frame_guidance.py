"""Frame guidance: the velocity adds G * (v_neg - v_neg without the known frames), the pass without them holds noise
at the step's level in the known latent frames and runs every token at the step's timestep; it is a no-op without
known frames or at 0; bad values are refused; step caching keeps its pass apart; presets, nodes and the CLI carry
it."""
import json
from dataclasses import replace

import pytest
import torch

from spacetime.model.cache import CacheSettings, StepCache
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.sampling import FrameCondition, GuidedDenoiser, join_text, sample
from tiny_models import sampling_dit

SHAPE = (1, 16, 4, 4, 6)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 3, 32, generator=g),
            FrameCondition(torch.randn(SHAPE, generator=g), torch.tensor([1.0, 1.0, 0.0, 0.0])))


@torch.no_grad()
def test_the_velocity_adds_guidance_from_a_pass_without_the_known_frames():
    m = sampling_dit()
    noise, text, null, cond = inputs()
    x = cond.impose(torch.randn(SHAPE))
    t, cfg, g = 700, 4.0, 1.5
    den = GuidedDenoiser(m, text, None, null, None, cfg, cond, frame_cfg=g, frame_noise=noise)
    got = den(x, t)
    # by hand: CFG with the known frames at timestep 0, then the negative text on the clip without them
    tt = torch.tensor([[0.0, 0.0, t, t]])
    both, lens = join_text(text, None, null, None)
    v_c, v_u = m(torch.cat([x, x]), torch.cat([tt, tt]), text_kv=m.text_kv(m.text_tokens(both, lens))).chunk(2)
    x_nf = x.clone()
    x_nf[:, :, :2] = 0.7 * noise[:, :, :2]                  # sigma = t / 1000 at the known latent frames
    v_nf = m(x_nf, torch.full((1,), float(t)), text_kv=m.text_kv(m.text_tokens(null)))
    want = v_u + cfg * (v_c - v_u) + g * (v_u - v_nf)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, v_u + cfg * (v_c - v_u), atol=1e-3)
    # without CFG the text's own velocity stands for the negative's
    den1 = GuidedDenoiser(m, text, None, None, None, 1.0, cond, frame_cfg=g, frame_noise=noise)
    v = m(x, tt, text_kv=m.text_kv(m.text_tokens(text)))
    v_nf = m(x_nf, torch.full((1,), float(t)), text_kv=m.text_kv(m.text_tokens(text)))
    assert torch.allclose(den1(x, t), v + g * (v - v_nf), atol=1e-5)


def test_no_known_frames_or_zero_leaves_sampling_unchanged_and_known_frames_stay_exact():
    m = sampling_dit()
    noise, text, null, cond = inputs()
    plain = sample(m, noise, text, null, steps=6, cfg=4.0)
    assert torch.equal(sample(m, noise, text, null, steps=6, cfg=4.0, frame_cfg=2.0), plain)
    ref = sample(m, noise, text, null, steps=6, cfg=4.0, cond=cond)
    assert torch.equal(sample(m, noise, text, null, steps=6, cfg=4.0, cond=cond, frame_cfg=0.0), ref)
    out = sample(m, noise, text, null, steps=6, cfg=4.0, cond=cond, frame_cfg=2.0)
    assert torch.equal(out[:, :, :2], cond.latents[:, :, :2])
    assert (out[:, :, 2:] - ref[:, :, 2:]).abs().max() > 1e-3


def test_frame_guidance_stops_at_its_noise_level():
    """frame_cfg_stop S: the pass without known frames runs on the steps at sigma >= S only; S = 1 never runs it
    (the schedule starts below 1) and equals no frame guidance."""
    from spacetime.model.sampling import sigma_schedule
    m = sampling_dit()
    noise, text, null, cond = inputs()
    calls = []
    hook = m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    ref = sample(m, noise, text, null, steps=8, cfg=4.0, cond=cond)
    assert calls == [2] * 8                                      # CFG: one batched pass a step
    calls.clear()
    half = sample(m, noise, text, null, steps=8, cfg=4.0, cond=cond, frame_cfg=2.0, frame_cfg_stop=0.5)
    _, ts = sigma_schedule(8, 5.0)
    early = int((ts >= 500).sum())
    assert 0 < early < 8 and calls.count(1) == early and calls.count(2) == 8
    calls.clear()
    assert torch.equal(sample(m, noise, text, null, steps=8, cfg=4.0, cond=cond, frame_cfg=2.0, frame_cfg_stop=1.0),
                       ref)
    assert calls == [2] * 8
    full = sample(m, noise, text, null, steps=8, cfg=4.0, cond=cond, frame_cfg=2.0)
    hook.remove()
    assert not torch.equal(half, full) and not torch.equal(half, ref)
    for bad in (-0.1, 1.5, float("nan"), "late", True):
        with pytest.raises(SpacetimeValueError, match=r"frame_cfg_stop=.*within 0..1"):
            sample(m, noise, text, null, steps=2, cond=cond, frame_cfg=1.0, frame_cfg_stop=bad)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "strong", True, None])
def test_bad_frame_guidance_is_refused_naming_it(bad):
    m = sampling_dit()
    noise, text, null, cond = inputs()
    with pytest.raises(SpacetimeValueError, match=r"frame_cfg=.*>= 0"):
        sample(m, noise, text, null, steps=2, cond=cond, frame_cfg=bad)


def test_step_cache_keeps_the_pass_without_frames_apart():
    """Without CFG the main pass and the pass without known frames have the same shape: each keeps its own state,
    so both still skip steps (one shared state would start afresh at every call and never skip)."""
    m = sampling_dit()
    noise, text, _, cond = inputs()
    cache = StepCache(CacheSettings(threshold=1.0))
    out = sample(m, noise, text, None, steps=12, cfg=1.0, cond=cond, cache=cache, frame_cfg=1.0)
    assert len(cache.decisions) == 24 and cache.skipped >= 6
    assert torch.equal(out[:, :, :2], cond.latents[:, :, :2])


def test_presets_choose_the_default_and_image_channel_models_refuse_it():
    from spacetime.model.config import bundle_preset
    from spacetime.model.pipeline import Spacetime
    assert bundle_preset("wan2.1-t2v-14b").frame_cfg == 0.0 and bundle_preset("wan2.2-ti2v-5b").frame_cfg == 0.0
    st = Spacetime.load("toyworld-random", device="cpu")
    assert st.frame_guidance() == bundle_preset("toyworld").frame_cfg > 0
    assert st.frame_guidance(0) == 0.0 and st.frame_guidance(2.5) == 2.5
    with pytest.raises(SpacetimeValueError, match="frame_cfg=-2"):
        st.frame_guidance(-2)
    st.preset = replace(st.preset, dit=replace(st.preset.dit, model_type="i2v"), frame_cfg=0.0)
    assert st.concat_conditioned and st.frame_guidance() == 0.0
    with pytest.raises(SpacetimeValueError, match="frame_cfg=1.0 needs a model that reads known frames"):
        st.frame_guidance(1.0)


def test_the_denoise_node_applies_and_records_frame_guidance():
    from spacetime.model.pipeline import Spacetime, TextEmbedding
    from spacetime.nodes.sampler_nodes import SpacetimeDenoise
    st = Spacetime.load("toyworld-random", device="cpu")
    g = torch.Generator().manual_seed(0)
    text = TextEmbedding(torch.randn(1, 6, 384, generator=g), torch.tensor([6]), torch.zeros(1, 2, 384),
                         torch.tensor([2]), prompts=("p",), negatives=("",), source=("p",))
    known = torch.randn(1, 16, 3, 8, 8, generator=g)
    mask = torch.ones(1, 1, 3, 1, 1)
    mask[:, :, 0] = 0                                        # noise_mask: 1 = generate; frame 0 known
    latent = {"samples": known, "noise_mask": mask}
    node = SpacetimeDenoise()
    outs = {}
    for fg in (-1.0, 0.0, 3.0):
        (lat, info) = node.denoise(st, text, latent, steps=4, cfg=4.0, frame_guidance=fg)
        info = json.loads(info)
        outs[fg] = (lat["samples"], info["frame_cfg"])
        assert info["frame_cfg_stop"] == st.preset.frame_cfg_stop
    assert outs[-1.0][1] == st.preset.frame_cfg and outs[0.0][1] == 0.0 and outs[3.0][1] == 3.0
    assert torch.allclose(outs[0.0][0][:, :, 0], known[:, :, 0], atol=1e-4)
    assert torch.allclose(outs[3.0][0][:, :, 0], known[:, :, 0], atol=1e-4)
    assert (outs[3.0][0][:, :, 1:] - outs[0.0][0][:, :, 1:]).abs().max() > 1e-3
    _, info = node.denoise(st, text, {"samples": known}, steps=2, cfg=4.0)
    assert "frame_cfg" not in json.loads(info)                # text-to-video: nothing to guide with
