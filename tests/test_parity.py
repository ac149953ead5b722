"""Numerical parity with the reference Wan code, from fixtures made by tests/fixtures/parity/make_fixtures.py.

Every case found in tests/fixtures/parity/ (or in the folder named by SPACETIME_PARITY_FIXTURES) runs; the case's
name prefix says what it is. Tolerance: max abs difference <= 1e-4 in fp32.
"""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parity_weights import seeded_state_dict
from spacetime.model.config import DiTConfig, TextEncoderConfig, VAE22Config, VAEConfig
from spacetime.model.dit import WanDiT
from spacetime.model.loading import load_into
from spacetime.model.sampling import GuidedDenoiser, UniPC, sample, sigma_schedule
from spacetime.model.text_encoders import UMT5Encoder
from spacetime.model.vae import WanVAE
from spacetime.model.vae22 import WanVAE22

TOL = 1e-4
FIXTURES = Path(os.environ.get("SPACETIME_PARITY_FIXTURES") or Path(__file__).parent / "fixtures" / "parity")
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_case(name):
    args = json.loads((FIXTURES / f"{name}.json").read_text())
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    io = {k[3:]: v for k, v in tensors.items() if k.startswith("io.")}
    weights = {k[6:]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    return args, io, weights


def fill(module, weights, args):
    if not weights:
        weights = seeded_state_dict({k: v.shape for k, v in module.state_dict().items()}, args["weight_seed"])
    load_into(module, weights, type(module).__name__)
    return module.eval()


def dit_from(args, weights):
    cfg = DiTConfig(model_type=args.get("model_type", "t2v"), patch_size=tuple(args["patch_size"]),
                    text_len=args["text_len"], in_dim=args["in_dim"], dim=args["dim"], ffn_dim=args["ffn_dim"],
                    freq_dim=args["freq_dim"], text_dim=args["text_dim"], out_dim=args["out_dim"],
                    num_heads=args["num_heads"], num_layers=args["num_layers"], qk_norm=args["qk_norm"],
                    cross_attn_norm=args["cross_attn_norm"], eps=args["eps"])
    return fill(WanDiT(cfg), weights, args)


def check(ours, ref, what):
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs reference {tuple(ref.shape)}"
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= TOL, f"{what}: max abs difference {diff:.3g} > {TOL}"
    return diff


def run_dit(name):
    args, io, w = load_case(name)
    model = dit_from(args, w)
    x = io["x"][None]
    t = io["t"]
    if t.dim() == 2:                                    # per token, possibly padded up to seq_len
        grid = [s // p for s, p in zip(x.shape[2:], args["patch_size"])]
        t = t[:, :grid[0] * grid[1] * grid[2]]
    with torch.no_grad():
        out = model(x, t.float(), io["context"][None])
    return check(out[0], io["out"], name)


def run_vae(name):
    args, io, w = load_case(name)
    common = dict(dim=args["dim"], z_dim=args["z_dim"], dim_mult=tuple(args["dim_mult"]),
                  num_res_blocks=args["num_res_blocks"], temperal_downsample=tuple(args["temperal_downsample"]),
                  latent_mean=tuple(io["mean"].tolist()), latent_std=tuple(io["std"].tolist()))
    if "dec_dim" in args:                               # Wan 2.2 layout
        vae = fill(WanVAE22(VAE22Config(dec_dim=args["dec_dim"], **common)), w, args)
    else:
        vae = fill(WanVAE(VAEConfig(attn_scales=tuple(args["attn_scales"]), **common)), w, args)
    with torch.no_grad():
        z = vae.encode(io["video"])
        check(z, io["z"], f"{name} encode")
        recon = vae.decode(io["z"])
    return check(recon, io["recon"], f"{name} decode")


def run_umt5(name):
    args, io, w = load_case(name)
    cfg = TextEncoderConfig(kind="umt5", vocab_size=args["vocab_size"], dim=args["dim"], dim_attn=args["dim_attn"],
                            dim_ffn=args["dim_ffn"], num_heads=args["num_heads"], num_layers=args["encoder_layers"],
                            num_buckets=args["num_buckets"], shared_pos=args["shared_pos"])
    enc = fill(UMT5Encoder(cfg), w, args)
    with torch.no_grad():
        out = enc(io["ids"], io["mask"])
    return check(out, io["out"], name)


def run_unipc(name):
    args, io, w = load_case(name)
    model = dit_from(args, w)
    sigmas, timesteps = sigma_schedule(args["steps"], args["shift"])
    assert torch.equal(timesteps, io["timesteps"].long()), f"{name}: timesteps {timesteps} vs {io['timesteps']}"
    check(sigmas, io["sigmas"], f"{name} sigmas")
    out = sample(model, io["noise"][None], io["context"][None], io["context_null"][None], steps=args["steps"],
                 shift=args["shift"], cfg=args["guide_scale"], sampler="unipc")
    return check(out[0], io["out"], name)


RUNNERS = {"wan21_t2v": run_dit, "wan22_ti2v": run_dit, "wan21_vae": run_vae, "wan22_vae": run_vae, "umt5": run_umt5,
           "unipc": run_unipc}


def test_parity_fixtures_present():
    kinds = {next((k for k in RUNNERS if c.startswith(k)), None) for c in CASES}
    assert set(RUNNERS) <= kinds, f"parity fixtures missing for {set(RUNNERS) - kinds} in {FIXTURES}"


@pytest.mark.parametrize("case", CASES)
def test_parity(case):
    runner = next((fn for prefix, fn in RUNNERS.items() if case.startswith(prefix)), None)
    if runner is None:
        pytest.skip(f"no runner for fixture {case}")
    runner(case)


def test_parity_detects_a_wrong_model():
    """The comparison can fail: a perturbed weight moves the output beyond the tolerance."""
    case = next(c for c in CASES if c.startswith("wan21_t2v"))
    args, io, w = load_case(case)
    model = dit_from(args, w)
    with torch.no_grad():
        model.blocks[0].self_attn.norm_q.weight.mul_(1.01)
        out = model(io["x"][None], io["t"].float(), io["context"][None])
    with pytest.raises(AssertionError):
        check(out[0], io["out"], case)



def test_parity_detects_a_wrong_vae22(monkeypatch):
    """The Wan 2.2 VAE comparison can fail too: summing instead of averaging the folded shortcut channels."""
    from spacetime.model import vae22
    case = next(c for c in CASES if c.startswith("wan22_vae_5f"))
    original = vae22.FoldDown.forward
    monkeypatch.setattr(vae22.FoldDown, "forward", lambda self, x: original(self, x) * self.group)
    with pytest.raises(AssertionError, match="encode"):
        run_vae(case)
