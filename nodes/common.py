"""Shared pieces of the node adapters: socket type names, widget specs, input checks, the LATENT layout.

LATENT (ComfyUI convention): ``samples`` raw VAE latents [B, C, F', H', W']; optional ``noise_mask`` [B, 1, F', 1, 1]
with 1 = generate this latent frame and 0 = keep it (known frames hold their latents in ``samples``). Core samplers
read the same key. Extra keys carried by our nodes: ``noise_seed`` (from Noise Latent), ``spacetime_ingredients``
(files of conditioning inputs, for provenance).
"""
from __future__ import annotations

MODEL = "SPACETIME_MODEL"
TEXT = "SPACETIME_TEXT"
CATEGORY = "Spacetime"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_SIZE = 4096
MAX_FRAMES = 1025
SAMPLERS = ["unipc", "euler"]


def seed_input(tooltip: str):
    return ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True, "tooltip": tooltip})


def frame_guidance_input(what: str):
    """The optional frame-guidance widget (model/sampling.py): -1 = the model's default."""
    return ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.1, "round": 0.01,
                      "tooltip": f"{what}: a second guidance that pulls the new frames towards what the known ones "
                                 f"imply, for smoother seams; one more model pass per step while the noise level is "
                                 f"above the model's stop (embedded: 0.3). -1 = the model's default (embedded: 2.5; "
                                 f"Wan: off), 0 = off. Not for models that take the image as channels (Wan i2v)."})


def frame_guidance_value(model, frame_guidance) -> float:
    """The widget's value checked against the model (negative = the model's default), before any work."""
    return model.frame_guidance(None if frame_guidance < 0 else frame_guidance)


def contrast_guidance_input():
    """The optional contrast-guidance widget (model/sampling.py): -1 = the model's default."""
    return ("FLOAT", {"default": -1.0, "min": -1.0, "max": 20.0, "step": 0.1, "round": 0.01,
                      "tooltip": "Contrast guidance: pushes the video away from the contrast prompt of Spacetime "
                                 "Text Encode (the embedded model writes one with the opposite motion), so the "
                                 "asked motion wins over the one the model confuses it with; one more model pass "
                                 "per step while the noise level is above the model's stop (embedded: 0.5). -1 = the "
                                 "model's default (embedded: 3 for text-to-video, off with known frames, where "
                                 "frame guidance works; Wan: off), 0 = off. No effect without a contrast prompt."})


def contrast_guidance_value(model, contrast_guidance):
    """The widget's value checked before any work: None (negative: the model's default, which
    ``model.contrast_guidance`` turns into a number per run) or the scale."""
    value = None if contrast_guidance < 0 else contrast_guidance
    model.contrast_guidance(value)
    return value


def size_input(default: int, what: str):
    return ("INT", {"default": default, "min": 16, "max": MAX_SIZE, "step": 16,
                    "tooltip": f"{what} in pixels; a multiple of 16 (VAE 8x and patch 2x)"})


def frames_input(default: int, tooltip: str, minimum: int = 1):
    # step 1: frame counts are 1 + 4k, and frontends that snap values to multiples of "step" would turn 17 into 16
    return ("INT", {"default": default, "min": minimum, "max": MAX_FRAMES, "step": 1, "tooltip": tooltip})


def check_size(width: int, height: int, multiple: int = 16):
    """VALIDATE_INPUTS helper: True or an error string."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int):          # a linked input: checked at run time
            continue
        if v <= 0 or v % multiple:
            near = max(multiple, round(v / multiple) * multiple)
            return f"{name}={v} is not allowed: it must be a positive multiple of {multiple} (nearest: {near})"
    return True


def check_frames(frames, tf: int = 4, name: str = "frames"):
    if not isinstance(frames, int):
        return True
    if frames < 1 or (frames - 1) % tf:
        lo = max(1, 1 + tf * ((frames - 1) // tf))
        return f"{name}={frames} is not allowed: it must be 1 + {tf}*k (e.g. {lo} or {lo + tf})"
    return True


def first_error(*results):
    for r in results:
        if r is not True:
            return r
    return True


def latent_dict(samples, noise_mask=None, **extra) -> dict:
    out = {"samples": samples}
    if noise_mask is not None:
        out["noise_mask"] = noise_mask
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def cuts_from_latent(latent: dict) -> list:
    """A storyboard LATENT's ``spacetime_cuts`` (latent frames where shots begin; none for other latents), checked
    against its length before any work."""
    from ..model.vae import check_restarts
    cuts = list(latent.get("spacetime_cuts") or ())
    check_restarts(cuts, latent["samples"].shape[2], "latent['spacetime_cuts']")
    return cuts


def known_mask_from_latent(latent: dict):
    """[B, F'] float, 1 = known, from a LATENT's noise_mask (a per-frame mask; spatial masks are averaged)."""
    import torch
    s = latent["samples"]
    nm = latent.get("noise_mask")
    if nm is None:
        return torch.zeros(s.shape[0], s.shape[2])
    nm = nm.float()
    if nm.dim() == 5:
        per_frame = nm.mean(dim=(1, 3, 4))                       # [B or 1, F']
    elif nm.dim() == 3 and nm.shape[0] == s.shape[2]:
        per_frame = nm.mean(dim=(1, 2))[None]                    # [F', H, W] image-style masks
    else:
        raise ValueError(f"latent noise_mask of shape {tuple(nm.shape)} is not a per-frame video mask "
                         f"[B, 1, {s.shape[2]}, 1, 1]")
    if per_frame.shape[-1] != s.shape[2]:
        raise ValueError(f"latent noise_mask covers {per_frame.shape[-1]} frames; the latent has {s.shape[2]}")
    return (1.0 - per_frame).expand(s.shape[0], -1).clamp(0, 1)


def noise_mask_from_known(known):
    """[B, F'] known -> LATENT noise_mask [B, 1, F', 1, 1] (1 = generate)."""
    return (1.0 - known.float())[:, None, :, None, None]
