"""Model Loader and Text Encode."""
from __future__ import annotations

from . import host
from .common import CATEGORY, MODEL, TEXT

PRESET_DEFAULT = "(preset default)"
NONE = "(none)"


def _presets() -> list[str]:
    from ..model.config import BUNDLE_PRESETS, bundle_preset
    bundle_preset("toyworld-random")          # makes sure the embedded presets are registered
    names = sorted(BUNDLE_PRESETS)
    first = [n for n in ("toyworld", "toyworld-i2v") if n in names]
    return first + [n for n in names if n not in first]


class SpacetimeModelLoader:
    DESCRIPTION = ("Loads one shared spacetime video model (DiT + VAE + text encoder). The embedded toy-world model "
                   "works offline with no files; Wan presets use files from ComfyUI's diffusion_models, vae and "
                   "text_encoders folders. The same files and settings always give the same loaded model.")
    CATEGORY = f"{CATEGORY}/Model"
    RETURN_TYPES = (MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The shared model handle; wire it into every Spacetime node.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        def files(folder):
            return [PRESET_DEFAULT] + host.list_model_files(folder)
        return {"required": {
            "preset": (_presets(), {"default": _presets()[0], "tooltip": "Architecture and sampling defaults. "
                                    "toyworld = the embedded model (offline), toyworld-i2v its image-to-video weights; "
                                    "wan2.* presets need their files below."}),
            "dit_file": (files("diffusion_models"), {"tooltip": "DiT checkpoint (models/diffusion_models): "
                                                     "safetensors in bf16 / fp16 / fp8 (scaled or not) or GGUF "
                                                     "(Q8_0 ... Q2_K; quantised weights stay quantised). Its "
                                                     "architecture is checked against the preset."}),
            "vae_file": (files("vae"), {"tooltip": "VAE checkpoint (models/vae): wan_2.1_vae.safetensors, or "
                                        "wan2.2_vae.safetensors for wan2.2-ti2v-5b."}),
            "text_encoder_file": (files("text_encoders"), {"tooltip": "Text encoder weights (models/text_encoders), "
                                                           "e.g. umt5_xxl_fp16.safetensors."}),
            "tokenizer_file": (files("text_encoders"), {"tooltip": "tokenizer.json of the text encoder (umT5-XXL: "
                                                        "google/umt5-xxl/tokenizer.json) in models/text_encoders."}),
            "dtype": (["fp32", "bf16", "fp16"], {"default": "fp32", "tooltip": "Weight precision (for fp8 and GGUF "
                                                 "files: the precision they compute in). bf16 halves memory on "
                                                 "GPUs; fp32 is best on CPU."}),
            "device": (["auto", "cpu", "cuda"], {"default": "auto", "tooltip": "auto: ComfyUI's model management "
                                                 "(GPU when available, offloaded when memory is needed)."}),
        }, "optional": {
            "dit_low_noise_file": ([NONE] + host.list_model_files("diffusion_models"), {
                "default": NONE, "tooltip": "Wan 2.2 A14B (presets wan2.2-*-a14b): the low-noise expert (models/"
                "diffusion_models, any format dit_file takes, e.g. wan2.2_t2v_low_noise_14B_*.safetensors or .gguf); "
                "dit_file is then the high-noise expert. Spacetime Denoise switches between them; one is on the GPU "
                "at a time. LoRAs go on both unless the LoRA node names one."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, preset, **kwargs):
        if preset not in _presets():
            return f"preset={preset!r} is not available; allowed: {', '.join(_presets())}"
        return True

    def load(self, preset, dit_file=PRESET_DEFAULT, vae_file=PRESET_DEFAULT, text_encoder_file=PRESET_DEFAULT,
             tokenizer_file=PRESET_DEFAULT, dtype="fp32", device="auto", dit_low_noise_file=NONE):
        def path(folder, name):
            return None if name in (None, "", PRESET_DEFAULT, NONE) else host.model_file_path(folder, name)
        model = host.get_model(preset, path("diffusion_models", dit_file), path("vae", vae_file),
                               path("text_encoders", text_encoder_file), path("text_encoders", tokenizer_file),
                               dtype, device, dit_low_noise=path("diffusion_models", dit_low_noise_file))
        return (model,)


class SpacetimeTextEncode:
    DESCRIPTION = ("Encodes a prompt and a negative prompt once for all sampling steps. With the embedded model the "
                   "prompt is first expanded into the detailed caption style the model was trained on.")
    CATEGORY = f"{CATEGORY}/Conditioning"
    RETURN_TYPES = (TEXT, "STRING")
    RETURN_NAMES = ("text", "expanded_prompt")
    OUTPUT_TOOLTIPS = ("Prompt embeddings for Spacetime Denoise.", "The prompt as the model saw it.")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (MODEL, {"tooltip": "From Spacetime Model Loader."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True,
                                  "default": "a red ball bounces on a navy background",
                                  "tooltip": "What the video shows."}),
            "negative": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "What to steer away from (classifier-free guidance). Empty uses the "
                                               "preset's default negative prompt."}),
            "expand_prompt": ("BOOLEAN", {"default": True, "tooltip": "Rewrite short prompts into the model's "
                                          "detailed caption style (embedded model only; no effect on Wan presets)."}),
        }, "optional": {
            "contrast": ("STRING", {"multiline": True, "default": "",
                                    "tooltip": "Contrast prompt for contrast guidance (Spacetime Denoise): the "
                                               "prompt with the one detail changed that the video must not show, "
                                               "e.g. 'moves left' for a ball that must move right. Empty: the "
                                               "embedded model writes it (the opposite of each stated motion); Wan "
                                               "presets: none."}),
        }}

    def encode(self, model, prompt, negative="", expand_prompt=True, contrast=""):
        host.use(model, "text")
        text = model.encode_text([prompt], [negative], expand=expand_prompt,
                                 contrasts=[contrast] if str(contrast).strip() else None)
        return (text, text.prompts[0])


NODE_CLASS_MAPPINGS = {"SpacetimeModelLoader": SpacetimeModelLoader, "SpacetimeTextEncode": SpacetimeTextEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeModelLoader": "Spacetime Model Loader",
                              "SpacetimeTextEncode": "Spacetime Text Encode"}
