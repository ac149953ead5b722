"""GGUF checkpoints: the Wan DiT files made by city96's converter and llama.cpp's quantiser.

Reading uses the maintained ``gguf`` package (imported lazily); the tensors stay memory-mapped. Dequantisation is our
own torch code, so a layer expands on whatever device its bytes live (GPU included), one layer at a time:
``PackedWeight(codec="Q4_K", ...)`` holds the blocks and ``dequantize`` expands them.

Block layouts (ggml's, little-endian; d / dmin are float16; "nibble" = 4 bits):
  Q8_0  32 values: d, 32 x int8                                        value = d * q
  Q4_0  32 values: d, 16 bytes of nibbles (low: values 0-15, high: 16-31)   value = d * (q - 8)
  Q4_1  32 values: d, m, nibbles                                       value = d * q + m
  Q5_0  32 values: d, 32 high bits, nibbles                            value = d * (q - 16)
  Q5_1  32 values: d, m, 32 high bits, nibbles                         value = d * q + m
  Q2_K  256 values: 16 bytes (scale | min << 4 per 16 values), 64 bytes of 2-bit values, d, dmin
  Q3_K  256 values: 32 bytes of high bits, 64 bytes of 2-bit values, 12 bytes of 6-bit scales (offset 32), d
  Q4_K  256 values: d, dmin, 12 bytes of 6-bit (scale, min) for 8 groups of 32, 128 bytes of nibbles
  Q5_K  256 values: as Q4_K plus 32 bytes of high bits
  Q6_K  256 values: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 int8 scales (per 16 values), d
Tensors whose logical shape GGUF cannot store (Wan's 5-D patch embedding) are written flat by the converter, with
the real shape in the metadata entry ``comfy.gguf.orig_shape.<name>``.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Optional

import torch

from .errors import SpacetimeValueError
from .quant import PackedWeight

QK_K = 256
# codec -> (values per block, bytes per block)
BLOCKS = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
          "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
DENSE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
SUPPORTED = tuple(DENSE) + tuple(BLOCKS)
ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


# ----------------------------------------------------------------------------------------------------------------------
# Dequantisation (torch)
# ----------------------------------------------------------------------------------------------------------------------

def _f16(b: torch.Tensor) -> torch.Tensor:
    """[n, 2] bytes -> [n, 1] float32 (a little-endian float16 per row)."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(b: torch.Tensor) -> torch.Tensor:
    """[n, k] bytes -> [n, 2, k]: low nibbles first, then high nibbles."""
    return torch.stack([b & 0x0F, b >> 4], dim=1)


def _bits(b: torch.Tensor, count: int, width: int = 1) -> torch.Tensor:
    """[n, k] bytes -> [n, count, k]: field j holds bits j*width .. j*width+width-1 of every byte."""
    shifts = torch.arange(0, count * width, width, dtype=torch.uint8, device=b.device).view(1, count, 1)
    return (b.unsqueeze(1) >> shifts) & ((1 << width) - 1)


def _scale_min_k4(s: torch.Tensor):
    """12 bytes of packed 6-bit values -> (scales [n, 8], mins [n, 8]) as float32 (Q4_K / Q5_K)."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], dim=1)
    mn = torch.cat([b & 63, (c >> 4) | ((b >> 6) << 4)], dim=1)
    return sc.float(), mn.float()


def _q8_0(b):
    return b[:, 2:].contiguous().view(torch.int8).float() * _f16(b[:, 0:2])


def _q4_0(b):
    return (_nibbles(b[:, 2:]).flatten(1).float() - 8) * _f16(b[:, 0:2])


def _q4_1(b):
    return _nibbles(b[:, 4:]).flatten(1).float() * _f16(b[:, 0:2]) + _f16(b[:, 2:4])


def _high32(b):
    """4 bytes -> the 32 high bits, value i = bit i%8 of byte i//8."""
    return _bits(b, 8).transpose(1, 2).flatten(1)


def _q5_0(b):
    q = _nibbles(b[:, 6:]).flatten(1) | (_high32(b[:, 2:6]) << 4)
    return (q.float() - 16) * _f16(b[:, 0:2])


def _q5_1(b):
    q = _nibbles(b[:, 8:]).flatten(1) | (_high32(b[:, 4:8]) << 4)
    return q.float() * _f16(b[:, 0:2]) + _f16(b[:, 2:4])


def _q2_k(b):
    n = b.shape[0]
    scales, qs, d, dmin = b[:, 0:16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    q = _bits(qs.view(n, 2, 32).reshape(n * 2, 32), 4, 2).view(n, 16, 16).float()   # halves of 128: 4 x 32
    return ((d * (scales & 0x0F).float()).unsqueeze(-1) * q - (dmin * (scales >> 4).float()).unsqueeze(-1)).view(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, s, d = b[:, 0:32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = torch.cat([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], dim=1)                            # [n, 16]
    high = _bits(s[:, 8:12], 4, 2).flatten(1)                                             # [n, 16]
    scale = ((low | (high << 4)).to(torch.int16) - 32).float()
    ql = _bits(qs.view(n, 2, 32).reshape(n * 2, 32), 4, 2).view(n, 16, 16).to(torch.int16)
    hb = _bits(hmask, 8).view(n, 16, 16).to(torch.int16)
    q = (ql - 4 * (1 - hb)).float()
    return ((d * scale).unsqueeze(-1) * q).view(n, QK_K)


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = _nibbles(b[:, 16:].view(n, 4, 32).reshape(n * 4, 32)).view(n, 8, 32).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).view(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _scale_min_k4(b[:, 4:16])
    low = _nibbles(b[:, 48:].view(n, 4, 32).reshape(n * 4, 32)).view(n, 8, 32)
    q = (low | (_bits(b[:, 16:48], 8) << 4)).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).view(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, sc, d = b[:, 0:128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    low = _nibbles(ql.view(n, 2, 64).reshape(n * 2, 64)).view(n, 2, 2, 64)     # per half: values 0-63, 64-127
    low = low.view(n, 2, 4, 32)
    high = _bits(qh.view(n, 2, 32).reshape(n * 2, 32), 4, 2).view(n, 2, 4, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).float().view(n, 16, 16)
    return ((d * sc.contiguous().view(torch.int8).float()).unsqueeze(-1) * q).view(n, QK_K)


_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q2_K": _q2_k,
            "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def dequantize(data: torch.Tensor, codec: str, shape, dtype=torch.float32) -> torch.Tensor:
    """Packed bytes (uint8, any shape) of one tensor -> a dense tensor of ``shape`` in ``dtype``."""
    if codec in DENSE:
        return data.contiguous().view(DENSE[codec]).to(dtype).view(shape)
    try:
        fn = _DEQUANT[codec]
        _, nbytes = BLOCKS[codec]
    except KeyError:
        raise SpacetimeValueError(f"GGUF type {codec} is not supported; supported: {', '.join(SUPPORTED)}") from None
    out = fn(data.reshape(-1, nbytes))
    return out.to(dtype).view(shape)


# ----------------------------------------------------------------------------------------------------------------------
# Quantisation (torch; for tests, benchmarks and making small files)
# ----------------------------------------------------------------------------------------------------------------------

def _as_f16_bytes(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).contiguous().view(torch.uint8).view(x.shape[0], 2)


def _pack_nibbles(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return (lo | (hi << 4)).to(torch.uint8)


def _q8_0_pack(x):
    d = x.abs().amax(1, keepdim=True) / 127
    q = torch.where(d > 0, x / d, torch.zeros_like(x)).round().clamp(-127, 127).to(torch.int8)
    return torch.cat([_as_f16_bytes(d), q.view(torch.uint8)], dim=1)


def _k_scales(x, levels: int):
    """Groups [n, g, k] -> (d, dmin [n, 1] as stored, 6-bit scales and mins [n, g], values [n, g, k] in 0..levels)."""
    lo = x.amin(-1).clamp(max=0)
    hi = x.amax(-1)
    step = (hi - lo) / levels
    d = (step.amax(1, keepdim=True) / 63).to(torch.float16).float()
    dmin = ((-lo).amax(1, keepdim=True) / 63).to(torch.float16).float()
    sc = torch.where(d > 0, step / d, torch.zeros_like(step)).round().clamp(0, 63)
    mn = torch.where(dmin > 0, -lo / dmin, torch.zeros_like(lo)).round().clamp(0, 63)
    eff, off = (d * sc).unsqueeze(-1), (dmin * mn).unsqueeze(-1)
    q = torch.where(eff > 0, (x + off) / eff, torch.zeros_like(x)).round().clamp(0, levels).to(torch.uint8)
    return d, dmin, sc.to(torch.uint8), mn.to(torch.uint8), q


def _pack_scale_min_k4(sc, mn):
    a = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    b = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    c = (sc[:, 4:8] & 0x0F) | ((mn[:, 4:8] & 0x0F) << 4)
    return torch.cat([a, b, c], dim=1).to(torch.uint8)


def _q4_k_pack(x):
    n = x.shape[0]
    d, dmin, sc, mn, q = _k_scales(x.view(n, 8, 32), 15)
    q = q.view(n, 4, 2, 32)
    qs = _pack_nibbles(q[:, :, 0], q[:, :, 1]).view(n, 128)
    return torch.cat([_as_f16_bytes(d), _as_f16_bytes(dmin), _pack_scale_min_k4(sc, mn), qs], dim=1)


def _q5_k_pack(x):
    n = x.shape[0]
    d, dmin, sc, mn, q = _k_scales(x.view(n, 8, 32), 31)
    high = (q >> 4).to(torch.int32)                                          # [n, 8, 32]: bit j of byte i
    qh = (high << torch.arange(8, device=x.device).view(1, 8, 1)).sum(1).to(torch.uint8)
    low = (q & 0x0F).view(n, 4, 2, 32)
    qs = _pack_nibbles(low[:, :, 0], low[:, :, 1]).view(n, 128)
    return torch.cat([_as_f16_bytes(d), _as_f16_bytes(dmin), _pack_scale_min_k4(sc, mn), qh, qs], dim=1)


def _q6_k_pack(x):
    n = x.shape[0]
    g = x.view(n, 16, 16)
    amax = g.abs().amax(-1)
    step = amax / 31
    d = (step.amax(1, keepdim=True) / 127).to(torch.float16).float()
    sc = torch.where(d > 0, step / d, torch.zeros_like(step)).round().clamp(-128, 127)
    eff = (d * sc).unsqueeze(-1)
    q = (torch.where(eff > 0, g / eff, torch.zeros_like(g)).round().clamp(-32, 31) + 32).to(torch.uint8)
    q = q.view(n, 2, 4, 32)                                                  # halves of 128: 4 runs of 32
    low = (q & 0x0F).view(n, 2, 2, 64)
    ql = _pack_nibbles(low[:, :, 0], low[:, :, 1]).view(n, 128)
    hi = (q >> 4).to(torch.int32)
    qh = (hi << (2 * torch.arange(4, device=x.device)).view(1, 1, 4, 1)).sum(2).to(torch.uint8).view(n, 64)
    return torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), _as_f16_bytes(d)], dim=1)


_QUANT = {"Q8_0": _q8_0_pack, "Q4_K": _q4_k_pack, "Q5_K": _q5_k_pack, "Q6_K": _q6_k_pack}
QUANTIZABLE = tuple(DENSE) + tuple(_QUANT)


def quantize(weight: torch.Tensor, codec: str) -> PackedWeight:
    """A dense tensor -> a PackedWeight in ``codec`` (its element count must be a multiple of the block size; rows
    are blocked along the last dimension as in a GGUF file)."""
    if codec in DENSE:
        w = weight.detach().to(DENSE[codec]).contiguous()
        return PackedWeight(codec, w.view(torch.uint8).reshape(-1), weight.shape)
    if codec not in _QUANT:
        raise SpacetimeValueError(f"quantising to {codec} is not supported; allowed: {', '.join(QUANTIZABLE)}")
    nvals, _ = BLOCKS[codec]
    if weight.shape[-1] % nvals:
        raise SpacetimeValueError(f"a tensor of shape {tuple(weight.shape)} cannot be quantised to {codec}: its last "
                                  f"dimension must be a multiple of {nvals}")
    x = weight.detach().float().reshape(-1, nvals)
    return PackedWeight(codec, _QUANT[codec](x).reshape(-1), weight.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------

def _gguf():
    try:
        import gguf
    except ImportError:
        raise SpacetimeValueError("reading .gguf files needs the 'gguf' package: pip install gguf") from None
    return gguf


def _field(reader, key):
    f = reader.get_field(key)
    if f is None:
        return None
    try:
        return f.contents()
    except Exception:                     # very old gguf releases
        return None


def read_gguf(path) -> tuple[dict, dict]:
    """Read a GGUF file -> (tensors, info). Tensors are dense (F32 / F16 / BF16, copied out of the file's read-only
    map so that they can be changed in place, e.g. by a merged LoRA) or PackedWeight (bytes memory-mapped);
    ``info`` has ``architecture``, ``types`` (a Counter of tensor types) and ``format`` (a one-line description)."""
    gguf = _gguf()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:
        raise SpacetimeValueError(f"checkpoint {path.name!r} could not be read as GGUF: {exc}") from exc
    arch = _field(reader, "general.architecture")
    out, types = {}, Counter()
    for t in reader.tensors:
        codec = t.tensor_type.name
        types[codec] += 1
        shape = _field(reader, ORIG_SHAPE_KEY + t.name)
        shape = torch.Size(int(v) for v in shape) if shape else torch.Size(int(v) for v in reversed(t.shape))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            raw = torch.from_numpy(t.data)
        if codec in DENSE:
            dense = raw.view(torch.uint8).view(DENSE[codec]) if codec == "BF16" else raw
            if dense.numel() != shape.numel():
                raise SpacetimeValueError(f"GGUF tensor {t.name!r}: {dense.numel()} values do not fill its shape "
                                          f"{tuple(shape)}")
            out[t.name] = dense.reshape(shape).clone()      # writing into the read-only map would crash
        elif codec in BLOCKS:
            nvals, nbytes = BLOCKS[codec]
            if shape.numel() % nvals or raw.numel() != shape.numel() // nvals * nbytes:
                raise SpacetimeValueError(f"GGUF tensor {t.name!r} ({codec}) has {raw.numel()} bytes, which does not "
                                          f"fit its shape {tuple(shape)}")
            out[t.name] = PackedWeight(codec, raw.reshape(-1), shape)
        else:
            raise SpacetimeValueError(f"GGUF tensor {t.name!r} has type {codec}, which this pack does not read; "
                                      f"supported: {', '.join(SUPPORTED)}")
    summary = ", ".join(f"{k} x{v}" for k, v in types.most_common())
    info = {"architecture": arch, "types": types, "format": f"GGUF ({summary})",
            "metadata_keys": [f.name for f in reader.fields.values()]}
    return out, info


def write_gguf(path, tensors: dict, codec_for=None, arch: str = "wan", overwrite: bool = False):
    """Write tensors as a GGUF file the way the Wan converter does: ``codec_for(name, tensor)`` picks each type
    (default F32 for 1-D tensors, else F16); tensors of more than 4 dimensions are stored flat with their shape in
    ``comfy.gguf.orig_shape.<name>``. Atomic; never overwrites unless asked."""
    import os
    gguf = _gguf()
    import numpy as np
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; refusing to overwrite")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), arch)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, t in tensors.items():
        codec = codec_for(name, t) if codec_for else ("F32" if t.dim() <= 1 else "F16")
        src = t.detach().cpu()
        if src.dim() > 4:
            w.add_array(ORIG_SHAPE_KEY + name, [int(s) for s in src.shape])
            nvals = BLOCKS.get(codec, (1, 0))[0]
            src = src.reshape(-1, nvals if src.numel() % 256 else 256) if nvals > 1 else src.reshape(src.shape[0], -1)
        if codec == "F32":
            w.add_tensor(name, src.float().numpy())
        elif codec == "F16":
            w.add_tensor(name, src.to(torch.float16).numpy())
        else:                                    # BF16 and block types: raw bytes, rows of the last dimension
            pw = quantize(src, codec)
            nvals, nbytes = BLOCKS.get(codec, (1, 2))
            rows = pw.data.numpy().reshape(*src.shape[:-1], src.shape[-1] // nvals * nbytes)
            w.add_tensor(name, np.ascontiguousarray(rows), raw_dtype=getattr(gguf.GGMLQuantizationType, codec))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)
    return path
