"""Low VRAM: block-by-block offload of the DiT gives the same samples, streams the blocks, stops between blocks on
cancel and cleans up, keeps LoRAs merged before it attaches and changed after; fp16 attention falls back to float32
where its scores would overflow."""
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from spacetime.model.attention import attention, scores_may_overflow
from spacetime.model.config import dit_preset
from spacetime.model.dit import build_dit
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.offload import BlockOffload, place_model
from spacetime.model.pipeline import Spacetime
from spacetime.model.sampling import FrameCondition, sample

CFG = replace(dit_preset("wan-tiny"), num_layers=4)


def tiny(seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        m = build_dit(CFG)
        torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m.eval()


def inputs():
    g = torch.Generator().manual_seed(5)
    known = torch.randn(1, 16, 3, 4, 4, generator=g)
    return (torch.randn(1, 16, 3, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
            torch.randn(1, 3, 64, generator=g), FrameCondition(known, torch.tensor([1.0, 0, 0])))


def test_offloaded_sampling_equals_plain_sampling():
    m = tiny()
    noise, txt, neg, cond = inputs()
    kw = dict(steps=4, shift=5.0, cfg=4.0, cond=cond)
    plain = sample(m, noise, txt, neg, **kw)
    masters = [p.data_ptr() for p in m.blocks[1].parameters()]
    off = BlockOffload(m, 3, "cpu")
    streamed = sample(m, noise, txt, neg, **kw)
    assert (streamed - plain).abs().max().item() <= 1e-6
    # 3 offloaded blocks: fetched once each for the text keys/values and once per step
    assert off.copies == 3 * (1 + 4)
    assert not off._live                                            # nothing left on the "device"
    assert [p.data_ptr() for p in m.blocks[1].parameters()] == masters
    off.detach()
    assert torch.equal(sample(m, noise, txt, neg, **kw), plain)
    assert "forward" not in m.blocks[1].__dict__ and getattr(m, "_block_offload") is None


def test_cancel_is_checked_between_blocks_and_cleans_up():
    m = tiny()
    noise, txt, neg, _ = inputs()
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 7:                  # mid-way through the second forward pass (4 blocks each)
            raise KeyboardInterrupt
    off = BlockOffload(m, 2, "cpu", check_cancel=cancel)
    with pytest.raises(KeyboardInterrupt):
        sample(m, noise, txt, neg, steps=4, shift=5.0, cfg=4.0)
    assert len(calls) == 7 and not off._live
    for i in off.offloaded:                                          # weights are the CPU copies again
        assert all(p.data_ptr() == cpu.data_ptr() for (mod, name, cpu), p in
                   zip(off._masters[i], [getattr(mod, name) for mod, name, _ in off._masters[i]]))
    off.check_cancel = None
    plain = tiny()
    assert torch.equal(sample(m, noise, txt, neg, steps=2, shift=5.0, cfg=4.0),
                       sample(plain, noise, txt, neg, steps=2, shift=5.0, cfg=4.0))


def test_offload_settings_are_checked():
    m = tiny()
    with pytest.raises(SpacetimeValueError, match=r"offload_blocks=5 .* 4 blocks; allowed 0\.\.4"):
        BlockOffload(m, 5, "cpu")
    BlockOffload(m, 4, "cpu")
    with pytest.raises(SpacetimeValueError, match="already has block offload"):
        BlockOffload(m, 1, "cpu")
    assert place_model(m, "cpu") is m
    with pytest.raises(SpacetimeValueError, match=r"offload_blocks=99 .*allowed 0\.\.8"):
        Spacetime.load("toyworld-random", offload_blocks=99)


def test_python_api_offload_gives_the_same_video():
    kw = dict(frames=1, width=64, height=64, steps=2, seed=4)
    plain = Spacetime.load("toyworld-random", device="cpu").generate("a red ball on navy", **kw)
    st = Spacetime.load("toyworld-random", device="cpu", offload_blocks=5)
    streamed = st.generate("a red ball on navy", **kw)
    assert st.dit._block_offload.copies > 0
    assert (streamed - plain).abs().max().item() <= 1e-6


def test_lora_is_merged_before_block_offload_attaches_and_later_changes_reach_offloaded_blocks(tmp_path,
                                                                                                monkeypatch):
    import spacetime.model.pipeline as pipeline
    from spacetime.model.loading import write_safetensors_atomic
    from spacetime.model.lora import activate, combine, read_lora, resolve, state_of
    g = torch.Generator().manual_seed(2)
    lora = {}
    for i in (0, 3):                                   # a resident block and an offloaded one
        lora[f"diffusion_model.blocks.{i}.ffn.0.lora_up.weight"] = torch.randn(512, 4, generator=g) * 0.2
        lora[f"diffusion_model.blocks.{i}.ffn.0.lora_down.weight"] = torch.randn(4, 256, generator=g) * 0.2
    lora["diffusion_model.blocks.3.norm3.diff_b"] = torch.randn(256, generator=g) * 0.1
    path = tmp_path / "style.safetensors"
    write_safetensors_atomic(lora, path)
    attached = []
    real = pipeline.BlockOffload

    def spy(model, *args, **kwargs):                   # what the weights are when offload takes the CPU copies
        attached.append((state_of(model).key, model.blocks[3].norm3.bias.detach().clone()))
        return real(model, *args, **kwargs)
    monkeypatch.setattr(pipeline, "BlockOffload", spy)
    st = Spacetime.load("toyworld-random", device="cpu", offload_blocks=2)
    st = replace(st, builders=dict(st.builders, dit=lambda b: tiny()))
    styled = st.with_lora(path, 0.9)
    ref = tiny()                                       # the LoRA merged by hand, no offload
    activate(ref, ("ref",), combine([(resolve(read_lora(path), ref), 0.9)]), "merged")
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 64)
    with torch.no_grad():
        out = styled.dit(x, t, ctx)
        assert len(attached) == 1 and attached[0][0]                 # the LoRA was active when offload attached
        assert torch.equal(attached[0][1], ref.blocks[3].norm3.bias)
        assert styled.dit._block_offload.offloaded == [2, 3]
        assert torch.allclose(out, ref(x, t, ctx), atol=1e-5, rtol=1e-5)
        plain = tiny()(x, t, ctx)
        off = st.dit._block_offload                                  # the LoRA comes off the offloaded blocks
        assert torch.allclose(st.dit(x, t, ctx), plain, atol=1e-5, rtol=1e-5)
        off._fetch(3)                        # a prefetched device copy of block 3 made before the LoRA goes back on
        assert torch.allclose(styled.dit(x, t, ctx), ref(x, t, ctx), atol=1e-5, rtol=1e-5)
        assert not off._live


def test_fp16_attention_switches_to_float32_when_scores_would_overflow():
    g = torch.Generator().manual_seed(0)
    d = 128
    q = torch.randn(1, 2, 64, d, generator=g)
    k = torch.randn(1, 2, 64, d, generator=g)
    v = torch.randn(1, 2, 64, d, generator=g)
    big_q, big_k = q + 80.0, k + 80.0            # aligned keys and queries: scores q.k/sqrt(d) ~ 7e4 > 65504
    ref = F.scaled_dot_product_attention(big_q, big_k, v)
    half = [t.half() for t in (big_q, big_k, v)]
    s = d ** -0.25                                # the reference ("math") path scales q and k, then multiplies
    scores = (half[0] * s) @ (half[1] * s).transpose(-1, -2)
    assert torch.isinf(scores).any() and torch.isnan(torch.softmax(scores, -1)).any()   # fp16 would break
    assert scores_may_overflow(*half[:2])
    out = attention(*half)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max().item() < 1e-2
    small = [t.half() for t in (q, k, v)]
    assert not scores_may_overflow(*small[:2])
    assert torch.equal(attention(*small), F.scaled_dot_product_attention(*small))
    bf = [t.bfloat16() for t in (big_q, big_k, v)]                 # bf16 has float32's range: left alone
    assert torch.equal(attention(*bf), F.scaled_dot_product_attention(*bf))
