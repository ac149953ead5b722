"""Detect and verify: a file's C2PA manifest (trusted / untrusted / tampered / none) and its watermark, which is
read from the pixels and so survives re-encoding that strips the manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..model.errors import SpacetimeValueError
from . import manifest, watermark

STATES = {
    "trusted": "signed, intact, and the signer chains to a trusted anchor",
    "untrusted": "signed and intact, but the signer is not among the trust anchors",
    "tampered": "the manifest does not match the file (edited after signing) or is invalid",
    "none": "no C2PA manifest",
}


def verify_file(path, trust_anchors: manifest.AnchorSpec = None, max_frames: Optional[int] = None) -> dict:
    """Report on one file. ``trust_anchors``: PEM text / bytes / file paths (a list or one); None = the local root
    (when this machine has one) plus ``SPACETIME_TRUST_ANCHORS``. Keys: file, manifest (present, state, c2pa_state,
    failures, generation, actions, ai_generated, signer, claim_generator, title, ingredients, trust_anchors),
    watermark (detected, generator, content_id, bit_agreement, strength, corrected_bits, frames,
    matches_manifest), verdict (one line)."""
    p = Path(path)
    if not p.is_file():
        raise SpacetimeValueError(f"path={str(path)!r} was not found; allowed: an existing video file")
    report = {"file": p.name, "manifest": manifest.read(p, trust_anchors)}
    report["watermark"] = watermark_report(p, report["manifest"], max_frames)
    report["verdict"] = _verdict(report)
    return report


def watermark_report(path: Path, man: Optional[dict] = None, max_frames: Optional[int] = None) -> dict:
    from .video import read_luma
    try:
        luma, _ = read_luma(path, max_frames)
    except Exception as exc:          # an unreadable stream is reported, not raised: the manifest part still counts
        return {"detected": False, "error": f"frames could not be decoded: {exc}"}
    expected = None
    wm = ((man or {}).get("generation") or {}).get("watermark") or {}
    if "content_id" in wm and "generator_id" in wm:
        expected = (int(wm["generator_id"]), int(wm["content_id"]))
    try:
        result = watermark.detect_luma(luma, expected).to_dict()
    except watermark.WatermarkError as exc:
        return {"detected": False, "error": str(exc)}
    if expected is not None:
        result["matches_manifest"] = bool(result["detected"] and result["content_id"] == expected[1])
    return result


def _verdict(report: dict) -> str:
    m, w = report["manifest"], report["watermark"]
    wm = (f"watermark found (content id {w['content_id']:08x}, {w['bit_agreement']:.0%} bit agreement)"
          if w.get("detected") else "no watermark")
    if m["state"] == "none":
        return f"no C2PA manifest; {wm}" + ("; likely re-encoded or stripped" if w.get("detected") else "")
    ai = "AI-generated, " if m.get("ai_generated") else ""
    return f"C2PA {m['state']} ({ai}{STATES[m['state']]}); {wm}"


def format_report(report: dict, one_line: bool = False) -> str:
    """Text for the CLI: one line, or a short block."""
    if one_line:
        return f"{report['file']}: {report['verdict']}"
    m, w = report["manifest"], report["watermark"]
    lines = [f"file       {report['file']}", f"verdict    {report['verdict']}",
             f"manifest   {m['state']}" + (f" (c2pa: {m['c2pa_state']})" if m.get("c2pa_state") else "")]
    if m.get("failures"):
        lines.append(f"  problems  {', '.join(m['failures'])}")
    if m.get("present"):
        signer = m.get("signer") or {}
        lines.append(f"  signer    {signer.get('common_name', '?')} / {signer.get('issuer', '?')}")
        lines.append(f"  anchors   {', '.join(m.get('trust_anchors') or []) or 'none'}")
        if m.get("claim_generator"):
            lines.append(f"  generator {m['claim_generator']}")
        for a in m.get("actions") or []:
            lines.append(f"  action    {a.get('action')} {a.get('digitalSourceType', '')}".rstrip())
        for name in m.get("ingredients") or []:
            lines.append(f"  input     {name}")
        gen = m.get("generation") or {}
        keys = ("model", "checkpoint_sha256", "seed", "steps", "cfg", "sampler", "frames", "width", "height", "fps",
                "prompt_sha256", "prompt")
        for k in keys:
            if k in gen:
                lines.append(f"  {k:<9} {gen[k]}" if len(k) <= 9 else f"  {k} {gen[k]}")
        for s in gen.get("safety") or []:
            cats = ", ".join(s.get("categories") or []) or "none flagged"
            lines.append(f"  safety    {s.get('kind', '?')}: {s.get('verdict', '?')} ({cats})")
    if w.get("error"):
        lines.append(f"watermark  not read: {w['error']}")
    elif w.get("detected"):
        lines.append(f"watermark  {w.get('generator') or w.get('generator_id')} content {w['content_id']:08x}; "
                     f"bit agreement {w['bit_agreement']:.1%}, strength {w['strength']:.2f}, "
                     f"{w['corrected_bits']} bits corrected, {w['frames']} frames"
                     + ("" if w.get("matches_manifest") is None else
                        f"; {'matches' if w['matches_manifest'] else 'DOES NOT match'} the manifest"))
    else:
        lines.append(f"watermark  none (bit agreement {w.get('bit_agreement', 0):.1%}, "
                     f"strength {w.get('strength', 0):.2f})")
    return "\n".join(lines)
