"""Run the benchmarks: `python -m benchmarks [--smoke] [NAME ...]` (`make bench`, `make bench NAME=x`,
`make bench-smoke`).

Starts the embedded stack (or uses the configured services), runs each case's framework measurement
and its floor (the same work by a plain script) in fresh processes, prints a table and writes
benchmarks/results/latest.json. With --smoke every case runs at a tiny scale, once per figure: a
check that each still runs end to end (CI), whose figures are printed but neither judged nor saved."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.harness import CASES, FULL, SMOKE, as_json

CASE_MODULES = ["benchmarks.io_manager", "benchmarks.ny_testing", "benchmarks.marketing", "benchmarks.ads", "benchmarks.omop"]


def main(argv: list[str]) -> int:
    for module in CASE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    smoke = "--smoke" in argv
    scale = SMOKE if smoke else FULL
    wanted = [a for a in argv if a != "--smoke"] or list(CASES)
    unknown = [n for n in wanted if n not in CASES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2

    from covid_lakehouse.lib.embedded import EmbeddedStack
    from covid_lakehouse.lib.http.hosts import ALLOWED_HOSTS, LOCAL_STAND_INS
    from covid_lakehouse.lib.settings import external_services_configured

    # The cases serve their sources from loopback stand-ins, as the tests do (lib/http/hosts.py).
    os.environ.setdefault(ALLOWED_HOSTS.name, LOCAL_STAND_INS)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        stack = None if external_services_configured() else EmbeddedStack(Path(tmp))
        if stack:
            os.environ.update(stack.start().as_env())
        try:
            for name in wanted:
                print(f"running {name} ...", flush=True)
                results += CASES[name](scale)
        finally:
            if stack:
                stack.stop()

    header = f"{'benchmark':<28}{'seconds':>9}{'floor':>9}{'ratio':>7}{'target':>8}{'peak MB':>9}{'base MB':>9}{'rows':>12}"
    print(header)
    print("-" * len(header))
    for r in results:
        target = f"{r.target_ratio:.1f}x" if r.target_ratio else "-"
        verdict = "" if r.ok is None or smoke else ("  ok" if r.ok else "  OVER")
        print(f"{r.name:<28}{r.seconds:>9.2f}{r.floor_seconds:>9.2f}{r.ratio:>6.2f}x{target:>8}"
              f"{r.peak_rss_mb:>9.0f}{r.baseline_rss_mb:>9.0f}{r.rows:>12,}{verdict}")
    if smoke:  # tiny inputs: the figures say nothing about the targets and must not replace real ones
        print("smoke run: every case ran end to end; figures at a tiny scale, not judged, not saved")
        return 0
    out = Path(__file__).parent / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    # `make bench NAME=x` replaces x's figures and keeps the others'
    previous = json.loads(out.read_text()) if out.exists() else []
    fresh = as_json(results)
    names = {r["name"] for r in fresh}
    out.write_text(json.dumps([r for r in previous if r["name"] not in names] + fresh, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
