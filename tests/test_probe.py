"""The prompt-following probe: it must rate ground truth as right and mismatched captions as wrong, and the training
pieces it depends on (object cells, captions cache, frame masks) must do what they say."""
from pathlib import Path

import numpy as np
import pytest
import torch

from spacetime.toyworld.analysis import background_flatness, components, object_count
from spacetime.toyworld.probe import HELD, SEEN, METRICS, score, summarize
from spacetime.toyworld.world import Obj, Scene, is_held_out, render


def test_probe_sets_cover_the_world():
    singles = [it.scene for it in SEEN if it.scene.kind == "single"]
    assert len(SEEN) >= 32 and len(HELD) >= 16
    assert not any(is_held_out(it.scene) for it in SEEN)
    assert sum(is_held_out(it.scene) for it in HELD) >= 12          # the rest are paraphrases of seen ones
    assert {s.main.color for s in singles} == {"red", "green", "blue", "yellow", "orange", "purple", "white", "cyan"}
    assert {s.main.shape for s in singles} == {"ball", "box", "triangle"}
    assert len({s.main.motion for s in singles}) == 8 and len({s.background for s in singles}) == 6
    assert len({it.scene.relation for it in SEEN if it.scene.kind == "pair"}) == 4
    assert len({it.seed for it in SEEN + HELD}) == len(SEEN + HELD)


@pytest.mark.parametrize("frames", [1, 17])
def test_probe_rates_ground_truth_as_right(frames):
    for items in (SEEN, HELD):
        s = summarize([score(render(it.scene, frames).frames, it.scene) for it in items])
        assert s["color"] == 1.0 and s["background"] == 1.0 and s["count"] == 1.0 and s["relation"] == 1.0
        if frames == 17:
            assert s["motion"] == 1.0 and s["shape"] == 1.0 and s["all"] == 1.0
        else:
            assert "motion" not in s and s["shape"] >= 0.95 and s["all"] >= 0.95


def test_probe_rates_shuffled_captions_as_wrong():
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(SEEN))
    s = summarize([score(render(SEEN[p].scene, 17).frames, it.scene) for it, p in zip(SEEN, perm)])
    assert s["all"] < 0.1 and s["color"] < 0.3 and s["background"] < 0.3 and s["motion"] < 0.3


def test_probe_sees_extra_objects_and_broken_backdrops():
    sc = Scene("navy", (Obj("ball", "red", "medium", "stays still", 0.5, 0.5),))
    clip = render(sc, 5).frames
    assert score(clip, sc)["all"]
    two = render(Scene("navy", (Obj("ball", "red", "medium", "stays still", 0.25, 0.5),
                                Obj("ball", "red", "small", "stays still", 0.75, 0.5)), kind="pair"), 5).frames
    assert object_count(two) == 2 and not score(two, sc)["count"] and not score(two, sc)["all"]
    noisy = np.clip(clip.astype(int) + np.random.default_rng(1).integers(-40, 40, clip.shape), 0, 255)
    assert background_flatness(noisy.astype(np.uint8)) > 12 > background_flatness(clip)
    assert not score(noisy.astype(np.uint8), sc)["count"]
    blank = np.broadcast_to(clip[:1, :1, :1], clip.shape).copy()
    assert score(blank, sc) == {**{m: False for m in METRICS if m not in ("relation", "background")},
                                "background": True, "relation": None, "motion": False}


def test_components_counts_separate_groups():
    m = np.zeros((10, 10), bool)
    m[1:4, 1:4] = True
    m[6:9, 6:9] = True
    m[0, 9] = True
    assert components(m, min_area=2) == [9, 9]
    m[4, 4] = m[5, 5] = True                       # diagonal links join the groups (8-connectivity)
    assert components(m, min_area=2) == [20]


def test_object_cells_follow_the_object():
    from spacetime.toyworld.train_dit import object_cells
    clip = render(Scene("black", (Obj("box", "white", "small", "moves right", 0.25, 0.5),)), 9, 64, 64)
    cells = object_cells(clip.coverage, 4, 4)
    assert cells.shape == (3, 16, 16) and cells.dtype == np.uint8
    cols = [np.nonzero(c.max(0))[0] for c in cells]
    assert cols[2].mean() > cols[0].mean() + 1                   # moved right over the slots
    assert cells[0, 0, 0] == 0 and cells[0].max() == 255
    assert (cells[0] > 0).mean() < 0.15                          # a small object covers a small share


def test_training_masks_always_leave_something_to_generate():
    from spacetime.toyworld.train_dit import sample_mask
    rng = np.random.default_rng(0)
    kinds, heads = set(), set()
    for n in (2, 3, 5, 9):
        for _ in range(300):
            m, kind = sample_mask(n, rng)
            kinds.add(kind)
            assert m.shape == (n,) and m.min() == 0
            if kind == "head" and n == 9:
                heads.add(int(m.sum()))
    assert kinds == {"t2v", "i2v_head", "i2v_tail", "head", "tail", "head_tail", "random"}
    assert heads == {1, 2, 3, 4, 5}            # 5 of 9 latent frames: 17 known frames extended by 16
    assert sample_mask(5, rng, t2v_only=True)[0].sum() == 0 and sample_mask(1, rng)[0].sum() == 0


def test_extension_masks_know_a_long_head_or_tail_and_leave_the_rest_to_generate():
    from spacetime.toyworld.train_dit import sample_mask
    rng = np.random.default_rng(1)
    seen = {}
    for _ in range(400):
        m, kind = sample_mask(9, rng, extend_frac=1.0)
        k = int(m.sum())
        assert kind in ("extend_head", "extend_tail") and 4 <= k <= 8
        run = m[:k] if kind == "extend_head" else m[9 - k:]
        assert run.all() and m.sum() == k                    # one known run at the chosen end
        seen.setdefault(kind, set()).add(k)
    assert seen == {"extend_head": {4, 5, 6, 7, 8}, "extend_tail": {4, 5, 6, 7, 8}}
    kinds = [sample_mask(9, rng, extend_frac=0.3)[1] for _ in range(1000)]
    assert 0.25 < sum(k.startswith("extend") for k in kinds) / 1000 < 0.35
    assert sample_mask(2, rng, extend_frac=1.0)[1] != "extend_head" and sample_mask(1, rng, extend_frac=1.0)[1] == "t2v"


def test_training_noise_levels_follow_the_shift():
    import torch
    from spacetime.toyworld.train_dit import DitRecipe, sample_sigma
    plain = sample_sigma(20000, torch.Generator().manual_seed(0))
    shifted = sample_sigma(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert 0.0 < plain.min() and plain.max() < 1.0 and 0.0 < shifted.min() and shifted.max() < 1.0
    assert abs(plain.median().item() - 0.5) < 0.02                 # logit-normal around the middle
    assert abs((plain > 0.75).float().mean().item() - 0.16) < 0.02  # 80 % logit-normal + 20 % uniform
    assert abs((shifted > 0.75).float().mean().item() - 0.5) < 0.02  # shift 3 sends sigma 0.5 to 0.75
    # the same draws, each moved as the sampler moves its schedule
    assert torch.allclose(shifted, 3 * plain / (1 + 2 * plain), atol=5e-4) and (shifted >= plain).all()
    low = sample_sigma(20000, torch.Generator().manual_seed(0), top=0.5)          # a low-noise expert's levels
    assert low.max() <= 0.5 and torch.allclose(low, (plain * 0.5).clamp(min=1e-4))
    with pytest.raises(ValueError, match="sigma_max=0"):
        DitRecipe(sigma_max=0)


def test_probe_on_weights_pools_seeds_and_scores_the_shipped_model(tmp_path):
    from spacetime.toyworld.probe import reseeded
    from spacetime.toyworld.train import probe_weights
    items = [it for it in SEEN if it.scene.kind == "single"][:2]
    assert [it.seed + 1000 for it in items] == [it.seed for it in reseeded(items, 1)]
    assert reseeded(items, 0) == items
    res = probe_weights(seeds=2, frames=(1,), sets={"seen": items})
    row = res["image/seen"]
    assert row["n"] == 4                                       # two noises per prompt
    assert row["background"] >= 0.75 and row["drawn"] >= 0.75  # the shipped model gets backgrounds right
    assert res["mean"]["color"] == pytest.approx(row["color"])
    assert sum(sum(r.values()) for r in res["drawn_shapes"].values()) == 4          # every sample in the table
    assert set(res["drawn_shapes"]) == {it.scene.main.shape for it in items} and "drawn_shapes" not in res["mean"]
    assert res["drawn_motions"] == {} and "drawn_motions" not in res["mean"]       # single frames: no motion


def test_probe_with_a_low_noise_expert_samples_through_the_expert_pair():
    """``dit_low``: the probe samples with two experts; an expert pair of two copies of the shipped DiT draws what
    the DiT alone draws (the switch changes nothing else), and a boundary outside (0, 1] is refused."""
    from spacetime.model.errors import SpacetimeValueError
    from spacetime.toyworld.train import WEIGHTS_DIR, probe_weights
    items = [it for it in SEEN if it.scene.kind == "single"][:2]
    one = probe_weights(frames=(1,), sets={"seen": items})
    pair = probe_weights(frames=(1,), sets={"seen": items}, dit_low=WEIGHTS_DIR, boundary=0.5)
    assert pair == one
    with pytest.raises(SpacetimeValueError, match="boundary=1.5"):
        probe_weights(frames=(1,), sets={"seen": items}, dit_low=WEIGHTS_DIR, boundary=1.5)


def test_probe_on_weights_rejects_bad_input_before_work(tmp_path):
    from spacetime.model.errors import SpacetimeValueError
    from spacetime.toyworld.train import main, probe_weights
    for kw, word in ((dict(seeds=0), "seeds=0"), (dict(cfg=float("nan")), "cfg=nan"), (dict(shift=0.0), "shift=0"),
                     (dict(steps=0), "steps=0"), (dict(frames=(2,)), "frames=(2,)"),
                     (dict(dit_path=tmp_path), f"--dit {tmp_path}"), (dict(vae_path=tmp_path), f"--vae {tmp_path}")):
        with pytest.raises(SpacetimeValueError, match=word.replace("(", r"\(").replace(")", r"\)")):
            probe_weights(**kw)
    out = tmp_path / "probe.json"
    out.write_text("{}")
    with pytest.raises(SystemExit):
        main(["probe", "--json", str(out)])
    assert out.read_text() == "{}"


def _dit_run(folder, state_dict, config):
    """A DiT run folder as training leaves it (config + EMA weights)."""
    import json
    from spacetime.model.loading import write_safetensors_atomic
    folder.mkdir()
    write_safetensors_atomic(state_dict, folder / "dit_ema.safetensors")
    (folder / "dit.json").write_text(json.dumps({"config": config, "step": 1}))
    return folder


def test_ship_rule_probes_both_sides_and_ships_only_the_better_weights(tmp_path, capsys):
    """``export --ship`` runs the same probe on the candidate and on the weights already in the folder: weights that
    draw nothing (a zeroed output layer) are refused and the folder stays as it was; the shipped weights then replace
    them, with the probe recorded."""
    import json
    import shutil
    import torch
    from spacetime.model.embedded import DIT_FILE, META, VAE_FILE
    from spacetime.model.loading import read_state_dict
    from spacetime.toyworld.train import SHIP_SEEDS, copy_shipped_vae, export, ship_score
    assert SHIP_SEEDS == 4                          # the yardstick the model card's ship decisions are read against
    meta = json.loads(META.read_text())
    good = read_state_dict(DIT_FILE)
    broken = {k: (torch.zeros_like(v) if k.startswith("head.head") else v) for k, v in good.items()}
    good_run = _dit_run(tmp_path / "good", good, meta["dit"])
    broken_run = _dit_run(tmp_path / "broken", broken, meta["dit"])
    vae = tmp_path / "vae"
    copy_shipped_vae(vae)
    quick = dict(frames=(1,), sets={"seen": [it for it in SEEN if it.scene.kind == "single"][:3]})

    shipped = tmp_path / "weights"
    shipped.mkdir()
    for f in (DIT_FILE, VAE_FILE, META):
        shutil.copy(f, shipped / f.name)
    before = {f.name: f.read_bytes() for f in shipped.iterdir()}
    assert not export(vae, broken_run, shipped, ship=True, **quick)
    assert {f.name: f.read_bytes() for f in shipped.iterdir()} == before
    said = capsys.readouterr().out                                  # the refusal shows every verdict, both sides
    assert "not shipped" in said and "verdicts, candidate / shipped: " in said and "color 0.0 / " in said

    worse = tmp_path / "worse"                      # a folder holding the broken weights, exported without the rule
    assert export(vae, broken_run, worse, **quick)
    worse_probe = json.loads((worse / "embedded.json").read_text())["probe"]
    assert worse_probe["image/seen"]["n"] == 3 * SHIP_SEEDS
    assert worse_probe["mean"]["color"] == 0 == worse_probe["mean"]["count"]
    assert export(vae, good_run, worse, ship=True, **quick)
    rec = json.loads((worse / "embedded.json").read_text())
    assert rec["probe_seeds"] == SHIP_SEEDS and ship_score(rec["probe"]) > ship_score(worse_probe)
    assert rec["probe"]["mean"]["background"] >= 2 / 3
    assert torch.equal(read_state_dict(worse / DIT_FILE.name)["head.head.weight"], good["head.head.weight"])


def test_export_names_a_folder_that_is_not_what_its_option_takes_before_any_probe(tmp_path):
    """A weights folder given as ``--vae`` (it holds embedded_vae.safetensors, not a VAE run's files) is refused with
    the option, the folder, the missing files and what is allowed; nothing is written."""
    import json
    from spacetime.model.embedded import DIT_FILE, META, WEIGHTS_DIR
    from spacetime.model.errors import SpacetimeValueError
    from spacetime.model.loading import read_state_dict
    from spacetime.toyworld.train import export
    run = _dit_run(tmp_path / "run", read_state_dict(DIT_FILE), json.loads(META.read_text())["dit"])
    out = tmp_path / "out"
    with pytest.raises(SpacetimeValueError, match=r"--vae .*lacks vae.json and vae.safetensors; allowed .*shipped-vae"):
        export(WEIGHTS_DIR, run, out, ship=True)
    with pytest.raises(SpacetimeValueError, match=r"--dit .*lacks dit.json and dit_ema.safetensors; allowed a DiT run"):
        export(WEIGHTS_DIR, tmp_path, out)
    assert not out.exists()


def test_image_to_video_weights_ship_only_when_their_evaluation_beats_the_weights_there(tmp_path, capsys):
    """``export --i2v --ship`` judges by the image-to-video evaluation, run on both sides: against the text-to-video
    weights while the folder has no image-to-video weights, then against those; a refusal leaves the folder as it
    was, and a first frame that is not kept scores 0 whatever the motion."""
    import json
    import shutil
    import torch
    from spacetime.model.embedded import DIT_FILE, I2V_DIT_FILE, META, VAE_FILE
    from spacetime.model.errors import SpacetimeValueError
    from spacetime.model.loading import read_state_dict
    from spacetime.toyworld.train import export_i2v, i2v_score
    meta = json.loads(META.read_text())
    sd = {k: v.float() + 0.01 for k, v in read_state_dict(DIT_FILE).items()}
    run = _dit_run(tmp_path / "run", sd, meta["dit"])
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in (DIT_FILE, VAE_FILE, META):
        shutil.copy(f, weights / f.name)

    def figs(motion, psnr=34.0):
        return {"i2v_psnr": psnr, "i2v_motion": motion, "i2v_swapped": motion / 2, "i2v_centred": motion / 2,
                "i2v_both_ways": 0.0}
    asked = []

    def scores(table):
        def evaluate(path, quick=False):
            asked.append(Path(path).name)
            return table[Path(path).name]
        return evaluate
    assert i2v_score(figs(0.9)) == pytest.approx(0.6) and i2v_score(figs(1.0, psnr=29.9)) == 0.0

    before = {f.name: f.read_bytes() for f in weights.iterdir()}
    worse = scores({"dit_ema.safetensors": figs(0.4), DIT_FILE.name: figs(0.5)})
    assert not export_i2v(run, weights, ship=True, evaluate=worse)
    assert asked == ["dit_ema.safetensors", DIT_FILE.name] and "not shipped" in capsys.readouterr().out
    assert {f.name: f.read_bytes() for f in weights.iterdir()} == before

    better = scores({"dit_ema.safetensors": figs(0.9), DIT_FILE.name: figs(0.5)})
    assert export_i2v(run, weights, ship=True, evaluate=better)
    rec = json.loads((weights / "embedded.json").read_text())
    assert rec["i2v"]["eval"]["i2v_motion"] == 0.9 and rec["i2v"]["dit_steps"] == 1
    assert rec["probe"] == meta["probe"] and rec["dit"] == meta["dit"]          # the text-to-video record is kept
    written = read_state_dict(weights / I2V_DIT_FILE.name)
    assert written["head.head.weight"].dtype == torch.float16
    torch.testing.assert_close(written["head.head.weight"].float(), sd["head.head.weight"], atol=1e-3, rtol=1e-3)
    assert read_state_dict(weights / DIT_FILE.name)["head.head.weight"].equal(
        read_state_dict(DIT_FILE)["head.head.weight"])                          # the text-to-video weights untouched

    asked.clear()                           # now judged against the image-to-video weights there, not text-to-video
    assert not export_i2v(run, weights, ship=True, evaluate=scores({"dit_ema.safetensors": figs(0.9),
                                                                    I2V_DIT_FILE.name: figs(0.9)}))
    assert asked == ["dit_ema.safetensors", I2V_DIT_FILE.name]

    with pytest.raises(SpacetimeValueError, match="not a weights folder"):
        export_i2v(run, tmp_path / "empty", evaluate=better)
    other = _dit_run(tmp_path / "other", sd, {**meta["dit"], "num_layers": 2})
    with pytest.raises(SpacetimeValueError, match="differs from the embedded model"):
        export_i2v(other, weights, evaluate=better)
    with pytest.raises(SpacetimeValueError, match="DiT run folder"):
        export_i2v(tmp_path / "nothing", weights, evaluate=better)


class _LatentsOf:
    """A stand-in VAE: every 4th frame, 4x4 average-pooled (deterministic), remembering what it returned."""
    device = torch.device("cpu")

    def encode(self, x):
        self.x0 = torch.nn.functional.avg_pool3d(x[:, :, ::4], (1, 4, 4))
        return self.x0


class _Captions:
    """A stand-in text encoder that marks the first batch of captions it is given 1 and later ones 0."""

    def __init__(self):
        self.calls = []

    def encode(self, captions):
        self.calls.append(list(captions))
        ctx = torch.full((len(captions), 3, 8), 1.0 if len(self.calls) == 1 else 0.0)
        return ctx, torch.full((len(captions),), 3)


class _Blind(torch.nn.Linear):
    """A DiT that ignores its caption (and everything else): zero flow."""
    def __init__(self):
        super().__init__(1, 1)

    def __call__(self, xs, t, ctx, lens):
        return torch.zeros_like(xs)


class _Reader(torch.nn.Linear):
    """A DiT that fits the stand-in VAE's latents exactly with the true caption (marked 1), half-way with another."""
    def __init__(self, vae):
        super().__init__(1, 1)
        self.latents_of = vae

    def __call__(self, xs, t, ctx, lens):
        s = (t / 1000.0).clamp(min=1e-6)[:, None, :, None, None]
        exact = (xs - self.latents_of.x0) / s
        return exact if float(ctx[0, 0, 0]) == 1.0 else 0.5 * exact

def test_motion_word_gap_is_zero_for_a_text_blind_model_and_large_for_one_that_reads_the_word():
    from spacetime.toyworld.probe import OPPOSITE_DIRECTION, motion_word_gap

    vae, text = _LatentsOf(), _Captions()
    gap = motion_word_gap(_Blind(), vae, text, clips=6, sigmas=(0.9, 0.99))
    assert set(gap) == {"t2v", "i2v"} and all(set(g) == {0.9, 0.99} for g in gap.values())
    assert all(abs(v) < 1e-9 for g in gap.values() for v in g.values())
    # the two caption lists name opposite directions in otherwise identical words
    true, other = text.calls
    for a, b in zip(true, other):
        diff = [(x, y) for x, y in zip(a.split(), b.split()) if x != y]
        assert len(a.split()) == len(b.split()) and len(diff) == 1
        assert {w.strip(".") for w in diff[0]} in ({"right", "left"}, {"upward", "downward"})

    vae, text = _LatentsOf(), _Captions()
    gap = motion_word_gap(_Reader(vae), vae, text, clips=6, sigmas=(0.9, 0.99))
    assert all(v > 1e3 for g in gap.values() for v in g.values())
    assert set(OPPOSITE_DIRECTION.values()) == set(OPPOSITE_DIRECTION)


def test_motion_word_gap_asks_the_chosen_motions_against_their_opposites():
    from spacetime.toyworld.probe import motion_word_gap
    vae, text = _LatentsOf(), _Captions()
    gap = motion_word_gap(_Reader(vae), vae, text, clips=4, sigmas=(0.9,), motions=("grows", "shrinks"))
    assert all(v > 1e3 for g in gap.values() for v in g.values())
    true, other = text.calls
    for a, b in zip(true, other):       # "grows larger and larger" <-> "shrinks smaller and smaller", nothing else
        diff = {frozenset((x, y)) for x, y in zip(a.split(), b.split()) if x != y}
        assert len(a.split()) == len(b.split())
        assert diff == {frozenset(("grows", "shrinks")), frozenset(("larger", "smaller"))}, (a, b)
    for bad in ((), ("spins",)):
        with pytest.raises(ValueError, match="allowed any of"):
            motion_word_gap(_Blind(), vae, text, motions=bad)


def test_frame_word_gap_is_zero_for_a_text_blind_model_and_names_one_other_word():
    from spacetime.toyworld.captions import parse_prompt
    from spacetime.toyworld.probe import frame_word_gap
    from spacetime.toyworld.world import visible_on

    for word in ("shape", "colour"):
        vae, text = _LatentsOf(), _Captions()
        gap = frame_word_gap(_Blind(), vae, text, word, frames=6, sigmas=(0.5, 0.99))
        assert set(gap) == {0.5, 0.99} and all(abs(v) < 1e-9 for v in gap.values())
        assert vae.x0.shape[2] == 1                                        # single frames
        true, other = text.calls
        for a, b in zip(true, other):
            pa, pb = parse_prompt(a), parse_prompt(b)
            oa, ob = pa["objects"][0], pb["objects"][0]
            key = "shape" if word == "shape" else "color"
            assert oa[key] != ob[key] and {k: v for k, v in oa.items() if k != key} == \
                {k: v for k, v in ob.items() if k != key}
            if word == "colour":
                assert visible_on(ob["color"], pb["background"])

    vae, text = _LatentsOf(), _Captions()                                 # pairs, the relation inverted
    gap = frame_word_gap(_Blind(), vae, text, "relation", frames=6, sigmas=(0.85,))
    assert abs(gap[0.85]) < 1e-9
    true, other = text.calls
    for a, b in zip(true, other):
        pa, pb = parse_prompt(a), parse_prompt(b)
        assert len(pa["objects"]) == 2 and pa["objects"] == pb["objects"]
        assert {pa["relation"], pb["relation"]} in ({"left of", "right of"}, {"above", "below"})

    vae, text = _LatentsOf(), _Captions()
    assert all(v > 1e3 for v in frame_word_gap(_Reader(vae), vae, text, "shape", frames=6).values())
    with pytest.raises(ValueError, match="word='size'"):
        frame_word_gap(_Blind(), _LatentsOf(), _Captions(), "size")


def test_mask_mix_replaces_the_default_mixture_and_rejects_unknown_kinds():
    from spacetime.toyworld.train_dit import MASK_MIX, check_mask_mix, sample_mask
    rng = np.random.default_rng(2)
    kinds = [sample_mask(5, rng, mix={"i2v_head": 3.0, "t2v": 1.0}) for _ in range(800)]
    assert {k for _, k in kinds} == {"i2v_head", "t2v"}
    assert 0.70 < sum(k == "i2v_head" for _, k in kinds) / 800 < 0.80
    assert all(m.tolist() == [1, 0, 0, 0, 0] for m, k in kinds if k == "i2v_head")
    a, b = np.random.default_rng(4), np.random.default_rng(4)           # {} is the default mixture, draw for draw
    assert [sample_mask(9, a, mix={})[1] for _ in range(50)] == [sample_mask(9, b)[1] for _ in range(50)]
    assert check_mask_mix({}) == {} and check_mask_mix(dict(MASK_MIX)) == dict(MASK_MIX)
    for bad, word in (({"sideways": 1.0}, "sideways"), ({"t2v": -1.0}, "weights"), ({"t2v": 0.0}, "weights"),
                      ([1, 2], "mask_mix")):
        with pytest.raises(ValueError, match=word):
            check_mask_mix(bad)


def test_drawn_shapes_tells_what_is_drawn_instead():
    from spacetime.toyworld.probe import drawn_shapes, merge_tables
    from spacetime.toyworld.world import with_main
    singles = [it for it in SEEN if it.scene.kind == "single"]
    pairs = [it for it in SEEN if it.scene.kind == "pair"][:2]
    asked = {s: sum(it.scene.main.shape == s for it in singles) for s in ("ball", "box", "triangle")}
    truth = drawn_shapes([render(it.scene, 17).frames for it in singles + pairs], singles + pairs)
    assert set(truth) == set(asked)                                      # pairs are not counted
    assert all(sum(row.values()) == asked[s] for s, row in truth.items())
    assert all(truth[s].get(s, 0) == asked[s] for s in asked)            # ground truth: the diagonal
    balls = drawn_shapes([render(with_main(it.scene, shape="ball"), 17).frames for it in singles], singles)
    assert all(balls[s].get("ball", 0) >= 0.9 * asked[s] for s in asked)  # every object drawn round: the ball column
    blank = np.broadcast_to(render(singles[0].scene, 1).frames[:1, :1, :1], (1, 64, 64, 3)).copy()
    assert drawn_shapes([blank], singles[:1]) == {singles[0].scene.main.shape: {"none": 1}}
    both = merge_tables(truth, balls)
    assert sum(both["box"].values()) == 2 * asked["box"] and both["box"].get("ball", 0) >= 0.9 * asked["box"]


def test_drawn_motions_tells_which_motions_are_followed():
    from spacetime.toyworld.probe import drawn_motions
    from spacetime.toyworld.world import with_main
    singles = [it for it in SEEN if it.scene.kind == "single"]
    pairs = [it for it in SEEN if it.scene.kind == "pair"][:2]
    asked: dict = {}
    for it in singles:
        asked[it.scene.main.motion] = asked.get(it.scene.main.motion, 0) + 1
    assert len(asked) >= 6
    truth = drawn_motions([render(it.scene, 17).frames for it in singles + pairs], singles + pairs)
    assert set(truth) == set(asked)                                      # pairs are not counted
    assert all(sum(row.values()) == asked[m] for m, row in truth.items())
    assert all(truth[m].get(m, 0) == asked[m] for m in asked)            # ground truth: the diagonal
    still = drawn_motions([render(with_main(it.scene, motion="stays still"), 17).frames for it in singles], singles)
    assert all(still[m].get("stays still", 0) == asked[m] for m in asked)  # nothing moves: the still column
    one = singles[0]
    assert drawn_motions([render(one.scene, 1).frames], [one]) == {}        # single frames have no motion
    blank = np.broadcast_to(render(one.scene, 1).frames[:1, :1, :1], (17, 64, 64, 3)).copy()
    assert drawn_motions([blank], [one]) == {one.scene.main.motion: {"none": 1}}


def test_average_interpolates_two_dits_into_a_run_folder_the_probe_and_export_take(tmp_path, capsys):
    """``train average``: weight 0 gives the first DiT, 1 the second, 0.25 the point a quarter of the way; the new
    folder loads like a training run's; bad weights, other configurations and a taken folder are refused with the
    option and the value before anything is written."""
    import json
    import torch
    from spacetime.model.embedded import DIT_FILE, META, WEIGHTS_DIR
    from spacetime.model.errors import SpacetimeValueError
    from spacetime.model.loading import read_state_dict
    from spacetime.toyworld.train import _load_probe_parts, average_dits, main
    cfg = json.loads(META.read_text())["dit"]
    first = read_state_dict(DIT_FILE)
    second = {k: v.float() + 1.0 for k, v in first.items()}
    run = _dit_run(tmp_path / "second", second, cfg)
    for w in (0.0, 1.0, 0.25):
        out = average_dits(WEIGHTS_DIR, run, w, tmp_path / f"avg{w}")
        got = read_state_dict(out / "dit_ema.safetensors")
        for k in ("head.head.weight", "blocks.0.self_attn.q.weight"):
            assert torch.allclose(got[k], first[k].float() + w, atol=1e-6), (w, k)
        rec = json.loads((out / "dit.json").read_text())
        assert rec["config"] == cfg and rec["average"]["weight"] == w and rec["step"] >= 1
    dit, _ = _load_probe_parts(tmp_path / "avg0.25", WEIGHTS_DIR)
    assert torch.allclose(dit.state_dict()["head.head.weight"], first["head.head.weight"].float() + 0.25, atol=1e-6)

    with pytest.raises(SpacetimeValueError, match=r"--weight 1\.5: allowed 0\.\.1"):
        average_dits(WEIGHTS_DIR, run, 1.5, tmp_path / "never")
    with pytest.raises(SpacetimeValueError, match=r"--out .*avg0\.25: already holds dit\.json and dit_ema"):
        average_dits(WEIGHTS_DIR, run, 0.5, tmp_path / "avg0.25")
    other = _dit_run(tmp_path / "other", second, dict(cfg, num_layers=cfg["num_layers"] + 1))
    with pytest.raises(SpacetimeValueError, match=r"configurations differ in num_layers"):
        average_dits(WEIGHTS_DIR, other, 0.5, tmp_path / "never")
    fewer = _dit_run(tmp_path / "fewer", {k: v for k, v in second.items() if k != "head.head.weight"}, cfg)
    with pytest.raises(SpacetimeValueError, match=r"tensors differ \(head\.head\.weight\)"):
        average_dits(WEIGHTS_DIR, fewer, 0.5, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    with pytest.raises(SystemExit):
        main(["average", "--dit", str(run), "--out", str(tmp_path / "never")])
    assert "allowed exactly twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["average", "--dit", str(WEIGHTS_DIR), "--dit", str(run), "--weight", "-0.1",
              "--out", str(tmp_path / "never")])
    assert "--weight -0.1: allowed 0..1" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_probe_cli_takes_frames_and_refuses_bad_lengths_before_loading(tmp_path, capsys):
    from spacetime.toyworld.probe import shape_rate
    from spacetime.toyworld.train import _probe_frames, main
    assert _probe_frames("1") == (1,) and _probe_frames("1,17") == (1, 17) and _probe_frames("9, 33") == (9, 33)
    for bad in ("2", "1,16", "x", ""):
        with pytest.raises(SystemExit):
            main(["probe", "--frames", bad, "--dit", str(tmp_path)])          # the folder is never read
        assert "allowed comma-separated clip lengths" in capsys.readouterr().err
    table = {"ball": {"ball": 5, "triangle": 1}, "box": {"ball": 3, "box": 2, "none": 1}}
    assert shape_rate(table) == (7, 12) and shape_rate({}) == (0, 0)
