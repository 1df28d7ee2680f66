"""Progress arithmetic: rate over a sliding window, time left, percentage. Pure: the clock is passed in."""

from __future__ import annotations

from collections import deque


class RateMeter:
    """Bytes per second over the last ``window`` seconds of (time, bytes done) samples.

    Args:
        window: Seconds of history the rate is computed over.
    """

    def __init__(self, window: float = 5.0):
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> None:
        """Records that ``done`` bytes were done at time ``now`` (monotonic seconds)."""
        if self._samples and done < self._samples[-1][1]:
            # The position went back (a resume from an earlier checkpoint): the old history
            # would make the rate negative.
            self._samples.clear()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes per second, or None until two samples at least 0.2 s apart exist."""
        if len(self._samples) < 2:
            return None
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        if t1 - t0 < 0.2:
            return None
        return (d1 - d0) / (t1 - t0)


def eta(done: int, total: int | None, rate: float | None) -> float | None:
    """Seconds left at ``rate``, or None when the total or a positive rate is unknown."""
    if total is None or rate is None or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)


def percent(done: int, total: int | None) -> float | None:
    """0-100, or None when the total is unknown. An empty file is 100 % once done."""
    if total is None:
        return None
    if total <= 0:
        return 100.0 if done >= total else 0.0
    return round(min(100.0, 100.0 * done / total), 2)


def human_size(size: int | float) -> str:
    """``314572800`` -> ``300.0 MiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
