"""Multi-shot videos: storyboard parsing and its errors, per-shot text conditioning in the DiT (exact when there is
one shot, equal to a block-masked cross-attention otherwise), the three conditioning modes, the node and the CLI,
the toy-world story generator and the storyboard evaluation on ground truth."""
import json

import numpy as np
import pytest
import torch

from spacetime.cli import EXIT_BAD_INPUT, main
from spacetime.model.config import bundle_preset
from spacetime.model.errors import SpacetimeValueError
from spacetime.model.storyboard import Shot, parse_shots, plan_story


@pytest.fixture(scope="module")
def st():
    from spacetime.nodes import host
    return host.get_model("toyworld-random", device="cpu")


# ----------------------------------------------------------------------------------------------------------------------
# Shots and their errors
# ----------------------------------------------------------------------------------------------------------------------

def test_shots_parse_and_plan():
    shots = parse_shots("17: a red ball on navy\n\n  16 :  a red ball on beige: close-up \nthe end: a blue box")
    assert shots == [Shot("a red ball on navy", 17), Shot("a red ball on beige: close-up", 16),
                     Shot("the end: a blue box", 0)]
    plan = plan_story(shots, frames=49)
    assert [s.frames for s in plan.shots] == [17, 16, 16] and plan.cuts == [17, 33] and plan.frames == 49
    assert plan.latents() == [(0, 5), (5, 9), (9, 13)]
    assert plan.frame_shots().tolist() == [0] * 5 + [1] * 4 + [2] * 4
    assert plan.latent_cuts == [5, 9] and plan_story(["17: a"]).latent_cuts == []
    shared = plan_story(["a", "b", "c"], frames=41)                # 11 latent frames shared 4 / 4 / 3
    assert [s.frames for s in shared.shots] == [13, 16, 12] and shared.cuts == [13, 29]
    assert plan_story(["9: a", "b"], frames=13).shots[1].frames == 4


@pytest.mark.parametrize("shots, frames, needle", [
    ("", 0, "no shots"),
    ("17: a red ball\n16:   ", 0, "shot 2 is empty"),
    (["a red ball", ""], 0, "shot 2 is empty"),
    ("10: a red ball", 0, "shot 1 has 10 frames, which do not fit"),
    ("17: a red ball\n6: a blue box", 0, "shot 2 has 6 frames, which do not fit"),
    ("17: a red ball\n16: a blue box", 41, "do not fit frames=41"),
    ("17: a red ball\n16: a blue box\na green box", 33, "do not fit frames=33"),
    ("a\nb\nc\nd\ne\nf", 17, "6 shots are more than frames=17"),
    ("17: a red ball\na blue box", 0, "shot 2 has no frame count"),
    ("a red ball", 18, "frames=18"),
])
def test_storyboard_errors_name_the_shot_and_what_is_allowed(shots, frames, needle):
    with pytest.raises(SpacetimeValueError, match=needle) as e:
        plan_story(shots, frames)
    text = str(e.value)
    assert any(w in text for w in ("allowed", "needs", "give", "write", "must"))


# ----------------------------------------------------------------------------------------------------------------------
# Per-shot text in the DiT
# ----------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from spacetime.model.config import dit_preset
    from spacetime.model.dit import build_dit
    torch.manual_seed(0)
    m = build_dit(dit_preset("wan-tiny"))
    torch.nn.init.normal_(m.head.head.weight, std=0.02)
    return m.eval()


def test_one_shot_per_shot_text_is_the_plain_model(tiny):
    x = torch.randn(2, 16, 3, 4, 4)
    t = torch.tensor([500.0, 300.0])
    ctx = torch.randn(2, 7, 64)
    emb = tiny.embed_text(ctx)
    with torch.no_grad():
        plain = tiny(x, t, text_kv=tiny.text_kv(emb))
        shots = tiny(x, t, text_kv=tiny.text_kv(emb, frame_shots=torch.zeros(3, dtype=torch.long), shots=1))
    torch.testing.assert_close(shots, plain, atol=1e-6, rtol=0)


def test_shot_text_equals_a_block_masked_cross_attention(tiny):
    import torch.nn.functional as F
    from spacetime.model.dit import ShotText
    ca = tiny.blocks[0].cross_attn
    B, S, Fp, per = 2, 3, 5, 4                       # 2 videos (e.g. cond / uncond), 3 shots, 5 frames of 4 tokens
    x = torch.randn(B, Fp * per, 256)
    texts = tiny.embed_text(torch.randn(B * S, 6, 64))                     # rows grouped per video
    frame_shots = torch.tensor([0, 0, 1, 2, 2])
    with torch.no_grad():
        k, v, bias = ca.text_kv(texts)                     # full padded text: no logit bias
        assert bias is None
        got = ca(x, kv=ShotText(k, v, frame_shots, S))
        # reference: every video attends to all its shots' tokens concatenated, with a block mask (Wan's math:
        # q and k each RMS-normed with their own weight)
        q = ca._heads(ca.norm_q(ca.q(x)))
        k, v = ca._heads(ca.norm_k(ca.k(texts))), ca._heads(ca.v(texts))
        kc = k.unflatten(0, (B, S)).permute(0, 2, 1, 3, 4).flatten(2, 3)   # [B, heads, S*L, d]
        vc = v.unflatten(0, (B, S)).permute(0, 2, 1, 3, 4).flatten(2, 3)
        L = k.shape[2]
        token_shot = frame_shots.repeat_interleave(per)
        mask = token_shot[:, None] == torch.arange(S).repeat_interleave(L)[None, :]
        ref = ca.o(F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask).transpose(1, 2).flatten(2))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():                            # and shot 1's tokens equal a plain call with shot 1's text only
        alone = ca(x[:, 8:12], context=texts.unflatten(0, (B, S))[:, 1])
    torch.testing.assert_close(got[:, 8:12], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="frame_shots holds shot numbers"):
        ShotText(k, v, torch.tensor([0, 3]), S)


def test_per_shot_compact_text_equals_per_shot_padded_text(tiny):
    """Per-shot text with the compact text rows (one padding row with a log-count logit bias) gives the output of
    per-shot text over every padding row, for captions of different lengths."""
    x = torch.randn(2, 16, 3, 4, 4)
    ctx, lens = torch.randn(4, 9, 64), torch.tensor([3, 9, 5, 0])      # 2 videos x 2 shots, one empty caption
    frame_shots = torch.tensor([0, 1, 1])
    compact = tiny.text_tokens(ctx, lens)
    assert compact.emb.shape[1] == 10 and compact.bias is not None
    with torch.no_grad():
        got = tiny(x, torch.tensor([500.0, 500.0]), text_kv=tiny.text_kv(compact, frame_shots=frame_shots, shots=2))
        ref = tiny(x, torch.tensor([500.0, 500.0]),
                   text_kv=tiny.text_kv(tiny.embed_text(ctx, lens), frame_shots=frame_shots, shots=2))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_per_shot_text_trains(tiny):
    """Gradients reach the text path through the per-shot cross-attention (what multi-shot fine-tuning needs)."""
    x = torch.randn(1, 16, 3, 4, 4)
    emb = tiny.embed_text(torch.randn(2, 5, 64))
    kv = tiny.text_kv(emb, frame_shots=torch.tensor([0, 1, 1]), shots=2)
    tiny(x, torch.tensor([400.0]), text_kv=kv).square().mean().backward()
    grad = tiny.text_embedding[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0
    tiny.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------------------------------
# Sampling a storyboard
# ----------------------------------------------------------------------------------------------------------------------

FAST = dict(steps=2, cfg=3.0)


def test_one_shot_storyboard_is_the_plain_generation(st):
    from spacetime.model.storyboard import storyboard_latents
    text = st.encode_text(["a red ball"], [""])
    plain = st.sample_latents(text, st.latent_shape(1, 17, 64, 64), seed=4, **FAST)
    raw, plan = storyboard_latents(st, "17: a red ball", width=64, height=64, seed=4, **FAST)
    assert plan.cuts == []
    torch.testing.assert_close(raw, plain, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["text", "reference", "text+reference"])
def test_storyboard_modes(st, mode, monkeypatch):
    from spacetime.model import storyboard
    calls = []
    orig = storyboard.sample_shots

    def spy(st_, text, frame_shots, shape, seed, *a, **k):
        calls.append((text.prompts, frame_shots.tolist(), shape[2]))
        return orig(st_, text, frame_shots, shape, seed, *a, **k)
    monkeypatch.setattr(storyboard, "sample_shots", spy)
    raw, plan = storyboard.storyboard_latents(st, ["9: a red ball on navy", "8: a blue box on beige"], width=64,
                                              height=48, mode=mode, seed=1, expand_prompt=False, **FAST)
    assert raw.shape == st.latent_shape(1, 17, 48, 64) and plan.cuts == [9]
    if mode == "text":
        assert calls == [(("a red ball on navy", "a blue box on beige"), [0, 0, 0, 1, 1], 5)]
    elif mode == "reference":
        assert calls == []
    else:                                            # shot 2's window: shot 1's last latent (its caption) + shot 2
        assert calls == [(("a red ball on navy", "a blue box on beige"), [0, 1, 1], 3)]
    again, _ = storyboard.storyboard_latents(st, ["9: a red ball on navy", "8: a blue box on beige"], width=64,
                                             height=48, mode=mode, seed=1, expand_prompt=False, **FAST)
    assert torch.equal(raw, again)
    with pytest.raises(SpacetimeValueError, match="reference_frames=6"):
        storyboard.storyboard_latents(st, "9: a\n8: b", width=64, height=48, mode="reference", reference_frames=6)
    with pytest.raises(SpacetimeValueError, match="mode='pictures'"):
        storyboard.storyboard_latents(st, "9: a\n8: b", width=64, height=48, mode="pictures")


def test_storyboard_node_and_its_validation():
    from spacetime.nodes.long_nodes import SpacetimeStoryboard
    from spacetime.runner import run_workflow
    v = SpacetimeStoryboard.VALIDATE_INPUTS
    assert "shot 2 is empty" in v(shots="17: a\n16:", frames=0)
    assert "more than frames=9" in v(shots="a\nb\nc\nd", frames=9)
    assert "shot 2 has 5 frames" in v(shots="17: a\n5: b", frames=0)
    assert v(shots="17: a\n16: b", frames=0) is True
    g = {"1": {"class_type": "SpacetimeModelLoader", "inputs": {"preset": "toyworld-random", "device": "cpu"}},
         "2": {"class_type": "SpacetimeStoryboard", "inputs": {
             "model": ["1", 0], "shots": "9: a red ball on navy\n8: a red ball on beige", "negative": "",
             "width": 64, "height": 64, "frames": 0, "conditioning": "text+reference", "reference_frames": 4,
             "seed": 3, "steps": 1, "cfg": 1.0, "shift": 3.0, "sampler": "euler", "expand_prompt": True}},
         "3": {"class_type": "SpacetimeVAEDecode", "inputs": {"model": ["1", 0], "latent": ["2", 0]}}}
    r = run_workflow(g)
    info = json.loads(r["2"]["result"][1])
    assert info["cuts"] == "9" and info["shots"] == "9, 8" and info["conditioning"] == "text+reference"
    p = bundle_preset("toyworld-random")                    # the reference frames are guided with its defaults
    assert p.frame_cfg > 0 and (info["frame_cfg"], info["frame_cfg_stop"]) == (p.frame_cfg, p.frame_cfg_stop)
    latent, frames = r["2"]["result"][0], r["3"]["result"][0]
    assert latent["spacetime_cuts"] == [3] and frames.shape == (17, 64, 64, 3)
    # the decoder starts afresh at the cut: frames before it as in one pass, the shot after it as decoded alone
    from spacetime.nodes import host
    from spacetime.nodes.sampler_nodes import SpacetimeVAEDecode
    st = host.get_model("toyworld-random", device="cpu")
    whole = st.decode(latent["samples"])[0]
    z = latent["samples"]
    alone = st.decode(torch.cat([z[:, :, 3:4], z[:, :, 3:]], 2))[0, 1:]
    torch.testing.assert_close(frames[:9], whole[:9])
    torch.testing.assert_close(frames[9:], alone)
    assert (frames[9:] - whole[9:]).abs().max() > 0.01
    with pytest.raises(SpacetimeValueError, match=r"latent\['spacetime_cuts'\]=\[5\]: 5 is not a latent frame .* "
                                                  r"allowed: latent frames 1..4"):
        SpacetimeVAEDecode().decode(st, dict(latent, spacetime_cuts=[5]))


def test_cli_storyboard(tmp_path, capsys):
    out = tmp_path / "story.mp4"
    rc = main(["generate", "--shot", "9: a red ball on a navy background", "--shot", "8: a red ball on beige",
               "--shot-conditioning", "reference", "--steps", "1", "--model", "toyworld-random", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert "cuts at [9]" in capsys.readouterr().out
    from spacetime.provenance import verify_file
    rep = verify_file(out)
    assert rep["manifest"]["state"] == "trusted" and rep["manifest"]["generation"]["cuts"] == "9"
    gen, p = rep["manifest"]["generation"], bundle_preset("toyworld-random")
    assert (gen["frame_cfg"], gen["frame_cfg_stop"]) == (p.frame_cfg, p.frame_cfg_stop) and p.frame_cfg > 0
    for args, needle in ((["--shot", "9: a red ball", "--shot", "7: a box"], "shot 2 has 7 frames"),
                         (["--shot", "a", "--shot", "b", "--shot", "c", "--frames", "5"], "3 shots are more than"),
                         (["--shot", "9:"], "shot 1 is empty"), ([], "a PROMPT is needed")):
        bad = tmp_path / "bad.mp4"
        rc = main(["generate", *args, "--model", "toyworld-random", "--out", str(bad)])
        err = capsys.readouterr().err.strip()
        assert rc == EXIT_BAD_INPUT and needle in err and "\n" not in err and not bad.exists(), err
    assert list(tmp_path.iterdir()) == [out]


# ----------------------------------------------------------------------------------------------------------------------
# Toy-world stories and the storyboard evaluation
# ----------------------------------------------------------------------------------------------------------------------

def test_stories_keep_their_objects_across_cuts():
    from spacetime.toyworld.analysis import analyse, nearest_background
    from spacetime.toyworld.shots import random_story, sample_story
    changes_seen = set()
    for seed in range(12):
        clip = random_story(seed)
        story = clip.story
        assert 2 <= len(story.shots) <= 3 and clip.frames.shape[0] == story.frames == len(clip.shot_of_frame)
        assert clip.cuts == story.cuts and story.latent_shots().tolist() == plan_story(
            parse_shots(story.storyboard())).frame_shots().tolist()
        first = story.shots[0].scene
        for k, shot in enumerate(story.shots):
            a = analyse(clip.frames[clip.shot_of_frame == k])
            assert nearest_background(a["bg_rgb"]) == shot.scene.background
            assert a["tracks"][0].color in {o.color for o in first.objects}
            assert [(o.shape, o.color, o.size) for o in shot.scene.objects] == \
                [(o.shape, o.color, o.size) for o in first.objects]
            if k:
                changes_seen.add(shot.change)
                assert shot.change != story.shots[k - 1].change or shot.change == "background"
            if shot.change == "zoom":
                assert shot.caption.startswith("Close-up: ") and shot.zoom in (1.5, 2.0)
            if shot.change == "pan":
                assert "camera pans" in shot.caption
            if shot.change == "background":
                assert shot.scene.background != story.shots[k - 1].scene.background
    assert changes_seen == {"background", "zoom", "pan"}
    zoomed = sample_story(np.random.default_rng(0), shots=2, changes=["zoom"], pair=False)
    from spacetime.toyworld.shots import render_story
    c = render_story(zoomed)
    areas = [analyse(c.frames[c.shot_of_frame == k])["tracks"][0].areas() for k in range(2)]
    ratio = np.nanmedian(areas[1]) / np.nanmedian(areas[0])
    assert ratio == pytest.approx(zoomed.shots[1].zoom ** 2, rel=0.25)
    with pytest.raises(ValueError, match="shot 2 has frames=10"):
        sample_story(np.random.default_rng(0), shots=2, frames=(17, 10))
    with pytest.raises(ValueError, match="change='pan' is not allowed for a story of two objects"):
        sample_story(np.random.default_rng(0), shots=2, changes=["pan"], pair=True)


def test_storyboard_evaluation_scores_ground_truth_and_catches_a_missing_cut():
    from spacetime.toyworld.shots import render_story
    from spacetime.toyworld.storyboard_eval import measure_story, stories, summarize
    from spacetime.toyworld.world import render
    items = stories(6)
    res = [measure_story(render_story(s).frames, s) for s in items]
    assert summarize(res) == {"stories": 6, "cut_placed": 1.0, "followed": 1.0, "identity": 1.0,
                              "spurious_cuts": 0.0}
    s = items[0]
    uncut = render(s.shots[0].scene, s.frames, 64, 64).frames            # the first shot, never cut
    r = measure_story(uncut, s)
    assert r["cut_placed"] == [False] * len(s.cuts) and not all(r["followed"])
    late = render_story(s).frames.copy()                                   # the cut 8 frames (2 latent) late
    c = s.cuts[0]
    late[c:c + 8] = late[c - 1]
    assert measure_story(late, s)["cut_placed"][0] is False


def test_a_true_story_keeps_its_cuts_through_the_vae_only_when_decoding_restarts_at_them():
    """The causal decoder carries its state over a cut: decoded as one clip, a camera-pan cut of a true story fades
    into the new shot and is not found; restarted at the cut, it is found where the story has it."""
    from spacetime.model.conditioning import to_frames, to_video
    from spacetime.model.pipeline import Spacetime
    from spacetime.toyworld.shots import render_story, sample_story
    from spacetime.toyworld.storyboard_eval import detect_cuts
    st = Spacetime.load("toyworld")
    story = sample_story(np.random.default_rng(3), shots=2, changes=["pan"], pair=False)
    truth = render_story(story).frames
    assert detect_cuts(truth) == story.cuts == [17]
    raw = st.encode(torch.from_numpy(truth.astype(np.float32) / 255))
    cuts = plan_story(parse_shots(story.storyboard())).latent_cuts
    assert cuts == [5]
    one_pass = (st.decode(raw)[0].numpy() * 255 + 0.5).astype(np.uint8)
    restarted = (st.decode(raw, cuts=cuts)[0].numpy() * 255 + 0.5).astype(np.uint8)
    assert story.cuts[0] not in detect_cuts(one_pass)
    assert detect_cuts(restarted) == story.cuts
    assert np.array_equal(one_pass[:17], restarted[:17])


def test_storyboard_evaluation_json_records_the_guidance_shift_and_steps_it_ran_with(tmp_path):
    from spacetime.toyworld.storyboard_eval import main as storyboard_main
    out = tmp_path / "story.json"
    assert storyboard_main(["--stories", "1", "--modes", "text", "--steps", "2", "--cfg", "3", "--shift", "2.5",
                            "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["settings"] == {"cfg": 3.0, "shift": 2.5, "steps": 2, "stories": 1, "seed": 0}
    s = res["modes"]["text"]["summary"]
    assert s["stories"] == 1 and len(res["modes"]["text"]["stories"]) == 1 and set(res["modes"]) == {"text"}
    assert 0.0 <= res["single_shot_followed"] <= 1.0
    assert res["vae_ceiling"]["cut_placed"] == 1.0 and res["vae_ceiling"]["stories"] == 1
