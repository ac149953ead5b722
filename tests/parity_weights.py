"""Deterministic random weights for parity fixtures.

A fixture may omit its ``model.*`` tensors and give ``weight_seed`` in its json instead; both the fixture maker and
the parity tests then fill every tensor of the native-key state dict (keys sorted) from one seeded generator.
"""
import torch


def seeded_state_dict(shapes: dict, seed: int) -> dict:
    """shapes: native key -> shape. Norm gains ~ 1 + 0.1 N(0,1); biases and 1-D tables ~ 0.1 N(0,1);
    matrices/kernels ~ N(0,1) / sqrt(fan_in); embeddings ~ N(0,1)."""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        x = torch.randn(shape, generator=g, dtype=torch.float32)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "gamma" or (leaf == "weight" and ("norm" in key) and len(shape) == 1):
            x = 1.0 + 0.1 * x
        elif "embedding" in key and key.endswith("embedding.weight") and len(shape) == 2 and "patch" not in key:
            x = x if "token" in key or "pos" in key else x / shape[1] ** 0.5
        elif len(shape) >= 2 and leaf == "weight":
            fan_in = 1
            for d in shape[1:]:
                fan_in *= d
            x = x / fan_in ** 0.5
        elif "modulation" in key:
            x = x / shape[-1] ** 0.5
        else:
            x = 0.1 * x
        out[key] = x
    return out
