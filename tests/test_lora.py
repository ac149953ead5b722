"""LoRAs: every key format lands as the weight update it describes (to 1e-5), merged and unmerged modes agree, the
change comes off exactly, and files that do not fit fail naming the keys."""
import json

import pytest
import torch

from spacetime.model.config import dit_preset
from spacetime.model.dit import build_dit
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.loading import load_dit, write_safetensors_atomic
from spacetime.model.lora import (LoraError, LoraSpec, activate, combine, deactivate, read_lora, resolve,
                                  state_of)

R = 4


def _model():
    torch.manual_seed(0)
    m = build_dit(dit_preset("wan-tiny")).eval()
    torch.nn.init.normal_(m.head.head.weight, std=0.02)
    return m


def _pair(out_dim, in_dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_dim, R, generator=g) * 0.1, torch.randn(R, in_dim, generator=g) * 0.1


# Each case: (LoRA state dict, safetensors metadata, {parameter: expected delta at strength 1})
def _cases():
    up, down = _pair(256, 256, 1)         # blocks.0.self_attn.q: Linear 256 -> 256
    fup, fdown = _pair(512, 256, 2)       # blocks.1.ffn.0: Linear 256 -> 512
    q, f = "blocks.0.self_attn.q.weight", "blocks.1.ffn.0.weight"
    low = up @ down
    ffn = fup @ fdown
    cases = {
        "comfyui": ({"diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
                     "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
                     "diffusion_model.blocks.0.self_attn.q.alpha": torch.tensor(2.0),
                     "model.diffusion_model.blocks.1.ffn.0.lora_up.weight": fup,
                     "model.diffusion_model.blocks.1.ffn.0.lora_down.weight": fdown},
                    None, {q: low * 2.0 / R, f: ffn}),
        "kohya": ({"lora_unet_blocks_0_self_attn_q.lora_up.weight": up,
                   "lora_unet_blocks_0_self_attn_q.lora_down.weight": down,
                   "lora_unet_blocks_0_self_attn_q.alpha": torch.tensor(8.0),
                   "lora_unet__blocks_1_ffn_0.lora_up.weight": fup,            # Wan Fun's double underscore
                   "lora_unet__blocks_1_ffn_0.lora_down.weight": fdown,
                   "lora_unet__blocks_1_ffn_0.alpha": torch.tensor(1.0)},
                  None, {q: low * 8.0 / R, f: ffn / R}),
        "diffusers": ({"transformer.blocks.0.attn1.to_q.lora_A.weight": down,
                       "transformer.blocks.0.attn1.to_q.lora_B.weight": up,
                       "transformer.blocks.1.ffn.net.0.proj.lora_A.weight": fdown,
                       "transformer.blocks.1.ffn.net.0.proj.lora_B.weight": fup},
                      {"lora_adapter_metadata": json.dumps({"transformer.r": R, "transformer.lora_alpha": 16,
                                                            "transformer.use_rslora": True})},
                      {q: low * 16 / R ** 0.5, f: ffn * 16 / R ** 0.5}),              # rank-stabilised alpha
        "peft": ({"base_model.model.blocks.0.self_attn.q.lora_A.default.weight": down,
                  "base_model.model.blocks.0.self_attn.q.lora_B.default.weight": up,
                  "base_model.model.blocks.1.ffn.0.lora_A.weight": fdown,
                  "base_model.model.blocks.1.ffn.0.lora_B.weight": fup},
                 {"lora_adapter_metadata": json.dumps({"r": R, "lora_alpha": 2})},
                 {q: low * 2 / R, f: ffn * 2 / R}),
        "plain": ({"blocks.0.self_attn.q.lora_up.weight": up, "blocks.0.self_attn.q.lora_down.weight": down,
                   "blocks.1.ffn.0.lora_up.weight": fup, "blocks.1.ffn.0.lora_down.weight": fdown},
                  None, {q: low, f: ffn}),
        "onetrainer-diffusers": ({"lora_transformer_blocks_0_attn1_to_q.lora_up.weight": up,
                                  "lora_transformer_blocks_0_attn1_to_q.lora_down.weight": down,
                                  "lora_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(4.0)},
                                 None, {q: low}),
    }
    # LyCORIS: LoCon, LoHa and LoKr
    g = torch.Generator().manual_seed(3)
    a1, b1, a2, b2 = (torch.randn(256, R, generator=g) * .3, torch.randn(R, 256, generator=g) * .3,
                      torch.randn(256, R, generator=g) * .3, torch.randn(R, 256, generator=g) * .3)
    w1 = torch.randn(16, 16, generator=g) * .3
    w2a, w2b = torch.randn(32, 2, generator=g) * .3, torch.randn(2, 16, generator=g) * .3
    o = "blocks.0.cross_attn.o.weight"
    cases["lycoris"] = (
        {"lycoris_blocks_0_self_attn_q.lora_up.weight": up, "lycoris_blocks_0_self_attn_q.lora_down.weight": down,
         "lycoris_blocks_0_self_attn_q.alpha": torch.tensor(4.0),
         "lycoris_blocks_0_cross_attn_o.hada_w1_a": a1, "lycoris_blocks_0_cross_attn_o.hada_w1_b": b1,
         "lycoris_blocks_0_cross_attn_o.hada_w2_a": a2, "lycoris_blocks_0_cross_attn_o.hada_w2_b": b2,
         "lycoris_blocks_0_cross_attn_o.alpha": torch.tensor(2.0),
         "lycoris_blocks_1_ffn_0.lokr_w1": w1, "lycoris_blocks_1_ffn_0.lokr_w2_a": w2a,
         "lycoris_blocks_1_ffn_0.lokr_w2_b": w2b, "lycoris_blocks_1_ffn_0.alpha": torch.tensor(1.0)},
        None, {q: low, o: (a1 @ b1) * (a2 @ b2) * 2.0 / R, f: torch.kron(w1, w2a @ w2b) * 1.0 / 2})
    # full and bias deltas, parameters that are not layers
    g = torch.Generator().manual_seed(4)
    pe, mod, nb, hb = (torch.randn(256, 16, 1, 2, 2, generator=g) * .01, torch.randn(1, 6, 256, generator=g) * .01,
                       torch.randn(256, generator=g) * .01, torch.randn(16 * 4, generator=g) * .01)
    cases["diff"] = ({"diffusion_model.patch_embedding.diff": pe, "diffusion_model.blocks.0.modulation.diff": mod,
                      "diffusion_model.blocks.0.norm3.diff_b": nb, "diffusion_model.blocks.0.norm3.diff": nb.clone(),
                      "diffusion_model.head.head.diff_b": hb},
                     None, {"patch_embedding.weight": pe, "blocks.0.modulation": mod, "blocks.0.norm3.bias": nb,
                            "blocks.0.norm3.weight": nb, "head.head.bias": hb})
    return cases


CASES = _cases()


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_every_key_format_is_the_merged_weight_update(fmt, tmp_path):
    sd, meta, expected = CASES[fmt]
    path = tmp_path / f"{fmt}.safetensors"
    write_safetensors_atomic(sd, path, metadata=meta)
    m = _model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lora = read_lora(path)
    changes = combine([(resolve(lora, m), 0.7)])
    assert set(changes) == set(expected)
    activate(m, ("x",), changes, "merged")
    after = m.state_dict()
    for k, v in before.items():
        want = v + 0.7 * expected[k] if k in expected else v
        assert torch.allclose(after[k], want, atol=1e-5, rtol=0), (fmt, k, (after[k] - want).abs().max())
    deactivate(m)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())


def test_unmerged_equals_merged_and_leaves_weights_alone():
    sd = {**CASES["kohya"][0], **CASES["diff"][0], **{k: v for k, v in CASES["lycoris"][0].items()
                                                     if "cross_attn_o" in k}}
    lora = read_lora(sd)
    x, t, ctx = torch.randn(1, 16, 2, 8, 8), torch.tensor([700.0]), torch.randn(1, 8, 64)
    merged, unmerged = _model(), _model()
    weights = {k: v.clone() for k, v in unmerged.state_dict().items()}
    activate(merged, ("a",), combine([(resolve(lora, merged), 1.3)]), "merged")
    activate(unmerged, ("a",), combine([(resolve(lora, unmerged), 1.3)]), "unmerged")
    with torch.no_grad():
        a, b, base = merged(x, t, ctx), unmerged(x, t, ctx), _model()(x, t, ctx)
    assert (a - base).abs().max() > 1e-3                   # the LoRA changes the output
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()
    linear = [k for k in weights if k.endswith(".weight") and ("attn" in k or "ffn" in k)]
    assert all(torch.equal(unmerged.state_dict()[k], weights[k]) for k in linear)
    deactivate(unmerged)
    with torch.no_grad():
        assert torch.equal(unmerged(x, t, ctx), base)


def test_quantised_base_runs_the_lora_beside_the_packed_weights(tmp_path):
    from spacetime.model.gguf import write_gguf
    m = _model()
    path = tmp_path / "dit-Q8_0.gguf"
    write_gguf(path, m.state_dict(), lambda n, t: "Q8_0" if t.dim() == 2 and t.shape[-1] % 32 == 0 else "F32")
    q = load_dit(path, dit_preset("wan-tiny"))
    lora = read_lora({**CASES["kohya"][0], **CASES["diff"][0]})     # layers run beside, norms / biases merged
    changes = combine([(resolve(lora, q), 1.0)])
    with pytest.raises(LoraError, match="quantised"):
        activate(q, ("a",), changes, "merged")
    activate(q, ("a",), changes, "auto")
    assert q.blocks[0].self_attn.q.weight.dtype == torch.uint8          # still packed
    # reference: the dequantised weights plus the exact update, in a dense model
    dense = _model()
    with torch.no_grad():
        for name, mod in q.named_modules():
            if hasattr(mod, "codec"):
                dense.get_submodule(name).weight.copy_(mod.dequantized(torch.float32))
        activate(dense, ("a",), combine([(resolve(lora, dense), 1.0)]), "merged")
        x, t, ctx = torch.randn(1, 16, 2, 8, 8), torch.tensor([300.0]), torch.randn(1, 8, 64)
        assert torch.allclose(q(x, t, ctx), dense(x, t, ctx), atol=1e-5, rtol=1e-5)


def test_keys_that_do_not_land_are_listed_with_the_closest_modules():
    up, down = _pair(256, 256, 5)
    sd = {"diffusion_model.blocks.7.self_attn.q.lora_up.weight": up,      # a 40-layer model's block
          "diffusion_model.blocks.7.self_attn.q.lora_down.weight": down,
          "lora_unet_blocks_0_self_attn_q.lora_up.weight": up, "lora_unet_blocks_0_self_attn_q.lora_down.weight": down,
          "lora_unet_blocks_0_cross_attn_k_img.lora_up.weight": up,      # an image-to-video layer
          "lora_unet_blocks_0_cross_attn_k_img.lora_down.weight": down}
    with pytest.raises(LoraError) as e:
        resolve(read_lora(sd, name="i2v.safetensors"), _model())
    msg = str(e.value)
    assert "i2v.safetensors" in msg and "2 of 3" in msg
    assert "blocks.7.self_attn.q (closest: blocks.1.self_attn.q" in msg
    assert "cross_attn_k_img" in msg and "blocks.0.cross_attn.k" in msg
    wrong = {"blocks.0.self_attn.q.lora_up.weight": torch.zeros(128, R),
             "blocks.0.self_attn.q.lora_down.weight": torch.zeros(R, 256)}
    with pytest.raises(LoraError, match=r"shape mismatches \(1\).*blocks\.0\.self_attn\.q\.weight \(256, 256\)"):
        resolve(read_lora(wrong), _model())


@pytest.mark.parametrize("sd, needle", [
    ({"a.lora_up.weight": torch.zeros(4, 2)}, "only one half"),
    ({"a.lora_up.weight": torch.zeros(4, 2), "a.lora_down.weight": torch.zeros(2, 4),
      "a.dora_scale": torch.ones(4)}, "DoRA"),
    ({"a.lora_up.weight": torch.zeros(4, 2), "a.lora_down.weight": torch.zeros(2, 4),
      "lora_te_text_model_encoder_layers_0_mlp_fc1.weight": torch.zeros(2)}, "no known LoRA kind"),
    ({"a.alpha": torch.tensor(1.0)}, "no LoRA weights"),
    ({"a.hada_w1_a": torch.zeros(4, 2)}, "LoHa factors"),
])
def test_files_that_are_not_understood_are_refused(sd, needle):
    with pytest.raises(LoraError, match=needle):
        read_lora(sd)


def test_lora_spec_parsing():
    assert LoraSpec.parse("style.safetensors") == LoraSpec("style.safetensors", 1.0)
    assert LoraSpec.parse("style.safetensors:0.6") == LoraSpec("style.safetensors", 0.6)
    assert LoraSpec.parse("dir/x.safetensors:-1.5e-1") == LoraSpec("dir/x.safetensors", -0.15)
    assert LoraSpec.parse(r"C:\loras\x.safetensors") == LoraSpec(r"C:\loras\x.safetensors", 1.0)


def _toy_lora(st, path):
    """A LoRA on two attention layers of the bundle's DiT (whatever its size)."""
    dit = st.base_dit()
    d = dit.cfg.dim
    g = torch.Generator().manual_seed(9)
    sd = {}
    for name in ("blocks.0.self_attn.q", "blocks.1.cross_attn.v"):
        sd[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(d, R, generator=g) * 0.2
        sd[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(R, d, generator=g) * 0.2
    write_safetensors_atomic(sd, path)
    return path


def test_bundles_share_the_model_and_the_lora_comes_off(tmp_path):
    from spacetime.model.pipeline import Spacetime
    st = Spacetime.load("toyworld-random", device="cpu")
    path = _toy_lora(st, tmp_path / "toy.safetensors")
    text = st.encode_text(["a red ball"], [""])
    shape = st.latent_shape(1, 5, 32, 32)
    base = st.sample_latents(text, shape, seed=1, steps=2)
    styled = st.with_lora(path, 1.0)
    assert styled.base_dit() is st.base_dit() and styled.key != st.key
    out = styled.sample_latents(text, shape, seed=1, steps=2)
    assert (out - base).abs().max() > 1e-3
    assert torch.equal(st.sample_latents(text, shape, seed=1, steps=2), base)       # came off exactly
    assert state_of(st.base_dit()).backups == {}
    twice = styled.with_lora(path, -1.0)                                             # +1 and -1 cancel
    assert torch.allclose(twice.sample_latents(text, shape, seed=1, steps=2), base, atol=1e-4)
    assert styled.weights_record()["loras"][0]["name"] == "toy.safetensors"
    with pytest.raises(SpacetimeValueError, match="mode 'fast' is not allowed"):
        st.with_lora(path, 1.0, mode="fast")
