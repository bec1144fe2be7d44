"""The demo and the examples run, and print what the README says they print."""

from __future__ import annotations

import re
import subprocess
import sys

from loadercache.__main__ import run_demo


def test_demo_prints_naive_and_batched_query_counts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadercache"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    counts = dict(
        re.findall(r"^(naive resolvers|with DataLoader):\s+(\d+)", done.stdout, re.M)
    )
    # 1 query for the posts, then per post 1 for its author and 1 for its
    # comments, then 1 per comment for its author: 1 + 20 + 20 + 100.
    assert counts == {"naive resolvers": "141", "with DataLoader": "4"}
    assert "same response:         yes" in done.stdout


async def test_demo_batches_one_query_per_level_whatever_the_size() -> None:
    result = await run_demo(posts=60, comments_per_post=3)
    assert result.naive_queries == 1 + 60 + 60 + 180
    assert result.batched_queries == 4
    assert result.same_result


def test_demo_help_is_plain_text() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "loadercache", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "usage: python -m loadercache" in done.stdout
    assert "DataLoaders" in done.stdout
    # reST markup from a docstring reads as noise in a terminal.
    assert "``" not in done.stdout
    assert ":class:" not in done.stdout
