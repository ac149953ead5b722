"""Two experts in one sampling run (Wan 2.2 A14B): a high-noise expert denoises the early, noisy steps and a
low-noise expert the rest, with one solver (and its history) across the switch.

The switch follows Wan: a step whose model timestep (floor(sigma * 1000)) is at or above ``boundary * 1000`` uses
the high-noise expert (boundary 0.875 for text-to-video, 0.9 for image-to-video), or, when ``step`` is given, the
first ``step`` steps do. Each expert has its own guidance scale. Only one expert is resident on the compute device
at a time: the other waits on the offload device (CPU), and its text keys/values are dropped at the switch.

    pair = ExpertPair(high_dit, low_dit, ExpertSwitch(boundary=0.875), cfg_high=4.0, device="cuda")
    latents = sampling.sample(pair, noise, text, text_null, steps=40, shift=12.0, cfg=3.0)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .errors import SpacetimeValueError
from .offload import place_model
from .sampling import NUM_TRAIN_TIMESTEPS, GuidedDenoiser

HIGH, LOW = "high", "low"
DEFAULT_BOUNDARY = {"t2v": 0.875, "i2v": 0.9}      # Wan 2.2 A14B: text-to-video, image-to-video


@dataclass(frozen=True)
class ExpertSwitch:
    """When the low-noise expert takes over: at sigma ``boundary`` or, if ``step`` is set, at that step."""
    boundary: float = DEFAULT_BOUNDARY["t2v"]
    step: Optional[int] = None

    def __post_init__(self):
        if not 0.0 < float(self.boundary) <= 1.0:
            raise SpacetimeValueError(f"expert boundary={self.boundary} is not allowed: a sigma in (0, 1] "
                                      f"(Wan 2.2: 0.875 text-to-video, 0.9 image-to-video)")
        if self.step is not None and (not isinstance(self.step, int) or self.step < 0):
            raise SpacetimeValueError(f"expert switch step={self.step!r} is not allowed: an integer >= 0 "
                                      f"(the first step that uses the low-noise expert)")

    def uses_high(self, step: int, timestep: int) -> bool:
        if self.step is not None:
            return step < self.step
        return int(timestep) >= self.boundary * NUM_TRAIN_TIMESTEPS

    def plan(self, timesteps) -> list:
        """HIGH or LOW for every step of a schedule (model timesteps, one per step)."""
        return [HIGH if self.uses_high(i, int(t)) else LOW for i, t in enumerate(timesteps)]

    def switch_step(self, timesteps) -> int:
        """The first step that uses the low-noise expert (the number of steps when none does)."""
        plan = self.plan(timesteps)
        return plan.index(LOW) if LOW in plan else len(plan)


def check_expert_files(high, low) -> None:
    """A low-noise expert needs a high-noise one (the DiT file), and they must be two different files."""
    if low is None:
        return
    if high is None:
        raise SpacetimeValueError("a low-noise expert file was given without the high-noise expert: pass the "
                                  "high-noise expert as the DiT file (dit / --model / dit_file)")
    from pathlib import Path
    if Path(high).resolve() == Path(low).resolve():
        raise SpacetimeValueError(f"the low-noise expert file {str(low)!r} is the DiT (high-noise expert) file "
                                  f"itself; a Wan 2.2 A14B model has two different files (high_noise / low_noise)")


def default_switch(model_type: str, boundary: Optional[float] = None, step: Optional[int] = None) -> ExpertSwitch:
    """The switch for a DiT type, with the boundary and/or step given by the user (None or 0: the default)."""
    b = boundary if boundary else DEFAULT_BOUNDARY.get(model_type, DEFAULT_BOUNDARY["t2v"])
    return ExpertSwitch(float(b), int(step) if step else None)


class ExpertPair:
    """The two experts of one model, used by ``sampling.sample`` in place of a single DiT.

    ``high`` / ``low``: modules, or callables returning them (loaded on first use). ``load(name)`` /
    ``unload(name)`` (name HIGH or LOW) replace the default residency, which moves the idle expert to
    ``offload_device`` before the active one moves to ``device`` (block offload is respected). ``wrap`` turns an
    expert into the model the denoiser calls (e.g. adding image channels)."""

    def __init__(self, high, low, switch: ExpertSwitch = ExpertSwitch(), cfg_high: Optional[float] = None,
                 device=None, offload_device="cpu", load: Optional[Callable] = None,
                 unload: Optional[Callable] = None, wrap: Optional[Callable] = None, cfg=None):
        self._sources = {HIGH: high, LOW: low}
        self._modules: dict = {}
        self.switch = switch
        self.cfg_high = cfg_high
        self._device = torch.device(device) if device is not None else None
        self.offload_device = torch.device(offload_device)
        self._load, self._unload, self.wrap = load, unload, wrap
        self._cfg = cfg
        self.resident: Optional[str] = None
        self.events: list = []                     # (what, expert) in order: ("load", HIGH), ("unload", HIGH), ...

    # -------------------------------------------------------------------------------------------------- experts
    def expert(self, which: str):
        if which not in self._modules:
            src = self._sources[which]
            self._modules[which] = src if isinstance(src, torch.nn.Module) else src()
            self._check_same_architecture()
        return self._modules[which]

    def _check_same_architecture(self):
        if len(self._modules) == 2 and self._modules[HIGH].cfg != self._modules[LOW].cfg:
            a, b = self._modules[HIGH].cfg, self._modules[LOW].cfg
            raise SpacetimeValueError(
                f"the low-noise expert's architecture (dim {b.dim}, {b.num_layers} layers, {b.in_dim} input "
                f"channels) differs from the high-noise expert's (dim {a.dim}, {a.num_layers} layers, {a.in_dim} "
                f"input channels); both must be experts of one Wan 2.2 A14B model (text-to-video or image-to-video)")

    @property
    def cfg(self):
        """The experts' DiTConfig (known without loading when given at construction)."""
        if self._cfg is not None:
            return self._cfg
        return self.expert(HIGH).cfg

    @property
    def device(self) -> torch.device:
        """The compute device: as given, or (with ``load`` hooks that place the experts themselves) where the
        high-noise expert is when first asked."""
        if self._device is None:
            self._device = next(self.expert(HIGH).parameters()).device
        return self._device

    def activate(self, which: str):
        """Make ``which`` the one expert on the compute device and return it."""
        if self.resident == which:
            return self.expert(which)
        other = LOW if which == HIGH else HIGH
        if self.resident == other or other in self._modules:
            self._release(other)
        if self._load is not None:
            module = self._load(which)
        else:
            module = place_model(self.expert(which), self.device)
        self.resident = which
        self.events.append(("load", which))
        return module

    def _release(self, which: str):
        if self._unload is not None:
            if self.resident == which:
                self._unload(which)
        elif which in self._modules:
            place_model(self._modules[which], self.offload_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        if self.resident == which:
            self.events.append(("unload", which))
            self.resident = None

    def release(self):
        """Move the resident expert off the compute device (after sampling, when memory is wanted back)."""
        if self.resident is not None:
            self._release(self.resident)

    # -------------------------------------------------------------------------------------------------- sampling
    def guided_denoiser(self, text, text_lengths=None, text_null=None, text_null_lengths=None, cfg: float = 1.0,
                        cond=None, timesteps=None, parallel=None, cache=None, frame_cfg: float = 0.0,
                        frame_noise=None, frame_cfg_stop: float = 0.0, contrast=None) -> "ExpertDenoiser":
        return ExpertDenoiser(self, (text, text_lengths, text_null, text_null_lengths), cfg, cond, timesteps,
                              parallel, cache, frame_cfg, frame_noise, frame_cfg_stop, contrast)


class ExpertDenoiser:
    """What ``sampling.sample`` calls each step: the guided denoiser of the step's expert. ``history`` lists the
    expert of every step it ran."""

    def __init__(self, pair: ExpertPair, text_args: tuple, cfg: float, cond, timesteps, parallel=None, cache=None,
                 frame_cfg: float = 0.0, frame_noise=None, frame_cfg_stop: float = 0.0, contrast=None):
        self.pair, self.text_args, self.cfg, self.cond = pair, text_args, float(cfg), cond
        self.contrast = contrast                             # sampling.Contrast or None, for both experts
        self.frame_cfg, self.frame_noise, self.frame_cfg_stop = frame_cfg, frame_noise, frame_cfg_stop
        self.parallel, self.cache = parallel, cache          # model/parallel.py, model/cache.py (per expert state)
        self.plan = pair.switch.plan(timesteps)
        self.active: Optional[str] = None
        self.denoiser: Optional[GuidedDenoiser] = None
        self.history: list = []

    def guidance(self, which: str) -> float:
        return self.pair.cfg_high if which == HIGH and self.pair.cfg_high is not None else self.cfg

    def __call__(self, x: torch.Tensor, t: int, step: int) -> torch.Tensor:
        which = self.plan[step]
        if which != self.active:
            self.denoiser = None                       # drop the other expert's text keys/values first
            module = self.pair.activate(which)
            if self.pair.wrap is not None:
                module = self.pair.wrap(module)
            self.denoiser = GuidedDenoiser(module, *self.text_args, cfg=self.guidance(which), cond=self.cond,
                                           parallel=self.parallel, cache=self.cache, frame_cfg=self.frame_cfg,
                                           frame_noise=self.frame_noise, frame_cfg_stop=self.frame_cfg_stop,
                                           contrast=self.contrast)
            self.active = which
        self.history.append(which)
        return self.denoiser(x, t)


__all__ = ["ExpertSwitch", "ExpertPair", "ExpertDenoiser", "default_switch", "check_expert_files", "DEFAULT_BOUNDARY",
           "HIGH", "LOW"]
