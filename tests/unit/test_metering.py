from __future__ import annotations

from semsearch.core import metering
from semsearch.core.metering import (
    ProviderMeter,
    histogram_percentiles,
    latency_histogram,
    percentiles,
)


def test_deltas_and_bounded_history(monkeypatch: object) -> None:
    monkeypatch.setattr(metering, "_KEEP_LATENCIES", 10)  # type: ignore[attr-defined]
    meter = ProviderMeter()
    for i in range(15):
        meter.record_call(2, 5, i / 1000)
    before = meter.snapshot()
    for _ in range(30):  # crosses the trim threshold
        meter.record_call(1, 3, 0.5)
    delta = meter.snapshot().minus(before)
    assert (delta.calls, delta.items, delta.tokens, delta.latency_count) == (30, 30, 90, 30)
    recent = meter.latencies_since(before)
    assert recent and all(x == 500.0 for x in recent) and len(recent) <= 30
    assert len(meter._latencies) <= 20  # never grows past twice what it keeps


def test_percentiles_and_histogram_agree_roughly() -> None:
    lat = [float(x) for x in range(1, 101)]
    exact = percentiles(lat)
    approx = histogram_percentiles(latency_histogram(lat))
    assert exact["p50"] == 50.5
    for p in ("p50", "p95", "p99"):
        assert exact[p] <= approx[p] <= exact[p] * 1.1  # bucket upper edge, within ~9 %
    assert percentiles([]) == {"p50": 0.0, "p95": 0.0, "p99": 0.0}
