"""Noise Latent, VAE Encode, Image to Video, Extend: the nodes that make a LATENT (with its known frames)."""
from __future__ import annotations

from . import host
from .common import (CATEGORY, MODEL, check_frames, check_size, first_error, frames_input, latent_dict,
                     noise_mask_from_known, seed_input, size_input)


def _resize_cover(frames, width: int, height: int):
    """[T, H, W, C] 0..1 -> [T, height, width, C]: scale to cover, centre-crop (antialiased bicubic)."""
    import torch.nn.functional as F
    t, h, w, c = frames.shape
    if (h, w) == (height, width):
        return frames
    s = max(width / w, height / h)
    nh, nw = max(height, round(h * s)), max(width, round(w * s))
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bicubic", antialias=True,
                      align_corners=False).clamp(0, 1)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return x[:, :, y0:y0 + height, x0:x0 + width].permute(0, 2, 3, 1)


def _ingredient_files(frames, name: str) -> list[str]:
    """Write a conditioning input to the temp folder (PNG for one frame, PNG frames strip otherwise) so the
    provenance stamp can list it as an ingredient."""
    import hashlib
    import numpy as np
    from PIL import Image
    d = host.temp_directory() / "spacetime_ingredients"
    d.mkdir(parents=True, exist_ok=True)
    arr = (frames[..., :3].clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    strip = np.concatenate(list(arr), axis=1) if arr.shape[0] > 1 else arr[0]
    digest = hashlib.sha256(arr.tobytes()).hexdigest()[:16]
    path = d / f"{name}_{digest}.png"
    if not path.exists():
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(strip).save(tmp)
        tmp.replace(path)
    return [str(path)]


def _check_model_latent(model, latent, what="latent"):
    s = latent["samples"]
    z = model.preset.vae.z_dim
    if s.dim() != 5 or s.shape[1] != z:
        raise ValueError(f"{what} has shape {tuple(s.shape)}; this model needs a video latent [B, {z}, F, H, W] "
                         f"(make it with Spacetime Noise Latent or Spacetime VAE Encode)")


class SpacetimeNoiseLatent:
    DESCRIPTION = ("An empty video latent of the given size and length, and the seed of its starting noise. "
                   "Any duration, resolution and aspect ratio the model supports.")
    CATEGORY = f"{CATEGORY}/Latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader (gives the latent channels and strides)."}),
            "width": size_input(64, "Video width"),
            "height": size_input(64, "Video height"),
            "frames": frames_input(17, "Number of frames: 1 + 4k (17 = 2 s at 8 fps, 81 = 5 s at 16 fps)."),
            "batch": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Videos generated side by side; video "
                              "b uses seed + b, so each matches a single run with that seed."}),
            "seed": seed_input("Seed of the starting noise (added to Spacetime Denoise's seed)."),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=64, height=64, frames=17, **_):
        return first_error(check_size(width, height), check_frames(frames))

    def make(self, model, width, height, frames, batch=1, seed=0):
        import torch
        model.check_shape(width, height, frames)
        shape = model.latent_shape(batch, frames, height, width)
        return (latent_dict(torch.zeros(shape), noise_seed=int(seed)),)


class SpacetimeVAEEncode:
    DESCRIPTION = "Encodes video frames (IMAGE, frames as the batch) into a raw video latent with the causal VAE."
    CATEGORY = f"{CATEGORY}/Latent"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "frames": ("IMAGE", {"tooltip": "Video frames [T, H, W, C]; T = 1 + 4k, sides multiples of 16."}),
        }}

    def encode(self, model, frames):
        host.use(model, "vae")
        return (latent_dict(model.encode(frames)),)


class SpacetimeImageToVideo:
    DESCRIPTION = ("Animates a still image: the image becomes a known frame of the latent (first frame, or held "
                   "at the end), and Spacetime Denoise generates the rest. The image is scaled and centre-cropped "
                   "to the latent's size.")
    CATEGORY = f"{CATEGORY}/Conditioning"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "latent": ("LATENT", {"tooltip": "From Spacetime Noise Latent: size, length and seed of the video."}),
            "image": ("IMAGE", {"tooltip": "The still image (the first frame of a batch is used)."}),
            "position": (["start", "end"], {"default": "start", "tooltip": "start: the video begins with the "
                         "image. end: the video ends on it (held for the last 4 frames)."}),
        }}

    def apply(self, model, latent, image, position="start"):
        from ..model.conditioning import Placement, to_video
        _check_model_latent(model, latent)
        s = latent["samples"]
        B, _, Fp, Hp, Wp = s.shape
        sf, tf = model.preset.vae.spatial_factor, model.temporal_factor
        H, W, T = Hp * sf, Wp * sf, 1 + tf * (Fp - 1)
        img = _resize_cover(image[:1], W, H)
        pl = Placement.empty(1, T, H, W)
        clip = to_video(img)
        if position == "start":
            pl.put(0, clip)
        else:
            hold = 1 if T == 1 else tf
            pl.put(T - hold, clip.expand(-1, -1, hold, -1, -1))
        host.use(model, "vae")
        cond = model.condition_from_frames(pl)
        known = cond.mask[:1].expand(B, -1)
        samples = model.denormalize(cond.latents[:1]).expand(B, -1, -1, -1, -1)
        if not model.concat_conditioned:              # models fed the whole encoded clip (concat.py) keep it
            samples = samples * known[:, None, :, None, None]
        out = dict(latent)
        out.update(latent_dict(samples.contiguous(), noise_mask_from_known(known),
                               spacetime_ingredients=list(latent.get("spacetime_ingredients", []))
                               + _ingredient_files(img, "image")))
        return (out,)


class SpacetimeExtend:
    DESCRIPTION = ("Extends a clip: forward (new frames after it), backward (new frames leading into it) or fill "
                   "(new frames between it and a second clip or keyframe). Works on frames or, to avoid a pixel "
                   "round trip, on latents. The output latent holds the whole clip; its known frames are kept by "
                   "Spacetime Denoise.")
    CATEGORY = f"{CATEGORY}/Conditioning"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "direction": (["forward", "backward", "fill"], {"default": "forward", "tooltip": "forward: continue "
                          "after the clip. backward: lead into the clip. fill: bridge the clip and 'after'."}),
            "new_frames": ("INT", {"default": 16, "min": 4, "max": 1024, "step": 4, "tooltip": "Frames to "
                           "generate (a multiple of 4; rounded up when the clip lengths need it)."}),
        }, "optional": {
            "frames": ("IMAGE", {"tooltip": "The clip to extend, as frames (resized to a multiple of 16)."}),
            "latent": ("LATENT", {"tooltip": "The clip to extend, as a latent (stays in latent space)."}),
            "after_frames": ("IMAGE", {"tooltip": "fill: the clip or keyframe that comes after the gap."}),
            "after_latent": ("LATENT", {"tooltip": "fill: the clip after the gap, as a latent."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, new_frames=16, direction="forward", **_):
        if isinstance(new_frames, int) and (new_frames < 4 or new_frames % 4):
            return f"new_frames={new_frames} is not allowed: it must be a positive multiple of 4"
        if direction not in ("forward", "backward", "fill"):
            return f"direction={direction!r} is not allowed; allowed: forward, backward, fill"
        return True

    def extend(self, model, direction, new_frames, frames=None, latent=None, after_frames=None, after_latent=None):
        if (frames is None) == (latent is None):
            raise ValueError("Spacetime Extend needs exactly one of 'frames' or 'latent' (the clip to extend)")
        if direction == "fill" and after_frames is None and after_latent is None:
            raise ValueError("direction='fill' needs 'after_frames' or 'after_latent' (the clip after the gap)")
        if direction != "fill" and (after_frames is not None or after_latent is not None):
            raise ValueError(f"'after_frames'/'after_latent' are only used with direction='fill' (got {direction!r})")
        if new_frames < 4 or new_frames % 4:
            raise ValueError(f"new_frames={new_frames} is not allowed: it must be a positive multiple of 4")
        host.use(model, "vae")
        if latent is not None and (direction != "fill" or after_latent is not None):
            return (self._in_latent_space(model, direction, new_frames, latent, after_latent),)
        return (self._from_frames(model, direction, new_frames, frames, latent, after_frames, after_latent),)

    # -- latent space: no pixel round trip. A clip's first latent is a single-frame latent, so placed anywhere
    #    but the start it is regenerated (as the last frame of the slot before the clip's later latents).
    def _in_latent_space(self, model, direction, new_frames, latent, after_latent):
        import torch
        _check_model_latent(model, latent)
        a = latent["samples"][:1].float()
        tf = model.temporal_factor
        k = -(-new_frames // tf)
        C, H, W = a.shape[1], a.shape[3], a.shape[4]
        if direction == "forward":
            parts, known = [a, torch.zeros(1, C, k, H, W)], [1] * a.shape[2] + [0] * k
        elif direction == "backward":
            parts, known = [torch.zeros(1, C, k + 1, H, W), a[:, :, 1:]], [0] * (k + 1) + [1] * (a.shape[2] - 1)
        else:
            _check_model_latent(model, after_latent, "after_latent")
            b = after_latent["samples"][:1].float()
            if b.shape[3:] != a.shape[3:]:
                raise ValueError(f"after_latent is {tuple(b.shape[3:])} but latent is {tuple(a.shape[3:])}")
            parts = [a, torch.zeros(1, C, k + 1, H, W), b[:, :, 1:]]
            known = [1] * a.shape[2] + [0] * (k + 1) + [1] * (b.shape[2] - 1)
        known_t = torch.tensor([known], dtype=torch.float32)
        return latent_dict(torch.cat(parts, dim=2), noise_mask_from_known(known_t),
                           spacetime_ingredients=list(latent.get("spacetime_ingredients", [])))

    def _from_frames(self, model, direction, new_frames, frames, latent, after_frames, after_latent):
        from ..model.pipeline import plan_task
        sf = model.size_multiple
        if frames is None:                      # fill from a latent with an 'after' given as frames
            frames = model.decode(latent["samples"][:1])[0]
        H, W = frames.shape[1], frames.shape[2]
        H2, W2 = max(sf, round(H / sf) * sf), max(sf, round(W / sf) * sf)
        clip = _resize_cover(frames, W2, H2)
        after = None
        if direction == "fill":
            after = after_frames if after_frames is not None else model.decode(after_latent["samples"][:1])[0]
            after = _resize_cover(after, W2, H2)
        plan = plan_task(model.temporal_factor, W2, H2, new_frames, 1, extend=clip, direction=direction, after=after)
        cond = model.condition_from_frames(plan.placement)
        if cond is None:
            raise ValueError("no latent frame of the clip is fully known; give at least one frame")
        samples = model.denormalize(cond.latents)
        if not model.concat_conditioned:
            samples = samples * cond.mask[:, None, :, None, None]
        ingredients = _ingredient_files(frames, "clip") + (_ingredient_files(after, "after") if after is not None
                                                           else [])
        return latent_dict(samples, noise_mask_from_known(cond.mask), spacetime_ingredients=ingredients)


NODE_CLASS_MAPPINGS = {
    "SpacetimeNoiseLatent": SpacetimeNoiseLatent,
    "SpacetimeVAEEncode": SpacetimeVAEEncode,
    "SpacetimeImageToVideo": SpacetimeImageToVideo,
    "SpacetimeExtend": SpacetimeExtend,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SpacetimeNoiseLatent": "Spacetime Noise Latent",
    "SpacetimeVAEEncode": "Spacetime VAE Encode",
    "SpacetimeImageToVideo": "Spacetime Image to Video",
    "SpacetimeExtend": "Spacetime Extend",
}
