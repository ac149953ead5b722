"""The Safety Filter and Provenance nodes, run headless: their contract, what they pass, what they stop, what they
write (and what they never write)."""
import json
import textwrap

import numpy as np
import pytest
import torch

from isolation import isolate_dirs
from spacetime.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from spacetime.runner import run_workflow

IDS = ("SpacetimeSafetyPromptFilter", "SpacetimeSafetyFrameFilter", "SpacetimeProvenanceStamp",
       "SpacetimeProvenanceDetect")


@pytest.fixture(autouse=True)
def dirs(tmp_path, tmp_path_factory, monkeypatch):
    return isolate_dirs(tmp_path, tmp_path_factory, monkeypatch, "node-config")


def node(node_id):
    return NODE_CLASS_MAPPINGS[node_id]()


def frames(n=9, size=64, seed=0):
    from spacetime.toyworld.world import random_clip
    return torch.from_numpy(random_clip(seed, frames=n, width=size, height=size).frames.astype(np.float32) / 255)


def strict_frame_policy(tmp_path):
    p = tmp_path / "strict.toml"
    p.write_text(textwrap.dedent("""
        [categories.sexual]
        frame_threshold = 0.000001
    """))
    return p


# ----------------------------------------------------------------------------------------------------------------------
# Contract
# ----------------------------------------------------------------------------------------------------------------------

def test_contract_of_the_four_nodes():
    for node_id in IDS:
        cls = NODE_CLASS_MAPPINGS[node_id]
        assert node_id in NODE_DISPLAY_NAME_MAPPINGS
        assert cls.CATEGORY in ("Spacetime/Safety", "Spacetime/Provenance")
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
        for section in cls.INPUT_TYPES().values():
            for name, entry in section.items():
                assert entry[1].get("tooltip"), (node_id, name)
    spec = {k: NODE_CLASS_MAPPINGS[k].INPUT_TYPES() for k in IDS}
    assert list(spec["SpacetimeSafetyPromptFilter"]["required"]) == ["prompt"]
    assert NODE_CLASS_MAPPINGS["SpacetimeSafetyPromptFilter"].RETURN_TYPES == ("STRING", "STRING")
    assert list(spec["SpacetimeSafetyFrameFilter"]["required"]) == ["frames"]
    assert NODE_CLASS_MAPPINGS["SpacetimeSafetyFrameFilter"].RETURN_TYPES == ("IMAGE", "STRING")
    stamp = spec["SpacetimeProvenanceStamp"]
    assert list(stamp["required"]) == ["frames", "fps", "filename_prefix", "include_prompt"]
    assert list(stamp["optional"]) == ["generation_info", "prompt_report", "frame_report", "prompt"]
    assert stamp["required"]["frames"][0] == "IMAGE" and stamp["required"]["fps"][0] == "FLOAT"
    assert NODE_CLASS_MAPPINGS["SpacetimeProvenanceStamp"].OUTPUT_NODE is True
    assert NODE_CLASS_MAPPINGS["SpacetimeProvenanceStamp"].RETURN_NAMES == ("path", "report")
    assert list(spec["SpacetimeProvenanceDetect"]["required"]) == ["file"]


# ----------------------------------------------------------------------------------------------------------------------
# Safety Filter nodes
# ----------------------------------------------------------------------------------------------------------------------

def test_prompt_filter_passes_benign_and_stops_violations():
    text, report = node("SpacetimeSafetyPromptFilter").check("a killer whale jumps at sunset")
    assert text == "a killer whale jumps at sunset"
    assert json.loads(report)["verdict"] == "allow"
    with pytest.raises(ValueError, match="sexual content involving minors"):
        node("SpacetimeSafetyPromptFilter").check("a n.u.d.e child")


def test_frame_filter_passes_benign_frames():
    clip = frames(5)
    out, report = node("SpacetimeSafetyFrameFilter").review(clip)
    assert out is clip
    r = json.loads(report)
    assert r["kind"] == "frames" and r["verdict"] == "allow" and len(r["scores"]["sexual"]) == 5


def test_flagged_clip_raises_and_nothing_is_written(tmp_path, dirs):
    with pytest.raises(ValueError, match="withheld.*sexual or explicit content"):
        node("SpacetimeSafetyFrameFilter").review(frames(5), policy_file=str(strict_frame_policy(tmp_path)))
    assert list(dirs["output"].rglob("*")) == []


# ----------------------------------------------------------------------------------------------------------------------
# Provenance nodes
# ----------------------------------------------------------------------------------------------------------------------

def test_stamp_writes_numbered_signed_files_with_a_preview(dirs):
    stamp = node("SpacetimeProvenanceStamp")
    gen = json.dumps({"model": "toyworld-random", "checkpoint_sha256": "cd" * 32, "seed": 3, "steps": 2,
                      "cfg": 3.0, "prompt": "a red ball moves left", "negative": "", "ingredients": []})
    out = stamp.stamp(frames(9), fps=8.0, filename_prefix="clips/test", generation_info=gen)
    path, report = out["result"]
    assert path == str(dirs["output"] / "clips" / "test_00001.mp4")
    info = json.loads(report)
    assert info["frames"] == 9 and info["signer"] == "local" and len(info["sha256"]) == 64
    assert [s["kind"] for s in info["safety"]] == ["prompt", "frames"]          # both reviewed in the stamp
    ui = out["ui"]
    assert ui["videos"][0] == {"filename": "test_00001.mp4", "subfolder": "clips", "type": "output",
                               "format": "video/mp4"}
    preview = dirs["temp"] / ui["images"][0]["filename"]
    assert ui["images"][0]["type"] == "temp" and preview.is_file() and preview.read_bytes()[8:12] == b"WEBP"
    second = stamp.stamp(frames(9, seed=1), fps=8.0, filename_prefix="clips/test")["result"][0]
    assert second.endswith("test_00002.mp4")
    assert sorted(p.name for p in (dirs["output"] / "clips").iterdir()) == ["test_00001.mp4", "test_00002.mp4"]

    detected = node("SpacetimeProvenanceDetect").detect("clips/test_00001.mp4")
    text, full = detected["result"]
    assert detected["ui"]["text"] == [text]
    rep = json.loads(full)
    assert rep["manifest"]["state"] == "trusted" and rep["watermark"]["detected"]
    gen_rec = rep["manifest"]["generation"]
    assert gen_rec["seed"] == 3 and "prompt" not in gen_rec and len(gen_rec["prompt_sha256"]) == 64
    assert "trusted" in text
    assert node("SpacetimeProvenanceDetect").detect(path)["result"][0] == text


def test_stamp_refuses_blocked_reports_and_writes_nothing(tmp_path, dirs):
    stamp = node("SpacetimeProvenanceStamp")
    blocked = json.dumps({"kind": "prompt", "verdict": "block", "blocked": True, "categories": ["hate"]})
    with pytest.raises(ValueError, match="blocked"):
        stamp.stamp(frames(5), prompt_report=blocked)
    with pytest.raises(ValueError, match="prompt blocked.*impersonation"):      # an unchecked violating prompt
        stamp.stamp(frames(5), prompt="a d3ep f4ke of the president announcing war")
    assert list(dirs["output"].rglob("*")) == []
    assert not dirs["temp"].exists() or list(dirs["temp"].rglob("*.webp")) == []


def test_stamp_reviews_frames_itself_when_no_report_is_linked(tmp_path, dirs, monkeypatch):
    monkeypatch.setenv("SPACETIME_SAFETY_POLICY", str(strict_frame_policy(tmp_path)))
    with pytest.raises(ValueError, match="withheld"):
        node("SpacetimeProvenanceStamp").stamp(frames(5))
    assert list(dirs["output"].rglob("*")) == []


def test_stamp_rejects_bad_prefix_and_bad_json(dirs):
    stamp = node("SpacetimeProvenanceStamp")
    with pytest.raises(ValueError, match="filename_prefix"):
        stamp.stamp(frames(5), filename_prefix="../outside")
    with pytest.raises(ValueError, match="generation_info"):
        stamp.stamp(frames(5), generation_info="{not json")
    assert list(dirs["output"].rglob("*")) == []


def test_detect_reports_missing_files_clearly():
    with pytest.raises(ValueError, match="not found"):
        node("SpacetimeProvenanceDetect").detect("no_such_file.mp4")


# ----------------------------------------------------------------------------------------------------------------------
# Whole graphs
# ----------------------------------------------------------------------------------------------------------------------

def _graph(prompt):
    return {
        "1": {"class_type": "SpacetimeModelLoader", "inputs": {"preset": "toyworld-random", "dtype": "fp32",
                                                                "device": "cpu"}},
        "2": {"class_type": "SpacetimeSafetyPromptFilter", "inputs": {"prompt": prompt}},
        "3": {"class_type": "SpacetimeTextEncode", "inputs": {"model": ["1", 0], "prompt": ["2", 0],
                                                              "negative": "", "expand_prompt": True}},
        "4": {"class_type": "SpacetimeNoiseLatent", "inputs": {"model": ["1", 0], "width": 64, "height": 48,
                                                               "frames": 9, "batch": 1, "seed": 1}},
        "5": {"class_type": "SpacetimeDenoise", "inputs": {"model": ["1", 0], "text": ["3", 0], "latent": ["4", 0],
                                                           "steps": 2, "cfg": 3.0, "shift": 3.0, "sampler": "unipc",
                                                           "seed": 0, "strength": 1.0}},
        "6": {"class_type": "SpacetimeVAEDecode", "inputs": {"model": ["1", 0], "latent": ["5", 0]}},
        "7": {"class_type": "SpacetimeSafetyFrameFilter", "inputs": {"frames": ["6", 0]}},
        "8": {"class_type": "SpacetimeProvenanceStamp", "inputs": {
            "frames": ["7", 0], "fps": 8.0, "filename_prefix": "graph", "include_prompt": True,
            "generation_info": ["5", 1], "prompt_report": ["2", 1], "frame_report": ["7", 1]}},
    }


@pytest.fixture
def no_sampler_preview(monkeypatch):
    """The sampler's live preview is not what these graphs test (tests/test_nodes.py does)."""
    from spacetime.nodes import sampler_nodes
    monkeypatch.setattr(sampler_nodes, "_preview", lambda *a, **k: None)


def test_safe_graph_writes_one_signed_video(dirs, no_sampler_preview):
    from spacetime.provenance import verify_file
    r = run_workflow(_graph("a red ball moves left on a navy background"))
    path = r["8"]["result"][0]
    assert sorted(p.name for p in dirs["output"].iterdir()) == ["graph_00001.mp4"]
    rep = verify_file(path)
    gen = rep["manifest"]["generation"]
    assert rep["manifest"]["state"] == "trusted" and rep["watermark"]["detected"]
    assert gen["prompt"] == "a red ball moves left on a navy background"         # include_prompt
    assert [s["kind"] for s in gen["safety"]] == ["prompt", "frames"]
    assert gen["safety"][1]["frames_checked"] == 9


def test_blocked_prompt_stops_the_graph_before_text_encoding(dirs, monkeypatch):
    from spacetime.nodes.model_nodes import SpacetimeTextEncode
    called = []
    monkeypatch.setattr(SpacetimeTextEncode, "encode", lambda self, *a, **k: called.append(1))
    with pytest.raises(ValueError, match="prompt blocked by the safety policy: extreme violence and gore"):
        run_workflow(_graph("a gory d3c4p1tation in the street"))
    assert called == [] and list(dirs["output"].rglob("*")) == []
