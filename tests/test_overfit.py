"""The overfit check of the text -> training -> sampling path (`python -m spacetime.toyworld.train overfit`), at a
size a CI machine runs in about a minute: a small DiT learns two fixed clips whose captions differ in every
attribute, then the probe generates from the captions and the analysis scores the pixels."""
import json

import pytest

from spacetime.toyworld.train import copy_shipped_vae, main, run_overfit, shipped_vae_fits

SMALL_DIT = dict(dim=128, ffn_dim=384, freq_dim=128, num_heads=2, num_layers=4)


@pytest.mark.slow
def test_two_clips_are_learned_from_their_captions(tmp_path):
    if not shipped_vae_fits():
        pytest.fail("the shipped VAE is missing or does not match the training VAE config")
    copy_shipped_vae(tmp_path / "vae")
    summary = run_overfit(tmp_path / "vae", tmp_path / "run", steps=500, lr=2e-3, n=2, probe_every=500,
                          dit=SMALL_DIT)
    # The two prompts ask for a black and a white background: right on both means each sample followed its own
    # caption through text encoder, training and sampler (a model that ignores the text draws one of them, or grey).
    # Measured: backgrounds right from step ~350, both colours right at steps 450-500 (lr 1e-3: one of two).
    for mode in ("image/overfit", "video/overfit"):
        assert summary[mode]["n"] == 2
        assert summary[mode]["background"] == 1.0, (mode, summary[mode])
        assert summary[mode]["drawn"] >= 0.5 and summary[mode]["color"] >= 0.5, (mode, summary[mode])
    log = [json.loads(line) for line in (tmp_path / "run" / "dit" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses
    # the run folder resumes: asking again for the same steps trains nothing more and keeps the weights
    dit = (tmp_path / "run" / "dit" / "dit_ema.safetensors").read_bytes()
    again = run_overfit(tmp_path / "vae", tmp_path / "run", steps=500, lr=2e-3, n=2, probe_every=500,
                        dit=SMALL_DIT)
    assert again == summary
    assert json.loads((tmp_path / "run" / "dit" / "dit.json").read_text())["step"] == 500
    assert (tmp_path / "run" / "dit" / "dit_ema.safetensors").read_bytes() == dit


@pytest.mark.parametrize("args, needle", [(["--clips", "0"], "n=0"), (["--clips", "99"], "n=99"),
                                          (["--clips", "4", "--per-step", "5"], "per step 5"),
                                          (["--clips", "4", "--per-step", "1"], "per step 1")])
def test_overfit_rejects_sizes_it_cannot_run(tmp_path, args, needle):
    with pytest.raises(ValueError, match=needle):
        main(["overfit", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "run"), *args])
    assert not (tmp_path / "run").exists()
