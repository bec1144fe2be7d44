"""Build the sdist and a wheel, and check what PyPI and users would get.

    python .ci/check_dist.py

* The wheel carries the package, its py.typed and stubs, and the compiled
  extension, but no C source; the sdist carries the C source, the tests,
  the examples and the docs.
* The metadata names only addresses the project has (none yet) and passes
  ``twine check --strict``.
* On Linux, ``auditwheel show`` accepts the wheel and ``auditwheel repair``
  gives it a manylinux tag, which PyPI takes (``linux_x86_64`` it refuses).
* The cibuildwheel configuration in pyproject.toml builds CPython 3.9 to
  3.13 on manylinux, musllinux, macOS and Windows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
#: The project's own web addresses; add one here when the project has it.
KNOWN_URLS: List[str] = []
PYTHONS = ["cp39", "cp310", "cp311", "cp312", "cp313"]


def run(*args: str) -> str:
    print("+", " ".join(args), flush=True)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"check_dist: {message}")


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="loadercache-dist-"))
    try:
        run(sys.executable, "-m", "build", "--outdir", str(out), str(ROOT))
        (wheel,) = out.glob("*.whl")
        (sdist,) = out.glob("*.tar.gz")

        with zipfile.ZipFile(wheel) as archive:
            names = archive.namelist()
            metadata_name = next(n for n in names if n.endswith("dist-info/METADATA"))
            metadata = Parser().parsestr(archive.read(metadata_name).decode())
        check(not any(n.endswith(".c") for n in names), f"C source in {names}")
        for needed in (
            "loadercache/py.typed",
            "loadercache/_speedups.pyi",
            "loadercache/testing/__init__.py",
        ):
            check(needed in names, f"{needed} missing from the wheel")
        check(
            any("_speedups" in n and n.endswith((".so", ".pyd")) for n in names),
            "the wheel has no compiled extension",
        )
        check(
            not any(n.startswith(("tests/", "examples/")) for n in names),
            "tests or examples in the wheel",
        )

        with tarfile.open(sdist) as archive:
            members = [m.split("/", 1)[-1] for m in archive.getnames()]
        for needed in (
            "src/loadercache/_speedups.c",
            "tests/test_loader.py",
            "examples/custom_backend.py",
            "docs/index.md",
            "setup.py",
        ):
            check(needed in members, f"{needed} missing from the sdist")

        urls = [
            *metadata.get_all("Project-URL", []),
            *metadata.get_all("Home-page", []),
        ]
        check(
            all(any(u in url for u in KNOWN_URLS) for url in urls),
            f"the metadata names addresses the project does not have: {urls}",
        )
        run(sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist))

        if sys.platform == "linux":
            print(run(sys.executable, "-m", "auditwheel", "show", str(wheel)))
            repaired = out / "repaired"
            run(
                sys.executable,
                "-m",
                "auditwheel",
                "repair",
                "--wheel-dir",
                str(repaired),
                str(wheel),
            )
            (fixed,) = repaired.glob("*.whl")
            check("manylinux" in fixed.name, f"repaired to {fixed.name}")
            run(sys.executable, "-m", "twine", "check", "--strict", str(fixed))
            print(f"repaired: {fixed.name}")

        if shutil.which("cibuildwheel"):
            for platform, count in (("linux", 4), ("macos", 1), ("windows", 1)):
                ids = run(
                    "cibuildwheel",
                    "--print-build-identifiers",
                    "--platform",
                    platform,
                    str(ROOT),
                ).split()
                for python in PYTHONS:
                    built = [i for i in ids if i.startswith(python + "-")]
                    check(
                        len(built) == count,
                        f"cibuildwheel builds {built} for {python} on {platform}",
                    )
            print(f"cibuildwheel: {len(PYTHONS) * 6} wheels configured")
        print("check_dist: the sdist and the wheel are what PyPI should get")
    finally:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
