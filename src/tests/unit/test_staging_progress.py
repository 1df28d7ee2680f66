"""Rate, time left and percentage of a transfer (pure; the clock is passed in)."""

from __future__ import annotations

from hpc.staging.progress import RateMeter, eta, human_size, percent


def test_rate_needs_two_samples_some_time_apart():
    meter = RateMeter(window=5)
    assert meter.rate() is None
    meter.add(10.0, 0)
    assert meter.rate() is None
    meter.add(10.1, 1000)
    assert meter.rate() is None
    meter.add(11.0, 100_000)
    assert meter.rate() == 100_000.0


def test_rate_covers_only_the_window():
    meter = RateMeter(window=5)
    for second in range(0, 21):
        # 1 MB/s for ten seconds, then 3 MB/s
        done = second * 1_000_000 if second <= 10 else 10_000_000 + (second - 10) * 3_000_000
        meter.add(float(second), done)
    assert meter.rate() == 3_000_000.0


def test_rate_restarts_when_the_position_goes_back():
    meter = RateMeter()
    meter.add(0.0, 0)
    meter.add(1.0, 5_000_000)
    meter.add(2.0, 1_000_000)  # resumed from an earlier checkpoint
    assert meter.rate() is None
    meter.add(3.0, 3_000_000)
    assert meter.rate() == 2_000_000.0


def test_eta_and_percent():
    assert eta(25, 100, 5.0) == 15.0
    assert eta(100, 100, 5.0) == 0.0
    assert eta(0, None, 5.0) is None
    assert eta(0, 100, None) is None
    assert eta(0, 100, 0.0) is None
    assert percent(50, 200) == 25.0
    assert percent(1, 3) == 33.33
    assert percent(0, None) is None
    assert percent(0, 0) == 100.0
    assert percent(300, 200) == 100.0


def test_human_size():
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(10 * 1024 * 1024) == "10.0 MiB"
    assert human_size(300 * 1024**3) == "300.0 GiB"
