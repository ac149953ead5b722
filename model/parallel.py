"""Sampling across several processes with torch.distributed (NCCL on GPUs, gloo on CPU): sequence parallelism and
CFG parallelism, composable.

Layout: ``world = cfg x sequence`` ranks. Global rank r has CFG index r // sequence and sequence index
r % sequence; ranks with the same CFG index form a sequence group, ranks with the same sequence index a CFG group.

Sequence parallelism (Ulysses style). The DiT's L tokens are split into ``sequence`` contiguous shards of Ls tokens
(the last ones padded with zero tokens); a rank embeds only its shard's patches and keeps its shard's 3D RoPE
rotations and modulation. Self-attention: q, k, v of the shard for all H heads -> all-to-all -> all tokens for
H / sequence heads -> attention over the L real keys (padding keys are cut off, so they need no mask) -> all-to-all
back. When H does not divide by the group size, keys and values are all-gathered instead and each rank attends its
own queries to all keys. Cross-attention, FFN, norms and the head are per token and run on the shard unchanged; the
head's output is all-gathered, so every rank holds the whole prediction and runs the solver identically. With
per-frame timesteps (known frames), Ls is rounded up to a multiple of a divisor d of the tokens per frame, so every
run of d tokens of a shard lies in one frame and the per-frame modulation is re-indexed per run (no per-token copy).

CFG parallelism. With guidance, the conditional and unconditional passes run on the two CFG groups (each with its
half of the text keys/values); the two predictions are all-gathered inside each CFG group and combined on every
rank.

All ranks start from rank 0's noise, text and known frames (broadcast), so they hold identical latents throughout.

Launch: ``torchrun --nproc-per-node N -m spacetime.cli generate ...`` or ``spacetime generate ... --parallel N``
(which starts the other ranks itself, see ``spawn_ranks``). ``setup`` reads torchrun's environment variables.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch

from .attention import attention
from .errors import SpacetimeValueError

CFG_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Layout:
    """How ``world`` ranks are used: ``cfg`` (1 or 2) groups of ``sequence`` ranks."""
    sequence: int = 1
    cfg: int = 1

    def __post_init__(self):
        if self.sequence < 1:
            raise SpacetimeValueError(f"sequence parallel size {self.sequence} must be at least 1")
        if self.cfg not in (1, 2):
            raise SpacetimeValueError(f"CFG parallel size {self.cfg} is not allowed; allowed: 1 or 2")

    @property
    def world(self) -> int:
        return self.sequence * self.cfg

    def to_dict(self) -> dict:
        return {"sequence": self.sequence, "cfg": self.cfg}

    def __str__(self):
        return f"sequence {self.sequence} x cfg {self.cfg}"

    @classmethod
    def choose(cls, world: int, guidance: bool, cfg_mode: str = "auto") -> "Layout":
        """The layout for ``world`` ranks: CFG parallel when ``cfg_mode`` is on, or auto with guidance and an even
        world; the rest sequence parallel."""
        if world < 1:
            raise SpacetimeValueError(f"parallel={world} must be at least 1")
        if cfg_mode not in CFG_MODES:
            raise SpacetimeValueError(f"cfg_parallel={cfg_mode!r} is not allowed; allowed: {', '.join(CFG_MODES)}")
        if cfg_mode == "on":
            if not guidance:
                raise SpacetimeValueError("CFG parallelism needs guidance (cfg > 1 with a negative pass)")
            if world % 2:
                raise SpacetimeValueError(f"CFG parallelism needs an even number of ranks; parallel={world}")
        use = cfg_mode == "on" or (cfg_mode == "auto" and guidance and world % 2 == 0)
        return cls(world // 2, 2) if use else cls(world, 1)


# ----------------------------------------------------------------------------------------------------------------------
# Sequence shards
# ----------------------------------------------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def shard_plan(L: int, G: int, parts: int) -> tuple[int, int]:
    """(Ls, d): tokens per shard and the run length within which a shard's tokens share a modulation group, for L
    tokens in G contiguous groups split ``parts`` ways. Ls >= ceil(L / parts) is a multiple of d, and d divides
    L / G, so runs never straddle groups; the rounding adds at most ~3 % padding."""
    base = -(-L // parts)
    if G <= 1:
        return base, base
    n = L // G
    d = max(k for k in _divisors(n) if k <= max(1, base // 32))
    return -(-base // d) * d, d


class SequenceShards:
    """One rank's view of a sequence group, installed on a WanDiT (``model.sequence_parallel``) and its
    self-attention blocks while sampling."""

    def __init__(self, group, rank: int, size: int):
        self.group, self.rank, self.size = group, rank, size
        self.L = self.Ls = self.valid = 0

    # -- tokens in, prediction out --
    def shard(self, model, x: torch.Tensor, tg: torch.Tensor, rope: torch.Tensor, grid):
        """This rank's tokens [B, Ls, dim] (patch-embedded from its frames only), group timesteps and rotations."""
        Fp, Hp, Wp = grid
        L, HW, G = Fp * Hp * Wp, Hp * Wp, tg.shape[1]
        Ls, d = shard_plan(L, G, self.size)
        self.L, self.Ls = L, Ls
        s0, s1 = min(self.rank * Ls, L), min(self.rank * Ls + Ls, L)
        self.valid = s1 - s0                                  # real tokens of this shard (the rest is padding)
        B = x.shape[0]
        if s1 > s0:
            f0, f1 = s0 // HW, (s1 - 1) // HW + 1
            pt = model.cfg.patch_size[0]
            h = model._tokens(x[:, :, f0 * pt:f1 * pt])[:, s0 - f0 * HW:s1 - f0 * HW]
        else:
            h = torch.zeros(B, 0, model.cfg.dim, device=model.device)
        rot = rope[s0:s1]
        if s1 - s0 < Ls:                                      # padding tokens: zeros, no rotation
            h = torch.cat([h, h.new_zeros(B, Ls - (s1 - s0), h.shape[2])], dim=1)
            rot = torch.cat([rot, rot.new_ones(Ls - (s1 - s0), rot.shape[1])])
        if G > 1:                                             # one group per run of d tokens
            idx = (torch.arange(self.rank * Ls, self.rank * Ls + Ls, d) // (L // G)).clamp(max=G - 1)
            tg = tg[:, idx.to(tg.device)]
        return h.contiguous(), tg, rot

    def gather(self, out: torch.Tensor) -> torch.Tensor:
        """[B, Ls, C] per rank -> [B, L, C] on every rank."""
        parts = [torch.empty_like(out) for _ in range(self.size)]
        torch.distributed.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, :self.L]

    # -- self-attention --
    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [B, H, Ls, d] of this rank's tokens -> attention output over all tokens, [B, H, Ls, d]."""
        H = q.shape[1]
        if H % self.size == 0:                                 # Ulysses: heads <-> sequence
            q, k, v = (self._seq_from_heads(t) for t in (q, k, v))
            return self._heads_from_seq(attention(q, k[:, :, :self.L], v[:, :, :self.L]))
        k, v = (self._gather_seq(t) for t in (k, v))          # heads do not split: all keys to every rank
        return attention(q, k, v)

    def _seq_from_heads(self, t):
        """[B, H, Ls, d] (all heads, my tokens) -> [B, H/P, P*Ls, d] (my heads, all tokens)."""
        P = self.size
        B, H, Ls, d = t.shape
        send = t.reshape(B, P, H // P, Ls, d).transpose(0, 1).contiguous()      # chunk p goes to rank p
        recv = torch.empty_like(send)
        torch.distributed.all_to_all_single(recv, send, group=self.group)       # chunk r: rank r's tokens
        return recv.permute(1, 2, 0, 3, 4).reshape(B, H // P, P * Ls, d)

    def _heads_from_seq(self, t):
        """[B, H/P, P*Ls, d] -> [B, H, Ls, d]."""
        P = self.size
        B, Hp, _, d = t.shape
        send = t.reshape(B, Hp, P, self.Ls, d).permute(2, 0, 1, 3, 4).contiguous()   # chunk p: rank p's tokens
        recv = torch.empty_like(send)
        torch.distributed.all_to_all_single(recv, send, group=self.group)           # chunk r: heads of rank r
        return recv.transpose(0, 1).reshape(B, Hp * P, self.Ls, d)

    def _gather_seq(self, t):
        parts = [torch.empty_like(t) for _ in range(self.size)]
        torch.distributed.all_gather(parts, t.contiguous(), group=self.group)
        return torch.cat(parts, dim=2)[:, :, :self.L]


# ----------------------------------------------------------------------------------------------------------------------
# This process in a layout
# ----------------------------------------------------------------------------------------------------------------------

class Parallel:
    """This process's place in a layout: its ranks, process groups and device."""

    def __init__(self, layout: Layout, rank: int, device: torch.device, groups=None):
        self.layout, self.rank, self.device = layout, rank, torch.device(device)
        self.cfg_rank, self.seq_rank = divmod(rank, layout.sequence)
        self.seq_group, self.cfg_group = groups or (None, None)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextmanager
    def attach(self, model):
        """Sequence-parallel sampling of ``model`` inside the block (nothing to do for a sequence size of 1)."""
        if self.layout.sequence == 1:
            yield model
            return
        from .dit import base_dit
        model = base_dit(model)
        shards = SequenceShards(self.seq_group, self.seq_rank, self.layout.sequence)
        model.sequence_parallel = shards
        for blk in model.blocks:
            blk.self_attn.attend = shards.attention
        try:
            yield model
        finally:
            del model.sequence_parallel
            for blk in model.blocks:
                del blk.self_attn.attend

    def cfg_share(self, kv):
        """This CFG group's half (cond or uncond) of joined text keys/values."""
        if self.layout.cfg == 1:
            return kv

        def half(t):
            n = t.shape[0] // 2
            return t[self.cfg_rank * n:(self.cfg_rank + 1) * n]
        return [(half(k), half(v), bias) for k, v, bias in kv]

    def guided_pair(self, model, x: torch.Tensor, t: torch.Tensor, kv) -> tuple[torch.Tensor, torch.Tensor]:
        """(v_cond, v_uncond): this rank's pass with its share of the text, the other from its CFG partner."""
        mine = model(x, t, text_kv=kv).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        torch.distributed.all_gather(both, mine, group=self.cfg_group)
        return both[0], both[1]

    def same(self, *tensors):
        """Rank 0's values of ``tensors`` (None passes through) on every rank."""
        out = []
        for t in tensors:
            if t is not None and self.layout.world > 1:
                t = t.contiguous()
                torch.distributed.broadcast(t, 0)
            out.append(t)
        return out

    def all_max(self, value: torch.Tensor) -> torch.Tensor:
        if self.layout.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return value

    def seq_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.layout.sequence > 1:
            value = value.clone()
            torch.distributed.all_reduce(value, group=self.seq_group)
        return value


def env_world() -> int:
    """The world size torchrun (or ``spawn_ranks``) gave this process, 1 outside a launch."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(layout: Layout, device=None, timeout_s: float = 1800.0) -> Parallel:
    """Join the process group described by torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT) and build the layout's groups. ``device``: None/"auto" picks cuda:LOCAL_RANK when
    CUDA is available (NCCL), else the CPU (gloo)."""
    import torch.distributed as dist
    world, rank = env_world(), int(os.environ.get("RANK", "0"))
    if world != layout.world:
        raise SpacetimeValueError(f"layout {layout} needs {layout.world} ranks but WORLD_SIZE is {world}")
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise SpacetimeValueError(f"rank {rank} needs GPU {local} but {torch.cuda.device_count()} are visible")
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    elif world > 1:                                           # ranks on one machine share its cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world == 1:
        return Parallel(layout, 0, device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None)
    S, C = layout.sequence, layout.cfg
    seq_groups = [dist.new_group([c * S + s for s in range(S)]) for c in range(C)]
    cfg_groups = [dist.new_group([c * S + s for c in range(C)]) for s in range(S)]
    cfg_rank, seq_rank = divmod(rank, S)
    return Parallel(layout, rank, device, (seq_groups[cfg_rank], cfg_groups[seq_rank]))


def teardown():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# Starting ranks without torchrun
# ----------------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ranks:
    """Ranks 1..world-1 started by ``spawn_ranks``. A rank that fails ends the whole run: its last output lines are
    printed by rank 0 (the only rank that prints) and the others are stopped."""

    def __init__(self, procs, logs):
        self.procs, self.logs = procs, logs
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def _tail(self, i) -> str:
        self.logs[i].flush()
        self.logs[i].seek(0)
        lines = self.logs[i].read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-6:])

    def _watchdog(self):
        import time
        while True:
            for i, p in enumerate(self.procs):
                code = p.poll()
                if code not in (None, 0):
                    print(f"spacetime: rank {i + 1} failed (exit {code}):\n{self._tail(i)}", file=sys.stderr)
                    self.stop()
                    os._exit(1)
            if all(p.poll() == 0 for p in self.procs):
                return
            time.sleep(0.2)

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()

    def wait(self, timeout: float = 600.0) -> bool:
        """Wait for every rank to finish; True when all succeeded."""
        try:
            return all(p.wait(timeout=timeout) == 0 for p in self.procs)
        except subprocess.TimeoutExpired:
            self.stop()
            return False


def spawn_ranks(world: int, argv: list[str]) -> Ranks:
    """Start ``python -m spacetime.cli ARGV`` as ranks 1..world-1 on this machine (torchrun's environment
    variables, a free local port) and make this process rank 0."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world))
    procs, logs = [], []
    for r in range(1, world):
        log = tempfile.TemporaryFile()
        procs.append(subprocess.Popen([sys.executable, "-m", "spacetime.cli", *argv],
                                      env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=log))
        logs.append(log)
    os.environ.update({k: env[k] for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_WORLD_SIZE")},
                      RANK="0", LOCAL_RANK="0")
    return Ranks(procs, logs)
