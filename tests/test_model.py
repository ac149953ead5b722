"""Model core: preset key compatibility, config inference, loading errors, sampling behaviour, bad input."""
import pytest
import torch

from spacetime.model.config import DIT_PRESETS, VAEConfig, bundle_preset, dit_preset
from spacetime.model.dit import build_dit
from spacetime.model.errors import CheckpointMismatchError, SpacetimeValueError
from spacetime.model.loading import (infer_dit_config, infer_vae_config, load_dit, load_vae, normalize_dit_keys,
                                     read_state_dict, write_safetensors_atomic)
from spacetime.model.sampling import FrameCondition, UniPC, sample, sigma_schedule
from spacetime.model.vae import build_vae

# Official counts (state-dict tensors and parameters) of the released checkpoints.
OFFICIAL = {"wan2.1-t2v-1.3b": (825, 1_418_996_800), "wan2.1-t2v-14b": (1095, 14_288_491_584),
            "wan2.2-ti2v-5b": (825, 4_999_787_712)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_presets_have_official_keys_and_shapes(name):
    sd = build_dit(dit_preset(name), device="meta").state_dict()
    n_tensors, n_params = OFFICIAL[name]
    assert len(sd) == n_tensors
    assert sum(v.numel() for v in sd.values()) == n_params
    cfg = dit_preset(name)
    assert sd["patch_embedding.weight"].shape == (cfg.dim, cfg.in_dim, 1, 2, 2)
    assert sd["head.head.weight"].shape == (4 * cfg.out_dim, cfg.dim)
    assert sd["blocks.0.modulation"].shape == (1, 6, cfg.dim)
    assert sd["time_projection.1.weight"].shape == (6 * cfg.dim, cfg.dim)
    assert sd["text_embedding.0.weight"].shape == (cfg.dim, 4096)
    assert "blocks.0.norm3.weight" in sd and "blocks.0.norm1.weight" not in sd
    # the config is recovered from keys and shapes alone
    assert infer_dit_config(sd) == cfg


def test_wan21_vae_keys():
    sd = build_vae(VAEConfig(), device="meta").state_dict()
    assert len(sd) == 194
    assert sum(v.numel() for v in sd.values()) == 126_892_531
    assert sd["decoder.middle.0.residual.0.gamma"].shape == (384, 1, 1, 1)
    assert sd["decoder.upsamples.3.time_conv.weight"].shape == (768, 384, 3, 1, 1)
    assert infer_vae_config(sd) == VAEConfig()


def _tiny_sd():
    m = build_dit(dit_preset("wan-tiny"))
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_load_prefixed_and_diffusers_names(tmp_path):
    sd = _tiny_sd()
    ref = load_dit(sd)
    comfy = {f"model.diffusion_model.{k}": v for k, v in sd.items()}
    p = tmp_path / "comfy.safetensors"
    write_safetensors_atomic(comfy, p)
    a = load_dit(p)
    renames = {"time_embedding.0.": "condition_embedder.time_embedder.linear_1.",
               "time_embedding.2.": "condition_embedder.time_embedder.linear_2.",
               "time_projection.1.": "condition_embedder.time_proj.",
               "text_embedding.0.": "condition_embedder.text_embedder.linear_1.",
               "text_embedding.2.": "condition_embedder.text_embedder.linear_2.", "head.head.": "proj_out."}

    def to_diffusers(k):
        for a_, b_ in renames.items():
            if k.startswith(a_):
                return b_ + k[len(a_):]
        if k == "head.modulation":
            return "scale_shift_table"
        k = k.replace(".modulation", ".scale_shift_table").replace(".self_attn.o.", ".attn1.to_out.0.")
        k = k.replace(".cross_attn.o.", ".attn2.to_out.0.").replace(".ffn.0.", ".ffn.net.0.proj.")
        k = k.replace(".ffn.2.", ".ffn.net.2.").replace(".norm3.", ".norm2.")
        for x in "qkv":
            k = k.replace(f".self_attn.{x}.", f".attn1.to_{x}.").replace(f".cross_attn.{x}.", f".attn2.to_{x}.")
        return k.replace(".self_attn.norm_", ".attn1.norm_").replace(".cross_attn.norm_", ".attn2.norm_")
    diff = {to_diffusers(k): v for k, v in sd.items()}
    assert any(k.startswith("condition_embedder") for k in diff)
    b = load_dit(diff)
    for m in (a, b):
        for k, v in ref.state_dict().items():
            assert torch.equal(m.state_dict()[k], v), k


def test_mismatch_lists_keys_and_suggests_preset(tmp_path):
    sd = _tiny_sd()
    broken = {k: v for k, v in sd.items() if not k.startswith("blocks.1.ffn")}
    broken["extra.weight"] = torch.zeros(3)
    cfg = infer_dit_config(sd)
    with pytest.raises(CheckpointMismatchError) as e:
        load_dit(broken, cfg)
    msg = str(e.value)
    assert "blocks.1.ffn.0.weight" in msg and "extra.weight" in msg and "missing keys (4)" in msg
    # a 1.3B-shaped checkpoint loaded into the 14B config names the preset that fits
    meta13 = build_dit(dit_preset("wan2.1-t2v-1.3b"), device="meta").state_dict()
    with pytest.raises(CheckpointMismatchError) as e:
        load_dit(meta13, dit_preset("wan2.1-t2v-14b"))
    assert "wan2.1-t2v-1.3b" in str(e.value) and "shape mismatches" in str(e.value)


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    p = tmp_path / "dit.safetensors"
    write_safetensors_atomic(_tiny_sd(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpacetimeValueError, match="could not be read"):
        read_state_dict(p)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(SpacetimeValueError, match="unsupported extension"):
        read_state_dict(ckpt)


def test_atomic_write_never_overwrites(tmp_path):
    p = tmp_path / "a.safetensors"
    write_safetensors_atomic({"x": torch.ones(2)}, p)
    with pytest.raises(FileExistsError):
        write_safetensors_atomic({"x": torch.zeros(2)}, p)
    assert torch.equal(read_state_dict(p)["x"], torch.ones(2))


def test_pth_only_weights_only(tmp_path):
    sd = _tiny_sd()
    p = tmp_path / "m.pth"
    torch.save(sd, p)
    m = load_dit(p)
    assert torch.equal(m.state_dict()["head.head.weight"], sd["head.head.weight"])
    evil = tmp_path / "evil.pth"
    torch.save({"f": print}, evil)
    with pytest.raises(SpacetimeValueError, match="weights_only"):
        read_state_dict(evil)


def test_unknown_preset_and_bad_vae_input():
    with pytest.raises(SpacetimeValueError, match="allowed"):
        bundle_preset("wan9-giant")
    vae = build_vae(VAEConfig(dim=8, z_dim=4, latent_mean=(0,) * 4, latent_std=(1,) * 4))
    with pytest.raises(SpacetimeValueError, match=r"frames.*1 \+ 4\*k"):
        vae.encode(torch.zeros(1, 3, 6, 16, 16))
    with pytest.raises(SpacetimeValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 20, 16))


def test_schedule_matches_wan_grid():
    _, t = sigma_schedule(6, 5.0)
    assert t.tolist() == [999, 961, 908, 833, 713, 499]
    _, t50 = sigma_schedule(50, 5.0)
    assert t50[:4].tolist() == [999, 995, 991, 987] and t50[-3:].tolist() == [241, 172, 92]
    with pytest.raises(SpacetimeValueError):
        sigma_schedule(0, 5.0)


def test_per_token_and_per_frame_timesteps_agree():
    torch.manual_seed(0)
    m = build_dit(dit_preset("wan-tiny"))
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    x, c = torch.randn(2, 16, 3, 4, 4), torch.randn(2, 5, 64)
    tf = torch.tensor([[0.0, 700, 700], [0, 0, 300]])
    with torch.no_grad():
        a = m(x, tf, c)
        b = m(x, tf.repeat_interleave(4, dim=1), c)
        s = m(x, torch.tensor([500.0, 500.0]), c)
        s2 = m(x, torch.full((2, 3), 500.0), c)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(s, s2, atol=1e-5)
    with pytest.raises(ValueError, match="timestep"):
        m(x, torch.zeros(2, 5), c)


def test_frame_conditioning_keeps_known_frames_exactly():
    torch.manual_seed(0)
    m = build_dit(dit_preset("wan-tiny"))
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    known = torch.randn(1, 16, 4, 4, 4)
    mask = torch.tensor([1.0, 0, 0, 1])
    for sampler in ("unipc", "euler"):
        out = sample(m, torch.randn(1, 16, 4, 4, 4), torch.randn(1, 5, 64), torch.randn(1, 5, 64), steps=4,
                     shift=3.0, cfg=4.0, sampler=sampler, cond=FrameCondition(known, mask))
        assert torch.equal(out[:, :, 0], known[:, :, 0]) and torch.equal(out[:, :, 3], known[:, :, 3])
        assert not torch.allclose(out[:, :, 1], known[:, :, 1])


def test_strength_zero_returns_init_and_callback_can_cancel():
    m = build_dit(dit_preset("wan-tiny"))
    init = torch.randn(1, 16, 2, 4, 4)
    out = sample(m, torch.randn_like(init), torch.randn(1, 3, 64), steps=5, strength=0.0, init=init)
    assert torch.equal(out, init)
    calls = []

    def cb(i, n, x0, x):
        calls.append((i, n))
        if i == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        sample(m, torch.randn_like(init), torch.randn(1, 3, 64), steps=5, callback=cb)
    assert calls == [(1, 5), (2, 5)]
    with pytest.raises(SpacetimeValueError, match="sampler"):
        sample(m, init, torch.randn(1, 3, 64), sampler="ddim")


def test_vae_decode_streams_one_latent_frame_at_a_time():
    vae = build_vae(VAEConfig(dim=8, z_dim=4, latent_mean=(0,) * 4, latent_std=(1,) * 4))
    z = torch.randn(1, 4, 5, 2, 2)
    sizes = [c.shape[2] for c in vae.decode_chunks(z)]
    assert sizes == [1, 4, 4, 4, 4]
    full = vae.decode(z)
    assert full.shape == (1, 3, 17, 16, 16)
    assert torch.equal(torch.cat(list(vae.decode_chunks(z)), 2), full)


@pytest.mark.parametrize("family", ["2.1", "2.2"])
def test_vae_decode_restarts_at_cuts(family):
    """A restart decodes the frames from the cut on as their own clip (primed with the cut's latent frame as a first
    frame, which is dropped): the frame count stays, frames before the cut do not change; pieces stream the same."""
    from spacetime.model.config import VAE22Config
    cfg = VAEConfig(dim=8, z_dim=4, latent_mean=(0,) * 4, latent_std=(1,) * 4) if family == "2.1" else \
        VAE22Config(dim=8, dec_dim=12)
    vae = build_vae(cfg)
    z = torch.randn(1, cfg.z_dim, 6, 2, 2)
    whole = vae.decode(z)
    cut = vae.decode(z, restarts=[2, 4])
    assert cut.shape == whole.shape and cut.shape[2] == 21
    alone = [vae.decode(z[:, :, :2]), vae.decode(torch.cat([z[:, :, 2:3], z[:, :, 2:4]], 2))[:, :, 1:],
             vae.decode(torch.cat([z[:, :, 4:5], z[:, :, 4:]], 2))[:, :, 1:]]
    torch.testing.assert_close(cut, torch.cat(alone, 2), rtol=0, atol=1e-6)
    assert torch.equal(cut[:, :, :5], whole[:, :, :5]) and not torch.allclose(cut[:, :, 5:], whole[:, :, 5:])
    streamed = torch.cat(list(vae.decode_stream([z[:, :, :3], z[:, :, 3:]], restarts=[2, 4])), 2)
    torch.testing.assert_close(streamed, cut, rtol=0, atol=1e-6)
    for bad in ([0], [6], [-1], [2.5], [True]):
        with pytest.raises(SpacetimeValueError, match=r"restarts=.* is not a latent frame where a shot can begin; "
                                                      r"allowed: latent frames 1..5"):
            vae.decode_chunks(z, restarts=bad)
    with pytest.raises(SpacetimeValueError, match="allowed: latent frames 1..5"):   # streamed: checked at the end
        list(vae.decode_stream([z[:, :, :3], z[:, :, 3:]], restarts=[6]))


@pytest.mark.parametrize("family", ["2.1", "2.2"])
def test_vae_encode_restarts_at_cuts(family):
    """Encoding restarted at a cut encodes the shot after it as a clip of its own (primed with the shot's first
    frame, that latent dropped); the latents before the cut do not change."""
    from spacetime.model.config import VAE22Config
    cfg = VAEConfig(dim=8, z_dim=4, latent_mean=(0,) * 4, latent_std=(1,) * 4) if family == "2.1" else \
        VAE22Config(dim=8, dec_dim=12)
    vae = build_vae(cfg)
    x = torch.rand(1, 3, 17, 16, 16) * 2 - 1
    whole, cut = vae.encode(x), vae.encode(x, restarts=[3])
    assert cut.shape == whole.shape and cut.shape[2] == 5
    alone = vae.encode(torch.cat([x[:, :, 9:10], x[:, :, 9:]], 2))[:, :, 1:]      # latent 3 starts at frame 9
    torch.testing.assert_close(cut[:, :, 3:], alone, rtol=0, atol=1e-5)
    assert torch.equal(cut[:, :, :3], whole[:, :, :3]) and not torch.allclose(cut[:, :, 3:], whole[:, :, 3:])
    with pytest.raises(SpacetimeValueError, match=r"restarts=\[5\]: 5 is not a latent frame .* 1..4"):
        vae.encode(x, restarts=[5])


def test_a_known_tail_is_encoded_as_in_its_clip_not_after_a_fade_from_gray():
    """Extend backward / fill: the known latents of a tail must be close to the same frames' latents inside the whole
    clip (what training shows the DiT); unknown frames before them hold the first known frame for the encoder."""
    from spacetime.model.conditioning import Placement, encode_placement, hold_before_known, to_video
    from spacetime.model.pipeline import Spacetime
    from spacetime.toyworld.world import Obj, Scene, render
    vae = Spacetime.load("toyworld").vae
    frames = render(Scene("navy", (Obj("ball", "orange", "medium", "moves left", 0.75, 0.45),)), 33, 64, 64).frames
    clip = to_video(torch.from_numpy(frames).float() / 255)
    with torch.no_grad():
        whole = vae.encode(clip)
        pl = Placement.empty(1, 33, 64, 64).put(16, clip[:, :, 16:])              # frames 16..32: slots 5..8 known
        cond = encode_placement(vae, pl)
        gray = clip.clone()
        gray[:, :, :16] = 0.0
        faded = vae.encode(gray)
    assert cond.mask[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]

    def rel(z, k):
        return float((z[:, :, k] - whole[:, :, k]).norm() / whole[:, :, k].norm())
    assert rel(cond.latents, 5) < 0.05 < rel(faded, 5)                 # measured about 0.025 against 0.075
    assert all(rel(cond.latents, k) < 0.01 for k in (7, 8))
    held = hold_before_known(gray, pl.known)
    assert torch.equal(held[:, :, 3], clip[:, :, 16]) and torch.equal(held[:, :, 16:], clip[:, :, 16:])
    head = Placement.empty(1, 33, 64, 64).put(0, clip[:, :, :17])                  # a known head: exact
    assert torch.allclose(encode_placement(vae, head).latents[:, :, :5], whole[:, :, :5], atol=1e-5)
