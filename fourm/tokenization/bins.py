"""Numbers <-> value tokens, and the grammar of value and code token words.

4M-21 (arXiv 2406.09406, appendix on tokenization) writes numbers as value tokens of the shared
vocabulary: four families ``v0=k .. v3=k`` of :data:`NUM_BINS` levels each, so a box
``[x0, y0, x1, y1]`` is one token of each family (:func:`box_tokens`). Code tokens ``mask=k``,
``pose=k`` and ``color=k`` follow the same ``name=k`` form, so :func:`parse_token` reads them all.
"""

from __future__ import annotations

import re

NUM_BINS = 1000  # levels of each value token family v0..v3


def to_bin(x: float, lo: float = 0.0, hi: float = 1.0, bins: int = NUM_BINS) -> int:
    """``x`` clipped to [lo, hi] -> one of ``bins`` levels; both ends are exact."""
    x = min(max(float(x), lo), hi)
    return int(round((x - lo) / (hi - lo) * (bins - 1)))


def from_bin(k: int, lo: float = 0.0, hi: float = 1.0, bins: int = NUM_BINS) -> float:
    return lo + min(max(int(k), 0), bins - 1) * (hi - lo) / (bins - 1)


_TOKEN = re.compile(r"^(v[0-3]|mask|pose|color)=(\d+)$")


def parse_token(word: str) -> tuple[str, int] | None:
    """``"v2=17"`` -> ``("v2", 17)``; words that are no value or code token -> None."""
    m = _TOKEN.match(word)
    return (m.group(1), int(m.group(2))) if m else None


def box_tokens(box, bins: int = NUM_BINS) -> list[str]:
    return [f"v{i}={to_bin(x, bins=bins)}" for i, x in enumerate(box)]


def parse_box(words: list[str], bins: int = NUM_BINS) -> list[float] | None:
    """The four words ``v0=.. v1=.. v2=.. v3=..`` (each below ``bins``) -> a box ``[x0, y0, x1, y1]`` in
    [0, 1], or None.

    A generated box may name its corners in either order: they are sorted, so every consumer
    (drawing, IoU, mask crops) gets ``x0 <= x1`` and ``y0 <= y1``."""
    if len(words) < 4:
        return None
    parsed = [parse_token(w) for w in words[:4]]
    if any(p is None or p[0] != f"v{i}" or p[1] >= bins for i, p in enumerate(parsed)):
        return None
    x0, y0, x1, y1 = (round(from_bin(p[1], bins=bins), 6) for p in parsed)
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
