"""Regenerates every measured number of the README.md pages and docs/results.md.

    python benchmarks/report.py           # rewrite the generated blocks
    python benchmarks/report.py --check   # exit 1 if that would change a file

Each generated block sits between ``<!-- BEGIN report:NAME -->`` and
``<!-- END report:NAME -->`` and is rendered from the JSON in
``benchmarks/results/``; only those blocks are rewritten, so the prose around them
is kept. A block whose JSON does not exist yet says ``(not measured yet)``. A
missing document (or block) is created (appended) with empty blocks.

The numbers live in the JSON, the words in the documents: rerun a benchmark, then
this report, and ``--check`` (run by ``tests/test_report.py``) says whether a
document still shows what its JSON holds.

Each benchmark owns its blocks and the targets it checks: it exposes ``BLOCKS``
(block name -> results folder -> markdown) and, for the two cross-benchmark
tables, ``TARGET_ROWS`` and ``HEADLINE_ROWS`` (see ``_report_util.py``). This
script only stitches them: which documents hold which blocks, in which order,
and the order of the targets and headline rows.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"
FRONT_PAGE = ROOT / "README.md"
RESULTS_MD = ROOT / "docs" / "results.md"

sys.path.insert(0, str(HERE))  # the benchmarks render their own blocks
import bench_cnn  # noqa: E402
import bench_conv_population  # noqa: E402
import bench_data  # noqa: E402
import bench_find  # noqa: E402
import bench_population  # noqa: E402
import bench_predict  # noqa: E402
import bench_range_test_sources  # noqa: E402
import bench_train  # noqa: E402
import cnn_results  # noqa: E402
import finder_quality  # noqa: E402
import recipe_quality  # noqa: E402
import short_budget  # noqa: E402
import suite  # noqa: E402
import sweep_quality  # noqa: E402
import train_results  # noqa: E402
from _report_util import NOT_MEASURED, md_table  # noqa: E402

# The benchmarks whose blocks and rows the documents show. Each renders its own
# markdown from the JSON it writes (see _report_util.py for the interface).
BENCHMARKS = (
    bench_find,
    bench_range_test_sources,
    bench_cnn,
    sweep_quality,
    bench_train,
    train_results,
    cnn_results,
    finder_quality,
    bench_population,
    bench_conv_population,
    suite,
    bench_data,
    recipe_quality,
    short_budget,
    bench_predict,
)


def _collect(attr: str) -> dict[str, tuple[str, Callable]]:
    """Every benchmark's ``attr`` dict, merged: name -> (its file, the function)."""
    out: dict[str, tuple[str, Callable]] = {}
    for bench in BENCHMARKS:
        file = f"`{Path(bench.__file__).name}`"
        for name, fn in getattr(bench, attr, {}).items():
            if name in out:
                raise ValueError(f"{attr} {name!r}: in {out[name][0]} and {file}")
            out[name] = (file, fn)
    return out


TARGET_ROWS = _collect("TARGET_ROWS")
HEADLINE_ROWS = _collect("HEADLINE_ROWS")

# docs/results.md's targets table: the benchmarks' TARGET_ROWS groups, in order.
TARGETS_TABLE = (
    "find",
    "sgd_divergence",
    "train_bench",
    "train_results",
    "finder_quality",
    "population",
    "cnn_results",
    "cnn",
    "sweep",
    "suite",
)
# The front page's headline table: the benchmarks' HEADLINE_ROWS groups, in
# order, each with the detailed section its rows link to.
_BENCH = "benchmarks/README.md#"
_DOCS = "docs/results.md#"
HEADLINE_TABLE = {
    "find": f"[bench_find]({_BENCH}range-test-seed-recipe-bench_findpy)",
    "range_test_sources": f"[sources]({_BENCH}data-sources-and-model-forms-"
    "bench_range_test_sourcespy)",
    "finder_quality": f"[results]({_DOCS}finder-quality-regret-of-each-suggestion)",
    "train_results": f"[results]({_DOCS}training-the-mlp-on-fashion-mnist)",
    "cnn_results": f"[results]({_DOCS}training-the-batchnorm-cnn)",
    "cnn": f"[bench_cnn]({_BENCH}cnn-on-xlacpu-bench_cnnpy)",
    "sweep": f"[sweep_quality]({_BENCH}range-test-over-weight-decay-in-one-program-"
    "sweep_qualitypy)",
    "conv_population": f"[results]({_DOCS}a-population-of-cnns-vmap-unroll-or-map)",
}
if set(TARGETS_TABLE) != set(TARGET_ROWS) or set(HEADLINE_TABLE) != set(HEADLINE_ROWS):
    raise ValueError("each benchmark's row group belongs in one of the tables")


def targets(results: Path) -> str:
    """One row per target: what was measured, met or not, by which benchmark."""
    rows = []
    for group in TARGETS_TABLE:
        source, rows_of = TARGET_ROWS[group]
        rows += [
            [target, measured or NOT_MEASURED, met or "-", source]
            for target, measured, met in rows_of(results)
        ]
    return md_table(["target", "measured", "met?", "benchmark"], rows)


def headline(results: Path) -> str:
    """The front page's table: one number per benchmark, linked to its section."""
    rows = []
    for group, link in HEADLINE_TABLE.items():
        rows += [
            [what, measured or NOT_MEASURED, link]
            for what, measured in HEADLINE_ROWS[group][1](results)
        ]
    return md_table(["what", "measured", "where"], rows)


BLOCKS: dict[str, Callable[[Path], str]] = {
    **{name: block for name, (_, block) in _collect("BLOCKS").items()},
    "targets": targets,
    "headline": headline,
}
# Each document and its blocks, in the order a new document lists them.
DOCUMENTS: dict[Path, tuple[str, ...]] = {
    FRONT_PAGE: ("headline",),
    README: (
        "find",
        "range_test_sources",
        "cnn",
        "cnn_results",
        "sweep_mlp_adamw",
        "sweep_cnn",
    ),
    RESULTS_MD: (
        "targets",
        "find",
        "train_setup",
        "train_results",
        "train_variants",
        "train_default",
        "train_peak",
        "train_snapshots",
        "train_knee",
        "train_ceiling",
        "train_bench",
        "cnn_results",
        "ensembles",
        "predict",
        "recipe_quality",
        "short_budget",
        "finder_quality",
        "finder_quality_validation",
        "finder_quality_heldout",
        "finder_quality_cnn",
        "finder_quality_cnn_b64",
        "finder_quality_cnn_adam",
        "finder_noise",
        "finder_rules",
        "finder_knee_scan",
        "knee_default",
        "finder_refit",
        "population",
        "conv_population",
        "suite",
        "data",
    ),
}


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN report:{name} -->", f"<!-- END report:{name} -->"


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with block ``name`` holding ``body`` (appended when absent)."""
    begin, end = _markers(name)
    if begin not in text:
        text = text.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    block = f"{begin}\n{body}\n{end}"
    return re.sub(pattern, lambda _m: block, text, count=1, flags=re.S)


def block_text(text: str, name: str) -> str | None:
    """What block ``name`` holds in ``text`` (None when absent)."""
    begin, end = _markers(name)
    m = re.search(re.escape(begin) + "\n?(.*?)\n?" + re.escape(end), text, re.S)
    return None if m is None else m.group(1)


def render(path: Path, names: tuple[str, ...], results: Path = RESULTS) -> str:
    """The document at ``path`` with every block regenerated from ``results``."""
    text = path.read_text() if path.exists() else f"# {path.stem}\n"
    for name in names:
        text = replace_block(text, name, BLOCKS[name](results))
    return text


def check(
    results: Path = RESULTS, documents: dict[Path, tuple[str, ...]] | None = None
) -> list[str]:
    """One line per block that regenerating would change (empty: up to date)."""
    out = []
    for path, names in (documents or DOCUMENTS).items():
        old = path.read_text() if path.exists() else ""
        new = render(path, names, results)
        if new == old:
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        changed = [n for n in names if block_text(old, n) != block_text(new, n)]
        out += [f"{where}: block {n} differs" for n in changed] or [
            f"{where}: differs outside the blocks"
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if regenerating would change a document",
    )
    p.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the results JSON folder (default benchmarks/results)",
    )
    args = p.parse_args(argv)
    if args.check:
        stale = check(args.results)
        for line in stale:
            print(line)
        if stale:
            print("run: python benchmarks/report.py")
        return 1 if stale else 0
    for path, names in DOCUMENTS.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(path, names, args.results))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
