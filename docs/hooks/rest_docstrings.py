"""A griffe extension: render loadercache's reST-flavoured docstrings as Markdown.

The docstrings follow the standard library's conventions (doctest examples,
``:class:`` roles, ``::`` literal blocks, simple tables), which read well in
``help()`` and in an editor; mkdocstrings renders Markdown, where ``>>>`` is
a triple blockquote.  This rewrites each docstring before it is parsed, so the
source stays in one style and the site still reads well.
"""

from __future__ import annotations

import re
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


class RestDocstrings(griffe.Extension):
    """Rewrite every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rest_to_markdown(obj.docstring.value)
