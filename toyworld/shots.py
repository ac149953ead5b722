"""Toy-world stories: the same objects across 2-3 shots joined by hard cuts, with a caption per shot and the exact
truth of every frame (multi-shot training data and the storyboard evaluation's ground truth).

    story = sample_story(np.random.default_rng(0))          # Story: shots (scene, frames, change, zoom, caption)
    clip = render_story(story, 64, 64)                      # StoryClip: frames, cuts, shot of every frame, truth
    story.storyboard()                                      # "17: <caption>\\n16: <caption>..." (the storyboard form)

After the first ("establishing") shot every shot makes one change:
  background   the same objects on a new background (their positions and motion may change)
  zoom         a close-up: the camera zooms in on the main object (1.5x or 2x, the same background)
  pan          the same object, still, while the camera pans (landmark posts drift across)
Objects keep shape, colour and size across shots; motions that change an object's size (grows, shrinks) are left
out, so any size change on screen is the zoom's. Frame counts follow the storyboard rule: the first shot has 1 + 4k
frames, later shots 4k, so every cut falls between latent frames.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np

from .captions import detailed_caption, training_caption
from .world import BACKGROUNDS, PANS, Clip, Obj, Scene, render, sample_object, visible_on

CHANGES = ("background", "zoom", "pan")
ZOOMS = (1.5, 2.0)
STORY_MOTIONS = ("stays still", "moves left", "moves right", "moves up", "moves down", "bounces")
CLOSE_UP = "Close-up: "


@dataclass(frozen=True)
class StoryShot:
    scene: Scene
    frames: int
    change: str = "establishing"          # establishing | background | zoom | pan
    zoom: float = 1.0                     # > 1: a close-up centred on the main object's start position

    @property
    def caption(self) -> str:
        return self._framed(detailed_caption(self.scene))

    def training_caption(self, rng: np.random.Generator, p_short: float = 0.25) -> str:
        """A varied caption of the shot (detailed or, with ``p_short``, short) as the clip dataset's training draws
        them, with the close-up mark of a zoomed shot."""
        return self._framed(training_caption(self.scene, rng, p_short))

    def _framed(self, text: str) -> str:
        return CLOSE_UP + text[0].lower() + text[1:] if self.zoom > 1 else text


@dataclass(frozen=True)
class Story:
    shots: tuple

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.shots)

    @property
    def cuts(self) -> list[int]:
        """Pixel frame where each shot after the first begins."""
        return [int(c) for c in np.cumsum([s.frames for s in self.shots])[:-1]]

    def captions(self) -> list[str]:
        return [s.caption for s in self.shots]

    def storyboard(self) -> str:
        """The story as storyboard lines ``FRAMES: CAPTION`` (what the Storyboard node and ``--shot`` take)."""
        return "\n".join(f"{s.frames}: {s.caption}" for s in self.shots)

    def latent_shots(self, tf: int = 4) -> np.ndarray:
        """The shot of every latent frame (first shot 1 + (frames - 1) / tf latent frames, later ones frames / tf)."""
        counts = shot_latent_frames([s.frames for s in self.shots], tf)
        return np.repeat(np.arange(len(counts)), counts)

    def latent_cuts(self, tf: int = 4) -> list[int]:
        """Latent frame where each shot after the first begins (the decoder's and encoder's restarts)."""
        return latent_cuts([s.frames for s in self.shots], tf)


def shot_latent_frames(frames: Sequence[int], tf: int = 4) -> list[int]:
    """Latent frames of each shot of ``frames`` pixel frames: 1 + (frames - 1) / tf for the first, frames / tf
    after it."""
    return [(f - 1) // tf + 1 if i == 0 else f // tf for i, f in enumerate(frames)]


def latent_cuts(frames: Sequence[int], tf: int = 4) -> list[int]:
    """Latent frame where each shot after the first begins, for shots of ``frames`` pixel frames."""
    return [int(c) for c in np.cumsum(shot_latent_frames(frames, tf))[:-1]]


@dataclass
class StoryClip:
    frames: np.ndarray                    # uint8 [T, H, W, 3]
    cuts: list                            # pixel frame where each later shot begins
    shot_of_frame: np.ndarray             # [T] shot index of every frame
    clips: list                           # per shot: Clip truth in the story's pixel coordinates
    story: Story


def _story_object(rng, background: str, old: Obj, motion: Optional[str] = None) -> Obj:
    """The same object (shape, colour, size) with a fresh start position and motion."""
    o = sample_object(rng, background, motion=motion or STORY_MOTIONS[int(rng.integers(len(STORY_MOTIONS)))],
                      shape=old.shape, size=old.size, color=old.color)
    return replace(o, speed=old.speed)


def _new_background(rng, scene: Scene) -> str:
    options = [b for b in BACKGROUNDS if b != scene.background and all(visible_on(o.color, b) for o in scene.objects)]
    return options[int(rng.integers(len(options)))]


def check_shot_frames(frames: Sequence[int], tf: int = 4):
    for i, f in enumerate(frames):
        ok = f >= 1 and (f - 1) % tf == 0 if i == 0 else f >= tf and f % tf == 0
        if not ok:
            rule = f"1 + {tf}*k" if i == 0 else f"a positive multiple of {tf}"
            raise ValueError(f"shot {i + 1} has frames={f}; allowed: {rule}")


def sample_story(rng: np.random.Generator, shots: Optional[int] = None, frames: Sequence[int] = (17, 16, 16),
                 changes: Optional[Sequence[str]] = None, pair: Optional[bool] = None) -> Story:
    """A random story of ``shots`` (2 or 3; random when None) shots. ``frames``: per shot (the first 1 + 4k, the
    others 4k). ``changes``: the change of each shot after the first (random when None). ``pair``: two objects
    instead of one (random when None); stories of two objects change only the background, which keeps both in view."""
    n = int(rng.integers(2, 4)) if shots is None else int(shots)
    if n < 1 or n > len(frames):
        raise ValueError(f"shots={n} is not allowed; allowed: 1..{len(frames)} (one frame count per shot)")
    check_shot_frames(frames[:n])
    pair = bool(rng.random() < 0.25) if pair is None else pair
    bg = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    a = sample_object(rng, bg, motion=STORY_MOTIONS[int(rng.integers(len(STORY_MOTIONS)))])
    objs = (a,)
    if pair:
        a = replace(a, motion="stays still", size="small" if a.size == "large" else a.size, x=0.3, y=0.5)
        b = sample_object(rng, bg, motion="stays still", exclude_colors=(a.color,), size=a.size)
        objs = (a, replace(b, x=0.7, y=0.5))
    scene = Scene(bg, objs, relation="left of" if pair else None, kind="pair" if pair else "single")
    out = [StoryShot(scene, frames[0])]
    for k in range(1, n):
        prev = out[-1].scene
        if changes is not None:
            change = changes[k - 1]
        else:                        # never the previous shot's change again (two like close-ups look alike)
            options = [c for c in CHANGES if c != out[-1].change or c == "background"]
            change = "background" if pair else options[int(rng.integers(len(options)))]
        if change not in CHANGES:
            raise ValueError(f"change={change!r} is not allowed; allowed: {', '.join(CHANGES)}")
        if pair and change != "background":
            raise ValueError(f"change={change!r} is not allowed for a story of two objects; allowed: background")
        if change == "background":
            nb = _new_background(rng, prev)
            if pair:
                sc = replace(prev, background=nb, pan=None)
            else:
                sc = Scene(nb, (_story_object(rng, nb, prev.main),), kind="single")
            out.append(StoryShot(sc, frames[k], change))
        elif change == "zoom":
            o = replace(prev.main, motion="stays still", x=0.5, y=0.5)
            out.append(StoryShot(Scene(prev.background, (o,), kind="single"), frames[k], change,
                                 float(ZOOMS[int(rng.integers(len(ZOOMS)))])))
        else:
            o = replace(prev.main, motion="stays still", x=float(rng.uniform(0.4, 0.6)), y=0.5)
            pan = PANS[int(rng.integers(len(PANS)))]
            out.append(StoryShot(Scene(prev.background, (o,), pan=pan, kind="pan"), frames[k], change))
    return Story(tuple(out))


def _render_shot(shot: StoryShot, width: int, height: int) -> Clip:
    if shot.zoom <= 1:
        return render(shot.scene, shot.frames, width, height)
    W, H = int(round(width * shot.zoom)), int(round(height * shot.zoom))
    big = render(shot.scene, shot.frames, W, H)
    cx, cy = shot.scene.main.x * W, shot.scene.main.y * H
    x0 = int(np.clip(round(cx - width / 2), 0, W - width))
    y0 = int(np.clip(round(cy - height / 2), 0, H - height))
    off = np.array([x0, y0], np.float64)
    return Clip(np.ascontiguousarray(big.frames[:, y0:y0 + height, x0:x0 + width]), big.centers - off, big.radii,
                big.visible, big.scene, None,
                None if big.coverage is None else np.ascontiguousarray(big.coverage[:, y0:y0 + height,
                                                                                     x0:x0 + width]))


def render_story(story: Story, width: int = 64, height: int = 64) -> StoryClip:
    clips = [_render_shot(s, width, height) for s in story.shots]
    frames = np.concatenate([c.frames for c in clips])
    shot_of_frame = np.repeat(np.arange(len(clips)), [s.frames for s in story.shots])
    return StoryClip(frames, story.cuts, shot_of_frame, clips, story)


def random_story(seed: int, width: int = 64, height: int = 64, **kw) -> StoryClip:
    """Deterministic per seed."""
    return render_story(sample_story(np.random.default_rng(seed), **kw), width, height)
