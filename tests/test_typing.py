"""Type checkers see what users see: every public name typed, from outside the repo.

* ``tests/typecheck/public_api.py``, a user's module touching every public
  name, passes ``mypy --strict`` and ``pyright --strict`` when checked from
  a directory outside the repository, against the loadercache these tests
  import; its ``assert_type`` lines hold and its expected errors stay errors.
* ``pyright --verifytypes loadercache`` finds nothing ambiguous or unknown
  outside the Redis backend and its serializers.
* An installed loadercache is found by both checkers with no path given.

The checkers come with the ``dev`` extra (pyright pinned, with its own
Node.js); without them these tests skip, unless
LOADERCACHE_REQUIRE_TYPECHECKERS=1 (as in ``.ci/run``) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import loadercache

ROOT = Path(__file__).resolve().parent.parent
USER_MODULE = Path(__file__).resolve().parent / "typecheck" / "public_api.py"
# Where the loadercache under test lives: the checkers are pointed there.
PACKAGE_PARENT = Path(loadercache.__file__).resolve().parent.parent

# Modules whose typing is being rebuilt elsewhere, and what is left in them.
NOT_YET_COMPLETE: tuple[str, ...] = ()
# Exported symbols allowed to stay unknown or ambiguous: none.
KNOWN_GAPS: set[str] = set()


def require(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    reason = f"{module} is not installed; pip install -e '.[dev]'"
    if os.environ.get("LOADERCACHE_REQUIRE_TYPECHECKERS") == "1":
        pytest.fail(f"LOADERCACHE_REQUIRE_TYPECHECKERS=1 but {reason}")
    pytest.skip(reason)


def checked_from_outside(tmp_path: Path) -> Path:
    """The user module, copied to a directory of its own, outside the repo."""
    target = tmp_path / "user_code" / "public_api.py"
    target.parent.mkdir()
    shutil.copy(USER_MODULE, target)
    return target


def environment(**extra: str) -> Dict[str, str]:
    env = {**os.environ, **extra}
    env.pop("PYTHONPATH", None)
    env.pop("MYPYPATH", None)
    return {**env, **extra}


def pyright(args: List[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyright", *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def mypy(args: List[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_user_module_passes_mypy_strict(tmp_path: Path) -> None:
    require("mypy")
    module = checked_from_outside(tmp_path)
    done = mypy(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), module.name],
        module.parent,
        MYPYPATH=str(PACKAGE_PARENT),
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_user_module_passes_pyright_strict(tmp_path: Path) -> None:
    require("pyright")
    module = checked_from_outside(tmp_path)
    config = {
        "typeCheckingMode": "strict",
        # Only pyright's own ignore comments count, and an unneeded one is an
        # error: each marks a line that must stay an error.
        "enableTypeIgnoreComments": False,
        "reportUnnecessaryTypeIgnoreComment": "error",
    }
    (module.parent / "pyrightconfig.json").write_text(json.dumps(config))
    done = pyright(
        ["--pythonpath", sys.executable, module.name],
        module.parent,
        PYTHONPATH=str(PACKAGE_PARENT),
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_user_module_uses_every_public_name() -> None:
    source = USER_MODULE.read_text(encoding="utf-8")
    modules = [
        "loadercache",
        "loadercache.backends",
        "loadercache.backends.redis",
        "loadercache.backends.serializers",
        "loadercache.cache",
        "loadercache.integrations.asgi",
        "loadercache.registry",
        "loadercache.stats",
        "loadercache.testing",
        "loadercache.tracing",
        "loadercache.__main__",
    ]
    missing = []
    for name in modules:
        module = importlib.import_module(name)
        for public in module.__all__:
            if public not in source:
                missing.append(f"{name}.{public}")
    assert not missing, f"public names the user module never uses: {missing}"


def verifytypes(tmp_path: Path) -> Dict[str, Any]:
    done = pyright(
        ["--verifytypes", "loadercache", "--ignoreexternal", "--outputjson"],
        tmp_path,
        PYTHONPATH=str(PACKAGE_PARENT),
    )
    # Exit code 1 means "below 100 %"; the JSON says where.
    report: Dict[str, Any] = json.loads(done.stdout)
    return report


def test_every_public_symbol_has_a_known_type(tmp_path: Path) -> None:
    require("pyright")
    report = verifytypes(tmp_path)["typeCompleteness"]
    assert report["packageRootDirectory"] == str(PACKAGE_PARENT / "loadercache")
    gaps = {
        symbol["name"]
        for symbol in report["symbols"]
        if symbol["isExported"]
        and (not symbol["isTypeKnown"] or symbol["isTypeAmbiguous"])
    }
    unexpected = {
        name for name in gaps - KNOWN_GAPS if not name.startswith(NOT_YET_COMPLETE)
    }
    assert not unexpected, f"symbols whose type is unknown or ambiguous: {unexpected}"


FLAT_LAYOUT_CHECKOUT = PACKAGE_PARENT == ROOT


@pytest.mark.skipif(
    FLAT_LAYOUT_CHECKOUT,
    reason="loadercache is imported from a flat-layout checkout, which setuptools "
    "installs in editable mode as an import hook that mypy and pyright cannot "
    "follow; the src/ layout makes it a path they read",
)
def test_the_installed_package_is_found_with_no_path_given(tmp_path: Path) -> None:
    require("mypy")
    require("pyright")
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "uses_it.py").write_text(
        "from loadercache import DataLoader\n\n"
        "async def fetch(keys: list[int]) -> list[str]:\n"
        "    return [str(key) for key in keys]\n\n"
        "loader: DataLoader[int, str] = DataLoader(fetch)\n"
    )
    checked = mypy(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "uses_it.py"], user
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = pyright(["--pythonpath", sys.executable, "uses_it.py"], user)
    assert checked.returncode == 0, checked.stdout + checked.stderr
