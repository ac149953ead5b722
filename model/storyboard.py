"""Multi-shot videos from a storyboard: several shots, each with its prompt and frame count, in one video with hard
cuts at the requested frames.

Shots are written one per line as ``FRAMES: PROMPT`` or just ``PROMPT`` (such shots share the frames the others leave
of the total). Cuts fall between latent frames: the first shot has 1 + 4k frames, every later shot 4k, so a cut never
splits the 4 frames that one latent frame holds (temporal factor 4).

Conditioning, selectable, on any Wan-layout DiT (nothing in the weights changes; what the model does with it is a
matter of its training):

  text            the story is one sequence; the tokens of each shot's latent frames read that shot's caption in
                  cross-attention (``dit.ShotText``), while self-attention spans every shot, so objects can carry
                  across the cuts.
  reference       shot by shot: every shot after the first is sampled with the last latent frame(s) of the shot
                  before as known frames at the start of its window (the extend mechanism,
                  ``sampling.FrameCondition``); those reference frames are not part of the output.
  text+reference  both: in each shot's window the reference frames read the previous shot's caption and the new
                  frames their own.

Decoding: the causal VAE carries its state from frame to frame, so a story decoded as one clip blends the first
frames after each cut with the shot before (measured on true toy-world stories: the cuts of camera pans vanish, the
others smear over 4 frames). ``Spacetime.decode(raw, cuts=plan.latent_cuts)`` restarts the decoder at every cut.

    plan = plan_story(parse_shots("17: a red ball on navy\n16: the red ball on beige, close-up"))
    raw, plan = storyboard_latents(st, plan.shots, width=64, height=64, mode="text", seed=1)
    frames = st.decode(raw, cuts=plan.latent_cuts)          # hard cuts at plan.cuts
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from .conditioning import check_frames
from .errors import SpacetimeValueError
from .longvideo import window_seed
from .sampling import FrameCondition, sample

MODES = ("text", "reference", "text+reference")
_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.*)$", re.S)


@dataclass(frozen=True)
class Shot:
    prompt: str
    frames: int = 0              # 0: a share of the frames the other shots leave


def parse_shots(shots: Union[str, Sequence]) -> list[Shot]:
    """Shots from text (one per line; blank lines are skipped) or from a list of lines / ``Shot``s (CLI: one
    ``--shot`` each). A line is ``FRAMES: PROMPT`` or ``PROMPT``."""
    items = [ln for ln in shots.splitlines() if ln.strip()] if isinstance(shots, str) else list(shots)
    out = []
    for i, item in enumerate(items, 1):
        if isinstance(item, Shot):
            shot = item
        else:
            m = _LINE.match(str(item))
            shot = Shot(m.group(2).strip(), int(m.group(1))) if m else Shot(str(item).strip())
        if not shot.prompt.strip():
            raise SpacetimeValueError(f"shot {i} is empty ({str(item)!r}): every shot needs a prompt; write "
                                      f"'FRAMES: PROMPT' or 'PROMPT'")
        out.append(shot)
    if not out:
        raise SpacetimeValueError("no shots: give at least one shot, one per line, as 'FRAMES: PROMPT' (e.g. "
                                  "'17: a red ball bounces on navy')")
    return out


@dataclass(frozen=True)
class StoryPlan:
    shots: tuple                 # Shot with its frame count resolved
    tf: int

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shots)

    def latents(self) -> list[tuple[int, int]]:
        """(start, stop) latent frames of every shot."""
        out, start = [], 0
        for i, s in enumerate(self.shots):
            n = (s.frames - 1) // self.tf + 1 if i == 0 else s.frames // self.tf
            out.append((start, start + n))
            start += n
        return out

    @property
    def cuts(self) -> list[int]:
        """Pixel frame where each shot after the first begins."""
        starts, t = [], 0
        for s in self.shots[:-1]:
            t += s.frames
            starts.append(t)
        return starts

    @property
    def latent_cuts(self) -> list[int]:
        """Latent frame where each shot after the first begins (``Spacetime.decode(..., cuts=...)``)."""
        return [a for a, _ in self.latents()[1:]]

    def frame_shots(self) -> torch.Tensor:
        """[F'] the shot of every latent frame."""
        return torch.cat([torch.full((b - a,), i, dtype=torch.long) for i, (a, b) in enumerate(self.latents())])


def plan_story(shots: Sequence[Shot], frames: int = 0, tf: int = 4) -> StoryPlan:
    """Resolve frame counts and check that the shots fit: ``frames`` is the video's length (0: the shots' counts
    add up to it). Errors name the shot, its value and what is allowed."""
    shots = parse_shots(shots)
    for i, s in enumerate(shots, 1):
        if s.frames == 0:
            continue
        if i == 1 and (s.frames - 1) % tf:
            lo = 1 + tf * ((s.frames - 1) // tf)
            raise SpacetimeValueError(
                f"shot 1 has {s.frames} frames, which do not fit: the first shot needs 1 + {tf}*k frames (e.g. "
                f"{lo} or {lo + tf}) so that every cut falls between latent frames")
        if i > 1 and s.frames % tf:
            lo = max(tf, tf * (s.frames // tf))
            raise SpacetimeValueError(
                f"shot {i} has {s.frames} frames, which do not fit: after the first shot every shot needs a multiple "
                f"of {tf} frames (e.g. {lo} or {lo + tf}) so that its cut falls between latent frames")
    n = len(shots)
    auto = [i for i, s in enumerate(shots) if s.frames == 0]
    if frames == 0:
        if auto:
            raise SpacetimeValueError(f"shot {auto[0] + 1} has no frame count and frames=0 (the total) does not "
                                      f"leave it a share; write 'FRAMES: PROMPT' or give the total frames")
        return StoryPlan(tuple(shots), tf)
    check_frames(frames, tf, "frames")
    total = (frames - 1) // tf + 1                                   # latent frames of the video
    if n > total:
        raise SpacetimeValueError(
            f"{n} shots are more than frames={frames} can hold: every shot needs at least one latent frame "
            f"({tf} frames; the first shot 1), so {frames} frames hold at most {total} shots; allowed: frames >= "
            f"{1 + tf * (n - 1)} or fewer shots")
    given = sum(((s.frames - 1) // tf + 1) if i == 0 else s.frames // tf for i, s in enumerate(shots) if s.frames)
    left = total - given
    if left < len(auto) or (not auto and left):
        counted = sum(s.frames for s in shots)
        need = " and each shot without a count needs at least one latent frame" if auto else ""
        raise SpacetimeValueError(
            f"the shots' frame counts do not fit frames={frames}: they add up to {counted} frames{need}; allowed: "
            f"counts that add up to {frames} (the first shot 1 + {tf}*k, the others multiples of {tf})")
    shares = [left // len(auto) + (1 if k < left % len(auto) else 0) for k in range(len(auto))] if auto else []
    resolved = list(shots)
    for k, i in enumerate(auto):
        resolved[i] = Shot(shots[i].prompt, 1 + tf * (shares[k] - 1) if i == 0 else tf * shares[k])
    return StoryPlan(tuple(resolved), tf)


class PerShotText:
    """The DiT as ``sampling.sample`` sees it, with per-shot text: every prompt batch holds one caption per shot,
    and each latent frame reads its own shot's caption (``frame_shots``)."""

    def __init__(self, dit, frame_shots: torch.Tensor, shots: int):
        self.dit, self.frame_shots, self.shots = dit, frame_shots, shots

    def text_kv(self, text_emb):
        return self.dit.text_kv(text_emb, frame_shots=self.frame_shots, shots=self.shots)

    def __call__(self, *args, **kwargs):
        return self.dit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.dit, name)


def sample_shots(st, text, frame_shots: torch.Tensor, shape: tuple, seed: int, steps=None, cfg=None, shift=None,
                 sampler: str = "unipc", cond: Optional[FrameCondition] = None, callback=None,
                 frame_cfg: Optional[float] = None) -> torch.Tensor:
    """Like ``Spacetime.sample_latents`` for one video whose latent frames read different captions: ``text`` holds
    one prompt per shot (encoded with a negative each), ``frame_shots`` [F'] the shot of every latent frame.
    ``frame_cfg``: frame guidance with known frames (default: the preset's). Returns raw latents."""
    from .pipeline import noise_for
    if getattr(st, "has_experts", False) or getattr(st, "concat_conditioned", False):
        raise SpacetimeValueError(f"per-shot text conditioning needs a single text-to-video DiT; {st.preset.name} "
                                  f"has two experts or image channels; allowed: conditioning='reference'")
    if hasattr(st, "check_known_frames"):
        st.check_known_frames(cond)
    frame_cfg = st.frame_guidance(frame_cfg) if hasattr(st, "frame_guidance") else float(frame_cfg or 0.0)
    dit = st.dit
    dev = dit.device
    if cond is not None:
        cond = FrameCondition(cond.latents.to(dev), cond.mask.to(dev))
    neg = text.neg_emb
    out = sample(PerShotText(dit, frame_shots, text.emb.shape[0]), noise_for(shape, seed).to(dev),
                 text.emb.to(dev), None if neg is None else neg.to(dev), text_lengths=text.lengths.to(dev),
                 text_null_lengths=None if neg is None else text.neg_lengths.to(dev),
                 steps=steps or st.preset.steps, shift=shift or st.preset.shift,
                 cfg=st.preset.cfg if cfg is None else cfg, sampler=sampler, cond=cond, callback=callback,
                 frame_cfg=frame_cfg, frame_cfg_stop=getattr(st.preset, "frame_cfg_stop", 0.0))
    return st.denormalize(out.cpu())


@torch.no_grad()
def storyboard_latents(st, shots, negative: str = "", *, width: int, height: int, frames: int = 0,
                       mode: str = "text", reference_frames: int = 4, seed: int = 0, steps: Optional[int] = None,
                       cfg: Optional[float] = None, shift: Optional[float] = None, sampler: str = "unipc",
                       expand_prompt: bool = True, callback: Optional[Callable[[int, int, int], None]] = None,
                       frame_cfg: Optional[float] = None) -> tuple[torch.Tensor, StoryPlan]:
    """Sample a multi-shot video. ``shots``: text, lines or ``Shot``s (see ``parse_shots``); ``frames``: the total
    (0: the sum of the shots). ``mode``: text | reference | text+reference. ``reference_frames``: frames of the
    previous shot known in the next shot's window (a multiple of 4). ``callback(window, step, steps)`` after every
    step (one window in text mode, one per shot otherwise) may raise to cancel. ``frame_cfg``: frame guidance on
    the reference frames (default: the preset's). No shot uses contrast guidance (per-shot text has no pass for
    it; every mode samples alike). Returns (raw latents
    [1, C, F', H', W'], the plan with the cuts)."""
    if mode not in MODES:
        raise SpacetimeValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
    tf = st.temporal_factor
    if mode != "text" and (reference_frames < tf or reference_frames % tf):
        raise SpacetimeValueError(f"reference_frames={reference_frames} is not allowed: it must be a positive "
                                  f"multiple of {tf}")
    plan = plan_story(parse_shots(shots), frames, tf)
    st.check_shape(width, height, plan.frames)
    if mode != "text" and hasattr(st, "frame_guidance"):
        frame_cfg = st.frame_guidance(frame_cfg)
    _, C, _, Hp, Wp = st.latent_shape(1, 1, height, width)
    prompts = [s.prompt for s in plan.shots]

    def encode(ps):
        return st.encode_text(ps, [negative] * len(ps), expand=expand_prompt)

    def step_cb(k):
        return (lambda i, n, x0, x: callback(k, i, n)) if callback is not None else None
    if mode == "text":
        fs = plan.frame_shots()
        raw = sample_shots(st, encode(prompts), fs, (1, C, fs.numel(), Hp, Wp), window_seed(seed, 0), steps, cfg,
                           shift, sampler, callback=step_cb(0))
        return raw, plan
    pieces, prev = [], None
    for k, ((a, b), prompt) in enumerate(zip(plan.latents(), prompts)):
        n = b - a
        if k == 0:
            raw = st.sample_latents(encode([prompt]), (1, C, n, Hp, Wp), window_seed(seed, 0), steps, cfg, shift,
                                    sampler, callback=step_cb(0), contrast_cfg=0.0)
        else:
            r = min(reference_frames // tf, prev.shape[2])
            known = torch.zeros(1, C, r + n, Hp, Wp)
            known[:, :, :r] = st.normalize(prev[:, :, -r:])
            cond = FrameCondition(known, torch.tensor([1.0] * r + [0.0] * n))
            shape, seed_k = (1, C, r + n, Hp, Wp), window_seed(seed, k)
            if mode == "reference":
                raw = st.sample_latents(encode([prompt]), shape, seed_k, steps, cfg, shift, sampler, cond,
                                        callback=step_cb(k), frame_cfg=frame_cfg, contrast_cfg=0.0)
            else:
                fs = torch.tensor([0] * r + [1] * n)
                raw = sample_shots(st, encode([prompts[k - 1], prompt]), fs, shape, seed_k, steps, cfg, shift,
                                   sampler, cond, callback=step_cb(k), frame_cfg=frame_cfg)
            raw = raw[:, :, r:]
        pieces.append(raw)
        prev = raw
    return torch.cat(pieces, dim=2), plan
