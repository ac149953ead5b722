"""Quantised weights kept in their file's compact form and expanded one layer at a time while the model runs.

Two families arrive in checkpoints:
  fp8      float8 e4m3fn / e5m2 safetensors, optionally with a per-tensor (or per-row) scale: ComfyUI's "scaled fp8"
           files (a ``scaled_fp8`` marker and ``<layer>.scale_weight``) and its newer layout (``<layer>.weight_scale``
           with a ``<layer>.comfy_quant`` JSON tag or a ``_quantization_metadata`` header entry). weight = value x scale.
  GGUF     block-quantised tensors (Q8_0, Q4_K, ...; see ``gguf.py``).

Both become a :class:`PackedWeight` when read. ``install_packed`` then swaps each ``nn.Linear`` / ``nn.Conv3d`` whose
weight is packed for a :class:`PackedLinear` / :class:`PackedConv3d` that keeps the bytes (memory stays at the
quantised size) and expands them in the compute dtype on every call. Other parameters that arrive packed (norms,
modulation tables: small) are expanded once at load time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CheckpointMismatchError, SpacetimeValueError  # noqa: F401

FP8_DTYPES = {torch.float8_e4m3fn: "fp8_e4m3fn", torch.float8_e5m2: "fp8_e5m2"}
FP8_BY_NAME = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}


# ----------------------------------------------------------------------------------------------------------------------
# Packed weights
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class PackedWeight:
    """A weight in compact storage. ``codec`` names the format ("fp8_e4m3fn", "Q4_K", ...); ``data`` holds its bytes
    as uint8; ``scale`` (fp8 only) multiplies the expanded values; ``shape`` is the logical shape."""
    codec: str
    data: torch.Tensor
    shape: torch.Size
    scale: Optional[torch.Tensor] = None

    def dequantize(self, dtype=torch.float32, device=None) -> torch.Tensor:
        return expand(self.codec, self.data if device is None else self.data.to(device), self.shape, self.scale,
                      dtype)

    @property
    def nbytes(self) -> int:
        return self.data.numel() + (0 if self.scale is None else self.scale.numel() * 4)


def expand(codec: str, data: torch.Tensor, shape, scale: Optional[torch.Tensor], dtype) -> torch.Tensor:
    """Bytes of one packed tensor -> a dense tensor of ``shape`` in ``dtype`` on the bytes' device."""
    fp8 = _FP8_CODECS.get(codec)
    if fp8 is not None:
        w = data.view(fp8).to(dtype)
        if scale is not None:
            s = scale.to(device=w.device, dtype=dtype)
            w = w * (s if s.dim() == 0 or s.numel() == 1 else s.reshape(-1, *([1] * (w.dim() - 1))))
        return w.view(shape)
    from .gguf import dequantize
    return dequantize(data, codec, shape, dtype)


_FP8_CODECS = {name: dt for dt, name in FP8_DTYPES.items()}


def pack_fp8(weight: torch.Tensor, fp8_dtype=torch.float8_e4m3fn, scaled: bool = True) -> PackedWeight:
    """Quantise a dense tensor to fp8 (with a per-tensor absmax scale when ``scaled``); for tests and benchmarks."""
    w = weight.detach().float()
    scale = None
    if scaled:
        amax = w.abs().max().clamp_min(1e-12)
        scale = (amax / torch.finfo(fp8_dtype).max).to(torch.float32)
        w = w / scale
    q = w.to(fp8_dtype)
    return PackedWeight(FP8_DTYPES[fp8_dtype], q.view(torch.uint8), weight.shape, scale)


# ----------------------------------------------------------------------------------------------------------------------
# Layers that keep packed weights
# ----------------------------------------------------------------------------------------------------------------------

class _PackedMixin:
    """Keeps ``weight`` as packed bytes and ``weight_scale`` in float32 whatever dtype the model is cast to; only the
    bias (and the compute dtype) follow ``.to(dtype)``. ``compute_dtype`` is what the weight expands to."""

    def _init_packed(self, packed: PackedWeight, bias: Optional[torch.Tensor], compute_dtype):
        self.codec = packed.codec
        self.weight_shape = torch.Size(packed.shape)
        self.compute_dtype = compute_dtype
        self.register_buffer("weight", packed.data)
        self.register_buffer("weight_scale", None if packed.scale is None else packed.scale.float().reshape(-1))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)

    def _apply(self, fn, recurse=True):
        # where (and to which dtype, if any) fn sends floating tensors: a float64 probe changes dtype only on a cast
        probe = fn(torch.empty(0, dtype=torch.float64, device=self.weight.device))
        for name in ("weight", "weight_scale"):
            buf = self._buffers.get(name)
            if buf is not None:
                self._buffers[name] = buf.to(probe.device)
        if self.bias is not None:
            self.bias = nn.Parameter(fn(self.bias.data), requires_grad=False)
        if probe.dtype != torch.float64 and probe.dtype.is_floating_point:
            self.compute_dtype = probe.dtype
        return self

    def dequantized(self, dtype=None) -> torch.Tensor:
        return expand(self.codec, self.weight, self.weight_shape, self.weight_scale, dtype or self.compute_dtype)

    @property
    def packed_nbytes(self) -> int:
        return self.weight.numel() + (0 if self.weight_scale is None else self.weight_scale.numel() * 4)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight_shape)}, {self.codec}, compute={self.compute_dtype}"


class PackedLinear(_PackedMixin, nn.Module):
    def __init__(self, packed: PackedWeight, bias=None, compute_dtype=torch.float32):
        nn.Module.__init__(self)
        self.in_features, self.out_features = int(packed.shape[1]), int(packed.shape[0])
        self._init_packed(packed, bias, compute_dtype)

    def forward(self, x):
        w = self.dequantized(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


class PackedConv3d(_PackedMixin, nn.Module):
    def __init__(self, packed: PackedWeight, like: nn.Conv3d, bias=None, compute_dtype=torch.float32):
        nn.Module.__init__(self)
        self.stride, self.padding, self.dilation, self.groups = like.stride, like.padding, like.dilation, like.groups
        self._init_packed(packed, bias, compute_dtype)

    def forward(self, x):
        w = self.dequantized(x.dtype)
        return F.conv3d(x, w, None if self.bias is None else self.bias.to(x.dtype), self.stride, self.padding,
                        self.dilation, self.groups)


def compute_dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype a layer computes in: its weight's, or the expansion dtype of a packed layer."""
    return getattr(module, "compute_dtype", None) or module.weight.dtype


def install_packed(model: nn.Module, packed: Mapping[str, PackedWeight], dense: dict, compute_dtype) -> int:
    """Swap every plain ``nn.Linear`` / ``nn.Conv3d`` of ``model`` whose ``<name>.weight`` is packed for a packed
    layer (its bias is loaded afterwards like any other tensor); every other packed tensor is expanded into
    ``dense``. Returns the number of packed layers."""
    modules = dict(model.named_modules())
    n = 0
    for key, pw in packed.items():
        owner, _, leaf = key.rpartition(".")
        mod = modules.get(owner)
        if leaf == "weight" and type(mod) in (nn.Linear, nn.Conv3d) and tuple(mod.weight.shape) == tuple(pw.shape):
            bias = mod.bias              # a placeholder (usually on the meta device) that the strict load fills
            new = (PackedLinear(pw, bias, compute_dtype) if type(mod) is nn.Linear
                   else PackedConv3d(pw, mod, bias, compute_dtype))
            parent_name, _, child = owner.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, child, new)
            n += 1
        else:
            dense[key] = pw.dequantize(torch.float32)
    return n


# ----------------------------------------------------------------------------------------------------------------------
# fp8 safetensors: recognise the scale conventions
# ----------------------------------------------------------------------------------------------------------------------

_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_UNUSED_SUFFIXES = (".scale_input", ".input_scale")       # activation scales for fp8 matmuls; we compute in bf16/fp32


def split_fp8(sd: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None):
    """Turn fp8 tensors (and their scales) of a state dict into PackedWeights.

    Returns ``(dense, packed, info)``: plain tensors, packed weights by key, and a description such as
    ``{"format": "fp8 e4m3fn, scaled (ComfyUI scaled_fp8)", "understood": [...keys consumed...]}``. Every key is
    either returned or listed as understood; a scale whose weight is missing, or a quantisation format other than
    fp8, is refused with the keys named."""
    quant_layers = {}
    if metadata and "_quantization_metadata" in metadata:
        try:
            quant_layers = dict(json.loads(metadata["_quantization_metadata"]).get("layers", {}))
        except ValueError as exc:
            raise SpacetimeValueError(f"checkpoint header entry _quantization_metadata is not valid JSON: {exc}")
    understood, markers = [], []
    for k, v in sd.items():
        if k.endswith(".comfy_quant"):
            try:
                quant_layers[k[:-len(".comfy_quant")]] = json.loads(bytes(v.to(torch.uint8).tolist()).decode())
            except ValueError as exc:
                raise SpacetimeValueError(f"checkpoint key {k!r} should hold a JSON tag: {exc}") from None
            understood.append(k)
        elif k.endswith("scaled_fp8") and (k == "scaled_fp8" or k.endswith(".scaled_fp8")):
            markers.append(k)
            understood.append(k)
    bad = sorted(f"{layer} ({conf.get('format')!r})" for layer, conf in quant_layers.items()
                 if conf.get("format") not in FP8_BY_NAME)
    if bad:
        raise SpacetimeValueError(
            f"checkpoint uses quantisation formats this pack does not read: {', '.join(bad[:6])}"
            f"{' ...' if len(bad) > 6 else ''}; supported: float8_e4m3fn, float8_e5m2 (with weight_scale), GGUF")
    dense, packed, fp8, orphans = {}, {}, [], []
    scales = {}
    for k, v in sd.items():
        if k in understood:
            continue
        if isinstance(v, PackedWeight):                  # GGUF blocks
            packed[k] = v
        elif k.endswith(_SCALE_SUFFIXES):
            scales[k] = v
        elif k.endswith(_UNUSED_SUFFIXES):
            understood.append(k)
        elif v.dtype in FP8_DTYPES:
            fp8.append(k)
        else:
            dense[k] = v
    for k in fp8:
        layer = k[:-len(".weight")] if k.endswith(".weight") else k
        scale = None
        for suffix in _SCALE_SUFFIXES:
            if layer + suffix in scales:
                scale = scales.pop(layer + suffix).float()
                understood.append(layer + suffix)
        v = sd[k]
        if v.dim() <= 1 or not k.endswith(".weight"):     # small tensors: expand now
            dense[k] = v.float() * (scale if scale is not None else 1.0)
        else:
            packed[k] = PackedWeight(FP8_DTYPES[v.dtype], v.view(torch.uint8), v.shape, scale)
    for k, s in scales.items():                # a scale of a layer stored in full precision: identity scales only
        layer = k.rsplit(".", 1)[0]
        if layer + ".weight" in dense and torch.all(s.float() == 1):
            understood.append(k)
        else:
            orphans.append(k)
    if orphans:
        raise CheckpointMismatchError(
            f"checkpoint has weight scales for layers that are not stored in fp8 ({len(orphans)}): "
            f"{', '.join(sorted(orphans)[:8])}", unexpected=orphans)
    info = {"understood": understood, "packed": len(packed)}
    fp8_packed = [p for p in packed.values() if p.codec in _FP8_CODECS]
    if fp8 or markers:
        kinds = sorted({p.codec for p in fp8_packed})
        scaled = any(p.scale is not None for p in fp8_packed)
        style = ("ComfyUI scaled_fp8" if markers else "weight_scale" if quant_layers or any(
            k.endswith(".weight_scale") for k in understood) else "scale_weight") if scaled else None
        info["format"] = (" + ".join(k.replace("_", " ") for k in kinds) or "fp8") + (
            f", scaled ({style})" if scaled else ", unscaled")
    return dense, packed, info


def fp8_state_dict(sd: Mapping[str, torch.Tensor], fp8_dtype=torch.float8_e4m3fn, scaled: bool = True,
                   marker: bool = True, keep: Callable[[str, torch.Tensor], bool] = None) -> dict:
    """Write a dense state dict the way ComfyUI's scaled-fp8 files are laid out (2-D+ ``.weight`` tensors in fp8,
    ``<layer>.scale_weight`` when scaled, a ``scaled_fp8`` marker); for tests and benchmarks."""
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() >= 2 and (keep is None or keep(k, v)):
            pw = pack_fp8(v, fp8_dtype, scaled)
            out[k] = pw.data.view(fp8_dtype)
            if scaled:
                out[k[:-len(".weight")] + ".scale_weight"] = pw.scale.reshape(())
        else:
            out[k] = v
    if marker and scaled:
        out["scaled_fp8"] = torch.empty(0, dtype=fp8_dtype)
    return out
