"""The lab held the scenario's load profile (numbers from the last `labkit load`)."""

from __future__ import annotations

import pytest

from labkit.load import parse_load_stats


@pytest.mark.check("load-held")
def test_lab_held_the_load(lab):
    stats_csv = lab.reports / "load_stats.csv"
    assert stats_csv.is_file(), (
        f"no load results at {stats_csv}: run `labkit load` for this cohort (or locust --csv) before grading"
    )
    load = lab.scenario.load
    stats = parse_load_stats(stats_csv)
    requests, failures = stats["requests"], stats["failures"]
    min_requests, max_ratio = int(load["min_requests"]), float(load["max_failure_ratio"])
    assert requests >= min_requests, (
        f"only {requests} requests completed or failed; the profile needs >= {min_requests}"
    )
    ratio = failures / requests
    assert ratio < max_ratio, (
        f"{failures} of {requests} requests failed ({ratio:.1%}); allowed under {max_ratio:.0%} "
        f"(median {stats['median_ms']:.0f} ms)"
    )
