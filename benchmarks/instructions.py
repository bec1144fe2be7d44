"""Instructions per load, counted by callgrind: the timings' noise-free companion.

    python -m benchmarks.instructions                 # scenarios 1, 2, 5, 6
    python -m benchmarks.instructions --scenario 2

On a shared machine the timed rounds of one entry can vary by half; the
number of instructions a workload executes does not.  For each contender
this runs the scenario's workload in a child process under ``valgrind
--tool=callgrind``, twice, at two sizes, and divides the difference in
instructions by the difference in loads: interpreter start-up, imports and
warm-up cancel out.  Instructions are not time (cache misses and system
calls are not counted), so this complements the timed suite, it does not
replace it.  It needs ``valgrind`` on ``PATH`` and takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.contenders import FLOOR, PEERS, BatchCounter, Contender, batch_fn
from benchmarks.scenarios import Sizes, distinct_keys, load_many

__all__ = ["callgrind", "count", "main"]

#: Scenario -> (title, the two sizes whose difference is measured).  For 2
#: the size is the number of rounds of 10,000 hits after the keys are cached.
SCENARIOS: Dict[str, Tuple[str, Tuple[int, int]]] = {
    "1": ("distinct keys, 1,000 per tick", (10_000, 20_000)),
    "2": ("cached keys", (1, 3)),
    "5": ("distinct keys, max_batch_size=100", (10_000, 20_000)),
    "6": ("load_many of 100 new keys", (10_000, 20_000)),
}
HIT_KEYS = 10_000

_COLLECTED = re.compile(r"Collected : (\d+)")


async def _hits(contender: Contender, rounds: int) -> None:
    loader = contender.make(batch_fn(BatchCounter()), None)
    keys = list(range(HIT_KEYS))
    await loader.load_many(keys)
    for _ in range(rounds):
        for key in keys:
            await loader.load(key)


async def _workload(scenario: str, contender: Contender, size: int) -> None:
    if scenario == "2":
        await _hits(contender, size)
    elif scenario == "6":
        await load_many(contender, Sizes(keys=size))
    else:
        await distinct_keys(
            contender, Sizes(keys=size), 100 if scenario == "5" else None
        )


def _loads(scenario: str, size: int) -> int:
    return size * HIT_KEYS if scenario == "2" else size


def callgrind(module: str, *args: str, env: Optional[Dict[str, str]] = None) -> int:
    """Instructions of one ``python -m <module> <args>`` under callgrind.

    Also for the other benchmarks that count instructions
    (:mod:`benchmarks.cluster_cpu`, :mod:`benchmarks.app_cpu`).
    """
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            module,
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(
            f"callgrind run of {module} {' '.join(args)} failed:\n{done.stderr[-2000:]}"
        )
    return int(found.group(1))


def _instructions(scenario: str, contender: Contender, size: int) -> int:
    """Instructions of one child process running the workload once."""
    return callgrind(
        "benchmarks.instructions", "--child", scenario, contender.name, str(size)
    )


def count(scenario: str, contender: Contender) -> float:
    """Instructions per load of *contender* in *scenario*."""
    small, large = SCENARIOS[scenario][1]
    with ThreadPoolExecutor(2) as pool:
        low, high = pool.map(
            lambda size: _instructions(scenario, contender, size), (small, large)
        )
    return (high - low) / (_loads(scenario, large) - _loads(scenario, small))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.instructions",
        description="Instructions per load under callgrind, against the floor.",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    by_name = {contender.name: contender for contender in PEERS}
    if args.child:
        scenario, name, size = args.child
        asyncio.run(_workload(scenario, by_name[name], int(size)))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not on PATH; install it to count instructions.")
        return 1
    import loadercache

    build = "C extension" if loadercache.SPEEDUPS else "pure Python"
    print(f"instructions per load under callgrind; loadercache: {build}")
    for scenario in args.scenario or sorted(SCENARIOS):
        title = SCENARIOS[scenario][0]
        counts = {contender.name: count(scenario, contender) for contender in PEERS}
        floor = counts[FLOOR.name]
        print(f"\n[{scenario}] {title}")
        print(f"    {'':16}{'instructions/load':>18}{'floor / this':>14}")
        for name, per_load in counts.items():
            print(f"    {name:16}{per_load:>18,.0f}{floor / per_load:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
