"""Step caching: skip the DiT's blocks on sampling steps whose input changed little, reusing the blocks' residual
from the last computed step (the TeaCache / EasyCache family; this rule is our own). Off unless asked for.

The skip rule. At every model call the cache measures how far the first block's modulated input
m = LayerNorm(h) * (1 + scale) + shift (the patch tokens under the current timestep's modulation) has moved since
the last *computed* step:

    delta = |m - m_last|_1 / |m_last|_1      (per video over its generated tokens; the largest in the batch)

and predicts how far the blocks' residual r = blocks(h) - h has moved with the response observed between the last
two computed steps, rho = (|r_last - r_prev|_1 / |r_prev|_1) / delta_last (taken as 1 until two steps have been
computed, and kept within [0.25, 4]). The step is skipped (output h + r_last) when

    rho * delta <= threshold

unless a guard applies: the first ``warmup`` share of the steps (at least 2) and the last step are always computed,
and at most ``max_skips`` steps in a row are skipped.

Known frames (image-to-video, extension) carry timestep 0 and do not change; they are left out of every sum, so they
cannot make a step look quieter than the frames being generated. With CFG the conditional and unconditional passes
are decided together (the larger change counts), also when they run on different ranks; with sequence parallelism
the sums cover all shards. State is kept per model, call shape and RoPE offset, and a call whose timestep is not
below the previous one starts afresh, so windows of a long video and successive runs never reuse each other's
residuals.

Cost: one layer norm and two L1 sums per step, and two activation-sized tensors (m_last, r_last) per state.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .errors import SpacetimeValueError


@dataclass(frozen=True)
class CacheSettings:
    """``threshold``: the largest predicted relative residual change that may be skipped (0 computes every step;
    0.05-0.2 is the useful range). ``warmup``: share of the steps computed first. ``max_skips``: longest run of
    skipped steps. ``steps``: steps of the run (set by the sampler, so the last one is computed)."""
    threshold: float = 0.1
    warmup: float = 0.15
    max_skips: int = 2
    steps: Optional[int] = None

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise SpacetimeValueError(f"step cache threshold={self.threshold} is not allowed; allowed: 0 to 1")
        if not 0.0 <= self.warmup <= 1.0:
            raise SpacetimeValueError(f"step cache warmup={self.warmup} is not allowed; allowed: 0 to 1")
        if self.max_skips < 1:
            raise SpacetimeValueError(f"step cache max_skips={self.max_skips} must be at least 1")

    def for_run(self, steps: int, parallel=None) -> "StepCache":
        """A fresh cache for a sampling run of ``steps`` steps."""
        return StepCache(replace(self, steps=steps), parallel)

    @property
    def warmup_steps(self) -> int:
        return max(2, math.ceil(self.warmup * (self.steps or 0)))


class _State:
    def __init__(self):
        self.calls = self.skips = 0
        self.t = math.inf
        self.m = self.r = None            # modulated input and residual at the last computed step
        self.delta_last = None            # delta between the last two computed steps
        self.rho = 1.0
        self.pending = None               # (m, delta) of the call being computed


class StepCache:
    """The cache of one run (or of every run inside ``attach``); ``computed`` / ``skipped`` count model calls."""

    def __init__(self, settings: CacheSettings, parallel=None):
        self.settings, self.parallel = settings, parallel
        self.states: dict = {}
        self.computed = self.skipped = 0
        self.decisions: list[bool] = []           # per model call, True when it was skipped
        self.predicted: list = []                 # per model call, rho * delta (None before the first compute)
        self._current: Optional[_State] = None
        self._branch = ""                         # a second kind of call in the same steps (frame guidance)

    def for_run(self, steps: int, parallel=None) -> "StepCache":
        """This cache (its counts keep adding up) for a sampling run of ``steps`` steps."""
        self.settings, self.parallel = replace(self.settings, steps=steps), parallel
        return self

    @contextmanager
    def attach(self, model):
        from .dit import base_dit
        model = base_dit(model)
        model.step_cache = self
        try:
            yield self
        finally:
            del model.step_cache

    @contextmanager
    def branch(self, name: str):
        """Calls inside the block keep state of their own (frame guidance's pass without known frames would
        otherwise meet the main pass's state at the same step and start it afresh)."""
        before, self._branch = self._branch, name
        try:
            yield self
        finally:
            self._branch = before

    def summary(self) -> dict:
        return {"threshold": self.settings.threshold, "computed": self.computed, "skipped": self.skipped}

    # -- measures --
    def _rel_change(self, model, a, b, tg) -> torch.Tensor:
        """Largest relative L1 change |a - b| / |b| over the videos of the batch, on generated (timestep > 0) and
        real (not sequence padding) tokens, agreed by every rank."""
        B, L, D = a.shape
        G = tg.shape[1]
        num = (a - b).abs().sum(-1).view(B, G, L // G)
        den = b.abs().sum(-1).view(B, G, L // G)
        w = (tg > 0).to(num.dtype)[:, :, None].expand(B, G, 1)
        sp = model.sequence_parallel
        if sp is not None:
            real = (torch.arange(L, device=a.device) < sp.valid).to(num.dtype).view(1, G, L // G)
            w = w * real
        num, den = (num * w).sum((1, 2)), (den * w).sum((1, 2))
        if self.parallel is not None:
            num, den = self.parallel.seq_sum(num), self.parallel.seq_sum(den)
        rel = (num / den.clamp_min(1e-30)).max()
        return self.parallel.all_max(rel) if self.parallel is not None else rel

    @staticmethod
    def _modulated(model, h, e0):
        from .dit import norm_modulate
        blk = model.blocks[0]
        m = blk.modulation.float()[:, None, :2] + e0[:, :, :2]
        return norm_modulate(h, blk.eps, m[:, :, 0], m[:, :, 1])

    # -- the hooks WanDiT.forward calls --
    def reusable(self, model, h, tg, e0, rope_offsets) -> bool:
        """True when this call may skip the blocks (then ``reuse``), else the caller computes them and ``store``s."""
        key = (id(model), tuple(h.shape), tuple(rope_offsets), self._branch)
        st = self.states.get(key)
        t_now = tg.max()                                       # every rank agrees on the step (a shard may hold
        t_now = float(self.parallel.all_max(t_now) if self.parallel is not None else t_now)   # only known frames)
        if st is None or t_now >= st.t:                        # a new run, or a repeat of this step: start afresh
            st = self.states[key] = _State()
        st.t = t_now
        self._current = st
        step, s = st.calls, self.settings
        st.calls += 1
        m = self._modulated(model, h, e0)
        delta = None if st.m is None else float(self._rel_change(model, m, st.m, tg))
        guarded = (st.m is None or step < s.warmup_steps or (s.steps is not None and step >= s.steps - 1)
                   or st.skips >= s.max_skips or s.threshold <= 0)
        skip = not guarded and st.rho * delta <= s.threshold
        self.decisions.append(skip)
        self.predicted.append(None if delta is None else st.rho * delta)
        if skip:
            st.skips += 1
            self.skipped += 1
        else:
            st.pending = (model, m, delta, tg)
        return skip

    def reuse(self, h: torch.Tensor) -> torch.Tensor:
        return h + self._current.r

    def store(self, h_in: torch.Tensor, h_out: torch.Tensor):
        st = self._current
        model, m, delta, tg = st.pending
        r = h_out - h_in
        if st.r is not None and delta:
            st.rho = min(4.0, max(0.25, float(self._rel_change(model, r, st.r, tg)) / delta))
        st.pending = None
        st.m, st.r, st.skips = m, r, 0
        self.computed += 1


@contextmanager
def step_cache(model, settings: CacheSettings, parallel=None):
    """Step caching for every sampling run of ``model`` inside the block (for callers that run ``sample``
    themselves, e.g. toyworld.probe.generate_items); yields the StepCache with its counts."""
    cache = StepCache(settings, parallel)
    with cache.attach(model):
        yield cache
