"""What a type checker says about user code: the typed batch_load_fn.

A subclass whose ``batch_load_fn`` returns values of the wrong type is an
error to mypy, because ``DataLoader`` declares ``batch_load_fn`` with the
loader's own key and value types.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="pip install -e '.[dev]'")

ROOT = Path(__file__).resolve().parent.parent

USER_MODULE = """
from typing import List

from loadercache import DataLoader


class Names(DataLoader[int, str]):
    async def batch_load_fn(self, keys: List[int]) -> List[str]:
        return [str(key) for key in keys]


class WrongValues(DataLoader[int, str]):
    async def batch_load_fn(self, keys: List[int]) -> List[int]:  # line 13
        return keys


async def fetch(keys: List[int]) -> List[str]:
    return [str(key) for key in keys]


loader = DataLoader(fetch)
reveal_type(loader)
"""


def test_a_subclass_returning_the_wrong_values_is_a_type_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "user.py"
    module.write_text(USER_MODULE)
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    out, err, status = api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            "--show-error-codes",
            str(module),
        ]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1, out + err
    assert "user.py:13:" in errors[0] and "[override]" in errors[0]
    # The key and value types of a function-built loader come from its function.
    (revealed,) = [line for line in out.splitlines() if "Revealed type" in line]
    assert "loadercache.loader.DataLoader[" in revealed
    assert revealed.replace("builtins.", "").endswith('DataLoader[int, str]"')
    assert status == 1
