"""Safety Filter nodes: the prompt check before text encoding, the frame check before anything is saved or shown."""
from __future__ import annotations

import json

from . import host
from .common import CATEGORY

POLICY_TOOLTIP = ("Optional: a safety policy file (.toml / .json) merged over the pack's policy (see docs/SAFETY.md). "
                  "Empty = the pack's policy, or the file named by SPACETIME_SAFETY_POLICY.")


def _policy(policy_file: str):
    return policy_file.strip() or None if isinstance(policy_file, str) else None


class SpacetimeSafetyPromptFilter:
    DESCRIPTION = ("Checks a prompt against the usage policy before any text encoding or sampling. A prompt that "
                   "violates a blocking category stops the graph with an error naming the category; otherwise the "
                   "prompt passes through unchanged, with a report for the Provenance Stamp. Spelling tricks "
                   "(spacing, punctuation, leetspeak, look-alike letters) are undone first; a lexical layer and a "
                   "MiniLM semantic layer score each category.")
    CATEGORY = f"{CATEGORY}/Safety"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "report")
    OUTPUT_TOOLTIPS = ("The same prompt, only when allowed: wire it into Spacetime Text Encode.",
                       "The verdict as JSON (categories, scores, evidence): wire it into Provenance Stamp.")
    FUNCTION = "check"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                  "default": "a red ball bounces on a navy background",
                                  "tooltip": "The prompt to check; it is passed on unchanged when allowed."}),
        }, "optional": {
            "policy_file": ("STRING", {"default": "", "tooltip": POLICY_TOOLTIP}),
        }}

    def check(self, prompt, policy_file=""):
        from ..safety.prompt import PromptBlockedError, check_prompt
        verdict = check_prompt(prompt, policy=_policy(policy_file))
        if verdict.blocked:
            raise PromptBlockedError(verdict)
        if verdict.verdict == "warn":
            print(f"[spacetime] safety warning for the prompt: {verdict.summary()}")
        return (prompt, json.dumps(verdict.to_dict()))


class SpacetimeSafetyFrameFilter:
    DESCRIPTION = ("Reviews every frame with the policy's image classifiers (by default open_nsfw, offline) before "
                   "the frames leave this node. A clip with a flagged frame in a blocking category is withheld: "
                   "the graph stops with an error listing the frames and categories, and nothing is saved or "
                   "previewed. Otherwise the frames pass through, with a report for the Provenance Stamp.")
    CATEGORY = f"{CATEGORY}/Safety"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("frames", "report")
    OUTPUT_TOOLTIPS = ("The same frames, only when allowed.",
                       "The review as JSON (per-frame scores, flagged frames): wire it into Provenance Stamp.")
    FUNCTION = "review"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "Video frames [T, H, W, C] from Spacetime VAE Decode (or any IMAGE)."}),
        }, "optional": {
            "policy_file": ("STRING", {"default": "", "tooltip": POLICY_TOOLTIP}),
        }}

    def review(self, frames, policy_file=""):
        from ..safety.frames import FramesWithheldError, check_frames
        bar = host.Progress(int(frames.shape[0]) if hasattr(frames, "shape") and len(frames.shape) == 4 else 1,
                            "review frames")

        def progress(done, total):
            bar.total = max(1, total)
            bar.update(done - bar.done)
        report = check_frames(frames, policy=_policy(policy_file), progress=progress)
        if report.blocked:
            raise FramesWithheldError(report)
        if report.verdict == "warn":
            print(f"[spacetime] safety warning for the frames: {report.summary()}")
        return (frames, json.dumps(report.to_dict()))


NODE_CLASS_MAPPINGS = {"SpacetimeSafetyPromptFilter": SpacetimeSafetyPromptFilter,
                       "SpacetimeSafetyFrameFilter": SpacetimeSafetyFrameFilter}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeSafetyPromptFilter": "Spacetime Safety Filter (prompt)",
                              "SpacetimeSafetyFrameFilter": "Spacetime Safety Filter (frames)"}
