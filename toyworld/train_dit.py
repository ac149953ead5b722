"""Train the embedded DiT on toy-world latents, with the prompt-following probe running as it trains.

    python -m spacetime.toyworld.train encode --vae RUN/vae --out RUN/data
    python -m spacetime.toyworld.train dit --data RUN/data --vae RUN/vae --out RUN/dit

What makes it learn objects and not only backgrounds on a small compute budget (each measured with the probe,
see weights/MODEL_CARD.md):
- **Object-weighted loss.** The renderer knows which latent cells an object covers; their flow-matching error
  counts ``obj_weight`` times. The rest keeps its full weight (the loss is divided by the number of cells, not by
  the weights), so backgrounds are not traded away.
- **Joint image and video training.** A share of the steps trains on single frames (latent frame 0 of the encoded
  clips is exactly the latent of that frame alone: the VAE is causal), which are 5-9 times cheaper than clips and
  teach colour, shape, background and layout; clips teach motion. ``image_steps`` starts with frames only.
- **One timestep per text-to-video clip**; known frames (image-to-video, extension, fill) enter clean at timestep 0
  and carry no loss, in the frame-mask mixture that makes one set of weights do every task.
- **Noise levels where the sampler spends its steps.** ``sigma_shift`` moves the logit-normal training levels towards
  noise as the sampler's shift moves its schedule; where motion and the number of objects are decided (high noise),
  shift 3 trains about three times as often as none, and motion is learned sooner (``train all`` uses it).
- **Captions that contrast.** ``contrast`` > 0 adds a hinge on examples of one object: the same noisy clip read with
  a caption that changes one word must fit its target worse, by ``contrast_margin`` of the true caption's loss.
  ``contrast_words`` says which words: ``motion`` (the opposite motion: right <-> left, up <-> down, grows <->
  shrinks, bounces <-> stays still; clips only, a single frame shows no motion), ``shape`` (another shape),
  ``colour`` (another colour that stands out from the background), ``relation`` (on pairs: the inverse relation,
  "left of" <-> "right of", "above" <-> "below", the objects where they are); one of them per example. Without it
  the flow loss alone left the model blind to the direction word (swapping it changed the loss by under 0.5 % at
  every noise level) and nearly blind to the shape word (2-4 %, against 40-54 % for the colour word); the relation
  hinge has not taught the relation word on the CPU (the model card, "After version 11").
- Text embeddings of repeated captions are cached, so the text encoder does not dominate single-frame steps.

With ``--stories DIR`` (``train_shots``) the ``story_frac`` share of the steps trains on multi-shot stories: per-shot
text over a whole story, or a shot continued from the previous shot's last latent frames, as the storyboard sampler
makes them.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..model.config import DiTConfig, config_to_dict
from ..model.dit import build_dit
from ..model.embedded import TOY_DIT
from ..model.loading import read_state_dict, write_safetensors_atomic
from .runs import Checkpointer, StopOnSignal, clips_to_tensor, device_and_threads, lr_at
from .world import CHANGES, DIRECTIONS, Obj, Scene, alternatives, random_clip, render

TRAIN_SIZES = ((64, 64), (96, 64), (64, 96))
# clips per bucket as fractions of the total: single frames are cheap and plentiful, clips teach motion
DATA_MIX = {1: 0.40, 9: 0.15, 17: 0.30, 33: 0.15}
# what a contrasting caption may change (``DitRecipe.contrast_words``)
CONTRAST_WORDS = ("motion", "shape", "colour", "relation")


# ----------------------------------------------------------------------------------------------------------------------
# Dataset of latents
# ----------------------------------------------------------------------------------------------------------------------

def object_cells(coverage: np.ndarray, sf: int, tf: int) -> np.ndarray:
    """Pixel object coverage [T, H, W] -> uint8 [F', H/sf, W/sf]: 255 where a latent cell (or its neighbour)
    holds part of an object in any of the frames of its slot."""
    cov = torch.from_numpy(coverage).float()
    T = cov.shape[0]
    slots = [cov[:1].amax(0)] + [cov[tf * (k - 1) + 1:tf * k + 1].amax(0) for k in range(1, (T - 1) // tf + 1)]
    m = torch.stack(slots)[:, None]                                       # F' 1 H W
    m = F.avg_pool2d(m, sf)
    m = F.max_pool2d(m, 3, stride=1, padding=1)[:, 0]                     # one cell of margin
    return (m.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def bucket_name(w, h, f):
    return f"{w}x{h}_{f}f"


def scene_to_json(s: Scene) -> dict:
    return asdict(s)


def scene_from_json(d: dict) -> Scene:
    return Scene(**{**d, "objects": tuple(Obj(**o) for o in d["objects"])})


def write_json_atomic(data, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def encode_bucket(vae, out: Path, bucket: str, n: int, seed: int, key: tuple, make, batch: int = 16,
                  part: int = 512, t0: float = 0.0, what: str = "clips", restarts: tuple = ()):
    """Encode ``n`` examples of one bucket into ``out`` in parts of ``part``, skipping parts already there (so a
    stopped run resumes). ``make(rng, start, count)`` renders ``count`` examples as (an object with ``.frames``
    uint8 [T, H, W, 3], object coverage [T, H, W], JSON record, {name: array} of further per-example rows); ``rng``
    is the part's own generator (``seed``, ``key`` and the part's start), so every part is reproducible alone.
    ``restarts``: latent frames where every example of the bucket cuts to a new shot (``WanVAE.encode_chunks``)."""
    sf, tf = vae.spatial_factor, vae.temporal_factor
    for p0 in range(0, n, part):
        name = f"{bucket}_s{seed}_{p0 // part:03d}"
        if (out / f"{name}.safetensors").exists():
            continue
        rng = np.random.default_rng([seed, *key, p0])
        lat, cells, recs, extra = [], [], [], {}
        for b0 in range(p0, min(n, p0 + part), batch):
            items = make(rng, b0, min(batch, min(n, p0 + part) - b0))
            x = clips_to_tensor([it[0] for it in items]).to(vae.device)
            lat.append(vae.encode(x, restarts=restarts).half().cpu())
            for clip, coverage, rec, rows in items:
                cells.append(object_cells(coverage, sf, tf))
                recs.append(rec)
                for k, v in rows.items():
                    extra.setdefault(k, []).append(v)
        write_json_atomic(recs, out / f"{name}.json")
        write_safetensors_atomic({"latents": torch.cat(lat), "objects": torch.from_numpy(np.stack(cells)),
                                  **{k: torch.from_numpy(np.stack(v)) for k, v in extra.items()}},
                                 out / f"{name}.safetensors")
        print(f"{name}: {len(recs)} {what}, {time.time() - t0:.0f}s", flush=True)


def parse_sizes(text: str) -> tuple:
    """'64x64,96x64' -> ((64, 64), (96, 64)): frame sizes (width x height), multiples of 16 up to 512."""
    from ..model.conditioning import check_size
    out = []
    for item in str(text).split(","):
        try:
            w, h = (int(v) for v in item.strip().lower().split("x"))
        except ValueError:
            raise ValueError(f"sizes={text!r}: {item.strip()!r} is not WIDTHxHEIGHT; allowed e.g. 64x64,96x64") from None
        check_size(w, h, 16, name="sizes item")
        if w > 512 or h > 512:
            raise ValueError(f"sizes={text!r}: {w}x{h} is not allowed; widths and heights up to 512")
        out.append((w, h))
    return tuple(dict.fromkeys(out))


def parse_mix(text: str, tf: int = 4) -> dict:
    """'1:0.4,17:0.6' -> {1: 0.4, 17: 0.6}: clip lengths (1 + 4k frames) and their shares (> 0)."""
    from ..model.conditioning import check_frames
    mix = {}
    for item in str(text).split(","):
        try:
            f, w = item.strip().split(":")
            f, w = int(f), float(w)
        except ValueError:
            raise ValueError(f"mix={text!r}: {item.strip()!r} is not FRAMES:SHARE; allowed e.g. 1:0.4,17:0.6") from None
        check_frames(f, tf, name="mix frames")
        if not (w > 0 and np.isfinite(w)):
            raise ValueError(f"mix={text!r}: {f}:{w:g} is not allowed; shares are > 0")
        mix[f] = w
    return mix


def encode_dataset(vae_dir: Path, out: Path, clips: int, seed: int = 1, batch: int = 16, part: int = 512,
                   mix: Optional[dict] = None, scenes: Optional[list] = None, free_start: bool = False,
                   sizes: Optional[tuple] = None, jobs: int = 1):
    """Render training clips (held-out combinations excluded), encode them with the VAE and store normalised
    latents (fp16) and object cells (uint8) per (size, length) bucket in parts of ``part`` clips, with the scene
    graphs as JSON. Resumable part by part; more clips with another ``seed`` add parts. ``scenes`` encodes these
    scenes (17 frames, 64x64) instead of random ones (the overfit check). ``free_start``: movers start anywhere
    along their axis (``world.sample_object``), so a first frame does not give their direction away. ``sizes``:
    frame sizes to render (default ``TRAIN_SIZES``); a size keeps its random stream whichever others are asked, so
    one process per size (or per length of ``mix``) with the same seed writes the same parts as one process for all.
    ``jobs`` > 1 renders and encodes the (size, length) buckets in that many processes (the same parts as one)."""
    if int(jobs) < 1:
        raise ValueError(f"jobs={jobs}: allowed 1 or more (processes)")
    from .train_vae import load_trained_vae
    vae, _ = load_trained_vae(vae_dir)                # a broken VAE folder fails here, before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if scenes is not None:
        tasks = [(64, 64, 17, len(scenes), 0)]
    else:
        tasks = []
        sizes = tuple(sizes or TRAIN_SIZES)
        for i, (w, h) in enumerate(sizes):
            bi = TRAIN_SIZES.index((w, h)) if (w, h) in TRAIN_SIZES else 100 + i
            for f, wf in (mix or DATA_MIX).items():
                tasks.append((w, h, f, int(round(clips * wf / len(sizes))), bi))
    jobs = min(int(jobs), len(tasks))                 # the overfit check's scenes are one task: one process
    if jobs > 1:
        import multiprocessing as mp
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with mp.get_context("spawn").Pool(jobs) as pool:
            pool.starmap(_encode_worker, [(vae_dir, out, t, seed, batch, part, free_start, threads, t0)
                                          for t in sorted(tasks, key=lambda t: -t[2] * t[3])])
        return
    _encode_buckets(vae.to(device_and_threads()), out, tasks, seed, batch, part, free_start, t0, scenes)


def _encode_worker(vae_dir: Path, out: Path, task: tuple, seed: int, batch: int, part: int, free_start: bool,
                   threads: int, t0: float):
    """One process of ``encode_dataset(jobs > 1)``: its own VAE, ``threads`` CPU threads, one bucket."""
    from .train_vae import load_trained_vae
    vae, _ = load_trained_vae(vae_dir)
    _encode_buckets(vae.to(device_and_threads(threads)), out, [task], seed, batch, part, free_start, t0)


@torch.no_grad()
def _encode_buckets(vae, out: Path, tasks: list, seed: int, batch: int, part: int, free_start: bool, t0: float,
                    scenes: Optional[list] = None):
    """``encode_dataset``'s work for ``tasks`` [(width, height, frames, clips, size key)] with ``vae`` (on a GPU the
    VAE encodes there; the renderer stays on the CPU)."""
    for w, h, f, n, bi in tasks:
        def make(rng, b0, nb, w=w, h=h, f=f):
            if scenes is not None:
                cl = [render(scenes[b0 + i], f, w, h) for i in range(nb)]
            else:
                cl = [random_clip(int(rng.integers(2 ** 31)), f, w, h, training=True, free_start=free_start)
                      for _ in range(nb)]
            return [(c, c.coverage, scene_to_json(c.scene), {}) for c in cl]
        encode_bucket(vae, out, bucket_name(w, h, f), n, seed, (bi, f), make, batch, part, t0)


@dataclass
class Bucket:
    name: str
    latents: torch.Tensor          # fp16 [N, C, F', H', W'] normalised
    objects: torch.Tensor          # uint8 [N, F', H', W']
    scenes: list

    @property
    def frames(self) -> int:
        return self.latents.shape[2]

    @cached_property
    def directional(self) -> np.ndarray:
        """1.0 for the clips whose scene has an object moving left, right, up or down, else 0."""
        return np.array([float(any(o.motion in DIRECTIONS for o in s.objects)) for s in self.scenes])

    @cached_property
    def changing(self) -> np.ndarray:
        """1.0 for the clips whose scene has an object that grows, shrinks or bounces, else 0."""
        return np.array([float(any(o.motion in CHANGES for o in s.objects)) for s in self.scenes])

    @cached_property
    def paired(self) -> np.ndarray:
        """1.0 for the clips of two objects in a spatial relation (pairs), else 0."""
        return np.array([float(s.kind == "pair" and s.relation is not None) for s in self.scenes])


_KINDS = {"clips": ("--data", "encode"), "stories": ("--stories", "encode-stories")}


def read_parts(data_dir: Path, stories: bool = False) -> dict:
    """{bucket: [(tensors, JSON records)]} of the parts in ``data_dir``: clips, or with ``stories`` multi-shot
    stories (``train_shots``); the other kind is refused with the option it belongs to."""
    want = "stories" if stories else "clips"
    parts: dict = {}
    for p in sorted(Path(data_dir).glob("*.safetensors")):
        recs = json.loads(p.with_suffix(".json").read_text())
        have = "stories" if recs and "shots" in recs[0] else "clips"
        if recs and have != want:
            raise ValueError(f"{data_dir} holds {have}, not {want}: pass it as {_KINDS[have][0]} (made by "
                             f"'{_KINDS[have][1]}')")
        parts.setdefault(p.stem.split("_s")[0], []).append((read_state_dict(p), recs))
    if not parts:
        raise FileNotFoundError(f"no latent buckets in {data_dir}; run the {_KINDS[want][1]} stage first")
    return dict(sorted(parts.items()))


def load_dataset(data_dir: Path) -> list[Bucket]:
    return [Bucket(k, torch.cat([sd["latents"] for sd, _ in v]), torch.cat([sd["objects"] for sd, _ in v]),
                   [scene_from_json(d) for _, recs in v for d in recs])
            for k, v in read_parts(data_dir).items()]


# ----------------------------------------------------------------------------------------------------------------------
# Frame masks: one model for every task
# ----------------------------------------------------------------------------------------------------------------------

MASK_MIX = (("t2v", 0.45), ("i2v_head", 0.17), ("i2v_tail", 0.05), ("head", 0.10), ("tail", 0.08),
            ("head_tail", 0.08), ("random", 0.07))


def sample_mask(n: int, rng: np.random.Generator, t2v_only: bool = False,
                extend_frac: float = 0.0, mix: Optional[dict] = None) -> tuple[np.ndarray, str]:
    """A per-latent-frame known mask (1 = known) for one training example, with at least one unknown frame.
    ``extend_frac``: share of examples that continue a long known head or lead into a long known tail (half the
    clip up to all but one latent frame: extending a clip, the task ``spacetime eval`` measures)."""
    m = np.zeros(n, np.float32)
    if t2v_only or n == 1:
        return m, "t2v"
    if extend_frac > 0 and n > 2 and rng.random() < extend_frac:
        k = int(rng.integers(max(1, n // 2), n))
        if rng.random() < 0.5:
            m[:k] = 1
            return m, "extend_head"
        m[n - k:] = 1
        return m, "extend_tail"
    kinds, weights = zip(*(mix.items() if mix else MASK_MIX))
    kind = kinds[int(rng.choice(len(kinds), p=np.array(weights) / sum(weights)))]
    half = max(1, (n + 1) // 2)        # up to 5 of 9: a 17-frame clip extended by 16 frames
    if kind == "i2v_head":
        m[0] = 1
    elif kind == "i2v_tail":
        m[-1] = 1
    elif kind == "head":
        m[:int(rng.integers(1, half + 1))] = 1
    elif kind == "tail":
        m[n - int(rng.integers(1, half + 1)):] = 1
    elif kind == "head_tail":
        m[:int(rng.integers(1, max(2, n // 3 + 1)))] = 1
        m[n - int(rng.integers(1, max(2, n // 3 + 1))):] = 1
    elif kind == "random":
        m = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(np.float32)
    if m.all():
        m[int(rng.integers(1, n))] = 0
    return m, kind


def check_mask_mix(mix: dict) -> dict:
    """A recipe's ``mask_mix`` ({} = MASK_MIX), checked: known kinds, weights >= 0 with a positive sum."""
    known = [k for k, _ in MASK_MIX]
    if not isinstance(mix, dict):
        raise ValueError(f"mask_mix={mix!r}: allowed a JSON object {{kind: weight}} with kinds from {known}")
    bad = [k for k in mix if k not in known]
    if bad:
        raise ValueError(f"mask_mix kinds {bad}: allowed {known}")
    w = [float(v) for v in mix.values()]
    if mix and (min(w) < 0 or not sum(w) > 0 or not all(np.isfinite(w))):
        raise ValueError(f"mask_mix weights {mix}: allowed finite weights >= 0 with a positive sum")
    return mix


def sample_sigma(b: int, gen: torch.Generator, shift: float = 1.0, top: float = 1.0) -> torch.Tensor:
    """Logit-normal noise levels with a uniform share so both ends are seen, then moved towards noise by ``shift``
    the way the sampler's shift moves its schedule (sigma -> shift * sigma / (1 + (shift - 1) * sigma); 1 = as is),
    then scaled into (0, ``top``]: a low-noise expert learns only the levels it will denoise."""
    ln = torch.sigmoid(torch.randn(b, generator=gen))
    un = torch.rand(b, generator=gen)
    pick = torch.rand(b, generator=gen) < 0.8
    s = torch.where(pick, ln, un)
    s = shift * s / (1 + (shift - 1) * s)
    return (s * top).clamp(1e-4, 1 - 1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Text, cached
# ----------------------------------------------------------------------------------------------------------------------

class CachedText:
    """MiniLM token embeddings per caption, kept (fp16) for the ``max_items`` captions used most recently."""

    def __init__(self, encoder, max_items: int = 30000):
        if max_items < 1:
            raise ValueError(f"max_items={max_items}: allowed 1 or more")
        self.enc, self.max_items = encoder, max_items
        self.cache: dict = {}

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        found = {c: self.cache.pop(c) for c in dict.fromkeys(captions) if c in self.cache}
        todo = sorted({c for c in captions if c not in found})
        if todo:
            emb, lens = self.enc.encode(todo)
            found.update({c: emb[i, :int(lens[i])].half().cpu() for i, c in enumerate(todo)})
        self.cache.update(found)                      # this batch's captions become the newest entries
        while len(self.cache) > self.max_items:       # the least recently used go; the rows below come from
            self.cache.pop(next(iter(self.cache)))    # ``found``, so an eviction never loses one of this batch
        rows = [found[c] for c in captions]
        L = max(r.shape[0] for r in rows)
        out = torch.zeros(len(rows), L, rows[0].shape[1])
        for i, r in enumerate(rows):
            out[i, :r.shape[0]] = r.float()
        return out.to(device), torch.tensor([r.shape[0] for r in rows], device=device)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class DitRecipe:
    steps: int = 30000
    lr: float = 5e-4
    warmup: int = 300
    tokens: int = 4096              # DiT tokens per batch (video and image steps alike)
    image_frac: float = 0.35        # share of steps on single frames after ``image_steps``
    image_steps: int = 0            # steps at the start that train on single frames only
    obj_weight: float = 4.0         # loss weight of latent cells an object covers
    sigma_shift: float = 1.0        # training noise levels moved towards noise like the sampler's shift (1 = none)
    sigma_max: float = 1.0          # training noise levels scaled into (0, sigma_max]: below 1, a low-noise expert
    #                                 (the sampler hands it the steps under its boundary)
    p_drop: float = 0.1             # captions dropped to "" (classifier-free guidance)
    ema: float = 0.999
    t2v_only: bool = False          # no frame-mask mixture (the overfit check)
    p_short: float = 0.25           # share of short, user-style captions
    probe_every: int = 500
    probe_video: bool = True        # probe 17-frame clips as well as single frames
    probe_sets: str = "seen,held"    # "" or "none": only the motion word gap (seconds instead of minutes)
    bf16: bool = False              # bf16 autocast (default on CUDA)
    time_limit: float = 0.0         # seconds; stop (and save) after this long, resume later
    time_schedule: bool = False     # the learning rate's cosine runs on wall time and ends at ``time_limit`` (over
                                    # resumed runs), ``steps`` then only bounds it: a fixed budget on a machine whose
                                    # speed is not known in advance (a rented GPU)
    seed: int = 0
    max_batch: int = 256
    story_frac: float = 0.0         # share of steps on multi-shot stories (``stories_dir``; after ``image_steps``)
    story_ref_frac: float = 0.5     # share of story steps that learn the reference modes instead of per-shot text
    extend_frac: float = 0.0        # share of clip examples with a long known head or tail (see sample_mask)
    mask_mix: dict = field(default_factory=dict)   # {kind: weight} for clip frame masks; {} = MASK_MIX
    contrast: float = 0.0           # weight of the contrasting-caption hinge (0 = off; see the module notes)
    contrast_words: str = "motion"  # comma-separated words the contrasting caption changes: motion, shape, colour,
    #                                 relation
    contrast_margin: float = 0.2    # the opposite caption's loss must exceed the true one's by this share
    contrast_min_sigma: float = 0.5  # the hinge applies at noise levels from here (below, the clip shows its motion)
    motion_boost: float = 0.0       # clip steps draw clips whose object moves left/right/up/down 1 + this times as often
    change_boost: float = 0.0       # clip steps draw clips whose object grows, shrinks or bounces 1 + this times as often
    pair_boost: float = 0.0         # every step draws pairs (two objects in a relation) 1 + this times as often
    pair_places: float = 0.0        # share of pairs' detailed captions naming each object's place, not the relation
    text_lr_mult: float = 1.0       # learning rate multiplier of the caption's path (text embedding, cross-attention)
    pixel_weight: float = 0.0       # weight of an L1 loss on single frames decoded by the (frozen) VAE from the
    #                                 predicted clean latent against the decoded true one (0 = off; see pixel_loss)
    pixel_max_sigma: float = 0.6    # the pixel loss applies at noise levels up to here (above, the prediction is a
    #                                 blur of every picture the caption allows)
    change_weight: float = 0.0      # weight of a loss on the frame-to-frame change of the flow error on clips (0 =
    #                                 off; see change_loss)
    dit: dict = field(default_factory=lambda: config_to_dict(TOY_DIT))

    def __post_init__(self):
        words = self.contrasted
        if not words or any(w not in CONTRAST_WORDS for w in words):
            raise ValueError(f"contrast_words={self.contrast_words!r}: allowed a comma-separated choice of "
                             f"{', '.join(CONTRAST_WORDS)}")
        for name in ("pixel_weight", "change_weight"):
            value = getattr(self, name)
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{name}={value!r}: allowed a number >= 0 (0 = off)")
        for name in ("pixel_max_sigma", "sigma_max"):
            if not 0 < float(getattr(self, name)) <= 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: allowed a noise level in (0, 1]")

    @property
    def contrasted(self) -> tuple:
        return tuple(dict.fromkeys(w.strip() for w in str(self.contrast_words).split(",") if w.strip()))

    @classmethod
    def from_dict(cls, d: dict) -> "DitRecipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Batch:
    """One training batch: clean latents, object weights, the known frames (1 = known: timestep 0, no loss) and the
    captions, ``len(captions) // B`` per example grouped by example; with ``frame_shots`` [F'] each latent frame
    reads its own shot's caption (per-shot text), otherwise every example has one caption."""
    name: str
    kind: str                      # image | video | text | reference | text+reference (the last three: stories)
    x0: torch.Tensor               # float [B, C, F', H', W']
    objw: torch.Tensor             # float [B, F', H', W'] in 0..1
    known: np.ndarray              # float32 [B, F']
    captions: list
    frame_shots: Optional[torch.Tensor] = None
    negatives: Optional[list] = None   # per example: the contrasting caption, or None (``contrast``)


# Fields a resumed run may change: its length, how often and what it probes, and how it fits the machine.
RESUME_MAY_CHANGE = ("steps", "probe_every", "probe_video", "probe_sets", "bf16", "time_limit", "max_batch")


def check_resume_recipe(out: Path, r: "DitRecipe") -> None:
    """Refuse to resume the run in ``out`` with a recipe that differs from the one it was started with (its
    ``recipe.json``) in anything but ``RESUME_MAY_CHANGE``: the optimiser state, the data position and the learning
    rate schedule belong to that recipe. A field newer than the run's ``recipe.json`` counts as its default there (the
    run trained without it). A run folder without ``recipe.json`` is not checked."""
    saved_path = Path(out) / "recipe.json"
    if not saved_path.exists():
        return
    now = json.loads(json.dumps(asdict(r)))          # the same JSON types as the saved file
    saved = {**json.loads(json.dumps(asdict(DitRecipe()))), **json.loads(saved_path.read_text())}
    changed = [f"{k}={now[k]!r} (the run: {saved[k]!r})" for k in now
               if k not in RESUME_MAY_CHANGE and now[k] != saved[k]]
    if changed:
        raise ValueError(f"the run in {out} was started with another recipe: {', '.join(changed)}. Resume it with "
                         f"the values in its recipe.json (only {', '.join(RESUME_MAY_CHANGE)} may change), or "
                         f"give a new --out and --init {Path(out) / 'dit_ema.safetensors'} to start a new stage "
                         f"from it")


def batch_size(r: "DitRecipe", cfg: DiTConfig, frames: int, hp: int, wp: int) -> int:
    n_tok = frames * (hp // cfg.patch_size[1]) * (wp // cfg.patch_size[2])
    return int(np.clip(r.tokens // n_tok, 2, r.max_batch))


def clip_batch(data: list, rng: np.random.Generator, r: "DitRecipe", cfg: DiTConfig, step: int) -> Batch:
    """A batch of clips (or of their first frames) with captions and the frame-mask mixture."""
    from .captions import training_caption
    counts = np.array([b.latents.shape[0] for b in data], np.float64)
    video = [i for i, b in enumerate(data) if b.frames > 1]
    img_step = step < r.image_steps or (not video) or rng.random() < r.image_frac
    if img_step:
        bi = int(rng.choice(len(data), p=counts / counts.sum()))
    else:
        vc = counts[video]
        bi = video[int(rng.choice(len(video), p=vc / vc.sum()))]
    b = data[bi]
    Fp = 1 if img_step else b.frames
    B = batch_size(r, cfg, Fp, *b.latents.shape[3:])
    move = (r.motion_boost > 0 or r.change_boost > 0) and not img_step
    if move or r.pair_boost > 0:
        w = 1.0 + r.pair_boost * b.paired
        if move:
            w = w + r.motion_boost * b.directional + r.change_boost * b.changing
        idx = rng.choice(b.latents.shape[0], B, p=w / w.sum())
    else:
        idx = rng.integers(0, b.latents.shape[0], B)
    caps, negs = [], []
    words = [w for w in r.contrasted if not (img_step and w == "motion")] if r.contrast > 0 else []
    for i in idx:
        if rng.random() < r.p_drop:
            caps.append("")
            negs.append(None)
            continue
        opposite = contrasting_scene(b.scenes[i], words, rng) if words else None
        twin = copy.deepcopy(rng) if opposite is not None else None     # the same wording, one word changed
        caps.append(training_caption(b.scenes[i], rng, r.p_short, r.pair_places))
        negs.append(None if opposite is None else training_caption(opposite, twin, r.p_short, r.pair_places))
    m = np.stack([sample_mask(Fp, rng, r.t2v_only, r.extend_frac, r.mask_mix)[0] for _ in range(B)])
    return Batch(b.name, "image" if img_step else "video", b.latents[idx][:, :, :Fp].float(),
                 b.objects[idx][:, :Fp].float().div(255), m, caps,
                 negatives=negs if any(n is not None for n in negs) else None)


def contrasting_scene(scene: Scene, words, rng: np.random.Generator) -> Optional[Scene]:
    """The scene of a contrasting caption: one of ``words`` changed, on a scene of one object motion, shape or
    colour (the opposite motion, another shape, another colour visible on its background), on a pair the relation
    (the inverse one), or None for scenes of another kind, words that do not apply, or where every change would name
    a held-out combination. A random draw only when there is a choice, so a motion-only recipe keeps the random
    stream of the data it reads."""
    if scene.kind == "single" and len(scene.objects) == 1:
        applies = ("motion", "shape", "colour")
    elif scene.kind == "pair" and len(scene.objects) == 2:
        applies = ("relation",)
    else:
        return None
    options = [c for c in (alternatives(scene, w) for w in words if w in applies) if c]
    if not options:
        return None
    pick = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    return pick[int(rng.integers(len(pick)))] if len(pick) > 1 else pick[0]


def predict(model, xs: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, lens: torch.Tensor,
            frame_shots: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The DiT's flow prediction. With ``frame_shots`` the text rows hold ``len(ctx) // B`` captions per example
    and every latent frame reads its shot's caption through ``storyboard.PerShotText``, the path the multi-shot
    sampler takes."""
    if frame_shots is None:
        return model(xs, t, ctx, lens)
    from ..model.storyboard import PerShotText
    B = xs.shape[0]
    if ctx.shape[0] % B:
        raise ValueError(f"{ctx.shape[0]} captions do not split into {B} examples")
    per = PerShotText(model, frame_shots, ctx.shape[0] // B)
    return per(xs, t, text_kv=per.text_kv(per.embed_text(ctx, lens)))


def flow_loss(model, x0: torch.Tensor, objw: torch.Tensor, m: torch.Tensor, ctx: torch.Tensor, lens: torch.Tensor,
              sigma: torch.Tensor, noise: torch.Tensor, obj_weight: float, bf16: bool = False,
              frame_shots: Optional[torch.Tensor] = None, negatives: Optional[tuple] = None,
              contrast: float = 0.0, margin: float = 0.2, min_sigma: float = 0.5,
              pixel: Optional[tuple] = None, change_weight: float = 0.0) -> torch.Tensor:
    """Flow-matching loss of one batch: unknown frames (``m`` 0) noised to ``sigma``, known ones clean at timestep
    0 without loss; object cells weigh ``obj_weight``, the sum is divided by the number of unknown cells.

    ``negatives`` (rows [K] long, their contrasting captions' ctx, lens) with ``contrast`` > 0 adds, for those rows
    at ``sigma`` >= ``min_sigma``, ``contrast`` x relu(margin x L_true - (L_neg - L_true)) averaged over the rows,
    where L is an example's weighted loss read with its own or with the contrasting caption.

    ``pixel`` (vae, weight, max_sigma) adds ``weight`` x ``pixel_loss`` on the single-frame examples;
    ``change_weight`` > 0 adds that times ``change_loss`` on clips."""
    B, Fp = m.shape
    Hp, Wp = x0.shape[3:]
    s5 = sigma.view(B, 1, 1, 1, 1)
    known = m.view(B, 1, Fp, 1, 1)
    xs = ((1 - s5) * x0 + s5 * noise) * (1 - known) + x0 * known
    t = (1 - m) * sigma.view(B, 1) * 1000.0
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        v = predict(model, xs, t, ctx, lens, frame_shots)
    e = v.float() - (noise - x0)                     # the flow error
    err = e ** 2
    w = (1 - known) * (1 + (obj_weight - 1) * objw[:, None])
    n_unknown = ((1 - known).sum() * x0.shape[1] * Hp * Wp).clamp(min=1)
    loss = (err * w).sum() / n_unknown
    if change_weight > 0 and Fp > 1:
        loss = loss + change_weight * change_loss(e, objw, m, obj_weight)
    if pixel is not None and pixel[1] > 0 and Fp == 1:
        vae, weight, max_sigma = pixel
        unknown = torch.where(m[:, 0] > 0, torch.full_like(sigma, math.inf), sigma)    # a known frame: no loss
        loss = loss + weight * pixel_loss(vae, x0, xs - s5 * v.float(), objw, unknown, obj_weight, max_sigma)
    if negatives is None or contrast <= 0:
        return loss
    rows, nctx, nlens = negatives
    rows = rows[sigma[rows] >= min_sigma]
    if rows.numel() == 0:
        return loss
    if frame_shots is not None:
        raise ValueError("contrasting captions apply to one caption per example, not to per-shot text")
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=bf16):
        vn = predict(model, xs[rows], t[rows], nctx[rows], nlens[rows])
    wr = w[rows]
    cells = ((1 - known[rows]).sum(dim=(1, 2, 3, 4)) * x0.shape[1] * Hp * Wp).clamp(min=1)
    l_true = (err[rows] * wr).sum(dim=(1, 2, 3, 4)) / cells
    l_neg = ((vn.float() - (noise[rows] - x0[rows])) ** 2 * wr).sum(dim=(1, 2, 3, 4)) / cells
    return loss + contrast * F.relu(margin * l_true - (l_neg - l_true)).mean()


def change_loss(e: torch.Tensor, objw: torch.Tensor, m: torch.Tensor, obj_weight: float) -> torch.Tensor:
    """Squared error of the frame-to-frame change: ``e`` is the flow error [B, C, F', H', W'] (prediction less
    target), and the loss is the mean over pairs of neighbouring latent frames, both unknown (``m`` 0), of
    (e[f + 1] - e[f])^2, cells where either frame holds an object weighing ``obj_weight``. An error that stays the
    same in every frame (a wrong shade held steady) costs nothing here; one that changes from frame to frame (an
    object kept at its size while the clip grows it, a step in its path) is charged again. 0 when no pair of
    unknown frames exists."""
    B, C, Fp, Hp, Wp = e.shape
    both = (1 - m[:, 1:]) * (1 - m[:, :-1])                                  # [B, F'-1]
    if Fp < 2 or not bool(both.any()):
        return e.sum() * 0.0
    cells = torch.maximum(objw[:, 1:], objw[:, :-1]).float()                 # [B, F'-1, H', W']
    w = both.view(B, 1, Fp - 1, 1, 1) * (1 + (obj_weight - 1) * cells[:, None])
    d = (e[:, :, 1:] - e[:, :, :-1]) ** 2
    return (d * w).sum() / (both.sum() * C * Hp * Wp)


def pixel_loss(vae, x0: torch.Tensor, x0_pred: torch.Tensor, objw: torch.Tensor, sigma: torch.Tensor,
               obj_weight: float, max_sigma: float) -> torch.Tensor:
    """L1 between single frames decoded from the predicted clean latent ``x0_pred`` and from the true one ``x0``
    (both [B, C, 1, H', W'], normalised), for the examples at ``sigma`` <= ``max_sigma``, each weighted by 1 - sigma;
    pixels under an object cell weigh ``obj_weight``. The VAE is frozen: the gradient reaches the DiT only. The
    latent loss weighs every latent channel alike; the decoder does not, so an error the latent loss counts as small
    can move an object's outline (a box's corners, finer than one DiT token). 0 when no example is in range."""
    rows = (sigma <= max_sigma).nonzero().flatten()
    if rows.numel() == 0:
        return x0_pred.sum() * 0.0
    with torch.no_grad():
        target = next(iter(vae.decode_chunks(x0[rows, :, :1].float(), clamp=False)))
    pred = next(iter(vae.decode_chunks(x0_pred[rows, :, :1].float(), clamp=False)))
    sf = pred.shape[-1] // x0.shape[-1]
    cells = objw[rows, :1].float()                                   # [K, 1, H', W']
    wpix = 1 + (obj_weight - 1) * cells.repeat_interleave(sf, -2).repeat_interleave(sf, -1)
    per = ((pred - target).abs() * wpix[:, None]).mean(dim=(1, 2, 3, 4)) / wpix.mean(dim=(1, 2, 3))
    return (per * (1 - sigma[rows])).sum() / sigma.shape[0]


def _param_groups(model, text_lr_mult: float = 1.0):
    """AdamW groups: weight decay on matrices only; with ``text_lr_mult`` != 1 the caption's path (text embedding,
    cross-attention) gets groups of its own whose ``lr_mult`` scales the schedule's rate."""
    groups: dict = {}
    for n, p in model.named_parameters():
        decay = p.dim() >= 2 and "modulation" not in n
        text = text_lr_mult != 1.0 and (n.startswith("text_embedding.") or ".cross_attn." in n)
        g = groups.setdefault((text, decay), {"params": [], "weight_decay": 0.01 if decay else 0.0,
                                              "lr_mult": text_lr_mult if text else 1.0})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def train_dit(data_dir: Path, vae_dir: Path, out: Path, recipe: DitRecipe, init: Optional[Path] = None,
              probe_items: Optional[dict] = None, stop_when_all: bool = False,
              stories_dir: Optional[Path] = None) -> dict:
    """Train (or resume) a DiT run in ``out``. ``init``: a DiT safetensors to warm-start from when ``out`` holds no
    state. ``probe_items``: {set name: [ProbeItem]} (default SEEN and HELD). ``stories_dir``: encoded multi-shot
    stories (``train_shots.encode_stories``) for the ``story_frac`` share of steps. Returns the last probe
    summary."""
    from ..model.config import config_from_dict
    from ..model.text_encoders import load_minilm
    from .probe import FRAME_WORDS, HELD, SEEN, frame_word_gap, motion_word_gap, probe_sheet, run_probe
    from .train_shots import load_stories, story_batch
    from .train_vae import load_trained_vae
    r = recipe
    if not 0.0 <= r.story_frac <= 1.0 or not 0.0 <= r.story_ref_frac <= 1.0:
        raise ValueError(f"story_frac={r.story_frac}, story_ref_frac={r.story_ref_frac}: allowed 0..1")
    check_mask_mix(r.mask_mix)
    if r.story_frac > 0 and stories_dir is None:
        raise ValueError(f"story_frac={r.story_frac} needs encoded stories: pass stories_dir (--stories DIR, made "
                         f"by 'encode-stories')")
    dev = device_and_threads()
    ck = Checkpointer(out)
    if (Path(out) / "state.pt").exists():
        check_resume_recipe(Path(out), r)
    (Path(out) / "recipe.json").write_text(json.dumps(asdict(r), indent=1))
    cfg = config_from_dict(DiTConfig, r.dit)
    data = load_dataset(data_dir)
    stories = None
    if r.story_frac > 0:
        stories = load_stories(stories_dir, cfg.in_dim)
        print("story buckets:", {b.name: len(b.stories) for b in stories}, flush=True)
    elif stories_dir is not None:
        print(f"story_frac=0: the stories in {stories_dir} are not used", flush=True)
    vae, _ = load_trained_vae(vae_dir)
    vae = vae.to(dev).requires_grad_(False)
    print("buckets:", {b.name: len(b.scenes) for b in data}, flush=True)
    torch.manual_seed(r.seed)
    model = build_dit(cfg).to(dev).train()
    ema = build_dit(cfg).to(dev).eval().requires_grad_(False)
    text = CachedText(load_minilm(device=dev))
    opt = torch.optim.AdamW(_param_groups(model, r.text_lr_mult), lr=r.lr, betas=(0.9, 0.98))
    lr_mults = [g["lr_mult"] for g in opt.param_groups]     # before a resumed state replaces the groups' settings
    start = 0
    spent = 0.0                                          # training seconds of the earlier parts of this run
    summary: dict = {}
    state = ck.load()
    if state is not None:
        if len(state["opt"]["param_groups"]) != len(opt.param_groups):
            raise ValueError(f"text_lr_mult={r.text_lr_mult}: the run in {out} was started with "
                             f"{'text_lr_mult 1' if len(opt.param_groups) > 2 else 'another text_lr_mult'}; "
                             "resume it with the value it was started with, or give a new --out")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        spent = float(state.get("elapsed", 0.0))
        print(f"resumed at step {start}", flush=True)
        if (Path(out) / "dit.json").exists():          # the last probe stands until this part of the run probes
            summary = json.loads((Path(out) / "dit.json").read_text()).get("probe", {})
    else:
        if init is not None:
            sd = read_state_dict(init)
            model.load_state_dict({k: v.float() for k, v in sd.items()})
            print(f"warm start from {init}", flush=True)
        ema.load_state_dict(model.state_dict())
    sets = probe_items or {k: {"seen": SEEN, "held": HELD}[k] for k in r.probe_sets.split(",")
                           if k not in ("", "none")}
    use_bf16 = r.bf16 or dev.type == "cuda"
    if r.time_schedule and not r.time_limit > 0:
        raise ValueError(f"time_schedule=True needs time_limit > 0 (seconds), got time_limit={r.time_limit}")
    rng = np.random.default_rng([r.seed, start])
    gen = torch.Generator().manual_seed(r.seed * 7919 + start)
    t0 = time.time()

    def snapshot(steps_done: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": steps_done,
                "elapsed": spent + time.time() - t0}

    def probe(step):
        nonlocal summary
        modes = ([1] + ([17] if r.probe_video else [])) if sets else []
        tp = time.time()
        for frames in modes:
            res, clips = run_probe(ema, vae, text.enc, frames=frames, sets=sets)
            for name, s in res.items():
                ck.log({"step": step, "mode": "image" if frames == 1 else "video", "set": name, **s}, "probe.jsonl")
                summary[f"{'image' if frames == 1 else 'video'}/{name}"] = s
            probe_sheet([v for vs in clips.values() for v in vs], Path(out) / f"probe_{frames}f.png")
        gap = motion_word_gap(ema, vae, text.enc)
        ck.log({"step": step, "mode": "motion_word_gap", **{f"{k}@{s:g}": v for k, d in gap.items()
                                                            for s, v in d.items()}}, "probe.jsonl")
        words = {w: frame_word_gap(ema, vae, text.enc, w) for w in FRAME_WORDS}     # single frames: seconds
        ck.log({"step": step, "mode": "frame_word_gap", **{f"{w}@{s:g}": v for w, d in words.items()
                                                           for s, v in d.items()}}, "probe.jsonl")
        _plot_probe(ck)
        line = " ".join(f"{k}: all {v['all']:.0%} col {v['color']:.0%} shp {v['shape']:.0%}" +
                        (f" mot {v['motion']:.0%}" if "motion" in v else "") for k, v in summary.items())
        line += " motion word gap (i2v) " + " ".join(f"{g:+.1f}%" for g in gap["i2v"].values())
        line += "".join(f" {w} word gap (frames) " + " ".join(f"{g:+.1f}%" for g in d.values())
                        for w, d in words.items())
        print(f"probe @ {step} ({time.time() - tp:.0f}s): {line}", flush=True)

    step = start - 1                                        # the last step done
    with StopOnSignal() as stop:
        for step in range(start, r.steps):
            if stories is not None and step >= r.image_steps and rng.random() < r.story_frac:
                bt = story_batch(stories, rng, r, cfg)
            else:
                bt = clip_batch(data, rng, r, cfg, step)
            B = bt.x0.shape[0]
            x0, objw = bt.x0.to(dev), bt.objw.to(dev)
            ctx, lens = text(bt.captions, dev)
            m = torch.from_numpy(bt.known).to(dev)
            sigma = sample_sigma(B, gen, r.sigma_shift, r.sigma_max).to(dev)
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            done = (spent + time.time() - t0) / r.time_limit if r.time_schedule else 0.0
            at = step if not r.time_schedule or step < r.warmup else max(r.warmup, int(min(1.0, done) * r.steps))
            for g, mult in zip(opt.param_groups, lr_mults):
                g["lr"] = lr_at(at, r.steps, r.lr, warmup=r.warmup) * mult
            fs = None if bt.frame_shots is None else bt.frame_shots.to(dev)
            negs = None
            if bt.negatives is not None and r.contrast > 0:
                rows = [i for i, n in enumerate(bt.negatives) if n is not None]
                nctx, nlens = text([bt.negatives[i] if bt.negatives[i] is not None else "" for i in range(B)], dev)
                negs = (torch.tensor(rows, device=dev), nctx, nlens)
            loss = flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, r.obj_weight, use_bf16, fs, negs,
                             r.contrast, r.contrast_margin, r.contrast_min_sigma,
                             (vae, r.pixel_weight, r.pixel_max_sigma) if bt.kind == "image" else None,
                             r.change_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                d = min(r.ema, (1 + step) / (10 + step))
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)
            if step % 10 == 0:
                story = {} if bt.kind in ("image", "video") else {"story": bt.kind}
                ck.log({"step": step, "loss": loss.item(), "grad_norm": float(gn), "bucket": bt.name,
                        "image": bt.kind == "image", "batch": B, **story, "time": time.time() - t0,
                        "lr": opt.param_groups[0]["lr"] / lr_mults[0]})
            if step % 100 == 0:
                kind = {"image": " img", "video": ""}.get(bt.kind, f" story {bt.kind}")
                print(f"dit step {step} loss {loss.item():.4f} gn {float(gn):.2f} {bt.name}{kind} "
                      f"B={B} {time.time() - t0:.0f}s", flush=True)
            over = time.time() - t0 + (spent if r.time_schedule else 0.0) > r.time_limit
            last = step + 1 == r.steps or (r.time_limit and over) or stop.requested
            probe_now = bool(r.probe_every) and (step + 1) % r.probe_every == 0
            if (step + 1) % 250 == 0 or last or probe_now:        # probed weights can always be taken back
                ck.save(snapshot(step + 1))
                ck.plot(["loss"], "toy DiT training loss (flow matching, object-weighted)")
            if r.probe_every and (probe_now or (last and not stop.requested)):
                probe(step + 1)
                if stop_when_all and all(s["all"] == 1.0 for s in summary.values()):
                    ck.save(snapshot(step + 1))
                    break
            if last:
                break
    write_safetensors_atomic(ema.state_dict(), Path(out) / "dit_ema.safetensors", overwrite=True)
    (Path(out) / "dit.json").write_text(json.dumps({"config": config_to_dict(cfg), "step": step + 1,
                                                    "probe": summary}, indent=1))
    return summary


def _plot_probe(ck: Checkpointer):
    from .probe import FRAME_WORDS
    rows = ck.rows("probe.jsonl")
    keep = {("image", "seen"): ("color", "shape", "all"), ("image", "held"): ("all",),
            ("video", "seen"): ("color", "motion", "all"), ("video", "held"): ("color", "all")}
    series = {}
    for r in rows:
        if r["mode"] == "motion_word_gap":
            for k in ("i2v@0.99", "t2v@0.95"):
                if k in r:
                    series.setdefault(f"motion word gap {k} (x0.01)", []).append((r["step"], r[k] / 100.0))
            continue
        if r["mode"] == "frame_word_gap":
            for w in FRAME_WORDS:
                if f"{w}@0.85" in r:
                    series.setdefault(f"{w} word gap, frames, sigma 0.85 (x0.01)", []).append(
                        (r["step"], r[f"{w}@0.85"] / 100.0))
            continue
        for m in keep.get((r["mode"], r["set"]), ("all",)):
            if m in r:
                series.setdefault(f"{r['mode']}/{r['set']}/{m}", []).append((r["step"], r[m]))
    from .plot import loss_plot
    loss_plot(series, ck.out / "probe.png", "prompt-following probe (EMA weights)", log=False)
