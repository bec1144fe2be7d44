"""The benchmark suite's quick mode, as CI runs it: structure, never timing noise.

One run of ``python -m benchmarks --quick`` (a few seconds) in a subprocess,
then one test per guard of issue 4, so a failure names the guard it broke:

* every request of scenario 3 makes exactly 3 batch calls;
* the Redis cache map reads a batch in exactly one round trip (counted at
  the client and, with MONITOR, at the server); skipped without the Redis
  extra or a server, unless ``LOADERCACHE_REQUIRE_REDIS=1``;
* loadercache keeps at least half its floor target (0.45 of the floor's
  throughput; as pure Python a third, 0.30) in scenarios 1, 2, 5 and 6: a
  loss that large is a regression, not noise.  Tighter timing thresholds
  would flap on shared CI machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import loadercache

ROOT = Path(__file__).resolve().parent.parent
REQUIRE_REDIS = os.environ.get("LOADERCACHE_REQUIRE_REDIS") == "1"

for _peer in ("aiodataloader", "strawberry", "graphql"):
    pytest.importorskip(_peer, reason="pip install -e '.[bench]'")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """The JSON report of one quick run of the whole suite."""
    report = tmp_path_factory.mktemp("benchmarks") / "quick.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if not report.exists():
        pytest.fail(
            f"the quick benchmark run crashed (exit {completed.returncode}):\n"
            f"{completed.stdout}\n{completed.stderr}"
        )
    data: Dict[str, Any] = json.loads(report.read_text())
    data["output"] = completed.stdout
    return data


def _checks(run: Dict[str, Any], scenario: str) -> List[Dict[str, Any]]:
    return [c for c in run["structural"] if c["scenario"] == scenario]


def _assert_ok(run: Dict[str, Any], checks: List[Dict[str, Any]]) -> None:
    failed = [f"{c['what']}: {c['detail']}" for c in checks if not c["ok"]]
    assert not failed, "\n".join(failed) + "\n\n" + run["output"]


def test_tree_requests_make_three_batch_calls(quick_run: Dict[str, Any]) -> None:
    checks = _checks(quick_run, "3")
    assert {c["what"] for c in checks} == {
        "loadercache: batch calls per request == 3",
        "floor: batch calls per request == 3",
    }
    _assert_ok(quick_run, checks)


def test_redis_reads_a_batch_in_one_round_trip(quick_run: Dict[str, Any]) -> None:
    skipped = quick_run["skipped"].get("9")
    if skipped is not None:
        if REQUIRE_REDIS:
            pytest.fail(f"scenario 9 skipped: {skipped} (LOADERCACHE_REQUIRE_REDIS=1)")
        pytest.skip(f"scenario 9 skipped: {skipped}")
    checks = _checks(quick_run, "9a") + _checks(quick_run, "9b")
    assert len(checks) == 4, checks
    _assert_ok(quick_run, checks)


@pytest.mark.parametrize("scenario", ["1", "2", "5", "6"])
def test_throughput_keeps_half_the_floor_target(
    quick_run: Dict[str, Any], scenario: str
) -> None:
    checks = _checks(quick_run, scenario)
    guard = "0.45" if loadercache.SPEEDUPS else "0.30"  # pure Python: a third
    assert [c["what"] for c in checks] == [
        f"loadercache: throughput >= {guard} x floor"
    ]
    _assert_ok(quick_run, checks)


def test_every_scenario_runs_in_quick_mode(quick_run: Dict[str, Any]) -> None:
    # So that the scenarios no guard covers still run in CI, and do not rot.
    for key in ["1", "2", "3", "4", "5", "6", "6b", "7", "8a", "8b", "10a", "10b"]:
        assert key in quick_run["scenarios"], key
        assert f"[{key}]" in quick_run["output"]


@pytest.mark.parametrize("scenario", ["1", "2", "5", "6"])
def test_the_instruction_counts_workloads_run(scenario: str) -> None:
    # What `python -m benchmarks.instructions` runs under callgrind, run
    # once here without it, so the workloads cannot rot unnoticed.
    size = "1" if scenario == "2" else "2000"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.instructions",
            "--child",
            scenario,
            "loadercache",
            size,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]


def test_cluster_reads_take_one_trip_per_node(quick_run: Dict[str, Any]) -> None:
    # Scenario 14: a spread namespace reaches each of the 3 masters in one
    # write per batch; a one-slot namespace (buckets=1) its one master.
    skipped = quick_run["skipped"].get("14")
    if skipped is not None:
        if REQUIRE_REDIS:
            pytest.fail(f"scenario 14 skipped: {skipped} (LOADERCACHE_REQUIRE_REDIS=1)")
        pytest.skip(f"scenario 14 skipped: {skipped}")
    checks = _checks(quick_run, "14")
    assert len(checks) == 2, checks
    _assert_ok(quick_run, checks)
