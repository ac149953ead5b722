"""Train the embedded toy-world model: the causal VAE, a dataset of its latents, the DiT, then export to weights/.

    python -m spacetime.toyworld.train all --out RUN            # the whole recipe; re-run the same command to resume
    python -m spacetime.toyworld.train vae      --out RUN/vae
    python -m spacetime.toyworld.train decoder  --vae RUN/vae --out RUN/vae_dec
    python -m spacetime.toyworld.train encode   --vae RUN/vae --out RUN/data
    python -m spacetime.toyworld.train dit      --data RUN/data --vae RUN/vae --out RUN/dit
    python -m spacetime.toyworld.train encode-stories --vae RUN/vae --out RUN/stories   # multi-shot stories
    python -m spacetime.toyworld.train dit      --data RUN/data --stories RUN/stories --set story_frac=0.5 ...
    python -m spacetime.toyworld.train shipped-vae --out RUN/vae     # the shipped VAE as a VAE folder
    python -m spacetime.toyworld.train overfit  --vae RUN/vae --out RUN/overfit   # the 32-clip sanity check
    python -m spacetime.toyworld.train average  --dit weights --dit RUN/dit --weight 0.5 --out RUN/avg
    python -m spacetime.toyworld.train export   --vae RUN/vae_dec --dit RUN/dit [--ship]
    python -m spacetime.toyworld.train export   --i2v --dit RUN/dit [--ship]   # image-to-video weights
    python -m spacetime.toyworld.train probe    --dit RUN/dit --vae RUN/vae_dec --seeds 4   # default: the shipped

Run state lives in RUN (default: ``$SPACETIME_RUNS`` or the user's cache folder), never in the repository. When a
stage finds no state, ``all`` warm-starts from the shipped weights where they fit (the VAE is then reused as it is,
so the shipped DiT's latent space stays valid). ``export --ship`` writes into weights/ only when the new weights'
probe (every prompt with four noises) beats the same probe run again on the shipped ones. On a CUDA machine the
stages use bf16 autocast, larger batches and the time limits of ``--budget-minutes`` so the recipe fits a short GPU
rental.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..model.conditioning import valid_frames
from ..model.config import config_to_dict
from ..model.embedded import DIT_FILE, I2V_DIT_FILE, META, VAE_FILE, WEIGHTS_DIR
from ..model.loading import read_state_dict, write_safetensors_atomic
from .runs import clips_to_tensor, default_run_dir
from .train_dit import DitRecipe, encode_dataset, train_dit
from .train_shots import encode_stories
from .train_vae import TOY_VAE, load_trained_vae, train_vae
from .world import random_clip


# ----------------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------------

# The ship rule's yardstick: every prompt asked with this many noises, the same probe run on the candidate and on
# the weights already shipped. One noise moved "all" by ~3 points between two runs of the same weights; two noises
# left the score of two CPU stages ~0.8 points apart where four put them 0.2 apart.
SHIP_SEEDS = 4


def ship_score(probe: dict) -> float:
    """One number from a probe (``probe_weights``' result): the mean of its verdict rates (object drawn, colour,
    shape, background, clean picture, motion, relation, all), each averaged over the probe's rows. Every verdict
    counts, so progress on any attribute shows and a loss on another one is charged; "all" alone is a few percent
    for today's weights and moves by more than the differences between them from noise to noise."""
    vals = list(probe["mean"].values())                     # probe_weights' "mean" holds rates only (no "n")
    return float(np.mean(vals)) if vals else 0.0


def _write_meta(meta_path: Path, meta: dict) -> None:
    """A JSON file (embedded.json, a run's dit.json), replaced atomically (a temporary file moved into place)."""
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(meta_path)


def _has_weights(folder: Path) -> bool:
    return all((Path(folder) / f).exists() for f in ("embedded.json", DIT_FILE.name, VAE_FILE.name))


def export(vae_dir: Path, dit_dir: Path, out: Path, ship: bool = False, dtype=torch.float16,
           seeds: int = SHIP_SEEDS, probe: Optional[dict] = None, **probe_kw) -> bool:
    """Write embedded_dit.safetensors, embedded_vae.safetensors (fp16) and embedded.json to ``out``, with the probe
    of the exported weights (``probe_weights`` with ``seeds`` noises a prompt; ``probe``: one already made). With
    ``ship``, only when that probe's ``ship_score`` beats the same probe run on the weights already in ``out``
    (probed again, never read from their record, so both sides are measured by the same probe code and seeds).
    ``probe_kw`` goes to ``probe_weights`` (e.g. fewer ``sets`` for a quick check). Returns whether it wrote."""
    from ..model.errors import SpacetimeValueError
    out = Path(out)
    for opt, folder, files, hint in (
            ("dit", dit_dir, ("dit.json", "dit_ema.safetensors"), "a DiT run folder of `train dit`"),
            ("vae", vae_dir, ("vae.json", "vae.safetensors"),
             "a VAE folder of `train vae` / `decoder`, or `train shipped-vae --out FOLDER` to keep the shipped VAE")):
        missing = [f for f in files if not (Path(folder) / f).is_file()]
        if missing:
            raise SpacetimeValueError(f"--{opt} {folder}: lacks {' and '.join(missing)}; allowed {hint}")
    dmeta = json.loads((Path(dit_dir) / "dit.json").read_text())
    _, vcfg = load_trained_vae(vae_dir)                      # a broken VAE folder fails here, before any probe
    meta_path = out / "embedded.json"
    old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    new = probe if probe is not None else probe_weights(dit_dir, vae_dir, seeds=seeds, **probe_kw)
    if ship and _has_weights(out):
        shipped = probe_weights(out, out, seeds=seeds, **probe_kw)
        new_score, old_score = ship_score(new), ship_score(shipped)
        print(f"probe score (mean verdict rate, {seeds} noises a prompt): candidate {new_score:.4f}, "
              f"shipped {old_score:.4f}")
        print("verdicts, candidate / shipped: " + ", ".join(
            f"{k} {100 * v:.1f} / {100 * shipped['mean'].get(k, float('nan')):.1f}" for k, v in new["mean"].items()))
        if new_score <= old_score:
            print(f"not shipped: probe {new_score:.4f} does not beat the shipped {old_score:.4f}")
            return False
    vsd = read_state_dict(Path(vae_dir) / "vae.safetensors")
    dsd = read_state_dict(Path(dit_dir) / "dit_ema.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic({k: v.to(dtype) for k, v in dsd.items()}, out / "embedded_dit.safetensors",
                             overwrite=True)
    write_safetensors_atomic({k: v.to(dtype) for k, v in vsd.items()}, out / "embedded_vae.safetensors",
                             overwrite=True)
    vmeta = json.loads((Path(vae_dir) / "vae.json").read_text())
    meta = dict(old)
    meta.update({"dit": dmeta["config"], "vae": config_to_dict(vcfg), "text_encoder": "all-MiniLM-L6-v2",
                 "dit_steps": int(dmeta["step"]), "probe": new, "probe_seeds": int(seeds),
                 "vae_recon": {k: v for k, v in vmeta.items() if k.startswith("recon")},
                 "latent_rgb": fit_latent_rgb(vae_dir)})
    _write_meta(meta_path, meta)
    print(f"exported to {out} (probe score {ship_score(new):.4f})")
    return True


# The image-to-video weights' yardstick: the evaluation's image-to-video part (12 ground-truth scenes, the same scenes
# asked the opposite way, and each scene's object centred and asked the four ways: 84 clips). Its score is the mean
# of the three motion rates; a first frame under I2V_MIN_PSNR scores 0 (the image must be kept).
I2V_RATES = ("i2v_motion", "i2v_swapped", "i2v_centred")
I2V_MIN_PSNR = 30.0


def i2v_score(fig: dict) -> float:
    """One number from the evaluation's image-to-video figures (``eval_i2v``)."""
    if float(fig["i2v_psnr"]) < I2V_MIN_PSNR:
        return 0.0
    return float(np.mean([float(fig[k]) for k in I2V_RATES]))


def eval_i2v(dit_file: Path, quick: bool = False) -> dict:
    """The evaluation's image-to-video part on a DiT file of the embedded architecture (with the shipped VAE)."""
    from ..model.pipeline import Spacetime
    from .eval import evaluate
    st = Spacetime.load("toyworld", dit=Path(dit_file), device="cpu")
    res, _ = evaluate(st, quick=quick, parts=("i2v",), log=lambda *a: None)
    return {k: v for k, v in res.items() if k != "rows"}


def export_i2v(dit_dir: Path, out: Path = WEIGHTS_DIR, ship: bool = False, dtype=torch.float16,
               figures: Optional[dict] = None, quick: bool = False, evaluate=eval_i2v) -> bool:
    """Write a DiT run's EMA weights as the image-to-video weights (``embedded_i2v_dit.safetensors``, preset
    ``toyworld-i2v``) into the weights folder ``out``, which must hold the embedded model (same architecture and
    VAE), with their image-to-video figures in embedded.json's "i2v". With ``ship``, only when their ``i2v_score``
    beats the same evaluation run on the image-to-video weights already there, or on the text-to-video weights
    when there are none. Returns whether it wrote."""
    from ..model.errors import SpacetimeValueError
    out, dit_dir = Path(out), Path(dit_dir)
    meta_path = out / "embedded.json"
    if not _has_weights(out):
        raise SpacetimeValueError(f"--out {out}: not a weights folder of the embedded model (allowed: a folder "
                                  f"holding embedded.json, {DIT_FILE.name} and {VAE_FILE.name})")
    if not ((dit_dir / "dit.json").exists() and (dit_dir / "dit_ema.safetensors").exists()):
        raise SpacetimeValueError(f"--dit {dit_dir}: allowed a DiT run folder (dit.json and dit_ema.safetensors)")
    dmeta = json.loads((dit_dir / "dit.json").read_text())
    meta = json.loads(meta_path.read_text())
    if dmeta["config"] != meta["dit"]:
        raise SpacetimeValueError(f"--dit {dit_dir}: its DiT config differs from the embedded model's in "
                                  f"{meta_path}; the image-to-video weights share the architecture and VAE")
    new = figures if figures is not None else evaluate(dit_dir / "dit_ema.safetensors", quick=quick)
    if ship:
        base = out / I2V_DIT_FILE.name
        base = base if base.exists() else out / DIT_FILE.name
        old = evaluate(base, quick=quick)
        print(f"image-to-video score (mean of {', '.join(I2V_RATES)}): candidate {i2v_score(new):.4f}, "
              f"{base.name} {i2v_score(old):.4f}")
        print("figures, candidate / shipped: " + ", ".join(
            f"{k} {float(new[k]):.3f} / {float(old[k]):.3f}" for k in ("i2v_psnr", *I2V_RATES, "i2v_both_ways")))
        if i2v_score(new) <= i2v_score(old):
            print(f"not shipped: {i2v_score(new):.4f} does not beat {base.name}'s {i2v_score(old):.4f}")
            return False
    dsd = read_state_dict(dit_dir / "dit_ema.safetensors")
    write_safetensors_atomic({k: v.to(dtype) for k, v in dsd.items()}, out / I2V_DIT_FILE.name, overwrite=True)
    meta["i2v"] = {"dit_steps": int(dmeta["step"]), "eval": new, "quick": bool(quick)}
    _write_meta(meta_path, meta)
    print(f"exported the image-to-video weights to {out / I2V_DIT_FILE.name} (score {i2v_score(new):.4f})")
    return True


def average_dits(first: Path, second: Path, weight: float, out: Path) -> Path:
    """Interpolate two DiTs of one configuration: ``(1 - weight) * first + weight * second``, each a DiT run folder
    (dit.json + dit_ema.safetensors) or a weights folder, written to the new run folder ``out`` (its dit.json names
    both sources), which export, probe and the evaluations take like any run's. Fine-tunes of one starting point
    average into weights that keep part of each one's gains (a "model soup"). Refused before anything is written: a
    weight outside 0..1, configurations or tensors that differ, or an ``out`` that already holds a DiT."""
    from ..model.errors import SpacetimeValueError
    w = float(weight)
    if not (np.isfinite(w) and 0.0 <= w <= 1.0):
        raise SpacetimeValueError(f"--weight {weight}: allowed 0..1 (the second DiT's share)")
    out = Path(out)
    taken = [f for f in ("dit.json", "dit_ema.safetensors") if (out / f).exists()]
    if taken:
        raise SpacetimeValueError(f"--out {out}: already holds {' and '.join(taken)}; give a new folder "
                                  "(averaging never overwrites a DiT)")
    parts = [_config_and_weights(p, "dit", "a DiT run folder", ("dit.json", "dit_ema.safetensors"), "dit",
                                 DIT_FILE.name) for p in (first, second)]
    (ca, fa), (cb, fb) = parts
    if ca != cb:
        diff = sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k))
        raise SpacetimeValueError(f"--dit {first} and --dit {second}: configurations differ in {', '.join(diff)}; "
                                  "allowed two DiTs of one configuration")
    sa, sb = read_state_dict(fa), read_state_dict(fb)
    bad = sorted(set(sa) ^ set(sb)) or sorted(k for k in sa if sa[k].shape != sb[k].shape)
    if bad:
        raise SpacetimeValueError(f"--dit {first} and --dit {second}: tensors differ ({', '.join(bad[:3])}"
                                  f"{', ...' if len(bad) > 3 else ''}); allowed two DiTs of one configuration")
    avg = {k: torch.lerp(sa[k].float(), sb[k].float(), w) for k in sa}

    def steps(path: Path) -> int:
        path = Path(path)
        if (path / "dit.json").exists():
            return int(json.loads((path / "dit.json").read_text()).get("step", 0))
        return int(json.loads((path / "embedded.json").read_text()).get("dit_steps", 0))

    out.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(avg, out / "dit_ema.safetensors")
    meta = {"config": ca, "step": max(steps(first), steps(second)),
            "average": {"first": str(first), "second": str(second), "weight": w}}
    _write_meta(out / "dit.json", meta)
    return out


@torch.no_grad()
def fit_latent_rgb(vae_dir: Path, n_clips: int = 64, seed: int = 5) -> dict:
    """A linear map from raw latent channels to RGB in [-1, 1] (least squares against the pooled pixels of the
    frame each latent frame starts at), used for the cheap previews shown while sampling."""
    vae, cfg = load_trained_vae(vae_dir)
    rng = np.random.default_rng(seed)
    sf, tf = cfg.spatial_factor, cfg.temporal_factor
    xs, ys = [], []
    for _ in range(n_clips // 8):
        x = clips_to_tensor([random_clip(int(rng.integers(2 ** 31)), 9, 64, 64) for _ in range(8)])
        mu = vae.encode_raw(x)                                                   # B C F' h w
        pooled = F.avg_pool3d(x[:, :, ::tf], (1, sf, sf))                        # frame 0, tf, 2tf, ...
        xs.append(mu.permute(0, 2, 3, 4, 1).reshape(-1, mu.shape[1]))
        ys.append(pooled.permute(0, 2, 3, 4, 1).reshape(-1, 3))
    X, Y = torch.cat(xs).double(), torch.cat(ys).double()
    X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    sol = torch.linalg.lstsq(X1, Y).solution                                     # [C+1, 3]
    return {"weight": [[round(v, 5) for v in row] for row in sol[:-1].T.tolist()],
            "bias": [round(v, 5) for v in sol[-1].tolist()]}


# ----------------------------------------------------------------------------------------------------------------------
# The probe on trained weights
# ----------------------------------------------------------------------------------------------------------------------

def _config_and_weights(path: Path, opt: str, run_folder: str, run_files: tuple, weights_key: str,
                        weights_file: str) -> tuple:
    """(config dict, weights file) of one part in a run folder (``run_files``: its JSON, whose "config" it reads, and
    its safetensors) or in a weights folder (embedded.json's ``weights_key`` and ``weights_file``)."""
    from ..model.errors import SpacetimeValueError
    path = Path(path)
    meta, weights = run_files
    if (path / meta).exists() and (path / weights).exists():
        return json.loads((path / meta).read_text())["config"], path / weights
    if (path / "embedded.json").exists() and (path / weights_file).exists():
        return json.loads((path / "embedded.json").read_text())[weights_key], path / weights_file
    raise SpacetimeValueError(f"--{opt} {path}: allowed {run_folder} ({meta} and {weights}) or a weights folder "
                              f"(embedded.json and {weights_file})")


def _load_probe_parts(dit_path: Path, vae_path: Path):
    """(DiT, VAE) from a DiT run folder (dit.json + dit_ema.safetensors) or a weights folder (embedded.json +
    embedded_dit.safetensors), and a VAE folder (vae.json + vae.safetensors) or a weights folder. Errors name the
    folder and what it lacks, before anything is loaded."""
    from ..model.config import DiTConfig, config_from_dict
    from ..model.dit import build_dit
    from .train_vae import vae_from_config
    dcfg, dfile = _config_and_weights(dit_path, "dit", "a DiT run folder", ("dit.json", "dit_ema.safetensors"),
                                      "dit", DIT_FILE.name)
    vcfg, vfile = _config_and_weights(vae_path, "vae", "a VAE folder", ("vae.json", "vae.safetensors"),
                                      "vae", VAE_FILE.name)
    dit = build_dit(config_from_dict(DiTConfig, dcfg))
    dit.load_state_dict(read_state_dict(dfile))
    return dit.eval(), vae_from_config(vcfg, vfile)[0]


def _probe_frames(text: str) -> tuple:
    """``--frames`` of ``train probe``: "1,17" -> (1, 17); each length 1 + 4k."""
    try:
        frames = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        frames = ()
    if not frames or not all(valid_frames(f, 4) for f in frames):
        raise argparse.ArgumentTypeError(f"{text!r}: allowed comma-separated clip lengths, each 1 + 4k (1, 5, 9, "
                                         f"17, ...)")
    return frames


def probe_weights(dit_path: Path = WEIGHTS_DIR, vae_path: Path = WEIGHTS_DIR, seeds: int = 1, cfg: float = 5.0,
                  shift: float = 3.0, frames: tuple = (1, 17), sets: Optional[dict] = None, steps: int = 20,
                  dit_low: Optional[Path] = None, boundary: float = 0.5) -> dict:
    """The prompt-following probe on trained weights (default: the shipped ones), outside training. ``seeds`` > 1
    asks every prompt again with other noise, so two sets of weights can be told apart more sharply than by the
    training probe (its 20 held-out prompts move a rate by 5 points each). ``sets``: {name: items} (default SEEN and
    HELD). ``dit_low``: a low-noise expert (folder as ``dit_path``) that samples the steps below noise ``boundary``.
    Returns {"image/seen": summary, "video/held": ..., "mean": {metric: mean over the rows}}."""
    from ..model.errors import SpacetimeValueError
    from ..model.text_encoders import load_minilm
    from .probe import HELD, SEEN, drawn_motions, drawn_shapes, merge_tables, reseeded, run_probe
    if not 1 <= int(seeds) <= 16:
        raise SpacetimeValueError(f"seeds={seeds}: allowed 1..16 (each repeats the whole probe with other noise)")
    if not (np.isfinite(cfg) and cfg > 0):
        raise SpacetimeValueError(f"cfg={cfg}: allowed > 0 (1 = no guidance)")
    if not (np.isfinite(shift) and shift > 0):
        raise SpacetimeValueError(f"shift={shift}: allowed > 0")
    if not 1 <= int(steps) <= 1000:
        raise SpacetimeValueError(f"steps={steps}: allowed 1..1000 sampler steps")
    if not frames or not all(valid_frames(f, 4) for f in frames):
        raise SpacetimeValueError(f"frames={frames}: allowed 1 + 4k each (1 = single frames)")
    from ..model.experts import ExpertPair, ExpertSwitch
    switch = ExpertSwitch(float(boundary))                  # refuses a boundary outside (0, 1] before loading
    dit, vae = _load_probe_parts(dit_path, vae_path)
    if dit_low is not None:
        dit = ExpertPair(dit, _load_probe_parts(dit_low, vae_path)[0], switch, device=next(dit.parameters()).device)
    text = load_minilm()
    base = sets or {"seen": SEEN, "held": HELD}
    pooled = {name: [it for k in range(int(seeds)) for it in reseeded(items, k)] for name, items in base.items()}
    out, tables, motions = {}, [], []
    with torch.no_grad():
        for f in frames:
            res, clips = run_probe(dit, vae, text, frames=f, sets=pooled, cfg=cfg, shift=shift,
                                    steps=int(steps))
            for name, summ in res.items():
                out[f"{'image' if f == 1 else 'video'}/{name}"] = summ
                tables.append(drawn_shapes(clips[name], pooled[name]))
                motions.append(drawn_motions(clips[name], pooled[name]))
    rows = list(out.values())
    keys = sorted({k for r in rows for k in r if k != "n"})
    out["mean"] = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
    out["drawn_shapes"] = merge_tables(*tables)
    out["drawn_motions"] = merge_tables(*motions)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The whole recipe
# ----------------------------------------------------------------------------------------------------------------------

def _stage_done(d: Path, steps: int) -> bool:
    p = Path(d) / "state.pt"
    if not p.exists():
        return False
    return int(torch.load(p, map_location="cpu", weights_only=True)["step"]) >= steps


def shipped_vae_fits() -> bool:
    if not (META.exists() and VAE_FILE.exists()):
        return False
    meta = json.loads(META.read_text())
    return config_to_dict(replace(TOY_VAE, latent_mean=tuple(meta["vae"]["latent_mean"]),
                                  latent_std=tuple(meta["vae"]["latent_std"]))) == meta["vae"]


def copy_shipped_vae(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    meta = json.loads(META.read_text())
    shutil.copy(VAE_FILE, out / "vae.safetensors")
    (out / "vae.json").write_text(json.dumps({"config": meta["vae"], **meta.get("vae_recon", {})}, indent=1))


# The VAE recipe: single frames first (the spatial code), then the 1-33-frame clip mix from that VAE inflated to code
# frame by frame, at a fine-tuning learning rate (a higher one undoes the image stage before time is learned).
VAE_RECIPE = dict(steps=2500, image_steps=1000, image_lr=3e-4, lr=6e-5, detail_weight=5.0)


def all_dit_recipe(steps: int, cuda: bool, time_limit: float, free_start: bool) -> DitRecipe:
    """The DiT stage of ``all``. Noise levels shifted like the sampler's shift 3: from scratch, motion is learned
    sooner with it (the 4-clip overfit check, two seeds, weights/MODEL_CARD.md). On free-start clips the
    opposite-caption hinge is on: there the flow loss and the hinge agree on the direction word, and from the shipped
    weights (the warm start) the word was learned only with it (gap +0.5 % without, +64 % with, MODEL_CARD.md).
    With a time limit (a rented GPU's budget) the learning rate's cosine runs on wall time, so it ends decayed
    whatever the machine's speed."""
    return DitRecipe(steps=steps, tokens=int(4096 * (8.0 if cuda else 1.0)), time_limit=time_limit,
                     probe_every=2000 if cuda else 1000, sigma_shift=3.0, contrast=1.0 if free_start else 0.0,
                     time_schedule=time_limit > 0)


def run_all(out: Path, budget_minutes: float = 0.0, fresh: bool = False, ship: bool = False,
            decoder_steps: int = 600, clips: int = 24000, dit_steps: int = 40000, free_start: bool = False):
    """vae -> encode -> dit -> decoder -> export, each stage resumable. ``budget_minutes`` (0 = none) splits a
    wall-time budget over the stages (a rented GPU); on a GPU the batches grow 8x. ``free_start``: encode movers
    that start anywhere along their axis (``world.sample_object``)."""
    out = Path(out)
    cuda = torch.cuda.is_available()
    scale = 8.0 if cuda else 1.0
    budget = budget_minutes * 60
    share = {"vae": 0.2, "encode": 0.1, "dit": 0.6, "decoder": 0.1}
    t0 = time.time()
    vae_dir, dec_dir, data_dir, dit_dir = out / "vae", out / "vae_dec", out / "data", out / "dit"
    if not fresh and not (vae_dir / "state.pt").exists() and not (vae_dir / "vae.json").exists() \
            and shipped_vae_fits():
        print("no VAE state: reusing the shipped VAE (warm start)")
        copy_shipped_vae(vae_dir)
    if not (vae_dir / "vae.json").exists() or ((vae_dir / "state.pt").exists()
                                                and not _stage_done(vae_dir, VAE_RECIPE["steps"])):
        train_vae(vae_dir, batch_scale=scale, time_limit=budget * share["vae"], bf16=cuda, **VAE_RECIPE)
    encode_dataset(vae_dir, data_dir, int(clips * (1 if not budget else min(1.0, budget / 3600))),
                   free_start=free_start, jobs=(os.cpu_count() or 1) if cuda else 1)   # GPU machines: every core renders
    r = all_dit_recipe(dit_steps, cuda, budget * share["dit"], free_start)
    init = None
    if not fresh and DIT_FILE.exists() and not (dit_dir / "state.pt").exists():
        meta = json.loads(META.read_text())
        if meta.get("dit") == r.dit and json.loads((vae_dir / "vae.json").read_text())["config"] == meta["vae"]:
            init = DIT_FILE
    train_dit(data_dir, vae_dir, dit_dir, r, init=init)
    train_vae(dec_dir, decoder_steps, lr=1e-4, batch_scale=scale, decoder_only_from=vae_dir,
              time_limit=budget * share["decoder"])
    probe = probe_weights(dit_dir, dec_dir, seeds=SHIP_SEEDS)      # once, for both exports
    export(dec_dir, dit_dir, out / "export", probe=probe)
    if ship:
        export(dec_dir, dit_dir, WEIGHTS_DIR, ship=True, probe=probe)
    print(f"recipe finished in {(time.time() - t0) / 60:.1f} min")


def run_overfit(vae_dir: Path, out: Path, steps: int = 3000, lr: float = 5e-4, n: int = 32,
                per_step: int = 0, init: Optional[Path] = None, dit: Optional[dict] = None,
                probe_every: int = 100, sigma_shift: float = 1.0, seed: int = 0) -> dict:
    """The sanity check of the text -> training -> sampling path: ``n`` fixed 17-frame clips and captions (the
    probe's first ``n`` single-object prompts), trained until sampling reproduces all of them (colour, shape,
    motion, background and a clean frame right by the analysis, as single frames and as clips) or ``steps`` run out.
    ``per_step``: clips a step (default all ``n``); ``init``: warm start (default a fresh DiT: the strict check);
    ``dit``: DiT config fields (default the embedded model's); ``sigma_shift``: the recipe's noise-level shift;
    ``seed``: the DiT's initial weights and the training draws (noise, noise levels, caption dropout).
    Returns the last probe summary (1.0 = all right)."""
    from .probe import SEEN
    items = [it for it in SEEN if it.scene.kind == "single"]
    if not 1 <= n <= len(items):
        raise ValueError(f"overfit clips n={n}: allowed 1..{len(items)} (the probe's single-object prompts)")
    if per_step != 0 and not 2 <= per_step <= n:
        raise ValueError(f"overfit clips per step {per_step}: allowed 0 (all {n}) or 2..{n}")
    items = items[:n]
    encode_dataset(vae_dir, out / "data", n, scenes=[it.scene for it in items])     # resumes: a no-op when done
    # no token budget: the batch is max_batch clips, ``per_step`` (or all n; batch_size's floor is 2)
    r = DitRecipe(steps=steps, lr=lr, warmup=min(100, steps // 10), tokens=1 << 30, max_batch=max(2, per_step or n),
                  image_frac=0.0, t2v_only=True, p_short=0.0, probe_every=probe_every, probe_video=True,
                  sigma_shift=sigma_shift, seed=seed,
                  **({"dit": {**DitRecipe().dit, **dit}} if dit else {}))
    return train_dit(out / "data", vae_dir, out / "dit", r, init=init, probe_items={"overfit": items},
                     stop_when_all=True)


def refine_sigmas(ap: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[float, float]:
    """Check ``train decoder``'s refinement options before any work; -> the (lo, hi) noise levels."""
    if args.refine_dit is not None and not args.refine_dit.is_file():
        ap.error(f"--refine-dit {str(args.refine_dit)!r}: no such file (allowed: a DiT safetensors file of the "
                 f"embedded layout)")
    if not (math.isfinite(args.refine_share) and 0 <= args.refine_share <= 1):
        ap.error(f"--refine-share {args.refine_share}: allowed a number within 0..1")
    try:
        lo, hi = (float(v) for v in args.refine_sigma.split(","))
    except ValueError:
        lo = hi = math.nan
    if not (0 < lo <= hi <= 1):
        ap.error(f"--refine-sigma {args.refine_sigma!r}: allowed LO,HI with 0 < LO <= HI <= 1 (e.g. 0.1,0.5)")
    return lo, hi


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = default_run_dir()
    a = sub.add_parser("all", help="the whole recipe, resumable")
    a.add_argument("--out", type=Path, default=run, help="run folder (default: %(default)s)")
    a.add_argument("--budget-minutes", type=float, default=0.0, help="wall-time budget, 0 = none (default 0)")
    a.add_argument("--fresh", action="store_true", help="do not warm-start from the shipped weights")
    a.add_argument("--ship", action="store_true", help="write into weights/ when the probe improves")
    a.add_argument("--free-start", action="store_true",
                   help="encode movers that start anywhere along their axis (see 'encode --free-start') and train "
                        "the DiT with the opposite-caption hinge (contrast 1)")
    a = sub.add_parser("vae", help="train the causal VAE on 1-33-frame toy-world clips")
    a.add_argument("--out", type=Path, default=run / "vae", help="run folder of this stage (default: %(default)s)")
    a.add_argument("--steps", type=int, default=VAE_RECIPE["steps"], help="all steps (default: %(default)s)")
    a.add_argument("--image-steps", type=int, default=VAE_RECIPE["image_steps"],
                   help="first steps on single frames only (default: %(default)s)")
    a.add_argument("--image-lr", type=float, default=VAE_RECIPE["image_lr"],
                   help="peak learning rate of the single-frame stage (default: %(default)s)")
    a.add_argument("--lr", type=float, default=VAE_RECIPE["lr"],
                   help="peak learning rate of the clip stage (default: %(default)s)")
    a.add_argument("--detail-weight", type=float, default=VAE_RECIPE["detail_weight"],
                   help="extra loss weight on object pixels (default: %(default)s)")
    a.add_argument("--init", type=Path, help="a trained VAE folder to continue from (an image-only one is inflated)")
    a.add_argument("--bf16", action="store_true", help="bf16 autocast (default: on with CUDA only)")
    a = sub.add_parser("decoder", help="fine-tune the VAE decoder (encoder frozen)")
    a.add_argument("--vae", type=Path, default=run / "vae")
    a.add_argument("--out", type=Path, default=run / "vae_dec")
    a.add_argument("--steps", type=int, default=600)
    a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--temporal-weight", type=float, default=0.0,
                   help="weight of the loss on frame-to-frame changes: motion decoded as evenly as the clip moves "
                        "(default: %(default)s = off)")
    a.add_argument("--detail-weight", type=float, default=0.0,
                   help="extra loss weight on object pixels (default: %(default)s = off)")
    a.add_argument("--edge-weight", type=float, default=0.0,
                   help="weight of the loss on pixel differences across each frame: small objects keep their "
                        "corners (default: %(default)s = off)")
    a.add_argument("--refine-dit", type=Path, default=None,
                   help="a DiT safetensors file: in a share of the steps the decoder reads the clean latents this "
                        "DiT predicts from noised true latents, and learns to decode its soft shapes into the true "
                        "frames (default: off)")
    a.add_argument("--refine-share", type=float, default=0.5,
                   help="share of the steps with DiT predictions, with --refine-dit (default: %(default)s)")
    a.add_argument("--refine-sigma", default="0.1,0.5",
                   help="LO,HI: the noise levels the DiT predicts from, with --refine-dit (default: %(default)s)")
    a = sub.add_parser("encode", help="encode a dataset of toy-world clips into latents")
    a.add_argument("--vae", type=Path, default=run / "vae")
    a.add_argument("--out", type=Path, default=run / "data")
    a.add_argument("--clips", type=int, default=24000, help="clips over all sizes and lengths (default: %(default)s)")
    a.add_argument("--seed", type=int, default=1, help="another seed adds parts (default: %(default)s)")
    a.add_argument("--sizes", default="", help="frame sizes WIDTHxHEIGHT, comma-separated (default: "
                                               "64x64,96x64,64x96)")
    a.add_argument("--mix", default="", help="clip lengths and their shares FRAMES:SHARE, comma-separated (default: "
                                             "1:0.4,9:0.15,17:0.3,33:0.15)")
    a.add_argument("--free-start", action="store_true",
                   help="movers start anywhere along their axis, so a first frame does not tell their direction "
                        "(data that teaches image-to-video and extension the direction word)")
    a.add_argument("--jobs", type=int, default=1,
                   help="processes that render and encode the (size, length) buckets side by side; the same parts "
                        "as one process (default: %(default)s)")
    a = sub.add_parser("encode-stories", help="encode a dataset of toy-world multi-shot stories into latents")
    a.add_argument("--vae", type=Path, default=run / "vae", help="trained VAE folder (default: %(default)s)")
    a.add_argument("--out", type=Path, default=run / "stories", help="story data folder (default: %(default)s)")
    a.add_argument("--stories", type=int, default=6000, help="stories over all sizes and patterns "
                                                             "(default: %(default)s)")
    a.add_argument("--seed", type=int, default=1, help="another seed adds parts (default: %(default)s)")
    a = sub.add_parser("shipped-vae", help="write the shipped VAE (weights/) as a VAE folder for the other stages")
    a.add_argument("--out", type=Path, default=run / "vae", help="VAE folder to create (default: %(default)s)")
    a = sub.add_parser("dit", help="train the DiT on encoded latents")
    a.add_argument("--data", type=Path, default=run / "data")
    a.add_argument("--vae", type=Path, default=run / "vae")
    a.add_argument("--out", type=Path, default=run / "dit")
    a.add_argument("--stories", type=Path, help="encoded stories for the story_frac share of steps (default: none)")
    a.add_argument("--recipe", type=Path, help="a JSON file of DitRecipe fields")
    a.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override a recipe field")
    a.add_argument("--init", type=Path, help="DiT safetensors to warm-start from")
    a = sub.add_parser("overfit", help="the 32-clip overfit check")
    a.add_argument("--vae", type=Path, default=run / "vae")
    a.add_argument("--out", type=Path, default=run / "overfit")
    a.add_argument("--steps", type=int, default=3000, help="at most this many steps (default: %(default)s)")
    a.add_argument("--clips", type=int, default=32, help="fixed clips to reproduce (default: %(default)s)")
    a.add_argument("--per-step", type=int, default=0, help="clips a step (2 or more), 0 = all (default: %(default)s)")
    a.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: %(default)s)")
    a.add_argument("--probe-every", type=int, default=100, help="steps between probes (default: %(default)s)")
    a.add_argument("--init", type=Path, help="DiT safetensors to warm-start from (default: a fresh DiT)")
    a.add_argument("--sigma-shift", type=float, default=1.0,
                   help="move training noise levels towards noise like the sampler's shift, 1 = none "
                        "(default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="initial weights and training draws (default: %(default)s)")
    a = sub.add_parser("probe", help="the prompt-following probe on trained weights (default: the shipped ones)")
    a.add_argument("--dit", type=Path, default=WEIGHTS_DIR, help="a DiT run folder or a weights folder "
                                                                 "(default: the shipped weights)")
    a.add_argument("--vae", type=Path, default=WEIGHTS_DIR, help="a VAE folder or a weights folder "
                                                                 "(default: the shipped weights)")
    a.add_argument("--dit-low-noise", type=Path, help="a low-noise expert (a DiT run folder or a weights folder) that "
                   "samples the steps below --expert-boundary; the word gaps printed after the probe stay the "
                   "DiT's own (default: none, one DiT)")
    a.add_argument("--expert-boundary", type=float, default=0.5,
                   help="noise level where the low-noise expert takes over (default: %(default)s)")
    a.add_argument("--seeds", type=int, default=1, help="noises per prompt, 1..16 (default: %(default)s)")
    a.add_argument("--cfg", type=float, default=5.0, help="guidance scale (default: %(default)s)")
    a.add_argument("--shift", type=float, default=3.0, help="sampler shift (default: %(default)s)")
    a.add_argument("--steps", type=int, default=20, help="sampler steps (default: %(default)s)")
    a.add_argument("--frames", type=_probe_frames, default=(1, 17), metavar="LIST",
                   help="comma-separated clip lengths, each 1 + 4k (1 = single frames; default: 1,17)")
    a.add_argument("--json", type=Path, help="also write the figures to this new JSON file")
    a = sub.add_parser("average", help="interpolate two DiTs of one configuration into a new DiT run folder")
    a.add_argument("--dit", type=Path, action="append", required=True, metavar="FOLDER",
                   help="a DiT run folder or a weights folder; give it twice (first, second)")
    a.add_argument("--weight", type=float, default=0.5, help="the second DiT's share, 0..1 (default: %(default)s)")
    a.add_argument("--out", type=Path, required=True, help="new DiT run folder")
    a = sub.add_parser("export", help="write trained weights into a weights folder")
    a.add_argument("--vae", type=Path, default=run / "vae_dec")
    a.add_argument("--dit", type=Path, default=run / "dit")
    a.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    a.add_argument("--ship", action="store_true", help="only when the probe beats the weights already there")
    a.add_argument("--seeds", type=int, default=SHIP_SEEDS, help="noises per probe prompt (default: %(default)s)")
    a.add_argument("--i2v", action="store_true", help="write the DiT as the image-to-video weights (preset "
                   "toyworld-i2v) into a weights folder holding the embedded model, judged by the evaluation's "
                   "image-to-video part instead of the probe (--vae is not used)")
    args = ap.parse_args(argv)
    if args.cmd == "all":
        run_all(args.out, args.budget_minutes, args.fresh, args.ship, free_start=args.free_start)
    elif args.cmd == "vae":
        train_vae(args.out, args.steps, args.lr, image_steps=args.image_steps, image_lr=args.image_lr,
                  detail_weight=args.detail_weight, init_from=args.init,
                  bf16=args.bf16 or torch.cuda.is_available())
    elif args.cmd == "decoder":
        for opt, val in (("--temporal-weight", args.temporal_weight), ("--detail-weight", args.detail_weight),
                         ("--edge-weight", args.edge_weight)):
            if not (math.isfinite(val) and val >= 0):
                ap.error(f"{opt} {val}: allowed a number >= 0 (0 = off)")
        sigmas = refine_sigmas(ap, args)
        train_vae(args.out, args.steps, args.lr, decoder_only_from=args.vae, temporal_weight=args.temporal_weight,
                  detail_weight=args.detail_weight, edge_weight=args.edge_weight, refine_dit=args.refine_dit,
                  refine_share=args.refine_share, refine_sigmas=sigmas)
    elif args.cmd == "encode":
        from .train_dit import parse_mix, parse_sizes
        try:
            sizes = parse_sizes(args.sizes) if args.sizes else None
            mix = parse_mix(args.mix) if args.mix else None
        except ValueError as e:
            ap.error(str(e))
        if args.jobs < 1:
            ap.error(f"--jobs {args.jobs}: allowed 1 or more (processes)")
        encode_dataset(args.vae, args.out, args.clips, args.seed, free_start=args.free_start, mix=mix, sizes=sizes,
                       jobs=args.jobs)
    elif args.cmd == "encode-stories":
        encode_stories(args.vae, args.out, args.stories, args.seed)
    elif args.cmd == "shipped-vae":
        if (args.out / "vae.safetensors").exists() or (args.out / "vae.json").exists():
            ap.error(f"--out {args.out} already holds a VAE; give a new folder")
        if not shipped_vae_fits():
            ap.error(f"the shipped VAE ({VAE_FILE}) is missing or its config does not match the training VAE")
        copy_shipped_vae(args.out)
        print(f"wrote the shipped VAE to {args.out}")
    elif args.cmd == "dit":
        d = json.loads(args.recipe.read_text()) if args.recipe else {}
        for kv in args.set:
            k, v = kv.split("=", 1)
            try:
                d[k] = json.loads(v)
            except json.JSONDecodeError:
                d[k] = v
        train_dit(args.data, args.vae, args.out, DitRecipe.from_dict(d), init=args.init, stories_dir=args.stories)
    elif args.cmd == "overfit":
        run_overfit(args.vae, args.out, args.steps, args.lr, args.clips, args.per_step, args.init,
                    probe_every=args.probe_every, sigma_shift=args.sigma_shift, seed=args.seed)
    elif args.cmd == "probe":
        from .drift import refuse_existing, write_new
        refuse_existing(ap, args)
        res = probe_weights(args.dit, args.vae, args.seeds, args.cfg, args.shift, frames=args.frames,
                            steps=args.steps, dit_low=args.dit_low_noise, boundary=args.expert_boundary)
        for name, summ in res.items():
            if name in ("drawn_shapes", "drawn_motions"):
                continue
            print(f"{name:11s}", "  ".join(f"{k} {100 * v:5.1f}" for k, v in summ.items() if k != "n"),
                  f"  n {summ['n']}" if "n" in summ else "")
        for table in ("drawn_shapes", "drawn_motions"):
            for asked, row in sorted(res[table].items()):
                print(f"asked {asked:11s} drawn: " + ", ".join(f"{got} {n}" for got, n in sorted(row.items())))
        from .probe import shape_rate
        right, asked = shape_rate(res["drawn_shapes"])
        if asked:
            print(f"shape rate (one-object prompts drawn in the asked shape): {right} of {asked} "
                  f"({100 * right / asked:.0f} %)")
        from ..model.text_encoders import load_minilm
        from .probe import FRAME_WORDS, OPPOSITE_DIRECTION, frame_word_gap, motion_word_gap
        dit, vae = _load_probe_parts(args.dit, args.vae)
        te = load_minilm()
        for name, motions, what in (("motion", tuple(OPPOSITE_DIRECTION), "direction"),
                                    ("size", ("grows", "shrinks"), "size change")):
            res[f"{name}_word_gap"] = gap = motion_word_gap(dit, vae, te, motions=motions)
            for mode, by_sigma in gap.items():
                print(f"{name} word gap, {mode} (loss with the opposite {what} vs the true one): " +
                      "  ".join(f"sigma {s:.2f} {g:+.1f} %" for s, g in by_sigma.items()))
        for w in FRAME_WORDS:
            res[f"{w}_word_gap"] = by_sigma = frame_word_gap(dit, vae, te, w)
            print(f"{w} word gap, single frames (loss with another {w} vs the true one): " +
                  "  ".join(f"sigma {s:.2f} {g:+.1f} %" for s, g in by_sigma.items()))
        if args.json:
            write_new(args.json, json.dumps(res, indent=1))           # never over a file that appeared meanwhile
    elif args.cmd == "average":
        if len(args.dit) != 2:
            ap.error(f"--dit given {len(args.dit)} times: allowed exactly twice (the two DiTs to average)")
        from ..model.errors import SpacetimeValueError
        try:
            print(f"wrote {average_dits(args.dit[0], args.dit[1], args.weight, args.out)}")
        except SpacetimeValueError as e:                      # every refusal comes before anything is written
            ap.error(str(e))
    elif args.cmd == "export" and args.i2v:
        export_i2v(args.dit, args.out, ship=args.ship)
    elif args.cmd == "export":
        export(args.vae, args.dit, args.out, ship=args.ship, seeds=args.seeds)


if __name__ == "__main__":
    main()
