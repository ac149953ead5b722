"""Long Video, Save Long Video (streamed) and Storyboard: videos of any length and multi-shot videos."""
from __future__ import annotations

import json
import math

from . import host
from .common import (CATEGORY, MAX_FRAMES, MODEL, SAMPLERS, check_size, contrast_guidance_input,
                     contrast_guidance_value, cuts_from_latent, first_error, frame_guidance_input,
                     frame_guidance_value, frames_input, latent_dict, seed_input, size_input)

LONG_MAX_FRAMES = 16385                  # 34 minutes at 8 fps; memory does not grow with the length
STORY_MODES = ["text", "reference", "text+reference"]


def _sampling_inputs() -> dict:
    return {
        "seed": seed_input("Noise seed; every window / shot gets its own seed derived from it."),
        "steps": ("INT", {"default": 20, "min": 1, "max": 200, "tooltip": "Sampling steps per window (embedded "
                          "model: 20; Wan: 30-50)."}),
        "cfg": ("FLOAT", {"default": 5.0, "min": 1.0, "max": 20.0, "step": 0.1, "round": 0.01,
                          "tooltip": "Guidance scale; 1 disables the negative-prompt pass."}),
        "shift": ("FLOAT", {"default": 3.0, "min": 0.1, "max": 30.0, "step": 0.1, "round": 0.01,
                            "tooltip": "Timestep shift (embedded: 3; Wan 1.3B: 8-12; 14B: 5)."}),
        "sampler": (SAMPLERS, {"default": "unipc", "tooltip": "unipc (Wan's solver) or euler."}),
        "expand_prompt": ("BOOLEAN", {"default": True, "tooltip": "Rewrite short prompts into the model's detailed "
                                      "caption style (embedded model only)."}),
    }


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in (text or "").splitlines() if ln.strip()]


def parse_anchor_frames(text) -> list[int]:
    """'0, 8' -> [0, 8]; empty -> []."""
    if isinstance(text, (list, tuple)):
        return [int(x) for x in text]
    parts = [p.strip() for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"anchor_frames={text!r} is not allowed; allowed: frame numbers of the first window "
                         f"separated by commas (e.g. '0'), or empty for none") from None


def frame_list(numbers) -> str:
    """Frame numbers as text for the generation record ('17, 33'): C2PA stores a list of small integers as bytes."""
    return ", ".join(str(int(n)) for n in numbers)


def _check_prompts(prompts):
    from ..safety.prompt import PromptBlockedError, check_prompt
    for p in prompts:
        verdict = check_prompt(p)
        if verdict.blocked:
            raise PromptBlockedError(verdict)


def _info(model, **extra) -> str:
    base = {"model": model.preset.name, "checkpoint_sha256": model.checkpoint_sha256()}
    base.update(extra)
    return json.dumps(base)


def contrast_record(model, prompts, requested, image: bool) -> dict:
    """Record keys of contrast guidance in a long video: the windows it ran on (a value given: all; the default:
    the first, whose frames are all new unless an image is given), their prompts' contrast prompts (one per prompt,
    "" where none), the scale and the stop level; none when it did not run."""
    every = requested is not None
    contrasts = [model.contrast_for(p) for p in (prompts if every else prompts[:1])]
    scale = model.contrast_guidance(requested, known_frames=image)
    if scale <= 0 or not any(contrasts):
        return {}
    return {"contrasts": contrasts, "contrast_cfg": scale, "contrast_cfg_stop": model.preset.contrast_cfg_stop,
            "contrast_windows": "all" if every else "first"}


class SpacetimeLongVideo:
    DESCRIPTION = ("Generates a video of any length as overlapping windows over one latent timeline: each window "
                   "continues the last frames of the one before (known latent frames, no pixel round trip), anchor "
                   "frames of the first window (e.g. frame 0) are re-used as known frames in every later window to "
                   "keep identity, and each window can have its own prompt. The latent is kept in a file-backed "
                   "buffer, so memory does not grow with the length; save it with Spacetime Save Long Video, which "
                   "decodes and writes the MP4 as frames arrive.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "generation_info")
    OUTPUT_TOOLTIPS = ("The whole video's latent (raw VAE space).", "JSON with the settings used (for the stamp).")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "prompts": ("STRING", {"multiline": True, "default": "a red ball bounces on a navy background",
                                   "tooltip": "One prompt per line, one line per window in order; the last line "
                                              "holds for the remaining windows."}),
            "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "What to steer away from. Empty "
                                    "uses the preset's default negative prompt."}),
            "width": size_input(64, "Video width"),
            "height": size_input(64, "Video height"),
            "frames": ("INT", {"default": 161, "min": 1, "max": LONG_MAX_FRAMES, "step": 1,
                               "tooltip": "Length of the whole video: 1 + 4k frames (961 = 2 minutes at 8 fps)."}),
            "window_frames": frames_input(17, "Frames the model sees at once: 1 + 4k (embedded: 17; Wan: 81).", 9),
            "overlap_frames": ("INT", {"default": 4, "min": 4, "max": MAX_FRAMES, "step": 4,
                                       "tooltip": "Frames of the previous window each window continues from (a "
                                                  "multiple of 4)."}),
            "anchor_frames": ("STRING", {"default": "", "tooltip": "Frames of the first window re-used as known "
                                         "frames in every later window, comma-separated (0 = the first frame); "
                                         "empty: none."}),
            **_sampling_inputs(),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "Optional first frame (scaled and centre-cropped to the video's size)."}),
            "frame_guidance": frame_guidance_input("On the frames each window continues"),
            "contrast_guidance": contrast_guidance_input(),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, width=64, height=64, frames=161, window_frames=17, overlap_frames=4, anchor_frames="",
                        **_):
        ints = (frames, window_frames, overlap_frames)
        if not all(isinstance(v, int) for v in ints) or not isinstance(anchor_frames, str):
            return check_size(width, height)
        try:
            from ..model.longvideo import long_video_plan
            long_video_plan(frames, window_frames, overlap_frames, parse_anchor_frames(anchor_frames))
        except ValueError as exc:
            return str(exc)
        return check_size(width, height)

    def generate(self, model, prompts, negative, width, height, frames, window_frames, overlap_frames, anchor_frames,
                 seed=0, steps=20, cfg=5.0, shift=3.0, sampler="unipc", expand_prompt=True, image=None,
                 frame_guidance=-1.0, contrast_guidance=-1.0):
        from ..model.longvideo import file_backed_latents, long_video_latents, long_video_plan
        lines = _lines(prompts)
        if not lines:
            raise ValueError("prompts is empty; give one prompt per line (one line per window, the last holds)")
        anchors = parse_anchor_frames(anchor_frames)
        model.check_shape(width, height, frames)
        frame_cfg = frame_guidance_value(model, frame_guidance)
        contrast_cfg = contrast_guidance_value(model, contrast_guidance)
        windows = len(long_video_plan(frames, window_frames, overlap_frames, anchors, model.temporal_factor))
        _check_prompts(lines)
        img = None
        if image is not None:
            from .latent_nodes import _resize_cover
            img = _resize_cover(image[:1], width, height)[0]
        bar = host.Progress(windows * steps, "long video")
        host.use(model, "text")
        gen = long_video_latents(model, lines, negative, frames=frames, width=width, height=height,
                                 window_frames=window_frames, overlap_frames=overlap_frames, anchor_frames=anchors,
                                 seed=seed, steps=steps, cfg=cfg, shift=shift, sampler=sampler, image=img,
                                 expand_prompt=expand_prompt, callback=lambda k, i, n: bar.update(1),
                                 frame_cfg=frame_cfg, contrast_cfg=contrast_cfg)
        host.use(model, "vae")
        host.use(model, "dit")
        latents = file_backed_latents(model.latent_shape(1, frames, height, width), host.temp_directory())
        for r in gen:
            latents[:, :, r.window.start:r.window.stop] = r.latents
        info = _info(model, seed=int(seed), steps=steps, cfg=cfg, shift=shift, sampler=sampler, frames=frames,
                     width=width, height=height, prompt="\n".join(lines), negative=negative, windows=windows,
                     window_frames=window_frames, overlap_frames=overlap_frames, anchor_frames=frame_list(anchors),
                     frame_cfg=frame_cfg, frame_cfg_stop=model.preset.frame_cfg_stop,
                     **contrast_record(model, lines, contrast_cfg, img is not None))
        return (latent_dict(latents), info)


class SpacetimeSaveLongVideo:
    DESCRIPTION = ("Saves a video latent of any length as a watermarked, C2PA-signed MP4, streaming: the latent is "
                   "decoded one latent frame at a time, every piece is reviewed by the frame classifier, watermarked "
                   "and encoded as it arrives, and the manifest (with the review of every frame) is signed as the "
                   "last write. Memory does not grow with the length; a cancelled or blocked run leaves no file.")
    CATEGORY = f"{CATEGORY}/Provenance"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("path", "report")
    OUTPUT_TOOLTIPS = ("The saved MP4's path.", "What was written and signed, as JSON.")
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader (its VAE decodes)."}),
            "latent": ("LATENT", {"tooltip": "From Spacetime Long Video or Storyboard (its cuts stay hard), or "
                                             "any video latent."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Frame rate of the MP4 (the embedded model: 8; Wan 2.1: 16)."}),
            "filename_prefix": ("STRING", {"default": "spacetime_long", "tooltip": "File name start in the output "
                                           "folder (sub/folder/name allowed); _00001.mp4, ... follow."}),
            "include_prompt": ("BOOLEAN", {"default": False, "tooltip": "Record the prompts' text in the signed "
                                           "manifest. Off: only their sha256 is recorded."}),
        }, "optional": {
            "generation_info": ("STRING", {"default": "", "tooltip": "Link Spacetime Long Video's generation_info."}),
            "prompt_report": ("STRING", {"default": "", "tooltip": "Link Safety Filter (prompt)'s report."}),
        }}

    def save(self, model, latent, fps=8.0, filename_prefix="spacetime_long", include_prompt=False,
             generation_info="", prompt_report=""):
        from ..model.longvideo import latent_pieces, stream_frames
        from ..provenance.stamp import StampWriter
        from ..safety.frames import FrameReview
        from .provenance_nodes import StampTarget
        s = latent["samples"]
        z = model.preset.vae.z_dim
        if s.dim() != 5 or s.shape[1] != z:
            raise ValueError(f"latent has shape {tuple(s.shape)}; {model.preset.name} needs [B, {z}, F, H, W]")
        cuts = cuts_from_latent(latent)                  # before any file is opened
        target = StampTarget(filename_prefix, generation_info, prompt_report)
        total = model.temporal_factor * (s.shape[2] - 1) + 1
        host.use(model, "vae")
        bar = host.Progress(s.shape[2], "save long video")
        with StampWriter(target.path, float(fps), target.generation, target.text or None, bool(include_prompt),
                         target.ingredients, target.reports, numbered=True, preview_path=target.preview,
                         review=FrameReview(), preview_stride=max(1, math.ceil(total / 64))) as writer:
            for frames in stream_frames(model, latent_pieces(s), cuts, s.shape[2]):
                writer.write(frames)
                bar.update(1)
        target.reports.append(writer.review.report().to_dict())
        return target.result(writer.info)


class SpacetimeStoryboard:
    DESCRIPTION = ("Generates one video of several shots with hard cuts at the requested frames. Shots: one per "
                   "line, 'FRAMES: PROMPT' (the first shot 1 + 4k frames, later shots multiples of 4) or just "
                   "'PROMPT' (such shots share the frames left of the total). Conditioning: 'text' samples the story "
                   "as one sequence in which each shot's frames read their own prompt; 'reference' samples shot by "
                   "shot, each continuing from the previous shot's last frames as known frames; 'text+reference' "
                   "does both. Decode with Spacetime VAE Decode.")
    CATEGORY = f"{CATEGORY}/Sampling"
    RETURN_TYPES = ("LATENT", "STRING")
    RETURN_NAMES = ("latent", "generation_info")
    OUTPUT_TOOLTIPS = ("The story's latent (raw VAE space), with its cuts, which Spacetime VAE Decode keeps hard.",
                       "JSON with the settings, shots and cut frames.")
    FUNCTION = "generate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "shots": ("STRING", {"multiline": True,
                                 "default": "17: a red ball stays still on a navy background\n"
                                            "16: a red ball bounces on a beige background",
                                 "tooltip": "One shot per line: 'FRAMES: PROMPT' or 'PROMPT'."}),
            "negative": ("STRING", {"multiline": True, "default": "", "tooltip": "What to steer away from in every "
                                    "shot. Empty uses the preset's default negative prompt."}),
            "width": size_input(64, "Video width"),
            "height": size_input(64, "Video height"),
            "frames": frames_input(0, "Length of the whole video (1 + 4k); 0: the shots' frame counts add up to "
                                      "it.", 0),
            "conditioning": (STORY_MODES, {"default": "text", "tooltip": "text: per-shot prompts in one sequence. "
                             "reference: shot by shot from the previous shot's last frames. text+reference: both."}),
            "reference_frames": ("INT", {"default": 4, "min": 4, "max": 64, "step": 4, "tooltip": "reference modes: "
                                         "frames of the previous shot known at the start of the next (a multiple "
                                         "of 4)."}),
            **_sampling_inputs(),
        }, "optional": {
            "frame_guidance": frame_guidance_input("Reference modes, on the previous shot's frames"),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, shots="", frames=0, width=64, height=64, **_):
        if not isinstance(shots, str) or not isinstance(frames, int):
            return check_size(width, height)
        try:
            from ..model.storyboard import plan_story
            plan_story(shots, frames)
        except ValueError as exc:
            return str(exc)
        return first_error(check_size(width, height))

    def generate(self, model, shots, negative, width, height, frames, conditioning, reference_frames, seed=0,
                 steps=20, cfg=5.0, shift=3.0, sampler="unipc", expand_prompt=True, frame_guidance=-1.0):
        from ..model.storyboard import MODES, plan_story, storyboard_latents
        if conditioning not in MODES:
            raise ValueError(f"conditioning={conditioning!r} is not allowed; allowed: {', '.join(MODES)}")
        plan = plan_story(shots, frames, model.temporal_factor)
        model.check_shape(width, height, plan.frames)
        frame_cfg = frame_guidance_value(model, frame_guidance)
        _check_prompts([s.prompt for s in plan.shots])
        windows = 1 if conditioning == "text" else len(plan.shots)
        bar = host.Progress(windows * steps, "storyboard")
        for part in ("text", "vae", "dit"):
            host.use(model, part)
        raw, plan = storyboard_latents(model, plan.shots, negative, width=width, height=height, mode=conditioning,
                                       reference_frames=reference_frames, seed=seed, steps=steps, cfg=cfg,
                                       shift=shift, sampler=sampler, expand_prompt=expand_prompt,
                                       callback=lambda k, i, n: bar.update(1), frame_cfg=frame_cfg)
        info = _info(model, seed=int(seed), steps=steps, cfg=cfg, shift=shift, sampler=sampler, frames=plan.frames,
                     width=width, height=height, prompt="\n".join(s.prompt for s in plan.shots), negative=negative,
                     conditioning=conditioning, shots=frame_list(s.frames for s in plan.shots),
                     cuts=frame_list(plan.cuts),
                     **({} if conditioning == "text" else {"frame_cfg": frame_cfg,
                                                          "frame_cfg_stop": model.preset.frame_cfg_stop}))
        return (latent_dict(raw, spacetime_cuts=plan.latent_cuts), info)


NODE_CLASS_MAPPINGS = {"SpacetimeLongVideo": SpacetimeLongVideo, "SpacetimeSaveLongVideo": SpacetimeSaveLongVideo,
                       "SpacetimeStoryboard": SpacetimeStoryboard}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeLongVideo": "Spacetime Long Video",
                              "SpacetimeSaveLongVideo": "Spacetime Save Long Video (streamed MP4)",
                              "SpacetimeStoryboard": "Spacetime Storyboard (multi-shot)"}
