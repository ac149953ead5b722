"""The embedded model's evaluation scores a model that draws exactly what is asked as right, and one that ignores
the prompt as wrong."""
import numpy as np
import torch

from spacetime.model.config import bundle_preset
from spacetime.toyworld.captions import scene_from_prompt
from spacetime.toyworld.eval import TARGETS, evaluate_seen, report_md
from spacetime.toyworld.world import render


class Renderer:
    """Stands in for a model: renders the scene the (expanded) prompt describes, or always the same scene."""

    def __init__(self, fixed=None):
        self.fixed = fixed
        self.preset = bundle_preset("toyworld")          # the sampling defaults a report states

    def generate(self, prompt, negative="", width=64, height=64, frames=17, seed=0, **kw):
        scene = self.fixed or scene_from_prompt(prompt)
        return torch.from_numpy(render(scene, frames, width, height).frames.astype(np.float32) / 255.0)[None]


def test_seen_evaluation_rates_a_faithful_model_right_and_a_deaf_one_wrong():
    good = evaluate_seen(Renderer(), quick=True, log=lambda *_: None)
    assert good["seen_color"] == 1.0 and good["seen_shape"] == 1.0 and good["seen_direction"] == 1.0
    assert good["seen_bounce_grow_shrink"] == 1.0 and good["seen_all"] == 1.0
    deaf = evaluate_seen(Renderer(scene_from_prompt("a red ball moving right on a gray background")), quick=True,
                         log=lambda *_: None)
    assert deaf["seen_color"] < 0.4 and deaf["seen_all"] < 0.1 and deaf["seen_direction"] < 0.4


def test_report_marks_targets():
    res = {k: (v + 0.01 if k not in ("seam", "cold_s") else v - 0.1) for k, v in TARGETS.items()}
    res.update(motion=0.5, background=1.0, stability=1.0, flicker=0.1, seam_forward=1.0, seam_backward=1.0,
               seen_relation=1.0, seen_all=0.5, rows=[("p", 0, "red", "ball", "moves left")])
    md = report_md(res, {"cold_s": 2.0, "warm_s": 1.0}, "toyworld", quick=True)
    assert md.count("| yes |") == len(TARGETS) and "| no |" not in md
    res["color"] = 0.5
    assert "| no |" in report_md(res, {"cold_s": 2.0, "warm_s": 1.0}, "toyworld", quick=True)


def test_parts_measure_only_what_is_asked_and_the_report_says_the_rest_was_not():
    from spacetime.toyworld.eval import evaluate
    res, samples = evaluate(Renderer(), quick=True, log=lambda *_: None, parts=("pairs",))
    assert res["left_right"] == 1.0 and res["above_below"] == 1.0
    assert not {"seen_color", "color", "permanence", "i2v_psnr", "seam", "fill_psnr"} & set(res)
    md = report_md(res, {"cold_s": 2.0, "warm_s": 1.0}, "toyworld", quick=True)
    assert md.count("not measured") == 26 and "| left/right correctness | 100% | 2 | >= 90% | yes |" in md
    deaf, _ = evaluate(Renderer(scene_from_prompt("a red ball moving right on a gray background")), quick=True,
                       log=lambda *_: None, parts=("pairs",))
    assert deaf["left_right"] == 0.0 and deaf["above_below"] == 0.0
    single, _ = evaluate(Renderer(), quick=True, log=lambda *_: None, parts=("single",))
    assert single["color"] == 1.0 and single["ghosting"] == 0.0 and single["n"]["ghosting"] == 8


def test_full_evaluation_counts_its_samples_and_the_report_shows_them():
    from spacetime.toyworld.eval import OCCLUSION, PAIRS, evaluate
    res, _ = evaluate(Renderer(), log=lambda *_: None, parts=("pairs", "occlusion"))
    assert res["n"] == {"left_right": 16, "above_below": 16, "permanence": 4 * len(OCCLUSION)} and len(PAIRS) == 8
    assert res["left_right"] == res["above_below"] == res["permanence"] == 1.0
    md = report_md(res, {"cold_s": 2.0, "warm_s": 1.0}, "toyworld", quick=False)
    assert "| above/below correctness | 100% | 16 | >= 90% | yes |" in md


def test_bad_parts_and_missing_dit_stop_before_any_work(tmp_path, capsys):
    import pytest
    from spacetime.toyworld.eval import evaluate, main
    with pytest.raises(ValueError, match="allowed any of seen, single"):
        evaluate(Renderer(), parts=("colour",))
    with pytest.raises(SystemExit):
        main(["--parts", "seen,colour"])
    assert "--parts 'seen,colour': allowed" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--dit", str(tmp_path / "none.safetensors")])
    assert "no such file" in capsys.readouterr().err
    for bad in ("0.5", "nan"):
        with pytest.raises(SystemExit):
            main(["--cfg", bad])
        assert f"--cfg {bad}: allowed a number >= 1" in capsys.readouterr().err
    for bad in ("0.0", "-2.0", "inf"):
        with pytest.raises(SystemExit):
            main(["--shift", bad])
        assert f"--shift {bad}: allowed a number > 0" in capsys.readouterr().err


def test_cfg_and_shift_options_set_every_generation_and_are_named_in_reports():
    import argparse

    import pytest

    from spacetime.toyworld.drift import add_model_options, load_model, model_label
    ap = argparse.ArgumentParser()
    add_model_options(ap)
    plain, three = ap.parse_args([]), ap.parse_args(["--cfg", "3"])
    st = load_model(ap, three)                                  # nothing is read until first use
    assert st.preset.cfg == 3.0 and load_model(ap, plain).preset.cfg == 5.0   # the preset's default untouched
    assert model_label(plain) == "toyworld" and model_label(three) == "toyworld, CFG 3"
    both = ap.parse_args(["--cfg", "4", "--shift", "2"])
    st = load_model(ap, both)
    assert (st.preset.cfg, st.preset.shift) == (4.0, 2.0)
    assert load_model(ap, plain).preset.shift == 3.0            # the embedded model's default shift untouched
    assert model_label(both) == "toyworld, CFG 4, shift 2"
    vae_file = bundle_preset("toyworld").files["vae"]
    other = ap.parse_args(["--vae", str(vae_file), "--cfg", "4"])
    assert load_model(ap, other).vae_path == vae_file
    assert model_label(other) == f"toyworld, VAE {vae_file.name}, CFG 4"
    with pytest.raises(SystemExit):                             # a VAE file that is not there: a usage error
        load_model(ap, ap.parse_args(["--vae", "no-such-vae.safetensors"]))


def test_a_low_noise_expert_and_its_boundary_are_evaluated_and_named(capsys):
    """--dit-low-noise makes the evaluated model a two-expert one (the sampler switches at --expert-boundary);
    both are named in reports, and a missing file or a boundary outside (0, 1] is a usage error before loading."""
    import argparse

    import pytest

    from spacetime.toyworld.drift import add_model_options, load_model, model_label
    ap = argparse.ArgumentParser()
    add_model_options(ap)
    dit_file = bundle_preset("toyworld-i2v").files["dit"]                   # another DiT file of the same layout
    a = ap.parse_args(["--dit-low-noise", str(dit_file), "--expert-boundary", "0.5"])
    st = load_model(ap, a)
    assert st.has_experts and st.expert_switch().boundary == 0.5
    assert not load_model(ap, ap.parse_args([])).has_experts
    assert model_label(a) == f"toyworld, low-noise expert {dit_file.name}, expert boundary 0.5"
    for args, named in ((["--dit-low-noise", "no-such-dit.safetensors"], "--dit-low-noise 'no-such-dit"),
                        (["--expert-boundary", "0"], "--expert-boundary 0.0"),
                        (["--expert-boundary", "nan"], "--expert-boundary nan"),
                        (["--dit-low-noise", str(bundle_preset("toyworld").files["dit"])], "is the DiT")):
        with pytest.raises(SystemExit):
            load_model(ap, ap.parse_args(args))
        assert named in capsys.readouterr().err


def test_existing_report_sheet_or_json_stops_before_any_work_and_is_kept(tmp_path, capsys):
    import pytest
    from spacetime.toyworld.eval import main
    for opt in ("--report", "--sheet", "--json"):
        old = tmp_path / f"old{opt[2:]}"
        old.write_text("kept")
        with pytest.raises(SystemExit):
            main([opt, str(old), "--dit", str(tmp_path / "none.safetensors")])
        assert f"{opt} {old}: the file exists" in capsys.readouterr().err
        assert old.read_text() == "kept"


def test_contact_sheet_is_written_once_and_never_over_a_file(tmp_path):
    import pytest
    from spacetime.toyworld.eval import contact_sheet
    from PIL import Image
    samples = {"a red ball": np.zeros((4, 8, 8, 3), np.uint8)}
    path = tmp_path / "sheet.png"
    contact_sheet(samples, path)
    assert Image.open(path).size[0] > 0 and [p.name for p in tmp_path.iterdir()] == ["sheet.png"]
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        contact_sheet(samples, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


def test_main_writes_the_report_and_json_once(tmp_path, monkeypatch):
    import json
    import pytest
    from spacetime.toyworld import drift, eval as ev
    monkeypatch.setattr(drift, "load_model", lambda ap, a: Renderer())
    monkeypatch.setattr(ev, "wall_time", lambda preset, dit, vae: {"cold_s": 2.0, "warm_s": 1.0})
    report, figures = tmp_path / "eval.md", tmp_path / "eval.json"
    args = ["--quick", "--parts", "pairs", "--report", str(report), "--json", str(figures)]
    assert ev.main(args) == 0
    assert "| left/right correctness | 100% | 2 | >= 90% | yes |" in report.read_text()
    got = json.loads(figures.read_text())
    assert got["left_right"] == 1.0 and got["n"]["left_right"] == 2 and got["cold_s"] == 2.0 and "rows" not in got
    assert got["cfg"] == 5.0 and got["shift"] == 3.0          # the guidance and shift every generation used
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "eval.md"]
    with pytest.raises(SystemExit):
        ev.main(args)


def test_a_tail_extension_seam_lies_at_the_first_wholly_known_latent_frame():
    from spacetime.toyworld.eval import known_from
    # 17 known frames at 16..32 of a 33-frame clip: latent frame 4 (pixels 13-16) is generated, 5 (17-20) is known
    assert known_from(16) == 17 and known_from(17) == 17 and known_from(13) == 13 and known_from(14) == 17
    assert known_from(0) == 0 and known_from(1) == 1 and known_from(2) == 5 and known_from(6, tf=2) == 7


def test_image_to_video_both_ways_tells_a_word_reader_from_a_start_position_rule():
    """The image-to-video scenes start each mover at the edge it moves away from, so a model that moves the object
    away from the nearer edge whatever the caption says gets "motion as prompted" right; asked again with the
    opposite word, only a model that reads the word moves the object the other way; from the centre of the frame, only
    a model that reads the word follows each of the four."""
    from spacetime.toyworld.eval import GT_SCENES, evaluate

    class PositionRule(Renderer):
        def generate(self, prompt, negative="", width=64, height=64, frames=17, seed=0, image=None, **kw):
            first = image.numpy()
            sc = min(GT_SCENES, key=lambda s: np.abs(render(s, 1, width, height).frames[0] / 255.0 - first).sum())
            return torch.from_numpy(render(sc, frames, width, height).frames.astype(np.float32) / 255.0)[None]

    rule, _ = evaluate(PositionRule(), quick=True, log=lambda *_: None, parts=("i2v",))
    reader, _ = evaluate(Renderer(), quick=True, log=lambda *_: None, parts=("i2v",))
    assert rule["i2v_motion"] == 1.0 and rule["i2v_swapped"] == 0.0 and rule["i2v_both_ways"] == 0.0
    assert reader["i2v_swapped"] == 1.0 and reader["i2v_both_ways"] == 1.0
    assert rule["n"]["i2v_both_ways"] == 3
    # from a centred object the rule draws one path whatever the word: at most one of the four words is followed
    assert rule["i2v_centred"] <= 0.25 and reader["i2v_centred"] == 1.0 and rule["n"]["i2v_centred"] == 12


def test_drift_json_records_the_settings_of_each_mode(tmp_path, monkeypatch):
    import json
    from spacetime.toyworld import drift
    from spacetime.toyworld.world import render as draw

    def truth(st, scene, frames, anchors, seed, steps=None, start="text", **kw):     # a drift-free long video
        from spacetime.model.longvideo import long_video_plan
        plan = long_video_plan(frames, 17, 4, anchors, 4)
        return draw(scene, frames, 64, 64).frames, plan

    monkeypatch.setattr(drift, "load_model", lambda ap, a: Renderer())
    monkeypatch.setattr(drift, "generate_long", truth)
    out = tmp_path / "drift.json"
    assert drift.main(["--windows", "3", "--scenes", "2", "--modes", "text,image+anchor", "--steps", "7",
                       "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert sorted(got) == ["image+anchor", "text"]                     # still keyed by mode, as earlier files
    for mode in got.values():
        assert mode["settings"] == {"cfg": 5.0, "shift": 3.0, "steps": 7, "windows": 3, "scenes": 2, "seeds": [0]}
        assert mode["mean"]["identity"] == 1.0 and len(mode["runs"]) == 2


def test_generation_time_of_a_preset_that_needs_given_frames_is_taken_on_image_to_video():
    from spacetime.toyworld.eval import wall_time
    t = wall_time("toyworld-i2v")          # text-to-video is refused by this preset: timed from a rendered frame
    assert 0 < t["warm_s"] < 120 and 0 < t["cold_s"] < 300
