"""Packing samples into sequences of at most ``seq_length`` tokens, never splitting a sample.

Best-fit decreasing over windows: the (already shuffled) samples are cut into windows of
``window`` samples; within a window the samples are placed longest first, each into the open
sequence with the least room that still fits it (a new one when none does). Windows keep packing
local (memory and the mix of each region of the dataset) while giving near-optimal fill.
"""

from __future__ import annotations

import bisect

import numpy as np


def pack(lengths: np.ndarray, seq_length: int, window: int = 20000) -> list[list[int]]:
    """Positions into ``lengths`` grouped into packs; each pack's total is <= ``seq_length``.

    Every length must be <= ``seq_length`` (drop longer samples before packing).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and lengths.max() > seq_length:
        raise ValueError(f"a sample of {lengths.max()} tokens exceeds seq_length {seq_length}")
    packs: list[list[int]] = []
    window = max(1, window)
    for start in range(0, len(lengths), window):
        idx = np.arange(start, min(start + window, len(lengths)))
        order = idx[np.argsort(-lengths[idx], kind="stable")]
        room: list[tuple[int, int]] = []  # sorted (free tokens, pack number) of this window's packs
        for i in order:
            need = int(lengths[i])
            k = bisect.bisect_left(room, (need, -1))
            if k < len(room):
                free, p = room.pop(k)
            else:
                free, p = seq_length, len(packs)
                packs.append([])
            packs[p].append(int(i))
            bisect.insort(room, (free - need, p))
    return packs


def fill_ratio(lengths: np.ndarray, packs: list[list[int]], seq_length: int) -> float:
    """Tokens in packs / (packs x seq_length)."""
    if not packs:
        return 0.0
    return float(np.asarray(lengths, dtype=np.int64).sum() / (len(packs) * seq_length))


def fill_upper_bound(lengths: np.ndarray, seq_length: int) -> float:
    """The best fill any packing can reach: every sample longer than half a sequence needs its own
    sequence, and no sequence holds more than ``seq_length`` (the L1 bound of bin packing)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return 0.0
    min_packs = max(int(np.ceil(lengths.sum() / seq_length)), int((2 * lengths > seq_length).sum()))
    return float(lengths.sum() / (min_packs * seq_length))
