"""The one percentile definition of the project, used by /api/stats, loadtest and the bench scripts."""

from __future__ import annotations

import math
from typing import Iterable


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` in 0..100) by linear interpolation between the closest ranks
    (numpy's default, ``statistics.quantiles(..., method="inclusive")``); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, got {q}")
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
