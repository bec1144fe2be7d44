"""A griffe extension: render loadercache's reST-flavoured docstrings as Markdown.

The docstrings follow the standard library's conventions (doctest examples,
``:class:`` roles, ``::`` literal blocks, simple tables), which read well in
``help()`` and in an editor; mkdocstrings renders Markdown, where ``>>>`` is
a triple blockquote.  This rewrites each docstring before it is parsed, so the
source stays in one style and the site still reads well.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, List

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj):`(~?)([^`]+)`")
_TABLE_RULE = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _role(match: re.Match[str]) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


def _fence_doctests(lines: List[str]) -> List[str]:
    out: List[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not (stripped == ">>>" or stripped.startswith(">>> ")):
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(stripped)]
        out.append(f"{indent}```pycon")
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.append(f"{indent}```")
    return out


def _fence_tables(lines: List[str]) -> List[str]:
    out: List[str] = []
    rules = 0
    for line in lines:
        if _TABLE_RULE.match(line):
            rules += 1
            if rules == 1:
                out.append("```text")
            out.append(line)
            if rules == 3:
                out.append("```")
                rules = 0
            continue
        out.append(line)
    return out


def rest_to_markdown(text: str) -> str:
    """Rewrite doctest blocks, roles, ``::`` and simple tables as Markdown."""
    text = _ROLE.sub(_role, text)
    text = re.sub(r"(?m)^(\s*)::\s*$", "", text)
    text = re.sub(r"(?m)(\S)::\s*$", r"\1:", text)
    lines = _fence_tables(_fence_doctests(text.splitlines()))
    return "\n".join(lines)


def _private(expression: object) -> bool:
    """Whether *expression* (a base class, a value) names a private object."""
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", str(expression))
    return any(part.startswith("_") for name in names for part in name.split("."))


class RestDocstrings(griffe.Extension):
    """Rewrite every docstring as it is loaded; keep private names off the page.

    A class's private bases (``DataLoader``'s ``_LoaderCore``, the C struct
    its fields live in) and a value computed from private names (``SPEEDUPS
    = _speedups is not None``) are implementation, not API: the page shows
    the public bases, and the attribute with its type but not its value.
    """

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
        if isinstance(obj, griffe.Class):
            obj.bases = [base for base in obj.bases if not _private(base)]
        elif isinstance(obj, griffe.Attribute):
            if _private(obj.value):
                obj.value = None
            if obj.docstring is None:
                comment = _comment_above(obj)
                if comment:
                    obj.docstring = griffe.Docstring(
                        rest_to_markdown(comment), parent=obj
                    )


def _comment_above(attribute: griffe.Attribute) -> str:
    """The ``#:`` comment lines above an attribute (Sphinx's autodoc reads them)."""
    if attribute.lineno is None or not isinstance(attribute.filepath, Path):
        return ""
    lines = attribute.filepath.read_text(encoding="utf-8").splitlines()
    found: List[str] = []
    for line in reversed(lines[: attribute.lineno - 1]):
        stripped = line.strip()
        if not stripped.startswith("#:"):
            break
        found.append(stripped[2:].strip())
    return " ".join(reversed(found))
