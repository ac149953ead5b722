"""Step caching on the embedded model (prints figures; not a test).

    python benchmarks/bench_cache.py [--thresholds 0.05,0.1,0.2] [--limit N] [--steps 20] [--known]

Generates the prompt-following probe's clips (toyworld.probe: the seen and held-out prompt sets, fixed seeds, the
sampler users get, 17 frames at 64x64, CFG 5) with the weights in weights/ (whatever they are today), once without
the cache and once per threshold, and reports the predicted change per step of the uncached run (to choose a
threshold) and for each threshold:
- the model calls whose blocks were computed (what bounds the speed-up, independent of machine load) and the
  measured speed-up of the time spent in the DiT;
- PSNR of every clip against its uncached version (mean and worst);
- prompt-following scores from the pixels (toyworld.analysis via toyworld.probe.score): the share of clips with
  every attribute right, per set, next to the uncached figure.
``--known`` also runs image-to-video (the uncached clip's first latent frame known) and reports the known frame's
exactness. ``--limit`` takes the first N prompts of each set (the full probe has 40 + 20 and takes a while on a CPU).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _checkout import ROOT  # noqa: F401,E402  (imports this checkout as ``spacetime``)
from spacetime.model.cache import CacheSettings, step_cache
from spacetime.model.pipeline import Spacetime
from spacetime.toyworld import probe
from spacetime.toyworld.analysis import psnr


def run(st, items, steps, settings):
    """(clips, seconds inside the DiT, the StepCache) for ``items`` with the probe's generator. Threshold 0 computes
    every step and only records the predicted changes."""
    spent = [0.0]

    def start(*_):
        spent.append(time.perf_counter())

    def stop(*_):
        spent[0] += time.perf_counter() - spent.pop()
    hooks = [st.dit.register_forward_pre_hook(start), st.dit.register_forward_hook(stop)]
    try:
        with step_cache(st.dit, settings) as cache:
            clips = probe.generate_items(st.dit, st.vae, st.text_encoder, items, steps=steps)
    finally:
        for h in hooks:
            h.remove()
    return clips, spent[0], cache


def scores(clips, items) -> float:
    return probe.summarize([probe.score(c, it.scene) for c, it in zip(clips, items)])["all"]


@torch.no_grad()
def image_to_video(st, clip0, item, steps, settings):
    """The uncached clip's first frame as a known frame: max abs error of the kept latent frame, and PSNR."""
    from spacetime.model.conditioning import Placement, to_video
    pl = Placement.empty(1, clip0.shape[0], clip0.shape[1], clip0.shape[2]).put(0, to_video(
        torch.from_numpy(clip0[:1]).float() / 255.0))
    cond = st.condition_from_frames(pl)
    text = st.encode_text([item.prompt], [""])
    shape = st.latent_shape(1, clip0.shape[0], clip0.shape[1], clip0.shape[2])
    ref = st.sample_latents(text, shape, item.seed, steps, cache=None, cond=cond)
    out = st.sample_latents(text, shape, item.seed, steps, cache=settings, cond=cond)
    kept = (st.normalize(out)[:, :, 0] - cond.latents[:, :, 0]).abs().max().item()
    return kept, psnr(st.decode(ref)[0].numpy(), st.decode(out)[0].numpy())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thresholds", default="0.05,0.1,0.2", help="comma-separated (default: 0.05,0.1,0.2)")
    ap.add_argument("--limit", type=int, default=0, help="prompts per set (default: 0, all)")
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20, the preset's)")
    ap.add_argument("--known", action="store_true", help="also image-to-video with each threshold (default: off)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    st = Spacetime.load("toyworld", device="cpu")
    sets = {"seen": probe.SEEN, "held": probe.HELD}
    if a.limit:
        sets = {k: v[:a.limit] for k, v in sets.items()}
    items = [it for v in sets.values() for it in v]
    print(f"embedded model ({st.dit_path.name}, sha256 {st.checkpoint_sha256()[:12]}), {len(items)} probe clips, "
          f"{a.steps} steps, CFG {st.preset.cfg}")
    base, t_base, trace = run(st, items, a.steps, CacheSettings(threshold=0.0, steps=a.steps))
    splits = {k: slice(sum(len(v) for v in list(sets.values())[:i]), sum(len(v) for v in list(sets.values())[:i + 1]))
              for i, k in enumerate(sets)}
    base_scores = {k: scores(base[s], items[s]) for k, s in splits.items()}
    print(f"  uncached: {t_base:.1f} s in the DiT; all-right share " +
          ", ".join(f"{k} {v:.0%}" for k, v in base_scores.items()))
    pred = np.array([np.nan if v is None else v for v in trace.predicted]).reshape(-1, a.steps)
    print("  predicted relative residual change per step (rho x delta, median over batches): " +
          " ".join("-" if np.isnan(v) else f"{v:.3f}" for v in np.nanmedian(pred, axis=0)))
    print("  threshold | blocks computed | DiT time speed-up | PSNR vs uncached (mean / worst) | all-right share")
    for thr in (float(v) for v in a.thresholds.split(",")):
        settings = CacheSettings(threshold=thr, steps=a.steps)
        clips, t, cache = run(st, items, a.steps, settings)
        share = cache.computed / max(1, cache.computed + cache.skipped)
        p = [psnr(c, b) for c, b in zip(clips, base)]
        sc = {k: scores(clips[s], items[s]) for k, s in splits.items()}
        print(f"  {thr:9.3f} | {share:15.0%} | {t_base / t:16.2f}x | {np.mean(p):6.1f} dB / {min(p):5.1f} dB"
              f"              | " + ", ".join(f"{k} {v:.0%} ({v - base_scores[k]:+.0%})" for k, v in sc.items()))
        if a.known:
            kept, kp = image_to_video(st, base[0], items[0], a.steps, settings)
            print(f"            image-to-video: known frame max error {kept:.1e}, PSNR vs uncached {kp:.1f} dB")


if __name__ == "__main__":
    main()
