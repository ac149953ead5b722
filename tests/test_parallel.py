"""Sequence and CFG parallelism on 2 and 4 CPU ranks (gloo): sampled latents equal the single-process result to
1e-5 (fp32) for text-to-video and with known frames; uneven token counts; heads that do (Ulysses all-to-all) and do
not (key/value all-gather) divide by the group size; the layout chooser's errors."""
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from spacetime.model.cache import CacheSettings, StepCache
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.parallel import Layout, shard_plan
from spacetime.model.sampling import Contrast, FrameCondition, sample
from tiny_models import sampling_dit

TOL = 1e-5
SHAPE = (1, 16, 3, 12, 22)          # 3 x 6 x 11 = 198 tokens: uneven over 4 ranks, 66 per frame


def run_cases(parallel=None) -> dict:
    """Text-to-video and known frames (frame 0 known, per-frame timesteps), 3 UniPC steps with CFG, also with frame
    guidance (its pass without the known frames) and contrast guidance (its pass with the contrast text); and 6 steps with step caching and known frames (every rank must
    take the same skip decisions)."""
    m = sampling_dit()
    g = torch.Generator().manual_seed(1)
    noise, text, null = torch.randn(SHAPE, generator=g), torch.randn(1, 7, 32, generator=g), torch.zeros(1, 1, 32)
    known = FrameCondition(torch.randn(SHAPE, generator=g), torch.tensor([1.0, 0.0, 0.0]))
    out = {}
    for name, cond in (("t2v", None), ("known", known)):
        out[name] = sample(m, noise, text, null, steps=3, shift=3.0, cfg=4.0, cond=cond, parallel=parallel)
    out["guided"] = sample(m, noise, text, null, steps=3, shift=3.0, cfg=4.0, cond=known, parallel=parallel,
                           frame_cfg=1.5)
    out["contrast"] = sample(m, noise, text, null, steps=3, shift=3.0, cfg=4.0, parallel=parallel,
                             contrast=Contrast(torch.randn(1, 5, 32, generator=g), None, 2.0, 0.3))
    cache = StepCache(CacheSettings(threshold=1.0))
    out["cached"] = sample(m, noise, text, null, steps=6, shift=3.0, cfg=4.0, cond=known, parallel=parallel,
                           cache=cache)
    out["cached_skips"] = torch.tensor(cache.decisions)
    return out


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from spacetime.model.parallel import setup, teardown
    results = {}
    for layout in (Layout(world, 1), Layout(world // 2, 2)):
        par = setup(layout, "cpu")
        for name, lat in run_cases(par).items():
            results[f"{layout.sequence}x{layout.cfg}_{name}"] = lat.contiguous()
    save_file(results, str(Path(out_dir) / f"rank{rank}.safetensors"))
    teardown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    return run_cases()


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_sampling_equals_single_process(world, single, tmp_path):
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(world)]
    assert len(ranks[0]) == 12                              # two layouts x five cases, and the skip decisions
    assert single["cached_skips"].any()
    for key, lat in ranks[0].items():
        if key.endswith("skips"):
            assert torch.equal(lat, single["cached_skips"]), key
            continue
        diff = (lat - single[key.split("_", 1)[1]]).abs().max().item()
        assert diff <= TOL, f"{world} ranks, layout {key}: max difference {diff:.2e}"
        for r in ranks[1:]:
            assert torch.equal(r[key], lat), f"rank results differ for {key}"


@pytest.mark.parametrize("L,G,parts", [(198, 3, 4), (198, 3, 2), (32760, 21, 8), (8190, 21, 3), (45, 45, 4),
                                       (75600, 21, 8), (5, 1, 4), (1560, 1, 2)])
def test_shard_plan_aligns_runs_to_modulation_groups(L, G, parts):
    Ls, d = shard_plan(L, G, parts)
    assert Ls * parts >= L and Ls % d == 0
    if G > 1:
        assert (L // G) % d == 0
        assert Ls - -(-L // parts) < d and Ls <= -(-L // parts) * 1.04 + d


def test_sequence_parallel_reaches_a_dit_inside_a_wrapper():
    """Attaching to an image-to-video wrapper (model/concat.py) installs the shards on the DiT itself, and detaching
    removes them."""
    from spacetime.model.concat import ConcatConditioned
    from spacetime.model.dit import SelfAttention
    from spacetime.model.parallel import Parallel
    m = sampling_dit()
    with Parallel(Layout(2, 1), 0, "cpu").attach(ConcatConditioned(m, torch.zeros(1))) as inner:
        assert inner is m and m.sequence_parallel is not None
        assert all(blk.self_attn.attend == m.sequence_parallel.attention for blk in m.blocks)
    assert m.sequence_parallel is None and all(blk.self_attn.attend is SelfAttention.attend for blk in m.blocks)


def test_layout_choice_and_errors():
    assert Layout.choose(4, guidance=True) == Layout(2, 2)
    assert Layout.choose(3, guidance=True) == Layout(3, 1)
    assert Layout.choose(4, guidance=False) == Layout(4, 1)
    assert Layout.choose(2, guidance=True, cfg_mode="off") == Layout(2, 1)
    assert Layout(2, 1).to_dict() == {"sequence": 2, "cfg": 1}
    with pytest.raises(SpacetimeValueError, match="even"):
        Layout.choose(3, guidance=True, cfg_mode="on")
    with pytest.raises(SpacetimeValueError, match="guidance"):
        Layout.choose(2, guidance=False, cfg_mode="on")
    with pytest.raises(SpacetimeValueError, match="at least 1"):
        Layout.choose(0, guidance=True)
    with pytest.raises(SpacetimeValueError, match="allowed"):
        Layout.choose(2, guidance=True, cfg_mode="maybe")


@pytest.mark.slow
def test_gpu_benchmark_script_runs_on_cpu_and_memory_per_rank_falls(tmp_path, monkeypatch):
    """benchmarks/bench_parallel.py (the script for GPU machines) on CPU ranks: every layout agrees with one rank
    and a sequence split of 2 needs less activation memory per rank than one rank."""
    import sys
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import bench_parallel
    rows = bench_parallel.main(["--device", "cpu", "--config", "bench", "--ranks", "1,2", "--frames", "9",
                                "--size", "384x384", "--steps", "1", "--reps", "1", "--json", str(tmp_path / "r.json")])
    assert [(r["sequence"], r["cfg"]) for r in rows] == [(1, 1), (2, 1), (1, 2)]
    assert all(r["max_diff"] <= TOL for r in rows), rows
    act = {(r["sequence"], r["cfg"]): r["activation_mb"] for r in rows}
    assert 0 < act[(2, 1)] < 0.8 * act[(1, 1)], act
    del sys.modules["bench_parallel"]
