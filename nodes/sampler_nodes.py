"""Spacetime Denoise and Spacetime VAE Decode."""
from __future__ import annotations

import json

from . import host
from .common import (CATEGORY, MAX_SEED, MODEL, SAMPLERS, TEXT, contrast_guidance_input, contrast_guidance_value,
                     cuts_from_latent, frame_guidance_input, frame_guidance_value, known_mask_from_latent,
                     latent_dict, seed_input)


def _preview(model, x0_norm):
    """A small RGB preview of the middle latent frame of the current x0 estimate (None when the model has no
    latent-to-RGB table)."""
    table = getattr(model.preset, "latent_rgb", None)
    if not table:
        return None
    import numpy as np
    import torch
    from PIL import Image
    mid = x0_norm.shape[2] // 2
    raw = model.denormalize(x0_norm[:1, :, mid:mid + 1])[:, :, 0]             # [1, C, H', W']
    w = torch.tensor(table["weight"], dtype=torch.float32)                    # [3, C]
    b = torch.tensor(table["bias"], dtype=torch.float32)
    rgb = torch.einsum("oc,chw->hwo", w, raw[0].float()) + b
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).byte().numpy()
    img = Image.fromarray(arr).resize((arr.shape[1] * 8, arr.shape[0] * 8), Image.NEAREST)
    try:                      # previews are frames too: the frame classifier sees them before the user does
        from ..safety import check_frames
        if check_frames(np.asarray(img)[None]).blocked:
            return None
    except Exception:         # no classifier available: no preview rather than an unreviewed one
        return None
    return ("JPEG", img, 512)


class SpacetimeDenoise:
    DESCRIPTION = ("Generates the video latent with the spacetime transformer: flow matching with classifier-free "
                   "guidance. Known frames in the latent (from Image to Video or Extend) get timestep 0 and are "
                   "kept; strength below 1 re-noises the input latent partially (video-to-video); step_cache above "
                   "0 skips the transformer on steps that change little.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "generation_info")
    OUTPUT_TOOLTIPS = ("The denoised video latent.", "JSON with the settings used (for Spacetime Provenance Stamp).")
    FUNCTION = "denoise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "text": (TEXT, {"tooltip": "From Spacetime Text Encode."}),
            "latent": ("LATENT", {"tooltip": "From Noise Latent, Image to Video or Extend."}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampling steps (embedded model: 20; "
                              "Wan: 30-50)."}),
            "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1, "round": 0.01,
                              "tooltip": "Guidance scale; 1 disables the negative-prompt pass (twice as fast)."}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.1, "max": 30.0, "step": 0.1, "round": 0.01,
                                "tooltip": "Timestep shift: higher spends more steps at high noise (embedded: 3; "
                                           "Wan 1.3B: 8-12; 14B: 5)."}),
            "sampler": (SAMPLERS, {"default": "unipc", "tooltip": "unipc: Wan's multistep solver (bh2, order 2). "
                                   "euler: first order."}),
            "seed": seed_input("Noise seed (added to Noise Latent's seed)."),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "1: generate from pure noise. Below 1: keep that share of the input "
                                              "latent's structure (video-to-video)."}),
        }, "optional": {
            "expert_boundary": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "round": 0.001,
                                          "tooltip": "Two-expert models (Wan 2.2 A14B): the noise level (sigma) "
                                                     "below which the low-noise expert takes over. 0 = the "
                                                     "preset's: 0.875 text-to-video, 0.9 image-to-video."}),
            "expert_switch_step": ("INT", {"default": 0, "min": 0, "max": 200,
                                           "tooltip": "Two-expert models: switch at this step instead (the first N "
                                                      "steps use the high-noise expert). 0 = use expert_boundary."}),
            "cfg_high_noise": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "round": 0.01,
                                         "tooltip": "Two-expert models: guidance scale of the high-noise expert "
                                                    "(cfg is the low-noise expert's). 0 = the preset's (t2v A14B: "
                                                    "4.0; i2v A14B: 3.5)."}),
            "step_cache": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "round": 0.001,
                                     "tooltip": "Step caching: skip the transformer's blocks on steps whose input "
                                                "changed little and reuse the last computed step's residual. 0 = "
                                                "off; the value is the largest predicted relative change that may "
                                                "be skipped (0.05-0.2). The first steps and the last are always "
                                                "computed; known frames are kept."}),
            "frame_guidance": frame_guidance_input("With known frames (Image to Video, Extend, fill)"),
            "contrast_guidance": contrast_guidance_input(),
        }}

    def denoise(self, model, text, latent, steps=20, cfg=5.0, shift=3.0, sampler="unipc", seed=0, strength=1.0,
                expert_boundary=0.0, expert_switch_step=0, cfg_high_noise=0.0, step_cache=0.0, frame_guidance=-1.0,
                contrast_guidance=-1.0):
        from ..model.sampling import FrameCondition
        s = latent["samples"].float()
        z = model.preset.vae.z_dim
        if s.dim() != 5 or s.shape[1] != z:
            raise ValueError(f"latent has shape {tuple(s.shape)}; {model.preset.name} needs [B, {z}, F, H, W]")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
        if not 0.0 <= step_cache <= 1.0:
            raise ValueError(f"step_cache={step_cache} is not allowed; allowed: 0 (off) to 1")
        frame_cfg = frame_guidance_value(model, frame_guidance)
        requested = contrast_guidance_value(model, contrast_guidance)
        known = known_mask_from_latent(latent)
        contrast_cfg = model.contrast_guidance(requested, bool(known.any()))
        host.use(model, "vae")                       # normalisation statistics live with the VAE
        cond = None
        if known.any():
            if known.all():
                raise ValueError("every latent frame is marked known (noise_mask is all 0): nothing to generate")
            cond = FrameCondition(model.normalize(s), known)
        eff_seed = (int(latent.get("noise_seed", 0)) + int(seed)) % (MAX_SEED + 1)
        bar = host.Progress(steps, "denoise")

        def callback(step, total, x0, x):
            bar.total = total
            bar.update(1, _preview(model, x0))
        cache = None
        if step_cache > 0:
            from ..model.cache import CacheSettings, StepCache
            cache = StepCache(CacheSettings(threshold=float(step_cache)))
        experts = {}
        if model.has_experts:                          # one expert on the device at a time, switched mid-run
            switch = model.expert_switch(expert_boundary or None, expert_switch_step or None)
            experts = dict(switch=switch, cfg_high_noise=cfg_high_noise or None)
            if host.in_comfy():
                experts.update(load=lambda part: host.use(model, part), unload=lambda part: host.release(model, part))
        host.use(model, "dit")                         # (two experts: the high-noise one, used first)
        out = model.sample_latents(text, tuple(s.shape), eff_seed, steps, cfg, shift, sampler, cond,
                                   init=s if strength < 1.0 else None, strength=strength, callback=callback,
                                   cache=cache, frame_cfg=frame_cfg, contrast_cfg=contrast_cfg, **experts)
        info = {"model": model.preset.name, "checkpoint_sha256": model.checkpoint_sha256(), "seed": eff_seed,
                "steps": steps, "cfg": cfg, "shift": shift, "sampler": sampler, "strength": strength,
                "frames": model.preset.vae.temporal_factor * (s.shape[2] - 1) + 1,
                "width": s.shape[4] * model.preset.vae.spatial_factor,
                "height": s.shape[3] * model.preset.vae.spatial_factor,
                "prompt": text.source[0] if text.source else "", "expanded_prompt": text.prompts[0] if text.prompts
                else "", "negative": text.negatives[0] if text.negatives else "",
                "known_frames": int(known[0].sum()), "ingredients": list(latent.get("spacetime_ingredients", []))}
        if experts:
            info.update(model.expert_info(steps, shift, experts["switch"], experts["cfg_high_noise"], cfg))
        info.update(model.weights_record())
        if cache is not None:
            info["step_cache"] = cache.summary()
        if cond is not None:
            info.update(frame_cfg=frame_cfg, frame_cfg_stop=model.preset.frame_cfg_stop)
        if text.contrast_emb is not None and contrast_cfg > 0:
            info.update(contrast=text.contrasts[0], contrast_cfg=contrast_cfg,
                        contrast_cfg_stop=model.preset.contrast_cfg_stop)
        result = latent_dict(out, spacetime_ingredients=latent.get("spacetime_ingredients"))
        return (result, json.dumps(info))


class SpacetimeVAEDecode:
    DESCRIPTION = ("Decodes a video latent to frames (IMAGE, frames as the batch), streaming one latent frame at a "
                   "time so memory does not grow with the clip's length. A storyboard's latent carries its cuts; "
                   "the decoder starts afresh at each, so cuts stay hard.")
    CATEGORY = f"{CATEGORY}/Latent"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "latent": ("LATENT", {"tooltip": "A video latent (raw VAE space)."}),
        }}

    def decode(self, model, latent):
        s = latent["samples"]
        z = model.preset.vae.z_dim
        if s.dim() != 5 or s.shape[1] != z:
            raise ValueError(f"latent has shape {tuple(s.shape)}; {model.preset.name} needs [B, {z}, F, H, W]")
        cuts = cuts_from_latent(latent)
        host.use(model, "vae")
        bar = host.Progress(s.shape[2], "decode")
        frames = model.decode(s, progress=lambda i, n: bar.update(1), cuts=cuts)
        return (frames.reshape(-1, *frames.shape[2:]),)


NODE_CLASS_MAPPINGS = {"SpacetimeDenoise": SpacetimeDenoise, "SpacetimeVAEDecode": SpacetimeVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeDenoise": "Spacetime Denoise", "SpacetimeVAEDecode": "Spacetime VAE Decode"}
