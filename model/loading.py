"""Checkpoint loading: safetensors (mmap, lazy), GGUF (``gguf.py``) or official .pth through
``torch.load(weights_only=True)``, told apart by their first bytes; fp8 weights and their scales (``quant.py``); key-name
normalisation (native Wan, ComfyUI ``model.diffusion_model.`` prefix, diffusers names, HF T5 names); config
inference from keys and shapes; mismatch reports naming missing/unexpected keys and the preset that would fit.
Every key of a file is either used, understood (scales, format markers) or refused with the list: never a silent
partial load.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch

from .config import DIT_PRESETS, DiTConfig, TextEncoderConfig, VAEConfig, WAN21_LATENT_MEAN, WAN21_LATENT_STD
from .errors import CheckpointMismatchError, SpacetimeValueError
from .quant import PackedWeight, install_packed, split_fp8

log = logging.getLogger("spacetime")

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
        return _load_safetensors(path, device)
    if name.endswith(".gguf"):
        tensors = read_checkpoint(path).tensors
        return {k: v.dequantize(torch.float32, device) if isinstance(v, PackedWeight) else v for k, v in
                tensors.items()}
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
        f".safetensors.index.json, .gguf, .pth/.pt (plain state dict)")


GGUF_MAGIC = b"GGUF"
_DTYPE_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8 e4m3fn",
                "F8_E5M2": "fp8 e5m2"}


@dataclass
class Checkpoint:
    """A checkpoint as read: ``tensors`` (dense tensors, or PackedWeight for GGUF blocks), the file's header
    ``metadata`` and ``format`` (what the file was found to be, in words)."""
    tensors: dict
    metadata: dict = field(default_factory=dict)
    format: str = "state dict"
    path: Optional[Path] = None


def sniff(path) -> Optional[str]:
    """What a file is from its first bytes: "gguf", "safetensors", "zip" (torch.save) or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9:
        n = struct.unpack("<Q", head[:8])[0]
        if 2 <= n < (1 << 31) and head[8:9] == b"{":
            return "safetensors"
    return None


def safetensors_header(path) -> tuple[dict, dict]:
    """(tensor name -> {"dtype", "shape"}, metadata) from a safetensors header, without reading any tensor."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > path.stat().st_size:
                raise ValueError(f"header length {n} exceeds the file size")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as exc:
        raise SpacetimeValueError(f"checkpoint {path.name!r} could not be read as safetensors: {exc}") from exc
    meta = header.pop("__metadata__", None) or {}
    return header, meta


def read_checkpoint(path, what: str = "checkpoint") -> Checkpoint:
    """Read any supported file, detected from its content (a ``.gguf`` that is not GGUF, or a GGUF named
    ``.safetensors``, is told apart by its first bytes). safetensors and GGUF tensors stay memory-mapped."""
    path = Path(path)
    if not path.exists():
        raise SpacetimeValueError(f"{what} path {str(path)!r} does not exist")
    if path.is_dir():
        raise SpacetimeValueError(f"{what} path {str(path)!r} is a folder; give the file itself")
    name = path.name.lower()
    if name.endswith(".safetensors.index.json"):
        index = json.loads(path.read_text())
        parts = [read_checkpoint(path.parent / shard, what) for shard in sorted(set(index["weight_map"].values()))]
        tensors = {k: v for p in parts for k, v in p.tensors.items()}
        return Checkpoint(tensors, parts[0].metadata if parts else {}, f"sharded {parts[0].format}" if parts else
                          "sharded safetensors", path)
    kind = sniff(path)
    if kind == "gguf":
        from .gguf import read_gguf
        tensors, info = read_gguf(path)
        return Checkpoint(tensors, {"gguf.architecture": info["architecture"]}, info["format"], path)
    if name.endswith(".gguf"):
        raise SpacetimeValueError(f"{what} {path.name!r} is not a GGUF file (it does not start with the GGUF magic "
                                  "bytes); it may be truncated or mislabelled")
    if kind == "safetensors" and not name.endswith(".safetensors"):
        name += ".safetensors"
    if name.endswith(".safetensors") or kind == "safetensors":
        header, meta = safetensors_header(path)
        sd = read_state_dict(path) if path.name.lower().endswith(".safetensors") else _load_safetensors(path)
        counts = Counter(_DTYPE_NAMES.get(v.get("dtype"), str(v.get("dtype")).lower()) for v in header.values())
        fmt = "safetensors (" + ", ".join(f"{k} x{n}" for k, n in counts.most_common()) + ")"
        return Checkpoint(sd, dict(meta), fmt, path)
    sd = read_state_dict(path)
    return Checkpoint(sd, {}, "torch state dict (weights_only)", path)


def _load_safetensors(path, device="cpu"):
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:   # truncated or not a safetensors file
        raise SpacetimeValueError(f"checkpoint {Path(path).name!r} could not be read as safetensors: {exc}") from exc


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

# Text-encoder files from transformers carry position ids and a pooler the encoder does not use.
_IGNORED_KEYS = re.compile(r"(^|\.)(position_ids|pooler\..*)$")


def _apply_map(key: str, rules) -> str:
    for pat, rep in rules:
        new, n = re.subn(pat, rep, key)
        if n:
            return new
    return key


def strip_prefix(sd: Mapping[str, torch.Tensor], anchors: Iterable[str], keep_rest: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (e.g. ``model.diffusion_model.``) when the anchors are only found under it. Keys
    outside the prefix are dropped, or kept unchanged with ``keep_rest`` (so a strict load names them)."""
    anchors = tuple(anchors)
    if any(k.startswith(anchors) for k in sd):
        return dict(sd)
    for prefix in _STRIP_PREFIXES:
        if any(k.startswith(prefix + a) for k in sd for a in anchors):
            return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()
                    if keep_rest or k.startswith(prefix)}
    return dict(sd)


def normalize_dit_keys(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native Wan names. Keys outside a ``model.diffusion_model.``-style prefix stay as they are (a strict load then
    lists them); fp8 scales and markers stay for ``quant.split_fp8``."""
    sd = strip_prefix(sd, ("patch_embedding.", "blocks.0.", "condition_embedder.", "proj_out."), keep_rest=True)
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
    unexpected and wrongly shaped keys, and the preset that would fit when one does. Layers already holding packed
    (quantised) weights keep them."""
    own = module.state_dict()
    packed = {f"{n}.{b}" for n, m in module.named_modules() if hasattr(m, "codec") for b in ("weight", "weight_scale")}
    missing = sorted(k for k in own if k not in sd and k not in packed)
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
    tensors.update({k: own[k] for k in packed if k in own})
    module.load_state_dict(tensors, strict=True, assign=any(p.is_meta for p in module.parameters()))
    return module


def _as_checkpoint(path_or_sd, what: str) -> Checkpoint:
    if isinstance(path_or_sd, Checkpoint):
        return path_or_sd
    if isinstance(path_or_sd, (str, Path)):
        return read_checkpoint(path_or_sd, what)
    return Checkpoint(dict(path_or_sd))


def _load_weights(model, ckpt: Checkpoint, sd: dict, what: str, dtype, suggest=None) -> str:
    """fp8 scales understood, packed layers installed, everything else loaded strictly. Returns the format found."""
    dense, packed, info = split_fp8(sd, ckpt.metadata)
    n = install_packed(model, packed, dense, dtype)
    load_into(model, dense, what, suggest=suggest, dtype=dtype)
    fmt = ckpt.format
    if info.get("format"):
        fmt += f"; {info['format']}"
    if n:
        fmt += f"; {n} layers kept quantised"
    return fmt


def load_dit(path_or_sd, cfg: Optional[DiTConfig] = None, device="cpu", dtype=torch.float32, ops=None,
             text_len: Optional[int] = None):
    """Load a DiT from a file (safetensors, GGUF, .pth), a Checkpoint or a state dict; the config is inferred from
    the keys when not given. fp8 and GGUF weights stay quantised and expand per layer in ``dtype``; the format found
    is in ``model.checkpoint_format``."""
    from .dit import DEFAULT_OPS, build_dit
    ckpt = _as_checkpoint(path_or_sd, "DiT")
    arch = ckpt.metadata.get("gguf.architecture")
    if arch not in (None, "wan"):
        raise SpacetimeValueError(f"DiT file {ckpt.path.name if ckpt.path else ''!r} is a GGUF {arch!r} model; "
                                  "this loader reads Wan DiTs (GGUF architecture 'wan')")
    sd = normalize_dit_keys(ckpt.tensors)
    if cfg is None:
        cfg = infer_dit_config(sd, text_len=text_len)
    model = build_dit(cfg, device="meta", ops=ops or DEFAULT_OPS, init=False)
    fmt = _load_weights(model, ckpt, sd, "DiT", dtype, _closest_dit_preset)
    model = model.to(device=device, dtype=dtype).eval()
    model.checkpoint_format = fmt
    log.info("DiT %s: %s", ckpt.path.name if ckpt.path else "(state dict)", fmt)
    return model


def load_vae(path_or_sd, cfg: Optional[VAEConfig] = None, device="cpu", dtype=torch.float32):
    from .vae import build_vae
    ckpt = _as_checkpoint(path_or_sd, "VAE")
    sd = normalize_vae_keys(ckpt.tensors)
    if cfg is None:
        cfg = infer_vae_config(sd)
    else:
        from .vae22 import check_vae_family
        check_vae_family(sd, cfg)
    model = build_vae(cfg, device="meta")
    fmt = _load_weights(model, ckpt, sd, "VAE", dtype)
    model.latent_mean = torch.tensor(cfg.latent_mean, dtype=torch.float32)
    model.latent_std = torch.tensor(cfg.latent_std, dtype=torch.float32)
    model = model.to(device=device, dtype=dtype).eval()
    model.checkpoint_format = fmt
    return model


def load_text_encoder(path_or_sd, tokenizer_path=None, kind: Optional[str] = None, device="cpu",
                      dtype=torch.float32, max_length: Optional[int] = None):
    from .text_encoders import Tokenizer, build_text_encoder
    ckpt = _as_checkpoint(path_or_sd, "text encoder")
    sd = ckpt.tensors
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
    fmt = _load_weights(model, ckpt, sd, f"text encoder ({kind})", dtype)
    model = model.to(device=device, dtype=dtype).eval()
    model.checkpoint_format = fmt
    return model


def file_sha256(path, chunk: int = 1 << 20) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

