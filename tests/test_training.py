"""Pieces of the embedded model's training recipe that decide what it learns."""
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
