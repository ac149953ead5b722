"""Shared pieces of the training stages: devices, run folders that resume, learning-rate schedule, clip tensors.

A run folder holds everything a stage needs to continue after an interruption: ``state.pt`` (model, EMA,
optimiser, step; plain tensors read with ``weights_only=True``), ``log.jsonl`` and plots. It lives outside the
repository (default: the user's cache folder, see ``default_run_dir``); re-running the same command resumes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from .plot import loss_plot


def default_run_dir() -> Path:
    """``$SPACETIME_RUNS`` or ``<user cache>/spacetime/runs/embedded``."""
    env = os.environ.get("SPACETIME_RUNS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spacetime" / "runs" / "embedded"


def device_and_threads(threads: int | None = None) -> torch.device:
    """A CUDA GPU when there is one, otherwise the CPU with ``threads`` (``$SPACETIME_THREADS``, else all cores)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    n = threads or int(os.environ.get("SPACETIME_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, n))
    return torch.device("cpu")


def clips_to_tensor(clips) -> torch.Tensor:
    """list of Clip -> [B, 3, T, H, W] in [-1, 1]."""
    arr = np.stack([c.frames for c in clips])                    # B T H W C
    return torch.from_numpy(arr).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def lr_at(step: int, total: int, peak: float, warmup: int = 200, floor: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


class StopOnSignal:
    """While active, SIGTERM and SIGINT only set ``requested``: a training loop then saves its state at the end of
    the current step and returns, so stopping a run loses no finished step."""

    def __init__(self):
        self.requested = False
        self._old = {}

    def __enter__(self):
        import signal
        import threading
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum, frame):
        self.requested = True
        print("stop requested: saving after this step", flush=True)

    def __exit__(self, *exc):
        import signal
        for sig, h in self._old.items():
            signal.signal(sig, h)
        return False


class Checkpointer:
    """Resumable training state: ``state.pt`` (written atomically) + ``log.jsonl`` + plots."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"

    def load(self):
        p = self.out / "state.pt"
        return torch.load(p, map_location="cpu", weights_only=True) if p.exists() else None

    def save(self, state: dict):
        tmp = self.out / "state.pt.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.out / "state.pt")

    def log(self, row: dict, name: str = "log.jsonl"):
        with open(self.out / name, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rows(self, name: str = "log.jsonl"):
        p = self.out / name
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def plot(self, keys, title, name: str = "log.jsonl", png: str = "loss.png", log: bool = True):
        rows = self.rows(name)
        loss_plot({k: [(r["step"], r[k]) for r in rows if k in r] for k in keys}, self.out / png, title, log=log)
