"""Contrast guidance: the velocity adds C * (v_text - v_contrast) from one more pass that reads the contrast prompt;
no contrast prompt or 0 leaves sampling unchanged; it stops at its noise level; bad values are refused; step caching
keeps its pass apart; the embedded model writes contrast prompts (the opposite motion); presets, nodes and the CLI
carry it."""
import json

import pytest
import torch

from spacetime.model.cache import CacheSettings, StepCache
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.sampling import Contrast, FrameCondition, GuidedDenoiser, join_text, sample, sigma_schedule
from tiny_models import sampling_dit

SHAPE = (1, 16, 3, 4, 6)


def inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g), torch.randn(1, 5, 32, generator=g), torch.randn(1, 3, 32, generator=g),
            torch.randn(1, 6, 32, generator=g))


@torch.no_grad()
def test_the_velocity_adds_guidance_away_from_the_contrast_prompt():
    m = sampling_dit()
    x, text, null, con = inputs()
    t, cfg, c = 800, 4.0, 3.0
    den = GuidedDenoiser(m, text, None, null, None, cfg, contrast=Contrast(con, None, c))
    tt = torch.full((1,), float(t))
    both, lens = join_text(text, None, null, None)
    v_c, v_u = m(torch.cat([x, x]), torch.cat([tt, tt]), text_kv=m.text_kv(m.text_tokens(both, lens))).chunk(2)
    v_o = m(x, tt, text_kv=m.text_kv(m.text_tokens(con)))
    assert torch.allclose(den(x, t), v_u + cfg * (v_c - v_u) + c * (v_c - v_o), atol=1e-5)
    # without CFG: the prompt's own velocity and the contrast's
    v = m(x, tt, text_kv=m.text_kv(m.text_tokens(text)))
    den1 = GuidedDenoiser(m, text, None, None, None, 1.0, contrast=Contrast(con, None, c))
    assert torch.allclose(den1(x, t), v + c * (v - v_o), atol=1e-5)
    # known frames: the contrast pass sees them as the main pass does (timestep 0 there), and they stay exact
    cond = FrameCondition(torch.randn(SHAPE), torch.tensor([1.0, 0.0, 0.0]))
    out = sample(m, x, text, null, steps=4, cfg=cfg, cond=cond, contrast=Contrast(con, None, c))
    assert torch.equal(out[:, :, :1], cond.latents[:, :, :1])


def test_no_contrast_or_zero_leaves_sampling_unchanged_and_it_stops_at_its_noise_level():
    m = sampling_dit()
    noise, text, null, con = inputs()
    calls = []
    hook = m.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    plain = sample(m, noise, text, null, steps=8, cfg=4.0)
    assert calls == [2] * 8
    calls.clear()
    assert torch.equal(sample(m, noise, text, null, steps=8, cfg=4.0, contrast=Contrast(con, None, 0.0)), plain)
    assert calls == [2] * 8                                      # scale 0: no extra pass at all
    calls.clear()
    half = sample(m, noise, text, null, steps=8, cfg=4.0, contrast=Contrast(con, None, 2.0, stop=0.5))
    _, ts = sigma_schedule(8, 5.0)
    early = int((ts >= 500).sum())
    assert 0 < early < 8 and calls.count(1) == early and calls.count(2) == 8
    assert (half - plain).abs().max() > 1e-3
    calls.clear()
    assert torch.equal(sample(m, noise, text, null, steps=8, cfg=4.0, contrast=Contrast(con, None, 2.0, stop=1.0)),
                       plain)
    hook.remove()
    # the prompt as its own contrast prompt: the term is zero
    same = sample(m, noise, text, null, steps=8, cfg=4.0, contrast=Contrast(text, None, 3.0))
    assert torch.allclose(same, plain, atol=1e-5)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "strong", True, None])
def test_bad_contrast_guidance_is_refused_naming_it(bad):
    _, _, _, con = inputs()
    with pytest.raises(SpacetimeValueError, match=r"contrast_cfg=.*>= 0"):
        Contrast(con, None, bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "high"])
def test_a_bad_contrast_stop_is_refused_naming_it(bad):
    _, _, _, con = inputs()
    with pytest.raises(SpacetimeValueError, match=r"contrast_cfg_stop=.*within 0..1"):
        Contrast(con, None, 2.0, bad)


def test_step_cache_keeps_the_contrast_pass_apart():
    """Without CFG the main pass and the contrast pass have the same shape: each keeps its own cache state."""
    m = sampling_dit()
    noise, text, _, con = inputs()
    cache = StepCache(CacheSettings(threshold=1.0))
    sample(m, noise, text, None, steps=12, cfg=1.0, cache=cache, contrast=Contrast(con, None, 2.0))
    assert len(cache.decisions) == 24 and cache.skipped >= 6


@pytest.mark.parametrize("prompt,want", [
    ("a red ball moves right on navy", "moves steadily to the left"),
    ("cyan cube drifting downward on black", "moves steadily upward"),
    ("an orange ball that grows bigger on beige", "stays still"),
    ("blue box shrinking on white", "stays still"),
    ("small white disc bouncing on the ground, sky blue background", "moves steadily downward"),
    ("a red ball moving left passes behind a pillar", "moves to the right and passes behind"),
])
def test_the_toy_world_contrast_prompt_replaces_each_stated_motion(prompt, want):
    from spacetime.toyworld.captions import contrast_prompt, expand_prompt
    c = contrast_prompt(prompt)
    assert want in c and c != expand_prompt(prompt)
    # everything else as the expanded prompt says it: the same words outside the motion
    e = expand_prompt(prompt)
    assert c.split()[:3] == e.split()[:3] and c.split()[-4:] == e.split()[-4:]


def test_no_contrast_prompt_without_a_stated_motion_or_an_object():
    from spacetime.toyworld.captions import contrast_prompt
    assert contrast_prompt("a green triangle on white") is None
    assert contrast_prompt("a purple box to the left of an orange ball") is None
    assert contrast_prompt("a cat on a sofa") is None
    assert contrast_prompt("a red ball stays still on navy") is None       # nothing the model confuses it with
    two = contrast_prompt("a blue box moving up and a red ball moving down")
    assert "box that moves steadily downward" in two and "ball that moves steadily upward" in two


def test_encode_text_writes_or_takes_contrast_prompts():
    from spacetime.model.pipeline import Spacetime
    st = Spacetime.load("toyworld-random", device="cpu")
    t = st.encode_text(["a red ball moves right on navy", "a green box on white"], ["", ""])
    assert t.contrasts[0].startswith("A medium red ball moves steadily to the left") and t.contrasts[1] == ""
    assert t.contrast_emb.shape[0] == 2
    # a prompt without one reads itself in the contrast pass: its row equals the prompt's
    n = int(t.lengths[1])
    assert torch.equal(t.contrast_emb[1, :n], t.emb[1, :n])
    assert st.encode_text(["a green box on white"]).contrast_emb is None
    given = st.encode_text(["a red ball moves right"], contrasts=["a red ball moves up"])
    assert given.contrasts == (st.expand("a red ball moves up"),)
    assert st.encode_text(["a red ball moves right"], contrasts=[""]).contrast_emb is None
    with pytest.raises(SpacetimeValueError, match="2 contrast prompts for 1 prompts"):
        st.encode_text(["a red ball moves right"], contrasts=["a", "b"])


def test_presets_choose_the_default():
    from spacetime.model.config import bundle_preset
    from spacetime.model.pipeline import Spacetime
    for name in ("wan2.1-t2v-14b", "wan2.2-ti2v-5b"):
        p = bundle_preset(name)
        assert p.contrast_cfg == 0.0 and p.contrast_writer is None
    st = Spacetime.load("toyworld-random", device="cpu")
    assert st.contrast_guidance() == bundle_preset("toyworld").contrast_cfg > 0
    assert st.contrast_guidance(0) == 0.0 and st.contrast_guidance(6) == 6.0
    # with known frames the default is off (frame guidance's task); a value given still applies
    assert st.contrast_guidance(known_frames=True) == 0.0 and st.contrast_guidance(3, known_frames=True) == 3.0
    with pytest.raises(SpacetimeValueError, match="contrast_cfg=-2"):
        st.contrast_guidance(-2)


def test_the_nodes_apply_and_record_contrast_guidance():
    from spacetime.model.pipeline import Spacetime
    from spacetime.nodes.model_nodes import SpacetimeTextEncode
    from spacetime.nodes.sampler_nodes import SpacetimeDenoise
    st = Spacetime.load("toyworld-random", device="cpu")
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    (text, _) = SpacetimeTextEncode().encode(st, "a red ball moves right on navy", "")
    node = SpacetimeDenoise()
    outs = {}
    for cg in (-1.0, 0.0, 6.0):
        lat, info = node.denoise(st, text, latent, steps=3, cfg=4.0, contrast_guidance=cg)
        outs[cg] = (lat["samples"], json.loads(info))
    assert outs[-1.0][1]["contrast_cfg"] == st.preset.contrast_cfg and outs[6.0][1]["contrast_cfg"] == 6.0
    assert outs[6.0][1]["contrast"] == text.contrasts[0] and "moves steadily to the left" in text.contrasts[0]
    assert outs[6.0][1]["contrast_cfg_stop"] == st.preset.contrast_cfg_stop
    assert "contrast_cfg" not in outs[0.0][1]
    assert (outs[6.0][0] - outs[0.0][0]).abs().max() > 1e-4
    # a given contrast prompt replaces the written one
    (given, _) = SpacetimeTextEncode().encode(st, "a red ball moves right on navy", "", contrast="a red ball moves up")
    assert given.contrasts == (st.expand("a red ball moves up"),)
    # no motion stated: nothing to contrast, no record
    (still, _) = SpacetimeTextEncode().encode(st, "a green box on white", "")
    _, info = node.denoise(st, still, latent, steps=2, cfg=4.0)
    assert "contrast_cfg" not in json.loads(info)
    # known frames: off by default (the result equals contrast 0 bit for bit), on when asked
    mask = torch.ones(1, 1, 2, 1, 1)
    mask[:, :, 0] = 0
    known = {"samples": torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3)), "noise_mask": mask}
    lat_d, info_d = node.denoise(st, text, known, steps=3, cfg=4.0)
    lat_0, _ = node.denoise(st, text, known, steps=3, cfg=4.0, contrast_guidance=0.0)
    lat_5, info_5 = node.denoise(st, text, known, steps=3, cfg=4.0, contrast_guidance=5.0)
    assert torch.equal(lat_d["samples"], lat_0["samples"]) and "contrast_cfg" not in json.loads(info_d)
    assert json.loads(info_5)["contrast_cfg"] == 5.0 and (lat_5["samples"] - lat_0["samples"]).abs().max() > 1e-4


@pytest.mark.parametrize("option", ["--frame-guidance", "--contrast-guidance"])
@pytest.mark.parametrize("value", ["-0.5", "nan"])
def test_the_cli_refuses_a_bad_guidance_scale_before_loading(tmp_path, capsys, option, value):
    from spacetime.cli import EXIT_BAD_INPUT, main
    out = tmp_path / "bad.mp4"
    rc = main(["generate", "a red ball", option, value, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and f"{option} {value}" in err and not out.exists()


@pytest.mark.parametrize("extra,what", [(["--shot", "17: a red ball", "--contrast", "x"], "--contrast cannot"),
                                        (["--window-frames", "17", "--contrast", "x"], "--contrast cannot"),
                                        (["--shot", "17: a red ball", "--contrast-guidance", "2"],
                                         "--contrast-guidance cannot")])
def test_the_cli_refuses_contrast_options_that_do_not_apply(tmp_path, capsys, extra, what):
    from spacetime.cli import EXIT_BAD_INPUT, main
    out = tmp_path / "bad.mp4"
    rc = main(["generate", "a red ball moves right", *extra, "--out", str(out)])
    assert rc == EXIT_BAD_INPUT and what in capsys.readouterr().err and not out.exists()
