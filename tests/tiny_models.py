"""A small random DiT for sampling tests (step caching, frame guidance, parallel sampling): Wan layout, 2 layers of
width 64, text 32-d / 16 tokens, its output head scaled up so that sampling moves the latents visibly."""
import torch

from spacetime.model.config import DiTConfig
from spacetime.model.dit import build_dit


def sampling_dit():
    torch.manual_seed(0)
    m = build_dit(DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, text_len=16)).eval()
    torch.nn.init.normal_(m.head.head.weight, std=0.1)
    return m
