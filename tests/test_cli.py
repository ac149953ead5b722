"""The command line: playable, signed MP4s of the requested size and length; clear one-line errors; nothing written
on bad input or blocked content."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spacetime.cli import EXIT_BAD_INPUT, EXIT_BLOCKED, main

EXAMPLES = Path(__file__).resolve().parent.parent / "workflows" / "inputs"
FAST = ["--steps", "3", "--seed", "3"]


def _decode(path):
    import av
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return np.stack(frames)


def test_generate_writes_a_playable_signed_mp4(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    rc = main(["generate", "a green box moves left on a beige background", "--frames", "9", "--width", "96",
               "--height", "64", *FAST, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    frames = _decode(out)
    assert frames.shape == (9, 64, 96, 3)
    assert frames.std() > 2.0                         # not a blank clip
    assert list(tmp_path.iterdir()) == [out]          # no temporary files left next to it
    capsys.readouterr()
    assert main(["verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    text = json.dumps(report)
    assert "trainedAlgorithmicMedia" in text
    assert report["watermark"]["detected"] is True


def test_generate_image_to_video_keeps_the_image(tmp_path, capsys):
    out = tmp_path / "i2v.mp4"
    rc = main(["generate", "a yellow box moves up on a sky blue background", "--image",
               str(EXAMPLES / "yellow_box.png"), "--frames", "9", *FAST, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    frames = _decode(out)
    assert frames.shape[0] == 9
    from PIL import Image
    img = np.asarray(Image.open(EXAMPLES / "yellow_box.png").convert("RGB").resize(frames.shape[2:0:-1]))
    err = np.abs(frames[0].astype(float) - img.astype(float)).mean()
    assert err < 20, err                              # the first frame is the input image (through VAE + H.264)


def test_generate_extend_adds_new_frames(tmp_path, capsys):
    out = tmp_path / "ext.mp4"
    rc = main(["generate", "a red ball moves right on a navy background", "--extend",
               str(EXAMPLES / "ball_clip.mp4"), "--frames", "8", *FAST, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    src = _decode(EXAMPLES / "ball_clip.mp4")
    got = _decode(out)
    assert got.shape[0] == src.shape[0] + 8


@pytest.mark.parametrize("args, needle", [
    (["--frames", "10"], "--frames 10"),
    (["--frames", "0"], "--frames 0"),                # 0 is no "default" unless the help says so
    (["--frames", "-3"], "--frames -3"),
    (["--width", "70"], "70"),
    (["--width", "0"], "--width 0"),
    (["--height", "0"], "--height 0"),
    (["--cfg", "0"], "--cfg 0"),
    (["--shift", "-1"], "--shift -1"),
    (["--fps", "nan"], "--fps nan"),
    (["--steps", "501"], "--steps 501"),
    (["--steps", "0", "--frames", "9"], None),
    (["--image", "no/such.png"], "no/such.png"),
    (["--parallel", "0"], "--parallel 0"),
    (["--parallel", "3", "--cfg-parallel", "on"], "even"),
    (["--parallel", "2", "--cfg", "1", "--cfg-parallel", "on"], "guidance"),
    (["--step-cache", "1.5"], "--step-cache 1.5"),
    (["--window-frames", "17", "--frames", "33", "--parallel", "2"], "--parallel 2 cannot be combined"),
    (["--shot", "5: a red ball", "--step-cache", "0.1"], "--step-cache 0.1 cannot be combined"),
])
def test_bad_input_is_a_one_line_error_and_writes_nothing(tmp_path, capsys, args, needle):
    out = tmp_path / "bad.mp4"
    rc = main(["generate", "a red ball", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    if needle is None:                                # --steps 0 means "the preset's default": it must succeed
        assert rc == 0 and out.exists()
        return
    assert rc == EXIT_BAD_INPUT
    assert err.startswith("spacetime: ") and "\n" not in err and needle in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_generate_with_loras_and_quantised_models(tmp_path, capsys):
    """--lora FILE[:STRENGTH] (repeatable) changes the video and is recorded; a GGUF DiT loads and is named."""
    import torch
    from spacetime.model.gguf import write_gguf
    from spacetime.model.loading import read_checkpoint, write_safetensors_atomic
    from spacetime.model.pipeline import Spacetime
    g = torch.Generator().manual_seed(1)
    lora = tmp_path / "style.safetensors"
    write_safetensors_atomic({f"diffusion_model.blocks.{i}.cross_attn.v.lora_{p}.weight":
                              torch.randn(*s, generator=g) * 0.5 for i in (0, 3)
                              for p, s in (("up", (256, 8)), ("down", (8, 256)))}, lora)
    args = ["a green box moves left on a beige background", "--frames", "5", "--width", "64", "--height", "64",
            "--steps", "2", "--seed", "3"]
    assert main(["generate", *args, "--out", str(tmp_path / "a.mp4")]) == 0
    assert main(["generate", *args, "--lora", f"{lora}:0.7", "--lora", str(lora), "--out",
                 str(tmp_path / "b.mp4")]) == 0
    err = capsys.readouterr().err
    assert "LoRA style.safetensors: 2 changes, ComfyUI (diffusion_model.), LoRA, strength 0.7" in err
    a, b = _decode(tmp_path / "a.mp4").astype(float), _decode(tmp_path / "b.mp4").astype(float)
    assert np.abs(a - b).mean() > 1.0
    capsys.readouterr()
    main(["verify", str(tmp_path / "b.mp4"), "--json"])
    gen = json.loads(capsys.readouterr().out)["manifest"]["generation"]
    assert [x["strength"] for x in gen["loras"]] == [0.7, 1.0]
    # the embedded DiT as a Q8_0 GGUF file: detected from the file, preset inferred, format named
    sd = read_checkpoint(Spacetime.load("toyworld").dit_path).tensors
    gg = write_gguf(tmp_path / "toy-Q8_0.gguf", {k: v.float() for k, v in sd.items()},
                    lambda n, t: "Q8_0" if t.dim() == 2 and t.shape[-1] % 32 == 0 else "F32")
    assert main(["generate", *args, "--model", str(gg), "--out", str(tmp_path / "c.mp4")]) == 0
    assert "DiT toy-Q8_0.gguf: GGUF (" in capsys.readouterr().err


@pytest.mark.parametrize("setup, needle", [
    (lambda d: (d / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1"),
     "could not be read as safetensors"),
    (lambda d: (d / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8), "could not be read as GGUF"),
    (lambda d: (d / "cut.gguf").write_bytes(b"junk" * 8), "not a GGUF file"),
])
def test_corrupt_model_files_are_one_line_errors(tmp_path, capsys, setup, needle):
    setup(tmp_path)
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("cut"))
    out = tmp_path / "x.mp4"
    rc = main(["generate", "a red ball", "--model", str(path), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == EXIT_BAD_INPUT and err.startswith("spacetime: ") and "\n" not in err and needle in err, err
    assert not out.exists()


def test_bad_lora_is_a_one_line_error(tmp_path, capsys):
    import torch
    from spacetime.model.loading import write_safetensors_atomic
    lora = tmp_path / "other.safetensors"
    write_safetensors_atomic({"transformer.single_blocks.0.linear1.lora_A.weight": torch.zeros(4, 8),
                              "transformer.single_blocks.0.linear1.lora_B.weight": torch.zeros(8, 4)}, lora)
    for args, needle in ((["--lora", str(lora)], "match no module"),
                         (["--lora", str(tmp_path / "none.safetensors:0.5")], "none.safetensors")):
        rc = main(["generate", "a red ball", *args, "--out", str(tmp_path / "x.mp4")])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_BAD_INPUT and "\n" not in err and needle in err, err
    assert list(tmp_path.iterdir()) == [lora]


@pytest.mark.slow
def test_generate_on_two_ranks_states_the_layout_and_matches_one_process(tmp_path, monkeypatch):
    """`--parallel 2` starts the second rank itself; only rank 0 prints and writes; the closing line and the
    manifest state the layout; the frames match the single-process run's.

    The frames are compared as they reach the stamp (after sampling and decoding, before the watermark and the
    H.264 encoder): two ranks of one thread and one process of two threads sum in different orders (~1e-7), and the
    lossy encoder turns such a difference into several levels on a few pixels of a 64x64 clip."""
    from spacetime.provenance import verify_file
    args = ["generate", "a red ball bounces on a navy background", "--frames", "5", *FAST]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    one, two = out_dir / "one.mp4", out_dir / "two.mp4"
    capture = ("import sys, numpy as np, spacetime.provenance as p, spacetime.cli as c\n"
               "stamp = p.stamp_video\n"
               "def keep(frames, *a, **k):\n"
               f"    np.save({str(tmp_path / 'two.npy')!r}, np.asarray(frames))\n"
               "    return stamp(frames, *a, **k)\n"
               "p.stamp_video = keep\n"
               "sys.exit(c.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", capture, *args, "--parallel", "2", "--cfg-parallel", "off",
                           "--out", str(two)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "parallel: sequence 2 x cfg 1" in lines[0]
    assert sorted(p.name for p in out_dir.iterdir()) == ["two.mp4"]
    report = verify_file(str(two))
    assert report["manifest"]["generation"]["parallel"] == {"sequence": 2, "cfg": 1}
    assert report["watermark"]["detected"] and report["watermark"]["matches_manifest"]

    import spacetime.provenance as provenance
    kept = {}
    stamp = provenance.stamp_video

    def keep(frames, *a, **k):
        kept["one"] = np.asarray(frames)
        return stamp(frames, *a, **k)
    monkeypatch.setattr(provenance, "stamp_video", keep)
    assert main([*args, "--out", str(one)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["one.mp4", "two.mp4"]
    assert verify_file(str(one))["manifest"]["generation"]["parallel"] == {"sequence": 1, "cfg": 1}
    frames_two = np.load(tmp_path / "two.npy")
    assert frames_two.shape == kept["one"].shape == (5, 64, 64, 3)
    assert np.abs(kept["one"].astype(np.float64) - frames_two).max() <= 1e-4


def test_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"precious")
    assert main(["generate", "a red ball", "--out", str(out)]) == EXIT_BAD_INPUT
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"


def test_blocked_prompt_exits_before_generation(tmp_path):
    out = tmp_path / "no.mp4"
    proc = subprocess.run([sys.executable, "-m", "spacetime.cli", "generate", "explicit sexual content involving a "
                           "child", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == EXIT_BLOCKED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "blocked" in lines[0] and "minor" in lines[0].lower()
    assert not out.exists()


def test_run_workflow_from_the_command_line(tmp_path, capsys):
    wf = Path(__file__).resolve().parent.parent / "workflows" / "text_to_video.json"
    ui = json.loads(wf.read_text())
    ids = {n["type"]: n["id"] for n in ui["nodes"]}
    rc = main(["run", str(wf), "--out", str(tmp_path), "--set", f"{ids['SpacetimeDenoise']}.steps=2",
               "--set", f"{ids['SpacetimeNoiseLatent']}.frames=5"])
    assert rc == 0, capsys.readouterr().err
    mp4s = list(tmp_path.rglob("*.mp4"))
    assert len(mp4s) == 1
    assert _decode(mp4s[0]).shape[0] == 5
    assert main(["run", str(wf), "--set", "nonsense"]) == EXIT_BAD_INPUT


def _options(parser):
    """(command, action) for every option of every sub-command."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {cmd}".strip(), a) for cmd, a in _options(sub))
        elif not isinstance(action, argparse._HelpAction):
            yield "", action


def test_every_option_has_help_that_shows_its_default():
    """Options added later stay documented: each has help text, and the help of each optional one names its
    default (argparse's ArgumentDefaultsHelpFormatter style) or says it is required."""
    from spacetime.cli import HelpFormatter, build_parser
    parser = build_parser()
    options = list(_options(parser))
    assert len(options) > 30
    undocumented = [f"{cmd} {a.option_strings or a.dest}" for cmd, a in options if not (a.help or "").strip()]
    assert not undocumented, f"options without help text: {undocumented}"
    fmt = HelpFormatter("spacetime")
    silent = [f"{cmd} {a.option_strings}" for cmd, a in options if a.option_strings and not a.required
              and "(default" not in fmt._get_help_string(a) % {"default": a.default}]
    assert not silent, f"options whose help does not show the default: {silent}"
    text = " ".join(parser._subparsers._group_actions[0].choices["generate"].format_help().split())
    assert "(default: unipc)" in text and "(default: toyworld)" in text
    assert "0 = the model's default" in text


def test_zero_means_the_model_default_only_where_the_help_says_so():
    from spacetime.cli import build_parser
    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    zero_ok = {a.dest for a in generate._actions if "0 = the model's default" in (a.help or "")}
    assert zero_ok == {"fps", "steps", "shift"}


def test_eval_parts_belong_to_the_prompt_evaluation_only(capsys):
    assert main(["eval", "--drift", "--parts", "fill"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--parts chooses parts of the prompt evaluation" in err


def test_eval_report_never_overwrites_a_file_in_any_evaluation(tmp_path, capsys):
    import pytest
    old = tmp_path / "eval.md"
    old.write_text("kept")
    for extra in ([], ["--drift"], ["--storyboard"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--report", str(old), *extra])
        assert e.value.code == 2 and "the file exists" in capsys.readouterr().err
    assert old.read_text() == "kept"


def test_eval_cfg_shift_and_frame_cfg_reach_every_evaluation_and_bad_ones_stop_before_work(capsys):
    import pytest
    for extra in ([], ["--drift"], ["--storyboard"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--cfg", "0.5", *extra])
        assert e.value.code == 2 and "--cfg 0.5: allowed a number >= 1" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            main(["eval", "--shift", "0", *extra])
        assert e.value.code == 2 and "--shift 0.0: allowed a number > 0" in capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            main(["eval", "--frame-cfg", "-1", *extra])
        assert e.value.code == 2 and "--frame-cfg -1.0: allowed a number >= 0" in capsys.readouterr().err


def test_eval_vae_reaches_every_evaluation_and_a_missing_file_stops_before_work(capsys):
    import pytest
    for extra in ([], ["--drift"], ["--storyboard"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--vae", "no-such-vae.safetensors", *extra])
        assert e.value.code == 2 and "--vae 'no-such-vae.safetensors': no such file" in capsys.readouterr().err


def test_eval_expert_options_reach_every_evaluation_and_bad_ones_stop_before_work(capsys):
    import pytest
    for extra in ([], ["--drift"], ["--storyboard"]):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--dit-low-noise", "no-such-expert.safetensors", *extra])
        assert e.value.code == 2 and "--dit-low-noise 'no-such-expert.safetensors': no such file" in \
            capsys.readouterr().err
        with pytest.raises(SystemExit) as e:
            main(["eval", "--expert-boundary", "1.5", *extra])
        assert e.value.code == 2 and "--expert-boundary 1.5: allowed a noise level within (0, 1]" in \
            capsys.readouterr().err
