"""The timing helper the benchmark scripts share (run as ``python benchmarks/NAME.py``, this folder is
on the import path)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def wall_times(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (the first call pays for
    lazy imports, allocations, kernel selection)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call."""
    return statistics.median(wall_times(fn, repeats))


def cpu_timed(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median CPU seconds of this process over ``repeats`` calls of ``fn`` after a warm-up call. For
    one-thread work this is its wall time on a free core, whatever else shares the machine."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)
