"""The watermark's code word, shared by every scheme: 8-bit generator id + 32-bit content id + CRC-24, read back with
Chase decoding (flip subsets of the least reliable bits until the CRC holds and the generator id is known)."""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Optional

import numpy as np

from ..model.errors import SpacetimeValueError

GENERATOR_BITS, CONTENT_BITS, CRC_BITS = 8, 32, 24
PAYLOAD_BITS = GENERATOR_BITS + CONTENT_BITS
CODE_BITS = PAYLOAD_BITS + CRC_BITS
GENERATORS = {0x53: "spacetime"}            # generator ids this reader accepts
DEFAULT_GENERATOR = 0x53
CHASE_BITS = 10
_CRC_POLY, _CRC_INIT = 0x864CFB, 0xB704CE  # CRC-24 (OpenPGP polynomial and initial value)


class WatermarkError(SpacetimeValueError):
    """Frames that cannot carry the watermark, or a payload out of range."""


def int_bits(value: int, n: int) -> list[int]:
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def bits_int(bits) -> int:
    out = 0
    for b in bits:
        out = (out << 1) | int(b)
    return out


def crc24(bits) -> int:
    """CRC-24 of a bit sequence (most significant bit first)."""
    reg = _CRC_INIT
    for b in bits:
        top = ((reg >> 23) & 1) ^ int(b)
        reg = (reg << 1) & 0xFFFFFF
        if top:
            reg ^= _CRC_POLY
    return reg


@lru_cache(maxsize=1)
def _crc_affine() -> tuple[np.ndarray, np.ndarray]:
    """The CRC is affine over GF(2): crc(p) = A p + c. Returns (A [24, 40], c [24]) for vectorised checks."""
    c = np.array(int_bits(crc24([0] * PAYLOAD_BITS), CRC_BITS), dtype=np.uint8)
    cols = []
    for i in range(PAYLOAD_BITS):
        unit = [0] * PAYLOAD_BITS
        unit[i] = 1
        cols.append(np.array(int_bits(crc24(unit), CRC_BITS), dtype=np.uint8) ^ c)
    return np.stack(cols, axis=1), c


def encode_payload(generator_id: int, content_id: int) -> np.ndarray:
    """[64] uint8 code word: generator id (8 bits), content id (32 bits), CRC-24."""
    if not 0 <= int(generator_id) < 2 ** GENERATOR_BITS:
        raise WatermarkError(f"generator_id={generator_id} is out of range; allowed: 0..{2 ** GENERATOR_BITS - 1}")
    if not 0 <= int(content_id) < 2 ** CONTENT_BITS:
        raise WatermarkError(f"content_id={content_id} is out of range; allowed: 0..{2 ** CONTENT_BITS - 1}")
    payload = int_bits(int(generator_id), GENERATOR_BITS) + int_bits(int(content_id), CONTENT_BITS)
    return np.array(payload + int_bits(crc24(payload), CRC_BITS), dtype=np.uint8)


def valid_words(words: np.ndarray) -> np.ndarray:
    """[N, 64] candidate words -> [N] bool: CRC holds and the generator id is known."""
    a, c = _crc_affine()
    crc = (words[:, :PAYLOAD_BITS].astype(np.int64) @ a.T.astype(np.int64) + c) % 2
    ok = (crc == words[:, PAYLOAD_BITS:]).all(axis=1)
    weights = 1 << np.arange(GENERATOR_BITS - 1, -1, -1)
    gen = words[:, :GENERATOR_BITS].astype(np.int64) @ weights
    return ok & np.isin(gen, list(GENERATORS))


def chase(soft: np.ndarray) -> tuple[Optional[np.ndarray], int]:
    """Most likely valid word near the hard decision of soft votes [64] (> 0: bit 0, < 0: bit 1): flip subsets of
    the ``CHASE_BITS`` least reliable bits, cheapest first. A word that is not a watermark passes with probability
    about 2**CHASE_BITS / 2**32 (2.4e-7). Returns (word or None, bits flipped)."""
    hard = (soft < 0).astype(np.uint8)
    weak = np.argsort(np.abs(soft), kind="stable")[:CHASE_BITS]
    patterns = ((np.arange(2 ** CHASE_BITS)[:, None] >> np.arange(CHASE_BITS)) & 1).astype(np.uint8)
    cost = patterns @ np.abs(soft[weak])
    patterns = patterns[np.argsort(cost, kind="stable")]
    words = np.repeat(hard[None], len(patterns), axis=0)
    words[:, weak] ^= patterns
    ok = np.nonzero(valid_words(words))[0]
    if not len(ok):
        return None, 0
    return words[ok[0]], int(patterns[ok[0]].sum())


def keyed_layout(key: bytes, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(code bit per slot [slots], dither per slot [slots] in [0, 1)) from a key: a keyed interleaver spreads every
    bit over the slots (``slots / 64`` times each), so neighbouring slots carry unrelated bits."""
    stream = hashlib.shake_256(key).digest(8 * slots)
    order = np.argsort(np.frombuffer(stream[:4 * slots], dtype="<u4"), kind="stable")
    bit = np.empty(slots, dtype=np.int64)
    bit[order] = np.arange(slots) % CODE_BITS
    return bit, np.frombuffer(stream[4 * slots:], dtype="<u4").astype(np.float64) / 2 ** 32


def bit_votes(values: np.ndarray, step: float, bit: np.ndarray, dither: np.ndarray) -> np.ndarray:
    """QIM soft votes: carriers ``values`` [F, slots] against the lattices ``step * (Z + dither + bit / 2)`` ->
    [F, 64] mean vote per code bit (+1 at a point of bit 0, -1 at a point of bit 1)."""
    vote = np.cos(2 * np.pi * (values / step - dither))
    counts = np.maximum(np.bincount(bit, minlength=CODE_BITS), 1)
    return np.stack([np.bincount(bit, weights=v, minlength=CODE_BITS) for v in vote]) / counts
