"""What the benchmarks share to render their blocks of the documents.

Each benchmark module renders its own markdown from the JSON it writes and
exposes it in one way, which ``benchmarks/report.py`` stitches into pages:

- ``BLOCKS: dict[str, Callable[[Path], str]]``: block name -> (results folder ->
  markdown), one entry per ``<!-- BEGIN report:NAME -->`` block it owns;
- ``TARGET_ROWS: dict[str, Callable[[Path], list[TargetRow]]]`` (optional): its
  rows of docs/results.md's targets table, in named groups;
- ``HEADLINE_ROWS: dict[str, Callable[[Path], list[HeadlineRow]]]`` (optional):
  its rows of the front page's headline table, in named groups.

A row's ``measured`` and ``met`` cells are falsy (None, {}, [], False) without
the JSON; the report writes ``NOT_MEASURED`` and ``-`` there, and the name of
the benchmark that owns the row. Nothing here imports JAX.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOT_MEASURED = "(not measured yet)"

# (target, measured, met?): a row of docs/results.md's targets table.
TargetRow = tuple[str, Any, Any]
# (what, measured): a row of the front page's headline table.
HeadlineRow = tuple[str, Any]


def load_result(results: Path, name: str) -> dict | None:
    """``results/NAME.json``, or None when that benchmark has not run."""
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def json_block(name: str, render: Callable[[dict], str]) -> Callable[[Path], str]:
    """A block rendered from one JSON; ``(not measured yet)`` without it."""

    def block(results: Path) -> str:
        d = load_result(results, name)
        return NOT_MEASURED if d is None else render(d)

    return block


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def where(d: dict) -> str:
    """Where a benchmark ran, from the fields ``bench_find.meta()`` records."""
    return (
        f"{d['device']}, {d['cpu_count']} cores, jax {d['jax']}; "
        f"`{' '.join(d.get('argv', []))}`"
    )


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def fmt(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def yes(ok: bool) -> str:
    return "yes" if ok else "no"
