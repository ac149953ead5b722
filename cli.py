"""The ``spacetime`` command line.

    spacetime generate "PROMPT" [--image PATH] [--extend VIDEO --direction forward|backward|fill [--after VIDEO]]
                       [--frames N] [--width W] [--height H] [--fps F] [--steps S] [--cfg G] [--seed K]
                       [--model PRESET_OR_PATH [--dit-low-noise PATH]] [--lora FILE[:STRENGTH] ...]
                       [--offload-blocks N] [--step-cache T] [--parallel N [--cfg-parallel auto|on|off]] --out PATH.mp4
    spacetime generate "PROMPT" --frames 961 --window-frames 17 [--anchor-frames 0] [--window-prompt TEXT ...] ...
    spacetime generate --shot "17: PROMPT" --shot "16: PROMPT" [--shot-conditioning text|reference|text+reference] ...
    torchrun --nproc-per-node N -m spacetime.cli generate ...      (the same, ranks started by torchrun)
    spacetime generate --help        (every option, what it does and its default)
    spacetime run WORKFLOW.json [--set NODE_ID.INPUT=VALUE ...] [--out DIR]
    spacetime verify PATH.mp4 [--json]
    spacetime eval [--quick] [--report PATH] [--drift | --storyboard]

Bad input or blocked content: a one-line reason on stderr and a non-zero exit; nothing is written. In a multi-rank
run only rank 0 prints, decodes and writes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_BLOCKED = 3
EXIT_FAILED = 1


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------------------------------------------------
# Terminal progress
# ----------------------------------------------------------------------------------------------------------------------

class TerminalProgress:
    def __init__(self, stream=None):
        self.stream = stream                              # None: the stderr of each write's moment
        self.last = ""

    def __call__(self, done: int, total: int, label: str):
        stream = self.stream or sys.stderr
        width = 30
        fill = int(width * done / max(1, total))
        line = f"{label:>8} [{'#' * fill}{'.' * (width - fill)}] {done}/{total}"
        if stream.isatty():
            stream.write("\r" + line + ("\n" if done >= total else ""))
            stream.flush()
        elif done >= total and line != self.last:
            stream.write(line + "\n")
        self.last = line


# ----------------------------------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------------------------------

def _check_out(path: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".mp4":
        raise CliError(f"--out {path!r}: the output must be an .mp4 file")
    if out.exists():
        raise CliError(f"--out {path!r} already exists; choose a new name (outputs are never overwritten)")
    if not out.parent.exists():
        raise CliError(f"--out {path!r}: folder {str(out.parent)!r} does not exist")
    return out


def _resolve_model(spec: str, vae=None, text=None, tokenizer=None, experts: bool = False):
    """A preset name, or a DiT file (its preset is inferred from its keys and shapes; with ``experts`` a two-expert
    preset of that architecture)."""
    from .model.config import BUNDLE_PRESETS, bundle_preset
    from .model.errors import SpacetimeValueError
    p = Path(spec)
    if spec not in BUNDLE_PRESETS and (p.suffix in (".safetensors", ".pth", ".json", ".gguf") or p.is_file()):
        if not p.exists():
            raise CliError(f"--model {spec!r}: file not found")
        from .model.loading import _closest_dit_preset, normalize_dit_keys
        try:
            sd = normalize_dit_keys(_shapes_only(p))
            name = _closest_dit_preset(sd)
        except SpacetimeValueError as exc:
            raise CliError(f"--model {spec!r}: {exc}") from None
        if name is not None and experts:
            from .model.loading import infer_dit_config
            def arch(c):
                return c.dim, c.num_layers, c.in_dim, c.out_dim, c.ffn_dim
            found = arch(infer_dit_config(sd))
            name = next((n for n, b in BUNDLE_PRESETS.items() if b.expert_boundary and arch(b.dit) == found), None)
            if name is None:
                raise CliError(f"--model {spec!r} with --dit-low-noise: the file is not an expert of a two-expert "
                               f"preset (wan2.2-t2v-a14b, wan2.2-i2v-a14b)")
        if name is None or name not in BUNDLE_PRESETS:
            raise CliError(f"--model {spec!r}: its architecture matches no preset with a VAE and text encoder; "
                           f"allowed presets: {', '.join(sorted(BUNDLE_PRESETS))}")
        return name, p
    try:
        bundle_preset(spec)
    except ValueError as exc:
        raise CliError(f"--model {spec!r}: {exc}") from None
    return spec, None


def _check_numbers(a):
    """The numeric options, before anything is loaded. 0 means "the model's default" only where the help says so."""
    if not (math.isfinite(a.fps) and a.fps >= 0):
        raise CliError(f"--fps {a.fps}: allowed > 0, or 0 for the model's default")
    if not 0 <= a.steps <= 500:
        raise CliError(f"--steps {a.steps}: allowed 1..500, or 0 for the model's default")
    if not (math.isfinite(a.shift) and a.shift >= 0):
        raise CliError(f"--shift {a.shift}: allowed > 0, or 0 for the model's default")
    if a.cfg is not None and not (math.isfinite(a.cfg) and a.cfg >= 1.0):
        raise CliError(f"--cfg {a.cfg}: allowed >= 1 (1 turns guidance off); leave it out for the model's default")
    for flag, value in (("--width", a.width), ("--height", a.height)):
        if value is not None and value <= 0:
            raise CliError(f"{flag} {value}: allowed a positive multiple of 16; leave it out for the model's default")
    if a.frames is not None and a.frames <= 0:
        allowed = "a positive number of new frames" if a.extend else "1 + 4k (e.g. 17)"
        raise CliError(f"--frames {a.frames}: allowed {allowed}; leave it out for the model's default")
    if not (math.isfinite(a.expert_boundary) and 0.0 <= a.expert_boundary <= 1.0):
        raise CliError(f"--expert-boundary {a.expert_boundary}: allowed 0..1, or 0 for the preset's")
    if a.expert_switch_step < 0:
        raise CliError(f"--expert-switch-step {a.expert_switch_step}: allowed >= 0, or 0 to switch at the boundary")
    if a.cfg_high_noise is not None and not (math.isfinite(a.cfg_high_noise) and a.cfg_high_noise >= 1.0):
        raise CliError(f"--cfg-high-noise {a.cfg_high_noise}: allowed >= 1; leave it out for the preset's")
    if a.frame_guidance is not None and not (math.isfinite(a.frame_guidance) and a.frame_guidance >= 0):
        raise CliError(f"--frame-guidance {a.frame_guidance}: allowed >= 0 (0 turns it off); leave it out for the "
                       f"model's default")
    if a.contrast_guidance is not None and not (math.isfinite(a.contrast_guidance) and a.contrast_guidance >= 0):
        raise CliError(f"--contrast-guidance {a.contrast_guidance}: allowed >= 0 (0 turns it off); leave it out for "
                       f"the model's default")
    if a.offload_blocks < 0:
        raise CliError(f"--offload-blocks {a.offload_blocks}: allowed >= 0 (0 keeps every block on the device)")
    if not (math.isfinite(a.step_cache) and 0.0 <= a.step_cache <= 1.0):
        raise CliError(f"--step-cache {a.step_cache}: allowed 0 (off) to 1")
    if a.parallel < 1:
        raise CliError(f"--parallel {a.parallel}: must be at least 1")


def _shapes_only(path: Path) -> dict:
    """A checkpoint's keys with shape-only (meta) tensors: enough to infer its architecture without reading it.
    safetensors headers (found from the content, whatever the name) are read directly; GGUF tensors stay packed;
    other formats are loaded."""
    import torch
    from .model.loading import read_checkpoint, safetensors_header, sniff
    if sniff(path) == "safetensors":
        header, _ = safetensors_header(path)
        return {k: torch.empty(v["shape"], device="meta") for k, v in header.items()}
    return read_checkpoint(path, "--model").tensors


def cmd_generate(a) -> int:
    from .model.conditioning import check_size, round_up_frames
    from .model.errors import SpacetimeValueError
    out = _check_out(a.out)
    _check_numbers(a)
    from . import cli_long
    cli_long.check(a)
    if a.image and a.extend:
        raise CliError("--image and --extend cannot be combined")
    if a.after and a.direction != "fill":
        raise CliError("--after is only used with --direction fill")
    if a.direction == "fill" and a.extend and not a.after:
        raise CliError("--direction fill needs --after VIDEO (the clip after the gap)")
    for flag, path in (("--image", a.image), ("--extend", a.extend), ("--after", a.after),
                       ("--dit-low-noise", a.dit_low_noise)):
        if path and not Path(path).is_file():
            raise CliError(f"{flag} {path!r}: file not found")

    verdict = None
    if os.environ.get("RANK", "0") == "0":               # rank 0 is the only rank that writes; a block there
        from .safety import check_prompt                 # ends the others (torchrun, or before they start)
        verdict = check_prompt(a.prompt or "")
        if verdict.blocked:
            raise CliError(f"prompt blocked by the safety policy: {verdict.summary()}", EXIT_BLOCKED)

    preset, dit_path = _resolve_model(a.model, experts=a.dit_low_noise is not None)
    from .model.config import bundle_preset
    p = bundle_preset(preset)
    width = p.default_size[0] if a.width is None else a.width
    height = p.default_size[1] if a.height is None else a.height
    frames = (16 if a.extend else p.default_frames) if a.frames is None else a.frames
    try:
        check_size(width, height, p.stride[1], "--width x --height")
    except SpacetimeValueError as exc:
        raise CliError(str(exc)) from None
    tf = p.vae.temporal_factor
    if not a.extend and (frames - 1) % tf:
        raise CliError(f"--frames {frames}: must be 1 + {tf}*k (e.g. {round_up_frames(frames, tf)})")
    from .model.lora import LoraSpec
    loras = []
    for flag, values, expert in (("--lora", a.lora, "both"), ("--lora-high-noise", a.lora_high_noise, "high_noise"),
                                 ("--lora-low-noise", a.lora_low_noise, "low_noise")):
        for text in values or []:
            spec = LoraSpec.parse(text)
            if not Path(spec.path).is_file():
                raise CliError(f"{flag} {spec.path!r}: file not found")
            if expert != "both" and not a.dit_low_noise:
                raise CliError(f"{flag} {text!r}: needs two experts (--model HIGH_NOISE_FILE --dit-low-noise "
                               f"LOW_NOISE_FILE); use --lora for a single DiT")
            loras.append(LoraSpec(spec.path, spec.strength, expert))
    par, ranks = _start_ranks(a, (p.cfg if a.cfg is None else a.cfg) != 1.0)
    try:
        rc = _generate(a, out, verdict, preset, dit_path, width, height, frames, loras, par)
    except BaseException:
        _end_ranks(ranks, failed=True)
        raise
    _end_ranks(ranks)
    return rc


def _start_ranks(a, guidance: bool):
    """The run's layout (``--parallel`` ranks, or torchrun's world) and this process's place in it; starts the other
    ranks when this process was not launched by torchrun. Only rank 0 prints."""
    from .model.errors import SpacetimeValueError
    from .model.parallel import Layout, env_world, setup, spawn_ranks
    launched = env_world()
    if launched > 1 and a.parallel not in (1, launched):
        raise CliError(f"--parallel {a.parallel} differs from the launcher's WORLD_SIZE={launched}")
    world = max(launched, a.parallel)
    try:
        layout = Layout.choose(world, guidance, a.cfg_parallel)
    except SpacetimeValueError as exc:
        raise CliError(f"--parallel {world} --cfg-parallel {a.cfg_parallel}: {exc}") from None
    if world == 1:
        return None, None
    import torch
    wants_cuda = a.device.startswith("cuda") or (a.device == "auto" and torch.cuda.is_available())
    if wants_cuda and world > torch.cuda.device_count():
        raise CliError(f"--parallel {world}: only {torch.cuda.device_count()} GPUs are visible")
    ranks = spawn_ranks(world, a.argv) if launched == 1 else None
    try:
        par = setup(layout, a.device)
    except BaseException:
        _end_ranks(ranks, failed=True)
        raise
    return par, ranks


def _end_ranks(ranks, failed: bool = False):
    from .model.parallel import teardown
    if ranks is not None and failed:
        ranks.stop()
    teardown()
    if ranks is not None and not failed and not ranks.wait():
        ranks.stop()


def _generate(a, out, verdict, preset, dit_path, width, height, frames, loras, par) -> int:
    from .model.errors import SpacetimeValueError
    from .model.parallel import Layout
    from . import cli_long
    from .model.pipeline import Spacetime
    from .nodes import host
    main_rank = par is None or par.is_main
    try:
        st = Spacetime.load(preset, dit=dit_path, vae=a.vae, text_encoder=a.text_encoder, tokenizer=a.tokenizer,
                            dtype=a.dtype, device=str(par.device) if par is not None else a.device,
                            dit_low_noise=a.dit_low_noise, offload_blocks=a.offload_blocks, loras=loras,
                            lora_mode=a.lora_mode)
    except SpacetimeValueError as exc:
        raise CliError(str(exc)) from None
    st.parallel = par
    st.check_cancel = host.check_interrupted
    if st.dit_path is None and "dit" not in st.builders:
        raise CliError(f"--model {a.model!r}: this preset has no DiT file of its own; give the checkpoint instead, "
                       f"--model PATH (its preset is inferred; Wan 2.2 A14B: the high-noise expert, with "
                       f"--dit-low-noise PATH)")
    if st.needs_known_frames and not (a.image or a.extend):
        raise CliError(f"--model {a.model!r}: {st.preset.name} is an image-to-video model; give --image (or "
                       f"--extend)")
    try:                                    # read and check the weights (and LoRAs) before any other work
        dits = [("high-noise expert" if st.has_experts else "DiT", st.dit, dit_path)]
        if st.has_experts:
            dits.append(("low-noise expert", st.dit_low, a.dit_low_noise))
    except SpacetimeValueError as exc:
        raise CliError(str(exc)) from None
    for label, module, path in dits:
        fmt = getattr(module, "checkpoint_format", None)
        if fmt and main_rank:
            print(f"{label} {Path(path).name if path else st.preset.name}: {fmt}", file=sys.stderr)
    for spec in loras if main_rank else []:
        on = {"both": ", both experts", "high_noise": ", high-noise expert", "low_noise": ", low-noise expert"}
        print(f"LoRA {st.lora_file(spec.path).describe()}, strength {spec.strength:g}"
              f"{on[spec.expert] if st.has_experts else ''}", file=sys.stderr)
    p = st.preset
    if cli_long.wanted(a):
        bar = TerminalProgress()
        host.set_progress_hook(bar)
        return cli_long.run(a, st, out, width, height, bar)
    kwargs = {}
    ingredients = []
    from .nodes.latent_nodes import _resize_cover
    from .nodes.media_nodes import read_media
    if a.image:
        img, _ = read_media(Path(a.image))
        kwargs.update(image=_resize_cover(img[:1], width, height)[0], image_position=a.image_position)
        ingredients.append(a.image)
    if a.extend:
        clip, _ = read_media(Path(a.extend))
        kwargs.update(extend=_resize_cover(clip, width, height), direction=a.direction)
        ingredients.append(a.extend)
        if a.after:
            after, _ = read_media(Path(a.after))
            kwargs.update(after=_resize_cover(after, width, height))
            ingredients.append(a.after)
    steps = a.steps or p.steps
    cfg = p.cfg if a.cfg is None else a.cfg
    shift = a.shift or p.shift
    if st.has_experts:
        try:
            kwargs.update(switch=st.expert_switch(a.expert_boundary or None, a.expert_switch_step or None),
                          cfg_high_noise=a.cfg_high_noise)
        except SpacetimeValueError as exc:
            raise CliError(str(exc)) from None
    cache = None
    if a.step_cache > 0:
        from .model.cache import CacheSettings, StepCache
        cache = StepCache(CacheSettings(threshold=a.step_cache))
    bar = TerminalProgress()
    if main_rank:
        host.set_progress_hook(bar)
    t0 = time.time()
    try:
        video = st.generate(a.prompt, a.negative, width=width, height=height, frames=frames, steps=steps, cfg=cfg,
                            shift=shift, seed=a.seed, sampler=a.sampler, expand_prompt=not a.no_expand,
                            callback=(lambda i, n, x0, x: bar(i, n, "denoise")) if main_rank else None,
                            decode_progress=lambda i, n: bar(i, n, "decode"), cache=cache,
                            frame_cfg=a.frame_guidance, contrast=a.contrast, contrast_cfg=a.contrast_guidance,
                            **kwargs)
    except SpacetimeValueError as exc:
        raise CliError(str(exc)) from None
    if video is None:                                    # ranks other than 0 stop after sampling
        return 0
    gen_time = time.time() - t0
    frames_out = video[0]
    from .safety import check_frames
    report = check_frames(frames_out)
    if report.blocked:
        raise CliError(f"generated frames withheld by the safety policy: {report.summary()}", EXIT_BLOCKED)
    from .provenance import stamp_video
    info = {"model": p.name, "checkpoint_sha256": st.checkpoint_sha256(), "seed": a.seed, "steps": steps,
            "cfg": cfg, "shift": shift, "sampler": a.sampler, "frames": int(frames_out.shape[0]),
            "width": int(frames_out.shape[2]), "height": int(frames_out.shape[1]),
            "expanded_prompt": st.expand(a.prompt) if not a.no_expand else a.prompt, **st.weights_record(),
            "parallel": (par.layout if par is not None else Layout()).to_dict()}
    if cache is not None:
        info["step_cache"] = cache.summary()
    if "image" in kwargs or "extend" in kwargs:
        info.update(frame_cfg=st.frame_guidance(a.frame_guidance), frame_cfg_stop=p.frame_cfg_stop)
    contrast = a.contrast if a.contrast is not None else st.contrast_for(a.prompt)
    contrast_cfg = st.contrast_guidance(a.contrast_guidance, "image" in kwargs or "extend" in kwargs)
    if contrast.strip() and contrast_cfg > 0:
        info.update(contrast=st.expand(contrast) if a.contrast is not None and not a.no_expand else contrast,
                    contrast_cfg=contrast_cfg, contrast_cfg_stop=p.contrast_cfg_stop)
    if st.has_experts:
        info.update(st.expert_info(steps, shift, kwargs["switch"], a.cfg_high_noise, cfg))
    result = stamp_video(frames_out, out, fps=a.fps or p.fps, generation=info, prompt=a.prompt,
                         include_prompt=a.include_prompt, ingredients=ingredients,
                         safety_reports=[verdict.to_dict(), report.to_dict()])
    final = result.get("path", str(out)) if isinstance(result, dict) else str(out)
    notes = [f"{gen_time:.1f}s"]
    if par is not None:
        notes.append(f"parallel: {par.layout}")
    if cache is not None:
        notes.append(f"step cache: skipped {cache.skipped} of {cache.skipped + cache.computed} model calls")
    print(f"wrote {final} ({frames_out.shape[0]} frames, {frames_out.shape[2]}x{frames_out.shape[1]}, "
          f"{', '.join(notes)})")
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# run / verify / eval
# ----------------------------------------------------------------------------------------------------------------------

def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_run(a) -> int:
    from .nodes import host
    from .runner import WorkflowError, run_workflow
    if not Path(a.workflow).is_file():
        raise CliError(f"workflow {a.workflow!r}: file not found")
    overrides = {}
    for item in a.set or []:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise CliError(f"--set {item!r}: expected NODE_ID.INPUT=VALUE")
        overrides[key] = _parse_value(value)
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        os.environ["SPACETIME_OUTPUT_DIR"] = str(Path(a.out).absolute())
    host.set_progress_hook(TerminalProgress())
    try:
        results = run_workflow(a.workflow, overrides)
    except (WorkflowError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for nid, r in results.items():
        ui = r.get("ui") or {}
        for key in ("files", "videos", "gifs", "images"):
            for item in ui.get(key, []) or []:
                if isinstance(item, dict) and item.get("type", "output") == "output" and "filename" in item:
                    print(f"node {nid}: {Path(host.output_directory()) / item.get('subfolder', '') / item['filename']}")
    return 0


def cmd_verify(a) -> int:
    from .provenance import format_report, verify_file
    if not Path(a.path).is_file():
        raise CliError(f"{a.path!r}: file not found")
    report = verify_file(a.path)
    print(json.dumps(report, indent=1, default=str) if a.json else format_report(report))
    return 0


def cmd_eval(a) -> int:
    if a.drift and a.storyboard:
        raise CliError("--drift and --storyboard are separate evaluations; give one")
    from .toyworld.eval import main as eval_main
    if a.drift:
        from .toyworld.drift import main as eval_main
    elif a.storyboard:
        from .toyworld.storyboard_eval import main as eval_main
    if a.parts and (a.drift or a.storyboard):
        raise CliError("--parts chooses parts of the prompt evaluation; --drift and --storyboard have none")
    args = []
    if a.quick:
        args.append("--quick")
    if a.report:
        args += ["--report", a.report]
    if a.dit:
        args += ["--dit", a.dit]
    if a.vae:
        args += ["--vae", a.vae]
    if a.dit_low_noise:
        args += ["--dit-low-noise", a.dit_low_noise]
    if a.parts:
        args += ["--parts", a.parts]
    from .toyworld.drift import PRESET_OPTIONS
    for name in PRESET_OPTIONS:                          # the sampling options, passed on as given
        if getattr(a, name) is not None:
            args += [f"--{name.replace('_', '-')}", str(getattr(a, name))]
    return eval_main(args) or 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default. Options whose default is "not given" say in their own help what
    happens then; flags show ``(default: off)``."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default is argparse.SUPPRESS or not action.option_strings \
                or action.required:
            return text
        if action.default == "":
            return text + " (default: empty)"
        if action.default is None:
            return text + " (default: none)"
        if action.default is False and action.nargs == 0:
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def _parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="spacetime", description="Spacetime video generation (headless).",
                                 formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    g = _parser(sub, "generate", "text/image-to-video or extension, written as a C2PA-signed MP4")
    g.add_argument("prompt", nargs="?", help="what the video shows (with --shot: a caption put before every shot)")
    g.add_argument("--negative", default="", help="what the video should not show (the model's own negative "
                   "prompt is used when empty)")
    g.add_argument("--image", metavar="PATH", help="animate this image (png/jpg)")
    g.add_argument("--image-position", choices=("start", "end"), default="start",
                   help="where the --image is held: the first or the last frame")
    g.add_argument("--extend", metavar="VIDEO", help="extend this video")
    g.add_argument("--after", metavar="VIDEO", help="with --direction fill: the clip after the gap")
    g.add_argument("--direction", choices=("forward", "backward", "fill"), default="forward",
                   help="with --extend: add frames after the clip, before it, or between it and --after")
    g.add_argument("--frames", type=int, metavar="N", help="frames of the video, 1 + 4k; with --extend: new frames to "
                   "add (default: the model's, 17 for toyworld; 16 with --extend)")
    g.add_argument("--width", type=int, metavar="PX", help="width in pixels, a multiple of 16 (default: the "
                   "model's, 64 for toyworld)")
    g.add_argument("--height", type=int, metavar="PX", help="height in pixels, a multiple of 16 (default: the "
                   "model's, 64 for toyworld)")
    g.add_argument("--fps", type=float, default=0, help="frames per second of the MP4; 0 = the model's default "
                   "(8 for toyworld)")
    g.add_argument("--steps", type=int, default=0, help="sampling steps, 1..500; 0 = the model's default "
                   "(20 for toyworld)")
    g.add_argument("--cfg", type=float, metavar="SCALE", help="classifier-free guidance scale, >= 1 (1 turns "
                   "guidance off) (default: the model's, 5 for toyworld)")
    g.add_argument("--shift", type=float, default=0, help="timestep shift, > 0: higher spends more steps at "
                   "high noise; 0 = the model's default (3 for toyworld)")
    g.add_argument("--sampler", choices=("unipc", "euler"), default="unipc", help="flow-matching solver")
    g.add_argument("--seed", type=int, default=0, help="noise seed: one seed gives one video on any device")
    g.add_argument("--model", default="toyworld", help="preset name or a DiT checkpoint file: safetensors (bf16, "
                   "fp16, fp8 e4m3fn/e5m2, scaled or not), GGUF or .pth")
    g.add_argument("--lora", action="append", metavar="FILE[:STRENGTH]", help="apply a LoRA to the DiT at STRENGTH "
                   "(1 when left out); repeat for several; with two experts (--dit-low-noise) it goes on both "
                   "(default: none)")
    g.add_argument("--lora-high-noise", action="append", metavar="FILE[:STRENGTH]", help="two experts: a LoRA on the "
                   "high-noise expert only (Wan 2.2 LoRAs made per expert); repeat for several (default: none)")
    g.add_argument("--lora-low-noise", action="append", metavar="FILE[:STRENGTH]", help="two experts: a LoRA on the "
                   "low-noise expert only; repeat for several (default: none)")
    g.add_argument("--lora-mode", choices=("auto", "merged", "unmerged"), default="auto",
                   help="auto: merged into full-precision weights, at run time beside quantised ones; merged: "
                        "always merged; unmerged: at run time, weights untouched")
    g.add_argument("--vae", metavar="PATH", help="VAE file for Wan presets (default: the preset's file)")
    g.add_argument("--text-encoder", metavar="PATH", help="text encoder file for Wan presets (default: the "
                   "preset's file)")
    g.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json of the text encoder for Wan presets "
                   "(default: the preset's file)")
    g.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="weights and compute "
                   "precision (bf16 on a GPU)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (a GPU when there is one)")
    g.add_argument("--dit-low-noise", metavar="PATH", help="Wan 2.2 A14B: the low-noise expert's file (any format "
                   "--model takes); --model is then the high-noise expert's file (default: none, a single DiT)")
    g.add_argument("--expert-boundary", type=float, default=0.0, metavar="SIGMA", help="two experts: the noise "
                   "level below which the low-noise expert takes over (default: 0 = the preset's, 0.875 "
                   "text-to-video / 0.9 image-to-video)")
    g.add_argument("--expert-switch-step", type=int, default=0, metavar="N", help="two experts: switch after N "
                   "steps instead of at the boundary (default: 0 = at the boundary)")
    g.add_argument("--cfg-high-noise", type=float, metavar="G", help="two experts: guidance of the high-noise "
                   "expert; --cfg is the low-noise expert's (default: the preset's, 4.0 for wan2.2-t2v-a14b)")
    g.add_argument("--frame-guidance", type=float, metavar="G", help="with known frames (--image, --extend, "
                   "long videos, storyboard references): pull the new frames towards what the known ones imply, for "
                   "smoother seams; one more model pass per step down to the model's noise level for it (0.3 for "
                   "toyworld); 0 = off (default: the model's, 2.5 for toyworld, off for Wan presets)")
    g.add_argument("--contrast", metavar="TEXT", help="contrast prompt: the prompt with the one detail changed that "
                   "the video must not show (e.g. 'moves left' for a ball that must move right); \"\" = none "
                   "(default: the one the model writes; toyworld: the opposite of each stated motion; Wan: none)")
    g.add_argument("--contrast-guidance", type=float, metavar="C", help="push the video away from the contrast "
                   "prompt; one more model pass per step down to the model's noise level for it (0.5 for toyworld); "
                   "0 = off (default: the model's, 3 for toyworld text-to-video and off with --image or --extend, "
                   "off for Wan presets)")
    g.add_argument("--offload-blocks", type=int, default=0, metavar="N", help="low VRAM: keep N transformer "
                   "blocks in CPU memory and stream each to the GPU when it runs (default: 0 = all on the GPU)")
    g.add_argument("--step-cache", type=float, default=0.0, metavar="THRESHOLD",
                   help="skip the transformer's blocks on steps whose input changed little, reusing the last "
                   "computed step's residual; THRESHOLD is the largest predicted relative change that may be skipped "
                   "(0.05-0.2 useful) (default: 0 = off)")
    g.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="split sampling across N processes on this machine (GPUs: one each, NCCL; CPU: gloo): the "
                   "video's tokens across ranks, and with guidance cond/uncond on two rank groups; rank 0 writes "
                   "the video (default: 1; under torchrun the launcher's world size)")
    g.add_argument("--cfg-parallel", choices=("auto", "on", "off"), default="auto",
                   help="with --parallel: run cond and uncond passes on separate rank groups (auto: when guidance "
                   "is on and N is even)")
    g.add_argument("--no-expand", action="store_true", help="do not expand the prompt (embedded model)")
    g.add_argument("--include-prompt", action="store_true", help="write the prompt text into the C2PA manifest "
                   "(otherwise only its SHA-256)")
    g.add_argument("--out", required=True, metavar="PATH.mp4", help="the video to write; an existing file is "
                   "never overwritten (required)")
    from .cli_long import add_arguments
    add_arguments(g)
    g.set_defaults(func=cmd_generate)
    r = _parser(sub, "run", "run a workflow JSON (UI or API format) headless")
    r.add_argument("workflow", help="workflow JSON file")
    r.add_argument("--set", action="append", metavar="NODE_ID.INPUT=VALUE",
                   help="change one input of one node (repeatable); VALUE is read as JSON, else as text")
    r.add_argument("--out", metavar="DIR", help="output folder (default: $SPACETIME_OUTPUT_DIR, else ./output)")
    r.set_defaults(func=cmd_run)
    v = _parser(sub, "verify", "check an MP4's C2PA manifest and invisible watermark")
    v.add_argument("path", help="the MP4 file")
    v.add_argument("--json", action="store_true", help="print the full report as JSON")
    v.set_defaults(func=cmd_verify)
    e = _parser(sub, "eval", "evaluate the embedded model on held-out prompts")
    e.add_argument("--quick", action="store_true", help="fewer prompts and one seed")
    e.add_argument("--report", metavar="PATH", help="also write the results as Markdown to PATH, a new file")
    e.add_argument("--drift", action="store_true", help="evaluate long-video drift over 10 windows, from the prompt "
                   "or the first frame, with and without an anchor frame, instead")
    e.add_argument("--storyboard", action="store_true", help="evaluate multi-shot videos (cuts, per-shot prompts, "
                   "identity across cuts) instead")
    e.add_argument("--dit", metavar="PATH", help="a DiT safetensors file to evaluate in place of the embedded one, "
                   "e.g. a training run's dit_ema.safetensors (default: the embedded DiT)")
    e.add_argument("--vae", metavar="PATH", help="a VAE safetensors file to evaluate in place of the embedded one, "
                   "e.g. a decoder fine-tune's vae.safetensors (default: the embedded VAE)")
    e.add_argument("--dit-low-noise", metavar="PATH", help="a low-noise expert DiT file: the model evaluated has two "
                   "experts, this one sampling the steps below --expert-boundary (default: none)")
    e.add_argument("--expert-boundary", type=float, metavar="SIGMA", help="the noise level (0..1] where the low-noise "
                   "expert takes over (default: the model's)")
    e.add_argument("--parts", metavar="LIST", help="comma-separated parts of the prompt evaluation: seen, single, "
                   "pairs, occlusion, i2v, extension, fill (default: all)")
    e.add_argument("--cfg", type=float, metavar="SCALE", help="guidance scale of every generation (default: the "
                   "model's, 5 for the embedded one)")
    e.add_argument("--shift", type=float, metavar="SHIFT", help="sampler noise-schedule shift of every generation, "
                   "> 0 (default: the model's)")
    e.add_argument("--frame-cfg", type=float, metavar="G", help="frame guidance of every generation from known "
                   "frames, >= 0 (0 = off; default: the model's, 2.5 for the embedded one)")
    e.add_argument("--frame-cfg-stop", type=float, metavar="SIGMA", help="the noise level (0..1) below which frame "
                   "guidance stops (0 = every step; default: the model's)")
    e.add_argument("--contrast-cfg", type=float, metavar="C", help="contrast guidance of every generation with a "
                   "contrast prompt and no known frames (the model's default, which stays off with known frames), "
                   ">= 0 (0 = off; default: the model's, 3 for the embedded one)")
    e.add_argument("--contrast-cfg-stop", type=float, metavar="SIGMA", help="the noise level (0..1) below which "
                   "contrast guidance stops (0 = every step; default: the model's)")
    e.set_defaults(func=cmd_eval)
    return ap


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    quiet = os.environ.get("RANK", "0") != "0"          # a multi-rank run: only rank 0 prints
    if quiet:
        sys.stdout = open(os.devnull, "w")
    try:
        return args.func(args)
    except CliError as exc:
        if not quiet:
            print(f"spacetime: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:                              # unreadable files and folders
        print(f"spacetime: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as exc:                           # our input errors (SpacetimeValueError and kin)
        from .model.errors import SpacetimeValueError
        if not isinstance(exc, SpacetimeValueError):
            raise
        print(f"spacetime: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if not quiet:
            print("spacetime: cancelled", file=sys.stderr)
        return 130
    finally:                                            # the terminal bar is the progress hook of one command only
        host = sys.modules.get(f"{__package__}.nodes.host")
        if host is not None:
            host.set_progress_hook(None)


if __name__ == "__main__":
    sys.exit(main())
