"""Long videos: the window plan covers every frame once, windows join on exactly the latents they continue from,
the decoder streams across windows, memory does not hold the whole video, a cancelled run leaves no file, the
streamed MP4 is watermarked and signed, and the drift evaluation tells a steady clip from a drifting one."""
import gc
import json
import os
import tracemalloc
import warnings

import numpy as np
import pytest
import torch

from isolation import isolate_dirs
from spacetime.cli import EXIT_BAD_INPUT, main
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.longvideo import (file_backed_latents, long_video_latents, long_video_plan, plan_windows,
                                       stream_frames, window_seed)
from spacetime.toyworld.drift import window_segments


@pytest.fixture(autouse=True)
def dirs(tmp_path, tmp_path_factory, monkeypatch):
    return isolate_dirs(tmp_path, tmp_path_factory, monkeypatch, "long-config")


@pytest.fixture(scope="module")
def st():
    from spacetime.nodes import host
    return host.get_model("toyworld-random", device="cpu")


FAST = dict(steps=1, cfg=1.0)


# ----------------------------------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frames, window, overlap, anchors", [
    (161, 17, 4, ()), (161, 17, 4, (0,)), (17, 17, 4, ()), (13, 17, 4, ()), (21, 17, 4, ()), (321, 33, 8, (0, 9)),
    (965, 17, 12, ()), (101, 21, 8, (4,))])
def test_windows_cover_every_frame_exactly_once(frames, window, overlap, anchors):
    plan = long_video_plan(frames, window, overlap, anchors)
    n = (frames - 1) // 4 + 1
    new = [j for w in plan for j in range(w.start, w.stop)]
    assert new == list(range(n))                                 # every latent frame once, in order
    for prev, w in zip(plan, plan[1:]):
        assert w.start == prev.stop and w.new >= 1
        assert w.length == (window - 1) // 4 + 1 or w is plan[-1]  # fixed window size, the last may be shorter
        tail = tuple(range(w.start - overlap // 4, w.start))
        assert w.context[-len(tail):] == tail                     # continues the previous window's last latents
        assert all(j < w.start for j in w.context)
    pixels = [p for a, b in window_segments(plan) for p in range(a, b)]
    assert pixels == list(range(frames))                          # fused: no frame doubled or dropped


@pytest.mark.parametrize("args, needle", [
    ((160, 17, 4), "frames=160"), ((161, 16, 4), "window_frames=16"), ((161, 5, 4), "window_frames=5"),
    ((161, 17, 6), "overlap_frames=6"), ((161, 17, 0), "overlap_frames=0"), ((161, 17, 20), "no new frames"),
    ((161, 17, 12, (0, 5)), "no new frames"), ((161, 17, 4, (17,)), "anchor frame 17"),
    ((161, 17, 4, (-1,)), "anchor frame -1")])
def test_bad_plans_are_refused_with_the_value_and_what_is_allowed(args, needle):
    with pytest.raises(SpacetimeValueError, match=needle) as e:
        long_video_plan(*args)
    assert "allowed" in str(e.value) or "must" in str(e.value)


def test_plan_in_latent_frames():
    plan = plan_windows(12, 5, 2, anchors=[0])
    assert [(w.context, w.start, w.stop) for w in plan] == [((), 0, 5), ((0, 3, 4), 5, 7), ((0, 5, 6), 7, 9),
                                                           ((0, 7, 8), 9, 11), ((0, 9, 10), 11, 12)]
    assert window_seed(7, 0) == 7 and len({window_seed(7, k) for k in range(50)}) == 50


def test_file_backed_latents(tmp_path):
    t = file_backed_latents((1, 16, 6, 4, 4), tmp_path)
    assert t.shape == (1, 16, 6, 4, 4) and t.dtype == torch.float32 and not t.any()
    t[:, :, 2] = 3.0
    assert float(t.sum()) == 3.0 * 16 * 16


# ----------------------------------------------------------------------------------------------------------------------
# Sampling and decoding
# ----------------------------------------------------------------------------------------------------------------------

def test_streamed_decode_equals_decoding_the_whole_timeline(st):
    z = torch.randn(st.latent_shape(1, 33, 64, 64))
    whole = st.decode(z)[0]
    pieces = [z[:, :, :5], z[:, :, 5:6], z[:, :, 6:9]]
    streamed = torch.cat(list(stream_frames(st, pieces)))
    assert streamed.shape == (33, 64, 64, 3) and torch.equal(streamed, whole)
    cut = torch.cat(list(stream_frames(st, pieces, cuts=[5], total=9)))            # a storyboard's cut
    torch.testing.assert_close(cut, st.decode(z, cuts=[5])[0], rtol=0, atol=1e-6)
    assert torch.equal(cut[:17], whole[:17]) and not torch.allclose(cut[17:], whole[17:])


def test_windows_join_on_the_latents_they_continue(st, monkeypatch):
    seen = []
    orig = type(st).sample_latents

    def spy(self, text, shape, seed, steps, cfg, shift, sampler, cond=None, **kw):
        out = orig(self, text, shape, seed, steps, cfg, shift, sampler, cond, **kw)
        seen.append((shape, seed, None if cond is None else (cond.latents.clone(), cond.mask.clone())))
        return out
    monkeypatch.setattr(type(st), "sample_latents", spy)
    results = list(long_video_latents(st, ["a red ball", "a blue box"], frames=57, width=64, height=64,
                                      anchor_frames=[0], seed=3, **FAST))
    timeline = torch.cat([r.latents for r in results], dim=2)
    assert timeline.shape[2] == 15 and [r.prompt for r in results] == ["a red ball"] + ["a blue box"] * 4
    for r, (shape, seed, cond) in zip(results, seen):
        w = r.window
        assert shape[2] == w.length and seed == window_seed(3, w.index)
        if w.index == 0:
            assert cond is None
            continue
        latents, mask = cond
        assert mask[0].tolist() == [1.0] * len(w.context) + [0.0] * w.new
        for slot, j in enumerate(w.context):           # the known frames are the timeline's own latents
            torch.testing.assert_close(latents[:, :, slot], st.normalize(timeline[:, :, j:j + 1])[:, :, 0],
                                       atol=1e-5, rtol=0)


def test_a_video_of_one_window_is_the_plain_generation(st):
    text = st.encode_text(["a red ball"], [""])
    plain = st.sample_latents(text, st.latent_shape(1, 17, 64, 64), seed=5, **FAST)
    (only,) = list(long_video_latents(st, ["a red ball"], frames=17, width=64, height=64, seed=5, **FAST))
    assert torch.equal(only.latents, plain)


def test_bad_prompts_and_images_are_refused_before_sampling(st):
    with pytest.raises(SpacetimeValueError, match="window 2 is empty"):
        long_video_latents(st, ["a red ball", " "], frames=41, width=64, height=64)
    with pytest.raises(SpacetimeValueError, match="image has shape"):
        long_video_latents(st, ["a red ball"], frames=41, width=64, height=64, image=torch.zeros(32, 32, 3))
    with pytest.raises(SpacetimeValueError, match="width x height"):
        long_video_latents(st, ["a red ball"], frames=41, width=60, height=64)


# ----------------------------------------------------------------------------------------------------------------------
# Streaming to a signed MP4: memory, cancel, provenance
# ----------------------------------------------------------------------------------------------------------------------

def _loose_tensor_floats(exclude: set) -> int:
    """Float32 values held by live CPU tensors (each storage once), other than ``exclude``d storages."""
    seen = set(exclude)
    total = 0
    with warnings.catch_warnings():                     # isinstance() on some module objects warns
        warnings.simplefilter("ignore")
        tensors = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    for obj in tensors:
        try:
            if obj.device.type != "cpu":
                continue
            storage = obj.untyped_storage()
        except (RuntimeError, TypeError):
            continue
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes() // 4
    return total


def test_a_long_run_does_not_hold_all_frames(st, dirs):
    """101 frames (8 windows) streamed through decode, review and H.264: after the first window (when the decoder's
    causal state exists, a fixed cost) the tensors held do not grow, neither do Python objects and numpy arrays once
    the writer runs, and the first frames reach the writer before the last window is sampled."""
    from spacetime.provenance.stamp import StampWriter
    from spacetime.safety import FrameReview
    frames = 101
    whole = frames * 64 * 64 * 3                                   # the video as float32 values
    peaks, events, held = [], [], []

    def on_step(k, i, n):
        events.append(("window", k))
        gc.collect()
        peaks.append(_loose_tensor_floats(weights) - base)
    gen = long_video_latents(st, ["a red ball rests on navy"], frames=frames, width=64, height=64,
                             anchor_frames=[0], callback=on_step, **FAST)      # loads the text encoder
    weights = {t.untyped_storage().data_ptr() for m in (st.dit, st.vae, st.text_encoder)
               for t in m.state_dict().values()}
    gc.collect()
    base = _loose_tensor_floats(weights)
    tracemalloc.start()
    try:
        with StampWriter(dirs["output"] / "long.mp4", 8, {"model": "toyworld-random"},
                         review=FrameReview(classifiers=[])) as w:
            for piece in stream_frames(st, (r.latents for r in gen)):
                events.append(("frames", piece.shape[0]))
                w.write(piece)
                held.append(tracemalloc.get_traced_memory()[0] / 4)    # Python and numpy, in float32 values
    finally:
        tracemalloc.stop()
    assert w.info["frames"] == frames
    settled = peaks[1]                                             # window 1: the decoder state exists
    assert len(peaks) == 8 and max(peaks[1:]) - settled < whole / 16, (peaks, whole)
    assert len(held) == 26 and max(held[6:]) - held[6] < whole / 16, (held, whole)
    first_frames = events.index(("frames", 1))
    last_window = max(i for i, e in enumerate(events) if e[0] == "window")
    assert first_frames < last_window                              # streamed, not collected first


def test_cancel_leaves_no_file(st, dirs):
    from spacetime.provenance.stamp import StampWriter

    def stop(k, i, n):
        if k == 2:
            raise KeyboardInterrupt
    gen = long_video_latents(st, ["a red ball"], frames=81, width=64, height=64, callback=stop, **FAST)
    with pytest.raises(KeyboardInterrupt):
        with StampWriter(dirs["output"] / "cancelled.mp4", 8) as w:
            for piece in stream_frames(st, (r.latents for r in gen)):
                w.write(piece)
    assert w.frames > 0                                          # it had started writing
    assert list(dirs["output"].iterdir()) == []


def test_streamed_write_is_watermarked_signed_and_equal_to_the_one_shot_write(dirs, monkeypatch):
    """Pieces of any length (the decoder gives 1 frame, then 4 at a time) carry exactly the one-shot mark: the
    watermark's segments of 4 frames and its phases run across pieces."""
    from spacetime.provenance import stamp_video, verify_file, video
    from spacetime.provenance.stamp import StampWriter
    from spacetime.toyworld.world import random_clip
    planes = {"one": [], "two": []}
    write = video.YuvWriter.write

    def recording(self, luma, u, v):                # temporary files are named .STEM.TOKEN.encoded.mp4
        planes[os.path.basename(self.container.name).split(".")[1]].append(luma.copy())
        write(self, luma, u, v)
    monkeypatch.setattr(video.YuvWriter, "write", recording)
    clip = random_clip(3, frames=21).frames
    one = stamp_video(clip, dirs["output"] / "one.mp4", fps=8, content_id=77, generation={"seed": 1})
    with StampWriter(dirs["output"] / "two.mp4", 8, {"seed": 1}, content_id=77) as w:
        for a, b in ((0, 1), (1, 5), (5, 9), (9, 14), (14, 21)):
            w.write(clip[a:b])
    two = w.info
    assert two["frames"] == one["frames"] == 21 and two["watermark_psnr"] == one["watermark_psnr"]
    # the same watermarked planes went into the encoder, and came out as the same frames
    assert np.array_equal(np.concatenate(planes["one"]), np.concatenate(planes["two"]))
    assert np.array_equal(video.read_luma(one["path"])[0], video.read_luma(two["path"])[0])
    assert [len(p) for p in planes["two"]] == [12, 8, 1]       # held until 64x64 settles on 16x16 cells (13 frames)
    rep = verify_file(two["path"])
    assert rep["manifest"]["state"] == "trusted" and rep["watermark"]["detected"]
    assert rep["watermark"]["content_id"] == 77
    assert sorted(p.name for p in dirs["output"].iterdir()) == ["one.mp4", "two.mp4"]


def test_a_blocked_piece_stops_the_stream_before_it_is_written(dirs):
    from spacetime.provenance.stamp import StampWriter
    from spacetime.safety import FrameReview
    from spacetime.safety.frames import FramesWithheldError

    class Brightness:
        name, categories = "bright", ("violence_gore",)

        def score(self, rgb):
            return {"violence_gore": rgb.mean(axis=(1, 2, 3)) / 255.0}
    dark = np.zeros((4, 32, 32, 3), np.uint8)
    review = FrameReview(classifiers=[Brightness()])
    with pytest.raises(FramesWithheldError) as e:
        with StampWriter(dirs["output"] / "x.mp4", 8, review=review) as w:
            w.write(dark)
            w.write(np.concatenate([dark[:2], np.full((1, 32, 32, 3), 255, np.uint8)]))
    assert e.value.report.flagged_frames == [6] and w.frames == 4
    assert list(dirs["output"].iterdir()) == []
    whole = FrameReview(classifiers=[Brightness()])
    whole.add(dark)
    assert whole.report().frames_checked == 4 and not whole.report().blocked


# ----------------------------------------------------------------------------------------------------------------------
# Nodes and CLI
# ----------------------------------------------------------------------------------------------------------------------

def _long_graph(**over):
    g = {"1": {"class_type": "SpacetimeModelLoader", "inputs": {"preset": "toyworld-random", "dtype": "fp32",
                                                                 "device": "cpu"}},
         "2": {"class_type": "SpacetimeLongVideo", "inputs": {
             "model": ["1", 0], "prompts": "a red ball rests on navy\na red ball bounces on navy", "negative": "",
             "width": 64, "height": 64, "frames": 41, "window_frames": 17, "overlap_frames": 4,
             "anchor_frames": "0", "seed": 2, "steps": 1, "cfg": 1.0, "shift": 3.0, "sampler": "euler",
             "expand_prompt": True}},
         "3": {"class_type": "SpacetimeSaveLongVideo", "inputs": {
             "model": ["1", 0], "latent": ["2", 0], "fps": 8.0, "filename_prefix": "long", "include_prompt": True,
             "generation_info": ["2", 1]}}}
    g["2"]["inputs"].update(over)
    return g


def test_long_video_nodes_write_one_signed_video(dirs, st):
    from spacetime.provenance import verify_file
    from spacetime.runner import run_workflow
    r = run_workflow(_long_graph())
    lat = r["2"]["result"][0]["samples"]
    info = json.loads(r["2"]["result"][1])
    assert lat.shape == st.latent_shape(1, 41, 64, 64) and info["windows"] == 3 and info["anchor_frames"] == "0"
    path = r["3"]["result"][0]
    assert sorted(p.name for p in dirs["output"].iterdir()) == ["long_00001.mp4"]
    rep = verify_file(path)
    gen = rep["manifest"]["generation"]
    assert rep["manifest"]["state"] == "trusted" and rep["watermark"]["detected"]
    assert gen["frames"] == 41 and gen["prompt"].splitlines()[1] == "a red ball bounces on navy"
    assert [s["kind"] for s in gen["safety"]] == ["prompt", "frames"] and gen["safety"][1]["frames_checked"] == 41
    # contrast guidance: by default on the first window only, whose prompt here states no motion to contrast
    assert "contrast_cfg" not in info
    r = run_workflow(_long_graph(contrast_guidance=2.0, frames=29))
    info = json.loads(r["2"]["result"][1])
    assert info["contrast_windows"] == "all" and info["contrast_cfg"] == 2.0 and info["contrasts"][0] == ""
    assert "moves steadily downward" in info["contrasts"][1]


def test_long_video_node_validation_and_cancel(dirs):
    from spacetime.nodes import host
    from spacetime.nodes.long_nodes import SpacetimeLongVideo, SpacetimeSaveLongVideo
    v = SpacetimeLongVideo.VALIDATE_INPUTS
    assert "overlap_frames=6" in v(frames=161, window_frames=17, overlap_frames=6, anchor_frames="")
    assert "anchor_frames='x'" in v(frames=161, window_frames=17, overlap_frames=4, anchor_frames="x")
    assert "frames=160" in v(frames=160, window_frames=17, overlap_frames=4, anchor_frames="")
    assert v(frames=161, window_frames=17, overlap_frames=4, anchor_frames="0") is True
    model = host.get_model("toyworld-random", device="cpu")
    lat = {"samples": torch.zeros(model.latent_shape(1, 21, 64, 64))}
    host.request_cancel()
    try:
        with pytest.raises(host.Interrupted):
            SpacetimeSaveLongVideo().save(model, lat, filename_prefix="gone")
    finally:
        host.clear_cancel()
    assert list(dirs["output"].rglob("*.mp4")) == [] and list(dirs["output"].rglob(".*")) == []
    with pytest.raises(SpacetimeValueError, match=r"latent\['spacetime_cuts'\]=\[9\]: .* allowed: latent frames 1..5"):
        SpacetimeSaveLongVideo().save(model, dict(lat, spacetime_cuts=[9]), filename_prefix="gone")
    assert list(dirs["output"].rglob("*")) == []


def test_cli_long_video(dirs, capsys):
    out = dirs["output"] / "cli_long.mp4"
    rc = main(["generate", "a red ball rests on a navy background", "--frames", "41", "--window-frames", "17",
               "--anchor-frames", "0", "--window-prompt", "a red ball bounces on a navy background", "--steps", "1",
               "--model", "toyworld-random", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "window 3" in err                                       # progress per window
    from spacetime.nodes import host
    assert host._progress_hook is None                              # the CLI's bar does not outlive the command
    from spacetime.provenance import verify_file
    rep = verify_file(out)
    assert rep["manifest"]["state"] == "trusted" and rep["manifest"]["generation"]["frames"] == 41
    assert list(dirs["output"].iterdir()) == [out]
    bad = dirs["output"] / "bad.mp4"
    rc = main(["generate", "a red ball", "--frames", "41", "--window-frames", "17", "--overlap-frames", "6",
               "--model", "toyworld-random", "--out", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and "overlap_frames=6" in err and "\n" not in err and not bad.exists()


# ----------------------------------------------------------------------------------------------------------------------
# Drift evaluation
# ----------------------------------------------------------------------------------------------------------------------

def test_ciede2000_matches_published_pairs():
    from spacetime.toyworld.drift import ciede2000, delta_e
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 0, 0), (50, -1, 2), 2.3669),
             ((50, 2.5, 0), (73, 25, -18), 27.1492), ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387),
                                                      1.2644)]
    for a, b, want in pairs:
        assert float(ciede2000(np.array(a), np.array(b))) == pytest.approx(want, abs=1e-4)
    assert delta_e((10, 20, 30), (10, 20, 30)) == 0.0


@pytest.mark.parametrize("scene_index", [0, 3, 4])
def test_drift_evaluation_tells_steady_from_drifting(scene_index):
    from spacetime.toyworld.drift import (DRIFT_SCENES, frames_for, ground_truth, inject_colour_drift,
                                          measure_drift, summarize)
    scene = DRIFT_SCENES[scene_index]
    frames = frames_for(10, anchors=1)
    plan = long_video_plan(frames, 17, 4, (0,))
    segs = window_segments(plan)
    gt = ground_truth(scene, frames)
    steady = summarize(measure_drift(gt, segs, scene.main.color, scene.background))
    assert len(plan) == 10 and not steady["drifting"]
    assert steady["identity"] == 1.0 and steady["colour_drift"] < 1.0 and steady["seam"] <= 1.5
    drifted = summarize(measure_drift(inject_colour_drift(gt, scene.main.color, 0.004), segs, scene.main.color,
                                      scene.background))
    assert drifted["drifting"] and drifted["colour_drift"] > 5.0


def test_drift_summary_keeps_the_sign_of_the_largest_size_change():
    """A shrinking object is reported as shrinking: the largest change by magnitude, with its sign, next to the
    magnitude the mean over runs uses."""
    from spacetime.toyworld.drift import summarize
    rows = [{"identity": True, "background_de": 0.0}] + [
        {"identity": True, "background_de": 0.0, "object_drift": 1.0, "seam_ratio": 0.5, "size_change": c}
        for c in (0.2, -0.45, 0.3)]
    summ = summarize(rows)
    assert summ["size_change"] == pytest.approx(0.45) and summ["size_change_signed"] == pytest.approx(-0.45)
    rows[2]["size_change"] = 0.1
    assert summarize(rows)["size_change_signed"] == pytest.approx(0.3)


def test_evaluation_reports_never_overwrite(dirs):
    from spacetime.toyworld.drift import main as drift_main, write_reports
    from spacetime.toyworld.storyboard_eval import main as storyboard_main
    folder = dirs["output"]
    kept = folder / "drift.md"
    kept.write_text("kept")
    from spacetime.toyworld.train import main as train_main
    probe_main = lambda argv: train_main(["probe", *argv])                            # noqa: E731
    for run, opt in ((drift_main, "--report"), (storyboard_main, "--json"), (probe_main, "--json")):
        with pytest.raises(SystemExit) as e:                        # refused before the model loads
            run([opt, str(kept)])
        assert e.value.code == 2
    for run in (drift_main, storyboard_main):                      # a DiT file that is not there: refused too
        with pytest.raises(SystemExit) as e:
            run(["--dit", str(folder / "missing.safetensors")])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:                            # storyboards sample without contrast guidance
        storyboard_main(["--contrast-cfg", "2"])
    assert e.value.code == 2
    new = folder / "new.json"
    write_reports(None, None, new, {"identity": 1.0})
    with pytest.raises(FileExistsError):
        write_reports(None, None, new, {"identity": 0.5})
    assert kept.read_text() == "kept" and json.loads(new.read_text()) == {"identity": 1.0}
    assert sorted(p.name for p in folder.iterdir()) == ["drift.md", "new.json"]
