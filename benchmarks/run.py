"""Run the benchmark suite and print ratios; see benchmarks/README.md.

    python -m benchmarks                  # everything, 7 rounds
    python -m benchmarks --quick          # a few seconds; what CI runs
    python -m benchmarks --scenario 1 --scenario 3 --repeat 11 --uvloop

Each scenario runs a warm-up round, then ``--repeat`` rounds in which every
entry runs once, in the same order (A B C A B C ...), each on a fresh event
loop after a ``gc.collect()``.  The table shows the median and the min-max of
those rounds.  Ratios divide the entries' fastest rounds: other processes on
a shared machine only ever add time, so the fastest round is the one closest
to the code's own cost (timeit's reasoning), and interleaving gives every
entry the same chances of a quiet round.  The exit status is 1 if a
structural check failed (see :func:`structural_checks`); timings never fail
a run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):
    # Run as a script (python benchmarks/run.py): make the package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import loadercache
from benchmarks import cluster_reads, fleet, near_latency, redis_tier, web
from benchmarks.scenarios import FULL, QUICK, Sample, Scenario, Sizes, scenarios

__all__ = ["Result", "main", "run_suite", "structural_checks"]

#: Bytes in all below which two memory figures count as equal (scenario 7):
#: tracemalloc also counts the event loop's own structures, whose growth
#: (its ready deque takes 640-byte blocks) depends on how a loader schedules.
MEMORY_TOLERANCE = 1024
#: Throughput ratios this close below 1 are ties, not losses: the rounds of
#: one entry vary by more than that on any machine.
TIE = 0.02
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


# -- running ---------------------------------------------------------------------


def run_in_loop(
    loop_factory: LoopFactory, work: Callable[[], Any], *, collect: bool = True
) -> Any:
    """Run ``work()`` on a fresh loop, then close the loop as asyncio.run does."""
    if collect:
        gc.collect()
    loop = loop_factory()
    try:
        return loop.run_until_complete(work())
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(
                    asyncio.gather(*pending, return_exceptions=True)
                )
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@dataclass
class EntryResult:
    """Every sample of one entry, and the statistics the table prints."""

    name: str
    subject: bool
    samples: List[Sample] = field(default_factory=list)

    @property
    def per_op(self) -> List[float]:
        return [s.seconds / s.ops for s in self.samples]

    @property
    def best_per_op(self) -> float:
        return min(self.per_op)

    @property
    def throughput(self) -> float:
        """Loads per second in the fastest round."""
        return 1.0 / self.best_per_op

    def extra(self, name: str) -> Optional[float]:
        values = [s.extra[name] for s in self.samples if name in s.extra]
        return statistics.median(values) if values else None

    @property
    def batches(self) -> List[int]:
        return [b for s in self.samples for b in s.batches]


@dataclass
class Result:
    """One scenario's entries, ratios, and the checks and targets they met."""

    scenario: Scenario
    entries: Dict[str, EntryResult] = field(default_factory=dict)
    rounds: int = 0

    def ratio(self, subject: str, other: str) -> float:
        """Subject's best throughput over other's (for memory: other's bytes
        over subject's), so above 1 is always better for the subject."""
        if self.scenario.memory:
            mine = self.entries[subject].extra("bytes/key") or 0.0
            theirs = self.entries[other].extra("bytes/key") or 0.0
            return theirs / mine if mine else float("inf")
        return self.entries[other].best_per_op / self.entries[subject].best_per_op

    def peers(self, subject: str) -> Tuple[str, ...]:
        if self.scenario.peers_of is not None:
            return self.scenario.peers_of.get(subject, ())
        return tuple(
            name
            for name, entry in self.entries.items()
            if not entry.subject and name != self.scenario.baseline
        )


def measure(scenario: Scenario, rounds: int, loop_factory: LoopFactory) -> Result:
    """A warm-up round, then ``rounds`` interleaved rounds of every entry."""
    result = Result(scenario, rounds=rounds)
    for entry in scenario.entries:
        result.entries[entry.name] = EntryResult(entry.name, entry.subject)
    if scenario.setup is not None:
        run_in_loop(loop_factory, scenario.setup)
    try:
        for entry in scenario.entries:
            run_in_loop(loop_factory, entry.run)
        for _ in range(rounds):
            for entry in scenario.entries:
                sample = run_in_loop(loop_factory, entry.run)
                result.entries[entry.name].samples.append(sample)
    finally:
        if scenario.teardown is not None:
            run_in_loop(loop_factory, scenario.teardown)
    return result


# -- checking --------------------------------------------------------------------


@dataclass
class Check:
    """A pass/fail line: a structural check (fails CI) or a target (reported)."""

    scenario: str
    what: str
    ok: bool
    detail: str


def structural_checks(results: Sequence[Result]) -> List[Check]:
    """What CI fails on: never timing noise, only broken structure.

    * scenario 3: every request of loadercache (and of the floor, or the
      comparison means nothing) made exactly 3 batch calls;
    * every ``exact`` count a scenario declares (Redis: one read round trip per
      batch) holds for loadercache;
    * loadercache keeps at least half of its floor target (0.45 of the floor
      where the target is 0.9; a third, 0.30, as pure Python): a loss that
      large is a regression, not noise.
    """
    checks: List[Check] = []
    for result in results:
        s = result.scenario
        if s.tree and s.key == "3":
            for name, entry in result.entries.items():
                if entry.subject or name == s.baseline:
                    counts = sorted(set(entry.batches))
                    checks.append(
                        Check(
                            s.key,
                            f"{name}: batch calls per request == 3",
                            counts == [3],
                            f"seen {counts}",
                        )
                    )
        for name, entry in result.entries.items():
            if not entry.subject:
                continue
            for extra, expected in s.exact_of.get(name, s.exact).items():
                seen = sorted({smp.extra[extra] for smp in entry.samples})
                checks.append(
                    Check(
                        s.key,
                        f"{name}: {extra} == {expected:g}",
                        seen == [expected],
                        f"seen {[f'{v:g}' for v in seen]}",
                    )
                )
            if s.floor_target is not None and s.guard_ratio:
                ratio = result.ratio(name, s.baseline)
                # The targets are for the C extension; the pure Python runs
                # at 0.55 to 0.75 of the floor, so its guard is a third.
                floor = s.floor_target / (2 if loadercache.SPEEDUPS else 3)
                checks.append(
                    Check(
                        s.key,
                        f"{name}: throughput >= {floor:.2f} x {s.baseline}",
                        ratio >= floor,
                        f"{ratio:.2f}",
                    )
                )
    return checks


def target_checks(results: Sequence[Result]) -> List[Check]:
    """Issue 4's targets, as measured in this run (reported, never failing)."""
    checks: List[Check] = []
    for result in results:
        s = result.scenario
        for name, entry in result.entries.items():
            if not entry.subject:
                continue
            if s.floor_target is not None:
                ratio = result.ratio(name, s.baseline)
                checks.append(
                    Check(
                        s.key,
                        f"{name} >= {s.floor_target} x {s.baseline}",
                        ratio >= s.floor_target,
                        f"{ratio:.2f}",
                    )
                )
            for extra, limit in s.at_most.items():
                value = entry.extra(extra)
                checks.append(
                    Check(
                        s.key,
                        f"{name}: {extra} <= {limit:g}",
                        value is not None and value <= limit,
                        f"median {value:g}, max "
                        f"{max(smp.extra[extra] for smp in entry.samples):g}"
                        if value is not None
                        else "not measured",
                    )
                )
            for peer in result.peers(name):
                if s.memory:
                    mine = entry.extra("bytes/key") or 0.0
                    theirs = result.entries[peer].extra("bytes/key") or 0.0
                    keys = entry.samples[0].ops
                    checks.append(
                        Check(
                            s.key,
                            f"{name} bytes/key <= {peer}",
                            mine <= theirs + MEMORY_TOLERANCE / keys,
                            f"{mine:.2f} vs {theirs:.2f}",
                        )
                    )
                    continue
                ratio = result.ratio(name, peer)
                tie = 1.0 - TIE <= ratio < 1.0
                checks.append(
                    Check(
                        s.key,
                        f"{name} not slower than {peer}",
                        ratio >= 1.0 - TIE,
                        f"{ratio:.3f}" + (f" (a tie: within {TIE:.0%})" if tie else ""),
                    )
                )
            if s.tree:
                counts = sorted(set(entry.batches))
                checks.append(
                    Check(
                        s.key, f"{name}: 3 batches/request", counts == [3], f"{counts}"
                    )
                )
    return checks


# -- printing --------------------------------------------------------------------


def _machine() -> Dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "nproc": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
    }


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"loadercache": _source()}
    for dist in ("aiodataloader", "strawberry-graphql", "graphql-core"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "?"
    return found


def _source() -> str:
    """The loadercache measured: its git commit, and whether it was edited."""
    import subprocess

    import loadercache

    package = Path(loadercache.__file__).resolve().parent
    # Which implementation of load() is measured: the results differ by ~2x.
    build = "C extension" if loadercache.SPEEDUPS else "pure Python"
    label = f"{loadercache.__version__} ({build}) from {package.parent}"
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        edited = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return label
    return f"{label} at {commit}" + (" with uncommitted changes" if edited else "")


def print_result(result: Result) -> None:
    s = result.scenario
    print(f"\n[{s.key}] {s.title}")
    rounds = f"{result.rounds} round{'s' if result.rounds != 1 else ''}"
    print(f"    measures: {s.measures}; {rounds} after a warm-up")
    names = list(result.entries)
    width = max(len(name) for name in names) + 2
    base = s.baseline if s.baseline in result.entries else None
    extras = sorted(
        {k for e in result.entries.values() for smp in e.samples for k in smp.extra}
        - {"bytes/key"}
    )
    if s.memory:
        header = f"    {'':{width}}{'bytes/key':>10}"
        if base:
            header += f"{'x ' + base:>12}"
        header += "".join(f"{name:>12}" for name in extras)
        print(header)
        for name, entry in result.entries.items():
            line = f"    {name:{width}}{entry.extra('bytes/key') or 0:>10.1f}"
            if base:
                mine = entry.extra("bytes/key") or 0.0
                theirs = result.entries[base].extra("bytes/key") or 1.0
                line += f"{mine / theirs:>12.2f}"
            line += "".join(f"{entry.extra(k) or 0:>12.1f}" for k in extras)
            print(line)
    else:
        header = (
            f"    {'':{width}}{'median ms':>10}{'min-max ms':>17}{'best kloads/s':>14}"
        )
        if base:
            header += f"{'x ' + base:>{max(10, len(base) + 4)}}"
        if s.tree:
            header += f"{'batches/req':>13}"
        for extra in extras:
            header += f"{extra:>{max(10, len(extra) + 2)}}"
        print(header)
        for name, entry in result.entries.items():
            times = [smp.seconds * 1e3 for smp in entry.samples]
            spread = f"{min(times):.1f}-{max(times):.1f}"
            line = (
                f"    {name:{width}}{statistics.median(times):>10.1f}{spread:>17}"
                f"{entry.throughput / 1e3:>14.0f}"
            )
            if base:
                ratio = result.entries[base].best_per_op / entry.best_per_op
                line += f"{ratio:>{max(10, len(base) + 4)}.2f}"
            if s.tree:
                counts = sorted(set(entry.batches))
                shown = str(counts[0]) if len(counts) == 1 else f"{counts}"
                line += f"{shown:>13}"
            for extra in extras:
                value = entry.extra(extra)
                shown = "-" if value is None else f"{value:g}"
                line += f"{shown:>{max(10, len(extra) + 2)}}"
            print(line)
    for name, entry in result.entries.items():
        if not entry.subject:
            continue
        others = [n for n in names if n != name and not result.entries[n].subject]
        if not others:
            continue
        if s.memory:
            mine = entry.extra("bytes/key") or 0.0
            parts = [
                f"{mine - (result.entries[o].extra('bytes/key') or 0.0):+.1f} vs {o}"
                for o in others
            ]
            print(f"    {name}: bytes/key " + ", ".join(parts))
            continue
        parts = [f"{result.ratio(name, other):.2f}x {other}" for other in others]
        print(f"    {name}: the throughput of " + ", ".join(parts))


def _print_checks(title: str, checks: Sequence[Check]) -> None:
    print(f"\n{title}")
    if not checks:
        print("    (none in the scenarios run)")
    for check in checks:
        mark = "ok  " if check.ok else "MISS" if "targets" in title else "FAIL"
        print(f"    {mark} [{check.scenario}] {check.what}: {check.detail}")


# -- the command -----------------------------------------------------------------


def _loop_factory(use_uvloop: bool) -> Tuple[LoopFactory, str]:
    if not use_uvloop:
        return asyncio.new_event_loop, "asyncio"
    try:
        import uvloop
    except ImportError:
        raise SystemExit("--uvloop needs uvloop: pip install -e '.[bench]'") from None
    return uvloop.new_event_loop, f"uvloop {getattr(uvloop, '__version__', '?')}"


def run_suite(
    sizes: Sizes,
    rounds: int,
    selected: Optional[Sequence[int]] = None,
    loop_factory: LoopFactory = asyncio.new_event_loop,
) -> Tuple[List[Result], List[Scenario]]:
    """Run the selected scenarios (all by default), printing each table.

    Returns the results and the scenarios that were skipped.
    """
    table: List[Scenario] = scenarios(sizes)
    if not selected or 9 in selected:
        table += redis_tier.scenarios(sizes)
    if not selected or 11 in selected:
        table += fleet.scenarios(sizes)
    if not selected or 12 in selected:
        table += near_latency.scenarios(sizes)
    if not selected or 13 in selected:
        table += web.scenarios(sizes)
    if not selected or 14 in selected:
        table += cluster_reads.scenarios(sizes)
    results: List[Result] = []
    skipped: List[Scenario] = []
    for scenario in table:
        if selected and scenario.number not in selected:
            continue
        if scenario.skipped:
            print(f"\n[{scenario.key}] {scenario.title}")
            print(f"    skipped: {scenario.skipped}")
            skipped.append(scenario)
            continue
        result = measure(scenario, 1 if scenario.memory else rounds, loop_factory)
        print_result(result)
        sys.stdout.flush()
        results.append(result)
    return results, skipped


def _as_json(results: Sequence[Result], meta: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"meta": meta, "scenarios": {}}
    for result in results:
        s = result.scenario
        entries = {}
        for name, entry in result.entries.items():
            entries[name] = {
                "subject": entry.subject,
                "median_s": statistics.median(smp.seconds for smp in entry.samples),
                "min_s": min(smp.seconds for smp in entry.samples),
                "max_s": max(smp.seconds for smp in entry.samples),
                "ops": entry.samples[0].ops,
                "loads_per_s": entry.throughput,
                "batches_per_request": sorted(set(entry.batches)),
                "extra": {
                    k: entry.extra(k)
                    for k in {k for smp in entry.samples for k in smp.extra}
                },
            }
        ratios = {
            name: {
                other: result.ratio(name, other)
                for other in result.entries
                if other != name
            }
            for name, entry in result.entries.items()
            if entry.subject
        }
        out["scenarios"][s.key] = {
            "title": s.title,
            "baseline": s.baseline,
            "entries": entries,
            "ratios": ratios,
        }
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if "--pythons" in args_in:
        # Every Python, in its tox env; see benchmarks/pythons.py.
        from benchmarks import pythons

        args_in.remove("--pythons")
        return pythons.main(args_in)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Compare loadercache with aiodataloader, strawberry's "
        "DataLoader and a minimal 'floor' loader, interleaved, in one process.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, 3 rounds (CI)"
    )
    parser.add_argument(
        "--scenario",
        type=int,
        action="append",
        metavar="N",
        help="run scenario N (1-14); repeatable; default all",
    )
    parser.add_argument(
        "--repeat", type=int, metavar="R", help="rounds per scenario (7; quick: 3)"
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument("--json", metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--pythons",
        action="store_true",
        help="run on every Python 3.9-3.13 in its tox env, with and without the "
        "C extension, and print a table per version (benchmarks/pythons.py)",
    )
    args = parser.parse_args(args_in)

    sizes = QUICK if args.quick else FULL
    rounds = args.repeat or (3 if args.quick else 7)
    loop_factory, loop_name = _loop_factory(args.uvloop)
    meta: Dict[str, Any] = {
        **_machine(),
        "loop": loop_name,
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": _versions(),
    }
    print(
        f"loadercache benchmarks ({meta['mode']}, {rounds} rounds, {loop_name}), "
        f"{meta['date']}\n{meta['python']} on {meta['cpu']} ({meta['nproc']} CPUs)\n"
        + "\n".join(f"{k} {v}" for k, v in meta["versions"].items())
    )
    results, skipped = run_suite(sizes, rounds, args.scenario, loop_factory)
    structural = structural_checks(results) + [
        Check(s.key, "required scenario ran", False, s.skipped or "")
        for s in skipped
        if s.required
    ]
    _print_checks("targets (issue 4; reported, never failing):", target_checks(results))
    _print_checks("structural checks (fail the run):", structural)
    if args.json:
        data = _as_json(results, meta)
        data["structural"] = [check.__dict__ for check in structural]
        data["skipped"] = {s.key: s.skipped for s in skipped}
        Path(args.json).write_text(json.dumps(data, indent=2))
    return 0 if all(check.ok for check in structural) else 1


if __name__ == "__main__":
    sys.exit(main())
