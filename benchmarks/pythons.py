"""One table per Python version: the suite under each tox ``bench-py3X`` env.

    python -m benchmarks --pythons                 # 3.9 to 3.13, C and pure Python
    python -m benchmarks --pythons --repeat 11 --scenario 2

For each Python found (tox skips a missing interpreter), this runs the
selected scenarios (default 1, 2, 5, 6 and 10) twice in the env
``bench-py3X``, with the C extension and with ``LOADERCACHE_NO_EXTENSIONS=1``,
each run writing its JSON report to ``benchmarks/results/``; then it prints
a Markdown table per Python from those reports.  Each run interleaves its
contenders as ``python -m benchmarks`` always does, so every ratio comes from
one process.  ``python -m benchmarks.pythons --tables`` prints the tables of
the reports already there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
DEFAULT_SCENARIOS = ("1", "2", "5", "6", "10")
MODES = {"C extension": {}, "pure Python": {"LOADERCACHE_NO_EXTENSIONS": "1"}}

__all__ = ["main", "tables"]


def _report(version: str, mode: str) -> Path:
    return RESULTS / f"py{version.replace('.', '')}-{mode.split()[0].lower()}.json"


def run(args: Sequence[str]) -> None:
    """Run the suite in every bench env, both modes, writing the reports."""
    RESULTS.mkdir(exist_ok=True)
    if not any(arg == "--scenario" for arg in args):
        args = [*args, *(f"--scenario={key}" for key in DEFAULT_SCENARIOS)]
    for version in VERSIONS:
        env_name = f"bench-py{version.replace('.', '')}"
        for mode, extra in MODES.items():
            report = _report(version, mode)
            report.unlink(missing_ok=True)
            print(f"== {env_name}, {mode}", flush=True)
            subprocess.run(
                ["tox", "-q", "-e", env_name, "--", "--json", str(report), *args],
                cwd=ROOT,
                env={**os.environ, **extra},
                check=False,
            )


def _row(scenario: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    return scenario["ratios"]


def tables() -> str:
    """A Markdown table per Python version, from the reports in results/."""
    out: List[str] = []
    for version in VERSIONS:
        reports = {}
        for mode in MODES:
            path = _report(version, mode)
            if path.exists():
                reports[mode] = json.loads(path.read_text())
        if not reports:
            continue
        meta = next(iter(reports.values()))["meta"]
        out.append(f"### {meta['python']}\n")
        out.append(
            f"{meta['date']}, {meta['rounds']} rounds, {meta['loop']}; "
            f"loadercache {meta['versions']['loadercache']}\n"
        )
        out.append(
            "| scenario | mode | x floor | x aiodataloader | x strawberry | "
            "target | met? |"
        )
        out.append("| --- | --- | --- | --- | --- | --- | --- |")
        keys = sorted(
            {key for report in reports.values() for key in report["scenarios"]},
            key=lambda key: (int(key.rstrip("ab")), key),
        )
        for key in keys:
            for mode, report in reports.items():
                scenario = report["scenarios"].get(key)
                if scenario is not None:
                    out.append(_line(key, mode, scenario))
        out.append("")
    return "\n".join(out)


def _line(key: str, mode: str, scenario: Dict[str, Any]) -> str:
    subject = next(iter(scenario["ratios"]))
    ratios = scenario["ratios"][subject]
    baseline = scenario["baseline"]

    def shown(name: str) -> str:
        return f"{ratios[name]:.2f}" if name in ratios else ""

    if key == "6b":
        target, met = "0.95 x load() each", ratios[baseline] >= 0.95
        return (
            f"| 6b load_many / load() each | {mode} | {shown(baseline)} "
            f"(x load() each) | | | {target} | {'yes' if met else 'no'} |"
        )
    aio = ratios.get("aiodataloader", 0.0)
    straw = ratios.get("strawberry", 0.0)
    floor = ratios.get(baseline, 0.0)
    if mode == "pure Python" or key.startswith("10"):
        target, met = ">= aiodataloader", aio >= 0.98
    else:
        target, met = "0.9 x floor, >= peers", floor >= 0.9 and min(aio, straw) >= 0.98
    title = f"{key} {scenario['title']}"
    return (
        f"| {title} | {mode} | {shown(baseline)} | {shown('aiodataloader')} | "
        f"{shown('strawberry')} | {target} | {'yes' if met else 'no'} |"
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["--tables"]:
        run(args)
    print(tables())
    return 0


if __name__ == "__main__":
    sys.exit(main())
