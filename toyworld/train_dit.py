"""Train the embedded DiT on toy-world latents, with the prompt-following probe running as it trains.

    python -m spacetime.toyworld.train encode --vae RUN/vae --out RUN/data
    python -m spacetime.toyworld.train dit --data RUN/data --vae RUN/vae --out RUN/dit

What makes it learn objects and not only backgrounds on a small compute budget (each measured with the probe,
see weights/MODEL_CARD.md):
- **Object-weighted loss.** The renderer knows which latent cells an object covers; their flow-matching error
  counts ``obj_weight`` times. The rest keeps its full weight (the loss is divided by the number of cells, not by
  the weights), so backgrounds are not traded away.
- **Joint image and video training.** A share of the steps trains on single frames (latent frame 0 of the encoded
  clips is exactly the latent of that frame alone: the VAE is causal), which are 5-9 times cheaper than clips and
  teach colour, shape, background and layout; clips teach motion. ``image_steps`` starts with frames only.
- **One timestep per text-to-video clip**; known frames (image-to-video, extension, fill) enter clean at timestep 0
  and carry no loss, in the frame-mask mixture that makes one set of weights do every task.
- Text embeddings of repeated captions are cached, so the text encoder does not dominate single-frame steps.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..model.config import DiTConfig, config_to_dict
from ..model.dit import build_dit
from ..model.embedded import TOY_DIT
from ..model.loading import read_state_dict, write_safetensors_atomic
from .runs import Checkpointer, StopOnSignal, clips_to_tensor, device_and_threads, lr_at
from .world import Obj, Scene, random_clip, render

TRAIN_SIZES = ((64, 64), (96, 64), (64, 96))
# clips per bucket as fractions of the total: single frames are cheap and plentiful, clips teach motion
DATA_MIX = {1: 0.40, 9: 0.15, 17: 0.30, 33: 0.15}


# ----------------------------------------------------------------------------------------------------------------------
# Dataset of latents
# ----------------------------------------------------------------------------------------------------------------------

def object_cells(coverage: np.ndarray, sf: int, tf: int) -> np.ndarray:
    """Pixel object coverage [T, H, W] -> uint8 [F', H/sf, W/sf]: 255 where a latent cell (or its neighbour)
    holds part of an object in any of the frames of its slot."""
    cov = torch.from_numpy(coverage).float()
    T = cov.shape[0]
    slots = [cov[:1].amax(0)] + [cov[tf * (k - 1) + 1:tf * k + 1].amax(0) for k in range(1, (T - 1) // tf + 1)]
    m = torch.stack(slots)[:, None]                                       # F' 1 H W
    m = F.avg_pool2d(m, sf)
    m = F.max_pool2d(m, 3, stride=1, padding=1)[:, 0]                     # one cell of margin
    return (m.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def bucket_name(w, h, f):
    return f"{w}x{h}_{f}f"


def scene_to_json(s: Scene) -> dict:
    return asdict(s)


def scene_from_json(d: dict) -> Scene:
    return Scene(**{**d, "objects": tuple(Obj(**o) for o in d["objects"])})


@torch.no_grad()
def encode_dataset(vae_dir: Path, out: Path, clips: int, seed: int = 1, batch: int = 16, part: int = 512,
                   mix: Optional[dict] = None, scenes: Optional[list] = None):
    """Render training clips (held-out combinations excluded), encode them with the VAE and store normalised
    latents (fp16) and object cells (uint8) per (size, length) bucket in parts of ``part`` clips, with the scene
    graphs as JSON. Resumable part by part; more clips with another ``seed`` add parts. ``scenes`` encodes these
    scenes (17 frames, 64x64) instead of random ones (the overfit check)."""
    from .train_vae import load_trained_vae
    device_and_threads()
    vae, _ = load_trained_vae(vae_dir)
    sf, tf = vae.spatial_factor, vae.temporal_factor
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    jobs = []
    if scenes is not None:
        jobs.append((64, 64, 17, len(scenes), 0))
    else:
        for bi, (w, h) in enumerate(TRAIN_SIZES):
            for f, wf in (mix or DATA_MIX).items():
                jobs.append((w, h, f, int(round(clips * wf / len(TRAIN_SIZES))), bi))
    for w, h, f, n, bi in jobs:
        for p0 in range(0, n, part):
            name = f"{bucket_name(w, h, f)}_s{seed}_{p0 // part:03d}"
            if (out / f"{name}.safetensors").exists():
                continue
            rng = np.random.default_rng([seed, bi, f, p0])
            lat, cells, sc = [], [], []
            for b0 in range(p0, min(n, p0 + part), batch):
                nb = min(batch, min(n, p0 + part) - b0)
                if scenes is not None:
                    cl = [render(scenes[b0 + i], f, w, h) for i in range(nb)]
                else:
                    cl = [random_clip(int(rng.integers(2 ** 31)), f, w, h, training=True) for _ in range(nb)]
                lat.append(vae.encode(clips_to_tensor(cl)).half())
                cells += [object_cells(c.coverage, sf, tf) for c in cl]
                sc += [scene_to_json(c.scene) for c in cl]
            write_safetensors_atomic({"latents": torch.cat(lat), "objects": torch.from_numpy(np.stack(cells))},
                                     out / f"{name}.safetensors")
            (out / f"{name}.json").write_text(json.dumps(sc))
            print(f"{name}: {len(sc)} clips, {time.time() - t0:.0f}s", flush=True)


@dataclass
class Bucket:
    name: str
    latents: torch.Tensor          # fp16 [N, C, F', H', W'] normalised
    objects: torch.Tensor          # uint8 [N, F', H', W']
    scenes: list

    @property
    def frames(self) -> int:
        return self.latents.shape[2]


def load_dataset(data_dir: Path) -> list[Bucket]:
    parts: dict = {}
    for p in sorted(Path(data_dir).glob("*.safetensors")):
        bucket = p.stem.split("_s")[0]
        sd = read_state_dict(p)
        sc = [scene_from_json(d) for d in json.loads(p.with_suffix(".json").read_text())]
        parts.setdefault(bucket, []).append((sd["latents"], sd["objects"], sc))
    if not parts:
        raise FileNotFoundError(f"no latent buckets in {data_dir}; run the encode stage first")
    return [Bucket(k, torch.cat([a for a, _, _ in v]), torch.cat([b for _, b, _ in v]), sum([c for _, _, c in v], []))
            for k, v in sorted(parts.items())]


# ----------------------------------------------------------------------------------------------------------------------
# Frame masks: one model for every task
# ----------------------------------------------------------------------------------------------------------------------

MASK_MIX = (("t2v", 0.45), ("i2v_head", 0.17), ("i2v_tail", 0.05), ("head", 0.10), ("tail", 0.08),
            ("head_tail", 0.08), ("random", 0.07))


def sample_mask(n: int, rng: np.random.Generator, t2v_only: bool = False) -> tuple[np.ndarray, str]:
    """A per-latent-frame known mask (1 = known) for one training example, with at least one unknown frame."""
    m = np.zeros(n, np.float32)
    if t2v_only or n == 1:
        return m, "t2v"
    kinds, weights = zip(*MASK_MIX)
    kind = kinds[int(rng.choice(len(kinds), p=np.array(weights) / sum(weights)))]
    half = max(1, n // 2)
    if kind == "i2v_head":
        m[0] = 1
    elif kind == "i2v_tail":
        m[-1] = 1
    elif kind == "head":
        m[:int(rng.integers(1, half + 1))] = 1
    elif kind == "tail":
        m[n - int(rng.integers(1, half + 1)):] = 1
    elif kind == "head_tail":
        m[:int(rng.integers(1, max(2, n // 3 + 1)))] = 1
        m[n - int(rng.integers(1, max(2, n // 3 + 1))):] = 1
    elif kind == "random":
        m = (rng.random(n) < rng.uniform(0.2, 0.6)).astype(np.float32)
    if m.all():
        m[int(rng.integers(1, n))] = 0
    return m, kind


def sample_sigma(b: int, gen: torch.Generator) -> torch.Tensor:
    """Logit-normal noise levels with a uniform share so both ends are seen."""
    ln = torch.sigmoid(torch.randn(b, generator=gen))
    un = torch.rand(b, generator=gen)
    pick = torch.rand(b, generator=gen) < 0.8
    return torch.where(pick, ln, un).clamp(1e-4, 1 - 1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Text, cached
# ----------------------------------------------------------------------------------------------------------------------

class CachedText:
    """MiniLM token embeddings per caption, kept (fp16) for captions seen before."""

    def __init__(self, encoder, max_items: int = 30000):
        self.enc, self.max_items = encoder, max_items
        self.cache: dict = {}

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        todo = sorted({c for c in captions if c not in self.cache})
        if todo:
            emb, lens = self.enc.encode(todo)
            for i, c in enumerate(todo):
                if len(self.cache) >= self.max_items:
                    self.cache.pop(next(iter(self.cache)))
                self.cache[c] = emb[i, :int(lens[i])].half().cpu()
        rows = [self.cache[c] for c in captions]
        L = max(r.shape[0] for r in rows)
        out = torch.zeros(len(rows), L, rows[0].shape[1])
        for i, r in enumerate(rows):
            out[i, :r.shape[0]] = r.float()
        return out.to(device), torch.tensor([r.shape[0] for r in rows], device=device)


# ----------------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class DitRecipe:
    steps: int = 30000
    lr: float = 5e-4
    warmup: int = 300
    tokens: int = 4096              # DiT tokens per batch (video and image steps alike)
    image_frac: float = 0.35        # share of steps on single frames after ``image_steps``
    image_steps: int = 0            # steps at the start that train on single frames only
    obj_weight: float = 4.0         # loss weight of latent cells an object covers
    p_drop: float = 0.1             # captions dropped to "" (classifier-free guidance)
    ema: float = 0.999
    t2v_only: bool = False          # no frame-mask mixture (the overfit check)
    p_short: float = 0.25           # share of short, user-style captions
    probe_every: int = 500
    probe_video: bool = True        # probe 17-frame clips as well as single frames
    probe_sets: str = "seen,held"
    bf16: bool = False              # bf16 autocast (default on CUDA)
    time_limit: float = 0.0         # seconds; stop (and save) after this long, resume later
    seed: int = 0
    max_batch: int = 256
    dit: dict = field(default_factory=lambda: config_to_dict(TOY_DIT))

    @classmethod
    def from_dict(cls, d: dict) -> "DitRecipe":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _param_groups(model):
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 and "modulation" not in n else no_decay).append(p)
    return [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]


def train_dit(data_dir: Path, vae_dir: Path, out: Path, recipe: DitRecipe, init: Optional[Path] = None,
              probe_items: Optional[dict] = None, stop_when_all: bool = False) -> dict:
    """Train (or resume) a DiT run in ``out``. ``init``: a DiT safetensors to warm-start from when ``out`` holds no
    state. ``probe_items``: {set name: [ProbeItem]} (default SEEN and HELD). Returns the last probe summary."""
    from ..model.config import config_from_dict
    from ..model.text_encoders import load_minilm
    from .captions import training_caption
    from .probe import HELD, SEEN, probe_sheet, run_probe
    from .train_vae import load_trained_vae
    dev = device_and_threads()
    r = recipe
    ck = Checkpointer(out)
    (Path(out) / "recipe.json").write_text(json.dumps(asdict(r), indent=1))
    cfg = config_from_dict(DiTConfig, r.dit)
    data = load_dataset(data_dir)
    vae, _ = load_trained_vae(vae_dir)
    vae = vae.to(dev)
    counts = np.array([b.latents.shape[0] for b in data], np.float64)
    video = [i for i, b in enumerate(data) if b.frames > 1]
    print("buckets:", {b.name: len(b.scenes) for b in data}, flush=True)
    torch.manual_seed(r.seed)
    model = build_dit(cfg).to(dev).train()
    ema = build_dit(cfg).to(dev).eval().requires_grad_(False)
    text = CachedText(load_minilm(device=dev))
    opt = torch.optim.AdamW(_param_groups(model), lr=r.lr, betas=(0.9, 0.98))
    start = 0
    state = ck.load()
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    else:
        if init is not None:
            sd = read_state_dict(init)
            model.load_state_dict({k: v.float() for k, v in sd.items()})
            print(f"warm start from {init}", flush=True)
        ema.load_state_dict(model.state_dict())
    sets = probe_items or {k: {"seen": SEEN, "held": HELD}[k] for k in r.probe_sets.split(",")}
    use_bf16 = r.bf16 or dev.type == "cuda"
    rng = np.random.default_rng([r.seed, start])
    gen = torch.Generator().manual_seed(r.seed * 7919 + start)
    t0 = time.time()
    summary: dict = {}

    def probe(step):
        nonlocal summary
        modes = [1] + ([17] if r.probe_video else [])
        tp = time.time()
        for frames in modes:
            res, clips = run_probe(ema, vae, text.enc, frames=frames, sets=sets)
            for name, s in res.items():
                ck.log({"step": step, "mode": "image" if frames == 1 else "video", "set": name, **s}, "probe.jsonl")
                summary[f"{'image' if frames == 1 else 'video'}/{name}"] = s
            probe_sheet([v for vs in clips.values() for v in vs], Path(out) / f"probe_{frames}f.png")
        _plot_probe(ck)
        line = " ".join(f"{k}: all {v['all']:.0%} col {v['color']:.0%} shp {v['shape']:.0%}" +
                        (f" mot {v['motion']:.0%}" if "motion" in v else "") for k, v in summary.items())
        print(f"probe @ {step} ({time.time() - tp:.0f}s): {line}", flush=True)

    step = start
    with StopOnSignal() as stop:
        for step in range(start, r.steps):
            img_step = step < r.image_steps or (not video) or rng.random() < r.image_frac
            if img_step:
                bi = int(rng.choice(len(data), p=counts / counts.sum()))
            else:
                vc = counts[video]
                bi = video[int(rng.choice(len(video), p=vc / vc.sum()))]
            b = data[bi]
            Fp = 1 if img_step else b.frames
            Hp, Wp = b.latents.shape[3:]
            n_tok = Fp * (Hp // cfg.patch_size[1]) * (Wp // cfg.patch_size[2])
            B = int(np.clip(r.tokens // n_tok, 2, r.max_batch))
            idx = rng.integers(0, b.latents.shape[0], B)
            x0 = b.latents[idx][:, :, :Fp].float().to(dev)
            objw = b.objects[idx][:, :Fp].float().div(255).to(dev)                        # B F' H' W'
            caps = [training_caption(b.scenes[i], rng, r.p_short) if rng.random() >= r.p_drop else "" for i in idx]
            ctx, lens = text(caps, dev)
            m = torch.from_numpy(np.stack([sample_mask(Fp, rng, r.t2v_only)[0] for _ in range(B)])).to(dev)
            sigma = sample_sigma(B, gen).to(dev)
            noise = torch.randn(x0.shape, generator=gen).to(dev)
            s5 = sigma.view(B, 1, 1, 1, 1)
            known = m.view(B, 1, Fp, 1, 1)
            xs = ((1 - s5) * x0 + s5 * noise) * (1 - known) + x0 * known
            t = (1 - m) * sigma.view(B, 1) * 1000.0
            for g in opt.param_groups:
                g["lr"] = lr_at(step, r.steps, r.lr, warmup=r.warmup)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                v = model(xs, t, ctx, lens)
            err = (v.float() - (noise - x0)) ** 2
            w = (1 - known) * (1 + (r.obj_weight - 1) * objw[:, None])
            n_unknown = ((1 - known).sum() * x0.shape[1] * Hp * Wp).clamp(min=1)
            loss = (err * w).sum() / n_unknown
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            with torch.no_grad():
                d = min(r.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
            if step % 10 == 0:
                ck.log({"step": step, "loss": loss.item(), "grad_norm": float(gn), "bucket": b.name,
                        "image": bool(img_step), "batch": B, "time": time.time() - t0})
            if step % 100 == 0:
                print(f"dit step {step} loss {loss.item():.4f} gn {float(gn):.2f} {b.name}{' img' if img_step else ''} "
                      f"B={B} {time.time() - t0:.0f}s", flush=True)
            last = step + 1 == r.steps or (r.time_limit and time.time() - t0 > r.time_limit) or stop.requested
            probe_now = bool(r.probe_every) and (step + 1) % r.probe_every == 0
            if (step + 1) % 250 == 0 or last or probe_now:        # probed weights can always be taken back
                ck.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                         "step": step + 1})
                ck.plot(["loss"], "toy DiT training loss (flow matching, object-weighted)")
            if r.probe_every and (probe_now or (last and not stop.requested)):
                probe(step + 1)
                if stop_when_all and all(s["all"] == 1.0 for s in summary.values()):
                    ck.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                             "step": step + 1})
                    break
            if last:
                break
    write_safetensors_atomic(ema.state_dict(), Path(out) / "dit_ema.safetensors", overwrite=True)
    (Path(out) / "dit.json").write_text(json.dumps({"config": config_to_dict(cfg), "step": step + 1,
                                                    "probe": summary}, indent=1))
    return summary


def _plot_probe(ck: Checkpointer):
    rows = ck.rows("probe.jsonl")
    keep = {("image", "seen"): ("color", "shape", "all"), ("image", "held"): ("all",),
            ("video", "seen"): ("color", "motion", "all"), ("video", "held"): ("color", "all")}
    series = {}
    for r in rows:
        for m in keep.get((r["mode"], r["set"]), ("all",)):
            if m in r:
                series.setdefault(f"{r['mode']}/{r['set']}/{m}", []).append((r["step"], r[m]))
    from .plot import loss_plot
    loss_plot(series, ck.out / "probe.png", "prompt-following probe (EMA weights)", log=False)
