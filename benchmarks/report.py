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
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"
FRONT_PAGE = ROOT / "README.md"
RESULTS_MD = ROOT / "docs" / "results.md"

sys.path.insert(0, str(HERE))  # the benchmarks' own table functions
import bench_cnn  # noqa: E402
import bench_find  # noqa: E402
import bench_range_test_sources  # noqa: E402
import bench_train  # noqa: E402
import cnn_results  # noqa: E402
import finder_quality  # noqa: E402
import recipe_quality  # noqa: E402
import short_budget  # noqa: E402
import sweep_quality  # noqa: E402
import train_results  # noqa: E402
from _report_util import (  # noqa: E402
    NOT_MEASURED,
    fmt,
    json_block,
    load_result,
    md_table,
    yes,
)

from lrjax.suggestions import DEFAULT_METHOD, METHODS  # noqa: E402

# The targets: specifications, not measurements (a target that a
# benchmark writes into its JSON is read from there instead).
TARGETS = {
    "whole_process_s": 3.5,  # python -m lrjax.find, warm caches
    "seeds_8_vs_1_cpu": 4.5,  # 8 seeds against 1 on this CPU
    "sgd_divergence_lr": (0.4, 0.7),  # where SGD diverges on Fashion-MNIST
    "regret_pp": 0.5,  # the default suggestion, in every setting
    "spread": 2.0,  # max / min of the per-seed suggestions
    "population_vs_sequential": 0.8,  # 36 models against one after another
}
# Finder-quality files: name -> what the documents call that run.
FINDER_FILES = {
    "finder_quality_validation": "validation",
    "finder_quality_heldout": "held-out model",
    "finder_quality": "fit",
    "finder_quality_cnn": "CNN",
}


# --- benchmarks/README.md: speed ----------------------------------------------


# --- docs/results.md: where lrjax stands --------------------------------------


def _finder_docs(results: Path) -> dict[str, dict]:
    return {
        name: d
        for name in FINDER_FILES
        if (d := load_result(results, name)) is not None
    }


def targets(results: Path) -> str:
    """One row per target: what was measured, by which benchmark, met or not."""
    t = TARGETS
    rows: list[list[str]] = []

    def row(target: str, measured, met, source: str) -> None:
        """``measured`` and ``met`` are falsy (None, {}, []) without a JSON."""
        rows.append([target, measured or NOT_MEASURED, met or "-", source])

    def add(group: str) -> None:
        source, rows_of = TARGET_ROWS[group]
        for target, measured, met in rows_of(results):
            row(target, measured, met, source)

    add("find")
    lo, hi = t["sgd_divergence_lr"]
    divs = [
        x
        for d in _finder_docs(results).values()
        if d.get("model", "mlp") == "mlp"
        for r in d["results"]
        if r["optimizer"] == "sgd" and r["batch_size"] == 32
        for x in r["range_test"]["diverged_at_lr"]
        if x is not None
    ]
    med = float(np.median(divs)) if divs else None
    row(
        f"SGD (batch 32) diverges around {lo}-{hi} on Fashion-MNIST",
        divs
        and f"{min(divs):.2f}-{max(divs):.2f}, median {med:.2f}, over {len(divs)} "
        "range-test seeds",
        divs and yes(lo <= med <= hi) + " (median)",
        "`finder_quality.py`",
    )
    add("train_bench")
    add("train_results")
    for name, label in FINDER_FILES.items():
        d = load_result(results, name)
        s = d and d["summary"][DEFAULT_METHOD]
        if d:
            worst_any = max(
                e["worst_regret_pp"] for e in _by_epoch(d)[DEFAULT_METHOD].values()
            )
            measured = (
                f"`{DEFAULT_METHOD}`: {s['worst_regret_pp']:.2f} pp at the median "
                f"suggestion, {s['worst_seed_regret_pp']:.2f} pp at one seed's, "
                f"spread x{s['worst_spread_factor']:.2f}; {len(d['results'])} "
                f"settings, {d['config']['epochs']}-epoch grids ("
                f"{worst_any:.2f} pp at the worst grid epoch)"
            )
            met = yes(
                s["worst_regret_pp"] <= t["regret_pp"]
                and s["worst_spread_factor"] <= t["spread"]
            )
        row(
            f"default suggestion: regret <= {t['regret_pp']} pp in every setting, "
            f"spread <= {t['spread']}x ({label} run)",
            d and measured,
            d and met,
            "`finder_quality.py`",
        )
    p = load_result(results, "population")
    if p:
        spread = min(
            (r for r in p["runs"] if r["variant"] != "sequential"),
            key=lambda r: r["vs_sequential"],
        )
    row(
        f"population of 36 models at most {t['population_vs_sequential']}x "
        "sequential (CPU)",
        p
        and f"{spread['vs_sequential']:.2f}x ({spread['variant']}, {spread['device']})",
        p and yes(spread["vs_sequential"] <= t["population_vs_sequential"]),
        "`bench_population.py`",
    )
    add("cnn_results")
    add("cnn")
    add("sweep")
    gpu = load_result(results, "suite_gpu")
    ref = gpu or load_result(results, "suite_cpu")
    for key, what, one in (
        ("seeds_8_vs_1", "8 seeds", "one seed"),
        ("population_36_vs_1", "36 models", "one model"),
    ):
        g = gpu and gpu["targets"][key]
        target = ref["targets"][key]["target"] if ref else None
        row(
            f"GPU: {what} "
            + ("against " if target is None else f"at most {target:g}x ")
            + one,
            g and f"{g['measured']:.2f}x ({gpu['device']})",
            g and yes(g["met"]),
            "`suite.py`",
        )
    return md_table(["target", "measured", "met?", "benchmark"], rows)


# --- docs/results.md: training ------------------------------------------------


# --- docs/results.md: finder quality ------------------------------------------


def _finder_methods(d: dict) -> list[str]:
    return [m for m in METHODS if m in d["results"][0]["methods"]]


def _by_epoch(d: dict) -> dict:
    """Per method and grid epoch, the worst regrets (computed if not stored)."""
    return d.get("by_epoch") or finder_quality.by_epoch(d["results"])


def _worst_by_epoch(d: dict) -> str:
    by_epoch = _by_epoch(d)
    epochs = list(by_epoch[DEFAULT_METHOD])
    rows = []
    for m in _finder_methods(d):
        bold = "**{}**" if m == DEFAULT_METHOD else "{}"
        cells = [
            bold.format(f"{e['worst_regret_pp']:.2f} / {e['worst_seed_regret_pp']:.2f}")
            for e in by_epoch[m].values()
        ]
        spread = max(r["methods"][m]["spread_factor"] for r in d["results"])
        rows.append([m, *cells, f"{spread:.2f}"])
    header = ["method", *(e.replace("epoch", "epoch ") for e in epochs)]
    return md_table([*header, "worst spread x"], rows)


def finder_block(name: str) -> Callable[[Path], str]:
    def block(results: Path) -> str:
        d = load_result(results, name)
        if d is None:
            return NOT_MEASURED
        cfg, res = d["config"], d["results"]
        sweeps = {
            r["optimizer"]: "..".join(f"{x:g}" for x in r["range_test"]["sweep"])
            for r in res
        }
        n_lrs = [len(r["grid"]["lrs"]) for r in res]
        head = (
            f"`{d['command']}` ({d['description']}; model `{d.get('model', 'mlp')}`"
            f"): {len(res)} settings; range tests of {cfg['range_seeds']} seeds "
            f"(sweeps {', '.join(f'{k} {v}' for k, v in sweeps.items())}); grids of "
            f"{min(n_lrs)}-{max(n_lrs)} lrs x {cfg['grid_seeds']} seeds x "
            f"{cfg['epochs']} epochs, seed {cfg['seed']}; "
            f"{d['total_s'] / 60:.0f} min on {res[0]['device']}."
        )
        return "\n\n".join(
            [
                head,
                finder_quality.pivot(res, _finder_methods(d)),
                "Worst over settings of the regret at the median suggestion / at "
                "any seed's own suggestion, at each epoch of the grid (pp):",
                _worst_by_epoch(d),
            ]
        )

    return block


def finder_noise(results: Path) -> str:
    """The standard error of the grid's mean over seeds at its best lr."""
    lines = []
    for name, d in _finder_docs(results).items():
        se = []
        for r in d["results"]:
            acc = np.asarray(r["grid"]["val_accuracy"], np.float64)  # [lr, seed, ep]
            last = acc[:, :, -1]
            best = int(np.argmax(last.mean(1)))
            se.append(100 * last[best].std(ddof=1) / np.sqrt(last.shape[1]))
        lines.append(
            f"- {FINDER_FILES[name]} (`{name}.json`, {d['config']['grid_seeds']} "
            f"seeds): {min(se):.2f}-{max(se):.2f} pp;"
        )
    if not lines:
        return NOT_MEASURED
    return "\n".join(lines).rstrip(";") + "."


RULES = ("vd@0.5", "vd@0.55", "vd@0.6", "vd@0.65", "div/8", "div/10", "div/16",
         "min*2", "min*3")  # fmt: skip


def finder_rules(d: dict) -> str:
    scan = d["rule_scan"]
    head = [f"{r['optimizer']} b{r['batch_size']}" for r in d["results"]]
    rows = [
        [
            name,
            f"{s['worst_regret_pp']:.2f}",
            f"{s['worst_seed_regret_pp']:.2f}",
            f"{s['worst_spread_factor']:.2f}",
            *(fmt(x, ".2f") for x in s["regret_pp"]),
        ]
        for name in RULES
        if (s := scan.get(name)) is not None
    ]
    best = min(
        (n for n in scan if scan[n]["worst_regret_pp"] is not None),
        key=lambda n: scan[n]["worst_regret_pp"],
    )
    out = md_table(
        [
            "rule",
            "worst regret pp",
            "worst per-seed regret pp",
            "worst spread x",
            *head,
        ],
        rows,
    )
    return out + (
        f"\n\nThe lowest worst-case regret of all {len(scan)} rules scanned: "
        f"{scan[best]['worst_regret_pp']:.2f} pp (`{best}`)."
    )


def _knee_name(descent: float, toward: float) -> str:
    return f"knee{descent:g}@{toward:g}"


def finder_knee_scan(results: Path) -> str:
    """Each (descent, toward) pair of the knee rule: worst regret over settings."""
    from lrjax.suggestions import KNEE_DESCENT, KNEE_TOWARD_DIVERGENCE

    parts = []
    for name, d in _finder_docs(results).items():
        scan = d.get("knee_scan")
        if not scan:
            continue
        last = f"epoch{d['config']['epochs']}"
        rows = []
        for descent in finder_quality.KNEE_DESCENTS:
            cells = []
            for toward in finder_quality.KNEE_TOWARDS:
                e = scan.get(_knee_name(descent, toward))
                if e is None:
                    cells.append("-")
                    continue
                cell = (
                    f"{e[last]['worst_regret_pp']:.2f} / "
                    f"{e[last]['worst_seed_regret_pp']:.2f} "
                    f"({max(x['worst_regret_pp'] for x in e.values()):.2f})"
                )
                chosen = (descent, toward) == (KNEE_DESCENT, KNEE_TOWARD_DIVERGENCE)
                cells.append(f"**{cell}**" if chosen else cell)
            rows.append([f"{descent:g}", *cells])
        parts.append(
            f"{FINDER_FILES[name]} (`{name}.json`, grid epoch "
            f"{d['config']['epochs']}):\n\n"
            + md_table(
                ["descent \\ toward", *(f"{a:g}" for a in finder_quality.KNEE_TOWARDS)],
                rows,
            )
        )
    return "\n\n".join(parts) or NOT_MEASURED


def knee_default(results: Path) -> str:
    """Where the default method is worst, and how the grid's optimum moves."""
    lines = []
    for name, d in _finder_docs(results).items():
        res = d["results"]
        worst = max(res, key=lambda r: r["methods"][DEFAULT_METHOD]["regret_pp"])
        k = worst["methods"][DEFAULT_METHOD]
        b = {r["optimizer"] + f" b{r['batch_size']}": r["methods"]["balanced"]
             for r in res}  # fmt: skip
        bw = max(b, key=lambda s: b[s]["regret_pp"])
        by_epoch = _by_epoch(d)[DEFAULT_METHOD]
        moved = [
            f"{r['optimizer']} b{r['batch_size']} {r['grid']['best_lr_epoch1']:.2g} "
            f"-> {r['grid']['best_lr']:.2g}"
            for r in res
            if r["grid"]["best_lr_epoch1"] != r["grid"]["best_lr"]
        ]
        lines.append(
            f"- {FINDER_FILES[name]}: `{DEFAULT_METHOD}` worst at "
            f"{worst['optimizer']} b{worst['batch_size']} ({k['regret_pp']:.2f} pp "
            f"at the median, {k['regret_pp_max']:.2f} pp at one seed's); by grid "
            f"epoch "
            + ", ".join(
                f"{e.replace('epoch', '')}: {v['worst_regret_pp']:.2f}"
                for e, v in by_epoch.items()
            )
            + f" pp; `balanced` worst at {bw} ({b[bw]['regret_pp']:.2f} pp); "
            f"grid best lr after epoch 1 -> after the last: "
            f"{'; '.join(moved) or 'unchanged'};"
        )
    if not lines:
        return NOT_MEASURED
    return "\n".join(lines).rstrip(";") + "."


# --- docs/results.md: population, suite, data ----------------------------------


def population(results: Path) -> str:
    d = load_result(results, "population")
    if d is None:
        return NOT_MEASURED
    rows = [
        [
            r["variant"],
            r["device"],
            f"{r['compile_s']:.2f}",
            f"{r['run_s']:.1f}",
            f"{r['vs_sequential']:.2f}x",
            f"{r['load_avg_1min_before']:.1f}",
        ]
        for r in d["runs"]
    ]
    out = md_table(
        ["variant", "device", "compile s", "run s", "vs sequential", "load avg before"],
        rows,
    )
    out += f"\n\n{d['description']}; `{d['command'].strip()}`; target: {d['target']}."
    mem = next((r["memory"] for r in d["runs"] if "memory" in r), None)
    if mem:
        out += (
            f"\n\nMemory (params + optimizer state, SGD): {mem['members']} members "
            f"hold {mem['state_bytes']:,} bytes ({mem['state_bytes'] / 2**20:.1f} "
            f"MiB), {mem['member_bytes']:,} bytes a member."
        )
    per_opt = {}
    for f in _finder_docs(results).values():
        if f.get("model", "mlp") != "mlp" or f["config"].get("hidden") not in (
            None,
            [300, 100],
        ):
            continue
        for r in f["results"]:
            per_opt.setdefault(r["optimizer"], r["grid"]["memory"]["member_bytes"])
    if per_opt:
        out += (
            " A member of the same MLP in the finder-quality grids: "
            + ", ".join(f"{k} {v:,} bytes" for k, v in sorted(per_opt.items()))
            + "."
        )
    return out


# bench_conv_population.py's variants, in the order of its table.
CONV_POPULATION = ("vmap x1", "unroll x1", "map x1", "vmap x2", "unroll x2")


def conv_population(d: dict) -> str:
    """Per member, a population's update against one model's, for each model."""
    runs, per = d["runs"], d["per_member_vs_single"]
    hows = [h for h in CONV_POPULATION if any(h in v for v in per.values())]
    rows, fastest = [], []
    for name, v in per.items():
        m = runs["devices1"]["models"][name]
        rows.append(
            [
                f"{name} (batch {m['batch']}, {m['loop']})",
                fmt(m["ms_per_update"]["single"]),
                *(fmt(v.get(h), ".2f") + ("x" if h in v else "") for h in hows),
            ]
        )
        one = [h for h in v if h.endswith("x1")]
        if one:
            best = min(one, key=v.get)
            fastest.append(f"{name} `{best.split()[0]}` ({v[best]:.2f}x)")
    out = md_table(
        ["model", "single: ms/update", *(f"{h} per member" for h in hows)], rows
    )
    load = ", ".join(
        f"{r['device']} {r['load_avg_1min_before']:.1f}" for r in runs.values()
    )
    r1 = runs["devices1"]
    return out + (
        f"\n\n{d['members']} members; per member: the population's time per update "
        f"/ {d['members']} / one model's (single) on one device, so 1.00x means a "
        "member costs what it costs alone; x1: on one device, x2: the members sharded "
        "over 2 XLA host devices. Fastest on one device: " + "; ".join(fastest) + "."
        f"\n\n`{d['command'].strip()}` on {r1['device']}, {d['cpu_count']} cores, "
        f"jax {r1['jax']}; load average before: {load}."
    )


def suite(results: Path) -> str:
    parts = []
    for backend in ("cpu", "gpu"):
        d = load_result(results, f"suite_{backend}")
        if d is None:
            parts.append(f"`suite_{backend}.json`: {NOT_MEASURED}")
            continue
        rows = []
        for section, ratios in (
            ("range_test", ("vs_floor", "seeds_vs_1")),
            ("population", ("population_vs_1",)),
            ("train", ("vs_floor",)),
            ("cnn", ("vs_floor",)),
        ):
            s = d.get(section)
            if s is None:
                continue
            for r in ratios:
                rows.append([section, r, f"{s[r]:.3f}x", f"{s['section_s']:.0f}"])
        out = md_table(["section", "ratio", "measured", "section s"], rows)
        t = [
            [k, f"{v['measured']:.3f}", f"{v['target']:g}", yes(v["met"])]
            for k, v in d["targets"].items()
        ]
        out += "\n\n" + md_table(["target", "measured", "target", "met?"], t)
        g = d.get("gpu_estimate")
        out += (
            f"\n\n`suite_{backend}.json`: `python benchmarks/suite.py "
            f"{' '.join(d['argv'])}` on {d['device']}, {d['cpu_count']} cores, jax "
            f"{d['jax']}; {d['wall_s']:.0f} s wall"
            + (
                f"; estimated {g['total_s']:.0f} s on one GPU ({g['model']})"
                if g
                else ""
            )
            + "."
        )
        parts.append(out)
    return "\n\n".join(parts)


def data(d: dict) -> str:
    rows = [
        ["cold (gunzip, validate, hash, write cache)", d["cold_s_median"]],
        ["warm, same process", d["warm_s_median"]],
        [
            "warm, new process (a second run of a script)",
            d["warm_new_process_s_median"],
        ],
    ]
    m = d["machine"]
    return md_table(["load", "time"], [[w, f"{1000 * s:.0f} ms"] for w, s in rows]) + (
        f"\n\nMedians of {d['repeats']}; {d['dataset']} from `{d['source_dir']}`, "
        f"a cache file of {d['cache_file_bytes'] / 1e6:.0f} MB; {m['processor']}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, numpy {m['numpy']}."
    )


# --- README.md: the headline numbers ------------------------------------------

# The detailed sections the headline rows link to.
_BENCH = "benchmarks/README.md#"
_DOCS = "docs/results.md#"
HEADLINE_LINKS = {
    "find": f"[bench_find]({_BENCH}range-test-seed-recipe-bench_findpy)",
    "range_test_sources": f"[sources]({_BENCH}data-sources-and-model-forms-"
    "bench_range_test_sourcespy)",
    "finder": f"[results]({_DOCS}finder-quality-regret-of-each-suggestion)",
    "train_results": f"[results]({_DOCS}training-the-mlp-on-fashion-mnist)",
    "cnn_results": f"[results]({_DOCS}training-the-batchnorm-cnn)",
    "cnn": f"[bench_cnn]({_BENCH}cnn-on-xlacpu-bench_cnnpy)",
    "sweep": f"[sweep_quality]({_BENCH}range-test-over-weight-decay-in-one-program-"
    "sweep_qualitypy)",
    "conv_population": f"[results]({_DOCS}a-population-of-cnns-vmap-unroll-or-map)",
}


def headline(results: Path) -> str:
    """The front page's table: one number per benchmark, linked to its section."""
    rows: list[list[str]] = []

    def row(what: str, measured: str | None, link: str) -> None:
        rows.append([what, measured or NOT_MEASURED, HEADLINE_LINKS[link]])

    def add(group: str) -> None:
        for what, measured in HEADLINE_ROWS[group][1](results):
            row(what, measured, group)

    add("find")
    add("range_test_sources")
    v = load_result(results, "finder_quality_validation")
    row(
        f"default suggestion (`{DEFAULT_METHOD}`): regret vs a vmapped lr grid"
        + (f", {len(v['results'])} fresh settings" if v else ""),
        v and f"<= {v['summary'][DEFAULT_METHOD]['worst_regret_pp']:.2f} pp",
        "finder",
    )
    add("train_results")
    add("cnn_results")
    add("cnn")
    add("sweep")
    p = load_result(results, "conv_population")
    per = (p and p["per_member_vs_single"].get("cnn")) or {}
    row(
        "CNN population, members unrolled vs vmapped (CPU, 1 device)",
        "unroll x1" in per
        and "vmap x1" in per
        and f"per member {per['unroll x1']:.2f}x (unroll) / {per['vmap x1']:.2f}x "
        "(vmap) one model's time",
        "conv_population",
    )
    return md_table(["what", "measured", "where"], rows)


# --- the documents ------------------------------------------------------------

# The benchmarks whose blocks and rows the documents show.
BENCHMARKS = (
    bench_find,
    bench_range_test_sources,
    bench_cnn,
    sweep_quality,
    bench_train,
    train_results,
    cnn_results,
)


def _groups(attr: str) -> dict[str, tuple[str, Callable]]:
    """Every benchmark's row groups ``attr``: name -> (its file, rows(results))."""
    out: dict[str, tuple[str, Callable]] = {}
    for bench in BENCHMARKS:
        for name, rows in getattr(bench, attr, {}).items():
            assert name not in out, f"two benchmarks give {attr} {name!r}"
            out[name] = (f"`{Path(bench.__file__).name}`", rows)
    return out


TARGET_ROWS = _groups("TARGET_ROWS")
HEADLINE_ROWS = _groups("HEADLINE_ROWS")

BLOCKS: dict[str, Callable[[Path], str]] = {
    **{name: b for bench in BENCHMARKS for name, b in bench.BLOCKS.items()},
    "targets": targets,
    **{name: finder_block(name) for name in FINDER_FILES},
    "finder_noise": finder_noise,
    "finder_rules": json_block("finder_quality", finder_rules),
    "finder_knee_scan": finder_knee_scan,
    "knee_default": knee_default,
    "population": population,
    "conv_population": json_block("conv_population", conv_population),
    "suite": suite,
    "data": json_block("data", data),
    "headline": headline,
    "recipe_quality": recipe_quality.markdown,
    "short_budget": short_budget.markdown,
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
        "recipe_quality",
        "short_budget",
        "finder_quality",
        "finder_quality_validation",
        "finder_quality_heldout",
        "finder_quality_cnn",
        "finder_noise",
        "finder_rules",
        "finder_knee_scan",
        "knee_default",
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
