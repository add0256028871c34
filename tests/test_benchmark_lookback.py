"""benchmarks/lookback.py runs and reports its two ratios (their values are not asserted: no timing in tests)."""

from __future__ import annotations

from benchmarks.lookback import describe, measure


def test_the_lookback_benchmark_reports_both_ratios():
    result = measure(rows_per_day=300, days=4, lookback_days=2, workers=2)
    assert sum(run["first"]["sent"] for run in result["runs"]) == 4 * 300  # every row once, day by day
    steady = result["runs"][2:]
    assert all(run["lookback"]["already_sent"] == run["reread"]["already_sent"] > 0 for run in steady)
    assert all(run["reread"]["sent"] == 0 for run in steady)
    assert result["lookback_vs_first"] > 0 and result["reread_day_vs_first_day"] > 0
    assert "re-reading one sent day" in describe(result)
