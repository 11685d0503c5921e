"""One percentile definition: /api/stats, loadtest and the bench scripts agree on p95."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest

from smallfirst.service.tools.loadtest.summary import distribution
from smallfirst.service.percentiles import percentile
from smallfirst.service.core.stats import Stats

VALUES = [float(v) for v in range(1, 21)]  # p95 is 19.05: nearest-rank definitions say 19 or 20


def test_linear_interpolation_between_ranks() -> None:
    assert percentile(VALUES, 95) == pytest.approx(19.05)
    assert percentile(VALUES, 50) == statistics.median(VALUES)
    assert percentile(VALUES, 0) == 1 and percentile(VALUES, 100) == 20
    assert percentile([], 50) is None and percentile([7.0], 99) == 7
    assert percentile(reversed(VALUES), 95) == pytest.approx(19.05)  # any order, any iterable
    for q in (5, 25, 50, 75, 95, 99):
        assert percentile(VALUES, q) == pytest.approx(statistics.quantiles(VALUES, n=100, method="inclusive")[q - 1])
    with pytest.raises(ValueError):
        percentile(VALUES, 101)


def test_stats_loadtest_and_bench_agree_on_p95() -> None:
    stats = Stats()
    for v in VALUES:
        stats.record({"tier": "small", "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "cost_usd": 0.0,
                      "finish": "stop", "timings_ms": {"first_token": v, "total": v}})
    served = stats.as_dict()["tiers"]["small"]["first_token_ms"]
    assert served["p95"] == round(19.05, 1) and served["p50"] == 10.5
    assert distribution(VALUES)["p95"] == pytest.approx(19.05)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    try:
        from first_token import pct
    finally:
        sys.path.pop(0)
    assert pct(VALUES, 0.95) == pytest.approx(19.05)
