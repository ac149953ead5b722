"""Block-by-block offload of the DiT, for running a model larger than the device's memory outside ComfyUI's model
management (the command line and the Python API; inside ComfyUI its own model management does this job).

The last ``n`` transformer blocks stay in CPU memory (pinned, so copies run asynchronously). Just before block i
runs, its weights are on the device; while it runs, the next offloaded block is already being copied on a side
stream (CUDA) so the transfer overlaps the computation; once it has run, its device copy is dropped. Everything else
(embeddings, the resident blocks, the head) lives on the device. On a CPU "device" the same steps run as plain
copies, so the path is exercised (and its results are identical) everywhere.

Between blocks a ``check_cancel`` callable runs (it raises to stop); any exception releases every device copy.

    off = BlockOffload(dit, blocks=20, device="cuda")      # attaches itself; dit(...) works as before
    off.place("cuda")                                      # moves the resident part (ExpertPair does this)
    off.detach()                                           # back to a plain module (everything on ``device``)
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from .errors import SpacetimeValueError


class BlockOffload:
    def __init__(self, model, blocks: int, device, prefetch: int = 1, check_cancel: Optional[Callable] = None):
        n = len(model.blocks)
        check_offload_blocks(blocks, n)
        if prefetch < 0:
            raise SpacetimeValueError(f"prefetch={prefetch} must be >= 0")
        if getattr(model, "_block_offload", None) is not None:
            raise SpacetimeValueError("this DiT already has block offload attached; detach() it first")
        self.model = model
        self.device = torch.device(device)
        self.offloaded = list(range(n - blocks, n))
        self.prefetch = prefetch
        self.check_cancel = check_cancel
        self.copies = 0                              # block transfers so far (for tests and benchmarks)
        self._pin = self.device.type == "cuda" and torch.cuda.is_available()
        self._stream = torch.cuda.Stream(self.device) if self._pin else None
        self._live: dict = {}                         # block index -> (device tensors, ready event)
        self._masters: dict = {}                      # block index -> [(module, name, cpu tensor)]
        for i in self.offloaded:
            self._masters[i] = self._keep_on_cpu(model.blocks[i])
        self._originals = {}
        for i, blk in enumerate(model.blocks):
            self._originals[i] = blk.forward
            blk.forward = self._wrap(i, blk.forward)
        model.text_kv = self._text_kv
        model._block_offload = self

    # -------------------------------------------------------------------------------------------------- placement
    def _keep_on_cpu(self, block):
        masters = []
        for mod in block.modules():
            for name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
                cpu = t.data.to("cpu")
                if self._pin:
                    cpu = cpu.pin_memory()
                t.data = cpu
                masters.append((mod, name, cpu))
        return masters

    def place(self, device=None):
        """Move everything but the offloaded blocks to ``device`` (default: the compute device)."""
        device = torch.device(device) if device is not None else self.device
        off = set(self.offloaded)
        for name, child in self.model.named_children():
            if child is self.model.blocks:
                for i, blk in enumerate(child):
                    if i not in off:
                        blk.to(device)
            else:
                child.to(device)
        return self.model

    def detach(self):
        """Remove the offload: every block back on the compute device, plain forwards."""
        self.release_all()
        for i, blk in enumerate(self.model.blocks):
            if blk.__dict__.get("forward") is not None:
                del blk.forward
        self.model.__dict__.pop("text_kv", None)
        self.model._block_offload = None
        self.model.to(self.device)
        return self.model

    # -------------------------------------------------------------------------------------------------- transfers
    def _fetch(self, i: int):
        if i in self._live:
            return
        masters = self._masters[i]
        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                tensors = [cpu.to(self.device, non_blocking=True) for _, _, cpu in masters]
                ready = torch.cuda.Event()
                ready.record(self._stream)
        else:
            tensors = [cpu.to(self.device, copy=True) for _, _, cpu in masters]
            ready = None
        self._live[i] = (tensors, ready)
        self.copies += 1

    def _enter(self, i: int):
        self._fetch(i)
        tensors, ready = self._live[i]
        if ready is not None:
            torch.cuda.current_stream(self.device).wait_event(ready)
        for (mod, name, _), t in zip(self._masters[i], tensors):
            getattr(mod, name).data = t
        for j in self._upcoming(i):
            self._fetch(j)

    def _leave(self, i: int):
        live = self._live.pop(i, None)
        for mod, name, cpu in self._masters[i]:
            getattr(mod, name).data = cpu
        if live is not None and live[1] is not None:
            for t in live[0]:          # made on the side stream, read on the compute stream: keep until it is done
                t.record_stream(torch.cuda.current_stream(self.device))

    def _upcoming(self, i: int) -> list:
        return [j for j in self.offloaded if j > i][:self.prefetch]

    def release_all(self):
        for i in list(self._live):
            self._leave(i)

    # -------------------------------------------------------------------------------------------------- hooks
    def _wrap(self, i: int, forward):
        offloaded = i in self._masters

        def run_block(*args, **kwargs):
            try:
                if self.check_cancel is not None:
                    self.check_cancel()
                if not offloaded:
                    for j in self._upcoming(i):
                        self._fetch(j)
                    return forward(*args, **kwargs)
                self._enter(i)
                try:
                    return forward(*args, **kwargs)
                finally:
                    self._leave(i)
            except BaseException:
                self.release_all()
                raise
        return run_block

    def _text_kv(self, text_emb):
        """Cross-attention keys/values of every block (offloaded blocks are brought in one at a time)."""
        out = []
        for i, blk in enumerate(self.model.blocks):
            if i in self._masters:
                self._enter(i)
                try:
                    out.append(blk.cross_attn.text_kv(text_emb))
                finally:
                    self._leave(i)
            else:
                out.append(blk.cross_attn.text_kv(text_emb))
        return out


def check_offload_blocks(blocks, num_layers: int) -> None:
    if not isinstance(blocks, int) or isinstance(blocks, bool) or not 0 <= blocks <= num_layers:
        raise SpacetimeValueError(f"offload_blocks={blocks!r} is not allowed: this DiT has {num_layers} blocks; "
                                  f"allowed 0..{num_layers}")


def place_model(model, device):
    """Move a DiT to ``device``, keeping offloaded blocks in CPU memory when block offload is attached."""
    off = getattr(model, "_block_offload", None)
    if off is not None:
        return off.place(device)
    return model.to(device)


__all__ = ["BlockOffload", "place_model", "check_offload_blocks"]
