"""Known frames for every task, in one form: a per-latent-frame mask plus the known latents.

Pixel frame p lives in latent slot 0 when p == 0 and in slot (p - 1) // tf + 1 otherwise (tf = the VAE's temporal
factor, 4 for Wan): slot 0 is a single first frame, every later slot covers tf frames. A slot is *known* when all of
its pixel frames are known. Known pixels are encoded in place, so a known slot's latent is what the causal VAE gives
for those frames: exactly so for a known head, as the encoder is causal. Unknown frames before a known one hold that
known frame (a still lead-in): the causal encoder reads a few frames back, and mid-gray there would put a fade from
gray into the first latents of a known tail (measured: 8-25 % relative error on the first known latent of a tail,
about 2.5 % with the hold). Models that read every slot (``whole``, Wan's image-to-video concat) get mid-gray
unknown frames, as they were trained.

Tasks, as placements of known frames in a clip of T = 1 + tf * k frames:
  text-to-video        nothing known
  image-to-video       the image at frame 0 (or held for the last slot's frames, for "image at the end")
  extend forward       the previous clip at the start
  extend backward      the following clip at the end
  fill                 clips/keyframes at the start and the end, or any subset of frames
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .errors import SpacetimeValueError
from .sampling import FrameCondition


def slot_of(pixel: int, tf: int) -> int:
    return 0 if pixel == 0 else (pixel - 1) // tf + 1


def slot_pixels(slot: int, tf: int) -> range:
    return range(0, 1) if slot == 0 else range(tf * (slot - 1) + 1, tf * slot + 1)


def valid_frames(frames: int, tf: int) -> bool:
    return frames >= 1 and (frames - 1) % tf == 0


def round_up_frames(frames: int, tf: int) -> int:
    """Smallest 1 + tf*k >= frames."""
    return 1 + tf * max(0, -(-(frames - 1) // tf))


def check_frames(frames: int, tf: int, name: str = "frames"):
    if not valid_frames(frames, tf):
        lo = round_up_frames(frames, tf) - tf if frames > 1 else 1
        raise SpacetimeValueError(
            f"{name}={frames} is not of the form 1 + {tf}*k; allowed e.g. {max(1, lo)} or "
            f"{round_up_frames(frames, tf)}")


def check_size(width: int, height: int, multiple: int, name: str = "size"):
    if width % multiple or height % multiple or width <= 0 or height <= 0:
        def near(v):
            return max(multiple, round(v / multiple) * multiple)
        raise SpacetimeValueError(
            f"{name}={width}x{height} is not allowed: width and height must be positive multiples of {multiple} "
            f"(nearest: {near(width)}x{near(height)})")


@dataclass
class Placement:
    """Known pixel frames of a clip: ``video`` [B, 3, T, H, W] in [-1, 1] (unknown frames arbitrary) and
    ``known`` [T] booleans."""
    video: torch.Tensor
    known: torch.Tensor

    @classmethod
    def empty(cls, batch: int, frames: int, height: int, width: int) -> "Placement":
        return cls(torch.zeros(batch, 3, frames, height, width), torch.zeros(frames, dtype=torch.bool))

    def put(self, start: int, clip: torch.Tensor) -> "Placement":
        """Place ``clip`` [B or 1, 3, n, H, W] at pixel frames start..start+n-1 (clipped to the clip's length)."""
        T = self.video.shape[2]
        n = clip.shape[2]
        if start < 0:
            clip, n, start = clip[:, :, -start:], n + start, 0
        n = min(n, T - start)
        if n <= 0:
            return self
        if clip.shape[-2:] != self.video.shape[-2:]:
            raise SpacetimeValueError(
                f"known frames are {clip.shape[-1]}x{clip.shape[-2]} but the clip is "
                f"{self.video.shape[-1]}x{self.video.shape[-2]}; resize them first")
        self.video[:, :, start:start + n] = clip[:, :, :n].to(self.video)
        self.known[start:start + n] = True
        return self

    def slot_mask(self, tf: int) -> torch.Tensor:
        T = self.video.shape[2]
        n_slots = slot_of(T - 1, tf) + 1
        return torch.tensor([all(bool(self.known[p]) for p in slot_pixels(j, tf) if p < T)
                             for j in range(n_slots)], dtype=torch.float32)


@torch.no_grad()
def encode_placement(vae, placement: Placement, whole: bool = False) -> Optional[FrameCondition]:
    """Encode the known frames in place (unknown frames mid-gray) -> FrameCondition over latent slots, or None
    when no slot is fully known. ``whole``: encode the whole clip (models that read every slot's latent, see
    concat.py), not just up to the last known slot."""
    tf = vae.temporal_factor
    mask = placement.slot_mask(tf)
    if not mask.any():
        return None
    video = placement.video.clone()
    video[:, :, ~placement.known] = 0.0
    if not whole:
        video = hold_before_known(video, placement.known)
    # Only the clip up to the last known slot needs encoding (the encoder is causal).
    last = int(mask.nonzero().max())
    n_pix = placement.video.shape[2] if whole else max(slot_pixels(last, tf)) + 1
    z = vae.encode(video[:, :, :n_pix])
    full = torch.zeros(z.shape[0], z.shape[1], mask.shape[0], *z.shape[3:])
    full[:, :, :z.shape[2]] = z
    return FrameCondition(full, mask.expand(z.shape[0], -1).clone())


def hold_before_known(video: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """``video`` [B, 3, T, H, W] with every unknown frame that comes before a known one replaced by the next known
    frame (unknown frames after the last known one are left as they are)."""
    out = video.clone()
    nxt = None
    for t in range(video.shape[2] - 1, -1, -1):
        if bool(known[t]):
            nxt = t
        elif nxt is not None:
            out[:, :, t] = video[:, :, nxt]
    return out


def latent_condition(known_latents: torch.Tensor, mask: torch.Tensor) -> FrameCondition:
    """From latents directly (no pixels): ``known_latents`` [B, C, F', H', W'] normalised, ``mask`` [F'] or [B, F']."""
    return FrameCondition(known_latents.float(), mask.float())


def to_video(frames: torch.Tensor) -> torch.Tensor:
    """IMAGE frames [T, H, W, C] in 0..1 (or a batch [B, T, H, W, C]) -> [B, 3, T, H, W] in [-1, 1]."""
    if frames.dim() == 4:
        frames = frames[None]
    if frames.dim() != 5 or frames.shape[-1] not in (3, 4):
        raise SpacetimeValueError(f"frames must be [T, H, W, 3] in 0..1; got shape {tuple(frames.shape)}")
    return frames[..., :3].permute(0, 4, 1, 2, 3).float() * 2.0 - 1.0


def to_frames(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] in 0..1."""
    return ((video.float() + 1.0) * 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).contiguous()
