"""Multi-shot stories for the DiT: a dataset of encoded toy-world stories, and the story steps of its training.

    python -m spacetime.toyworld.train encode-stories --vae RUN/vae --out RUN/stories --stories 6000
    python -m spacetime.toyworld.train dit --data RUN/data --stories RUN/stories --vae RUN/vae --out RUN/dit \\
        --set story_frac=0.5

A story (``shots.sample_story``: the same objects over 2-3 shots, a new background, a close-up or a pan after each
cut) is rendered at a training size and encoded by the causal VAE with its state restarted at every cut (each shot
encoded as a clip of its own, as storyboards are decoded), the way the clip dataset encodes its clips otherwise
(normalised fp16 latents, object cells, parts on disk, resumable). A bucket holds one size
and one pattern of shot lengths, so the stories of a batch share their cuts and their ``frame_shots`` (the shot of
every latent frame), as the sampler's one video does.

A story step trains one of the ways ``model.storyboard`` samples:
  text            the whole story; every latent frame reads its own shot's caption through ``PerShotText``, the
                  sampler's per-shot cross-attention (the same code)
  reference       a window: the last 1-2 latent frames of shot k as known frames (clean, timestep 0, no loss, as in
                  the frame-mask mixture), then shot k+1, conditioned on shot k+1's caption
  text+reference  the same window with per-shot text: the known frames read shot k's caption, the rest k+1's
``story_ref_frac`` of the story steps are reference windows, half of them with per-shot text. Captions are drawn as
the clip steps draw them (detailed or short; a close-up keeps its mark), and a story's captions are dropped
together (``p_drop``): CFG's unconditional branch is an empty caption for every shot.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..model.config import DiTConfig
from .runs import device_and_threads
from .shots import Story, StoryShot, check_shot_frames, latent_cuts, render_story, sample_story
from .train_dit import (TRAIN_SIZES, Batch, batch_size, encode_bucket, read_parts, scene_from_json,
                        scene_to_json)
from .world import is_held_out

# stories per pattern of shot lengths, as fractions of the total: the storyboard evaluation's 17 + 16 (+ 16) and a
# three-shot story with short shots
STORY_MIX = {(17, 16): 0.40, (17, 16, 16): 0.35, (17, 8, 8): 0.25}
REFERENCE_LATENTS = 2          # reference windows start with 1 or 2 latent frames of the shot before


def story_to_json(story: Story) -> dict:
    return {"shots": [{"scene": scene_to_json(s.scene), "frames": s.frames, "change": s.change, "zoom": s.zoom}
                      for s in story.shots]}


def story_from_json(d: dict) -> Story:
    return Story(tuple(StoryShot(scene_from_json(s["scene"]), int(s["frames"]), s["change"], float(s["zoom"]))
                       for s in d["shots"]))


def training_story(rng: np.random.Generator, frames: tuple) -> Story:
    """A random story of ``len(frames)`` shots without the probe's held-out combinations."""
    while True:
        story = sample_story(rng, shots=len(frames), frames=frames)
        if not any(is_held_out(s.scene) for s in story.shots):
            return story


def check_mix(mix: dict, tf: int = 4):
    for frames in mix:
        if len(frames) < 2:
            raise ValueError(f"story pattern {frames}: a story needs 2 or more shots")
        try:
            check_shot_frames(frames, tf)
        except ValueError as e:
            raise ValueError(f"story pattern {tuple(frames)}: {e}") from None


@torch.no_grad()
def encode_stories(vae_dir: Path, out: Path, stories: int, seed: int = 1, batch: int = 16, part: int = 512,
                   mix: Optional[dict] = None):
    """Render ``stories`` training stories over the training sizes and the patterns of ``mix`` ({shot frames:
    fraction}, default ``STORY_MIX``), encode each with the VAE restarted at its cuts and store per (size, pattern)
    bucket in parts of ``part``: latents (fp16, normalised), object cells (uint8), ``frame_shots`` (the shot of
    every latent frame) and the stories as JSON (per shot: scene graph, frames, change, zoom; the captions follow
    from them). Resumable part by part; another ``seed`` adds parts."""
    from .train_vae import load_trained_vae
    mix = dict(mix or STORY_MIX)
    if stories < 1:
        raise ValueError(f"stories={stories}: allowed 1 or more")
    check_mix(mix)
    vae, _ = load_trained_vae(vae_dir)
    vae = vae.to(device_and_threads())
    tf = vae.temporal_factor
    check_mix(mix, tf)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    for bi, (w, h) in enumerate(TRAIN_SIZES):
        for frames, share in mix.items():
            frames = tuple(int(f) for f in frames)

            def make(rng, b0, nb, w=w, h=h, frames=frames):
                items = []
                for _ in range(nb):
                    story = training_story(np.random.default_rng(int(rng.integers(2 ** 31))), frames)
                    clip = render_story(story, w, h)
                    coverage = np.concatenate([c.coverage for c in clip.clips])
                    items.append((clip, coverage, story_to_json(story),
                                  {"frame_shots": story.latent_shots(tf).astype(np.uint8)}))
                return items
            n = int(round(stories * share / len(TRAIN_SIZES)))
            encode_bucket(vae, out, f"{w}x{h}_{'-'.join(map(str, frames))}", n, seed, (bi, *frames), make, batch,
                          part, t0, "stories", restarts=tuple(latent_cuts(frames, tf)))


@dataclass
class StoryBucket:
    name: str
    latents: torch.Tensor          # fp16 [N, C, F', H', W'] normalised
    objects: torch.Tensor          # uint8 [N, F', H', W']
    stories: list                  # Story
    frame_shots: torch.Tensor      # long [F']: the shot of every latent frame, shared by the bucket's stories

    @property
    def frames(self) -> int:
        return self.latents.shape[2]

    def spans(self) -> list[tuple[int, int]]:
        """(start, stop) latent frames of every shot."""
        fs = self.frame_shots
        return [(int(i[0]), int(i[-1]) + 1) for i in (torch.nonzero(fs == s).squeeze(1)
                                                       for s in range(int(fs.max()) + 1))]


def load_stories(stories_dir: Path, channels: Optional[int] = None) -> list[StoryBucket]:
    """The story buckets in ``stories_dir``; ``channels``: the DiT's latent channels, checked against the data."""
    out = []
    for name, parts in read_parts(stories_dir, stories=True).items():
        lat = torch.cat([sd["latents"] for sd, _ in parts])
        fs = torch.cat([sd["frame_shots"] for sd, _ in parts]).long()
        if channels is not None and lat.shape[1] != channels:
            raise ValueError(f"story bucket {name} in {stories_dir} has {lat.shape[1]}-channel latents; the DiT takes "
                             f"{channels}: encode the stories with the VAE the DiT was trained on")
        if fs.shape[1] != lat.shape[2] or not bool((fs == fs[:1]).all()):
            raise ValueError(f"story bucket {name} in {stories_dir}: its stories' frame_shots differ or do not "
                             f"match their {lat.shape[2]} latent frames")
        out.append(StoryBucket(name, lat, torch.cat([sd["objects"] for sd, _ in parts]),
                               [story_from_json(d) for _, recs in parts for d in recs], fs[0]))
    return out


def story_batch(buckets: list, rng: np.random.Generator, r, cfg: DiTConfig) -> Batch:
    """A batch of stories from one bucket, trained in the text, reference or text+reference way (see above)."""
    counts = np.array([len(b.stories) for b in buckets], np.float64)
    b = buckets[int(rng.choice(len(buckets), p=counts / counts.sum()))]
    spans = b.spans()
    if rng.random() < r.story_ref_frac:
        k = int(rng.integers(len(spans) - 1))                 # the tail of shot k is the reference of shot k + 1
        (a0, a1), (c0, c1) = spans[k], spans[k + 1]
        n_ref = int(rng.integers(1, min(REFERENCE_LATENTS, a1 - a0) + 1))
        lo, hi = a1 - n_ref, c1
        per_shot = bool(rng.random() < 0.5)
        kind, shots = ("text+reference", [k, k + 1]) if per_shot else ("reference", [k + 1])
        frame_shots = torch.tensor([0] * n_ref + [1] * (c1 - c0)) if per_shot else None
    else:
        lo, hi, n_ref, kind = 0, b.frames, 0, "text"
        shots, frame_shots = list(range(len(spans))), b.frame_shots
    B = batch_size(r, cfg, hi - lo, *b.latents.shape[3:])
    idx = rng.integers(0, b.latents.shape[0], B)
    caps = []
    for i in idx:
        drop = rng.random() < r.p_drop
        caps += ["" if drop else b.stories[i].shots[s].training_caption(rng, r.p_short) for s in shots]
    known = np.zeros((B, hi - lo), np.float32)
    known[:, :n_ref] = 1
    return Batch(b.name, kind, b.latents[idx][:, :, lo:hi].float(), b.objects[idx][:, lo:hi].float().div(255), known,
                 caps, frame_shots)
