"""Every ```python and ```bash block of README.md and docs/*.md runs as written.

Each block runs in a subprocess, in a fresh working directory, at tiny sizes:
``LRJAX_DOCS_TINY=1`` (honoured by :func:`lrjax.load_dataset` alone, see the
guide's Development section) on tiny IDX files that this module generates, found
through ``$LRJAX_DATA_DIR``; ``$LRJAX_CACHE_DIR`` keeps the array cache out of the
user's. A python block that continues the previous python block of its page (it
uses its names) is marked ``<!-- docs-test: continues -->`` and runs in one
process with it. A bash block may hold only lrjax's command lines
(``lrjax-*``, ``python -m lrjax.*``, each optionally behind ``.venv/bin/``); the
working directory links ``.venv`` to this interpreter's environment, ``data`` to
the generated datasets and ``examples`` to the repository's, so the paths of the
docs resolve. A block that cannot run here (a cluster, tensorboard, a download, an
install) or that takes minutes on two cores is marked
``<!-- docs-test: skip (WHY) -->`` on the line before it; each is reported as a
skipped test with its reason, and the command lines of a skipped bash block are
still parsed by their own parsers. A block whose code is that of another that runs
(the guide repeats the front page's range test) runs once. The blocks run two at a
time (most of each is importing JAX and compiling, one core's work), sharing the
test suite's JAX compilation cache (tests/conftest.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrjax._src import data
from lrjax.cli import find, grid, train
from tests.conftest import _idx, make_images

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY_TRAIN, TINY_TEST = 5000 + 512, 256  # load_dataset holds out the first 5000
WORKERS = 2
TIMEOUT_S = 300

_FENCE = re.compile(r"^```(\w*)")
_MARK = re.compile(r"^<!--\s*docs-test:\s*(skip|continues)\s*(?:\((.+)\))?\s*-->$")
# a command of a bash block: env assignments, then one of lrjax's command lines
_COMMAND = re.compile(
    r"^(\w+=\S*\s+)*(\.venv/bin/)?(lrjax-(find|train|grid)|python -m lrjax\.\w+)\b"
)
PARSERS = {"find": find.build_parser, "train": train.build_parser}
PARSERS["grid"] = grid.build_parser


@dataclasses.dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    lang: str  # "python" or "bash"
    code: str
    skip: str | None  # why it cannot run here; None: it runs
    continues: bool  # runs after the previous python block of its page


def page_blocks(path: Path) -> list[Block]:
    """The python and bash blocks of a markdown page, with their marks."""
    lines = path.read_text().splitlines()
    out, i = [], 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        if fence.group(1) in ("python", "bash"):
            before = next((s for s in reversed(lines[:i]) if s.strip()), "")
            mark = _MARK.match(before.strip())
            out.append(
                Block(
                    page=str(path.relative_to(ROOT)),
                    line=i + 1,
                    lang=fence.group(1),
                    code="\n".join(lines[i + 1 : end]) + "\n",
                    skip=(mark.group(2) or "no reason given")
                    if mark and mark.group(1) == "skip"
                    else None,
                    continues=bool(mark and mark.group(1) == "continues"),
                )
            )
        i = end + 1
    return out


def groups() -> list[list[Block]]:
    """Blocks as they run: a continuing python block joins its predecessor's run."""
    out: list[list[Block]] = []
    for page in PAGES:
        last_python: list[Block] | None = None
        for b in page_blocks(page):
            if b.continues:
                assert b.lang == "python" and last_python is not None, (
                    f"{b.page}:{b.line}: only a python block can continue one"
                )
                assert last_python[0].skip is None and b.skip is None, b
                last_python.append(b)
                continue
            out.append([b])
            if b.lang == "python":
                last_python = out[-1]
    return out


def group_id(group: list[Block]) -> str:
    return f"{group[0].page}:" + "+".join(str(b.line) for b in group)


def commands(code: str) -> list[str]:
    """A bash block's commands, one a line: continuations joined, comments dropped."""
    joined = code.replace("\\\n", " ")
    out = [shlex.join(shlex.split(line, comments=True)) for line in joined.splitlines()]
    return [c for c in out if c]


def code(group: list[Block]) -> str:
    return "".join(b.code for b in group)


GROUPS = groups()
RUN, SKIPPED, SAME = [], [], {}  # SAME: group id -> the id of the run it repeats
for _g in GROUPS:
    if _g[0].skip is not None:
        SKIPPED.append(_g)
        continue
    _twin = next((r for r in RUN if code(r).startswith(code(_g))), None)
    if _twin is not None:
        SAME[group_id(_g)] = group_id(_twin)
    else:
        RUN.append(_g)


def command_argv(command: str) -> tuple[str, list[str]]:
    """``(find|train|grid, argv)`` of one of lrjax's command lines."""
    words = shlex.split(command)
    while "=" in words[0]:  # VAR=value in front
        words = words[1:]
    if words[-1] == "&":
        words = words[:-1]
    if words[0].endswith("python"):
        return words[2].rpartition(".")[2], words[3:]
    return words[0].rpartition("lrjax-")[2], words[1:]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """``data/fashion_mnist`` and ``data/mnist``: learnable 28x28 IDX stand-ins."""
    root = tmp_path_factory.mktemp("docs-data") / "data"
    for name, seed in (("fashion_mnist", 0), ("mnist", 2)):
        d = root / name
        d.mkdir(parents=True)
        x, y = make_images(TINY_TRAIN, seed)
        xt, yt = make_images(TINY_TEST, seed + 1)
        for prefix, images, labels in (("train", x, y), ("t10k", xt, yt)):
            (d / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images))
            (d / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    return root


def _environment(datasets: Path, cache: Path) -> dict[str, str]:
    import jax

    env = dict(os.environ)
    jax_cache = jax.config.jax_compilation_cache_dir  # tests/conftest.py's
    if jax_cache:
        env.update(
            LRJAX_JAX_CACHE=jax_cache,  # the command lines' setting
            JAX_COMPILATION_CACHE_DIR=jax_cache,  # the python blocks'
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    env.update(
        LRJAX_DOCS_TINY="1",
        LRJAX_DATA_DIR=str(datasets),
        LRJAX_CACHE_DIR=str(cache),
        MPLBACKEND="Agg",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
    )
    return env


def foreign_commands(group: list[Block]) -> list[str]:
    """The commands of a bash block that are not lrjax's: it must not run."""
    if group[0].lang != "bash":
        return []
    return [
        c for c in commands(group[0].code) if not (_COMMAND.match(c) or c == "wait")
    ]


def _run(group: list[Block], workdir: Path, env: dict[str, str]):
    if foreign_commands(group):
        return None  # never run: the test says which command and how to mark it
    workdir.mkdir(parents=True)
    (workdir / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    (workdir / "data").symlink_to(env["LRJAX_DATA_DIR"], target_is_directory=True)
    (workdir / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    source = code(group)
    if group[0].lang == "python":
        (workdir / "block.py").write_text(source)
        argv = [sys.executable, "block.py"]
    else:
        (workdir / "block.sh").write_text(source)
        argv = ["bash", "-euo", "pipefail", "block.sh"]
    try:
        return subprocess.run(
            argv, cwd=workdir, env=env, capture_output=True, text=True,
            timeout=TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        return e


@pytest.fixture(scope="module")
def runs(datasets, tmp_path_factory):
    """Every runnable group, started at once on ``WORKERS`` threads."""
    base = tmp_path_factory.mktemp("docs-runs")
    env = _environment(datasets, base / "cache")
    pool = concurrent.futures.ThreadPoolExecutor(WORKERS)
    futures = {
        group_id(g): pool.submit(_run, g, base / f"block{k}", env)
        for k, g in enumerate(RUN)
    }
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("group", RUN, ids=group_id)
def test_block_runs(group, runs):
    assert not foreign_commands(group), (
        f"{group_id(group)}: {foreign_commands(group)} not lrjax's command lines; "
        "mark the block <!-- docs-test: skip (WHY) -->"
    )
    done = runs[group_id(group)].result()
    if isinstance(done, subprocess.TimeoutExpired):
        pytest.fail(f"{group_id(group)} ran past {TIMEOUT_S} s")
    tail = (done.stdout[-2000:] + "\n" + done.stderr[-4000:]).strip()
    assert done.returncode == 0, f"{group_id(group)} failed:\n{tail}"
    assert "Traceback" not in done.stderr, tail
    assert "Warning:" not in done.stderr, f"{group_id(group)} warned:\n{tail}"


@pytest.mark.parametrize("group", SKIPPED, ids=group_id)
def test_block_marked_to_skip(group):
    """Skipped, but lrjax's command lines in it are parsed by their parsers."""
    if group[0].lang == "bash" and not foreign_commands(group):
        for command in commands(group[0].code):
            if command == "wait":
                continue
            name, argv = command_argv(command)
            try:
                PARSERS[name]().parse_args(argv)
            except Exception as e:  # the parsers raise UsageError
                pytest.fail(f"{group_id(group)}: {command!r}: {e}")
    pytest.skip(f"{group_id(group)}: {group[0].skip}")


@pytest.mark.parametrize("twin", sorted(SAME), ids=str)
def test_block_that_repeats_another(twin):
    pytest.skip(f"{twin}: the code of {SAME[twin]}, which runs")


def test_every_page_is_read_and_the_front_page_runs():
    """The extraction finds the blocks; the front page's python and the library
    examples of the guide run (only command lines and a TFDS download are skipped)."""
    readme = [g for g in GROUPS if g[0].page == "README.md"]
    assert len(readme) >= 5
    assert all(g[0].lang == "bash" for g in readme if g[0].skip), "python runs"
    assert sum(g[0].skip is None for g in readme) >= 4
    assert any(len(g) > 1 for g in readme), "quickstart 3 continues quickstart 2"
    guide_python = [g for g in GROUPS if g[0].page == "docs/guide.md"]
    guide_python = [g for g in guide_python if g[0].lang == "python"]
    assert len(guide_python) >= 6
    skipped = [g for g in guide_python if g[0].skip is not None]
    assert all("tfds:" in g[0].code for g in skipped), "the library examples run"
    assert len(RUN) + len(SKIPPED) + len(SAME) == len(GROUPS) and len(RUN) >= 12


def test_docs_tiny_loads_stand_ins_and_cuts_the_splits(datasets, monkeypatch):
    """``LRJAX_DOCS_TINY``: any length, no content hash, splits cut; else refused."""
    monkeypatch.setenv("LRJAX_CACHE_DIR", str(datasets.parent / "cache-unit"))
    d = datasets / "fashion_mnist"
    with pytest.raises(data.DatasetError, match="expected 60000"):
        data.load_dataset(data_dir=d)
    monkeypatch.setenv("LRJAX_DOCS_TINY", "1")
    for _ in range(2):  # built, then read back from the array cache
        ds = data.load_dataset(data_dir=d)
        x, y = make_images(TINY_TRAIN, 0)
        n_train, n_val, n_test = data.DOCS_TINY_SPLITS
        np.testing.assert_array_equal(ds.x_val, x[:n_val])
        np.testing.assert_array_equal(ds.x_train, x[5000 : 5000 + n_train])
        np.testing.assert_array_equal(ds.y_train, y[5000 : 5000 + n_train])
        assert len(ds.y_test) == n_test
    monkeypatch.setenv("LRJAX_DOCS_TINY", "0")
    with pytest.raises(data.DatasetError, match="expected 60000"):
        data.load_dataset(data_dir=d)


def test_bash_commands_are_recognised():
    assert _COMMAND.match("JAX_PLATFORMS=cpu python -m lrjax.find --seeds 2")
    assert _COMMAND.match(".venv/bin/lrjax-train --logdir runs/a")
    assert not _COMMAND.match("tensorboard --logdir runs/")
    assert not _COMMAND.match("bash scripts/setup.sh")
    assert commands("a \\\n  b  # c\n# d\n\nwait\n") == ["a b", "wait"]
    assert shlex.split(commands("lrjax-find --out 'x y'\n")[0])[-1] == "x y"
    assert command_argv("A=1 python -m lrjax.find --seeds 2 &") == (
        "find",
        ["--seeds", "2"],
    )
    assert command_argv(".venv/bin/lrjax-grid --find") == ("grid", ["--find"])
    with pytest.raises(Exception, match="--no-such-flag"):
        PARSERS["train"]().parse_args(["--no-such-flag"])
