"""Pieces of the embedded model's training recipe that decide what it learns."""
import pytest
import torch

from spacetime.model.config import VAEConfig
from spacetime.toyworld.train_vae import TOY_VAE, init_vae, inflate_to_video

TINY = VAEConfig(dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, attn_scales=(),
                 temperal_downsample=(True, True), latent_mean=(0.0,) * 4, latent_std=(1.0,) * 4)


def _image_trained_stand_in(cfg):
    """A VAE whose weights are all non-trivial (a fresh one has zero residual branches)."""
    vae = init_vae(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return vae


@torch.no_grad()
def _static_clip_recon(vae, frames=9):
    x = torch.rand(1, 3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    clip = x.expand(-1, -1, frames, -1, -1).contiguous()
    return vae.decode_raw(vae.encode_raw(clip)), vae.decode_raw(vae.encode_raw(x))


def test_inflated_vae_codes_a_still_clip_frame_by_frame():
    vae = _image_trained_stand_in(TINY)
    y, y1 = _static_clip_recon(vae)
    assert (y - y1).abs().amax() > 1e-3                      # before: time mixing through the untrained slices
    single_before = y1.clone()
    inflate_to_video(vae)
    y, y1 = _static_clip_recon(vae)
    assert torch.allclose(y1, single_before, atol=1e-6)      # single frames are coded exactly as before
    assert y.shape[2] == 9
    assert (y - y1).abs().amax() < 1e-5                      # every frame of a still clip = the single-frame result


def test_inflation_only_touches_time_slices():
    vae = _image_trained_stand_in(TOY_VAE)
    before = {n: p.clone() for n, p in vae.named_parameters()}
    inflate_to_video(vae)
    changed = {n for n, p in vae.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.endswith(("weight", "bias")) for n in changed)
    for n, p in vae.named_parameters():
        if p.dim() == 5 and p.shape[2] == 3 and p.shape[3:] != (1, 1):
            assert torch.equal(p[:, :, 2], before[n][:, :, 2]) and p[:, :, :2].abs().sum() == 0


def test_a_stop_signal_during_training_is_deferred_to_the_end_of_the_step():
    import os
    import signal
    from spacetime.toyworld.runs import StopOnSignal
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)                 # would end the test process without the handler
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_decoder_fine_tune_keeps_the_encoder_and_counts_its_steps(tmp_path):
    """A decoder-only fine-tune (the recipe's last VAE stage, and its continuations) changes the decoder, never the
    encoder (the DiT's latents stay valid), and a fine-tune of a fine-tuned decoder adds its steps to the record."""
    import json
    from spacetime.model.config import config_to_dict
    from spacetime.model.loading import read_state_dict, write_safetensors_atomic
    from spacetime.toyworld.train_vae import train_vae
    src = tmp_path / "vae"
    src.mkdir()
    write_safetensors_atomic(_image_trained_stand_in(TINY).state_dict(), src / "vae.safetensors")
    (src / "vae.json").write_text(json.dumps({"config": config_to_dict(TINY)}))
    train_vae(tmp_path / "dec1", 2, 1e-3, decoder_only_from=src, measure_clips=2)
    train_vae(tmp_path / "dec2", 3, 1e-3, decoder_only_from=tmp_path / "dec1", measure_clips=2, temporal_weight=1.0,
              edge_weight=1.0, detail_weight=2.0)
    a, b = read_state_dict(src / "vae.safetensors"), read_state_dict(tmp_path / "dec2" / "vae.safetensors")
    enc = [k for k in a if not k.startswith(("decoder.", "conv2."))]
    dec = [k for k in a if k.startswith("decoder.")]
    assert enc and dec and all(torch.equal(a[k], b[k]) for k in enc)
    assert any(not torch.equal(a[k], b[k]) for k in dec)
    meta = json.loads((tmp_path / "dec2" / "vae.json").read_text())
    assert meta["decoder_finetune_steps"] == 5 and meta["config"] == config_to_dict(TINY)
    assert len(meta["recon_psnr_per_frame_33f"]) == 33 and meta["recon_boundary_jump_33f"] > 0


def test_edge_loss_sees_softened_corners_not_levels():
    """The decoder's edge loss: zero for an exact copy and for the same picture a level brighter, positive for a box
    whose edges are blurred, and only where the weight map lets it."""
    import torch.nn.functional as F
    from spacetime.toyworld.train_vae import edge_loss
    x = -torch.ones(1, 3, 2, 16, 16)
    x[..., 5:11, 5:11] = 1.0                                              # a 6x6 box on a dark background
    assert edge_loss(x, x).item() == 0.0
    assert edge_loss(x + 0.3, x).item() == pytest.approx(0.0, abs=1e-7)
    blur = F.avg_pool3d(x, (1, 3, 3), stride=1, padding=(0, 1, 1), count_include_pad=False)
    soft = edge_loss(blur, x).item()
    assert soft > 0.05
    w = torch.zeros(1, 1, 2, 16, 16)
    assert edge_loss(blur, x, w).item() == 0.0
    w[..., 4:12, 4:12] = 1.0
    assert 0.0 < edge_loss(blur, x, w).item() <= soft


def test_boundary_jump_is_one_for_even_motion_and_grows_when_frames_move_in_steps():
    """The decoder's step-wise motion, measured: a clip moving evenly changes as much into the first frame of each
    latent frame as inside one; the same clip with every frame repeated once (motion in steps of two frames, steps
    landing on the first frames of latent frames) scores far above."""
    from spacetime.toyworld.train_vae import boundary_jump, frame_changes
    from spacetime.toyworld.world import Obj, Scene, render
    scene = Scene("navy", (Obj("ball", "red", "medium", "moves right", 0.2, 0.5),))
    x = torch.from_numpy(render(scene, 33, 64, 64).frames).float().permute(3, 0, 1, 2)[None] / 127.5 - 1
    assert abs(boundary_jump(frame_changes(x), 4) - 1.0) < 0.1
    stepped = x[:, :, [0] + [2 * ((k + 1) // 2) for k in range(1, 33)]]       # frames 0, 2, 2, 4, 4, 6, 6, ...
    assert boundary_jump(frame_changes(stepped), 4) > 1.8


class _CountingEncoder:
    """A text encoder stand-in: token rows that spell the caption's length, and a record of what it was asked."""

    def __init__(self):
        self.asked = []

    def encode(self, captions):
        self.asked.append(list(captions))
        lens = torch.tensor([len(c) + 1 for c in captions])
        emb = torch.zeros(len(captions), int(lens.max()), 3)
        for i, c in enumerate(captions):
            emb[i, :len(c) + 1] = float(len(c))
        return emb, lens


def test_caption_cache_never_evicts_a_caption_of_the_batch_it_serves():
    # A full cache used to evict its oldest entry (the empty caption of classifier-free guidance, cached first)
    # while encoding a batch that also held it, and the batch's lookup then failed.
    from spacetime.toyworld.train_dit import CachedText
    enc = _CountingEncoder()
    text = CachedText(enc, max_items=3)
    text(["", "a"], "cpu")
    ctx, lens = text(["bb", "ccc", "", "dddd"], "cpu")             # 5 distinct captions seen, room for 3
    assert lens.tolist() == [3, 4, 1, 5]
    assert ctx[1, :4, 0].tolist() == [3.0] * 4 and ctx[2, 0, 0].item() == 0.0
    assert len(text.cache) == 3
    ctx, lens = text(["dddd", "e"], "cpu")                           # "dddd" is cached: only "e" is encoded
    assert enc.asked[-1] == ["e"] and lens.tolist() == [5, 2]
    assert set(text.cache) == {"ccc", "dddd", "e"}                   # the least recently used went first
    with pytest.raises(ValueError, match="max_items=0"):
        CachedText(enc, max_items=0)


def test_refiner_gives_the_dit_clean_prediction_that_moves_with_the_noise_level():
    """The decoder's refinement inputs: the shipped DiT's one-step clean latent from the true latent noised to a
    level in the range; near noise 0 it is the true latent, at noise 0.4 it is off by more (the DiT's own errors) and
    still far closer to the truth than the noised latent it was predicted from; the same generator seed repeats it."""
    import numpy as np
    from spacetime.model.embedded import DIT_FILE
    from spacetime.toyworld.runs import clips_to_tensor
    from spacetime.toyworld.train_vae import Refiner
    from spacetime.toyworld.world import random_clip
    clips = [random_clip(s, 5, 64, 64, kind="single") for s in (1, 2)]
    from spacetime.model.pipeline import Spacetime
    with torch.no_grad():
        mu = Spacetime.load("toyworld").vae.encode_raw(clips_to_tensor(clips))
    lo = Refiner(DIT_FILE, (0.02, 0.02), torch.device("cpu"))
    near = lo(clips, mu, np.random.default_rng(0))
    hi = Refiner(DIT_FILE, (0.4, 0.4), torch.device("cpu"))
    far = hi(clips, mu, np.random.default_rng(0))
    again = hi(clips, mu, np.random.default_rng(0))
    noised = 0.6 * mu + 0.4 * torch.from_numpy(np.random.default_rng(0).standard_normal(mu.shape)).float()
    err = lambda z: (z - mu).pow(2).mean().item()                          # noqa: E731
    assert near.shape == mu.shape and torch.equal(far, again)
    assert err(near) < 0.02 < err(far) < 0.5 * err(noised)


def test_a_refined_decoder_stage_trains_on_dit_predictions_and_keeps_the_encoder(tmp_path):
    """``refine_dit``: every step of share 1 reads DiT predictions (logged), the encoder stays the shipped one; a VAE
    stage that would change the latents refuses it."""
    import json
    from spacetime.model.embedded import DIT_FILE
    from spacetime.model.loading import read_state_dict
    from spacetime.toyworld.train import copy_shipped_vae
    from spacetime.toyworld.train_vae import train_vae
    copy_shipped_vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="decoder stage"):
        train_vae(tmp_path / "whole", 1, 1e-4, init_from=tmp_path / "vae", refine_dit=DIT_FILE)
    train_vae(tmp_path / "dec", 1, 1e-4, decoder_only_from=tmp_path / "vae", measure_clips=1, refine_dit=DIT_FILE,
              refine_share=1.0, refine_sigmas=(0.2, 0.3))
    log = [json.loads(line) for line in (tmp_path / "dec" / "log.jsonl").read_text().splitlines()]
    assert log and all(r["refined"] for r in log)
    a, b = read_state_dict(tmp_path / "vae" / "vae.safetensors"), read_state_dict(tmp_path / "dec" / "vae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith(("decoder.", "conv2.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))


@pytest.mark.parametrize("opt,val,allowed", [("--refine-share", "1.5", "within 0..1"),
                                             ("--refine-sigma", "0.5,0.1", "0 < LO <= HI <= 1"),
                                             ("--refine-sigma", "half", "0 < LO <= HI <= 1"),
                                             ("--refine-dit", "missing.safetensors", "no such file")])
def test_decoder_stage_refuses_bad_refinement_options_before_loading(tmp_path, capsys, opt, val, allowed):
    from spacetime.toyworld import train
    if opt == "--refine-dit":
        val = str(tmp_path / val)
    with pytest.raises(SystemExit) as e:
        train.main(["decoder", "--vae", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), opt, val])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{opt} " in err and allowed in err and not (tmp_path / "d").exists()


def test_decoder_stage_refuses_negative_or_non_finite_loss_weights_before_loading(tmp_path, capsys):
    import pytest
    from spacetime.toyworld import train
    for opt, val in (("--temporal-weight", "-1"), ("--detail-weight", "nan")):
        with pytest.raises(SystemExit) as e:
            train.main(["decoder", "--vae", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), opt, val])
        assert e.value.code == 2 and f"{opt} " in capsys.readouterr().err and not (tmp_path / "d").exists()
