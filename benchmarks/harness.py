"""Measurement plumbing: every measured piece of work runs in a fresh Python process, which reports
its own wall time and peak RSS, so the framework's and the floor's memory are comparable and one
case never inflates another's figures. A case takes a Scale: its full size, or the smoke run's tiny
one (`make bench-smoke`), which goes through the same code with fewer rows and one run per figure."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Scale:
    smoke: bool = False

    def size(self, full, smoke):
        """``full`` for a benchmark run, ``smoke`` for the smoke run."""
        return smoke if self.smoke else full

    def repeat(self, full: int) -> int:
        return 1 if self.smoke else full


FULL = Scale()
SMOKE = Scale(smoke=True)

CASES: dict[str, Callable[[Scale], list[Result]]] = {}


@dataclass
class Result:
    name: str
    seconds: float
    floor_seconds: float
    ratio: float
    target_ratio: float | None
    peak_rss_mb: float
    baseline_rss_mb: float
    rows: int
    max_peak_rss_mb: float | None = None  # a memory target, when the case has one

    @property
    def ok(self) -> bool | None:
        if self.target_ratio is None:
            return None
        return self.ratio <= self.target_ratio and (self.max_peak_rss_mb is None
                                                    or self.peak_rss_mb <= self.max_peak_rss_mb)


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    rows: int


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


def measure(module: str, role: str, repeat: int = 3, **params) -> Measurement:
    """Best of ``repeat`` fresh-process runs of ``module.measure_<role>(**params)`` (which returns
    (seconds, rows)); best-of because noise on a shared machine only ever adds time."""
    return best_of([_measure_once(module, role, params) for _ in range(repeat)])


def alternate_runs(module: str, floor_role: str, role: str, repeat: int = 3, **params
                   ) -> tuple[list[Measurement], list[Measurement]]:
    """``repeat`` fresh-process runs of the floor and of the framework, taken in turn (floor, framework,
    floor, ...), so that a slow spell of the shared machine weighs on both alike: measured one after the
    other, the io_manager figure moved between 1.05x and 1.69x across full runs with no code change."""
    floors, runs = [], []
    for _ in range(repeat):
        floors.append(_measure_once(module, floor_role, params))
        runs.append(_measure_once(module, role, params))
    return floors, runs


def alternately(module: str, floor_role: str, role: str, repeat: int = 3, **params) -> tuple[Measurement, Measurement]:
    """Best of ``alternate_runs``: (floor, framework)."""
    floors, runs = alternate_runs(module, floor_role, role, repeat, **params)
    return best_of(floors), best_of(runs)


def best_of(runs: list[Measurement]) -> Measurement:
    """The fastest run, with the highest peak RSS of them all (memory is not noise)."""
    best = min(runs, key=lambda m: m.seconds)
    return Measurement(best.seconds, max(m.peak_rss_mb for m in runs), best.rows)


def _measure_once(module: str, role: str, params: dict) -> Measurement:
    payload = json.dumps({"module": module, "role": role, "params": params})
    out = subprocess.run([sys.executable, "-m", "benchmarks.harness", payload], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark {module}.{role} failed:\n{out.stderr[-4000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Measurement(data["seconds"], data["peak_rss_mb"], data["rows"])


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    rows = fn()
    return time.perf_counter() - start, rows


def result(name: str, measured: Measurement, floor: Measurement, baseline: Measurement,
           target_ratio: float | None, max_peak_rss_mb: float | None = None) -> Result:
    return Result(name=name, seconds=round(measured.seconds, 3), floor_seconds=round(floor.seconds, 3),
                  ratio=round(measured.seconds / floor.seconds, 2), target_ratio=target_ratio,
                  peak_rss_mb=round(measured.peak_rss_mb, 1), baseline_rss_mb=round(baseline.peak_rss_mb, 1),
                  rows=measured.rows,
                  max_peak_rss_mb=None if max_peak_rss_mb is None else round(max_peak_rss_mb, 1))


def as_json(results: list[Result]) -> list[dict]:
    return [asdict(r) for r in results]


def _child(payload: str) -> None:
    import importlib

    spec = json.loads(payload)
    module = importlib.import_module(spec["module"])
    seconds, rows = getattr(module, f"measure_{spec['role']}")(**spec["params"])
    print(json.dumps({"seconds": seconds, "rows": rows, "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> float:
    """This process's own peak RSS. On Linux VmHWM, not ru_maxrss: ru_maxrss keeps the peak of the
    memory the process had before exec, i.e. the runner's RSS when it spawned this child, so every child
    started after the runner grew (ny_testing loads the snapshot in it) reported at least that much."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
        return peak / 1024 / 1024 if sys.platform == "darwin" else peak / 1024


if __name__ == "__main__":
    _child(sys.argv[1])
