"""The generative model, independent of ComfyUI.

Parts (each usable alone):
  config          dataclasses and presets (DiTConfig, VAEConfig, TextEncoderConfig, BundlePreset)
  dit             WanDiT: the spacetime transformer (native Wan keys; timesteps per sample, frame or token)
  vae             WanVAE: the causal video VAE (chunked causal encode, streamed decode)
  text_encoders   UMT5Encoder, BertEncoder (all-MiniLM-L6-v2), tokenizers
  sampling        flow-matching schedules, Euler and UniPC, CFG, FrameCondition, sample()
  conditioning    where known frames go (image-to-video, extend, fill) and how they are encoded
  loading         checkpoints: safetensors / weights-only .pth, key maps, config inference, mismatch reports
  hub             optional Hugging Face downloads of a preset's files
  pipeline        Spacetime: a lazily loaded bundle with encode_text / encode / decode / sample_latents / generate

Typical use:
    from spacetime.model import Spacetime
    st = Spacetime.load("toyworld")
    frames = st.generate("a red ball bounces on a navy background", frames=17, seed=3)   # [1, 17, 64, 64, 3]

Importing this package is cheap: parts import torch when they are used.
"""

__all__ = ["Spacetime", "load_dit", "load_vae", "load_text_encoder", "build_dit", "build_vae", "sample",
           "FrameCondition", "bundle_preset", "dit_preset"]


def __getattr__(name):
    if name == "Spacetime":
        from .pipeline import Spacetime
        return Spacetime
    if name in ("load_dit", "load_vae", "load_text_encoder"):
        from . import loading
        return getattr(loading, name)
    if name == "build_dit":
        from .dit import build_dit
        return build_dit
    if name == "build_vae":
        from .vae import build_vae
        return build_vae
    if name in ("sample", "FrameCondition"):
        from . import sampling
        return getattr(sampling, name)
    if name in ("bundle_preset", "dit_preset"):
        from . import config
        return getattr(config, name)
    raise AttributeError(name)
