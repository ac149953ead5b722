"""Spacetime LoRA: one LoRA on the model's DiT; chain several for several LoRAs."""
from __future__ import annotations

from . import host
from .common import CATEGORY, MODEL

NO_FILES = "(no files in models/loras)"
MODES = ["auto", "merged", "unmerged"]
EXPERTS = ["both", "high_noise", "low_noise"]


def _loras() -> list[str]:
    return host.list_model_files("loras") or [NO_FILES]


class SpacetimeLoRA:
    DESCRIPTION = ("Adds a LoRA to the model's transformer (chain nodes for several LoRAs). Every key of the file "
                   "must land on the model or the node fails, naming the keys that did not and the closest layers. "
                   "Inside ComfyUI the change goes through its model patching, so it comes off again when a graph "
                   "without this LoRA runs. Reads kohya, LyCORIS (LoCon, LoHa, LoKr), diffusers / PEFT, ComfyUI and "
                   "plain Wan key names, alpha and rank-stabilised alpha, full and bias deltas. On a Wan 2.2 A14B "
                   "model the LoRA goes on both experts, or on the one chosen in expert.")
    CATEGORY = f"{CATEGORY}/Model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The same model with this LoRA added; the input model stays as it was.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader or another Spacetime LoRA."}),
            "lora_name": (_loras(), {"tooltip": "A LoRA file in ComfyUI's models/loras folder."}),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                                   "tooltip": "How much of the LoRA's change to apply (0 = none, 1 = as trained; "
                                              "negative values subtract it)."}),
            "mode": (MODES, {"default": "auto", "tooltip": "auto: merged into full-precision weights, run beside "
                             "quantised (fp8 / GGUF) ones. merged: always merged (fast; not for quantised weights). "
                             "unmerged: added at run time, weights untouched (exact)."}),
        }, "optional": {
            "expert": (EXPERTS, {"default": "both", "tooltip": "Two-expert models (Wan 2.2 A14B): the expert(s) the "
                                 "LoRA goes on. Wan 2.2 LoRAs made per expert come as a high-noise and a low-noise "
                                 "file: chain two nodes. Single-DiT models: both."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, lora_name, strength=1.0, mode="auto", expert="both", **kwargs):
        if lora_name == NO_FILES:
            return "lora_name: no LoRA files found; put .safetensors LoRAs in ComfyUI's models/loras folder"
        if isinstance(mode, str) and mode not in MODES:
            return f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}"
        if isinstance(expert, str) and expert not in EXPERTS:
            return f"expert={expert!r} is not allowed; allowed: {', '.join(EXPERTS)}"
        return True

    def apply(self, model, lora_name, strength=1.0, mode="auto", expert="both"):
        if lora_name == NO_FILES:
            raise ValueError("lora_name: no LoRA files found; put .safetensors LoRAs in ComfyUI's models/loras folder")
        if strength == 0:
            return (model,)
        return (model.with_lora(host.model_file_path("loras", lora_name), strength, mode, expert),)


NODE_CLASS_MAPPINGS = {"SpacetimeLoRA": SpacetimeLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeLoRA": "Spacetime LoRA"}
