"""The node contract (what ComfyUI reads from each class) and the nodes' behaviour, run headless."""
import json
import sys
import time

import pytest
import torch

import spacetime
from spacetime.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from spacetime.nodes.common import known_mask_from_latent
from spacetime.runner import WorkflowError, run_workflow, ui_to_api

DOCUMENTED = {"SpacetimeModelLoader", "SpacetimeTextEncode", "SpacetimeNoiseLatent", "SpacetimeDenoise",
              "SpacetimeVAEDecode", "SpacetimeVAEEncode", "SpacetimeImageToVideo", "SpacetimeExtend",
              "SpacetimeLoadVideo", "SpacetimeLoRA"}
SOCKET_OR_WIDGET = {"INT", "FLOAT", "STRING", "BOOLEAN", "IMAGE", "LATENT", "SPACETIME_MODEL", "SPACETIME_TEXT",
                    "SAFETY_REPORT", "MASK", "VIDEO"}


def test_pack_exports_every_documented_node():
    assert DOCUMENTED <= set(NODE_CLASS_MAPPINGS)
    assert spacetime.NODE_CLASS_MAPPINGS is NODE_CLASS_MAPPINGS
    assert set(NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_node_contract(node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    assert node_id.startswith("Spacetime")
    assert cls.CATEGORY.startswith("Spacetime/")
    assert isinstance(cls.DESCRIPTION, str) and len(cls.DESCRIPTION) > 20
    assert callable(getattr(cls, cls.FUNCTION))
    assert isinstance(cls.RETURN_TYPES, tuple)
    if hasattr(cls, "RETURN_NAMES"):
        assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"}
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind = entry[0]
            assert isinstance(kind, list) or kind in SOCKET_OR_WIDGET or kind.isupper(), (name, kind)
            opts = entry[1] if len(entry) > 1 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind, f"{node_id}.{name}: empty choice list"
                assert opts.get("default", kind[0]) in kind


def test_import_is_light():
    import subprocess
    import sys
    code = "import time,sys; t=time.time(); import spacetime; print(time.time()-t, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"                      # no torch (nor any other heavy library) at import
    assert float(out[0]) < 1.0


MODEL = {"class_type": "SpacetimeModelLoader", "inputs": {"preset": "toyworld-random", "dtype": "fp32",
                                                           "device": "cpu"}}


def _graph(**extra):
    g = {"1": MODEL,
         "2": {"class_type": "SpacetimeTextEncode", "inputs": {"model": ["1", 0], "prompt": "a red ball moves left",
                                                               "negative": "", "expand_prompt": True}},
         "3": {"class_type": "SpacetimeNoiseLatent", "inputs": {"model": ["1", 0], "width": 64, "height": 48,
                                                                "frames": 9, "batch": 1, "seed": 1}},
         "4": {"class_type": "SpacetimeDenoise", "inputs": {"model": ["1", 0], "text": ["2", 0], "latent": ["3", 0],
                                                            "steps": 2, "cfg": 3.0, "shift": 3.0, "sampler": "unipc",
                                                            "seed": 0, "strength": 1.0}},
         "5": {"class_type": "SpacetimeVAEDecode", "inputs": {"model": ["1", 0], "latent": ["4", 0]}}}
    g.update(extra)
    return g


def test_text_to_video_graph_headless():
    r = run_workflow(_graph())
    frames = r["5"]["result"][0]
    assert frames.shape == (9, 48, 64, 3) and 0 <= frames.min() and frames.max() <= 1
    info = json.loads(r["4"]["result"][1])
    assert info["seed"] == 1 and info["steps"] == 2 and info["frames"] == 9 and info["width"] == 64
    assert info["expanded_prompt"].startswith("A medium red ball moves steadily to the left")
    # same seed, same video; another seed, another video
    again = run_workflow(_graph())["5"]["result"][0]
    assert torch.equal(frames, again)
    other = run_workflow(_graph(), {"4.seed": 5})["5"]["result"][0]
    assert not torch.equal(frames, other)


def test_model_loaded_once_across_runs():
    from spacetime.nodes import host
    a = run_workflow({"1": MODEL})["1"]["result"][0]
    b = run_workflow({"1": MODEL})["1"]["result"][0]
    assert a is b and len([k for k in host._models if k[0] == "toyworld-random"]) == 1


def test_lora_nodes_chain_and_come_off(tmp_path, monkeypatch):
    """Loader -> LoRA -> LoRA -> Denoise changes the video; the plain graph afterwards gives its old video again."""
    from spacetime.model.loading import write_safetensors_atomic
    from spacetime.nodes.lora_nodes import NO_FILES, SpacetimeLoRA
    monkeypatch.setenv("SPACETIME_MODELS_DIR", str(tmp_path))
    assert SpacetimeLoRA.INPUT_TYPES()["required"]["lora_name"][0] == [NO_FILES]
    assert "models/loras" in SpacetimeLoRA.VALIDATE_INPUTS(lora_name=NO_FILES)
    (tmp_path / "loras").mkdir()
    g = torch.Generator().manual_seed(3)
    lora = {f"lora_unet_blocks_{i}_self_attn_o.lora_{p}.weight": torch.randn(*s, generator=g) * 0.3
            for i in (0, 1) for p, s in (("up", (256, 4)), ("down", (4, 256)))}
    write_safetensors_atomic(lora, tmp_path / "loras" / "toy.safetensors")
    assert SpacetimeLoRA.INPUT_TYPES()["required"]["lora_name"][0] == ["toy.safetensors"]
    plain = run_workflow(_graph())["4"]["result"][0]["samples"]
    chain = {"8": {"class_type": "SpacetimeLoRA", "inputs": {"model": ["1", 0], "lora_name": "toy.safetensors",
                                                             "strength": 0.8, "mode": "auto"}},
             "9": {"class_type": "SpacetimeLoRA", "inputs": {"model": ["8", 0], "lora_name": "toy.safetensors",
                                                             "strength": 0.4, "mode": "auto"}}}
    g2 = _graph(**chain)
    g2["4"]["inputs"]["model"] = ["9", 0]
    r = run_workflow(g2)
    styled = r["4"]["result"][0]["samples"]
    assert (styled - plain).abs().max() > 1e-2
    info = json.loads(r["4"]["result"][1])
    assert [x["strength"] for x in info["loras"]] == [0.8, 0.4] and info["loras"][0]["style"] == "kohya (lora_unet_)"
    assert torch.equal(run_workflow(_graph())["4"]["result"][0]["samples"], plain)
    bad = tmp_path / "loras" / "bad.safetensors"
    write_safetensors_atomic({"lora_unet_blocks_9_ffn_0.lora_up.weight": torch.zeros(512, 2),
                              "lora_unet_blocks_9_ffn_0.lora_down.weight": torch.zeros(2, 256)}, bad)
    g2["8"]["inputs"]["lora_name"] = "bad.safetensors"
    with pytest.raises(ValueError, match=r"bad.safetensors.*blocks_9_ffn_0 \(closest: blocks.7.ffn.0"):
        run_workflow(g2)


def test_image_to_video_marks_the_first_frame_known():
    g = _graph()
    g["7"] = {"class_type": "SpacetimeLoadVideo", "inputs": {"file": "spacetime-examples/yellow_box.png",
                                                             "max_frames": 0, "skip_frames": 0}}
    g["6"] = {"class_type": "SpacetimeImageToVideo", "inputs": {"model": ["1", 0], "latent": ["3", 0],
                                                                "image": ["7", 0], "position": "start"}}
    g["4"]["inputs"]["latent"] = ["6", 0]
    g["4"]["inputs"]["steps"] = 1
    r = run_workflow(g)
    lat = r["6"]["result"][0]
    assert known_mask_from_latent(lat).tolist() == [[1.0, 0.0, 0.0]]
    assert lat["spacetime_ingredients"] and lat["samples"][:, :, 1:].abs().sum() == 0
    assert r["7"]["result"][0].shape == (1, 64, 64, 3) and r["5"]["result"][0].shape == (9, 48, 64, 3)
    end = run_workflow(g, {"6.position": "end"})["6"]["result"][0]
    assert known_mask_from_latent(end).tolist() == [[0.0, 0.0, 1.0]]


def test_extend_in_latent_space_keeps_the_clip_latents():
    base = run_workflow(_graph())["4"]["result"][0]
    from spacetime.nodes.latent_nodes import SpacetimeExtend
    model = run_workflow({"1": MODEL})["1"]["result"][0]
    fwd = SpacetimeExtend().extend(model, "forward", 8, latent=base)[0]
    assert fwd["samples"].shape[2] == 5 and torch.equal(fwd["samples"][:, :, :3], base["samples"])
    assert known_mask_from_latent(fwd).tolist() == [[1, 1, 1, 0, 0]]
    bwd = SpacetimeExtend().extend(model, "backward", 8, latent=base)[0]
    assert known_mask_from_latent(bwd).tolist() == [[0, 0, 0, 1, 1]]
    assert torch.equal(bwd["samples"][:, :, 3:], base["samples"][:, :, 1:])
    with pytest.raises(ValueError, match="exactly one"):
        SpacetimeExtend().extend(model, "forward", 8)
    with pytest.raises(ValueError, match="after"):
        SpacetimeExtend().extend(model, "fill", 8, latent=base)


def test_bad_inputs_are_named():
    from spacetime.nodes.latent_nodes import SpacetimeNoiseLatent
    from spacetime.nodes.model_nodes import SpacetimeModelLoader
    assert "multiple of 16" in SpacetimeNoiseLatent.VALIDATE_INPUTS(width=70, height=64, frames=17)
    assert "1 + 4*k" in SpacetimeNoiseLatent.VALIDATE_INPUTS(width=64, height=64, frames=16)
    assert "wan9" in SpacetimeModelLoader.VALIDATE_INPUTS(preset="wan9")
    with pytest.raises(WorkflowError, match="frames=10"):
        run_workflow(_graph(), {"3.frames": 10})
    with pytest.raises(WorkflowError, match="not a Spacetime node"):
        run_workflow({"1": {"class_type": "KSampler", "inputs": {}}})
    g = _graph()
    g["4"]["inputs"]["sampler"] = "ddim"
    t = time.time()
    with pytest.raises(ValueError, match="sampler='ddim'"):
        run_workflow(g)
    assert time.time() - t < 30


def test_ui_format_conversion_reads_widgets_and_links():
    ui = {"nodes": [
        {"id": 1, "type": "SpacetimeModelLoader", "inputs": [], "outputs": [{"name": "model", "links": [1]}],
         "widgets_values": ["toyworld-random", "(preset default)", "(preset default)", "(preset default)",
                            "(preset default)", "fp32", "cpu"]},
        {"id": 3, "type": "SpacetimeNoiseLatent", "inputs": [{"name": "model", "type": "SPACETIME_MODEL",
                                                              "link": 1}],
         "widgets_values": [64, 48, 9, 1, 42, "randomize"]},
        {"id": 9, "type": "Note", "widgets_values": ["a note"]}],
        "links": [[1, 1, 0, 3, 0, "SPACETIME_MODEL"]]}
    api = ui_to_api(ui)
    assert api["3"]["inputs"] == {"model": ["1", 0], "width": 64, "height": 48, "frames": 9, "batch": 1, "seed": 42}
    assert api["1"]["inputs"]["device"] == "cpu" and "9" not in api
    lat = run_workflow(ui)["3"]["result"][0]
    assert lat["samples"].shape == (1, 16, 3, 12, 16) and lat["noise_seed"] == 42          # 4x4 in space, 4x in time


def test_committed_workflows_are_in_step_with_the_nodes(monkeypatch):
    """Each shared workflow JSON is what workflows/make_workflows.py writes from the nodes' current inputs: a node
    that gains an input without the workflows being rewritten would load in the frontend with a value the file
    lacks."""
    import importlib.util
    from pathlib import Path
    folder = Path(spacetime.__file__).resolve().parent / "workflows"
    spec = importlib.util.spec_from_file_location("make_workflows", folder / "make_workflows.py")
    make = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "make_workflows", make)          # its dataclasses look their module up
    spec.loader.exec_module(make)
    rendered = make.render(make.DEFAULT_PRESET)
    assert sorted(rendered) == sorted(p.name for p in folder.glob("*.json"))
    stale = [name for name, text in rendered.items() if (folder / name).read_text() != text]
    assert not stale, f"run python workflows/make_workflows.py: out of date {stale}"


def test_sampling_preview_is_reviewed_before_it_is_shown(monkeypatch):
    from spacetime import safety
    from spacetime.nodes import host
    from spacetime.nodes.sampler_nodes import _preview
    model = host.get_model("toyworld" if "toyworld" in _presets() else "toyworld-random")
    if not model.preset.latent_rgb:
        pytest.skip("this preset has no latent-to-RGB table")
    x0 = torch.randn(1, 16, 3, 4, 6)
    fmt, img, size = _preview(model, x0)
    assert fmt == "JPEG" and img.size == (48, 32)

    class Flagged:
        blocked = True
    monkeypatch.setattr(safety, "check_frames", lambda frames, **kw: Flagged())
    assert _preview(model, x0) is None


def _presets():
    from spacetime.model.config import BUNDLE_PRESETS
    return BUNDLE_PRESETS
