"""Quantised DiTs: fp8 (scaled and not, every scale convention) and GGUF (F16 ... Q4_K) load from the files users
have, stay packed in memory, and give the bf16 result within the format's own error; files that do not fit fail
with the keys or types named."""
import json

import numpy as np
import pytest
import torch

from spacetime.model.config import dit_preset
from spacetime.model.dit import build_dit
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.gguf import BLOCKS, dequantize, quantize, write_gguf
from spacetime.model.loading import load_dit, read_checkpoint, write_safetensors_atomic
from spacetime.model.quant import fp8_state_dict, pack_fp8

gguf = pytest.importorskip("gguf")
CFG = dit_preset("wan-tiny")
# fp16 fields of each block layout (offsets), set to sane values in random blocks
F16_AT = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q2_K": [80, 82], "Q3_K": [108],
          "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


@pytest.mark.parametrize("codec", sorted(BLOCKS))
def test_dequantisation_matches_the_gguf_package(codec):
    nvals, nbytes = BLOCKS[codec]
    g = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, 256, (48, nbytes), dtype=torch.uint8, generator=g)
    for off in F16_AT[codec]:
        blocks[:, off:off + 2] = (torch.rand(48, 1, generator=g) * 0.02).half().view(torch.uint8).view(48, 2)
    want = gguf.quants.dequantize(blocks.numpy(), getattr(gguf.GGMLQuantizationType, codec)).reshape(-1)
    got = dequantize(blocks.reshape(-1), codec, (48 * nvals,)).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("codec, bound", [("Q8_0", 0.008), ("Q6_K", 0.025), ("Q5_K", 0.05), ("Q4_K", 0.1)])
def test_quantisers_round_trip_within_the_format_error(codec, bound):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(2)) * 0.05
    pw = quantize(w, codec)
    back = pw.dequantize()
    rel = ((back - w).norm() / w.norm()).item()
    assert bound / 4 < rel < bound
    ref = gguf.quants.dequantize(pw.data.numpy().reshape(64, -1), getattr(gguf.GGMLQuantizationType, codec))
    np.testing.assert_array_equal(back.numpy(), ref.reshape(64, 512))
    assert pw.data.numel() == 64 * 512 // BLOCKS[codec][0] * BLOCKS[codec][1]


def _dense():
    torch.manual_seed(0)
    m = build_dit(CFG).eval()
    torch.nn.init.normal_(m.head.head.weight, std=0.02)
    return m


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


INPUT = (torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([600.0]),
         torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(4)))


def _gguf_codec(codec):
    def pick(name, t):        # as the Wan converter does: vectors and modulation tables stay F32
        if t.dim() <= 1 or "modulation" in name:
            return "F32"
        return codec if t.shape[-1] % BLOCKS.get(codec, (1, 0))[0] == 0 else "F16"
    return pick


def _weight_error(sd, make):
    """The format's own error on this model's matrices: |dequant(quant(W)) - W| / |W| over all 2-D+ weights."""
    num = den = 0.0
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() >= 2:
            num += (make(k, v) - v).float().pow(2).sum().item()
            den += v.float().pow(2).sum().item()
    return (num / den) ** 0.5


FORMATS = {
    "fp8_e4m3fn_scaled": ("fp8 e4m3fn, scaled (ComfyUI scaled_fp8)", 1.0,
                          lambda sd: fp8_state_dict(sd, torch.float8_e4m3fn, scaled=True),
                          lambda k, v: pack_fp8(v, torch.float8_e4m3fn, True).dequantize()),
    "fp8_e4m3fn": ("fp8 e4m3fn, unscaled", 1.0, lambda sd: fp8_state_dict(sd, torch.float8_e4m3fn, scaled=False),
                   lambda k, v: pack_fp8(v, torch.float8_e4m3fn, False).dequantize()),
    "fp8_e5m2_scaled": ("fp8 e5m2, scaled", 1.0, lambda sd: fp8_state_dict(sd, torch.float8_e5m2, scaled=True),
                        lambda k, v: pack_fp8(v, torch.float8_e5m2, True).dequantize()),
}
for _c, _bytes in (("F16", 2.0), ("BF16", 2.0), ("Q8_0", 34 / 32), ("Q6_K", 210 / 256), ("Q5_K", 176 / 256),
                   ("Q4_K", 144 / 256)):
    FORMATS[f"gguf_{_c}"] = (f"GGUF (", _bytes, _c,
                             lambda k, v, c=_c: quantize(v, _gguf_codec(c)(k, v)).dequantize().view(v.shape))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_round_trip_within_the_format_error_of_the_bf16_result(name, tmp_path):
    label, bytes_per_value, make_file, make_weight = FORMATS[name]
    m = _dense()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    if name.startswith("gguf"):
        path = write_gguf(tmp_path / f"{name}.gguf", sd, _gguf_codec(make_file))
    else:
        path = tmp_path / f"{name}.safetensors"
        write_safetensors_atomic(make_file(sd), path)
    q = load_dit(path, CFG, dtype=torch.bfloat16)
    assert label in q.checkpoint_format
    with torch.no_grad():
        ref = m(*INPUT)
        bf16 = _dense().to(torch.bfloat16)(*INPUT)
        out = q(*INPUT)
    err_bf16 = _rel(bf16, ref)
    werr = _weight_error(sd, make_weight)
    err = _rel(out, ref)
    # the output moves with the weights' own rounding (about 1:1 on this model), on top of bf16 compute
    assert err <= err_bf16 + 2.0 * werr + 1e-3, (name, err, err_bf16, werr)
    packed = [mod for mod in q.modules() if hasattr(mod, "codec")]
    if name in ("gguf_F16", "gguf_BF16"):
        assert not packed                     # dense files load as ordinary layers
        return
    assert len(packed) >= 25 and all(p.weight.dtype == torch.uint8 for p in packed)
    ratio = sum(p.packed_nbytes for p in packed) / sum(p.weight_shape.numel() for p in packed)
    assert abs(ratio - bytes_per_value) < 0.01, ratio          # memory stays at the quantised size
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_newer_comfy_fp8_layout_and_header_metadata(tmp_path):
    m = _dense()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    out, layers = {}, {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.dim() == 2:
            pw = pack_fp8(v)
            layer = k[:-len(".weight")]
            out[k] = pw.data.view(torch.float8_e4m3fn)
            out[layer + ".weight_scale"] = pw.scale
            out[layer + ".input_scale"] = torch.tensor(1.0)
            if len(layers) % 2:
                out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                           dtype=torch.uint8)
            else:
                layers[layer] = {"format": "float8_e4m3fn"}
            layers.setdefault(layer, {"format": "float8_e4m3fn"})
        else:
            out[k] = v
    path = tmp_path / "new.safetensors"
    write_safetensors_atomic(out, path, metadata={"_quantization_metadata": json.dumps({"format_version": "1.0",
                                                                                       "layers": layers})})
    q = load_dit(path, CFG)
    assert "fp8 e4m3fn, scaled (weight_scale)" in q.checkpoint_format
    with torch.no_grad():
        assert _rel(q(*INPUT), m(*INPUT)) < 0.1


def test_embedded_dit_as_scaled_fp8_generates_the_same_video(tmp_path):
    """The scales of a ComfyUI scaled-fp8 file are applied (they once were silently ignored: 13.5 dB): sampling from
    the fp8 file equals sampling from its weights dequantised by hand (fp8 value x scale) in float, and stays near
    the float model (what is left is the format's own rounding of these weights)."""
    from spacetime.model.pipeline import Spacetime, TextEmbedding
    base = Spacetime.load("toyworld", device="cpu")
    sd = {k: v.float() for k, v in read_checkpoint(base.dit_path).tensors.items()}
    q = fp8_state_dict({f"model.diffusion_model.{k}": v for k, v in sd.items()})
    path = tmp_path / "toyworld_fp8_e4m3fn_scaled.safetensors"
    write_safetensors_atomic(q, path)
    by_hand = {k: (v.float() * q[k[:-len(".weight")] + ".scale_weight"].float()
                   if v.dtype == torch.float8_e4m3fn else v)
               for k, v in q.items() if k != "scaled_fp8" and not k.endswith(".scale_weight")}
    assert sum(v.dtype == torch.float8_e4m3fn for v in q.values()) > 50
    write_safetensors_atomic(by_hand, tmp_path / "dequantised.safetensors")
    fp8 = Spacetime.load("toyworld", dit=path, device="cpu")
    ref = Spacetime.load("toyworld", dit=tmp_path / "dequantised.safetensors", device="cpu")
    g = torch.Generator().manual_seed(5)
    dim = base.preset.dit.text_dim
    text = TextEmbedding(torch.randn(1, 12, dim, generator=g), torch.tensor([12]),
                         torch.randn(1, 12, dim, generator=g), torch.tensor([12]))
    shape = base.latent_shape(1, 5, 64, 64)
    a = base.sample_latents(text, shape, seed=2, steps=3)
    b = fp8.sample_latents(text, shape, seed=2, steps=3)
    c = ref.sample_latents(text, shape, seed=2, steps=3)
    assert torch.allclose(b, c, rtol=1e-4, atol=1e-4), (b - c).abs().max().item()
    psnr = 10 * torch.log10((a.max() - a.min()) ** 2 / (a - b).pow(2).mean())
    assert psnr > 25, psnr.item()
    assert "scaled_fp8" in fp8.dit.checkpoint_format


def _tiny_file(tmp_path, extra=None, name="dit.safetensors", fp8=False):
    sd = {k: v.clone() for k, v in _dense().state_dict().items()}
    if fp8:
        sd = fp8_state_dict(sd)
    sd.update(extra or {})
    path = tmp_path / name
    write_safetensors_atomic(sd, path)
    return path


@pytest.mark.parametrize("extra, needle", [
    ({"blocks.0.self_attn.q.scale_weight": torch.tensor(2.0)}, "weight scales for layers that are not stored in fp8"),
    ({"vae.encoder.conv1.weight": torch.zeros(2, 2)}, "unexpected keys (1): vae.encoder.conv1.weight"),
    ({"blocks.0.self_attn.q.lora_up.weight": torch.zeros(256, 4)}, "unexpected keys (1): blocks.0.self_attn.q.lora"),
    ({"blocks.0.ffn.0.comfy_quant": torch.tensor(list(b'{"format": "int8_blockwise"}'), dtype=torch.uint8)},
     "int8_blockwise"),
])
def test_keys_the_loader_does_not_use_are_refused_with_the_list(tmp_path, extra, needle):
    path = _tiny_file(tmp_path, extra)
    with pytest.raises(SpacetimeValueError) as e:
        load_dit(path, CFG)
    assert needle in str(e.value)


def test_bad_gguf_files_fail_clearly(tmp_path):
    sd = {k: v.clone() for k, v in _dense().state_dict().items()}
    good = write_gguf(tmp_path / "good.gguf", sd, _gguf_codec("Q8_0"))
    data = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(SpacetimeValueError, match="could not be read as GGUF|does not fit"):
        load_dit(tmp_path / "cut.gguf", CFG)
    (tmp_path / "fake.gguf").write_bytes(b"\x00" * 64)
    with pytest.raises(SpacetimeValueError, match="not a GGUF file"):
        load_dit(tmp_path / "fake.gguf", CFG)
    w = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(SpacetimeValueError, match="GGUF 'llama' model"):
        load_dit(tmp_path / "llama.gguf", CFG)
    w = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "wan")
    w.add_tensor("blocks.0.ffn.0.weight", np.zeros((512, 18 * 8), dtype=np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(SpacetimeValueError, match="type IQ4_NL.*supported: F32, F16, BF16, Q8_0"):
        load_dit(tmp_path / "iq.gguf", CFG)
    # a GGUF named .safetensors is still read as GGUF (the content decides)
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(data)
    assert "GGUF (" in load_dit(renamed, CFG).checkpoint_format


def test_five_dimensional_patch_embedding_stored_flat(tmp_path):
    sd = {k: v.clone() for k, v in _dense().state_dict().items()}
    path = write_gguf(tmp_path / "q.gguf", sd, lambda n, t: "Q8_0" if n == "patch_embedding.weight" else "F32")
    reader = gguf.GGUFReader(str(path))
    t = next(x for x in reader.tensors if x.name == "patch_embedding.weight")
    assert len(t.shape) == 2                                     # flat in the file
    assert list(reader.get_field("comfy.gguf.orig_shape.patch_embedding.weight").contents()) == [256, 16, 1, 2, 2]
    q = load_dit(path, CFG)
    assert q.patch_embedding.weight_shape == (256, 16, 1, 2, 2)
    want = quantize(sd["patch_embedding.weight"].reshape(-1, 256), "Q8_0").dequantize().view(256, 16, 1, 2, 2)
    assert torch.equal(q.patch_embedding.dequantized(torch.float32), want)


def test_scaled_fp8_text_encoder_in_comfy_names(tmp_path):
    """umt5_xxl_fp8_e4m3fn_scaled.safetensors-style: HF T5 names, fp8 Linear weights with scale_weight, a marker."""
    import re
    from spacetime.model.config import TextEncoderConfig
    from spacetime.model.loading import load_text_encoder
    from spacetime.model.text_encoders import build_text_encoder
    cfg = TextEncoderConfig(vocab_size=100, dim=64, dim_attn=64, dim_ffn=128, num_heads=2, num_layers=2,
                            num_buckets=8)
    torch.manual_seed(0)
    enc = build_text_encoder(cfg)
    rules = [(r"^token_embedding\.", "shared."), (r"^norm\.", "encoder.final_layer_norm."),
             (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
             (r"^blocks\.(\d+)\.pos_embedding\.embedding\.",
              r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
             (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
             (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
             (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
             (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
             (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo.")]

    def hf(k):
        for pat, rep in rules:
            k, n = re.subn(pat, rep, k)
            if n:
                return k
        raise AssertionError(k)
    sd = fp8_state_dict({hf(k): v for k, v in enc.state_dict().items()},
                        keep=lambda k, v: "SelfAttention" in k or "DenseReluDense" in k)
    assert "encoder.block.0.layer.0.SelfAttention.q.scale_weight" in sd and "scaled_fp8" in sd
    path = tmp_path / "umt5_fp8_scaled.safetensors"
    write_safetensors_atomic(sd, path)
    got = load_text_encoder(path, kind="umt5")
    assert "ComfyUI scaled_fp8" in got.checkpoint_format and "14 layers kept quantised" in got.checkpoint_format
    ids = torch.randint(0, 100, (1, 7))
    with torch.no_grad():
        assert _rel(got(ids), enc(ids)) < 0.1
