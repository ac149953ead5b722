"""Checkpoint loading: safetensors (mmap, lazy) or official .pth through ``torch.load(weights_only=True)``; key-name
normalisation (native Wan, ComfyUI ``model.diffusion_model.`` prefix, diffusers names, HF T5 names); config
inference from keys and shapes; mismatch reports naming missing/unexpected keys and the preset that would fit.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from .config import DIT_PRESETS, DiTConfig, TextEncoderConfig, VAEConfig, WAN21_LATENT_MEAN, WAN21_LATENT_STD
from .errors import CheckpointMismatchError, SpacetimeValueError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        raise SpacetimeValueError(f"dtype={name!r} is not supported; allowed: fp32, bf16, fp16") from None


# ----------------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------------

def read_state_dict(path, device="cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint. safetensors files are memory-mapped (tensors are read when touched); a sharded
    ``*.safetensors.index.json`` reads every shard; ``.pth``/``.pt`` only through ``weights_only=True``."""
    path = Path(path)
    if not path.exists():
        raise SpacetimeValueError(f"checkpoint path {str(path)!r} does not exist")
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        index = json.loads(path.read_text())
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(read_state_dict(path.parent / shard, device))
        return out
    if name.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device=str(device))
        except Exception as exc:   # truncated or not a safetensors file
            raise SpacetimeValueError(f"checkpoint {path.name!r} could not be read as safetensors: {exc}") from exc
    if name.endswith((".pth", ".pt", ".bin")):
        try:
            sd = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        except Exception as exc:
            raise SpacetimeValueError(
                f"checkpoint {path.name!r} could not be read with torch.load(weights_only=True) "
                f"(only plain state dicts are accepted, never pickled code): {exc}") from exc
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        return sd
    raise SpacetimeValueError(
        f"checkpoint {path.name!r} has an unsupported extension; allowed: .safetensors, "
        f".safetensors.index.json, .pth/.pt (plain state dict)")


def write_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path, metadata: Optional[dict] = None,
                             overwrite: bool = False):
    """Write a safetensors file through a temporary name and an atomic rename."""
    from safetensors.torch import save_file
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------------
# Key maps
# ----------------------------------------------------------------------------------------------------------------------

_STRIP_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "module.")

# diffusers WanTransformer3DModel -> native Wan (norm2/norm3 swap: diffusers numbers them in call order)
_DIFFUSERS_DIT = [
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^blocks\.(\d+)\.attn1\.to_q\.", r"blocks.\1.self_attn.q."),
    (r"^blocks\.(\d+)\.attn1\.to_k\.", r"blocks.\1.self_attn.k."),
    (r"^blocks\.(\d+)\.attn1\.to_v\.", r"blocks.\1.self_attn.v."),
    (r"^blocks\.(\d+)\.attn1\.to_out\.0\.", r"blocks.\1.self_attn.o."),
    (r"^blocks\.(\d+)\.attn1\.norm_q\.", r"blocks.\1.self_attn.norm_q."),
    (r"^blocks\.(\d+)\.attn1\.norm_k\.", r"blocks.\1.self_attn.norm_k."),
    (r"^blocks\.(\d+)\.attn2\.to_q\.", r"blocks.\1.cross_attn.q."),
    (r"^blocks\.(\d+)\.attn2\.to_k\.", r"blocks.\1.cross_attn.k."),
    (r"^blocks\.(\d+)\.attn2\.to_v\.", r"blocks.\1.cross_attn.v."),
    (r"^blocks\.(\d+)\.attn2\.to_out\.0\.", r"blocks.\1.cross_attn.o."),
    (r"^blocks\.(\d+)\.attn2\.norm_q\.", r"blocks.\1.cross_attn.norm_q."),
    (r"^blocks\.(\d+)\.attn2\.norm_k\.", r"blocks.\1.cross_attn.norm_k."),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
]

# HF transformers / ComfyUI T5 names -> native Wan umT5 names
_HF_T5 = [
    (r"^(encoder\.embed_tokens|shared)\.weight$", "token_embedding.weight"),
    (r"^encoder\.final_layer_norm\.", "norm."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"blocks.\1.norm1."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.", r"blocks.\1.pos_embedding.embedding."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.([qkvo])\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"blocks.\1.norm2."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_0\.", r"blocks.\1.ffn.gate.0."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wi_1\.", r"blocks.\1.ffn.fc1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.wo\.", r"blocks.\1.ffn.fc2."),
]

_IGNORED_KEYS = re.compile(r"(^|\.)(scale_weight|scaled_fp8|position_ids|pooler\..*)$")


def _apply_map(key: str, rules) -> str:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


def strip_prefix(sd: Mapping[str, torch.Tensor], anchors: Iterable[str]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (e.g. ``model.diffusion_model.``) when the anchors are only found under it."""
    anchors = tuple(anchors)
    if any(k.startswith(anchors) for k in sd):
        return dict(sd)
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix + a) for k in sd for a in anchors):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def normalize_dit_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = strip_prefix(sd, ("patch_embedding.", "blocks.0.", "condition_embedder.", "proj_out."))
    if any(k.startswith("condition_embedder.") or ".attn1." in k for k in sd):
        sd = {_apply_map(k, _DIFFUSERS_DIT): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not _IGNORED_KEYS.search(k)}


def normalize_vae_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = strip_prefix(sd, ("encoder.conv1.", "decoder.conv1."))
    return {k: v for k, v in sd.items() if not _IGNORED_KEYS.search(k)}


def normalize_t5_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = strip_prefix(sd, ("token_embedding.", "blocks.0.", "encoder.block.0.", "shared."))
    if any(k.startswith(("encoder.block.", "shared.", "encoder.embed_tokens")) for k in sd):
        sd = {_apply_map(k, _HF_T5): v for k, v in sd.items()}
    return {k: v for k, v in sd.items() if not k.startswith("decoder.") and not _IGNORED_KEYS.search(k)}


# ----------------------------------------------------------------------------------------------------------------------
# Config inference
# ----------------------------------------------------------------------------------------------------------------------

def infer_dit_config(sd: Mapping[str, torch.Tensor], text_len: Optional[int] = None) -> DiTConfig:
    """Build the DiTConfig that a native-key state dict was saved from."""
    try:
        pe = sd["patch_embedding.weight"]
        dim, in_dim = pe.shape[0], pe.shape[1]
        patch = tuple(pe.shape[2:])
        ffn_dim = sd["blocks.0.ffn.0.weight"].shape[0]
        text_dim = sd["text_embedding.0.weight"].shape[1]
        freq_dim = sd["time_embedding.0.weight"].shape[1]
        head_out = sd["head.head.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointMismatchError(
            f"checkpoint does not look like a Wan DiT: key {exc.args[0]!r} is missing "
            f"(found e.g. {', '.join(list(sd)[:5])})", missing=[exc.args[0]]) from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_dim = head_out // (patch[0] * patch[1] * patch[2])
    known = {c.dim: c for c in DIT_PRESETS.values()}
    heads = None
    if dim in known and known[dim].in_dim == in_dim:
        heads = known[dim].num_heads
    if heads is None:
        heads = max(1, dim // 128)           # Wan models use 128-dim heads
    if "img_emb.proj.0.weight" in sd or any(".k_img." in k for k in sd):
        raise SpacetimeValueError(
            "checkpoint is a Wan image-to-video (CLIP-conditioned, in_dim 36) model; this pack's DiT covers the "
            "text-to-video and TI2V layouts (image-to-video runs through frame conditioning)")
    # 48 input channels: TI2V-5B; more inputs than outputs: channel-concatenated image conditioning (2.2 I2V-A14B)
    model_type = "ti2v" if in_dim == 48 else ("i2v" if in_dim != out_dim else "t2v")
    cross_norm = "blocks.0.norm3.weight" in sd
    qk_norm = "blocks.0.self_attn.norm_q.weight" in sd
    return DiTConfig(model_type=model_type, patch_size=patch, text_len=text_len or 512, in_dim=in_dim, dim=dim,
                     ffn_dim=ffn_dim, freq_dim=freq_dim, text_dim=text_dim, out_dim=out_dim, num_heads=heads,
                     num_layers=layers, qk_norm=qk_norm, cross_attn_norm=cross_norm)


def infer_vae_config(sd: Mapping[str, torch.Tensor], latent_mean=None, latent_std=None) -> VAEConfig:
    from .vae22 import infer_vae22_config, is_wan22_vae
    if is_wan22_vae(sd):
        return infer_vae22_config(sd, latent_mean, latent_std)
    try:
        dim = sd["encoder.conv1.weight"].shape[0]
        z_dim = sd["conv2.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointMismatchError(f"checkpoint does not look like a Wan VAE: key {exc.args[0]!r} is missing",
                                      missing=[exc.args[0]]) from None
    # Walk the encoder's down blocks: residual blocks change width, Resample blocks carry time_conv when temporal.
    idx, mults, temporal, nres, attn = 0, [], [], None, []
    count, scale = 0, 1.0
    while f"encoder.downsamples.{idx}.residual.2.weight" in sd or f"encoder.downsamples.{idx}.resample.1.weight" in sd \
            or f"encoder.downsamples.{idx}.to_qkv.weight" in sd:
        if f"encoder.downsamples.{idx}.residual.2.weight" in sd:
            count += 1
            out_c = sd[f"encoder.downsamples.{idx}.residual.2.weight"].shape[0]
        elif f"encoder.downsamples.{idx}.to_qkv.weight" in sd:
            if scale not in attn:
                attn.append(scale)
        else:
            mults.append(out_c // dim)
            temporal.append(f"encoder.downsamples.{idx}.time_conv.weight" in sd)
            nres = count if nres is None else nres
            count = 0
            scale /= 2
        idx += 1
    mults.append(out_c // dim)
    nres = count if nres is None else nres
    if z_dim == 16 and latent_mean is None:
        latent_mean, latent_std = WAN21_LATENT_MEAN, WAN21_LATENT_STD
    if latent_mean is None:
        latent_mean, latent_std = (0.0,) * z_dim, (1.0,) * z_dim
    return VAEConfig(dim=dim, z_dim=z_dim, dim_mult=tuple(mults), num_res_blocks=nres, attn_scales=tuple(attn),
                     temperal_downsample=tuple(temporal), latent_mean=tuple(latent_mean),
                     latent_std=tuple(latent_std))


def infer_t5_config(sd: Mapping[str, torch.Tensor]) -> TextEncoderConfig:
    vocab, dim = sd["token_embedding.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    dim_attn = sd["blocks.0.attn.q.weight"].shape[0]
    dim_ffn = sd["blocks.0.ffn.fc1.weight"].shape[0]
    buckets, heads = sd["blocks.0.pos_embedding.embedding.weight"].shape
    return TextEncoderConfig(kind="umt5", vocab_size=vocab, dim=dim, dim_attn=dim_attn, dim_ffn=dim_ffn,
                             num_heads=heads, num_layers=layers, num_buckets=buckets, shared_pos=False)


def infer_bert_config(sd: Mapping[str, torch.Tensor], max_length: int = 256) -> TextEncoderConfig:
    vocab, dim = sd["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    ffn = sd["encoder.layer.0.intermediate.dense.weight"].shape[0]
    return TextEncoderConfig(kind="bert", vocab_size=vocab, dim=dim, dim_attn=dim, dim_ffn=ffn,
                             num_heads=max(1, dim // 32), num_layers=layers, max_length=max_length,
                             max_positions=sd["embeddings.position_embeddings.weight"].shape[0],
                             type_vocab_size=sd["embeddings.token_type_embeddings.weight"].shape[0])


# ----------------------------------------------------------------------------------------------------------------------
# Loading into modules
# ----------------------------------------------------------------------------------------------------------------------

def _closest_dit_preset(sd) -> Optional[str]:
    try:
        cfg = infer_dit_config(sd)
    except SpacetimeValueError:
        return None
    for name, p in DIT_PRESETS.items():
        if (p.dim, p.num_layers, p.in_dim, p.ffn_dim) == (cfg.dim, cfg.num_layers, cfg.in_dim, cfg.ffn_dim):
            return name
    return None


def load_into(module: torch.nn.Module, sd: Mapping[str, torch.Tensor], what: str = "model",
              suggest=None, dtype: Optional[torch.dtype] = None):
    """Strictly load ``sd`` into ``module``; on any mismatch raise CheckpointMismatchError listing the missing,
    unexpected and wrongly shaped keys, and the preset that would fit when one does."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    mismatched = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or mismatched:
        hint = suggest(sd) if suggest else None

        def show(items):
            items = list(items)
            return ", ".join(items[:8]) + (f" … (+{len(items) - 8} more)" if len(items) > 8 else "") or "none"
        msg = (f"{what}: checkpoint does not fit this configuration. missing keys ({len(missing)}): {show(missing)}; "
               f"unexpected keys ({len(unexpected)}): {show(unexpected)}; shape mismatches ({len(mismatched)}): "
               f"{show(mismatched)}")
        if hint:
            msg += f". The checkpoint matches preset {hint!r}"
        raise CheckpointMismatchError(msg, missing, unexpected, mismatched, hint)
    tensors = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in sd.items()}
    module.load_state_dict(tensors, strict=True, assign=any(p.is_meta for p in module.parameters()))
    return module


def load_dit(path_or_sd, cfg: Optional[DiTConfig] = None, device="cpu", dtype=torch.float32, ops=None,
             text_len: Optional[int] = None):
    """Load a DiT from a file or a state dict; the config is inferred from the keys when not given."""
    from .dit import DEFAULT_OPS, build_dit
    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, (str, Path)) else path_or_sd
    sd = normalize_dit_keys(sd)
    if cfg is None:
        cfg = infer_dit_config(sd, text_len=text_len)
    model = build_dit(cfg, device="meta", ops=ops or DEFAULT_OPS, init=False)
    load_into(model, sd, "DiT", suggest=_closest_dit_preset, dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def load_vae(path_or_sd, cfg: Optional[VAEConfig] = None, device="cpu", dtype=torch.float32):
    from .vae import build_vae
    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, (str, Path)) else path_or_sd
    sd = normalize_vae_keys(sd)
    if cfg is None:
        cfg = infer_vae_config(sd)
    else:
        from .vae22 import check_vae_family
        check_vae_family(sd, cfg)
    model = build_vae(cfg, device="meta")
    load_into(model, sd, "VAE", dtype=dtype)
    model.latent_mean = torch.tensor(cfg.latent_mean, dtype=torch.float32)
    model.latent_std = torch.tensor(cfg.latent_std, dtype=torch.float32)
    return model.to(device=device, dtype=dtype).eval()


def load_text_encoder(path_or_sd, tokenizer_path=None, kind: Optional[str] = None, device="cpu",
                      dtype=torch.float32, max_length: Optional[int] = None):
    from .text_encoders import Tokenizer, build_text_encoder
    sd = read_state_dict(path_or_sd) if isinstance(path_or_sd, (str, Path)) else path_or_sd
    if kind is None:
        kind = "bert" if any(k.startswith(("embeddings.word_embeddings", "bert.")) for k in sd) else "umt5"
    if kind == "bert":
        sd = strip_prefix(sd, ("embeddings.", "encoder.layer."))
        sd = {k: v for k, v in sd.items() if not _IGNORED_KEYS.search(k)}
        cfg = infer_bert_config(sd, max_length=max_length or 256)
    else:
        sd = normalize_t5_keys(sd)
        cfg = infer_t5_config(sd)
        if max_length:
            from dataclasses import replace
            cfg = replace(cfg, max_length=max_length)
    tok = Tokenizer(tokenizer_path, cfg.max_length) if tokenizer_path else None
    model = build_text_encoder(cfg, tok, device="meta")
    load_into(model, sd, f"text encoder ({kind})", dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def file_sha256(path, chunk: int = 1 << 20) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

