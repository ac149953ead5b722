"""LoRAs (and other weight-difference files) for the Wan DiT.

Reading: every key of a file must be understood, and every change it describes must land on a parameter of the
model, or :func:`read_lora` / :func:`resolve` fail with the keys that did not match and the closest module names.
Key styles (all normalised to native Wan parameter names):
  ComfyUI          ``diffusion_model.blocks.0.self_attn.q.lora_up.weight``  (also ``model.diffusion_model.``)
  kohya            ``lora_unet_blocks_0_self_attn_q.lora_down.weight`` (dots written as underscores; Fun's
                   ``lora_unet__`` too), ``.alpha``
  diffusers / PEFT ``transformer.blocks.0.attn1.to_q.lora_A.weight`` / ``base_model.model.…``; ``lora_B``;
                   ``.lora_A.default.weight``; alpha from ``.alpha`` keys or the ``lora_adapter_metadata`` header
                   (``lora_alpha``, ``use_rslora``: rank-stabilised scale alpha / sqrt(rank))
  LyCORIS          ``lycoris_blocks_0_…`` with LoCon (``lora_up``/``lora_down``), LoHa (``hada_w1_a`` …) or LoKr
                   (``lokr_w1`` …)
  plain Wan        ``blocks.0.self_attn.q.lora_up.weight``
  full deltas      ``<module>.diff`` (weight), ``<module>.diff_b`` (bias), ``w_norm`` / ``b_norm``
Scale of a low-rank pair: alpha / rank (alpha defaults to rank, i.e. scale 1), or alpha / sqrt(rank) when
rank-stabilised. DoRA (``dora_scale``) and Tucker-decomposed conv factors are refused by name.

Applying (see :func:`activate`): *merged* adds strength x delta into the weights (fast; the originals are kept on the
CPU so the change comes off again), *unmerged* adds the low-rank product to each layer's output at run time and
never touches a weight (exact on quantised bases). ``auto`` merges into dense weights and runs unmerged on packed
(fp8 / GGUF) ones.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import SpacetimeValueError

MODES = ("auto", "merged", "unmerged")
EXPERTS = ("both", "high_noise", "low_noise")     # the experts of a Wan 2.2 A14B model a LoRA goes on


class LoraError(SpacetimeValueError):
    """A LoRA file that cannot be applied exactly as written."""


# ----------------------------------------------------------------------------------------------------------------------
# One change to one parameter
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class Patch:
    """``kind``: lowrank (up, down), full (delta), loha (w1a, w1b, w2a, w2b), lokr (w1, w2). ``scale`` multiplies the
    delta (alpha / rank and the like); the user's strength comes on top when it is applied."""
    kind: str
    tensors: tuple
    scale: float = 1.0
    source: str = ""                 # the file's key stem, for messages

    def delta(self, shape, dtype=torch.float32, device=None) -> torch.Tensor:
        t = [x.to(device=device, dtype=torch.float32) for x in self.tensors]
        if self.kind == "lowrank":
            d = t[0].flatten(1) @ t[1].flatten(1)
        elif self.kind == "full":
            d = t[0]
        elif self.kind == "loha":
            d = (t[0] @ t[1]) * (t[2] @ t[3])
        elif self.kind == "lokr":
            d = torch.kron(t[0], t[1])
        else:
            raise LoraError(f"unknown patch kind {self.kind!r}")
        return (d.reshape(shape) * self.scale).to(dtype)

    def numel_ok(self, shape) -> bool:
        n = math.prod(shape)
        if self.kind == "lowrank":
            up, down = self.tensors
            return up.shape[0] == shape[0] and up.shape[0] * down.flatten(1).shape[1] == n \
                and up.flatten(1).shape[1] == down.shape[0]
        if self.kind == "full":
            return self.tensors[0].numel() == n
        if self.kind == "loha":
            a, b, c, d = self.tensors
            return a.shape[0] * b.flatten(1).shape[1] == n and c.shape[0] * d.flatten(1).shape[1] == n
        if self.kind == "lokr":
            return self.tensors[0].numel() * self.tensors[1].numel() == n
        return False


@dataclass
class LoraFile:
    """A parsed file: patches by target name (native Wan names, before they are checked against a model)."""
    name: str
    patches: dict                    # target parameter name -> Patch
    style: str                       # key style, e.g. "kohya (lora_unet_)"
    kinds: tuple                     # patch kinds present
    path: Optional[Path] = None

    def describe(self) -> str:
        return f"{self.name}: {len(self.patches)} changes, {self.style}, {'/'.join(self.kinds)}"


# ----------------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------------

# suffix -> (role, family). Longest suffixes first so ".lora_A.default.weight" wins over ".weight" style endings.
_SUFFIXES = [
    (".lora_up.weight", "up", "lowrank"), (".lora_down.weight", "down", "lowrank"),
    (".lora_B.default.weight", "up", "lowrank"), (".lora_A.default.weight", "down", "lowrank"),
    (".lora_B.weight", "up", "lowrank"), (".lora_A.weight", "down", "lowrank"),
    (".lora_linear_layer.up.weight", "up", "lowrank"), (".lora_linear_layer.down.weight", "down", "lowrank"),
    (".lora.up.weight", "up", "lowrank"), (".lora.down.weight", "down", "lowrank"),
    ("_lora.up.weight", "up", "lowrank"), ("_lora.down.weight", "down", "lowrank"),
    (".lora_B.bias", "up_bias", "lowrank"),
    (".lora_B", "up", "lowrank"), (".lora_A", "down", "lowrank"),
    (".hada_w1_a", "w1a", "loha"), (".hada_w1_b", "w1b", "loha"), (".hada_w2_a", "w2a", "loha"),
    (".hada_w2_b", "w2b", "loha"),
    (".lokr_w1_a", "w1a", "lokr"), (".lokr_w1_b", "w1b", "lokr"), (".lokr_w2_a", "w2a", "lokr"),
    (".lokr_w2_b", "w2b", "lokr"), (".lokr_w1", "w1", "lokr"), (".lokr_w2", "w2", "lokr"),
    (".diff_b", "diff_b", "full"), (".diff", "diff", "full"), (".w_norm", "diff", "full"), (".b_norm", "diff_b", "full"),
    (".alpha", "alpha", None),
]
_REFUSED = {".dora_scale": "DoRA magnitude vectors (dora_scale) are not supported",
            ".lora_mid.weight": "Tucker-decomposed conv LoRA (lora_mid) is not supported",
            ".hada_t1": "Tucker-decomposed LoHa (hada_t1/hada_t2) is not supported",
            ".hada_t2": "Tucker-decomposed LoHa (hada_t1/hada_t2) is not supported",
            ".lokr_t2": "Tucker-decomposed LoKr (lokr_t2) is not supported",
            ".set_weight": "weight replacement (set_weight) is not supported",
            ".reshape_weight": "reshaped LoRA targets (reshape_weight) are not supported"}

_DOT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.",
                 "model.")
_UNDERSCORE_PREFIXES = ("lora_unet__", "lora_unet_", "lycoris_", "lora_transformer_")


def _split_key(key: str):
    for suffix, why in _REFUSED.items():
        if key.endswith(suffix):
            return key[:-len(suffix)], None, why
    for suffix, role, family in _SUFFIXES:
        if key.endswith(suffix):
            return key[:-len(suffix)], role, family
    return key, None, None


def _adapter_config(metadata: Optional[Mapping[str, str]]) -> dict:
    """PEFT/diffusers settings from the safetensors header: lora_alpha, r, use_rslora, alpha_pattern."""
    if not metadata:
        return {}
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise LoraError("LoRA header entry lora_adapter_metadata is not valid JSON") from None
    if not isinstance(cfg, dict):
        return {}
    flat = {}
    for k, v in cfg.items():                     # "transformer.lora_alpha" (diffusers packs a prefix) or plain keys
        flat[k.split(".", 1)[1] if "." in k and k.split(".", 1)[0] in ("transformer", "unet") else k] = v
    return flat


def read_lora(source, metadata: Optional[Mapping[str, str]] = None, name: Optional[str] = None,
              rank_stabilized: Optional[bool] = None) -> LoraFile:
    """Parse a LoRA file (path) or state dict into patches keyed by native Wan parameter names.

    Raises LoraError naming every key whose role is not understood (or is refused) and every low-rank pair with a
    missing half. ``rank_stabilized`` overrides the file's own setting."""
    path = None
    if isinstance(source, (str, Path)):
        path = Path(source)
        from .loading import read_checkpoint
        ckpt = read_checkpoint(path, what="LoRA")
        sd, metadata = ckpt.tensors, {**(ckpt.metadata or {}), **(metadata or {})}
        if any(not isinstance(v, torch.Tensor) for v in sd.values()):
            raise LoraError(f"LoRA {path.name!r} holds quantised tensors; LoRA files must be plain safetensors")
        name = name or path.name
    else:
        sd = dict(source)
    name = name or "LoRA"
    cfg = _adapter_config(metadata)
    rs = bool(cfg.get("use_rslora", False)) if rank_stabilized is None else bool(rank_stabilized)

    groups: dict[str, dict] = {}
    unknown, refused = [], {}
    for key, value in sd.items():
        stem, role, family = _split_key(key)
        if role is None:
            if family is not None:                              # refused kinds carry their reason in `family`
                refused.setdefault(family, []).append(key)
            else:
                unknown.append(key)
            continue
        g = groups.setdefault(stem, {})
        if role in g:
            raise LoraError(f"LoRA {name!r}: key {key!r} repeats a role already given for {stem!r}")
        g[role] = value
        if family:
            g.setdefault("_families", set()).add(family)
    if refused or unknown:
        parts = [f"{why}: {', '.join(sorted(keys)[:6])}{' ...' if len(keys) > 6 else ''}"
                 for why, keys in refused.items()]
        if unknown:
            parts.append(f"keys of no known LoRA kind ({len(unknown)}): {', '.join(sorted(unknown)[:8])}"
                         f"{' ...' if len(unknown) > 8 else ''}")
        raise LoraError(f"LoRA {name!r} cannot be applied: " + "; ".join(parts))

    patches: dict[str, list] = {}        # stem -> [(param role "weight"/"bias"/"self", Patch)]
    styles, kinds = set(), set()
    for stem, g in groups.items():
        fams = g.pop("_families", set())
        alpha = g.pop("alpha", None)
        if not fams:
            raise LoraError(f"LoRA {name!r}: {stem}.alpha has no LoRA weights next to it")
        if len(fams) > 1 and fams != {"lowrank", "full"}:
            raise LoraError(f"LoRA {name!r}: {stem!r} mixes LoRA kinds ({', '.join(sorted(fams))})")
        alpha = None if alpha is None else float(alpha.float().reshape(-1)[0])
        if alpha is None and "lora_alpha" in cfg:
            alpha = _pattern_alpha(cfg, stem)
        out = patches.setdefault(stem, [])
        if "up" in g or "down" in g:
            if "up" not in g or "down" not in g:
                half = "up/B" if "up" not in g else "down/A"
                raise LoraError(f"LoRA {name!r}: {stem!r} has only one half of a low-rank pair (no {half} matrix)")
            up, down = g.pop("up"), g.pop("down")
            rank = down.shape[0]
            a = float(rank) if alpha is None else alpha
            scale = a / (math.sqrt(rank) if rs else rank)
            out.append(("weight", Patch("lowrank", (up, down), scale, stem)))
            if "up_bias" in g:
                out.append(("bias", Patch("full", (g.pop("up_bias"),), scale, stem)))
            kinds.add("LoRA")
        if fams == {"loha"}:
            if not all(k in g for k in ("w1a", "w1b", "w2a", "w2b")):
                raise LoraError(f"LoRA {name!r}: LoHa factors of {stem!r} are incomplete (need hada_w1_a, hada_w1_b, "
                                "hada_w2_a, hada_w2_b)")
            t = tuple(g.pop(k) for k in ("w1a", "w1b", "w2a", "w2b"))
            out.append(("weight", Patch("loha", t, 1.0 if alpha is None else alpha / t[1].shape[0], stem)))
            kinds.add("LoHa")
        if fams == {"lokr"}:
            factors, dim = [], None
            for i in ("1", "2"):
                if f"w{i}" in g:
                    factors.append(g.pop(f"w{i}"))
                elif f"w{i}a" in g and f"w{i}b" in g:
                    a_, b_ = g.pop(f"w{i}a"), g.pop(f"w{i}b")
                    dim = b_.shape[0]                     # the rank of the decomposed factor sets the scale
                    factors.append(a_.float() @ b_.float())
                else:
                    raise LoraError(f"LoRA {name!r}: LoKr factor w{i} of {stem!r} is missing (lokr_w{i} or "
                                    f"lokr_w{i}_a + lokr_w{i}_b)")
            scale = alpha / dim if (alpha is not None and dim) else 1.0
            out.append(("weight", Patch("lokr", tuple(factors), scale, stem)))
            kinds.add("LoKr")
        if "diff" in g:
            out.append(("weight", Patch("full", (g.pop("diff"),), 1.0, stem)))
            kinds.add("full delta")
        if "diff_b" in g:
            out.append(("bias", Patch("full", (g.pop("diff_b"),), 1.0, stem)))
            kinds.add("bias delta")
        leftover = sorted(f"{stem}.{r}" for r in g)
        if leftover:
            raise LoraError(f"LoRA {name!r}: incomplete {'/'.join(sorted(fams))} factors for {stem!r} "
                            f"(unpaired: {', '.join(leftover)})")
    if not patches:
        raise LoraError(f"LoRA {name!r} has no weights")
    targets: dict[str, Patch] = {}
    for stem, items in patches.items():
        style, native = _native_stem(stem)
        styles.add(style)
        for role, patch in items:
            key = f"{native}\x00{role}"             # resolved against the model in `resolve`
            if key in targets:
                raise LoraError(f"LoRA {name!r}: two keys change the same {role} of {native!r}")
            targets[key] = patch
    return LoraFile(name, targets, " + ".join(sorted(styles)), tuple(sorted(kinds)), path)


def _pattern_alpha(cfg: dict, stem: str) -> float:
    for pat, value in (cfg.get("alpha_pattern") or {}).items():
        if stem.endswith(pat) or re.fullmatch(rf"(.*\.)?{pat}", stem):
            return float(value)
    return float(cfg["lora_alpha"])


def _native_stem(stem: str) -> tuple[str, str]:
    """A file's module path -> (key style, the path with wrapper prefixes removed; dots or underscores)."""
    for p in _UNDERSCORE_PREFIXES:
        if stem.startswith(p):
            style = {"lycoris_": "LyCORIS (lycoris_)", "lora_transformer_": "OneTrainer (lora_transformer_)"}.get(
                p, "kohya (lora_unet_)")
            return style, "\x01" + stem[len(p):]            # \x01 marks an underscored path
    for p in _DOT_PREFIXES:
        if stem.startswith(p):
            style = {"transformer.": "diffusers (transformer.)", "base_model.model.": "PEFT (base_model.model.)",
                     "unet.": "diffusers (unet.)"}.get(p, "ComfyUI (diffusion_model.)")
            return style, stem[len(p):]
    return "plain Wan keys", stem


# ----------------------------------------------------------------------------------------------------------------------
# Matching against a model
# ----------------------------------------------------------------------------------------------------------------------

def _model_names(model: nn.Module):
    """Native module / parameter paths of the model, and the same with dots as underscores."""
    params = dict(model.named_parameters())
    params.update({k: v for k, v in model.named_buffers() if k.endswith(".weight")})
    modules = {n for n, _ in model.named_modules() if n}
    under = {}
    for n in modules | set(params):
        under.setdefault(n.replace(".", "_"), n)
    return params, modules, under


def _to_native(path: str, modules, under, params) -> Optional[str]:
    if path.startswith("\x01"):
        flat = path[1:]
        if flat in under:
            return under[flat]
        return _diffusers_underscored(flat, modules, under, params)   # diffusers names written with underscores
    if path in modules or path in params:
        return path
    from .loading import _DIFFUSERS_DIT, _apply_map
    for tail in (".weight", ""):
        mapped = _apply_map(path + tail, _DIFFUSERS_DIT)
        if mapped != path + tail:
            cand = mapped[:-len(tail)] if tail else mapped
            if cand in modules or cand in params:
                return cand
    return None


_DIFFUSERS_UNDERSCORE = [
    (r"^blocks_(\d+)_attn1_to_out_0$", r"blocks.\1.attn1.to_out.0"), (r"^blocks_(\d+)_attn2_to_out_0$",
                                                                        r"blocks.\1.attn2.to_out.0"),
    (r"^blocks_(\d+)_attn([12])_(to_[qkv]|norm_[qk])$", r"blocks.\1.attn\2.\3"),
    (r"^blocks_(\d+)_ffn_net_0_proj$", r"blocks.\1.ffn.net.0.proj"), (r"^blocks_(\d+)_ffn_net_2$",
                                                                       r"blocks.\1.ffn.net.2"),
    (r"^blocks_(\d+)_norm2$", r"blocks.\1.norm2"), (r"^blocks_(\d+)_scale_shift_table$", r"blocks.\1.scale_shift_table"),
    (r"^condition_embedder_time_embedder_linear_([12])$", r"condition_embedder.time_embedder.linear_\1"),
    (r"^condition_embedder_text_embedder_linear_([12])$", r"condition_embedder.text_embedder.linear_\1"),
    (r"^condition_embedder_time_proj$", "condition_embedder.time_proj"), (r"^proj_out$", "proj_out"),
]


def _diffusers_underscored(flat, modules, under, params):
    for pat, rep in _DIFFUSERS_UNDERSCORE:
        dotted, n = re.subn(pat, rep, flat)
        if n:
            return _to_native(dotted, modules, under, params)
    return None


def resolve(lora: LoraFile, model: nn.Module) -> dict[str, Patch]:
    """Patches by the model's parameter names; LoraError listing every change that does not land (with the closest
    module names) or whose shape does not fit."""
    params, modules, under = _model_names(model)
    out, unmatched, mismatched = {}, [], []
    for key, patch in lora.patches.items():
        path, role = key.split("\x00")
        native = _to_native(path, modules, under, params)
        target = None
        if native is not None:
            if native in params and role == "weight":         # a parameter itself (e.g. blocks.0.modulation)
                target = native
            elif f"{native}.{role}" in params:
                target = f"{native}.{role}"
        if target is None:
            unmatched.append(patch.source)
            continue
        shape = _logical_shape(model, target, params[target])
        if not patch.numel_ok(shape):
            mismatched.append(f"{patch.source} -> {target} {tuple(shape)}")
            continue
        out[target] = patch
    if unmatched or mismatched:
        names = sorted(modules | {p for p in params if not p.endswith((".weight", ".bias"))})
        msg = [f"LoRA {lora.name!r} does not fit this model"]
        if unmatched:
            hints = []
            for s in sorted(unmatched)[:5]:
                guess = s.split(".", 1)[-1] if s.startswith(_DOT_PREFIXES) else s
                for p in _UNDERSCORE_PREFIXES:
                    guess = guess[len(p):] if guess.startswith(p) else guess
                close = difflib.get_close_matches(guess.replace("_", "."), names, n=2, cutoff=0.4)
                hints.append(f"{s} (closest: {', '.join(close) or 'none'})")
            msg.append(f"{len(unmatched)} of {len(lora.patches)} keys match no module: " + "; ".join(hints)
                       + (" ..." if len(unmatched) > 5 else ""))
        if mismatched:
            msg.append(f"shape mismatches ({len(mismatched)}): {'; '.join(sorted(mismatched)[:5])}")
        raise LoraError(". ".join(msg))
    return out


def _logical_shape(model, name, tensor):
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner) if owner else model
    if leaf == "weight" and hasattr(mod, "weight_shape"):
        return tuple(mod.weight_shape)
    return tuple(tensor.shape)


# ----------------------------------------------------------------------------------------------------------------------
# Applying
# ----------------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a bundle: its file, strength and, on a two-expert model, the experts it applies to (EXPERTS)."""
    path: str
    strength: float = 1.0
    expert: str = "both"

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``FILE`` or ``FILE:STRENGTH``."""
        path, sep, tail = str(text).rpartition(":")
        if sep and path and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
            return cls(path, float(tail))
        return cls(str(text), 1.0)


def combine(loaded: Iterable[tuple[dict, float]]) -> dict[str, list]:
    """[(resolved patches, strength)] -> parameter -> [(strength, Patch)]."""
    out: dict[str, list] = {}
    for patches, strength in loaded:
        for name, patch in patches.items():
            out.setdefault(name, []).append((float(strength), patch))
    return out


def is_packed(model: nn.Module, name: str) -> bool:
    owner = name.rpartition(".")[0]
    return name.endswith(".weight") and hasattr(model.get_submodule(owner), "codec")


def plan(model: nn.Module, changes: dict[str, list], mode: str = "auto") -> tuple[dict, dict]:
    """Split changes into (merged, run-time) sets. Run-time: weights of Linear / Conv3d layers (packed ones always,
    dense ones in unmerged mode). Everything else (norms, modulation tables, biases) is merged."""
    if mode not in MODES:
        raise LoraError(f"LoRA mode {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    merged, runtime = {}, {}
    for name, items in changes.items():
        owner, _, leaf = name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        layer = leaf == "weight" and (isinstance(mod, (nn.Linear, nn.Conv3d)) or hasattr(mod, "codec"))
        packed = hasattr(mod, "codec") and leaf == "weight"
        if packed and mode == "merged":
            raise LoraError(f"LoRA mode 'merged' cannot change the quantised weight {name} (it would be re-rounded "
                            "to the file's format); use 'auto' or 'unmerged'")
        (runtime if layer and (packed or mode == "unmerged") else merged)[name] = items
    return merged, runtime


class _Hook:
    """Adds strength x delta(x) to a layer's output."""

    def __init__(self, items):
        self.items = items
        self.cache = {}

    def __call__(self, module, args, output):
        x = args[0]
        conv = isinstance(module, nn.Conv3d) or hasattr(module, "stride")
        for strength, p in self.items:
            if p.kind == "lowrank" and not conv:
                up, down = self._factors(p, x)
                output = output + F.linear(F.linear(x, down), up) * (p.scale * strength)
            else:
                shape = getattr(module, "weight_shape", None) or module.weight.shape
                d = p.delta(shape, x.dtype, x.device) * strength
                output = output + (F.conv3d(x, d, None, module.stride, module.padding, module.dilation, module.groups)
                                   if conv else F.linear(x, d))
        return output

    def _factors(self, p, x):
        key = (id(p), x.device, x.dtype)
        if key not in self.cache:
            self.cache.clear() if len(self.cache) > 4 else None
            up, down = p.tensors
            self.cache[key] = (up.flatten(1).to(x.device, x.dtype), down.flatten(1).to(x.device, x.dtype))
        return self.cache[key]


@dataclass
class LoraState:
    """What is applied to one model right now: ``key`` identifies it; ``backups`` hold original tensors (CPU) of
    merged parameters; ``hooks`` the run-time handles."""
    key: tuple = ()
    backups: dict = field(default_factory=dict)
    hooks: list = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)


def state_of(model: nn.Module) -> LoraState:
    st = model.__dict__.get("_spacetime_lora")
    if st is None:
        st = LoraState()
        model.__dict__["_spacetime_lora"] = st
    return st


@torch.no_grad()
def merge(model: nn.Module, changes: dict[str, list], backups: Optional[dict] = None):
    """Add strength x delta into each parameter (computed in float32, stored in the parameter's dtype). When
    ``backups`` is a dict, each parameter's original is kept there (on the CPU) first."""
    for name, items in changes.items():
        p = model.get_parameter(name)
        if backups is not None and name not in backups:
            backups[name] = p.detach().to("cpu", copy=True)
        total = p.detach().float()
        for strength, patch in items:
            total = total + patch.delta(p.shape, torch.float32, p.device) * strength
        p.copy_(total.to(p.dtype))


@torch.no_grad()
def restore(model: nn.Module, backups: dict):
    for name, orig in backups.items():
        model.get_parameter(name).copy_(orig.to(model.get_parameter(name).device))
    backups.clear()


def attach(model: nn.Module, changes: dict[str, list]) -> list:
    handles = []
    for name, items in changes.items():
        mod = model.get_submodule(name.rpartition(".")[0])
        handles.append(mod.register_forward_hook(_Hook(items)))
    return handles


def activate(model: nn.Module, key: tuple, changes: dict[str, list], mode: str = "auto",
             merge_here: bool = True) -> LoraState:
    """Make exactly these changes active on ``model`` (undoing whatever else was applied). ``key`` identifies the
    set; nothing happens when it is already active. With ``merge_here`` False the merged share is left to the caller
    (ComfyUI's model patching applies it); only the run-time share is attached here."""
    st = state_of(model)
    with st.lock:
        full_key = (key, mode, merge_here)
        if st.key == full_key:
            return st
        deactivate(model)
        merged, runtime = plan(model, changes, mode)
        if merge_here and merged:
            merge(model, merged, st.backups)
        st.hooks = attach(model, runtime)
        st.key = full_key
        return st


def deactivate(model: nn.Module):
    st = state_of(model)
    with st.lock:
        for h in st.hooks:
            h.remove()
        st.hooks = []
        restore(model, st.backups)
        st.key = ()


def comfy_patch_dict(model: nn.Module, changes: dict[str, list], prefix: str = "") -> list[tuple]:
    """The merged share in the forms ComfyUI's model patching takes, one entry per strength:
    ``(strength, lora_sd, to_load, diffs)``. Low-rank pairs stay low-rank in ComfyUI's canonical LoRA keys
    (``<stem>.lora_up.weight``, ``.lora_down.weight``, ``.alpha`` = scale x rank) for ``comfy.lora.load_lora(lora_sd,
    to_load)``; every other change is a full ``("diff", (delta,))`` patch keyed by ``prefix + parameter``."""
    by_strength: dict[float, tuple[dict, dict, dict]] = {}
    for name, items in changes.items():
        owner, _, leaf = name.rpartition(".")
        shape = model.get_parameter(name).shape
        for strength, patch in items:
            sd, to_load, diffs = by_strength.setdefault(strength, ({}, {}, {}))
            if patch.kind == "lowrank" and leaf == "weight" and owner not in to_load:
                up, down = patch.tensors
                sd[f"{owner}.lora_up.weight"] = up
                sd[f"{owner}.lora_down.weight"] = down
                sd[f"{owner}.alpha"] = torch.tensor(float(patch.scale * down.shape[0]))
                to_load[owner] = f"{prefix}{name}"
            else:
                key = f"{prefix}{name}"
                delta = patch.delta(shape)
                if key in diffs:
                    delta = delta + diffs[key][1][0]
                diffs[key] = ("diff", (delta,))
    return [(s, sd, to_load, diffs) for s, (sd, to_load, diffs) in by_strength.items()]
