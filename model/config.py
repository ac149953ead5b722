"""Configuration dataclasses and named presets for every model part.

A preset name picks a DiT, a VAE and a text encoder together (a *bundle*). The configs are plain dataclasses so a
checkpoint's keys and shapes can be turned back into one (see ``loading.infer_dit_config``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional

from .errors import SpacetimeValueError
from .latent_rgb import WAN22_NORMALISED_BIAS, WAN22_NORMALISED_FACTORS, to_raw_space

# Per-channel statistics of the Wan 2.1 VAE latent (used to normalise latents for the DiT).
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Per-channel statistics of the Wan 2.2 (TI2V-5B) 48-channel VAE latent, as published with its weights.
WAN22_LATENT_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
                     -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
                     -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                     -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
                     -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
                     0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_LATENT_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
                    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
                    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
                    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
                    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
                    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclass(frozen=True)
class DiTConfig:
    """The Wan video transformer. Field names follow the Wan constructor."""
    model_type: str = "t2v"          # t2v | ti2v (per-token timesteps) | i2v (image latent and mask as extra inputs)
    patch_size: tuple = (1, 2, 2)
    text_len: int = 512
    in_dim: int = 16
    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    out_dim: int = 16
    num_heads: int = 12
    num_layers: int = 30
    qk_norm: bool = True
    cross_attn_norm: bool = True
    eps: float = 1e-6

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise SpacetimeValueError(f"DiT dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise SpacetimeValueError(f"DiT head dim {self.dim // self.num_heads} must be even (RoPE pairs)")
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


def _check_vae_config(cfg, tuple_fields) -> None:
    """Shared by both VAE configs: list fields become tuples; stage and channel counts must agree."""
    for name in tuple_fields:
        object.__setattr__(cfg, name, tuple(getattr(cfg, name)))
    if len(cfg.temperal_downsample) != len(cfg.dim_mult) - 1:
        raise SpacetimeValueError(
            f"VAE temperal_downsample has {len(cfg.temperal_downsample)} entries; "
            f"it needs len(dim_mult) - 1 = {len(cfg.dim_mult) - 1}")
    if len(cfg.latent_mean) != cfg.z_dim or len(cfg.latent_std) != cfg.z_dim:
        raise SpacetimeValueError(
            f"VAE latent_mean/latent_std need z_dim={cfg.z_dim} entries, got "
            f"{len(cfg.latent_mean)}/{len(cfg.latent_std)}")


@dataclass(frozen=True)
class VAEConfig:
    """The Wan 2.1 causal video VAE family. ``temperal_downsample`` keeps Wan's spelling of the constructor argument."""
    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple = ()
    temperal_downsample: tuple = (False, True, True)
    latent_mean: tuple = WAN21_LATENT_MEAN
    latent_std: tuple = WAN21_LATENT_STD

    def __post_init__(self):
        _check_vae_config(self, ("dim_mult", "attn_scales", "temperal_downsample", "latent_mean", "latent_std"))

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)


@dataclass(frozen=True)
class VAE22Config:
    """The Wan 2.2 (TI2V-5B) causal video VAE: pixels are 2x2-unshuffled into 12 channels, the encoder (width
    ``dim``) and the decoder (width ``dec_dim``) add average-pool / repeat shortcuts around every stage. Stride
    4x16x16 for the official weights. Implemented in ``vae22.py``."""
    dim: int = 160
    dec_dim: int = 256
    z_dim: int = 48
    dim_mult: tuple = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple = (False, True, True)
    patch_size: int = 2
    latent_mean: tuple = WAN22_LATENT_MEAN
    latent_std: tuple = WAN22_LATENT_STD

    def __post_init__(self):
        _check_vae_config(self, ("dim_mult", "temperal_downsample", "latent_mean", "latent_std"))

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)


@dataclass(frozen=True)
class TextEncoderConfig:
    """``kind`` is ``umt5`` (Wan's umT5-XXL encoder) or ``bert`` (a sentence encoder such as all-MiniLM-L6-v2)."""
    kind: str = "umt5"
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False
    max_length: int = 512
    # bert only
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


@dataclass(frozen=True)
class BundlePreset:
    """A named set of parts that work together, plus the sampling defaults that suit them."""
    name: str
    dit: DiTConfig
    vae: VAEConfig
    text: TextEncoderConfig
    steps: int = 50
    shift: float = 5.0
    cfg: float = 5.0
    fps: int = 16
    default_size: tuple = (832, 480)       # width, height
    default_frames: int = 81
    negative_prompt: str = ""
    description: str = ""
    files: dict = field(default_factory=dict, compare=False)          # part -> default file (dit, vae, text, tokenizer)
    prompt_expander: Optional[Callable[[str], str]] = field(default=None, compare=False)
    builders: dict = field(default_factory=dict, compare=False)       # part -> callable(bundle) building it
    latent_rgb: Optional[dict] = field(default=None, compare=False)   # {"weight": [3][C], "bias": [3]} previews
    # Two experts (Wan 2.2 A14B): steps at timestep >= boundary * 1000 use the high-noise expert (the DiT file),
    # later ones the low-noise expert; ``cfg_high_noise`` is the high-noise expert's guidance (``cfg`` the other's).
    expert_boundary: Optional[float] = None
    cfg_high_noise: Optional[float] = None
    # weights trained for generation from given frames only (image-to-video, extension, fill): text-to-video refused
    frames_only: bool = False
    # frame guidance with known frames (image-to-video, extension, fill; model/sampling.py): 0 = off; it runs on
    # the steps at noise level >= frame_cfg_stop (0: every step)
    frame_cfg: float = 0.0
    frame_cfg_stop: float = 0.0
    # contrast guidance (model/sampling.py): 0 = off; it runs on the steps at noise level >= contrast_cfg_stop with
    # the contrast prompt the user gives or ``contrast_writer`` writes from the prompt (None: only the user's)
    contrast_cfg: float = 0.0
    contrast_cfg_stop: float = 0.0
    contrast_writer: Optional[Callable[[str], Optional[str]]] = field(default=None, compare=False)

    @property
    def stride(self) -> tuple:
        """(time, height, width) pixels per DiT token."""
        p = self.dit.patch_size
        return (self.vae.temporal_factor * p[0], self.vae.spatial_factor * p[1], self.vae.spatial_factor * p[2])


# Wan's default negative prompt (shared by the 2.1 and 2.2 configs).
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，"
    "背景人很多，倒着走")

UMT5_XXL = TextEncoderConfig()
MINILM_L6 = TextEncoderConfig(kind="bert", vocab_size=30522, dim=384, dim_attn=384, dim_ffn=1536, num_heads=12,
                              num_layers=6, max_length=256, max_positions=512)
WAN21_VAE = VAEConfig()
WAN22_VAE = VAE22Config()

DIT_PRESETS: dict[str, DiTConfig] = {
    "wan2.1-t2v-1.3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-ti2v-5b": DiTConfig(model_type="ti2v", in_dim=48, out_dim=48, dim=3072, ffn_dim=14336, num_heads=24,
                                num_layers=30),
    # Each of the two A14B experts is a 14B DiT; the image-to-video pair takes 36 input channels (noise 16, mask 4,
    # image latent 16) and no CLIP.
    "wan2.2-t2v-a14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-i2v-a14b": DiTConfig(model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    # Small random-weight configurations for tests and parity checks (head dim 128, the real RoPE split).
    "wan-tiny": DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, text_len=32),
}

BUNDLE_PRESETS: dict[str, BundlePreset] = {}


def register_bundle(preset: BundlePreset) -> BundlePreset:
    BUNDLE_PRESETS[preset.name] = preset
    if preset.name not in DIT_PRESETS:
        DIT_PRESETS[preset.name] = preset.dit
    return preset


register_bundle(BundlePreset(
    "wan2.1-t2v-1.3b", DIT_PRESETS["wan2.1-t2v-1.3b"], WAN21_VAE, UMT5_XXL, steps=50, shift=8.0, cfg=6.0,
    negative_prompt=WAN_NEGATIVE_PROMPT, description="Wan 2.1 text-to-video 1.3B (480p)"))
register_bundle(BundlePreset(
    "wan2.1-t2v-14b", DIT_PRESETS["wan2.1-t2v-14b"], WAN21_VAE, UMT5_XXL, steps=50, shift=5.0, cfg=5.0,
    default_size=(1280, 720), negative_prompt=WAN_NEGATIVE_PROMPT, description="Wan 2.1 text-to-video 14B"))


register_bundle(BundlePreset(
    "wan2.2-ti2v-5b", DIT_PRESETS["wan2.2-ti2v-5b"], WAN22_VAE, UMT5_XXL, steps=50, shift=5.0, cfg=5.0, fps=24,
    default_size=(1280, 704), default_frames=121, negative_prompt=WAN_NEGATIVE_PROMPT,
    description="Wan 2.2 text/image-to-video 5B with its 48-channel VAE (720p, 24 fps)",
    latent_rgb=to_raw_space(WAN22_NORMALISED_FACTORS, WAN22_NORMALISED_BIAS, WAN22_LATENT_MEAN, WAN22_LATENT_STD)))
register_bundle(BundlePreset(
    "wan2.2-t2v-a14b", DIT_PRESETS["wan2.2-t2v-a14b"], WAN21_VAE, UMT5_XXL, steps=40, shift=12.0, cfg=3.0,
    default_size=(1280, 720), negative_prompt=WAN_NEGATIVE_PROMPT, expert_boundary=0.875, cfg_high_noise=4.0,
    description="Wan 2.2 text-to-video A14B: high-noise expert (DiT file) and low-noise expert"))
register_bundle(BundlePreset(
    "wan2.2-i2v-a14b", DIT_PRESETS["wan2.2-i2v-a14b"], WAN21_VAE, UMT5_XXL, steps=40, shift=5.0, cfg=3.5,
    default_size=(1280, 720), negative_prompt=WAN_NEGATIVE_PROMPT, expert_boundary=0.9, cfg_high_noise=3.5,
    description="Wan 2.2 image-to-video A14B: high-noise expert (DiT file) and low-noise expert"))


def dit_preset(name: str) -> DiTConfig:
    try:
        return DIT_PRESETS[name]
    except KeyError:
        raise SpacetimeValueError(
            f"preset={name!r} is not a known DiT preset; allowed: {', '.join(sorted(DIT_PRESETS))}") from None


def bundle_preset(name: str) -> BundlePreset:
    _ensure_embedded_registered()
    try:
        return BUNDLE_PRESETS[name]
    except KeyError:
        raise SpacetimeValueError(
            f"preset={name!r} is not a known model preset; allowed: {', '.join(sorted(BUNDLE_PRESETS))}") from None


def _ensure_embedded_registered():
    # The embedded toy-world preset lives with its weights (weights/embedded.json); imported lazily to stay cheap.
    from . import embedded  # noqa: F401


def config_to_dict(cfg) -> dict:
    d = asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def config_from_dict(cls, d: dict):
    known = {f for f in cls.__dataclass_fields__}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


__all__ = ["DiTConfig", "VAEConfig", "VAE22Config", "TextEncoderConfig", "BundlePreset", "DIT_PRESETS",
           "BUNDLE_PRESETS",
           "dit_preset", "bundle_preset", "register_bundle", "config_to_dict", "config_from_dict", "replace",
           "WAN_NEGATIVE_PROMPT", "UMT5_XXL", "MINILM_L6", "WAN21_VAE", "WAN22_VAE"]
