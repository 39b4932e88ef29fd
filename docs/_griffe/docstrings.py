"""Griffe extension that lets the Google-style docstrings of fxpass render cleanly in mkdocstrings.

The docstrings follow the house style: an ``Example:`` section of ``>>>`` lines (run as doctests)
and Sphinx roles such as ``:func:`imitate``` for cross-references. Griffe reads only ``Examples:``
as a section of examples (the singular is an admonition whose ``>>>`` lines turn into nested
quotes), and mkdocstrings has no Sphinx roles (``:func:`` would stay in the text). So, before
each docstring is parsed:

* a line ``Example:`` becomes ``Examples:``;
* a ``#:`` comment right above an attribute becomes its docstring, as in Sphinx;
* a role becomes a cross-reference to the object it names, its first component resolved by
  griffe in the docstring's scope (``imitate`` in ``fxpass._rewrite`` is
  ``imitation_runtime.patch.imitate``); the reference is "optional": when the object is not part
  of the rendered reference, the name is shown as code without a link. A leading ``~`` shows the
  last component only.

Loaded through ``extensions`` in the mkdocstrings handler options of ``mkdocs.yml``; nothing in the
packages imports it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([\w.]+)`")


def _identifier(obj: griffe.Object, name: str) -> str:
    head, _, rest = name.partition(".")
    try:
        resolved = obj.resolve(head)
    except Exception:  # noqa: BLE001 - griffe raises NameResolutionError, or others on odd trees
        return name
    return f"{resolved}.{rest}" if rest else resolved


def _comment_above(obj: griffe.Object) -> str:
    """The ``#:`` comment lines right above an attribute (Sphinx's attribute docstrings)."""
    if obj.lineno is None or obj.parent is None:
        return ""
    try:
        lines = obj.lines_collection[obj.filepath]  # type: ignore[index]
    except Exception:  # noqa: BLE001 - no source (compiled or inspected module)
        return ""
    found: list[str] = []
    index = obj.lineno - 2
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return "\n".join(found)


def _rewrite(obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2)
        shown = name.rpartition(".")[2] if short else name
        identifier = html.escape(_identifier(obj, name), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    return _ROLE.sub(role, _EXAMPLE.sub(r"\1Examples:", text))


class SphinxRolesAndExamples(griffe.Extension):
    """Rewrite ``Example:`` sections and Sphinx roles before griffe parses a docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None and obj.is_attribute:
            comment = _comment_above(obj)
            if comment:
                obj.docstring = griffe.Docstring(comment, lineno=obj.lineno, parent=obj)
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj, obj.docstring.value)
