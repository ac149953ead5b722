"""Videos of any length: overlapping windows over one latent timeline, each window conditioned on the tail of the one
before (the extend mechanism: known latent frames at timestep 0, never a round trip through pixels), with optional
anchor frames and one prompt per window. Memory stays flat in the length: each window's new latents go to the caller
as soon as they are sampled (to the streaming decoder, or into a file-backed tensor), and only the tail and the
anchors are kept.

    for piece in long_video_latents(st, ["a red ball rests on navy"], frames=961, width=64, height=64):
        ...                                                   # WindowResult: the window's new raw latents
    for frames in stream_frames(st, pieces):                  # [n, H, W, 3] in 0..1, one latent frame at a time
        ...

Timeline: latent frame j holds pixel frame 0 (j = 0) or pixel frames 4j-3 .. 4j (Wan's causal VAE, temporal factor
4). A window is [anchors, the previous window's last ``overlap`` latents, new latents]; the new latents of all
windows tile the timeline exactly once (``plan_windows``), and the causal decoder runs across window boundaries with
one state (``WanVAE.decode_stream``), so the fused video has 1 + 4 (N - 1) frames with none doubled or dropped.
Anchors are latent frames of the first window (the first frame, or frames the user picks) placed as known frames at
the start of every later window, so the model keeps seeing the identity it started from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

from .conditioning import Placement, check_frames, slot_of, to_frames, to_video
from .errors import SpacetimeValueError
from .sampling import FrameCondition

SEED_STRIDE = 0x9E3779B97F4A7C15          # odd 64-bit constant: window seeds never meet a batch item's seed + b


def window_seed(seed: int, k: int) -> int:
    """Noise seed of window (or shot) k. The first one uses the seed itself, so a video that fits one window equals
    the plain generation with that seed."""
    return int(seed) % 2 ** 63 if k == 0 else (int(seed) + k * SEED_STRIDE) % 2 ** 63


@dataclass(frozen=True)
class Window:
    """One sampling window, in timeline latent frames: ``context`` frames are known (anchors first, then the tail of
    the previous window), ``start`` .. ``stop`` - 1 are generated."""
    index: int
    context: tuple
    start: int
    stop: int

    @property
    def new(self) -> int:
        return self.stop - self.start

    @property
    def length(self) -> int:
        return len(self.context) + self.new

    def slots(self) -> list[int]:
        """The timeline latent frame in each slot of the window."""
        return list(self.context) + list(range(self.start, self.stop))


def plan_windows(total: int, window: int, overlap: int, anchors: Iterable[int] = ()) -> list[Window]:
    """Windows over ``total`` latent frames: each ``window`` latents long, the first generated from scratch, every
    later one knowing the ``overlap`` latents before it and the ``anchors`` (latent frames of the first window)."""
    anchors = sorted(set(int(a) for a in anchors))
    if total < 1:
        raise SpacetimeValueError(f"total={total} latent frames: at least 1 is needed")
    if window < 2:
        raise SpacetimeValueError(f"window={window} latent frames is too short; allowed: 2 or more")
    if not 1 <= overlap < window:
        raise SpacetimeValueError(f"overlap={overlap} latent frames is not allowed; allowed: 1..{window - 1}")
    if anchors and (anchors[0] < 0 or anchors[-1] >= window):
        raise SpacetimeValueError(f"anchor latent frames {anchors} must lie in the first window (0..{window - 1})")
    plan = [Window(0, (), 0, min(window, total))]
    while plan[-1].stop < total:
        start = plan[-1].stop
        ctx = tuple(a for a in anchors if a < start - overlap) + tuple(range(start - overlap, start))
        if len(ctx) >= window:
            raise SpacetimeValueError(f"a window of {window} latent frames has no room for new frames after "
                                      f"{overlap} overlap and {len(ctx) - overlap} anchor latent frames")
        plan.append(Window(len(plan), ctx, start, min(start + window - len(ctx), total)))
    return plan


def long_video_plan(frames: int, window_frames: int, overlap_frames: int, anchor_frames: Iterable[int] = (),
                    tf: int = 4) -> list[Window]:
    """``plan_windows`` from pixel frame counts, with errors that name the input, its value and what is allowed.
    ``anchor_frames`` are pixel frame numbers of the first window (0 = the first frame); each stands for the latent
    frame that holds it."""
    check_frames(frames, tf, "frames")
    check_frames(window_frames, tf, "window_frames")
    if window_frames < 1 + 2 * tf:
        raise SpacetimeValueError(f"window_frames={window_frames} is too short; allowed: {1 + 2 * tf} or more "
                                  f"(1 + {tf}*k)")
    if overlap_frames < tf or overlap_frames % tf:
        raise SpacetimeValueError(f"overlap_frames={overlap_frames} is not allowed: it must be a positive multiple "
                                  f"of {tf} (each window continues the last frames of the one before)")
    anchor_frames = sorted(set(int(a) for a in anchor_frames))
    for a in anchor_frames:
        if not 0 <= a < window_frames:
            raise SpacetimeValueError(f"anchor frame {a} is not allowed: anchors are frames of the first window, "
                                      f"0..{window_frames - 1}")
    anchors = sorted({slot_of(a, tf) for a in anchor_frames})
    budget = (window_frames - 1) // tf                     # latent frames of a window after its first
    if overlap_frames // tf + len(anchors) > budget:
        raise SpacetimeValueError(
            f"window_frames={window_frames} leaves no new frames per window after overlap_frames="
            f"{overlap_frames} and {len(anchors)} anchor latent frame(s); allowed: overlap_frames + {tf} x anchors "
            f"<= {window_frames - 1}")
    return plan_windows((frames - 1) // tf + 1, budget + 1, overlap_frames // tf, anchors)


@dataclass
class WindowResult:
    window: Window
    windows: int                     # how many windows the video has
    latents: torch.Tensor            # raw latents [1, C, new, H', W'] of timeline frames start .. stop - 1
    prompt: str


def _prompt_list(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise SpacetimeValueError("prompts is empty; give at least one prompt (one per window, the last one holds)")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise SpacetimeValueError(f"prompt of window {i + 1} is empty; every window prompt needs text")
    return prompts


def long_video_latents(st, prompts: Sequence[str], negative: str = "", *, frames: int, width: int, height: int,
                       window_frames: int = 17, overlap_frames: int = 4, anchor_frames: Iterable[int] = (),
                       seed: int = 0, steps: Optional[int] = None, cfg: Optional[float] = None,
                       shift: Optional[float] = None, sampler: str = "unipc", image: Optional[torch.Tensor] = None,
                       expand_prompt: bool = True, callback: Optional[Callable[[int, int, int], None]] = None,
                       frame_cfg: Optional[float] = None,
                       contrast_cfg: Optional[float] = None) -> Iterator[WindowResult]:
    """Sample a long video window by window. Inputs are checked and the prompts encoded when this is called; the
    returned generator samples one window each time it is advanced.

    ``st``: a ``Spacetime`` bundle. ``prompts``: one per window, the last one holds for the remaining windows.
    ``image`` [H, W, 3] in 0..1 (already ``width`` x ``height``): the first frame. ``callback(window, step, steps)``
    runs after every sampling step and may raise to cancel. ``frame_cfg``: frame guidance on the frames each window
    continues (default: the preset's). ``contrast_cfg``: contrast guidance with each window prompt's contrast
    prompt, the one the model writes (default: the preset's on a window without known frames, the first one
    without ``image``; off on the others)."""
    prompts = _prompt_list(prompts)
    st.check_shape(width, height, frames)
    frame_cfg = st.frame_guidance(frame_cfg)
    if contrast_cfg is not None:
        contrast_cfg = st.contrast_guidance(contrast_cfg)
    tf = st.temporal_factor
    plan = long_video_plan(frames, window_frames, overlap_frames, anchor_frames, tf)
    if image is not None and tuple(image.shape) != (height, width, 3):
        raise SpacetimeValueError(f"image has shape {tuple(image.shape)}; allowed: [{height}, {width}, 3] (resize "
                                  f"it to the video first)")
    per_window = [prompts[min(w.index, len(prompts) - 1)] for w in plan]
    texts = {}
    with torch.no_grad():
        for p in per_window:
            if p not in texts:
                texts[p] = st.encode_text([p], [negative], expand=expand_prompt)
    return _sample_windows(st, plan, per_window, texts, width, height, overlap_frames // tf,
                           {slot_of(a, tf) for a in anchor_frames}, seed, steps, cfg, shift, sampler, image, callback,
                           frame_cfg, contrast_cfg)


@torch.no_grad()
def _sample_windows(st, plan, per_window, texts, width, height, overlap, anchors, seed, steps, cfg, shift, sampler,
                    image, callback, frame_cfg, contrast_cfg) -> Iterator[WindowResult]:
    tf = st.temporal_factor
    _, C, _, Hp, Wp = st.latent_shape(1, 1, height, width)
    keep: dict = {}                                         # timeline latent -> normalised [1, C, 1, H', W']
    for w in plan:
        shape = (1, C, w.length, Hp, Wp)
        cond = None
        if w.context:
            known = torch.zeros(shape)
            for slot, j in enumerate(w.context):
                known[:, :, slot:slot + 1] = keep[j]
            cond = FrameCondition(known, torch.tensor([1.0] * len(w.context) + [0.0] * w.new))
        elif image is not None:
            pl = Placement.empty(1, 1 + tf * (w.length - 1), height, width).put(0, to_video(image[None]))
            cond = st.condition_from_frames(pl)

        def step_cb(i, n, x0, x, k=w.index):
            if callback is not None:
                callback(k, i, n)
        prompt = per_window[w.index]
        raw = st.sample_latents(texts[prompt], shape, window_seed(seed, w.index), steps, cfg, shift, sampler, cond,
                                callback=step_cb, frame_cfg=frame_cfg, contrast_cfg=contrast_cfg)
        new = raw[:, :, len(w.context):].contiguous()
        z = st.normalize(new)
        wanted = anchors | set(range(w.stop - overlap, w.stop))
        for i, j in enumerate(range(w.start, w.stop)):
            if j in wanted:
                keep[j] = z[:, :, i:i + 1].clone()
        keep = {j: v for j, v in keep.items() if j in wanted}
        yield WindowResult(w, len(plan), new, prompt)


@torch.no_grad()
def stream_frames(st, pieces: Iterable[torch.Tensor], cuts: Sequence[int] = (),
                  total: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Raw latent pieces [1, C, n, H', W'] in timeline order -> frames [n', H, W, 3] in 0..1, one latent frame at a
    time, with one causal decoder state across the pieces, restarted at ``cuts`` (a storyboard's latent frames
    where shots begin; ``total``: the latent frames to come, to check them against first)."""
    vae = st.vae
    for chunk in vae.decode_stream((p.to(vae.device) for p in pieces), normalized=False, restarts=cuts,
                                   total=total):
        yield to_frames(chunk.cpu())[0]


def latent_pieces(latents: torch.Tensor, size: int = 8) -> Iterator[torch.Tensor]:
    """A latent [1, C, F', H', W'] in pieces of ``size`` latent frames (for ``stream_frames``)."""
    for i in range(0, latents.shape[2], size):
        yield latents[:1, :, i:i + size]


def file_backed_latents(shape: tuple, folder) -> torch.Tensor:
    """A zero float32 tensor whose storage is a file in ``folder`` (memory-mapped: the operating system pages it in
    and out, so a long timeline does not stay in RAM). The file is removed at once where the system allows it (the
    mapping lives on); elsewhere it stays in ``folder`` until that is cleaned."""
    import os
    import secrets

    import numpy as np
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"spacetime_latents_{secrets.token_hex(6)}.f32"
    arr = np.memmap(path, dtype=np.float32, mode="w+", shape=tuple(int(s) for s in shape))
    if os.name == "posix":
        path.unlink()
    return torch.from_numpy(arr)
