"""Known frames as extra input channels, for DiTs trained that way (Wan 2.2 I2V-A14B: 36 input channels = the noisy
latent 16 + a mask 4 + the image latent 16; no CLIP).

The known frames come from the same ``FrameCondition`` as every other task. A known latent slot sets its mask
channels to 1 (Wan's mask has one channel per pixel frame of the slot, so a fully known slot is all ones) and the
image part carries the clip's latents, encoded whole with the unknown frames mid-gray (``encode_placement(...,
whole=True)``), as the reference encodes ``[image, zeros...]``. The timestep stays one per sample and nothing is
re-imposed between steps: such a model keeps the known frames itself.
"""
from __future__ import annotations

import torch

from .errors import SpacetimeValueError


def concat_channels(cond, in_dim: int, out_dim: int) -> torch.Tensor:
    """FrameCondition -> the extra inputs [B, mask + C, F', H', W'] for a DiT with ``in_dim`` inputs."""
    if cond is None or not cond.any_known:
        raise SpacetimeValueError(
            f"this DiT takes its known frames as input channels ({in_dim} = {out_dim} latent + mask + image latent) "
            f"and needs at least one known frame: give an image (Spacetime Image to Video, --image) or a clip to "
            f"extend")
    lat = cond.latents.float()
    B, C, F, H, W = lat.shape
    n_mask = in_dim - out_dim - C
    if n_mask < 1:
        raise SpacetimeValueError(f"a DiT with {in_dim} input channels cannot take {out_dim} latent + {C} image "
                                  f"latent channels plus a mask")
    mask = cond.mask.to(lat)[:, None, :, None, None].expand(B, n_mask, F, H, W)
    return torch.cat([mask, lat], dim=1)


class ConcatConditioned:
    """A DiT whose input is the latent with ``extra`` [B, k, F', H', W'] appended on channels; everything else
    (text embedding, config, device) is the DiT's own."""

    def __init__(self, model, extra: torch.Tensor):
        self.model = model
        self.extra = extra

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, t, **kwargs):
        extra = self.extra.to(x.device, x.dtype)
        if extra.shape[0] != x.shape[0]:                   # cond and uncond batched together
            extra = extra.repeat(x.shape[0] // extra.shape[0], 1, 1, 1, 1)
        return self.model(torch.cat([x, extra], dim=1), t, **kwargs)


def with_concat(model, extra: torch.Tensor):
    """Wrap a DiT, or every expert of an ExpertPair, so the extra channels go in with each call."""
    if hasattr(model, "guided_denoiser"):
        model.wrap = lambda m: ConcatConditioned(m, extra)
        return model
    return ConcatConditioned(model, extra)


__all__ = ["concat_channels", "ConcatConditioned", "with_concat"]
