"""Provenance: the watermark scheme, the signed MP4, verification (trusted / untrusted / tampered / none) and the
write rules (atomic, never overwrite, blocked clips not written). Small clips, a throwaway signing identity."""
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from spacetime.provenance import format_report, stamp_video, verify_file, watermark
from spacetime.provenance.stamp import OutputExistsError, WithheldError
from spacetime.provenance.video import read_luma, transcode


@pytest.fixture(autouse=True)
def config_dir(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "spacetime-config"          # one identity for the whole session
    monkeypatch.setenv("SPACETIME_CONFIG_DIR", str(d))
    for var in ("SPACETIME_SIGN_CERT", "SPACETIME_SIGN_KEY", "SPACETIME_TRUST_ANCHORS"):
        monkeypatch.delenv(var, raising=False)
    return d


def toy_clip(frames=9, width=64, height=64, seed=0):
    from spacetime.toyworld.world import random_clip
    return random_clip(seed, frames=frames, width=width, height=height).frames


def smooth_clip(frames=9, size=64, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for t in range(frames):
        c = rng.uniform(0, 1, 3)
        img = np.stack([np.sin(3 * x + t * 0.2 + c[i] * 6) * 0.4 + 0.5 + 0.1 * y for i in range(3)], axis=-1)
        out.append(img)
    return np.clip(np.stack(out), 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Watermark scheme
# ----------------------------------------------------------------------------------------------------------------------

def test_code_word_round_trip_and_crc():
    word = watermark.encode_payload(0x53, 0xDEADBEEF)
    assert word.shape == (64,) and set(np.unique(word)) <= {0, 1}
    assert watermark.valid_words(word[None])[0]
    bad = word.copy()
    bad[20] ^= 1
    assert not watermark.valid_words(bad[None])[0]
    with pytest.raises(watermark.WatermarkError, match="content_id"):
        watermark.encode_payload(0x53, 2 ** 32)


@pytest.mark.parametrize("size", [32, 64, 96, 256])
def test_watermark_reads_back_from_pixels(size):
    rgb = toy_clip(5, size, size, seed=size)
    marked = watermark.embed_rgb(rgb, content_id=123456789)
    res = watermark.detect_rgb(marked)
    assert res.detected and res.content_id == 123456789 and res.generator == "spacetime"
    assert res.bit_agreement > 0.95
    psnr = 10 * np.log10(255 ** 2 / np.mean((marked.astype(float) - rgb) ** 2))
    assert psnr > 36, psnr                            # invisible: a small change of the picture


def test_unmarked_frames_are_not_detected():
    hits = [watermark.detect_rgb(toy_clip(5, 64, 64, seed=s)).detected for s in range(12)]
    hits += [watermark.detect_rgb(smooth_clip(5, 64, seed=s)).detected for s in range(12)]
    assert not any(hits)


def test_too_small_frames_are_refused_with_a_reason():
    with pytest.raises(watermark.WatermarkError, match="too small"):
        watermark.embed_rgb(np.zeros((3, 16, 16, 3), np.uint8))


# ----------------------------------------------------------------------------------------------------------------------
# Stamp and verify
# ----------------------------------------------------------------------------------------------------------------------

GEN = {"model": "toyworld", "checkpoint_sha256": "ab" * 32, "seed": 7, "steps": 20, "cfg": 5.0,
       "prompt": "a red ball bounces on a navy background", "negative": ""}


def test_signed_file_reads_back_trusted_with_our_anchor(tmp_path):
    info = stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8, generation=GEN,
                       safety_reports=[{"kind": "prompt", "verdict": "allow", "blocked": False, "categories": [],
                                        "scores": {"sexual": 0.01}, "evidence": [{"match": "secret words"}]}])
    assert info["path"] == str(tmp_path / "clip.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]           # no temporary files left
    report = verify_file(info["path"])
    m, w = report["manifest"], report["watermark"]
    assert m["state"] == "trusted" and m["c2pa_state"] == "Trusted"
    assert m["ai_generated"] and m["actions"][0]["action"] == "c2pa.created"
    assert m["actions"][0]["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    gen = m["generation"]
    assert gen["seed"] == 7 and gen["checkpoint_sha256"] == "ab" * 32 and gen["steps"] == 20
    assert "prompt" not in gen and "negative" not in gen                        # only its hash without opt-in
    assert len(gen["prompt_sha256"]) == 64
    assert gen["safety"][0]["verdict"] == "allow" and "evidence" not in gen["safety"][0]
    assert w["detected"] and w["matches_manifest"] and w["content_id"] == info["content_id"]
    text = format_report(report)
    assert "trusted" in text and "watermark" in text
    assert b"PRIVATE KEY" not in open(info["path"], "rb").read()


def test_prompt_text_recorded_only_when_opted_in(tmp_path):
    info = stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8, generation=GEN, include_prompt=True)
    gen = verify_file(info["path"])["manifest"]["generation"]
    assert gen["prompt"] == GEN["prompt"] and gen["prompt_included"] is True


def test_without_our_anchor_the_signature_is_untrusted(tmp_path):
    info = stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8, generation=GEN)
    m = verify_file(info["path"], trust_anchors=[])["manifest"]
    assert m["state"] == "untrusted" and m["c2pa_state"] == "Valid"


def test_one_flipped_byte_makes_the_file_tampered(tmp_path):
    info = stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8, generation=GEN)
    data = bytearray(open(info["path"], "rb").read())
    i = data.find(b"mdat") + 64                                                 # inside the video data
    data[i] ^= 0x01
    bad = tmp_path / "edited.mp4"
    bad.write_bytes(bytes(data))
    report = verify_file(bad)
    assert report["manifest"]["state"] == "tampered"
    assert "assertion.bmffHash.mismatch" in report["manifest"]["failures"]
    assert verify_file(info["path"])["manifest"]["state"] == "trusted"           # the original is still fine


def test_reencoded_copy_has_no_manifest_but_keeps_the_watermark(tmp_path):
    info = stamp_video(smooth_clip(17, 64), tmp_path / "clip.mp4", fps=8, generation=GEN)
    copy = tmp_path / "reupload.mp4"
    transcode(info["path"], copy, crf=23)
    report = verify_file(copy)
    assert report["manifest"]["present"] is False and report["manifest"]["state"] == "none"
    assert report["watermark"]["detected"] and report["watermark"]["content_id"] == info["content_id"]
    assert "re-encoded" in report["verdict"]


def test_file_without_anything(tmp_path):
    from spacetime.provenance.video import encode_yuv, rgb_to_yuv420
    luma, u, v = rgb_to_yuv420(toy_clip())
    plain = tmp_path / "plain.mp4"
    encode_yuv(str(plain), luma, u, v, fps=8)
    report = verify_file(plain)
    assert report["manifest"]["state"] == "none" and report["watermark"]["detected"] is False


ENCODE_ONCE = """
import hashlib, io, numpy as np
from spacetime.provenance.video import encode_yuv
rng = np.random.default_rng(1)
y, x = np.mgrid[:240, :416]
luma = np.stack([128 + 60 * np.sin((x + 3 * t) / 5) * np.cos(y / 7) + rng.normal(0, 4, y.shape) for t in range(9)])
u, v = np.full((9, 120, 208), 100, np.uint8), np.full((9, 120, 208), 150, np.uint8)
buf = io.BytesIO()
encode_yuv(buf, luma, u, v, fps=8)
print(hashlib.sha256(buf.getvalue()).hexdigest())
"""


def test_the_same_planes_encode_to_the_same_bytes_whatever_the_heap_held():
    """The encoded file is a function of the planes: a clip stamped again (another process, a reused heap) decodes
    to the same frames. glibc's MALLOC_PERTURB_ fills fresh heap memory with a different byte in each process; with
    x264's MB-tree on, its AVX-512 code read that memory and these three files differed (on AVX-512 CPUs)."""
    digests = set()
    for perturb in ("0", "85", "170"):
        proc = subprocess.run([sys.executable, "-c", ENCODE_ONCE], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, MALLOC_PERTURB_=perturb))
        assert proc.returncode == 0, proc.stderr
        digests.add(proc.stdout.strip())
    assert len(digests) == 1, digests


def test_never_overwrites(tmp_path):
    target = tmp_path / "clip.mp4"
    first = stamp_video(toy_clip(seed=1), target, fps=8)
    before = target.read_bytes()
    second = stamp_video(toy_clip(seed=2), target, fps=8)
    assert second["path"] == str(tmp_path / "clip_00001.mp4")
    assert target.read_bytes() == before and first["content_id"] != second["content_id"]
    with pytest.raises(OutputExistsError):
        stamp_video(toy_clip(seed=3), target, fps=8, on_exists="raise")
    numbered = stamp_video(toy_clip(seed=4), target, fps=8, numbered=True)
    assert numbered["path"] == str(tmp_path / "clip_00002.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "clip_00001.mp4", "clip_00002.mp4"]


def test_blocked_report_leaves_no_file(tmp_path):
    with pytest.raises(WithheldError, match="blocked"):
        stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8,
                    safety_reports=[{"kind": "frames", "verdict": "block", "blocked": True, "categories": ["sexual"]}])
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_are_padded_and_ingredients_recorded(tmp_path):
    from PIL import Image
    src = tmp_path / "input.png"
    Image.fromarray(toy_clip(1, 65, 47)[0]).save(src)
    out = tmp_path / "out"
    out.mkdir()
    info = stamp_video(toy_clip(9, 65, 47), out / "odd.mp4", fps=8, ingredients=[src])
    assert (info["width"], info["height"]) == (66, 48)
    luma, fps = read_luma(info["path"])
    assert luma.shape == (9, 48, 66) and fps == 8
    report = verify_file(info["path"])
    assert report["manifest"]["state"] == "trusted" and report["manifest"]["ingredients"] == ["input.png"]
    assert report["watermark"]["detected"]


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match=".mp4"):
        stamp_video(toy_clip(), tmp_path / "clip.mov", fps=8)
    with pytest.raises(ValueError, match="fps"):
        stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=0)
    with pytest.raises(ValueError, match="shape"):
        stamp_video(np.zeros((4, 64, 64)), tmp_path / "clip.mp4", fps=8)
    assert list(tmp_path.iterdir()) == []


def test_local_identity_is_private(config_dir, tmp_path):
    from spacetime.provenance.identity import LOCAL_DIR, signing_identity
    ident = signing_identity()
    assert ident.source == "local"
    d = config_dir / LOCAL_DIR
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    from cryptography import x509
    cert = x509.load_pem_x509_certificate(ident.chain_pem)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_user_identity_from_environment(tmp_path, monkeypatch):
    """A user's own certificate and key (here: a second local identity made elsewhere) sign instead."""
    from spacetime.provenance import identity
    other = tmp_path / "other"
    monkeypatch.setenv("SPACETIME_CONFIG_DIR", str(other))
    mine = identity.local_identity()
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(mine.chain_pem)
    key.write_bytes(mine.key_pem)
    monkeypatch.setenv("SPACETIME_CONFIG_DIR", str(tmp_path / "fresh"))
    monkeypatch.setenv("SPACETIME_SIGN_CERT", str(chain))
    monkeypatch.setenv("SPACETIME_SIGN_KEY", str(key))
    out = tmp_path / "out"
    out.mkdir()
    info = stamp_video(toy_clip(), out / "clip.mp4", fps=8)
    assert info["signer"] == "user"
    assert not (tmp_path / "fresh" / identity.LOCAL_DIR).exists()              # no local identity was made
    assert verify_file(info["path"])["manifest"]["state"] == "untrusted"
    assert verify_file(info["path"], trust_anchors=[other / identity.LOCAL_DIR / "root.pem"])["manifest"][
        "state"] == "trusted"
    monkeypatch.delenv("SPACETIME_SIGN_KEY")
    with pytest.raises(ValueError, match="together"):
        identity.signing_identity()


def test_imports_are_cheap():
    code = ("import sys, spacetime.provenance, spacetime.safety; "
            "print(','.join(m for m in ('torch', 'av', 'c2pa', 'onnxruntime', 'cryptography') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == ""


def test_verify_report_is_json(tmp_path):
    info = stamp_video(toy_clip(), tmp_path / "clip.mp4", fps=8, generation=GEN)
    json.dumps(verify_file(info["path"]))


NAVY = 0.299 * 20 + 0.587 * 30 + 0.114 * 80


@pytest.mark.parametrize("size", [64, 128, 256])
def test_smooth_watermark_v3_is_invisible_and_read_back(size):
    """v3 on a flat navy 17-frame clip: no change larger than 1 level between neighbouring pixels (no block edges),
    PSNR >= 42 dB, exact payload back; an unmarked clip reads as unmarked."""
    from spacetime.provenance import watermark as wm
    luma = np.full((17, size, size), NAVY)
    assert wm.scheme_for(size, size, 17) == wm.SCHEME_V3
    marked = wm.embed_luma(luma, wm.DEFAULT_GENERATOR, 0xC0FFEE)
    d = marked - luma
    assert max(np.abs(np.diff(d, axis=1)).max(), np.abs(np.diff(d, axis=2)).max()) <= 1.0
    assert 10 * np.log10(255 ** 2 / np.mean(d ** 2)) >= 42
    got = wm.detect_luma(np.round(marked))
    assert got.detected and got.content_id == 0xC0FFEE and got.scheme == wm.SCHEME_V3
    assert not wm.detect_luma(np.round(luma)).detected


def test_v3_is_static_over_segments_and_spreads_the_word_over_time_on_small_frames():
    from spacetime.provenance import watermark as wm
    luma = np.full((17, 64, 64), NAVY)
    d = wm.embed_luma(luma, wm.DEFAULT_GENERATOR, 5) - luma
    assert all(np.array_equal(d[0], d[k]) for k in (1, 2, 3))         # one field per segment of 4 frames
    assert not np.allclose(d[0], d[4])                                 # the next segment carries other bits
    big = np.full((9, 128, 128), NAVY)
    e = wm.embed_luma(big, wm.DEFAULT_GENERATOR, 5) - big
    assert np.array_equal(e[0], e[4])                                  # 128x128: every segment holds the word


def test_v3_reads_trimmed_clips_and_single_frames():
    from spacetime.provenance import watermark as wm
    rgb = toy_clip(17, 64, 64, seed=3)
    marked = wm.embed_rgb(rgb, content_id=424242)
    navy = wm.embed_rgb(np.full((17, 64, 64, 3), (20, 30, 80), np.uint8), content_id=424242)
    for cut in (marked[4:], marked[1:], navy[2:15], navy[3:]):         # the reader finds the segments again
        got = wm.detect_rgb(cut)
        assert got.detected and got.content_id == 424242 and got.scheme == wm.SCHEME_V3
    still = wm.embed_rgb(rgb[:1], content_id=99)                       # one 64x64 frame: 8x8 cells
    got = wm.detect_rgb(still)
    assert got.detected and got.content_id == 99 and got.scheme == wm.SCHEME_V3


def test_marks_of_the_earlier_schemes_are_still_read():
    from spacetime.provenance import watermark as wm
    for scheme, size in ((wm.SCHEME_V1, 64), (wm.SCHEME_V2, 256)):
        luma = np.full((5, size, size), NAVY)
        old = wm.detect_luma(np.round(wm.embed_luma(luma, wm.DEFAULT_GENERATOR, 77, scheme=scheme)))
        assert old.detected and old.content_id == 77 and old.scheme == scheme
    assert wm.scheme_for(32, 32, 1) == wm.SCHEME_V1                   # too small for v3: blocks
    with pytest.raises(wm.WatermarkError, match="too small"):
        wm.embed_luma(np.zeros((1, 64, 64)), scheme=wm.SCHEME_V2)
    with pytest.raises(wm.WatermarkError, match="cannot carry"):
        wm.embed_luma(np.zeros((1, 32, 32)), scheme=wm.SCHEME_V3)

def test_v3_marked_piece_by_piece_equals_the_whole_clip():
    """Pieces starting on segment boundaries, marked with the clip's settled length, carry exactly the whole clip's
    mark (the streamed stamp writer relies on it)."""
    from spacetime.provenance import watermark as wm
    luma = wm.rgb_luma(toy_clip(21, 64, 64, seed=5))
    whole = wm.embed_luma(luma, wm.DEFAULT_GENERATOR, 31337)
    assert not wm.settled(64, 64, 12) and wm.settled(64, 64, 13)       # 64x64: 16x16 cells from 13 frames on
    pieces = [wm.embed_luma(luma[a:b], wm.DEFAULT_GENERATOR, 31337, start=a, frames=13) for a, b in
              ((0, 8), (8, 20), (20, 21))]
    assert np.array_equal(np.concatenate(pieces), whole)
    with pytest.raises(wm.WatermarkError, match="start=2 is not allowed"):
        wm.embed_luma(luma[2:6], start=2, frames=21)
