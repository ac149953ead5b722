"""Latent-to-RGB preview tables: a linear map from one latent pixel's channels to an RGB value in [-1, 1].

A table is ``{"weight": [3][C], "bias": [3]}`` and acts on *raw* VAE latents (the LATENT convention of this pack).
"""
from __future__ import annotations

# Wan 2.2 48-channel latent (TI2V-5B VAE): per channel the (r, g, b) factors that ComfyUI publishes for its Wan22
# latent format (comfy/latent_formats.py, ``latent_rgb_factors`` / ``latent_rgb_factors_bias``). ComfyUI applies
# them to *normalised* latents, (raw - mean) / std; ``to_raw_space`` folds the statistics in.
WAN22_NORMALISED_FACTORS = (
    (0.0119, 0.0103, 0.0046),
    (-0.1062, -0.0504, 0.0165),
    (0.0140, 0.0409, 0.0491),
    (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808),
    (0.0264, 0.0463, 0.0912),
    (0.0295, 0.0326, 0.0590),
    (-0.0244, -0.0270, 0.0025),
    (0.0443, -0.0102, 0.0288),
    (-0.0465, -0.0090, -0.0205),
    (0.0359, 0.0236, 0.0082),
    (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561),
    (0.0006, 0.0594, 0.0418),
    (-0.0319, -0.0542, -0.0637),
    (-0.0268, 0.0024, 0.0260),
    (0.0539, 0.0265, 0.0358),
    (-0.0359, -0.0312, -0.0287),
    (-0.0285, -0.1032, -0.1237),
    (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051),
    (0.0390, 0.0670, 0.2863),
    (0.0069, 0.0144, 0.0082),
    (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232),
    (-0.1454, -0.0902, -0.0481),
    (0.0714, 0.0827, 0.0447),
    (-0.0304, -0.0574, -0.0196),
    (0.0401, 0.0384, 0.0204),
    (-0.0758, -0.0297, -0.0014),
    (0.0568, 0.1307, 0.1372),
    (-0.0055, -0.0310, -0.0380),
    (0.0239, -0.0305, 0.0325),
    (-0.0663, -0.0673, -0.0140),
    (-0.0416, -0.0047, -0.0023),
    (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331),
    (0.1833, 0.1466, 0.2250),
    (-0.0368, 0.0370, 0.0295),
    (-0.3441, -0.3543, -0.2008),
    (-0.0479, -0.0489, -0.0420),
    (-0.0660, -0.0153, 0.0800),
    (-0.0101, 0.0068, 0.0156),
    (-0.0690, -0.0452, -0.0927),
    (-0.0145, 0.0041, 0.0015),
    (0.0421, 0.0451, 0.0373),
    (0.0504, -0.0483, -0.0356),
    (-0.0837, 0.0168, 0.0055),
)
WAN22_NORMALISED_BIAS = (0.0317, -0.0878, -0.1388)


def to_raw_space(factors, bias, mean, std) -> dict:
    """Factors [C][3] acting on normalised latents -> a table acting on raw latents:
    rgb = sum_c f_c (raw_c - mean_c) / std_c + b = sum_c (f_c / std_c) raw_c + (b - sum_c f_c mean_c / std_c)."""
    if not (len(factors) == len(mean) == len(std)):
        raise ValueError(f"latent-to-RGB table has {len(factors)} channels; the statistics have {len(mean)}")
    weight = [[f[o] / s for f, s in zip(factors, std)] for o in range(3)]
    offset = [bias[o] - sum(f[o] * m / s for f, m, s in zip(factors, mean, std)) for o in range(3)]
    return {"weight": weight, "bias": offset}

