"""Fetch a preset's files from the Hugging Face Hub (optional; needs ``huggingface_hub`` and a network).

Nothing here runs at import or without being asked. ``HF_HUB_OFFLINE=1`` makes every call use the local cache only
and fail with a clear message when a file is missing. Downloaded files are verified: safetensors headers must parse
and the tensors the preset needs must be there with the right shapes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import SpacetimeRuntimeError, SpacetimeValueError

# Comfy-Org's repackaged single files use native Wan keys (the DiT, the VAE) and HF T5 names (the text encoder).
HUB_FILES = {
    "wan2.1-t2v-1.3b": {
        "repo": "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
        "dit": "split_files/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors",
        "vae": "split_files/vae/wan_2.1_vae.safetensors",
        "text": "split_files/text_encoders/umt5_xxl_fp16.safetensors",
        "tokenizer_repo": "google/umt5-xxl", "tokenizer": "tokenizer.json",
    },
    "wan2.1-t2v-14b": {
        "repo": "Comfy-Org/Wan_2.1_ComfyUI_repackaged",
        "dit": "split_files/diffusion_models/wan2.1_t2v_14B_fp16.safetensors",
        "vae": "split_files/vae/wan_2.1_vae.safetensors",
        "text": "split_files/text_encoders/umt5_xxl_fp16.safetensors",
        "tokenizer_repo": "google/umt5-xxl", "tokenizer": "tokenizer.json",
    },
}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def verify_safetensors(path: Path, expect: Optional[dict] = None):
    """Parse the header (catches truncated downloads) and, given ``expect`` {key: shape}, check those tensors."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            keys = set(f.keys())
            for key, shape in (expect or {}).items():
                found = key if key in keys else next((k for k in keys if k.endswith("." + key)), None)
                if found is None:
                    raise SpacetimeValueError(f"{path.name}: tensor {key!r} is missing")
                got = tuple(f.get_slice(found).get_shape())
                if got != tuple(shape):
                    raise SpacetimeValueError(f"{path.name}: tensor {key!r} has shape {got}, expected {tuple(shape)}")
    except SpacetimeValueError:
        raise
    except Exception as exc:
        raise SpacetimeValueError(f"{path.name} is not a readable safetensors file (truncated?): {exc}") from exc


def download_preset(preset: str, parts=("dit", "vae", "text", "tokenizer"), cache_dir: Optional[str] = None,
                    token: Optional[str] = None) -> dict:
    """Download (or find in the cache) a preset's files -> {part: local path}. Respects HF_HUB_OFFLINE."""
    if preset not in HUB_FILES:
        raise SpacetimeValueError(f"preset={preset!r} has no hub files; allowed: {', '.join(sorted(HUB_FILES))}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise SpacetimeRuntimeError("downloading needs huggingface_hub: pip install huggingface_hub") from exc
    spec = HUB_FILES[preset]
    out = {}
    for part in parts:
        repo = spec["tokenizer_repo"] if part == "tokenizer" else spec["repo"]
        try:
            path = hf_hub_download(repo, spec[part], cache_dir=cache_dir, token=token,
                                   local_files_only=offline())
        except Exception as exc:
            how = ("HF_HUB_OFFLINE is set and the file is not in the local cache" if offline()
                   else "the download failed")
            raise SpacetimeRuntimeError(f"{preset}: {part} file {repo}/{spec[part]}: {how} ({exc})") from exc
        path = Path(path)
        if path.suffix == ".safetensors":
            verify_safetensors(path, _expected(preset, part))
        out[part] = path
    return out


def _expected(preset: str, part: str) -> dict:
    from .config import bundle_preset
    p = bundle_preset(preset)
    if part == "dit":
        d = p.dit
        return {"patch_embedding.weight": (d.dim, d.in_dim, *d.patch_size),
                "head.head.weight": (d.out_dim * d.patch_size[0] * d.patch_size[1] * d.patch_size[2], d.dim)}
    if part == "vae":
        return {"conv2.weight": (p.vae.z_dim, p.vae.z_dim, 1, 1, 1)}
    return {}
