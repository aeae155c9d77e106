"""The guide documents every flag of the three command lines, read from the parsers.

Each command's section of docs/guide.md names each of its flags; the train table's
defaults agree with the parser's; the flags of several processes are in
docs/multiprocess.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lrjax.cli import find, grid, train

DOCS = Path(__file__).resolve().parents[1] / "docs"
GUIDE = (DOCS / "guide.md").read_text()
DISTRIBUTED = {"--coordinator", "--num-processes", "--process-id", "--distributed"}
# the heading that starts each command's section, and the one after it
SECTIONS = {
    "find": ("## The range test on your own model", "## Training"),
    "train": ("## Training", "## Is the suggestion any good"),
    "grid": ("### A learning-rate grid in one compiled program", "### Finder quality"),
}
MODULES = {"find": find, "train": train, "grid": grid}


def section(name: str) -> str:
    start, end = SECTIONS[name]
    assert GUIDE.count(f"\n{start}") == 1 and GUIDE.count(f"\n{end}") == 1, name
    return GUIDE[GUIDE.index(f"\n{start}") : GUIDE.index(f"\n{end}")]


def flags(name: str) -> dict[str, object]:
    """``--flag -> default`` of a command line's parser (``-h`` left out)."""
    parser = MODULES[name].build_parser()
    return {
        a.option_strings[-1]: a.default
        for a in parser._actions
        if a.option_strings and a.option_strings[-1] != "--help"
    }


def _named(flag: str, text: str) -> bool:
    return re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_every_flag_is_in_the_commands_section(name):
    text = section(name)
    missing = [f for f in flags(name) if f not in DISTRIBUTED and not _named(f, text)]
    assert not missing, f"docs/guide.md's {name} section lacks {missing}"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_the_flags_of_several_processes_are_in_multiprocess_md(name):
    text = (DOCS / "multiprocess.md").read_text()
    assert DISTRIBUTED <= set(flags(name))
    assert all(_named(f, text) for f in DISTRIBUTED)


def _table_rows(text: str) -> list[tuple[list[str], str]]:
    """``(flags, default cell)`` of each row of the train flags table."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `--") and len(cells) >= 2:
            rows.append((re.findall(r"`(--[\w-]+)", cells[0]), cells[1]))
    return rows


def test_the_train_table_has_every_flag_and_its_default():
    rows = _table_rows(section("train"))
    listed = {f for fs, _ in rows for f in fs}
    parser = flags("train")
    assert set(parser) - listed == set(), "flags missing from the table"
    assert listed - set(parser) == set(), "the table names flags train lacks"
    for fs, cell in rows:
        for f in fs:
            default = parser[f]
            if default in (None, False) or f in DISTRIBUTED:
                continue
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert _named(shown, cell) or shown in cell, (f, default, cell)


def test_the_table_reader_reads_a_row():
    rows = _table_rows("| `--epochs`, `--batch-size` | 30, 32 | |\n| x | y |")
    assert rows == [(["--epochs", "--batch-size"], "30, 32")]
