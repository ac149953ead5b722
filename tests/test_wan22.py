"""Wan 2.2: the A14B expert pair (switch step, one expert resident, guidance per expert, image channels; LoRAs on
both experts or one, quantised expert files), the TI2V-5B bundle with its 48-channel VAE end to end, presets and
clear errors. Small random-weight configurations."""
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spacetime.model.config import (BUNDLE_PRESETS, DIT_PRESETS, BundlePreset, TextEncoderConfig, VAE22Config,
                                    VAEConfig, WAN22_LATENT_MEAN, WAN22_LATENT_STD, bundle_preset, dit_preset,
                                    register_bundle)
from spacetime.model.dit import build_dit
from spacetime.model.errors import CheckpointMismatchError, SpacetimeValueError
from spacetime.model.experts import HIGH, LOW, ExpertPair, ExpertSwitch
from spacetime.model.latent_rgb import WAN22_NORMALISED_BIAS, WAN22_NORMALISED_FACTORS
from spacetime.model.loading import infer_dit_config, infer_vae_config, load_vae, write_safetensors_atomic
from spacetime.model.pipeline import Spacetime
from spacetime.model.sampling import sample, sigma_schedule
from spacetime.model.vae import build_vae

IMAGE = Path(__file__).resolve().parent.parent / "workflows" / "inputs" / "yellow_box.png"
TINY = dit_preset("wan-tiny")
TINY_I2V = replace(TINY, model_type="i2v", in_dim=36)
TINY_TI2V = replace(TINY, model_type="ti2v", in_dim=48, out_dim=48)
TINY_VAE21 = VAEConfig(dim=8, z_dim=16)
TINY_VAE22 = VAE22Config(dim=8, dec_dim=12)


def tiny_dit(cfg=TINY, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = build_dit(cfg)
        torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m.eval()


class StubText(torch.nn.Module):
    """A text encoder stand-in: a fixed random embedding per prompt."""

    def __init__(self, dim=TINY.text_dim):
        super().__init__()
        self.dim = dim

    def encode(self, prompts):
        embs = [torch.randn(6, self.dim, generator=torch.Generator().manual_seed(sum(map(ord, p)))) for p in prompts]
        return torch.stack(embs), torch.full((len(prompts),), 6)


def _vae_builder(cfg, seed=3):
    def build(bundle):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return build_vae(cfg)
    return build


@pytest.fixture
def tiny_presets():
    """Register small random-weight bundles shaped like the Wan 2.2 ones (removed afterwards)."""
    made = {
        "test-t2v-a14b": BundlePreset("test-t2v-a14b", TINY, TINY_VAE21, TextEncoderConfig(), steps=8, shift=12.0,
                                      cfg=3.0, default_size=(32, 32), default_frames=5, expert_boundary=0.875,
                                      cfg_high_noise=4.0),
        "test-i2v-a14b": BundlePreset("test-i2v-a14b", TINY_I2V, TINY_VAE21, TextEncoderConfig(), steps=8, shift=5.0,
                                      cfg=3.5, default_size=(32, 32), default_frames=5, expert_boundary=0.9,
                                      cfg_high_noise=3.5),
        "test-ti2v-5b": BundlePreset("test-ti2v-5b", TINY_TI2V, TINY_VAE22, TextEncoderConfig(), steps=4, shift=5.0,
                                     cfg=5.0, fps=24, default_size=(64, 32), default_frames=5,
                                     latent_rgb=bundle_preset("wan2.2-ti2v-5b").latent_rgb),
    }
    for name, p in made.items():
        builders = {"dit": lambda b: tiny_dit(b.preset.dit, 1), "vae": _vae_builder(p.vae),
                    "text": lambda b: StubText()}
        if p.expert_boundary:
            builders["dit_low"] = lambda b: tiny_dit(b.preset.dit, 2)
        register_bundle(replace(p, builders=builders))
    yield made
    for name in made:
        BUNDLE_PRESETS.pop(name, None)
        DIT_PRESETS.pop(name, None)


def record_calls(module, name, log):
    """Log (expert, timestep, input channels) for every forward of ``module``."""
    def hook(mod, args):
        log.append((name, float(torch.as_tensor(args[1]).flatten()[0]), args[0].shape[1], args[0]))
    return module.register_forward_pre_hook(hook)


# ----------------------------------------------------------------------------------------------------------------------
# Presets and files
# ----------------------------------------------------------------------------------------------------------------------

def test_wan22_presets_follow_the_official_configs():
    t2v, i2v, ti2v = (bundle_preset(n) for n in ("wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b"))
    # Wan2.2 configs: t2v A14B shift 12, 40 steps, boundary 0.875, guidance (low 3, high 4); i2v A14B shift 5,
    # 40 steps, boundary 0.9, guidance 3.5 both; TI2V-5B shift 5, 50 steps, guidance 5, 24 fps, 121 frames
    assert (t2v.steps, t2v.shift, t2v.expert_boundary, t2v.cfg, t2v.cfg_high_noise) == (40, 12.0, 0.875, 3.0, 4.0)
    assert (i2v.steps, i2v.shift, i2v.expert_boundary, i2v.cfg, i2v.cfg_high_noise) == (40, 5.0, 0.9, 3.5, 3.5)
    assert (ti2v.steps, ti2v.shift, ti2v.cfg, ti2v.fps, ti2v.default_frames) == (50, 5.0, 5.0, 24, 121)
    assert ti2v.stride == (4, 32, 32) and ti2v.vae.z_dim == 48 and ti2v.expert_boundary is None
    for p, n_params in ((t2v, 14_288_491_584), (i2v, 14_288_491_584 + 5120 * 20 * 4)):
        sd = build_dit(p.dit, device="meta").state_dict()
        assert len(sd) == 1095 and sum(v.numel() for v in sd.values()) == n_params
        assert infer_dit_config(sd) == p.dit            # recovered from the keys and shapes alone
    assert bundle_preset("wan2.2-i2v-a14b").dit.in_dim == 36


def test_wan22_vae_keys_and_family_errors():
    sd = build_vae(VAE22Config(), device="meta").state_dict()
    assert len(sd) == 196 and sum(v.numel() for v in sd.values()) == 704_688_668
    assert sd["encoder.conv1.weight"].shape == (160, 12, 3, 3, 3)           # 2x2 patches: 12 input channels
    assert sd["decoder.head.2.weight"].shape == (12, 256, 3, 3, 3)
    assert sd["decoder.upsamples.0.upsamples.3.time_conv.weight"].shape == (2048, 1024, 3, 1, 1)
    assert infer_vae_config(sd) == VAE22Config()
    small = build_vae(TINY_VAE22).state_dict()
    assert type(load_vae(small)).__name__ == "WanVAE22"
    with pytest.raises(CheckpointMismatchError, match=r"Wan 2\.2 VAE.*needs a Wan 2\.1 VAE"):
        load_vae(small, VAEConfig())
    with pytest.raises(CheckpointMismatchError, match=r"Wan 2\.1 VAE.*needs a Wan 2\.2 VAE"):
        load_vae(build_vae(TINY_VAE21).state_dict(), VAE22Config())


def test_wan22_preview_table_is_comfyuis_on_normalised_latents():
    """Our table acts on raw latents; it must give what the published factors give on normalised ones."""
    table = bundle_preset("wan2.2-ti2v-5b").latent_rgb
    w, b = torch.tensor(table["weight"]), torch.tensor(table["bias"])
    assert w.shape == (3, 48)
    raw = torch.randn(48, 5, 7) * 0.8
    mean, std = torch.tensor(WAN22_LATENT_MEAN), torch.tensor(WAN22_LATENT_STD)
    norm = (raw - mean[:, None, None]) / std[:, None, None]
    expect = torch.einsum("co,chw->ohw", torch.tensor(WAN22_NORMALISED_FACTORS), norm)
    expect = expect + torch.tensor(WAN22_NORMALISED_BIAS)[:, None, None]
    got = torch.einsum("oc,chw->ohw", w, raw) + b[:, None, None]
    assert torch.allclose(got, expect, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# The expert switch
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, shift, boundary, first_low", [(40, 12.0, 0.875, 26), (40, 5.0, 0.9, 15),
                                                                (8, 12.0, 0.875, 6), (8, 5.0, 0.9, 3)])
def test_switch_step_follows_the_timestep_boundary(steps, shift, boundary, first_low):
    _, t = sigma_schedule(steps, shift)
    sw = ExpertSwitch(boundary)
    assert sw.switch_step(t) == first_low
    assert all(int(x) >= boundary * 1000 for x in t[:first_low]) and all(int(x) < boundary * 1000
                                                                        for x in t[first_low:])
    assert ExpertSwitch(boundary, step=5).switch_step(t) == 5
    with pytest.raises(SpacetimeValueError, match="boundary=1.5"):
        ExpertSwitch(1.5)
    with pytest.raises(SpacetimeValueError, match="step=-1"):
        ExpertSwitch(0.9, step=-1)


def test_pair_switches_once_with_one_expert_resident():
    hi, lo = tiny_dit(seed=1), tiny_dit(seed=2)
    log, resident, events = [], set(), []

    def load(which):
        assert not resident, f"{which} loaded while {resident} is resident"
        resident.add(which)
        events.append(("load", which))
        return {HIGH: hi, LOW: lo}[which]

    def unload(which):
        resident.discard(which)
        events.append(("unload", which))
    hooks = [record_calls(hi, HIGH, log), record_calls(lo, LOW, log)]
    pair = ExpertPair(hi, lo, ExpertSwitch(0.875), cfg_high=4.0, load=load, unload=unload)
    sample(pair, torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 3, 64), steps=8, shift=12.0,
           cfg=3.0)
    for h in hooks:
        h.remove()
    assert [name for name, *_ in log] == [HIGH] * 6 + [LOW] * 2           # one call per step (cond+uncond batched)
    assert all(t >= 875 for name, t, *_ in log if name == HIGH) and all(t < 875 for name, t, *_ in log
                                                                        if name == LOW)
    assert events == [("load", HIGH), ("unload", HIGH), ("load", LOW)]


def test_pair_keeps_the_solver_across_the_switch_and_guidance_per_expert():
    """Identical experts with the same guidance sample exactly like one model (one UniPC history across the
    switch); a different high-noise guidance changes the result; switching at step 0 or after the last step is
    the low-noise or the high-noise expert alone."""
    noise, txt, neg = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 3, 64)
    a, b = tiny_dit(seed=1), tiny_dit(seed=1)
    kw = dict(steps=6, shift=12.0, cfg=3.0)
    single = sample(a, noise, txt, neg, **kw)
    assert torch.equal(sample(ExpertPair(a, b, ExpertSwitch(0.875), cfg_high=3.0), noise, txt, neg, **kw), single)
    assert not torch.allclose(sample(ExpertPair(a, b, ExpertSwitch(0.875), cfg_high=5.0), noise, txt, neg, **kw),
                              single, atol=1e-4)
    hi, lo = tiny_dit(seed=1), tiny_dit(seed=2)
    low_only = sample(ExpertPair(hi, lo, ExpertSwitch(0.875, step=0), cfg_high=5.0), noise, txt, neg, **kw)
    assert torch.equal(low_only, sample(lo, noise, txt, neg, **kw))
    high_only = sample(ExpertPair(hi, lo, ExpertSwitch(0.875, step=6), cfg_high=5.0), noise, txt, neg, **kw)
    assert torch.equal(high_only, sample(hi, noise, txt, neg, **dict(kw, cfg=5.0)))


def test_t2v_pair_through_the_pipeline(tiny_presets):
    st = Spacetime.load("test-t2v-a14b", device="cpu")
    assert st.has_experts
    log = []
    hooks = [record_calls(st.dit, HIGH, log), record_calls(st.dit_low, LOW, log)]
    video = st.generate("a red ball", frames=5, width=32, height=32, seed=1)
    assert video.shape == (1, 5, 32, 32, 3)
    assert [n for n, *_ in log] == [HIGH] * 6 + [LOW] * 2              # 8 steps, shift 12: switch at step 6
    log.clear()
    st.generate("a red ball", frames=5, width=32, height=32, seed=1, switch=st.expert_switch(step=2))
    assert [n for n, *_ in log] == [HIGH] * 2 + [LOW] * 6
    events = []                              # the hooks ComfyUI's model management plugs in (nodes/host.py)
    text = st.encode_text(["a red ball"], [""])
    st.sample_latents(text, st.latent_shape(1, 5, 32, 32), steps=4, switch=st.expert_switch(step=1),
                      load=lambda part: events.append(("load", part)) or st._part(part),
                      unload=lambda part: events.append(("unload", part)))
    assert events == [("load", "dit"), ("unload", "dit"), ("load", "dit_low")]
    for h in hooks:
        h.remove()
    info = st.expert_info(8, 12.0, st.expert_switch(), None, 3.0)
    assert info["expert_switch_step"] == 6 and info["cfg_high_noise"] == 4.0 and info["expert_boundary"] == 0.875


def test_i2v_pair_takes_the_image_as_channels_and_switches_at_0_9(tiny_presets):
    st = Spacetime.load("test-i2v-a14b", device="cpu")
    log = []
    hooks = [record_calls(st.dit, HIGH, log), record_calls(st.dit_low, LOW, log)]
    image = torch.rand(32, 32, 3)
    st.generate("a cat", image=image, frames=5, seed=2)
    for h in hooks:
        h.remove()
    assert [n for n, *_ in log] == [HIGH] * 3 + [LOW] * 5              # 8 steps, shift 5, boundary 0.9
    assert all(t >= 900 for n, t, *_ in log if n == HIGH) and all(t < 900 for n, t, *_ in log if n == LOW)
    x = log[0][3]
    assert log[0][2] == 36                                             # noise 16 + mask 4 + image latent 16
    mask, y = x[:, 16:20], x[:, 20:]
    assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0])) and not mask[:, :, 1:].any()
    clip = torch.zeros(1, 3, 5, 32, 32)                                # the image, then mid-gray frames
    clip[:, :, 0] = image.permute(2, 0, 1) * 2 - 1
    expect = st.vae.encode(clip)                                       # the whole clip, as the reference encodes it
    assert torch.allclose(y[0], expect[0], atol=1e-5) and torch.allclose(y[1], expect[0], atol=1e-5)
    with pytest.raises(SpacetimeValueError, match="needs at least one known frame"):
        st.generate("a cat", frames=5, width=32, height=32)
    with pytest.raises(SpacetimeValueError, match="frame_cfg=1.0 needs a model that reads known frames"):
        st.generate("a cat", image=image, frames=5, seed=2, frame_cfg=1.0)


def test_frame_guidance_runs_on_both_experts(tiny_presets):
    """A two-expert text-to-video pair extends a clip with frame guidance: each step runs its expert once more
    (the pass without the known frames), the known frame stays and the new ones change."""
    st = Spacetime.load("test-t2v-a14b", device="cpu")
    assert st.frame_guidance() == 0.0                                  # Wan presets: off unless asked
    clip = torch.rand(1, 32, 32, 3)
    out = {}
    for g in (0.0, 2.0):
        log = []
        hooks = [record_calls(st.dit, HIGH, log), record_calls(st.dit_low, LOW, log)]
        out[g] = st.generate("a red ball", extend=clip, frames=4, seed=1, frame_cfg=g)
        for h in hooks:
            h.remove()
        assert [n for n, *_ in log] == ([HIGH] * 6 + [LOW] * 2 if g == 0 else [HIGH] * 12 + [LOW] * 4)
    assert torch.allclose(out[0.0][:, 0], out[2.0][:, 0], atol=1e-5)
    assert (out[0.0][:, 1:] - out[2.0][:, 1:]).abs().max() > 1e-3


def test_contrast_guidance_runs_on_both_experts(tiny_presets):
    """A two-expert pair with a contrast prompt given: each step runs its expert once more (the contrast pass); Wan
    presets write no contrast prompt and leave contrast guidance off unless asked."""
    st = Spacetime.load("test-t2v-a14b", device="cpu")
    assert st.contrast_guidance() == 0.0 and st.contrast_for("a red ball moves right") == ""
    out = {}
    for c in (0.0, 2.0):
        log = []
        hooks = [record_calls(st.dit, HIGH, log), record_calls(st.dit_low, LOW, log)]
        out[c] = st.generate("a red ball", frames=5, width=32, height=32, seed=1, contrast="a blue box",
                             contrast_cfg=c)
        for h in hooks:
            h.remove()
        assert [n for n, *_ in log] == ([HIGH] * 6 + [LOW] * 2 if c == 0 else [HIGH] * 12 + [LOW] * 4)
    assert (out[0.0] - out[2.0]).abs().max() > 1e-3


def test_expert_file_errors(tmp_path, tiny_presets):
    hi = tmp_path / "high.safetensors"
    write_safetensors_atomic(tiny_dit(seed=1).state_dict(), hi)
    with pytest.raises(SpacetimeValueError, match="is the DiT .*file itself"):
        Spacetime.load("wan2.2-t2v-a14b", dit=hi, dit_low_noise=hi)
    with pytest.raises(SpacetimeValueError, match="without the high-noise expert"):
        Spacetime.load("wan2.2-t2v-a14b", dit_low_noise=hi)
    with pytest.raises(SpacetimeValueError, match="dit_low_noise file .* does not exist"):
        Spacetime.load("wan2.2-t2v-a14b", dit=hi, dit_low_noise=tmp_path / "missing.safetensors")
    vae_file = tmp_path / "vae.safetensors"
    write_safetensors_atomic(build_vae(TINY_VAE21).state_dict(), vae_file)
    st = replace(Spacetime.load("test-t2v-a14b", device="cpu"), builders={}, dit_path=hi, dit_low_path=vae_file)
    with pytest.raises(SpacetimeValueError, match=r"low-noise expert file 'vae.safetensors': .*missing keys "
                                                  r"\(69\).*unexpected keys \(194\): conv1.bias"):
        st.dit_low
    other = tmp_path / "other.safetensors"
    write_safetensors_atomic(build_dit(replace(TINY, num_layers=3)).state_dict(), other)
    pair = ExpertPair(tiny_dit(seed=1), lambda: tiny_dit(replace(TINY, num_layers=3)))
    with pytest.raises(SpacetimeValueError, match="low-noise expert's architecture .*3 layers.*2 layers"):
        pair.activate(LOW)


def _expert_lora(path, seed=7):
    """A LoRA on the tiny experts: a low-rank pair on blocks.0.self_attn.q and a full delta on blocks.1.modulation.
    Returns the path and the weight updates at strength 1."""
    g = torch.Generator().manual_seed(seed)
    up, down = torch.randn(256, 4, generator=g) * 0.1, torch.randn(4, 256, generator=g) * 0.1
    mod = torch.randn(1, 6, 256, generator=g) * 0.01
    write_safetensors_atomic({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
                              "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                              "diffusion_model.blocks.1.modulation.diff": mod}, path)
    return path, {"blocks.0.self_attn.q.weight": up @ down, "blocks.1.modulation": mod}


def test_loras_go_on_both_experts_or_the_one_named(tmp_path, tiny_presets):
    st = Spacetime.load("test-t2v-a14b", device="cpu")
    path, delta = _expert_lora(tmp_path / "style.safetensors")
    base = {part: {k: v.clone() for k, v in st.base_dit(part).state_dict().items()} for part in ("dit", "dit_low")}
    both, high, low = (st.with_lora(path, 0.5, expert=e) for e in ("both", "high_noise", "low_noise"))
    text = st.encode_text(["a red ball"], [""])
    for bundle, changed in ((both, {"dit", "dit_low"}), (high, {"dit"}), (low, {"dit_low"}), (st, set())):
        seen = {}                            # the weights each expert runs with inside one sampling run

        def spy(part):
            def hook(mod, args):
                seen.setdefault(part, {k: mod.get_parameter(k).detach().clone() for k in delta})
            return hook
        hooks = [st.base_dit(part).register_forward_pre_hook(spy(part)) for part in ("dit", "dit_low")]
        bundle.sample_latents(text, st.latent_shape(1, 5, 32, 32), steps=4, switch=st.expert_switch(step=2))
        for h in hooks:
            h.remove()
        for part in ("dit", "dit_low"):
            for k, d in delta.items():
                want = base[part][k] + (0.5 * d if part in changed else 0)
                assert torch.allclose(seen[part][k], want, atol=1e-6), (bundle.lora_specs(part), part, k)
    record = both.with_lora(path, -0.25, expert="low_noise").weights_record()["loras"]
    assert [(x["strength"], x["expert"]) for x in record] == [(0.5, "both"), (-0.25, "low_noise")]
    with pytest.raises(SpacetimeValueError, match="expert 'high_noise' needs a two-expert model"):
        Spacetime.load("toyworld-random", device="cpu").with_lora(path, expert="high_noise")
    with pytest.raises(SpacetimeValueError, match="expert 'middle' is not allowed; allowed: both, high_noise"):
        st.with_lora(path, expert="middle")


def test_quantised_experts_with_loras_and_block_offload(tmp_path, expert_files):
    """fp8 (scaled) high-noise and GGUF Q8_0 low-noise expert files load through the same path as dense ones; a
    LoRA lands on both (beside the packed weights) with block offload attached; both formats are recorded."""
    from spacetime.model.gguf import write_gguf
    from spacetime.model.loading import load_dit
    from spacetime.model.lora import activate, combine, read_lora, resolve
    from spacetime.model.quant import fp8_state_dict
    hi, lo = tmp_path / "high_fp8.safetensors", tmp_path / "low-Q8_0.gguf"
    write_safetensors_atomic(fp8_state_dict(tiny_dit(seed=1).state_dict()), hi)
    write_gguf(lo, tiny_dit(seed=2).state_dict(), lambda n, t: "Q8_0" if t.dim() == 2 else "F32")
    path, _ = _expert_lora(tmp_path / "style.safetensors")
    st = Spacetime.load("test-t2v-a14b-files", dit=hi, dit_low_noise=lo, device="cpu", offload_blocks=1,
                        loras=[(path, 0.8)])
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([600.0]), torch.randn(1, 6, TINY.text_dim)
    for part, file in (("dit", hi), ("dit_low", lo)):
        module = getattr(st, part)
        assert module._block_offload.offloaded == [1]
        assert module.blocks[1].self_attn.q.weight.dtype == torch.uint8          # still packed
        plain = load_dit(file, TINY)         # reference: the file's weights expanded, the LoRA merged, no offload
        expanded = {f"{n}.weight": m.dequantized(torch.float32) for n, m in plain.named_modules() if hasattr(m, "codec")}
        dense = tiny_dit()
        dense.load_state_dict({k: expanded.get(k, v) for k, v in plain.state_dict().items()
                               if not k.endswith(".weight_scale")})
        with torch.no_grad():
            activate(dense, ("ref",), combine([(resolve(read_lora(path), dense), 0.8)]), "merged")
            assert torch.allclose(module(x, t, ctx), dense(x, t, ctx), atol=1e-5, rtol=1e-5), part
    record = st.weights_record()
    assert "fp8 e4m3fn, scaled" in record["dit_format"] and "Q8_0" in record["low_noise_dit_format"]
    assert record["loras"][0]["expert"] == "both"
    video = st.generate("a red ball", frames=5, width=32, height=32, steps=2, seed=1)
    assert video.shape == (1, 5, 32, 32, 3) and torch.isfinite(video).all()


# ----------------------------------------------------------------------------------------------------------------------
# TI2V-5B end to end
# ----------------------------------------------------------------------------------------------------------------------

def test_ti2v_5b_runs_end_to_end_with_its_vae(tiny_presets):
    st = Spacetime.load("test-ti2v-5b", device="cpu")
    assert st.size_multiple == 32 and st.latent_shape(1, 9, 32, 64) == (1, 48, 3, 2, 4)
    video = st.generate("a red ball", frames=5, width=64, height=32, seed=3)
    assert video.shape == (1, 5, 32, 64, 3) and video.std() > 0.01
    # image-to-video: frame 0 is the image's latent, kept exactly (timestep 0 on its tokens, Wan 2.2 TI2V style)
    image = torch.rand(1, 32, 64, 3)
    from spacetime.model.pipeline import plan_task
    plan = plan_task(4, 64, 32, 5, 1, image=image)
    cond = st.condition_from_frames(plan.placement)
    text = st.encode_text(["a red ball"], [""])
    lat = st.sample_latents(text, st.latent_shape(1, 5, 32, 64), seed=3, cond=cond)
    assert torch.allclose(lat[:, :, 0], st.denormalize(cond.latents)[:, :, 0], atol=1e-5)
    assert not torch.allclose(lat[:, :, 1], st.denormalize(cond.latents)[:, :, 1], atol=1e-3)
    frames = st.decode(lat)
    assert frames.shape == (1, 5, 32, 64, 3)
    with pytest.raises(SpacetimeValueError, match="multiples of 32"):
        st.generate("a red ball", frames=9, width=48, height=32)


def test_nodes_run_a_two_expert_model(tiny_presets, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACETIME_MODELS_DIR", str(tmp_path))
    from spacetime.nodes import NODE_CLASS_MAPPINGS as N
    loader = N["SpacetimeModelLoader"]
    assert list(loader.INPUT_TYPES()["optional"]) == ["dit_low_noise_file"]
    assert list(N["SpacetimeDenoise"].INPUT_TYPES()["optional"]) == ["expert_boundary", "expert_switch_step",
                                                                      "cfg_high_noise", "step_cache",
                                                                      "frame_guidance", "contrast_guidance"]
    (model,) = loader().load("test-t2v-a14b", device="cpu")
    text, _ = N["SpacetimeTextEncode"]().encode(model, "a red ball", "")
    (latent,) = N["SpacetimeNoiseLatent"]().make(model, 32, 32, 5)
    out, info = N["SpacetimeDenoise"]().denoise(model, text, latent, steps=4, cfg=3.0, shift=12.0,
                                                expert_switch_step=1, cfg_high_noise=0.0)
    import json
    info = json.loads(info)
    assert info["expert_switch_step"] == 1 and info["cfg_high_noise"] == 4.0
    assert out["samples"].shape == (1, 16, 2, 4, 4)
    _, info = N["SpacetimeDenoise"]().denoise(model, text, latent, steps=8, cfg=3.0, shift=12.0)
    assert json.loads(info)["expert_switch_step"] == 6
    # a LoRA on the low-noise expert only, through the LoRA node (models/loras)
    import os
    (Path(os.environ["SPACETIME_MODELS_DIR"]) / "loras").mkdir()
    _expert_lora(Path(os.environ["SPACETIME_MODELS_DIR"]) / "loras" / "low.safetensors")
    assert list(N["SpacetimeLoRA"].INPUT_TYPES()["optional"]) == ["expert"]
    assert "expert='middle' is not allowed" in N["SpacetimeLoRA"].VALIDATE_INPUTS("low.safetensors", expert="middle")
    (styled,) = N["SpacetimeLoRA"]().apply(model, "low.safetensors", 0.5, "auto", "low_noise")
    out2, info = N["SpacetimeDenoise"]().denoise(styled, text, latent, steps=4, cfg=3.0, shift=12.0,
                                                 expert_switch_step=1)
    info = json.loads(info)
    assert [(x["name"], x["expert"]) for x in info["loras"]] == [("low.safetensors", "low_noise")]
    assert info["expert_switch_step"] == 1 and (out2["samples"] - out["samples"]).abs().max() > 1e-4


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture
def expert_files(tmp_path, tiny_presets):
    """Two expert files and a preset of their architecture that loads DiTs from files."""
    p = replace(tiny_presets["test-t2v-a14b"], name="test-t2v-a14b-files",
                builders={"vae": _vae_builder(TINY_VAE21), "text": lambda b: StubText()})
    register_bundle(p)
    files = []
    for seed, name in ((1, "high_noise.safetensors"), (2, "low_noise.safetensors")):
        write_safetensors_atomic(tiny_dit(seed=seed).state_dict(), tmp_path / name)
        files.append(tmp_path / name)
    BUNDLE_PRESETS.pop("test-t2v-a14b")       # the file's architecture must lead to the files preset
    yield files
    BUNDLE_PRESETS.pop("test-t2v-a14b-files", None)
    DIT_PRESETS.pop("test-t2v-a14b-files", None)


def test_cli_generates_with_two_experts_offload_and_loras(tmp_path, capsys, expert_files):
    import json
    from spacetime.cli import main
    high, low = expert_files
    lora, _ = _expert_lora(tmp_path / "style.safetensors")
    out = tmp_path / "pair.mp4"
    rc = main(["generate", "a red ball bounces", "--model", str(high), "--dit-low-noise", str(low), "--steps", "4",
               "--expert-switch-step", "3", "--cfg-high-noise", "4.5", "--offload-blocks", "1", "--lora", str(lora),
               "--lora-low-noise", f"{lora}:0.5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "high-noise expert high_noise.safetensors: safetensors (fp32" in err
    assert "low-noise expert low_noise.safetensors: safetensors (fp32" in err
    assert "strength 1, both experts" in err and "strength 0.5, low-noise expert" in err
    assert main(["verify", str(out), "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)["manifest"]["generation"]
    assert gen["expert_switch_step"] == 3 and gen["cfg_high_noise"] == 4.5 and gen["low_noise_checkpoint_sha256"]
    assert gen["dit_format"] == gen["low_noise_dit_format"] == "safetensors (fp32 x69)"
    assert [(x["name"], x["strength"], x["expert"]) for x in gen["loras"]] == [
        ("style.safetensors", 1.0, "both"), ("style.safetensors", 0.5, "low_noise")]


@pytest.mark.parametrize("args, needle", [
    (["--dit-low-noise", "no/such.safetensors"], "--dit-low-noise 'no/such.safetensors': file not found"),
    (["--offload-blocks", "-1"], "--offload-blocks -1"),
    (["--offload-blocks", "99"], "offload_blocks=99 is not allowed"),
    (["--expert-boundary", "1.5"], "--expert-boundary 1.5"),
    (["--model", "wan2.2-t2v-a14b"], "has no DiT file of its own; give the checkpoint instead"),
    (["--model", "wan2.2-i2v-a14b", "--image", str(IMAGE)], "has no DiT file of its own"),
    (["--lora-high-noise", f"{IMAGE}:0.5"], "--lora-high-noise '" + f"{IMAGE}:0.5': needs two experts"),
])
def test_cli_expert_and_offload_errors_are_one_line(tmp_path, capsys, args, needle):
    from spacetime.cli import EXIT_BAD_INPUT, main
    out = tmp_path / "bad.mp4"
    rc = main(["generate", "a red ball", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and err.startswith("spacetime: ") and "\n" not in err and needle in err, err
    assert not out.exists()
