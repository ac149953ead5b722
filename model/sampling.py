"""Flow-matching sampling: schedules, Euler and UniPC (bh2) solvers, classifier-free guidance, frame conditioning.

Conventions (Wan): x_sigma = (1 - sigma) * x0 + sigma * noise; the model predicts v = noise - x0 and receives the
timestep floor(sigma * 1000). Shift: sigma' = s * sigma / (1 + (s - 1) * sigma).

Frame conditioning is one mechanism for every task: a per-latent-frame mask (1 = known) and the known latents.
Known frames are fed clean with timestep 0, their model output is ignored, and they are re-imposed after every step.
Text-to-video has no known frames; image-to-video knows frame 0; extend forward knows a head; extend backward a tail;
fill knows any subset.

Frame guidance (``frame_cfg`` G > 0, off by default): a second guidance term that pushes the generated frames
towards what the known frames imply, as CFG pushes them towards the text. One more model call per step sees the
clip with the known frames withheld (their latent frames replaced by noise at the step's level, every token at the
step's timestep, the negative text); the velocity becomes

    v = v_neg + cfg * (v_text - v_neg) + G * (v_neg - v_neg_without_frames)

(without CFG the text's own velocity stands for v_neg). It costs one model pass per step on top of CFG's two.
``frame_cfg_stop`` S limits it to the steps at noise level sigma >= S (0: every step): the guidance shapes where
things are while the picture forms and leaves the last, low-noise steps to the plain velocity.

Contrast guidance (``Contrast``, off by default): a third guidance term that pushes the video away from a contrast
prompt, a prompt that differs from the prompt in the one detail the model confuses (the opposite motion: "moves
left" for "moves right"). The negative prompt cannot do this job: CFG against a near-copy of the prompt loses what
CFG against the negative gives (colour, shape). One more model call per step reads the contrast prompt:

    v = v_neg + cfg * (v_text - v_neg) + C * (v_text - v_contrast)

on the steps at noise level >= the contrast's stop level (where the layout and the motion are decided).
"""
from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from .errors import SpacetimeValueError

SAMPLERS = ("unipc", "euler")
NUM_TRAIN_TIMESTEPS = 1000
# Wan's schedulers start from the float32 value of 0.999 (1 - 1/1000), not from 1.0.
SIGMA_MAX = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))


def shift_sigma(sigma, shift: float):
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(steps: int, shift: float, sigma_max: float = SIGMA_MAX):
    """The Wan UniPC grid: (sigmas float32 [steps + 1] ending in 0, model timesteps int64 [steps])."""
    if steps < 1:
        raise SpacetimeValueError(f"steps={steps} must be at least 1")
    if shift <= 0:
        raise SpacetimeValueError(f"shift={shift} must be > 0")
    s = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    s = shift_sigma(s, shift)
    timesteps = torch.from_numpy(s * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))
    return sigmas, timesteps


# ----------------------------------------------------------------------------------------------------------------------
# Frame conditioning
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class FrameCondition:
    """Known latent frames. ``latents`` [B, C, F', H', W'] (normalised; values at unknown frames are ignored);
    ``mask`` [B, F'] or [F'] with 1 for known frames and 0 for frames to generate."""
    latents: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self):
        if self.mask.dim() == 1:
            self.mask = self.mask[None].expand(self.latents.shape[0], -1)
        if self.mask.shape != (self.latents.shape[0], self.latents.shape[2]):
            raise SpacetimeValueError(
                f"frame mask of shape {tuple(self.mask.shape)} does not fit latents {tuple(self.latents.shape)}; "
                f"allowed: [{self.latents.shape[2]}] or [{self.latents.shape[0]}, {self.latents.shape[2]}]")
        self.mask = (self.mask > 0.5).float()

    def known(self, like: torch.Tensor) -> torch.Tensor:
        """Mask broadcastable to a latent like ``like``."""
        return self.mask.to(like.device)[:, None, :, None, None]

    def impose(self, x: torch.Tensor) -> torch.Tensor:
        m = self.known(x)
        return x * (1 - m) + self.latents.to(x) * m

    def timesteps(self, t: torch.Tensor | float, patch_t: int = 1) -> torch.Tensor:
        """Per-token-frame timesteps [B, F'/patch_t]: ``t`` for frames to generate, 0 for known frames."""
        m = self.mask[:, ::patch_t]
        return (1 - m) * torch.as_tensor(t, dtype=torch.float32)

    @property
    def any_known(self) -> bool:
        return bool(self.mask.any())


# ----------------------------------------------------------------------------------------------------------------------
# The model wrapper: CFG + frame conditioning -> velocity
# ----------------------------------------------------------------------------------------------------------------------

def batch_text(text: torch.Tensor, lengths, batch: int):
    """Token embeddings [1 or batch, L, D] and their lengths (None: every row) broadcast to ``batch`` videos."""
    if text.shape[0] != batch:
        text = text.expand(batch, -1, -1)
    lengths = torch.full((batch,), text.shape[1]) if lengths is None else torch.as_tensor(lengths).expand(batch)
    return text, lengths.to(text.device)


def join_text(text: torch.Tensor, lengths, text_null: torch.Tensor, null_lengths):
    """One batch [cond; uncond] of token embeddings (the shorter zero-padded to the longer, the negative broadcast
    to the batch) and its lengths, so the text is embedded and its keys/values computed in one pass."""
    B = text.shape[0]
    text, lengths = batch_text(text, lengths, B)
    text_null, null_lengths = batch_text(text_null, null_lengths, B)
    L = max(text.shape[1], text_null.shape[1])

    def padded(x):
        return x if x.shape[1] == L else torch.cat([x, x.new_zeros(B, L - x.shape[1], x.shape[2])], dim=1)
    return torch.cat([padded(text), padded(text_null.to(text))]), torch.cat([lengths, null_lengths])


@dataclass(frozen=True)
class Contrast:
    """Contrast guidance (module docstring): the contrast prompt's token embeddings [1 or B, L, D] and lengths,
    the scale (> 0) and the noise level below which it stops (0: every step)."""
    text: torch.Tensor
    lengths: Optional[torch.Tensor]
    scale: float
    stop: float = 0.0

    def __post_init__(self):
        check_contrast_cfg(self.scale)
        check_frame_cfg_stop(self.stop, "contrast_cfg_stop", "contrast guidance")


class GuidedDenoiser:
    """Calls the DiT on cond and uncond text in one batch, with known frames at timestep 0.

    ``text`` / ``text_null``: [B, L, text_dim] token embeddings (plus lengths), embedded once for all steps.
    ``parallel`` (model/parallel.py): sequence-parallel calls, and cond / uncond on the two CFG rank groups.
    ``cache`` (model/cache.py): the run's StepCache, or None.
    ``frame_cfg`` / ``frame_noise``: frame guidance (module docstring) and the noise [B, C, F', H', W'] that stands
    in for the withheld known frames (the run's starting noise); frame guidance needs known frames in ``cond``.
    ``frame_cfg_stop``: the noise level below which frame guidance stops (module docstring).
    ``contrast``: contrast guidance (``Contrast``), or None.
    """

    def __init__(self, model, text, text_lengths=None, text_null=None, text_null_lengths=None, cfg: float = 1.0,
                 cond: Optional[FrameCondition] = None, parallel=None, cache=None, frame_cfg: float = 0.0,
                 frame_noise: Optional[torch.Tensor] = None, frame_cfg_stop: float = 0.0,
                 contrast: Optional[Contrast] = None):
        self.model, self.cfg, self.cond, self.parallel = model, float(cfg), cond, parallel
        self.contrast = contrast if contrast is not None and contrast.scale > 0 else None
        batch = text.shape[0]
        self.frame_cfg = check_frame_cfg(frame_cfg)
        self.frame_cfg_stop = check_frame_cfg_stop(frame_cfg_stop)
        self.frame_guided = self.frame_cfg > 0 and cond is not None and cond.any_known
        if self.frame_guided and frame_noise is None:
            raise SpacetimeValueError("frame guidance needs frame_noise (the run's starting noise)")
        self.frame_noise = frame_noise
        self.use_cfg = text_null is not None and self.cfg != 1.0
        self.cfg_parallel = parallel is not None and parallel.layout.cfg > 1 and self.use_cfg
        with torch.no_grad():
            self.kv_ref = None
            if self.frame_guided and not self.cfg_parallel:     # the text of the pass without known frames: the
                if self.use_cfg:                                # negative under CFG, else the prompt
                    self.kv_ref = model.text_kv(model.text_tokens(*batch_text(text_null, text_null_lengths,
                                                                              text.shape[0])))
            if self.use_cfg:
                text, text_lengths = join_text(text, text_lengths, text_null, text_null_lengths)
            self.kv = model.text_kv(model.text_tokens(text, text_lengths))
            if self.frame_guided and not self.use_cfg:
                self.kv_ref = self.kv
            self.kv_con = None
            if self.contrast is not None:         # under CFG parallelism both rank groups read the contrast prompt
                con = batch_text(self.contrast.text.to(text), self.contrast.lengths, batch)
                if self.cfg_parallel:
                    con = join_text(*con, *con)
                self.kv_con = model.text_kv(model.text_tokens(*con))
        if self.cfg_parallel:
            self.kv = parallel.cfg_share(self.kv)
            if self.kv_con is not None:
                self.kv_con = parallel.cfg_share(self.kv_con)
        self.cache = cache

    def timesteps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        B = x.shape[0]
        if self.cond is None or not self.cond.any_known:
            return torch.full((B,), float(t))
        return self.cond.timesteps(float(t), self.model.cfg.patch_size[0])

    @contextmanager
    def _hooks(self):
        with ExitStack() as stack:
            if self.parallel is not None:
                stack.enter_context(self.parallel.attach(self.model))
            if self.cache is not None:
                stack.enter_context(self.cache.attach(self.model))
            yield

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: int, step: Optional[int] = None) -> torch.Tensor:
        tt = self.timesteps(x, t)
        with self._hooks():
            if self.use_cfg:
                if self.cfg_parallel:
                    v_c, v_u = self.parallel.guided_pair(self.model, x, tt, self.kv)
                else:
                    v_c, v_u = self.model(torch.cat([x, x]), torch.cat([tt, tt]), text_kv=self.kv).chunk(2)
                v = v_u + self.cfg * (v_c - v_u)
            else:
                v = v_c = v_u = self.model(x, tt, text_kv=self.kv)
            if self.frame_guided and t >= self.frame_cfg_stop * NUM_TRAIN_TIMESTEPS:
                v = v + self.frame_cfg * (v_u - self._without_frames(x, t))
            if self.contrast is not None and t >= self.contrast.stop * NUM_TRAIN_TIMESTEPS:
                v = v + self.contrast.scale * (v_c - self._contrast(x, tt))
            return v

    def _contrast(self, x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        """The velocity read with the contrast prompt (known frames as in the main pass)."""
        with ExitStack() as stack:
            if self.cache is not None:
                stack.enter_context(self.cache.branch("contrast"))
            if self.cfg_parallel:
                return self.parallel.guided_pair(self.model, x, tt, self.kv_con)[0]
            return self.model(x, tt, text_kv=self.kv_con)

    def _without_frames(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """The reference velocity with the known frames withheld: their latent frames hold noise at the step's
        level (sigma = t / 1000) and every token is at timestep t."""
        m = self.cond.known(x)
        x_nf = x * (1 - m) + m * (t / NUM_TRAIN_TIMESTEPS) * self.frame_noise.to(x)
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        with ExitStack() as stack:
            if self.cache is not None:
                stack.enter_context(self.cache.branch("without frames"))
            if self.cfg_parallel:                # both CFG groups run it; the negative group's result is used
                return self.parallel.guided_pair(self.model, x_nf, tt, self.kv)[1]
            return self.model(x_nf, tt, text_kv=self.kv_ref)


def _number(value) -> float:
    """``value`` as a float; nan for what is not a number (text, None, a bool)."""
    if isinstance(value, bool):
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def check_frame_cfg_stop(stop, name: str = "frame_cfg_stop", what: str = "frame guidance") -> float:
    """``frame_cfg_stop`` (or the stop level ``name`` of ``what``) as a float, refused unless within 0..1."""
    s = _number(stop)
    if not 0.0 <= s <= 1.0:
        raise SpacetimeValueError(f"{name}={stop!r} is not allowed: the noise level where {what} "
                                  f"stops must be within 0..1 (0: every step)")
    return s


def check_frame_cfg(frame_cfg, name: str = "frame_cfg", what: str = "frame guidance") -> float:
    """``frame_cfg`` (or the scale ``name`` of ``what``) as a float, refused unless finite and >= 0."""
    g = _number(frame_cfg)
    if not math.isfinite(g) or g < 0:
        raise SpacetimeValueError(f"{name}={frame_cfg!r} is not allowed: {what} must be a finite number "
                                  f">= 0 (0 turns it off)")
    return g


def check_contrast_cfg(scale) -> float:
    """The contrast guidance scale as a float, refused unless finite and >= 0."""
    return check_frame_cfg(scale, "contrast_cfg", "contrast guidance")


# ----------------------------------------------------------------------------------------------------------------------
# Solvers
# ----------------------------------------------------------------------------------------------------------------------

class UniPC:
    """UniPC multistep solver, B(h) = e^h - 1 ("bh2"), order 2, predicting x0 from flow outputs, with the lower-order
    final step. Coefficients are computed in float64 from the float32 sigma grid."""

    def __init__(self, sigmas: torch.Tensor, order: int = 2):
        self.sig = [float(s) for s in sigmas]
        self.order = order
        self.n = len(self.sig) - 1
        self.x0s: list[torch.Tensor] = []           # model outputs converted to x0, newest last
        self.last_x: Optional[torch.Tensor] = None
        self.last_order = 1

    def _lam(self, i: int) -> float:
        s = self.sig[i]
        return math.inf if s == 0 else math.log(1 - s) - math.log(s)

    def _coeffs(self, hh: float):
        h_phi_1 = math.expm1(hh)
        return h_phi_1, math.expm1(hh)   # (h*phi_1, B(h)) for bh2

    def _rhos_c(self, order: int, rk: float, hh: float, h_phi_1: float, B_h: float):
        if order == 1:
            return [0.5]
        # b_k = h*phi_k(hh) * k! / B(h) for k = 1, 2; R = [[1, 1], [rk, 1]]
        h_phi_k = h_phi_1 / hh - 1
        b1 = h_phi_k / B_h
        h_phi_k = h_phi_k / hh - 1 / 2
        b2 = h_phi_k * 2 / B_h
        det = 1 - rk
        return [(b1 - b2) / det, (b2 - rk * b1) / det]

    def step(self, i: int, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """x: sample at sigma_i; x0: the model's data prediction there. Returns the sample at sigma_{i+1}."""
        if i > 0 and self.last_x is not None:
            x = self._correct(i, x, x0)
        self.x0s = (self.x0s + [x0])[-self.order:]
        order = min(self.order, self.n - i, len(self.x0s))
        self.last_order = order
        self.last_x = x
        return self._predict(i, x, order)

    def _predict(self, i, x, order):
        s_t, s_0 = self.sig[i + 1], self.sig[i]
        a_t = 1 - s_t
        m0 = self.x0s[-1]
        lam_t, lam_0 = self._lam(i + 1), self._lam(i)
        h = lam_t - lam_0
        hh = -h
        h_phi_1, B_h = (-1.0, -1.0) if math.isinf(h) else self._coeffs(hh)
        out = (s_t / s_0) * x - (a_t * h_phi_1) * m0
        if order == 2:
            rk = (self._lam(i - 1) - lam_0) / h
            d1 = (self.x0s[-2] - m0) / rk
            out = out - (a_t * B_h * 0.5) * d1
        return out

    def _correct(self, i, x, x0_new):
        s_t, s_0 = self.sig[i], self.sig[i - 1]
        a_t = 1 - s_t
        order = self.last_order
        m0 = self.x0s[-1]
        lam_t, lam_0 = self._lam(i), self._lam(i - 1)
        h = lam_t - lam_0
        hh = -h
        h_phi_1, B_h = self._coeffs(hh)
        rk = (self._lam(i - 2) - lam_0) / h if order == 2 else 0.0
        rhos = self._rhos_c(order, rk, hh, h_phi_1, B_h)
        base = (s_t / s_0) * self.last_x - (a_t * h_phi_1) * m0
        corr = rhos[-1] * (x0_new - m0)
        if order == 2:
            corr = corr + rhos[0] * ((self.x0s[-2] - m0) / rk)
        return base - (a_t * B_h) * corr


# ----------------------------------------------------------------------------------------------------------------------
# sample()
# ----------------------------------------------------------------------------------------------------------------------

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


def sample(model, noise: torch.Tensor, text: torch.Tensor, text_null: Optional[torch.Tensor] = None, *,
           text_lengths=None, text_null_lengths=None, steps: int = 50, shift: float = 5.0, cfg: float = 5.0,
           sampler: str = "unipc", cond: Optional[FrameCondition] = None, init: Optional[torch.Tensor] = None,
           strength: float = 1.0, callback: Optional[StepCallback] = None, parallel=None,
           cache=None, frame_cfg: float = 0.0, frame_cfg_stop: float = 0.0,
           contrast: Optional[Contrast] = None) -> torch.Tensor:
    """Sample normalised latents.

    ``model``: a DiT, or an ``experts.ExpertPair`` (one of two experts per step). noise [B, C, F', H', W'] standard
    normal; text [B, L, D] (and ``text_null`` for CFG); ``cond`` known frames;
    ``init`` + ``strength`` < 1 start from a noised ``init`` (SDEdit video-to-video: strength 1 ignores init,
    strength 0 returns it). ``callback(step, total, x0_pred, x)`` runs after every step and may raise to cancel.
    ``parallel``: a model.parallel.Parallel (every rank calls ``sample`` with the same arguments; rank 0's noise,
    text and known frames are used). ``cache``: model.cache.CacheSettings (or a StepCache, to read its counts after)
    to skip the blocks on steps whose input changed little; off when None. ``frame_cfg``: frame guidance (module
    docstring; it needs known frames in ``cond`` and is ignored without them), on the steps at noise level >=
    ``frame_cfg_stop``. ``contrast``: contrast guidance (``Contrast``; module docstring), or None.
    """
    if sampler not in SAMPLERS:
        raise SpacetimeValueError(f"sampler={sampler!r} is not supported; allowed: {', '.join(SAMPLERS)}")
    if not 0.0 <= strength <= 1.0:
        raise SpacetimeValueError(f"strength={strength} must be between 0 and 1")
    if strength < 1.0 and init is None:
        raise SpacetimeValueError("strength < 1 needs an init latent (video-to-video)")
    frame_cfg, frame_cfg_stop = check_frame_cfg(frame_cfg), check_frame_cfg_stop(frame_cfg_stop)
    if init is not None and init.shape != noise.shape:
        raise SpacetimeValueError(f"init latent shape {tuple(init.shape)} differs from noise {tuple(noise.shape)}")
    sigmas, timesteps = sigma_schedule(steps, shift)
    if parallel is not None:
        noise, text, text_null, init = parallel.same(noise, text, text_null, init)
        if contrast is not None:
            contrast = replace(contrast, text=parallel.same(contrast.text)[0])
        if cond is not None:
            cond = FrameCondition(parallel.same(cond.latents)[0], cond.mask)
    start = 0
    if strength < 1.0:
        start = min(steps, int(round(steps * (1.0 - strength))))
    x = noise.float()
    if start > 0:
        s0 = float(sigmas[start])
        x = (1 - s0) * init.float() + s0 * x
    if start >= steps:
        x = init.float()
        return cond.impose(x) if cond is not None else x
    if cache is not None:
        cache = cache.for_run(steps - start, parallel)
    if hasattr(model, "guided_denoiser"):         # a set of experts (experts.ExpertPair) picks one per step
        denoise = model.guided_denoiser(text, text_lengths, text_null, text_null_lengths, cfg, cond, timesteps,
                                        parallel=parallel, cache=cache, frame_cfg=frame_cfg, frame_noise=noise,
                                        frame_cfg_stop=frame_cfg_stop, contrast=contrast)
    else:
        denoise = GuidedDenoiser(model, text, text_lengths, text_null, text_null_lengths, cfg, cond, parallel, cache,
                                 frame_cfg=frame_cfg, frame_noise=noise, frame_cfg_stop=frame_cfg_stop,
                                 contrast=contrast)
    if cond is not None:
        x = cond.impose(x)
    solver = UniPC(sigmas[start:]) if sampler == "unipc" else None
    total = steps - start
    for j, i in enumerate(range(start, steps)):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = denoise(x, int(timesteps[i]), i)
        x0 = x - s * v
        if cond is not None:
            x0 = cond.impose(x0)
        if solver is not None:
            x = solver.step(j, x, x0)
        else:
            x = x + (s_next - s) * v
        if cond is not None:
            x = cond.impose(x)
        if callback is not None:
            callback(j + 1, total, x0, x)
    return x
