"""``spacetime generate`` for long videos (``--window-frames``, ``--window-prompt``, ``--anchor-frames``) and
multi-shot videos (``--shot``): the same work as the Spacetime Long Video + Save Long Video and Spacetime Storyboard
nodes. A long video streams: each window is sampled, decoded, reviewed, watermarked and encoded as it comes, and the
MP4 is signed and published after the last one (cancelling leaves no file).

    spacetime generate "a red ball rests on navy" --frames 961 --window-frames 17 --anchor-frames 0 --out long.mp4
    spacetime generate --shot "17: a red ball on navy" --shot "16: close-up: a red ball on navy" --out story.mp4
"""
from __future__ import annotations

import time

from .cli import CliError, EXIT_BLOCKED


def add_arguments(g):
    """The generate options of this module (help texts show the defaults)."""
    g.add_argument("--window-frames", type=int, default=0, metavar="N",
                   help="make a long video window by window: frames the model sees at once (1 + 4k, e.g. 17); "
                        "--frames is then the whole length (default: 0 = one window)")
    g.add_argument("--overlap-frames", type=int, default=4, metavar="N",
                   help="long video: frames of the previous window each window continues from, a multiple of 4 "
                        "(default: 4)")
    g.add_argument("--anchor-frames", default="", metavar="LIST",
                   help="long video: frames of the first window re-used as known frames in every later window, "
                        "comma-separated, e.g. 0 (default: none)")
    g.add_argument("--window-prompt", action="append", metavar="TEXT",
                   help="long video: the prompt of the next window (repeat; PROMPT is the first window's, the last "
                        "one holds) (default: PROMPT for every window)")
    g.add_argument("--shot", action="append", metavar="'[FRAMES:] PROMPT'",
                   help="multi-shot video: one shot (repeat, in order); FRAMES: the first shot 1 + 4k, later ones a "
                        "multiple of 4; shots without FRAMES share what --frames leaves; PROMPT, when given, is "
                        "prefixed to every shot (default: no shots)")
    g.add_argument("--shot-conditioning", choices=("text", "reference", "text+reference"), default="text",
                   help="multi-shot: each shot's frames read their own prompt in one sequence (text), continue from "
                        "the previous shot's last frames (reference), or both (default: text)")
    g.add_argument("--reference-frames", type=int, default=4, metavar="N",
                   help="multi-shot reference modes: frames of the previous shot known at the start of the next, a "
                        "multiple of 4 (default: 4)")


def wanted(a) -> bool:
    return bool(a.shot or a.window_frames or a.window_prompt)


def check(a):
    """Combinations that cannot work, before anything is loaded. Without --shot a PROMPT is needed."""
    if not a.prompt and not a.shot:
        raise CliError("a PROMPT is needed (or --shot '[FRAMES:] PROMPT' for a multi-shot video)")
    if not wanted(a):
        return
    if a.extend:
        raise CliError("--extend cannot be combined with --window-frames, --window-prompt or --shot (a long video "
                       "extends itself window by window)")
    if a.shot and (a.window_frames or a.window_prompt or a.anchor_frames):
        raise CliError("--shot cannot be combined with --window-frames, --window-prompt or --anchor-frames")
    if a.shot and a.image:
        raise CliError("--image cannot be combined with --shot")
    if a.contrast is not None:
        raise CliError("--contrast cannot be combined with --window-frames, --window-prompt or --shot (a long video "
                       "uses the contrast prompt the model writes for each window's prompt)")
    if a.shot and a.contrast_guidance is not None:
        raise CliError("--contrast-guidance cannot be combined with --shot (storyboards sample without contrast "
                       "guidance)")
    from .model.parallel import env_world
    world = max(a.parallel, env_world())
    if world > 1:
        raise CliError(f"--parallel {world} cannot be combined with --window-frames, --window-prompt or --shot; "
                       f"allowed: --parallel 1 (one process)")
    if a.step_cache > 0:
        raise CliError(f"--step-cache {a.step_cache:g} cannot be combined with --window-frames, --window-prompt or "
                       f"--shot; allowed: --step-cache 0")


def _prompt_verdicts(texts) -> list:
    from .safety import check_prompt
    out = []
    for t in texts:
        v = check_prompt(t)
        if v.blocked:
            raise CliError(f"prompt blocked by the safety policy: {v.summary()}", EXIT_BLOCKED)
        out.append(v.to_dict())
    return out


def _settings(a, st) -> dict:
    p = st.preset
    return {"steps": a.steps or p.steps, "cfg": p.cfg if a.cfg is None else a.cfg, "shift": a.shift or p.shift,
            "sampler": a.sampler, "frame_cfg": st.frame_guidance(a.frame_guidance)}


def run(a, st, out, width: int, height: int, bar) -> int:
    from .model.errors import SpacetimeValueError
    try:
        return _story(a, st, out, width, height, bar) if a.shot else _long(a, st, out, width, height, bar)
    except SpacetimeValueError as exc:
        raise CliError(str(exc)) from None


def _record(a, st, settings, **extra) -> dict:
    info = {"model": st.preset.name, "checkpoint_sha256": st.checkpoint_sha256(), "seed": a.seed, **settings,
            "frame_cfg_stop": st.preset.frame_cfg_stop}
    info.update(extra)
    return info


def _long(a, st, out, width, height, bar) -> int:
    from .model.longvideo import long_video_latents, stream_frames
    from .nodes.long_nodes import contrast_record, frame_list, parse_anchor_frames
    from .provenance.stamp import StampWriter
    from .safety import FrameReview
    frames = a.frames or st.preset.default_frames
    prompts = [a.prompt] + list(a.window_prompt or [])
    verdicts = _prompt_verdicts(prompts)
    try:
        anchors = parse_anchor_frames(a.anchor_frames)
    except ValueError as exc:
        raise CliError(f"--anchor-frames: {exc}") from None
    window = a.window_frames or st.preset.default_frames
    img, ingredients = None, []
    if a.image:
        from .nodes.latent_nodes import _resize_cover
        from .nodes.media_nodes import read_media
        from pathlib import Path
        img = _resize_cover(read_media(Path(a.image))[0][:1], width, height)[0]
        ingredients.append(a.image)
    settings = _settings(a, st)
    t0 = time.time()
    contrast_cfg = a.contrast_guidance
    gen = long_video_latents(st, prompts, a.negative, frames=frames, width=width, height=height,
                             window_frames=window, overlap_frames=a.overlap_frames, anchor_frames=anchors,
                             seed=a.seed, image=img, expand_prompt=not a.no_expand, **settings,
                             contrast_cfg=contrast_cfg, callback=lambda k, i, n: bar(i, n, f"window {k + 1}"))
    info = _record(a, st, settings, frames=frames, width=width, height=height, window_frames=window,
                   overlap_frames=a.overlap_frames, anchor_frames=frame_list(anchors), prompt="\n".join(prompts),
                   **contrast_record(st, prompts, contrast_cfg, img is not None))
    with StampWriter(out, a.fps or st.preset.fps, info, "\n".join(prompts), a.include_prompt, ingredients,
                     verdicts, review=FrameReview()) as writer:
        for piece in stream_frames(st, (r.latents for r in gen)):
            writer.write(piece)
    res = writer.info
    print(f"wrote {res['path']} ({res['frames']} frames, {res['width']}x{res['height']}, {time.time() - t0:.1f}s)")
    return 0


def _story(a, st, out, width, height, bar) -> int:
    from .model.storyboard import Shot, parse_shots, plan_story, storyboard_latents
    from .nodes.long_nodes import frame_list
    from .provenance import stamp_video
    from .safety import check_frames
    shots = parse_shots(a.shot)
    if a.prompt:
        shots = [Shot(f"{a.prompt.strip()} {s.prompt}", s.frames) for s in shots]
    plan = plan_story(shots, a.frames or 0, st.temporal_factor)
    verdicts = _prompt_verdicts([s.prompt for s in plan.shots])
    settings = _settings(a, st)
    t0 = time.time()
    raw, plan = storyboard_latents(st, plan.shots, a.negative, width=width, height=height,
                                   mode=a.shot_conditioning, reference_frames=a.reference_frames, seed=a.seed,
                                   expand_prompt=not a.no_expand, **settings,
                                   callback=lambda k, i, n: bar(i, n, f"shot {k + 1}"))
    video = st.decode(raw, lambda i, n: bar(i, n, "decode"), cuts=plan.latent_cuts)[0]
    report = check_frames(video)
    if report.blocked:
        raise CliError(f"generated frames withheld by the safety policy: {report.summary()}", EXIT_BLOCKED)
    info = _record(a, st, settings, frames=plan.frames, width=width, height=height,
                   conditioning=a.shot_conditioning, shots=frame_list(s.frames for s in plan.shots),
                   cuts=frame_list(plan.cuts),
                   prompt="\n".join(s.prompt for s in plan.shots))
    res = stamp_video(video, out, fps=a.fps or st.preset.fps, generation=info, prompt=info["prompt"],
                      include_prompt=a.include_prompt, safety_reports=verdicts + [report.to_dict()])
    print(f"wrote {res['path']} ({res['frames']} frames in {len(plan.shots)} shots, cuts at {plan.cuts}, "
          f"{time.time() - t0:.1f}s)")
    return 0
