"""Timing helpers: warm-up, then repeated calls until a minimum time and count; percentiles in ms."""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Timing:
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return float(np.percentile(self.samples_ms, 50))

    @property
    def p95(self) -> float:
        return float(np.percentile(self.samples_ms, 95))

    @property
    def fps(self) -> float:
        """Calls per second over the timed calls (mean), the figure throughput users care about."""
        return 1000.0 / float(np.mean(self.samples_ms))


def measure(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    min_time_s: float = 2.0,
    min_calls: int = 10,
    max_calls: int = 1000,
) -> Timing:
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_calls and (len(samples) < min_calls or time.perf_counter() - start < min_time_s):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return Timing(samples)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS).

    Process-wide and never decreasing: the bench runs each backend in its own process so that this is the peak
    of that backend alone (interpreter, numpy and the backend's libraries included; see rss_now_mb)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def rss_now_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the peak so far, the closest portable figure)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
