"""The Python API: one object holding a DiT, a VAE and a text encoder, loaded lazily, and one ``generate`` call.

    from spacetime.model import Spacetime
    st = Spacetime.load("toyworld")                       # the embedded model (or a Wan preset / file paths)
    video = st.generate("a red ball bounces on a navy background", frames=17, seed=1)   # [B, T, H, W, 3] 0..1

    lat = st.sample_latents(...)   # raw VAE latents [B, C, F', H', W'] (the ComfyUI LATENT convention)
    frames = st.decode(lat)        # streamed, one latent frame at a time
    styled = st.with_lora("style.safetensors", 0.8)    # shares st's parts; the LoRA is active while it is used

Latents passed in and out are *raw* (un-normalised) VAE means, as ComfyUI stores them; normalisation for the DiT
happens inside.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from .conditioning import (Placement, check_frames, check_size, encode_placement, latent_condition,
                           round_up_frames, to_frames, to_video)
from .concat import concat_channels, with_concat
from .config import BundlePreset, bundle_preset
from .errors import SpacetimeValueError
from .experts import HIGH, LOW, ExpertPair, ExpertSwitch, check_expert_files, default_switch
from .loading import file_sha256, load_dit, load_text_encoder, load_vae, parse_dtype
from .lora import LoraSpec
from .offload import BlockOffload, check_offload_blocks, place_model
from .sampling import SAMPLERS, Contrast, FrameCondition, check_contrast_cfg, check_frame_cfg, sample, sigma_schedule

ProgressFn = Optional[Callable[[int, int], None]]
_EXPERT_OF = {"dit": "high_noise", "dit_low": "low_noise"}      # DiT parts and the LoRA expert names that reach them


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def noise_for(shape, seed: int) -> torch.Tensor:
    """Deterministic standard normal noise from a CPU generator: batch item b uses seed + b, so a video depends
    only on its own seed, on any device and in any batch."""
    out = torch.empty(shape)
    for b in range(shape[0]):
        g = torch.Generator().manual_seed(int(seed + b) % (2 ** 63))
        out[b] = torch.randn(shape[1:], generator=g)
    return out


@dataclass
class TextEmbedding:
    """Token embeddings of prompts (and their negatives), computed once and reused by every sampling step."""
    emb: torch.Tensor
    lengths: torch.Tensor
    neg_emb: Optional[torch.Tensor] = None
    neg_lengths: Optional[torch.Tensor] = None
    prompts: tuple = ()            # as encoded (after prompt expansion)
    negatives: tuple = ()
    source: tuple = ()             # as written by the user
    # contrast guidance (model/sampling.py): the contrast prompts' embeddings, or None when no prompt has one (a
    # prompt without one reads itself there, so its term is zero)
    contrast_emb: Optional[torch.Tensor] = None
    contrast_lengths: Optional[torch.Tensor] = None
    contrasts: tuple = ()          # as encoded; "" where a prompt has none


@dataclass
class Spacetime:
    """A model bundle. Parts load on first use; ``key`` identifies it for caching."""
    preset: BundlePreset
    dit_path: Optional[Path] = None
    vae_path: Optional[Path] = None
    text_path: Optional[Path] = None
    tokenizer_path: Optional[Path] = None
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=default_device)
    prompt_expander: Optional[Callable[[str], str]] = None
    builders: dict = field(default_factory=dict)         # part name -> callable returning a module (overrides)
    loras: tuple = ()                                    # LoraSpec(path, strength, expert), in order
    lora_mode: str = "auto"                              # auto | merged | unmerged (see model/lora.py)
    host_merges_loras: bool = False                      # ComfyUI's model patching applies the merged share
    _parts: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    dit_low_path: Optional[Path] = None       # Wan 2.2 A14B: the low-noise expert (dit_path is the high-noise one)
    offload_blocks: int = 0                   # DiT blocks kept in CPU memory and streamed to the device (offload.py)
    check_cancel: Optional[Callable[[], None]] = None   # called between DiT blocks when blocks are offloaded
    parallel: Optional[object] = field(default=None, repr=False)    # model.parallel.Parallel of a multi-rank run

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, preset: str = "toyworld", dit=None, vae=None, text_encoder=None, tokenizer=None, dtype="fp32",
             device=None, dit_low_noise=None, offload_blocks: int = 0, loras=(), lora_mode: str = "auto"
             ) -> "Spacetime":
        """Build from a preset name; files given here replace the preset's. Nothing is read until first use,
        except that every path must exist and LoRA files are checked. ``dit_low_noise``: the low-noise expert of a
        Wan 2.2 A14B pair (``dit`` is then the high-noise expert). ``offload_blocks``: DiT blocks kept in CPU memory
        (low VRAM). ``loras``: paths, ``(path, strength[, expert])`` tuples or LoraSpec; on two experts a LoRA
        applies to both unless its ``expert`` is "high_noise" or "low_noise"."""
        p = bundle_preset(preset)
        files = dict(getattr(p, "files", {}) or {})
        for name, given in (("dit", dit), ("vae", vae), ("text", text_encoder), ("tokenizer", tokenizer),
                            ("dit_low_noise", dit_low_noise)):
            if given is not None:
                files[name] = Path(given)
        for name, path in files.items():
            if path is not None and not Path(path).exists():
                raise SpacetimeValueError(f"{name} file {str(path)!r} does not exist")
        check_expert_files(files.get("dit"), files.get("dit_low_noise"))
        check_offload_blocks(offload_blocks, p.dit.num_layers)
        dev = torch.device(device) if device not in (None, "auto") else default_device()
        st = cls(p, files.get("dit"), files.get("vae"), files.get("text"), files.get("tokenizer"),
                 parse_dtype(dtype), dev, getattr(p, "prompt_expander", None), dict(getattr(p, "builders", {})),
                 dit_low_path=files.get("dit_low_noise"), offload_blocks=int(offload_blocks))
        for item in loras or ():
            spec = item if isinstance(item, LoraSpec) else (
                LoraSpec(str(item[0]), *item[1:]) if isinstance(item, (tuple, list)) else LoraSpec(str(item)))
            st = st.with_lora(spec.path, spec.strength, lora_mode, spec.expert)
        return st

    @property
    def key(self) -> tuple:
        return (self.preset.name, str(self.dit_path), str(self.vae_path), str(self.text_path), str(self.dtype),
                str(self.device), str(self.dit_low_path), self.offload_blocks) + (
            (tuple(self.loras), self.lora_mode) if self.loras else ())

    @property
    def has_experts(self) -> bool:
        """Two experts (Wan 2.2 A14B): the DiT file is the high-noise expert, ``dit_low`` the low-noise one."""
        return self.dit_low_path is not None or "dit_low" in self.builders

    @property
    def concat_conditioned(self) -> bool:
        """The DiT takes known frames as extra input channels (Wan 2.2 I2V-A14B), see concat.py."""
        return self.preset.dit.model_type == "i2v"

    @property
    def needs_known_frames(self) -> bool:
        """Generation needs given frames: the DiT takes them as channels, or its weights were trained for generation
        from given frames only (the preset's ``frames_only``)."""
        return self.concat_conditioned or self.preset.frames_only

    def check_known_frames(self, cond) -> None:
        """Refuse text-to-video (no known frame in ``cond``) where generation needs given frames
        (``needs_known_frames``), naming what the model takes them as."""
        if not self.needs_known_frames or (cond is not None and cond.any_known):
            return
        if self.concat_conditioned:
            concat_channels(None, self.preset.dit.in_dim, self.preset.dit.out_dim)     # raises: needs an image
        raise SpacetimeValueError(
            f"preset {self.preset.name!r} generates from given frames only (image-to-video, extension, fill) and got "
            f"none; give an image or a clip to continue, or use a text-to-video preset (e.g. toyworld)")

    # ------------------------------------------------------------------ LoRA
    def with_lora(self, path, strength: float = 1.0, mode: Optional[str] = None, expert: str = "both"
                  ) -> "Spacetime":
        """A bundle sharing this one's loaded parts with one more LoRA on the DiT (on a two-expert model: on both
        experts, or on the one named by ``expert``, "high_noise" / "low_noise"). The file is read and checked now
        (every key must be understood); that every change lands on the DiT is checked when the DiT is first used.
        The LoRA is active only while the returned bundle uses the DiT."""
        from .lora import EXPERTS, MODES
        mode = mode or self.lora_mode
        if mode not in MODES:
            raise SpacetimeValueError(f"LoRA mode {mode!r} is not allowed; allowed: {', '.join(MODES)}")
        if expert not in EXPERTS:
            raise SpacetimeValueError(f"LoRA expert {expert!r} is not allowed; allowed: {', '.join(EXPERTS)}")
        if expert != "both" and not self.has_experts:
            raise SpacetimeValueError(f"LoRA expert {expert!r} needs a two-expert model (Wan 2.2 A14B with a "
                                      f"low-noise expert file); {self.preset.name} has one DiT: use 'both'")
        try:
            strength = float(strength)
        except (TypeError, ValueError):
            raise SpacetimeValueError(f"LoRA strength {strength!r} is not a number") from None
        if not math.isfinite(strength):
            raise SpacetimeValueError(f"LoRA strength {strength} is not a finite number")
        self.lora_file(path)
        return replace(self, loras=self.loras + (LoraSpec(str(path), strength, expert),), lora_mode=mode)

    def lora_file(self, path):
        """The parsed LoRA file (read once per file version and shared by every bundle of this model)."""
        from .lora import read_lora
        p = Path(path)
        if not p.is_file():
            raise SpacetimeValueError(f"LoRA file {str(path)!r} does not exist")
        key = ("lora", str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)
        with self._lock:
            if key not in self._parts:
                self._parts[key] = read_lora(p)
            return self._parts[key]

    def lora_specs(self, part: str = "dit") -> tuple:
        """The LoRAs that apply to a DiT part: "dit" (the DiT, or the high-noise expert) or "dit_low"."""
        return tuple(s for s in self.loras if s.expert in ("both", _EXPERT_OF[part]))

    def lora_changes(self, module, part: str = "dit") -> dict:
        """This bundle's LoRAs for ``part`` resolved against ``module``: parameter -> [(strength, Patch)]."""
        from .lora import combine, resolve
        specs = self.lora_specs(part)
        key = ("lora-changes", id(module), specs)
        with self._lock:
            if key not in self._parts:
                try:
                    self._parts[key] = combine((resolve(self.lora_file(s.path), module), s.strength)
                                               for s in specs)
                except SpacetimeValueError as exc:
                    if part == "dit" or not self.has_experts:
                        raise
                    raise type(exc)(f"low-noise expert: {exc}") from None
            return self._parts[key]

    def lora_info(self) -> list:
        """For generation records: file name, SHA-256, strength, key style and kinds of each LoRA (and, on a
        two-expert model, the experts it applies to)."""
        out = []
        for s in self.loras:
            f = self.lora_file(s.path)
            key = ("sha", str(Path(s.path).resolve()))
            if key not in self._parts:
                self._parts[key] = file_sha256(s.path)
            out.append({"name": Path(s.path).name, "sha256": self._parts[key], "strength": s.strength,
                        "style": f.style, "kinds": list(f.kinds)})
            if self.has_experts:
                out[-1]["expert"] = s.expert
        return out

    def weights_record(self) -> dict:
        """What a generation record says about the weights beyond the preset: the format of each DiT file (once
        loaded; two experts: both) and the LoRAs."""
        out = {}
        for part, field_name in (("dit", "dit_format"), ("dit_low", "low_noise_dit_format")):
            fmt = getattr(self._parts.get(part), "checkpoint_format", None)
            if fmt:
                out[field_name] = fmt
        if self.loras:
            out["loras"] = self.lora_info()
        return out

    def base_dit(self, part: str = "dit"):
        """A DiT part ("dit" or "dit_low") as loaded, whatever LoRAs are active on it (for hosts that patch it
        themselves)."""
        return self._part(part)

    def _activate_loras(self, module, part: str = "dit"):
        """Make exactly this bundle's LoRAs for ``part`` active on ``module``. Merged weights are written in place,
        so with block offload attached they land in the CPU copies of the offloaded blocks (no device copy of an
        offloaded block is kept between forwards; any prefetched one is dropped first)."""
        from .lora import activate, deactivate, state_of
        specs = self.lora_specs(part)
        if not specs and not state_of(module).key:
            return module
        off = getattr(module, "_block_offload", None)
        if off is not None:
            off.release_all()
        if not specs:
            deactivate(module)
            return module
        activate(module, specs, self.lora_changes(module, part), self.lora_mode,
                 merge_here=not self.host_merges_loras)
        return module

    @property
    def temporal_factor(self) -> int:
        return self.preset.vae.temporal_factor

    @property
    def size_multiple(self) -> int:
        return self.preset.stride[1]

    def _part(self, name: str):
        with self._lock:
            if name not in self._parts:
                part = self._build(name)
                if name not in _EXPERT_OF:
                    self._parts[name] = part
                    return part
                try:            # LoRAs are merged before block offload attaches and before the DiT is placed
                    self._activate_loras(part, name)
                finally:
                    self._parts[name] = self._stage_dit(part)
            return self._parts[name]

    def _stage_dit(self, model):
        """Attach block offload; a single DiT goes to the compute device, experts wait in CPU memory until used."""
        if self.offload_blocks:
            BlockOffload(model, self.offload_blocks, self.device, check_cancel=self._check_cancel)
        return place_model(model, "cpu" if self.has_experts else self.device)

    def _check_cancel(self):
        if self.check_cancel is not None:
            self.check_cancel()

    def _build(self, name: str):
        if name in self.builders:
            return self.builders[name](self)
        if name in ("dit", "dit_low"):
            path = self.dit_path if name == "dit" else self.dit_low_path
            if path is None:
                raise SpacetimeValueError(f"preset {self.preset.name!r} has no DiT file; pass dit=PATH")
            staged = self.has_experts or self.offload_blocks > 0      # placed by _stage_dit / ExpertPair
            try:
                return load_dit(path, self.preset.dit, "cpu" if staged else self.device, self.dtype)
            except SpacetimeValueError as exc:
                if name == "dit":
                    raise
                raise SpacetimeValueError(f"low-noise expert file {path.name!r}: {exc}") from None
        if name == "vae":
            if self.vae_path is None:
                raise SpacetimeValueError(f"preset {self.preset.name!r} has no VAE file; pass vae=PATH")
            vae_dtype = torch.float32 if self.device.type == "cpu" else self.dtype
            return load_vae(self.vae_path, self.preset.vae, self.device, vae_dtype)
        if name == "text":
            if self.text_path is None:
                raise SpacetimeValueError(f"preset {self.preset.name!r} has no text encoder file; pass "
                                          "text_encoder=PATH (and tokenizer=PATH to its tokenizer.json)")
            if self.tokenizer_path is None:
                raise SpacetimeValueError("a tokenizer.json is needed with the text encoder; pass tokenizer=PATH")
            return load_text_encoder(self.text_path, self.tokenizer_path, kind=self.preset.text.kind,
                                     device=self.device, dtype=self.dtype, max_length=self.preset.text.max_length)
        raise KeyError(name)

    @property
    def dit(self):
        """The DiT (two experts: the high-noise one) with exactly this bundle's LoRAs active."""
        with self._lock:
            return self._activate_loras(self._part("dit"), "dit")

    @property
    def dit_low(self):
        """The low-noise expert of a two-expert model, with exactly this bundle's LoRAs active."""
        with self._lock:
            return self._activate_loras(self._part("dit_low"), "dit_low")

    @property
    def vae(self):
        return self._part("vae")

    @property
    def text_encoder(self):
        return self._part("text")

    def loaded_parts(self) -> dict:
        return dict(self._parts)

    def checkpoint_sha256(self, part: str = "dit") -> Optional[str]:
        """SHA-256 of the DiT file (``part="dit_low"``: of the low-noise expert's file)."""
        path = self.dit_path if part == "dit" else self.dit_low_path
        if path is None:
            return None
        key = f"sha:{part}"
        if key not in self._parts:
            self._parts[key] = file_sha256(path)
        return self._parts[key]

    # ------------------------------------------------------------------ text
    def expand(self, prompt: str) -> str:
        return self.prompt_expander(prompt) if self.prompt_expander and prompt.strip() else prompt

    def contrast_for(self, prompt: str) -> str:
        """The contrast prompt the model writes for ``prompt`` (embedded presets: the opposite motion), or ""."""
        writer = getattr(self.preset, "contrast_writer", None)
        return (writer(prompt) or "") if writer is not None and prompt.strip() else ""

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str], negatives: Optional[Sequence[str]] = None,
                    expand: bool = True, contrasts: Optional[Sequence[str]] = None) -> TextEmbedding:
        """Token embeddings of ``prompts`` (expanded first with ``expand``), their ``negatives`` and contrast
        prompts: ``contrasts`` None lets the model write them (``contrast_for``), a text per prompt gives them
        ("" = none; expanded like the prompt)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        source = tuple(prompts)
        if isinstance(contrasts, str):
            contrasts = [contrasts] * len(source)
        if contrasts is not None and len(contrasts) != len(source):
            raise SpacetimeValueError(f"{len(contrasts)} contrast prompts for {len(source)} prompts; give one for "
                                      f"each prompt")
        prompts = [self.expand(p) if expand else p for p in prompts]
        emb, lens = self.text_encoder.encode(list(prompts))
        out = TextEmbedding(emb.cpu(), lens.cpu(), prompts=tuple(prompts), source=source)
        if contrasts is None:
            contrasts = [self.contrast_for(p) for p in source]
        else:
            contrasts = [(self.expand(c) if expand else c).strip() if str(c).strip() else "" for c in contrasts]
        if any(contrasts):
            cemb, clens = self.text_encoder.encode([c or p for c, p in zip(contrasts, prompts)])
            out.contrast_emb, out.contrast_lengths, out.contrasts = cemb.cpu(), clens.cpu(), tuple(contrasts)
        if negatives is not None:
            if isinstance(negatives, str):
                negatives = [negatives] * len(prompts)
            negatives = [n if n.strip() else self.preset.negative_prompt for n in negatives]
            nemb, nlens = self.text_encoder.encode(list(negatives))
            out.neg_emb, out.neg_lengths, out.negatives = nemb.cpu(), nlens.cpu(), tuple(negatives)
        return out

    # ------------------------------------------------------------------ pixels <-> latents
    def check_shape(self, width: int, height: int, frames: int):
        check_size(width, height, self.size_multiple, "width x height")
        check_frames(frames, self.temporal_factor, "frames")

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple:
        sf, tf = self.preset.vae.spatial_factor, self.temporal_factor
        return (batch, self.preset.vae.z_dim, (frames - 1) // tf + 1, height // sf, width // sf)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """IMAGE frames [T, H, W, 3] (or [B, T, H, W, 3]) in 0..1 -> raw latents [B, C, F', H', W']."""
        video = to_video(frames)
        self.check_shape(video.shape[-1], video.shape[-2], video.shape[2])
        vae = self.vae
        return vae.encode_raw(video.to(vae.device)).cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, progress: ProgressFn = None, cuts: Sequence[int] = ()) -> torch.Tensor:
        """Raw latents [B, C, F', H', W'] -> frames [B, T, H, W, 3] in 0..1, decoded one latent frame at a time
        and written straight into the output (memory does not grow with the clip beyond the frames). ``cuts``:
        latent frames where a new shot begins (a storyboard's ``StoryPlan.latent_cuts``); the decoder starts
        afresh there, so the cut stays hard instead of blending over the first frames of the new shot."""
        vae = self.vae
        B, C, Fp, Hp, Wp = latents.shape
        if C != vae.cfg.z_dim:
            raise SpacetimeValueError(f"latent has {C} channels; this VAE needs {vae.cfg.z_dim}")
        sf = vae.spatial_factor
        out = torch.empty(B, vae.pixel_frames(Fp), Hp * sf, Wp * sf, 3)
        t = 0
        for i, chunk in enumerate(vae.decode_chunks(latents.to(vae.device), normalized=False, restarts=cuts)):
            n = chunk.shape[2]
            out[:, t:t + n] = to_frames(chunk.cpu())
            t += n
            if progress:
                progress(i + 1, Fp)
        return out

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return self.vae.normalize(raw.float().to(self.vae.latent_mean.device)).cpu()

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.denormalize(z.float().to(self.vae.latent_mean.device)).cpu()

    # ------------------------------------------------------------------ conditioning
    @torch.no_grad()
    def condition_from_frames(self, placement: Placement) -> Optional[FrameCondition]:
        vae = self.vae
        cond = encode_placement(vae, Placement(placement.video.to(vae.device), placement.known),
                                whole=self.concat_conditioned)
        if cond is not None:
            cond.latents = cond.latents.cpu()
        return cond

    # ------------------------------------------------------------------ sampling
    def expert_switch(self, boundary: Optional[float] = None, step: Optional[int] = None) -> ExpertSwitch:
        """The expert switch of a two-expert model: the given boundary / step, or the preset's (0 or None)."""
        return default_switch(self.preset.dit.model_type, boundary or self.preset.expert_boundary, step)

    def expert_info(self, steps: int, shift: float, switch: ExpertSwitch, cfg_high_noise: Optional[float],
                    cfg: float) -> dict:
        """What a two-expert run did, for generation records: the switch, its step, both checkpoints."""
        step = switch.switch_step(sigma_schedule(steps, shift)[1])
        high_cfg = self.preset.cfg_high_noise if cfg_high_noise is None else cfg_high_noise
        return {"expert_boundary": switch.boundary, "expert_switch_step": step,
                "cfg_high_noise": cfg if high_cfg is None else high_cfg,
                "low_noise_checkpoint_sha256": self.checkpoint_sha256("dit_low")}

    def denoising_model(self, switch: Optional[ExpertSwitch] = None, cfg_high_noise: Optional[float] = None,
                        load: Optional[Callable] = None, unload: Optional[Callable] = None):
        """The DiT, or for two experts the ExpertPair that ``sample`` switches between. ``load(part)`` /
        ``unload(part)`` (part "dit" or "dit_low") replace the default device placement (ComfyUI's model
        management uses them; the compute device is then wherever ``load("dit")`` put the high-noise expert)."""
        if not self.has_experts:
            return load("dit") if load is not None else self.dit
        parts = {HIGH: "dit", LOW: "dit_low"}
        return ExpertPair(lambda: self.dit, lambda: self.dit_low, switch or self.expert_switch(),
                          cfg_high=self.preset.cfg_high_noise if cfg_high_noise is None else cfg_high_noise,
                          device=self.device if load is None else None, cfg=self.preset.dit,
                          load=None if load is None else (lambda w: load(parts[w])),
                          unload=None if unload is None else (lambda w: unload(parts[w])))

    def frame_guidance(self, frame_cfg: Optional[float] = None) -> float:
        """Frame guidance for a run: ``frame_cfg`` checked, or the preset's when None. Models that take known frames
        as image channels (``concat_conditioned``) have no pass without them, so they allow only 0."""
        g = self.preset.frame_cfg if frame_cfg is None else check_frame_cfg(frame_cfg)
        if g > 0 and self.concat_conditioned:
            raise SpacetimeValueError(
                f"frame_cfg={g} needs a model that reads known frames as clean latent frames; {self.preset.name} "
                f"takes them as image channels; allowed: 0")
        return g

    def contrast_guidance(self, contrast_cfg: Optional[float] = None, known_frames: bool = False) -> float:
        """Contrast guidance for a run: ``contrast_cfg`` checked, or when None the preset's for text-to-video and 0
        with ``known_frames`` (there frame guidance does the work; on the embedded model contrast guidance lowered
        fill and extension, weights/MODEL_CARD.md)."""
        if contrast_cfg is not None:
            return check_contrast_cfg(contrast_cfg)
        return 0.0 if known_frames else self.preset.contrast_cfg

    @torch.no_grad()
    def sample_latents(self, text: TextEmbedding, shape: tuple, seed: int = 0, steps: Optional[int] = None,
                       cfg: Optional[float] = None, shift: Optional[float] = None, sampler: str = "unipc",
                       cond: Optional[FrameCondition] = None, init: Optional[torch.Tensor] = None,
                       strength: float = 1.0, callback=None, *, switch: Optional[ExpertSwitch] = None,
                       cfg_high_noise: Optional[float] = None, load: Optional[Callable] = None,
                       unload: Optional[Callable] = None, cache=None,
                       frame_cfg: Optional[float] = None, contrast_cfg: Optional[float] = None) -> torch.Tensor:
        """Returns raw latents. ``cond.latents`` are normalised; ``init`` (for strength < 1) is raw. Two-expert
        models: ``switch`` (default: the preset's boundary) and ``cfg_high_noise`` (default: the preset's).
        ``cache``: step caching (model.cache.CacheSettings or StepCache), off when None. ``frame_cfg``: frame
        guidance with known frames (model/sampling.py; default: the preset's), on the steps down to the preset's
        ``frame_cfg_stop``. ``contrast_cfg``: contrast guidance with the contrast prompts of ``text`` (default: the
        preset's without known frames, off with them), on the steps down to the preset's ``contrast_cfg_stop``;
        without contrast prompts it is off. In a multi-rank run (``parallel``) every rank calls this with the same
        arguments."""
        steps = steps or self.preset.steps
        cfg = self.preset.cfg if cfg is None else cfg
        shift = shift or self.preset.shift
        if sampler not in SAMPLERS:
            raise SpacetimeValueError(f"sampler={sampler!r} is not supported; allowed: {', '.join(SAMPLERS)}")
        self.check_known_frames(cond)
        frame_cfg = self.frame_guidance(frame_cfg)
        contrast_cfg = self.contrast_guidance(contrast_cfg, cond is not None and cond.any_known)
        model = self.denoising_model(switch, cfg_high_noise, load, unload)
        B = shape[0]
        emb, lens = text.emb, text.lengths
        if emb.shape[0] == 1 and B > 1:
            emb, lens = emb.expand(B, -1, -1), lens.expand(B)
        if emb.shape[0] != B:
            raise SpacetimeValueError(f"{emb.shape[0]} prompts for a batch of {B} videos; give one prompt or {B}")
        neg, nlens = text.neg_emb, text.neg_lengths
        if neg is not None and neg.shape[0] == 1 and B > 1:
            neg, nlens = neg.expand(B, -1, -1), nlens.expand(B)
        contrast = None
        if text.contrast_emb is not None and contrast_cfg > 0:
            if text.contrast_emb.shape[0] not in (1, B):
                raise SpacetimeValueError(f"{text.contrast_emb.shape[0]} contrast prompts for a batch of {B} videos; "
                                          f"give one or {B}")
            lens_c = None if text.contrast_lengths is None else text.contrast_lengths.to(model.device)
            contrast = Contrast(text.contrast_emb.to(model.device), lens_c, contrast_cfg,
                                self.preset.contrast_cfg_stop)
        noise = noise_for(shape, seed)
        init_n = self.normalize(init) if init is not None else None
        dev = model.device
        if cond is not None:
            cond = FrameCondition(cond.latents.to(dev), cond.mask.to(dev))
        if self.concat_conditioned:                  # known frames go in as channels, not as clean tokens
            model = with_concat(model, concat_channels(cond, self.preset.dit.in_dim, self.preset.dit.out_dim))
            cond = None
        try:
            out = sample(model, noise.to(dev), emb.to(dev), None if neg is None else neg.to(dev),
                         text_lengths=lens.to(dev), text_null_lengths=None if nlens is None else nlens.to(dev),
                         steps=steps, shift=shift, cfg=cfg, sampler=sampler, cond=cond,
                         init=None if init_n is None else init_n.to(dev), strength=strength, callback=callback,
                         parallel=self.parallel, cache=cache, frame_cfg=frame_cfg,
                         frame_cfg_stop=self.preset.frame_cfg_stop, contrast=contrast)
        finally:
            if isinstance(model, ExpertPair) and load is None:
                model.release()                        # both experts back in CPU memory: room for decoding
        return self.denormalize(out.cpu())

    def generate(self, prompt, negative: str = "", *, width: Optional[int] = None, height: Optional[int] = None,
                 frames: Optional[int] = None, steps: Optional[int] = None, cfg: Optional[float] = None,
                 shift: Optional[float] = None, seed: int = 0, sampler: str = "unipc", batch: int = 1,
                 image: Optional[torch.Tensor] = None, image_position: str = "start",
                 extend: Optional[torch.Tensor] = None, direction: str = "forward",
                 after: Optional[torch.Tensor] = None, expand_prompt: bool = True,
                 callback=None, decode_progress: ProgressFn = None, switch: Optional[ExpertSwitch] = None,
                 cfg_high_noise: Optional[float] = None, cache=None,
                 frame_cfg: Optional[float] = None, contrast: Optional[str] = None,
                 contrast_cfg: Optional[float] = None) -> Optional[torch.Tensor]:
        """Text-to-video, image-to-video (``image`` [H, W, 3] placed at the start or end) or extension
        (``extend`` frames [T, H, W, 3]: ``direction`` forward = continue after it, backward = lead into it,
        fill = generate ``frames`` new frames between ``extend`` and ``after``). Returns frames [B, T, H, W, 3].
        For extension the output is the whole clip: the given frames (re-decoded) and the new ones. Two-expert
        models take ``switch`` and ``cfg_high_noise``, step caching ``cache``, frame guidance ``frame_cfg`` and
        contrast guidance ``contrast_cfg`` (see ``sample_latents``) with the ``contrast`` prompt (None: the one the
        model writes, "" none). In a multi-rank run only rank 0 decodes; the other ranks return None."""
        width = width or self.preset.default_size[0]
        height = height or self.preset.default_size[1]
        frames = frames or self.preset.default_frames
        plan = plan_task(self.temporal_factor, width, height, frames, batch, image, image_position, extend,
                         direction, after)
        self.check_shape(plan.width, plan.height, plan.total)
        self.frame_guidance(frame_cfg)
        self.contrast_guidance(contrast_cfg)
        text = self.encode_text([prompt], [negative], expand=expand_prompt,
                                contrasts=None if contrast is None else [contrast])
        cond = self.condition_from_frames(plan.placement) if plan.placement is not None else None
        lat = self.sample_latents(text, self.latent_shape(batch, plan.total, plan.height, plan.width), seed, steps,
                                  cfg, shift, sampler, cond, callback=callback, switch=switch,
                                  cfg_high_noise=cfg_high_noise, cache=cache, frame_cfg=frame_cfg,
                                  contrast_cfg=contrast_cfg)
        if self.parallel is not None and not self.parallel.is_main:
            return None
        return self.decode(lat, decode_progress)


@dataclass
class TaskPlan:
    width: int
    height: int
    total: int                          # frames of the clip that is generated
    placement: Optional[Placement]      # known pixel frames, or None for text-to-video


def _as_clip(frames: torch.Tensor, name: str) -> torch.Tensor:
    if frames.dim() == 3:
        frames = frames[None]
    if frames.dim() != 4 or frames.shape[-1] not in (3, 4):
        raise SpacetimeValueError(f"{name} must be frames [T, H, W, 3] in 0..1; got shape {tuple(frames.shape)}")
    return frames[..., :3]


def plan_task(tf: int, width: int, height: int, frames: int, batch: int, image=None, image_position="start",
              extend=None, direction="forward", after=None) -> TaskPlan:
    """Where known frames go for each task. ``frames`` is the clip length for text/image-to-video and the number
    of new frames for extension; lengths are rounded up so the clip is 1 + tf*k frames long."""
    if image is not None and extend is not None:
        raise SpacetimeValueError("give either image (image-to-video) or extend (extension), not both")
    if direction not in ("forward", "backward", "fill"):
        raise SpacetimeValueError(f"direction={direction!r} is not allowed; allowed: forward, backward, fill")
    if image_position not in ("start", "end"):
        raise SpacetimeValueError(f"image_position={image_position!r} is not allowed; allowed: start, end")
    if frames < 1:
        raise SpacetimeValueError(f"frames={frames} must be at least 1")
    if image is not None:
        img = _as_clip(image, "image")[:1]
        h, w = img.shape[1:3]
        total = frames
        pl = Placement.empty(batch, total, h, w)
        clip = to_video(img)
        if image_position == "start":
            pl.put(0, clip)
        else:
            hold = 1 if total == 1 else tf
            pl.put(total - hold, clip.expand(-1, -1, hold, -1, -1))
        return TaskPlan(w, h, total, pl)
    if extend is not None:
        ctx = _as_clip(extend, "extend")
        h, w = ctx.shape[1:3]
        n_ctx = ctx.shape[0]
        if direction == "forward":
            total = round_up_frames(n_ctx + frames, tf)
            pl = Placement.empty(batch, total, h, w).put(0, to_video(ctx))
        elif direction == "backward":
            total = round_up_frames(n_ctx + frames, tf)
            pl = Placement.empty(batch, total, h, w).put(total - n_ctx, to_video(ctx))
        else:
            if after is None:
                raise SpacetimeValueError("direction='fill' needs the clip that comes after the gap (after=...)")
            nxt = _as_clip(after, "after")
            if nxt.shape[1:3] != ctx.shape[1:3]:
                raise SpacetimeValueError(f"after is {nxt.shape[2]}x{nxt.shape[1]} but extend is {w}x{h}")
            total = round_up_frames(n_ctx + frames + nxt.shape[0], tf)
            pl = Placement.empty(batch, total, h, w).put(0, to_video(ctx)).put(total - nxt.shape[0], to_video(nxt))
        return TaskPlan(w, h, total, pl)
    return TaskPlan(width, height, frames, None)
