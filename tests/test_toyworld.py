"""The toy world: deterministic, its descriptions match its pixels, captions round-trip, and the evaluation's
measurements score ground truth as correct and scrambled clips as wrong."""
import numpy as np
import pytest

from spacetime.toyworld.analysis import analyse, flicker, ghosting, motion_of, psnr, relation_of, seam_ratio
from spacetime.toyworld.captions import detailed_caption, expand_prompt, parse_prompt, scene_from_prompt, \
    short_caption
from spacetime.toyworld.world import (COLORS, HELD_OUT_COLOR_MOTION, HELD_OUT_SHAPE_COLOR, Obj, Scene,
                                      is_held_out, random_clip, render, sample_scene)


def test_generator_is_deterministic_per_seed():
    a, b = random_clip(123, 9, 96, 64), random_clip(123, 9, 96, 64)
    assert np.array_equal(a.frames, b.frames) and a.scene == b.scene
    assert not np.array_equal(a.frames, random_clip(124, 9, 96, 64).frames)
    assert a.frames.shape == (9, 64, 96, 3) and a.frames.dtype == np.uint8


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (64, 96)])
def test_object_colour_and_path_match_the_scene(size):
    w, h = size
    clip = render(Scene("navy", (Obj("ball", "yellow", "medium", "moves right", 0.3, 0.5),)), 17, w, h)
    f0, f16 = clip.frames[0].astype(int), clip.frames[16].astype(int)
    cx, cy = clip.centers[0, 0]
    assert np.abs(f0[int(cy), int(cx)] - np.array(COLORS["yellow"])).max() <= 2      # the object's colour at its centre
    assert clip.centers[16, 0, 0] > clip.centers[0, 0, 0] + 0.25 * w                  # it moved right
    assert abs(clip.centers[16, 0, 1] - clip.centers[0, 0, 1]) < 1e-9
    ys, xs = np.nonzero(np.abs(f16 - f0).sum(-1) > 60)
    assert xs.max() > cx                                                               # pixels changed to its right


def test_bounce_hits_the_floor_and_rises():
    clip = render(Scene("black", (Obj("ball", "red", "small", "bounces", 0.5, 0.3),)), 33, 64, 64)
    y = clip.centers[:, 0, 1]
    low = int(np.argmax(y))
    assert 0 < low < 32 and y[-1] < y[low] - 2


def test_occlusion_hides_then_reveals():
    clip = render(Scene("beige", (Obj("box", "green", "small", "moves right", 0.2, 0.5),), occluder=True,
                        kind="occlusion"), 17, 64, 64)
    vis = clip.visible[:, 0]
    assert vis[0] == 1.0 and vis[-1] == 1.0 and vis.min() < 0.3


def test_training_sampler_excludes_held_out_combinations():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, training=True) for _ in range(2000)]
    assert not any(is_held_out(s) for s in scenes)
    assert any(is_held_out(sample_scene(rng)) for _ in range(2000))
    assert HELD_OUT_SHAPE_COLOR and HELD_OUT_COLOR_MOTION


def test_free_start_hides_the_direction_from_the_first_frame():
    """By default a mover starts at the edge it moves away from, so its first frame tells its direction; with
    free_start the start positions of opposite directions overlap, and a mover may leave the frame."""
    def starts(free):
        rng = np.random.default_rng(1)
        got: dict = {}
        for _ in range(600):
            o = sample_scene(rng, "single", True, free_start=free).main
            if o.motion in ("moves left", "moves right"):
                got.setdefault(o.motion, []).append(o.x)
            elif o.motion in ("moves up", "moves down"):
                got.setdefault(o.motion, []).append(o.y)
        return {k: np.array(v) for k, v in got.items()}
    edge, free = starts(False), starts(True)
    assert edge["moves right"].max() < 0.5 < edge["moves left"].min()          # the default: separable at 0.5
    assert edge["moves down"].max() < 0.5 < edge["moves up"].min()
    for m in ("moves left", "moves right", "moves up", "moves down"):
        assert 0.2 <= free[m].min() < 0.35 and 0.65 < free[m].max() <= 0.8, m  # the whole range, either way
        assert 0.4 < free[m].mean() < 0.6, m
    clip = render(Scene("black", (Obj("ball", "red", "small", "moves right", 0.75, 0.5),)), 33, 64, 64)
    red = (np.abs(clip.frames.astype(int) - np.array(COLORS["red"])).sum(-1) < 30).sum((1, 2))
    assert red[0] > 10 and red[-1] == 0 and clip.centers[-1, 0, 0] > 64              # it leaves the frame
    a, b = random_clip(7, 9), random_clip(7, 9, free_start=False)                   # the default world is unchanged
    assert np.array_equal(a.frames, b.frames)


def test_captions_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(300):
        sc = sample_scene(rng)
        for cap in (detailed_caption(sc, rng), short_caption(sc, rng)):
            back = scene_from_prompt(cap)
            assert back is not None and back.kind == sc.kind, cap
            assert (back.main.color, back.main.shape) == (sc.main.color, sc.main.shape), cap
            if sc.kind == "pair":
                assert back.relation == sc.relation and back.objects[1].color == sc.objects[1].color, cap
            if sc.kind == "single":
                assert back.main.motion == sc.main.motion, cap


def test_prompt_expansion():
    assert expand_prompt("a red ball moving left") == \
        "A medium red ball moves steadily to the left on a plain black background. The camera is static."
    assert "gray background" in expand_prompt("big white square grows against a grey backdrop")
    assert parse_prompt("a cyan dot over a purple pyramid on navy")["relation"] == "above"
    assert expand_prompt("a portrait of a cat") == "a portrait of a cat"


def _clip(scene, frames=17, size=(64, 64)):
    return render(scene, frames, *size).frames


def test_analysis_scores_ground_truth_as_correct():
    rng = np.random.default_rng(7)
    ok = {"color": [], "shape": [], "motion": [], "relation": []}
    for i in range(120):
        sc = sample_scene(rng, kind=("single", "pair")[i % 2])
        a = analyse(_clip(sc))
        t = next((t for t in a["tracks"] if t.color == sc.main.color), None)
        ok["color"].append(t is not None)
        ok["shape"].append(t is not None and t.shape() == sc.main.shape)
        assert a["background"] == sc.background
        if sc.kind == "single":
            ok["motion"].append(t is not None and motion_of(t, 17) == sc.main.motion)
        else:
            t2 = next((t for t in a["tracks"] if t.color == sc.objects[1].color), None)
            ok["relation"].append(t2 is not None and relation_of(t, t2) == sc.relation)
    assert {k: np.mean(v) for k, v in ok.items()} == {k: 1.0 for k in ok}


def test_analysis_scores_scrambled_clips_as_wrong():
    sc = Scene("gray", (Obj("triangle", "orange", "medium", "moves right", 0.25, 0.5),))
    clip = _clip(sc)
    t = analyse(clip[::-1])["tracks"][0]
    assert motion_of(t, 17) == "moves left"                        # time reversed: wrong direction
    rng = np.random.default_rng(0)
    shuffled = clip[rng.permutation(17)]
    assert seam_ratio(np.concatenate([clip, clip[::-1]]), 17) < 1.0  # a continuous join...
    jump = np.concatenate([clip, _clip(Scene("white", sc.objects))])
    assert seam_ratio(jump, 17) > 5.0                               # ...and a cut are told apart
    noisy = clip.astype(int) + rng.integers(-40, 40, clip.shape)
    assert flicker(np.clip(noisy, 0, 255).astype(np.uint8)) > 10 > flicker(clip)
    assert psnr(clip[0], clip[0]) == float("inf") and psnr(clip[0], shuffled[5]) < 30
    # a ghost: frames that hold the object where it was and where it went (two frames blended into one picture)
    assert ghosting(clip) == 0.0
    ghost = clip.copy()
    moved = np.any(clip[16] != clip[0, 0, 0], axis=-1)                # the object's pixels in the last frame
    for k in (0, 1):                                                  # apart from the object there
        ghost[k][moved] = clip[16][moved]
    assert ghosting(ghost) == pytest.approx(2 / 17)
    swapped = _clip(Scene("gray", (Obj("ball", "blue", "medium", "moves right", 0.25, 0.5),)))
    t2 = analyse(swapped)["tracks"][0]
    assert (t2.color, t2.shape()) == ("blue", "ball") != ("orange", "triangle")
