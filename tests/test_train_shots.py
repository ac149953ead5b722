"""Training the DiT on multi-shot stories: the encoded story dataset, story batches in the sampler's three modes,
the per-shot text of the training forward (the sampler's ``PerShotText``: a shot's tokens read only its caption),
and the clip training left exactly as it was when no story steps are asked for."""
import hashlib
import json

import numpy as np
import pytest
import torch

from spacetime.model.config import DiTConfig, VAEConfig, config_to_dict
from spacetime.model.loading import write_safetensors_atomic
from spacetime.toyworld import train_dit as td
from spacetime.toyworld.train_shots import StoryBucket, encode_stories, load_stories, story_batch

TINY_VAE = VAEConfig(dim=8, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=1, attn_scales=(),
                     temperal_downsample=(True, True), latent_mean=(0.0,) * 4, latent_std=(1.0,) * 4)
TINY_DIT = DiTConfig(model_type="ti2v", patch_size=(1, 2, 2), text_len=16, in_dim=4, out_dim=4, dim=32, ffn_dim=64,
                     freq_dim=32, text_dim=384, num_heads=2, num_layers=1)
STORY_MIX = {(9, 8): 0.5, (5, 4, 4): 0.5}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny VAE folder, a clip dataset (single frames and 5-frame clips) and a story dataset (2 per bucket)."""
    from spacetime.toyworld.train_vae import init_vae
    root = tmp_path_factory.mktemp("shots")
    (root / "vae").mkdir()
    write_safetensors_atomic(init_vae(TINY_VAE, 0).state_dict(), root / "vae" / "vae.safetensors")
    (root / "vae" / "vae.json").write_text(json.dumps({"config": config_to_dict(TINY_VAE)}))
    td.encode_dataset(root / "vae", root / "data", 12, mix={1: 0.5, 5: 0.5}, batch=4)
    encode_stories(root / "vae", root / "stories", 12, mix=STORY_MIX, batch=4)
    return root


def test_story_dataset_round_trip(run, capsys):
    from spacetime.model.storyboard import parse_shots, plan_story
    from spacetime.toyworld.shots import render_story
    from spacetime.toyworld.train_vae import load_trained_vae
    from spacetime.toyworld.world import is_held_out
    buckets = load_stories(run / "stories", channels=4)
    assert sorted(b.name for b in buckets) == sorted(f"{w}x{h}_{p}" for w, h in td.TRAIN_SIZES
                                                     for p in ("9-8", "5-4-4"))
    vae, _ = load_trained_vae(run / "vae")
    for b in buckets:
        w, h = map(int, b.name.split("_")[0].split("x"))
        frames = [int(f) for f in b.name.split("_")[1].split("-")]
        assert len(b.stories) == 2 and b.latents.dtype == torch.float16 and b.objects.dtype == torch.uint8
        assert b.latents.shape == (2, 4, (sum(frames) - 1) // 4 + 1, h // 4, w // 4)
        assert b.objects.shape == (2, b.frames, h // 4, w // 4)
        for i, story in enumerate(b.stories):
            assert [s.frames for s in story.shots] == frames and not any(is_held_out(s.scene) for s in story.shots)
            fs = story.latent_shots()
            assert torch.equal(b.frame_shots, torch.from_numpy(fs)) and fs.tolist() == plan_story(
                parse_shots(story.storyboard())).frame_shots().tolist()
            # the shot changes at the latent frame that starts with each cut's pixel frame
            assert [int(j) for j in np.nonzero(np.diff(fs))[0] + 1] == [c // 4 + 1 for c in story.cuts]
            assert [s.caption for s in story.shots] == story.captions() and len(story.captions()) == len(frames)
            assert all(s.caption.startswith("Close-up: ") == (s.zoom > 1) for s in story.shots)
            # the stored story renders and encodes to the stored latents and object cells (nothing is lost), the
            # encoder restarted at the cuts (each shot encoded as its own clip, as storyboards are decoded)
            clip = render_story(story, w, h)
            cuts = plan_story(parse_shots(story.storyboard())).latent_cuts
            with torch.no_grad():
                lat = vae.encode(td.clips_to_tensor([clip]), restarts=cuts)
                one_clip = vae.encode(td.clips_to_tensor([clip]))
            torch.testing.assert_close(b.latents[i].float(), lat[0], atol=2e-3, rtol=1e-2)
            assert (one_clip[0, :, cuts[0]] - lat[0, :, cuts[0]]).abs().max() > 1e-3
            cells = td.object_cells(np.concatenate([c.coverage for c in clip.clips]), 4, 4)
            assert np.array_equal(b.objects[i].numpy(), cells) and cells.max() == 255
    capsys.readouterr()
    encode_stories(run / "vae", run / "stories", 12, mix=STORY_MIX, batch=4)          # resumes: nothing to do
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="holds stories, not clips: pass it as --stories"):
        td.load_dataset(run / "stories")
    with pytest.raises(ValueError, match="holds clips, not stories: pass it as --data"):
        load_stories(run / "data")
    with pytest.raises(ValueError, match="story pattern .* shot 2 has frames=6"):
        encode_stories(run / "vae", run / "bad", 3, mix={(9, 6): 1.0})
    assert not (run / "bad").exists()


def _bucket(frames=(9, 8, 4)):
    """One three-shot story, three different backgrounds; latents hold their latent frame index."""
    from spacetime.toyworld.shots import sample_story
    story = sample_story(np.random.default_rng(0), shots=3, frames=frames, changes=["background", "background"],
                         pair=False)
    assert len({s.scene.background for s in story.shots}) == 3
    Fp = len(story.latent_shots())
    lat = torch.arange(Fp, dtype=torch.float16).view(1, 1, Fp, 1, 1).expand(1, 4, Fp, 4, 4).clone()
    return StoryBucket("64x64_9-8-4", lat, torch.zeros(1, Fp, 4, 4, dtype=torch.uint8), [story],
                       torch.from_numpy(story.latent_shots()).long())


def test_story_batches_follow_the_sampler_modes():
    from spacetime.toyworld.captions import parse_prompt
    b = _bucket()
    story, spans = b.stories[0], b.spans()
    assert spans == [(0, 3), (3, 5), (5, 6)]
    r = td.DitRecipe(tokens=64, p_drop=0.0, p_short=0.0, story_ref_frac=0.6, dit=config_to_dict(TINY_DIT))
    rng = np.random.default_rng(3)
    seen = {}
    for _ in range(60):
        bt = story_batch([b], rng, r, TINY_DIT)
        B, Fw = bt.known.shape
        window = bt.x0[0, 0, :, 0, 0].long().tolist()                       # the latent frames of the window
        bgs = [parse_prompt(c)["background"] for c in bt.captions]
        shots = [next(k for k, s in enumerate(story.shots) if s.scene.background == bg) for bg in bgs]
        if bt.kind == "text":                                                # the whole story, per-shot text
            assert window == list(range(6)) and not bt.known.any() and torch.equal(bt.frame_shots, b.frame_shots)
            assert shots == [0, 1, 2] * B
        else:                                                                # shot k's tail, then shot k + 1
            n_ref = int(bt.known[0].sum())
            k = int(story.latent_shots()[window[0]])
            assert 1 <= n_ref <= 2 and (bt.known == bt.known[:1]).all() and bt.known[0, :n_ref].all()
            assert window == list(range(spans[k][1] - n_ref, spans[k + 1][1]))
            if bt.kind == "reference":
                assert bt.frame_shots is None and shots == [k + 1] * B
            else:
                assert bt.frame_shots.tolist() == [0] * n_ref + [1] * (spans[k + 1][1] - spans[k + 1][0])
                assert shots == [k, k + 1] * B
        assert B == max(2, 64 // (Fw * 4))                                   # the token budget
        seen.setdefault(bt.kind, set()).add(window[0])
    assert set(seen) == {"text", "reference", "text+reference"} and seen["reference"] == {1, 2, 3, 4}
    drop = story_batch([b], np.random.default_rng(0), td.DitRecipe(tokens=64, p_drop=1.0, story_ref_frac=0.0), TINY_DIT)
    assert drop.captions == [""] * len(drop.captions)                       # a story's captions drop together


def _model(layers):
    from dataclasses import replace
    from spacetime.model.dit import build_dit
    torch.manual_seed(1)
    m = build_dit(replace(TINY_DIT, num_layers=layers))
    torch.nn.init.normal_(m.head.head.weight, std=0.05)
    return m


def test_story_loss_is_the_per_shot_masked_cross_attention():
    """One block: self-attention (which spans the shots) comes before the cross-attention, so the prediction for a
    shot's frames equals the plain model given that shot's caption alone, and the loss is assembled from those."""
    b = _bucket()
    bt = story_batch([b], np.random.default_rng(0), td.DitRecipe(tokens=64, p_drop=0.0, story_ref_frac=0.0),
                     TINY_DIT)
    assert bt.kind == "text"
    B, S, Fp = bt.known.shape[0], 3, b.frames
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(B, 4, Fp, 4, 4, generator=g)
    objw = torch.rand(B, Fp, 4, 4, generator=g)
    m = torch.from_numpy(bt.known)
    ctx = torch.randn(B * S, 7, 384, generator=g, requires_grad=True)
    lens = torch.tensor([7, 5, 3] * B)
    sigma, noise = torch.rand(B, generator=g), torch.randn(x0.shape, generator=g)
    model = _model(1)
    loss = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 3.0, frame_shots=b.frame_shots)
    with torch.no_grad():
        xs = (1 - sigma.view(B, 1, 1, 1, 1)) * x0 + sigma.view(B, 1, 1, 1, 1) * noise
        t = sigma[:, None].expand(B, Fp) * 1000
        v = torch.empty_like(x0)
        for s, (a, e) in enumerate(b.spans()):
            v[:, :, a:e] = model(xs, t, ctx[s::S], lens[s::S])[:, :, a:e]
        ref = ((v - (noise - x0)) ** 2 * (1 + 2 * objw[:, None])).sum() / x0.numel()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    # the frames of shot 1 get no gradient from the captions of shots 0 and 2
    v = td.predict(model, xs, t, ctx, lens, b.frame_shots)
    (grad,) = torch.autograd.grad(v[:, :, 3:5].square().sum(), ctx)
    per_shot = grad.view(B, S, -1).abs().sum((0, 2))
    assert per_shot[1] > 0 and per_shot[0] == 0 and per_shot[2] == 0
    # deeper, self-attention carries shot 0's caption into shot 1's frames (objects carry across cuts)
    deep = _model(2)
    (grad,) = torch.autograd.grad(td.predict(deep, xs, t, ctx, lens, b.frame_shots)[:, :, 3:5].square().sum(), ctx)
    assert grad.view(B, S, -1).abs().sum((0, 2))[0] > 0


def _train(run, tmp, monkeypatch, **recipe):
    """A tiny training run; returns (the captions of every step, the frame masks drawn, the log rows)."""
    captions, masks = [], []
    call, mask = td.CachedText.__call__, td.sample_mask

    def spy_text(self, caps, dev):
        captions.append(list(caps))
        return call(self, caps, dev)

    def spy_mask(*a, **k):
        out = mask(*a, **k)
        masks.append(out[0].tolist())
        return out
    monkeypatch.setattr(td.CachedText, "__call__", spy_text)
    monkeypatch.setattr(td, "sample_mask", spy_mask)
    r = td.DitRecipe(steps=12, tokens=256, warmup=2, probe_every=0, dit=config_to_dict(TINY_DIT), max_batch=8,
                     **recipe)
    td.train_dit(run / "data", run / "vae", tmp, r, stories_dir=run / "stories")
    rows = [json.loads(line) for line in (tmp / "log.jsonl").read_text().splitlines()]
    return captions, masks, rows


def _digest(x) -> str:
    return hashlib.sha256(json.dumps(x).encode()).hexdigest()[:16]


def test_without_story_steps_clip_training_is_exactly_as_before(run, tmp_path, monkeypatch):
    """The batches, captions, frame masks and losses of a tiny run as the training code drew them before story
    steps existed (recorded from that code): story_frac=0 must not move the random streams, even with stories."""
    captions, masks, rows = _train(run, tmp_path, monkeypatch, story_frac=0.0)
    assert [len(c) for c in captions] == [2, 2, 2, 2, 2, 4, 2, 2, 2, 2, 4, 2]
    assert _digest(captions) == "235e84a0148de026" and _digest(masks) == "1aeb1f43ebef141a"
    assert [(x["step"], x["bucket"], x["batch"]) for x in rows] == [(0, "64x64_5f", 2), (10, "64x64_5f", 4)]
    assert [x["loss"] for x in rows] == pytest.approx([1.8909428119659424, 1.7790718078613281], rel=1e-4)
    assert not any("story" in x for x in rows)


def test_story_steps_train(run, tmp_path, monkeypatch):
    captions, _, rows = _train(run, tmp_path, monkeypatch, story_frac=1.0, story_ref_frac=0.5, p_drop=0.0)
    assert rows[0]["story"] in ("text", "reference", "text+reference") and all(np.isfinite(x["loss"]) for x in rows)
    assert all(c and all(c) for c in captions)                              # every story step has its captions
    assert (tmp_path / "dit_ema.safetensors").exists()
    with pytest.raises(ValueError, match="story_frac=0.5 needs encoded stories"):
        td.train_dit(run / "data", run / "vae", tmp_path / "x", td.DitRecipe(story_frac=0.5))
    assert not (tmp_path / "x").exists()


def test_cli_story_stages(tmp_path, monkeypatch, capsys):
    from pathlib import Path
    from spacetime.toyworld import train
    from spacetime.toyworld.train_vae import load_trained_vae
    calls = {}
    monkeypatch.setattr(train, "encode_stories", lambda *a: calls.setdefault("encode", a))
    monkeypatch.setattr(train, "train_dit", lambda *a, **k: calls.setdefault("dit", (a, k)))
    train.main(["encode-stories", "--vae", "V", "--out", "S", "--stories", "30"])
    assert calls["encode"] == (Path("V"), Path("S"), 30, 1)
    train.main(["dit", "--data", "D", "--vae", "V", "--out", "O", "--stories", "S", "--set", "story_frac=0.5"])
    (data, vae, out, recipe), kw = calls["dit"]
    assert recipe.story_frac == 0.5 and recipe.story_ref_frac == 0.5 and kw["stories_dir"] == Path("S")
    train.main(["shipped-vae", "--out", str(tmp_path / "vae")])           # the shipped VAE as a VAE folder
    vae, cfg = load_trained_vae(tmp_path / "vae")
    assert cfg.z_dim == 16 and vae.spatial_factor == 4 and vae.temporal_factor == 4
    with pytest.raises(SystemExit):
        train.main(["shipped-vae", "--out", str(tmp_path / "vae")])
    assert "already holds a VAE" in capsys.readouterr().err


def test_contrasting_captions_name_the_opposite_motion_in_the_same_words():
    from spacetime.toyworld.captions import parse_prompt
    from spacetime.toyworld.world import OPPOSITE_MOTION, Obj, Scene
    rng = np.random.default_rng(3)
    scenes = [Scene("black", (Obj("ball", "red", "small", mo, 0.3, 0.5),)) for mo in
              ("moves right", "moves up", "grows", "bounces")]
    pair = Scene("black", (Obj("ball", "red", "small", "stays still", 0.3, 0.5),
                           Obj("box", "blue", "small", "stays still", 0.7, 0.5)), relation="left of", kind="pair")
    b = td.Bucket("64x64_5f", torch.zeros(4, 4, 2, 4, 4, dtype=torch.float16), torch.zeros(4, 2, 4, 4, dtype=torch.uint8), scenes)
    r = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=0.0, contrast=1.0, p_short=0.5)
    checked = 0
    for step in range(40):
        bt = td.clip_batch([b], rng, r, TINY_DIT, step)
        assert bt.negatives is not None and len(bt.negatives) == len(bt.captions)
        for cap, neg in zip(bt.captions, bt.negatives):
            assert neg is not None and neg != cap
            assert cap.split()[:3] == neg.split()[:3]                 # the same object words
            want = parse_prompt(cap)["objects"][0]["motion"]
            assert parse_prompt(neg)["objects"][0]["motion"] == OPPOSITE_MOTION[want]
            checked += 1
    assert checked > 40
    # a held-out combination never appears, not even as a contrasting caption
    held = Scene("black", (Obj("ball", "green", "small", "moves right", 0.3, 0.5),))   # green moving left: held out
    assert td.contrasting_scene(held, ["motion"], rng) is None and td.contrasting_scene(pair, ["motion"], rng) is None
    # off by default: no second caption, the same random stream as before
    bt = td.clip_batch([b], np.random.default_rng(0), td.DitRecipe(tokens=64, p_drop=0.0, image_frac=0.0),
                       TINY_DIT, 0)
    assert bt.negatives is None


def test_contrasting_captions_change_the_shape_or_colour_word_on_frames_and_clips():
    from spacetime.toyworld.captions import parse_prompt
    from spacetime.toyworld.world import Obj, Scene, is_held_out, visible_on
    rng = np.random.default_rng(5)
    scenes = [Scene(bg, (Obj(sh, co, "small", "moves right", 0.3, 0.5),)) for bg, sh, co in
              (("black", "ball", "red"), ("white", "box", "blue"), ("navy", "triangle", "yellow"),
               ("beige", "ball", "purple"))]
    b = td.Bucket("64x64_5f", torch.zeros(4, 4, 2, 4, 4, dtype=torch.float16), torch.zeros(4, 2, 4, 4, dtype=torch.uint8), scenes)
    seen = {"shape": 0, "colour": 0}
    for image_frac in (1.0, 0.0):                          # single-frame steps and clip steps
        r = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=image_frac, contrast=1.0, p_short=0.5,
                         contrast_words="shape,colour")
        for step in range(30):
            bt = td.clip_batch([b], rng, r, TINY_DIT, step)
            assert bt.kind == ("image" if image_frac else "video")
            for cap, neg in zip(bt.captions, bt.negatives):
                a, o = parse_prompt(cap)["objects"][0], parse_prompt(neg)["objects"][0]
                assert a["motion"] == o["motion"]                    # one word changed, never the motion
                changed = [k for k in ("shape", "color") if a[k] != o[k]]
                assert len(changed) == 1, (cap, neg)
                seen["shape" if changed == ["shape"] else "colour"] += 1
    assert min(seen.values()) > 20
    # another colour stands out from the background; held-out combinations never appear
    sc = Scene("white", (Obj("ball", "red", "small", "stays still", 0.5, 0.5),))
    for k in range(40):
        other = td.contrasting_scene(sc, ["colour"], np.random.default_rng(k)).main
        assert other.color != "red" and visible_on(other.color, "white")
    held = Scene("black", (Obj("ball", "green", "small", "moves right", 0.3, 0.5),))
    for k in range(40):
        alt = td.contrasting_scene(held, ["shape", "colour", "motion"], np.random.default_rng(k))
        assert alt is not None and not is_held_out(alt)
    # motion is not contrasted on a single frame: a motion-only recipe adds no second caption there
    r = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=1.0, contrast=1.0)
    assert td.clip_batch([b], rng, r, TINY_DIT, 0).negatives is None
    with pytest.raises(ValueError, match="contrast_words='size'.*motion, shape, colour"):
        td.DitRecipe(contrast_words="size")


def test_contrast_hinge_charges_a_caption_blind_model_and_only_at_high_noise():
    g = torch.Generator().manual_seed(2)
    B, Fp = 4, 3
    x0 = torch.randn(B, 4, Fp, 4, 4, generator=g)
    objw = torch.rand(B, Fp, 4, 4, generator=g)
    m = torch.zeros(B, Fp)
    ctx = torch.randn(B, 7, 384, generator=g)
    lens = torch.full((B,), 7)
    noise = torch.randn(x0.shape, generator=g)
    model = _model(1)
    sigma = torch.tensor([0.9, 0.8, 0.3, 0.7])
    plain = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 3.0)
    rows = torch.tensor([0, 2, 3])
    # the contrasting caption is the same caption: L_neg = L_true, the hinge is margin x L_true on rows >= min_sigma
    same = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 3.0, negatives=(rows, ctx, lens),
                        contrast=2.0, margin=0.25, min_sigma=0.5)
    with torch.no_grad():
        xs = (1 - sigma.view(B, 1, 1, 1, 1)) * x0 + sigma.view(B, 1, 1, 1, 1) * noise
        v = model(xs, sigma[:, None].expand(B, Fp) * 1000, ctx, lens)
        per = ((v - (noise - x0)) ** 2 * (1 + 2 * objw[:, None])).sum(dim=(1, 2, 3, 4)) / (4 * Fp * 16)
    torch.testing.assert_close(same - plain, 2.0 * 0.25 * per[[0, 3]].mean(), atol=1e-5, rtol=1e-4)
    # with no margin, a caption read exactly like the true one adds nothing; below min_sigma nothing is added
    zero = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 3.0, negatives=(rows, ctx, lens),
                        contrast=2.0, margin=0.0, min_sigma=0.5)
    torch.testing.assert_close(zero, plain)
    low = td.flow_loss(model, x0, objw, m, ctx, lens, sigma * 0 + 0.2, noise, 3.0, negatives=(rows, ctx, lens),
                       contrast=2.0, margin=0.25, min_sigma=0.5)
    torch.testing.assert_close(low, td.flow_loss(model, x0, objw, m, ctx, lens, sigma * 0 + 0.2, noise, 3.0))


def test_the_whole_recipe_contrasts_captions_on_free_start_clips_only():
    from spacetime.toyworld.train import all_dit_recipe
    free, edge = all_dit_recipe(100, False, 0.0, True), all_dit_recipe(100, False, 0.0, False)
    assert free.contrast > 0 and edge.contrast == 0
    assert not free.time_schedule and all_dit_recipe(100, True, 300.0, False).time_schedule   # a budget: by time
    assert free.sigma_shift == edge.sigma_shift == 3.0 and free.steps == 100
    assert all_dit_recipe(100, True, 60.0, True).tokens == 8 * free.tokens


def test_probe_sets_none_logs_only_the_word_gaps(run, tmp_path, monkeypatch):
    from spacetime.toyworld import probe as pr
    gaps = []

    def fake_gap(dit, vae, text_encoder, **k):
        gaps.append(type(dit).__name__)
        return {"t2v": {0.99: 0.5}, "i2v": {0.99: 12.0}}

    def no_probe(*a, **k):
        raise AssertionError("probe_sets='none' must not generate probe prompts")
    monkeypatch.setattr(pr, "motion_word_gap", fake_gap)
    monkeypatch.setattr(pr, "frame_word_gap", lambda dit, vae, te, word: {0.85: {"shape": 3.0, "colour": 40.0,
                                                                                        "relation": 1.0}[word]})
    monkeypatch.setattr(pr, "run_probe", no_probe)
    r = td.DitRecipe(steps=6, tokens=256, warmup=2, probe_every=3, probe_sets="none", dit=config_to_dict(TINY_DIT),
                     max_batch=8)
    td.train_dit(run / "data", run / "vae", tmp_path, r)
    rows = [json.loads(line) for line in (tmp_path / "probe.jsonl").read_text().splitlines()]
    assert len(gaps) == 2 and [x["step"] for x in rows] == [3, 3, 6, 6]
    assert all(x["i2v@0.99"] == 12.0 for x in rows if x["mode"] == "motion_word_gap")
    words = [x for x in rows if x["mode"] == "frame_word_gap"]
    assert len(words) == 2 and all(x["shape@0.85"] == 3.0 and x["colour@0.85"] == 40.0 and x["relation@0.85"] == 1.0
                                   for x in words)


def test_contrasting_captions_invert_the_relation_of_pairs_on_frames_and_clips():
    from spacetime.toyworld.captions import parse_prompt
    from spacetime.toyworld.world import INVERSE_RELATION, RELATIONS, Obj, Scene, alternatives
    rng = np.random.default_rng(7)
    a, b = Obj("ball", "red", "small", "stays still", 0.3, 0.5), Obj("box", "blue", "medium", "stays still", 0.7, 0.5)
    pairs = [Scene(bg, (a, b), relation=rel, kind="pair")
             for bg, rel in zip(("black", "white", "navy", "gray"), RELATIONS)]
    single = Scene("black", (Obj("triangle", "yellow", "small", "moves right", 0.3, 0.5),))
    bk = td.Bucket("64x64_5f", torch.zeros(5, 4, 2, 4, 4, dtype=torch.float16),
                   torch.zeros(5, 2, 4, 4, dtype=torch.uint8), pairs + [single])
    inverted, plain = 0, 0
    for image_frac in (1.0, 0.0):                          # a relation shows on one frame as on a clip
        r = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=image_frac, contrast=1.0, p_short=0.5,
                         contrast_words="relation")
        for step in range(30):
            bt = td.clip_batch([bk], rng, r, TINY_DIT, step)
            for cap, neg in zip(bt.captions, bt.negatives or [None] * len(bt.captions)):
                g = parse_prompt(cap)
                if len(g["objects"]) == 1:                 # no relation to invert on a single object
                    assert neg is None
                    plain += 1
                    continue
                n = parse_prompt(neg)
                assert n["relation"] == INVERSE_RELATION[g["relation"]] and n["objects"] == g["objects"], (cap, neg)
                assert cap.split()[:3] == neg.split()[:3] and cap.split()[-2:] == neg.split()[-2:]   # same wording
                inverted += 1
    assert inverted > 40 and plain > 5
    # the objects stay where they are: only the caption reads them the other way round
    for sc in pairs:
        (alt,) = alternatives(sc, "relation")
        assert alt.objects == sc.objects and alt.relation == INVERSE_RELATION[sc.relation]
    assert alternatives(single, "relation") == []
    # a relation-only recipe leaves single objects alone, a single-object word leaves pairs alone
    assert td.contrasting_scene(single, ["relation"], rng) is None
    assert td.contrasting_scene(pairs[0], ["shape", "colour", "motion"], rng) is None
    with pytest.raises(ValueError, match="allowed motion, shape, colour, relation"):
        alternatives(single, "size")


def test_pair_places_names_each_object_s_place_and_its_contrast_swaps_the_places():
    from spacetime.toyworld.captions import complete_graph, parse_prompt, placed_caption, scene_graph
    from spacetime.toyworld.world import Obj, Scene, sample_scene
    rng = np.random.default_rng(4)
    for _ in range(60):                                       # the same scene graph, read back by the parser
        sc = sample_scene(rng, "pair", True)
        cap = placed_caption(sc, rng)
        assert " of the frame and " in cap and complete_graph(parse_prompt(cap)) == complete_graph(scene_graph(sc))
    with pytest.raises(ValueError, match="allowed a pair"):
        placed_caption(Scene("black", (Obj("ball", "red", "small", "stays still", 0.5, 0.5),)))
    pairs = [sample_scene(rng, "pair", True) for _ in range(4)]
    b = td.Bucket("64x64_5f", torch.zeros(4, 4, 2, 4, 4, dtype=torch.float16), torch.zeros(4, 2, 4, 4, dtype=torch.uint8),
                  pairs)
    r = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=1.0, contrast=1.0, contrast_words="relation", pair_places=1.0)
    placed = 0
    for step in range(20):
        bt = td.clip_batch([b], rng, r, TINY_DIT, step)
        for cap, neg in zip(bt.captions, bt.negatives):
            if " of the frame and " not in cap:                # a short caption (p_short) keeps the relation
                continue
            placed += 1
            first, second = cap.split(" and ", 1)
            nfirst, nsecond = neg.split(" and ", 1)
            sides = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
            side = next(w for w in sides if f" {w} " in first)
            assert nfirst == first.replace(f" {side} ", f" {sides[side]} "), (cap, neg)
            assert parse_prompt(neg)["relation"] != parse_prompt(cap)["relation"]
    assert placed > 30
    plain = td.DitRecipe(tokens=64, p_drop=0.0, image_frac=1.0)         # off: the relation's words, as before
    assert not any(" of the frame and " in c for c in td.clip_batch([b], rng, plain, TINY_DIT, 0).captions)


def _drawn_share(scenes, chosen: np.ndarray, rng, image_frac: float = 0.0, **boost) -> float:
    """The share of ``chosen`` scenes among the examples of 20 ``clip_batch`` draws from one bucket of ``scenes``
    (each latent holds its own index), with the recipe's ``boost`` fields."""
    from spacetime.model.config import config_from_dict
    n = len(scenes)
    lat = torch.arange(n, dtype=torch.float16).view(n, 1, 1, 1, 1).expand(n, 16, 3, 4, 4).contiguous()
    b = td.Bucket("64x64_9f", lat, torch.zeros(n, 3, 4, 4, dtype=torch.uint8), scenes)
    cfg = config_from_dict(DiTConfig, config_to_dict(TINY_DIT))
    r = td.DitRecipe(tokens=1024, image_frac=image_frac, max_batch=64, **boost)
    idx = [bt.x0[:, 0, 0, 0, 0].long() for bt in (td.clip_batch([b], rng, r, cfg, s) for s in range(20))]
    return float(chosen[torch.cat(idx).numpy()].mean())


def test_motion_boost_draws_clips_that_move_left_right_up_or_down():
    from spacetime.toyworld.world import DIRECTIONS, sample_scene
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, "single", True) for _ in range(64)]
    moving = np.array([s.main.motion in DIRECTIONS for s in scenes])
    assert 0 < moving.sum() < len(scenes) / 2
    plain, boosted = (_drawn_share(scenes, moving, rng, motion_boost=x) for x in (0.0, 50.0))
    assert abs(plain - moving.mean()) < 0.1 and boosted > 0.9, (plain, boosted)


def test_pair_boost_draws_pairs_on_frames_and_clips():
    from spacetime.toyworld.world import sample_scene
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, None, True) for _ in range(80)]
    pairs = np.array([s.kind == "pair" for s in scenes])
    assert 0 < pairs.sum() < len(scenes) / 2
    for image_frac in (0.0, 1.0):
        plain, boosted = (_drawn_share(scenes, pairs, rng, image_frac, pair_boost=x) for x in (0.0, 50.0))
        assert abs(plain - pairs.mean()) < 0.1 and boosted > 0.85, (image_frac, plain, boosted)


def test_text_lr_mult_gives_the_caption_path_its_own_rate():
    model = _model(1)
    plain = td._param_groups(model)
    assert [g["weight_decay"] for g in plain] == [0.01, 0.0] and all(g["lr_mult"] == 1.0 for g in plain)
    assert sum(len(g["params"]) for g in plain) == len(list(model.parameters()))
    groups = td._param_groups(model, 4.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert len(groups) == 4 and sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:
        text = [(names[id(p)].startswith("text_embedding.") or ".cross_attn." in names[id(p)]) for p in g["params"]]
        assert all(text) if g["lr_mult"] == 4.0 else not any(text)
    assert {g["lr_mult"] for g in groups} == {1.0, 4.0}


def test_resuming_with_another_text_lr_mult_is_refused(run, tmp_path):
    r = td.DitRecipe(steps=3, tokens=256, warmup=1, probe_every=0, dit=config_to_dict(TINY_DIT), max_batch=8,
                     text_lr_mult=3.0)
    td.train_dit(run / "data", run / "vae", tmp_path, r)
    td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 4}))   # same: resumes
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["step"] == 4 and len(state["opt"]["param_groups"]) == 4
    with pytest.raises(ValueError, match=r"text_lr_mult=1.0 \(the run: 3.0\)"):
        td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 5,
                                                                         "text_lr_mult": 1.0}))
    (tmp_path / "recipe.json").unlink()     # a run folder without its recipe: the optimiser's groups still tell
    with pytest.raises(ValueError, match=r"text_lr_mult=1.0: the run in .* was started with another text_lr_mult"):
        td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 5,
                                                                         "text_lr_mult": 1.0}))


def test_resuming_with_another_recipe_is_refused_before_training(run, tmp_path):
    r = td.DitRecipe(steps=2, tokens=256, warmup=1, probe_every=0, dit=config_to_dict(TINY_DIT), max_batch=8,
                     mask_mix={"t2v": 1.0})
    td.train_dit(run / "data", run / "vae", tmp_path, r)
    saved = (tmp_path / "recipe.json").read_text()
    for change in ({"lr": 1e-3}, {"seed": 5}, {"mask_mix": {"t2v": 0.5, "i2v_head": 0.5}}):
        with pytest.raises(ValueError, match=rf"{next(iter(change))}=.* \(the run: .*\).* may change"):
            td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, **change, "steps": 3}))
        assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 2
        assert (tmp_path / "recipe.json").read_text() == saved          # the run's recipe is not replaced
    # a longer run, probed otherwise, with a time limit: the same run, resumed
    td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 3, "time_limit": 600.0,
                                                                     "max_batch": 4}))
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 3
    assert json.loads((tmp_path / "recipe.json").read_text())["steps"] == 3
    # a run started before a recipe field existed trained with its default: that resumes, another value does not
    old = json.loads((tmp_path / "recipe.json").read_text())
    del old["change_weight"]
    (tmp_path / "recipe.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"change_weight=2.0 \(the run: 0.0\)"):
        td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 4,
                                                                         "change_weight": 2.0}))
    td.train_dit(run / "data", run / "vae", tmp_path, td.DitRecipe(**{**r.__dict__, "steps": 4}))
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 4


def test_a_time_scheduled_run_spends_its_cosine_over_the_time_limit_across_resumes(run, tmp_path, monkeypatch):
    """time_schedule: the learning rate follows wall time (a fake clock here), the run stops at time_limit long before
    its step bound, and a resumed run counts the time already spent."""
    clock = {"now": 1000.0}

    def tick():
        clock["now"] += 0.5
        return clock["now"]
    monkeypatch.setattr(td.time, "time", tick)
    r = td.DitRecipe(steps=100000, tokens=256, warmup=1, lr=1e-3, probe_every=0, dit=config_to_dict(TINY_DIT),
                     max_batch=4, time_limit=40.0, time_schedule=True)
    td.train_dit(run / "data", run / "vae", tmp_path, r)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in rows]
    assert 5 < state["step"] < 100 and state["elapsed"] >= 40.0
    assert lrs[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[1:], lrs[2:]))   # cosine after warm-up
    assert lrs[-1] < 0.5e-3                       # well into the decay by the last logged step
    steps = state["step"]
    td.train_dit(run / "data", run / "vae", tmp_path, r)           # resumed: the time is spent, one step at most
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] <= steps + 1
    with pytest.raises(ValueError, match=r"time_schedule=True needs time_limit > 0"):
        td.train_dit(run / "data", run / "vae", tmp_path / "x", td.DitRecipe(**{**r.__dict__, "time_limit": 0.0}))


def test_encoding_one_size_at_a_time_writes_the_same_parts(run, tmp_path, monkeypatch):
    from spacetime.model.loading import read_state_dict
    mix = {1: 0.5, 5: 0.5}
    grad, encode = [], td.encode_bucket

    def spy(*a, **kw):
        grad.append(torch.is_grad_enabled())
        return encode(*a, **kw)
    monkeypatch.setattr(td, "encode_bucket", spy)
    td.encode_dataset(run / "vae", tmp_path / "all", 8, mix=mix, batch=4, sizes=((64, 64), (96, 64)))
    assert grad and not any(grad)                     # encoding builds no autograd graph
    td.encode_dataset(run / "vae", tmp_path / "one", 4, mix=mix, batch=4, sizes=((96, 64),))
    one = sorted(p.name for p in (tmp_path / "one").glob("*.safetensors"))
    assert one == ["96x64_1f_s1_000.safetensors", "96x64_5f_s1_000.safetensors"]
    for name in one:
        a, b = read_state_dict(tmp_path / "all" / name), read_state_dict(tmp_path / "one" / name)
        assert torch.equal(a["latents"], b["latents"]) and torch.equal(a["objects"], b["objects"])
        assert (tmp_path / "all" / name).with_suffix(".json").read_text() == \
            (tmp_path / "one" / name).with_suffix(".json").read_text()


def test_encoding_in_several_processes_writes_the_same_parts(run, tmp_path):
    from spacetime.model.loading import read_state_dict
    mix = {1: 0.5, 5: 0.5}
    td.encode_dataset(run / "vae", tmp_path / "one", 8, mix=mix, batch=4, sizes=((64, 64), (96, 64)))
    td.encode_dataset(run / "vae", tmp_path / "two", 8, mix=mix, batch=4, sizes=((64, 64), (96, 64)), jobs=2)
    names = sorted(p.name for p in (tmp_path / "one").glob("*.safetensors"))
    assert len(names) == 4 and names == sorted(p.name for p in (tmp_path / "two").glob("*.safetensors"))
    for name in names:
        a, b = read_state_dict(tmp_path / "one" / name), read_state_dict(tmp_path / "two" / name)
        assert torch.equal(a["objects"], b["objects"])
        assert torch.allclose(a["latents"].float(), b["latents"].float(), atol=2e-3)   # other thread counts
        assert (tmp_path / "one" / name).with_suffix(".json").read_text() == \
            (tmp_path / "two" / name).with_suffix(".json").read_text()
    with pytest.raises(ValueError, match="jobs=0: allowed 1 or more"):
        td.encode_dataset(run / "vae", tmp_path / "x", 8, mix=mix, jobs=0)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("option, value, says", [
    ("--sizes", "64x65", "sizes item=64x65 is not allowed: width and height must be positive multiples of 16"),
    ("--sizes", "64x528", "64x528 is not allowed; widths and heights up to 512"),
    ("--sizes", "64", "'64' is not WIDTHxHEIGHT"),
    ("--mix", "16:1", "mix frames=16 is not of the form 1 + 4*k; allowed e.g. 13 or 17"),
    ("--mix", "17:0", "17:0 is not allowed; shares are > 0"),
    ("--mix", "17", "'17' is not FRAMES:SHARE"),
    ("--jobs", "0", "--jobs 0: allowed 1 or more (processes)"),
])
def test_encode_refuses_bad_sizes_and_mixes_before_loading_anything(option, value, says, tmp_path, capsys):
    from spacetime.toyworld import train
    with pytest.raises(SystemExit):
        train.main(["encode", "--vae", str(tmp_path / "missing"), "--out", str(tmp_path / "d"), option, value])
    assert says in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_change_boost_draws_clips_that_grow_shrink_or_bounce_and_keeps_frames_as_they_were():
    from spacetime.toyworld.world import CHANGES, sample_scene
    rng = np.random.default_rng(2)
    scenes = [sample_scene(rng, "single", True) for _ in range(64)]
    changing = np.array([s.main.motion in CHANGES for s in scenes])
    assert 0 < changing.sum() < len(scenes) / 2
    plain, boosted = (_drawn_share(scenes, changing, rng, change_boost=x) for x in (0.0, 50.0))
    assert abs(plain - changing.mean()) < 0.1 and boosted > 0.9, (plain, boosted)
    frames = _drawn_share(scenes, changing, rng, 1.0, change_boost=50.0)     # single frames: no motion to boost
    assert abs(frames - changing.mean()) < 0.1


def test_pixel_loss_reads_decoded_frames_weights_objects_and_trains_only_the_dit():
    from spacetime.toyworld.train_vae import init_vae
    vae = init_vae(TINY_VAE, 0).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    B = 3
    x0 = torch.randn(B, 4, 1, 4, 4, generator=g)
    objw = torch.zeros(B, 1, 4, 4)
    objw[:, :, 1:3, 1:3] = 1.0
    sigma = torch.tensor([0.2, 0.5, 0.9])
    # the true latent predicted: nothing to pay
    assert float(td.pixel_loss(vae, x0, x0.clone(), objw, sigma, 4.0, 0.6)) == pytest.approx(0.0, abs=1e-7)
    # the same latent error costs more on an object's cells than on the background's, and nothing above max_sigma
    bump = torch.zeros_like(x0)
    on_obj, off_obj = bump.clone(), bump.clone()
    on_obj[:, :, :, 1, 1] = 1.0
    off_obj[:, :, :, 0, 3] = 1.0
    a = float(td.pixel_loss(vae, x0, x0 + on_obj, objw, sigma, 4.0, 0.6))
    b = float(td.pixel_loss(vae, x0, x0 + off_obj, objw, sigma, 4.0, 0.6))
    assert a > 0 and b > 0 and a > b
    assert float(td.pixel_loss(vae, x0, x0 + on_obj, objw, sigma, 4.0, 0.1)) == 0.0
    # only rows 0 and 1 count (sigma <= 0.6), weighted by 1 - sigma, summed over the batch of 3
    each = [float(td.pixel_loss(vae, x0[i:i + 1], (x0 + on_obj)[i:i + 1], objw[i:i + 1], torch.zeros(1), 4.0, 0.6))
            for i in range(2)]
    assert a == pytest.approx((0.8 * each[0] + 0.5 * each[1]) / 3, rel=1e-5)
    # in flow_loss: single-frame batches only, the gradient reaches the DiT and not the frozen VAE
    model = _model(1)
    ctx = torch.randn(B, 7, 384, generator=g)
    lens = torch.full((B,), 7)
    noise = torch.randn(x0.shape, generator=g)
    m = torch.zeros(B, 1)
    plain = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 4.0)
    with_px = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 4.0, pixel=(vae, 2.0, 0.6))
    assert float(with_px.detach()) > float(plain.detach())
    with_px.backward()
    assert all(p.grad is None for p in vae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    clips = torch.randn(B, 4, 2, 4, 4, generator=g)
    cn = torch.randn(clips.shape, generator=g)
    ow = objw.expand(B, 2, 4, 4)
    torch.testing.assert_close(td.flow_loss(model, clips, ow, torch.zeros(B, 2), ctx, lens, sigma, cn, 4.0,
                                            pixel=(vae, 2.0, 0.6)),
                               td.flow_loss(model, clips, ow, torch.zeros(B, 2), ctx, lens, sigma, cn, 4.0))
    # a known single frame carries no loss, in the pixels as in the latent
    known = torch.tensor([[1.0], [0.0], [0.0]])
    torch.testing.assert_close(
        td.flow_loss(model, x0, objw, known, ctx, lens, sigma, noise, 4.0, pixel=(vae, 2.0, 0.6))
        - td.flow_loss(model, x0, objw, known, ctx, lens, sigma, noise, 4.0),
        td.flow_loss(model, x0, objw, m, ctx, lens, sigma * torch.tensor([9.0, 1.0, 1.0]), noise, 4.0,
                     pixel=(vae, 2.0, 0.6))
        - td.flow_loss(model, x0, objw, m, ctx, lens, sigma * torch.tensor([9.0, 1.0, 1.0]), noise, 4.0))


@pytest.mark.parametrize("field, value, says", [("pixel_weight", -1.0, "pixel_weight=-1.0: allowed a number >= 0"),
                                                 ("pixel_weight", float("nan"), "pixel_weight=nan"),
                                                 ("pixel_max_sigma", 0.0, "pixel_max_sigma=0.0: allowed a noise"),
                                                 ("pixel_max_sigma", 1.5, "pixel_max_sigma=1.5")])
def test_recipe_refuses_a_bad_pixel_loss_setting(field, value, says):
    with pytest.raises(ValueError, match=says):
        td.DitRecipe(**{field: value})


def test_change_loss_charges_errors_that_change_from_frame_to_frame():
    g = torch.Generator().manual_seed(8)
    B, C, Fp, H, W = 2, 4, 3, 4, 4
    objw = torch.zeros(B, Fp, H, W)
    objw[:, :, 1, 1] = 1.0
    m = torch.zeros(B, Fp)
    # the same error in every frame (a steady wrong shade) costs nothing
    steady = torch.randn(B, C, 1, H, W, generator=g).expand(B, C, Fp, H, W)
    assert float(td.change_loss(steady, objw, m, 4.0)) == 0.0
    # one cell's error jumping by 1 between two frames: one pair, one channel, C * H * W cells a pair
    e = torch.zeros(B, C, Fp, H, W)
    e[0, 0, 2, 0, 3] = 1.0                                   # background cell, frame 2: pairs (1, 2) pays 1
    n_cells = B * (Fp - 1) * C * H * W
    assert float(td.change_loss(e, objw, m, 4.0)) == pytest.approx(1.0 / n_cells)
    on_obj = torch.zeros_like(e)
    on_obj[0, 0, 2, 1, 1] = 1.0                              # the same jump on an object cell weighs 4
    assert float(td.change_loss(on_obj, objw, m, 4.0)) == pytest.approx(4.0 / n_cells)
    # a pair with a known frame is skipped; an error in a middle frame alone counts in both of its pairs
    known = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    assert float(td.change_loss(e, objw, known, 4.0)) == 0.0
    mid = torch.zeros_like(e)
    mid[1, 2, 1, 0, 0] = 2.0
    assert float(td.change_loss(mid, objw, m, 4.0)) == pytest.approx(8.0 / n_cells)
    assert float(td.change_loss(e[:, :, :1], objw[:, :1], m[:, :1], 4.0)) == 0.0     # single frames: no pairs
    # in flow_loss: clips only, added with its weight, gradient to the DiT
    model = _model(1)
    ctx = torch.randn(B, 7, 384, generator=g)
    lens = torch.full((B,), 7)
    sigma = torch.tensor([0.3, 0.8])
    x0 = torch.randn(B, C, Fp, H, W, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    plain = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 4.0)
    both = td.flow_loss(model, x0, objw, m, ctx, lens, sigma, noise, 4.0, change_weight=2.0)
    with torch.no_grad():
        xs = (1 - sigma.view(B, 1, 1, 1, 1)) * x0 + sigma.view(B, 1, 1, 1, 1) * noise
        v = td.predict(model, xs, sigma.view(B, 1).expand(B, Fp) * 1000.0, ctx, lens)
    torch.testing.assert_close(both.detach() - plain.detach(),
                               2.0 * td.change_loss(v - (noise - x0), objw, m, 4.0), rtol=1e-4, atol=1e-6)
    assert float(both.detach()) > float(plain.detach())
    both.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    frames = (x0[:, :, :1], objw[:, :1], m[:, :1], ctx, lens, sigma, noise[:, :, :1], 4.0)
    torch.testing.assert_close(td.flow_loss(model, *frames, change_weight=2.0), td.flow_loss(model, *frames))


@pytest.mark.parametrize("value, says", [(-1.0, "change_weight=-1.0: allowed a number >= 0"),
                                         (float("inf"), "change_weight=inf")])
def test_recipe_refuses_a_bad_change_weight(value, says):
    with pytest.raises(ValueError, match=says):
        td.DitRecipe(change_weight=value)
