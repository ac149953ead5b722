"""Provenance nodes: save frames as a watermarked, C2PA-signed MP4; read a file's manifest and watermark back."""
from __future__ import annotations

import json
from pathlib import Path

from . import host
from .common import CATEGORY
from ..model.errors import SpacetimeValueError


def _json_input(text, name: str):
    """A STRING input holding JSON (or nothing): dict or None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        raise SpacetimeValueError(f"{name} is not JSON; wire it from the node that makes it (it starts with "
                                  f"{str(text)[:40]!r})") from None
    if not isinstance(value, dict):
        raise SpacetimeValueError(f"{name} must be a JSON object; got {type(value).__name__}")
    return value


def _split_prefix(prefix: str) -> tuple[Path, str]:
    """'name' or 'sub/folder/name' -> (folder inside the output directory, name). No absolute paths, no '..'."""
    prefix = (prefix or "").strip().replace("\\", "/") or "spacetime"
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if prefix.startswith("/") or ".." in parts or any(":" in p for p in parts):
        raise SpacetimeValueError(f"filename_prefix={prefix!r} is not allowed; allowed: a name or sub/folder/name "
                                  f"inside the output folder")
    name = parts[-1]
    if name.lower().endswith(".mp4"):
        name = name[:-4]
    return Path(*parts[:-1]) if len(parts) > 1 else Path(), name


class SpacetimeProvenanceStamp:
    DESCRIPTION = ("Saves frames as an H.264 MP4 in the output folder (numbered names, never overwriting): an "
                   "invisible watermark goes into every frame, then a C2PA manifest that says the video is "
                   "AI-generated, with the generation settings, the safety verdicts and the prompt's sha256, is "
                   "signed as the very last write. Frames without a frame report are reviewed here first; a "
                   "blocked report means nothing is written. Shows a preview.")
    CATEGORY = f"{CATEGORY}/Provenance"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("path", "report")
    OUTPUT_TOOLTIPS = ("The saved MP4's path.", "What was written and signed, as JSON (sha256, content id, "
                                                "signer, safety verdicts).")
    FUNCTION = "stamp"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("IMAGE", {"tooltip": "Video frames [T, H, W, C], ideally from Spacetime Safety Filter "
                                            "(frames)."}),
            "fps": ("FLOAT", {"default": 8.0, "min": 1.0, "max": 120.0, "step": 1.0,
                              "tooltip": "Frame rate of the MP4 (the embedded model: 8; Wan 2.1: 16)."}),
            "filename_prefix": ("STRING", {"default": "spacetime", "tooltip": "File name start in the output "
                                           "folder (sub/folder/name allowed); _00001.mp4, _00002.mp4, ... follow."}),
            "include_prompt": ("BOOLEAN", {"default": False, "tooltip": "Record the prompt text in the signed "
                                           "manifest. Off: only its sha256 is recorded."}),
        }, "optional": {
            "generation_info": ("STRING", {"default": "", "tooltip": "Link Spacetime Denoise's generation_info: "
                                           "model, checkpoint sha256, seed, steps, cfg, input files."}),
            "prompt_report": ("STRING", {"default": "", "tooltip": "Link Safety Filter (prompt)'s report."}),
            "frame_report": ("STRING", {"default": "", "tooltip": "Link Safety Filter (frames)'s report. Empty: "
                                        "the frames are reviewed here with the pack's policy."}),
            "prompt": ("STRING", {"default": "", "tooltip": "The prompt, when generation_info is not linked "
                                  "(its sha256 is recorded; the text only with include_prompt)."}),
        }}

    def stamp(self, frames, fps=8.0, filename_prefix="spacetime", include_prompt=False, generation_info="",
              prompt_report="", frame_report="", prompt=""):
        from ..provenance.stamp import stamp_video
        target = StampTarget(filename_prefix, generation_info, prompt_report, prompt)
        f_report = _json_input(frame_report, "frame_report")
        if f_report is None:                               # every frame is reviewed before it is written
            from ..safety.frames import FramesWithheldError, check_frames
            review = check_frames(frames)
            if review.blocked:
                raise FramesWithheldError(review)
            f_report = review.to_dict()
        target.reports.append(f_report)
        info = stamp_video(frames, target.path, fps=float(fps), generation=target.generation,
                           prompt=target.text or None, include_prompt=bool(include_prompt),
                           ingredients=target.ingredients, safety_reports=target.reports, numbered=True,
                           preview_path=target.preview)
        return target.result(info)


class StampTarget:
    """What a saving node needs before it writes: the generation record, the prompt's safety report (checked here
    when none is linked; a blocked prompt stops the node), the ingredients, the output path from
    ``filename_prefix`` and a preview path; ``result`` makes the node's output and UI entries."""

    def __init__(self, filename_prefix, generation_info="", prompt_report="", prompt=""):
        self.generation = _json_input(generation_info, "generation_info") or {}
        self.reports = []
        p_report = _json_input(prompt_report, "prompt_report")
        self.text = prompt or self.generation.get("prompt") or ""
        if p_report is None and self.text:                 # no Safety Filter upstream: check here
            from ..safety.prompt import PromptBlockedError, check_prompt
            verdict = check_prompt(self.text)
            if verdict.blocked:
                raise PromptBlockedError(verdict)
            p_report = verdict.to_dict()
        if p_report is not None:
            self.reports.append(p_report)
        self.ingredients = [p for p in self.generation.get("ingredients") or [] if Path(str(p)).is_file()]
        self.sub, name = _split_prefix(filename_prefix)
        folder = host.output_directory() / self.sub
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.mp4"
        import secrets
        self.preview = host.temp_directory() / f"{name}_preview_{secrets.token_hex(4)}.webp"

    def result(self, info: dict) -> dict:
        final = Path(info["path"])
        info["safety"] = [{k: r.get(k) for k in ("kind", "verdict", "categories", "summary")} for r in self.reports]
        ui_video = {"filename": final.name, "type": "output", "format": "video/mp4",
                    "subfolder": str(self.sub).replace("\\", "/") if str(self.sub) != "." else ""}
        ui_preview = {"filename": self.preview.name, "subfolder": "", "type": "temp"}
        return {"ui": {"images": [ui_preview], "animated": (True,), "videos": [ui_video]},
                "result": (str(final), json.dumps(info))}


def _resolve(file: str) -> Path:
    """A path, or a name in the output (then input) folder; ComfyUI's 'name [output]' annotation is accepted."""
    text = (file or "").strip()
    if not text:
        raise SpacetimeValueError("file is empty; give a path or the name of a file in the output folder")
    folders = [host.output_directory(), host.input_directory()]
    for tag, folder in (("[output]", host.output_directory()), ("[input]", host.input_directory()),
                        ("[temp]", host.temp_directory())):
        if text.endswith(tag):
            text, folders = text[:-len(tag)].strip(), [folder]
    p = Path(text).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [f / p for f in folders] + [Path.cwd() / p]
    for c in candidates:
        if c.is_file():
            return c
    raise SpacetimeValueError(f"file {text!r} was not found (looked in the output and input folders and the "
                              f"current folder); give a path or a file name from the output folder")


class SpacetimeProvenanceDetect:
    DESCRIPTION = ("Checks a video for provenance: whether it has a C2PA manifest and whether it is trusted "
                   "(signed by a trusted certificate, e.g. this machine's own signer), untrusted (intact but signed "
                   "by an unknown certificate) or tampered (changed after signing); the generation record; and the "
                   "invisible watermark with its bit agreement, which is still found after re-encoding strips "
                   "the manifest.")
    CATEGORY = f"{CATEGORY}/Provenance"
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("report", "report_json")
    OUTPUT_TOOLTIPS = ("A readable report.", "The full report as JSON.")
    FUNCTION = "detect"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "file": ("STRING", {"default": "", "tooltip": "A video path, or a file name from the output folder "
                                "(link Provenance Stamp's path)."}),
        }, "optional": {
            "trust_anchors": ("STRING", {"default": "", "tooltip": "Optional: a PEM file of extra trusted root "
                                         "certificates. Empty: this machine's local root plus "
                                         "SPACETIME_TRUST_ANCHORS."}),
        }}

    def detect(self, file, trust_anchors=""):
        from ..provenance import format_report, verify_file
        anchors = None
        if isinstance(trust_anchors, str) and trust_anchors.strip():
            from ..provenance.manifest import anchors_pem
            default_pem, _ = anchors_pem(None)
            anchors = ([default_pem] if default_pem else []) + [trust_anchors.strip()]
        report = verify_file(_resolve(file), trust_anchors=anchors)
        text = format_report(report)
        return {"ui": {"text": [text]}, "result": (text, json.dumps(report, default=str))}


NODE_CLASS_MAPPINGS = {"SpacetimeProvenanceStamp": SpacetimeProvenanceStamp,
                       "SpacetimeProvenanceDetect": SpacetimeProvenanceDetect}
NODE_DISPLAY_NAME_MAPPINGS = {"SpacetimeProvenanceStamp": "Spacetime Provenance Stamp (save MP4)",
                              "SpacetimeProvenanceDetect": "Spacetime Provenance Detect"}
