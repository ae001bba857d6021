"""The one result mixin: ``to_dict`` (JSON-safe), ``table`` (one dict per row) and
``format_table`` (markdown), shared by every result type.

A result is a frozen dataclass that inherits :class:`Result`. ``to_dict`` records its fields and
the properties named in ``_derived`` (values computed from the fields, never stored twice); a
nested result, list of results or mapping is recursed. A tabular result overrides ``table``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from otcollapse._utils import json_safe

__all__ = ["Result", "format_markdown", "record"]


def record(value: Any) -> Any:
    """``value`` with every nested result turned into its ``to_dict`` (then JSON-safe)."""
    if isinstance(value, Result):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: record(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, Result) for v in value):
        return [record(v) for v in value]
    return value


def format_markdown(rows: list[dict[str, Any]], precision: int = 4) -> str:
    """A markdown table of ``rows`` (the keys of the first row are the columns; numbers to
    ``precision`` significant digits, ``-`` where a value is missing)."""
    if not rows:
        return "(empty)"
    head = list(rows[0])

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return str(v)
        if isinstance(v, float):
            return f"{v:.{precision}g}"
        return str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in head) + " |" for r in rows]
    return "\n".join(lines)


class Result:
    """Mixin of the result types (frozen dataclasses): one way to record and print a result."""

    #: properties recorded by ``to_dict`` beside the fields (values derived from the fields)
    _derived: ClassVar[tuple[str, ...]] = ()
    #: fields ``to_dict`` leaves out (large arrays a record should not carry)
    _unrecorded: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe record: the fields (nested results as their records) and the derived
        values."""
        out = {
            f.name: record(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name not in self._unrecorded
        }
        out.update({p: record(getattr(self, p)) for p in self._derived})
        return json_safe(out)

    def table(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per row (a result that is not tabular is one row: its record)."""
        return [self.to_dict()]

    def format_table(self, precision: int = 4) -> str:
        """The rows of :meth:`table` as a markdown table."""
        return format_markdown(self.table(), precision)
