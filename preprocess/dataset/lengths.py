"""Sample-length distributions: the target histogram (``--length-dist``) and the achieved one.

A length distribution is a histogram of *example* counts (the paper reports "% of examples with at
least 100K tokens") over token-length bins ``[edges[i], edges[i+1])``:

- ``pool-native``: the natural distribution of the candidate samples (no length reweighting);
- ``long-biased``: 83.9% of examples >= 100K tokens (the paper's long-biased variant, Table 11);
- ``FILE``: a JSON file ``{"edges": [0, 32768, ...], "fractions": [...]}`` (one fraction per bin).

The built-in bins are the paper's at its 128K sequence length; a dataset of another ``--seq-length``
uses them scaled by ``seq_length / 131072`` (:func:`scaled_edges`), so "long-biased" means the same
share of near-maximum-length examples at any scale (the 8K-token demo's long bin starts at 6.1K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_vlm.utils.jsonl import read_json
from preprocess.dataset.errors import BuildError

K = 1024
# Report bins (also the bins of the built-in targets); the last bin is open-ended.
DEFAULT_EDGES = (0, 8 * K, 16 * K, 32 * K, 64 * K, 100_000, 1 << 62)
LONG_BIASED_FRACTIONS = (0.0, 0.01, 0.03, 0.05, 0.071, 0.839)
LONG_THRESHOLD = 100_000
PAPER_SEQ_LEN = 128 * K


def scaled_edges(seq_length: int = PAPER_SEQ_LEN) -> tuple[int, ...]:
    """:data:`DEFAULT_EDGES` scaled from the paper's 128K to ``seq_length`` (the last edge stays open)."""
    scale = seq_length / PAPER_SEQ_LEN
    return tuple(round(e * scale) for e in DEFAULT_EDGES[:-1]) + (DEFAULT_EDGES[-1],)


def long_threshold(seq_length: int = PAPER_SEQ_LEN) -> int:
    """The paper's "long" example (>= 100K of 128K tokens), scaled to ``seq_length``."""
    return scaled_edges(seq_length)[-2]


@dataclass(frozen=True)
class LengthTarget:
    """A target histogram; ``fractions is None`` means pool-native (the candidates' own)."""

    name: str
    edges: tuple[int, ...]
    fractions: tuple[float, ...] | None

    def bin_of(self, lengths: np.ndarray) -> np.ndarray:
        """Bin index of each length (-1 outside the edges)."""
        idx = np.searchsorted(np.asarray(self.edges), lengths, side="right") - 1
        idx[(idx < 0) | (idx >= len(self.edges) - 1)] = -1
        return idx


def load_length_target(spec: str, seq_length: int = PAPER_SEQ_LEN) -> LengthTarget:
    """``pool-native``, ``long-biased`` (bins scaled to ``seq_length``) or the path of a JSON histogram file."""
    if spec == "pool-native":
        return LengthTarget(spec, scaled_edges(seq_length), None)
    if spec == "long-biased":
        return LengthTarget(spec, scaled_edges(seq_length), LONG_BIASED_FRACTIONS)
    path = Path(spec)
    if not path.is_file():
        raise BuildError(f"--length-dist {spec}: not 'pool-native', 'long-biased' or an existing JSON file")
    obj = read_json(path, BuildError)
    try:
        edges = [int(e) for e in obj["edges"]]
        fractions = [float(f) for f in obj["fractions"]]
        if not all(math.isfinite(f) for f in fractions):
            raise ValueError("a fraction is not finite")
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise BuildError(f"{path}: a length histogram is a JSON object with 'edges' (ints) and "
                         f"'fractions' (one number per bin) ({err})") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise BuildError(f"{path}: 'edges' must be at least two strictly increasing token counts")
    if len(fractions) != len(edges) - 1:
        raise BuildError(f"{path}: {len(edges) - 1} bins but {len(fractions)} fractions")
    total = sum(fractions)
    if any(f < 0 for f in fractions) or total <= 0:
        raise BuildError(f"{path}: 'fractions' must be non-negative and not all zero")
    return LengthTarget(str(path), tuple(edges), tuple(f / total for f in fractions))


def histogram(lengths: np.ndarray, edges: tuple[int, ...]) -> np.ndarray:
    """Example counts per bin (lengths outside the edges are not counted)."""
    return np.histogram(np.asarray(lengths), bins=np.asarray(edges, dtype=np.float64))[0]


def bin_label(lo: int, hi: int) -> str:
    def fmt(v: int) -> str:
        return str(v) if v < 1000 else f"{v // K}K" if v % K == 0 else f"{v / 1000:g}k"
    return f">= {fmt(lo)}" if hi >= 1 << 62 else f"{fmt(lo)}-{fmt(hi)}"


def length_report(target: LengthTarget, candidate_lengths: np.ndarray, selected_lengths: np.ndarray,
                  seq_length: int = PAPER_SEQ_LEN) -> dict:
    """Target vs achieved example shares per bin, and the share of long examples (>= 100K tokens at
    128K, scaled to ``seq_length``)."""
    edges = target.edges
    cand = histogram(candidate_lengths, edges)
    got = histogram(selected_lengths, edges)
    want = (np.asarray(target.fractions) if target.fractions is not None
            else cand / max(cand.sum(), 1))
    n = max(got.sum(), 1)
    bins = [{"bin": bin_label(lo, hi), "lo": lo, "hi": hi, "target": float(w), "achieved": float(g / n),
             "examples": int(g), "candidates": int(c)}
            for lo, hi, w, g, c in zip(edges, edges[1:], want, got, cand)]
    selected = np.asarray(selected_lengths)
    return {
        "name": target.name,
        "bins": bins,
        "max_abs_error": float(max(abs(b["target"] - b["achieved"]) for b in bins)),
        "long_threshold": long_threshold(seq_length),
        "achieved_long_share": float((selected >= long_threshold(seq_length)).mean()) if len(selected) else 0.0,
    }
