"""How good is the recommended recipe? Regret against a (family x peak) grid.

For one setting (model, optimizer, batch size, weight decay, training budget in
epochs, on Fashion-MNIST: 55000 training / 5000 validation images) this runs

1. the range test exactly as ``lrjax-train --lr auto`` runs it (the same sweep,
   batch size and optimizer), with ``--range-seeds`` seeds, for every method's
   per-seed suggestion;
2. a recipe grid (``lrjax.recipe_grid``): every schedule family of
   ``lrjax.recipes.FAMILIES`` x log-spaced peaks x ``--grid-seeds`` seeds, at
   the full budget, each member shaped by ``lrjax.recipes.build_schedule`` as
   ``lrjax-train --schedule FAMILY`` shapes it, in one program;
3. optionally (``--train-seeds``) the recommended recipe itself, ``python -m
   lrjax.train --lr auto --schedule auto`` with the same flags, per seed.

Recipe regret (pp) = the best grid cell (final validation accuracy, mean over
seeds) minus the grid's accuracy at the recommended (family, peak),
interpolated in log lr within that family. Written after every stage to
``--out``. ``--fit A.json B.json ...`` instead refits the peak rules
(``lrjax.recipes.PEAK_RULES``: a multiple of one suggestion, falling with the
budget as ``(1000 / updates) ** exponent``) and the auto family on those
settings' stored grids and suggestions, and scores every candidate on them (no
training).

    python benchmarks/recipe_quality.py --model mlp --optimizer sgd --batch-size 32 \\
        --epochs 10 --out benchmarks/results/recipe_mlp_sgd_e10.json
    python benchmarks/recipe_quality.py --fit benchmarks/results/recipe_*.json \\
        --fit-out benchmarks/results/recipe_fit.json
    python benchmarks/recipe_quality.py --rescore benchmarks/results/recipe_*.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # _report_util

from _report_util import NOT_MEASURED  # noqa: E402

from lrjax.cli import optimizer_factory, setup_jax, write_atomic  # noqa: E402

FACTORS = tuple(round(2 ** (k / 2), 3) for k in range(-4, 9))  # 0.25 .. 16
# How fast a rule's multiple falls with the budget: (1000 / updates) ** exponent.
EXPONENTS = tuple(round(0.1 * k, 1) for k in range(9))  # 0 (none) .. 0.8


def regret_at(grid: dict, best: float, peak: float | None) -> float | None:
    """pp below ``best`` at ``peak`` on one family's stored grid; None outside."""
    import numpy as np

    lrs = np.asarray(grid["lrs"], np.float64)
    if peak is None or not (lrs[0] * (1 - 1e-9) <= peak <= lrs[-1] * (1 + 1e-9)):
        return None
    acc = np.asarray(grid["final_accuracy_mean"], np.float64)
    return 100 * (best - float(np.interp(math.log(peak), np.log(lrs), acc)))


def best_cell(doc: dict) -> float:
    return max(max(g["final_accuracy_mean"]) for g in doc["grids"].values())


def score_rules(doc: dict, rules: dict) -> dict:
    """Regret of each family's rule (an ``lrjax.recipes.PeakRule`` or its
    ``(method, factor[, budget_exponent])``) at the grid's budget, at the median
    suggestion and at each range-test seed's suggestion; ``factor`` in the
    result is the rule's multiple at that budget."""
    import numpy as np

    from lrjax._src.recipes import PeakRule

    best = best_cell(doc)
    out = {}
    for family, r in rules.items():
        rule = PeakRule(*r)
        method, factor = rule.method, rule.multiple(doc["grid"]["total_steps"])
        per_seed = doc["range_test"]["per_method"].get(method) or []
        median = doc["range_test"]["suggestions"].get(method)
        grid = doc["grids"][family]
        seeds = [
            regret_at(grid, best, None if v is None else factor * v) for v in per_seed
        ]
        known = [r for r in seeds if r is not None]
        out[family] = {
            "method": method,
            "factor": factor,
            "rule_factor": rule.factor,
            "budget_exponent": rule.budget_exponent,
            "peak": None if median is None else factor * median,
            "regret_pp": regret_at(
                grid, best, None if median is None else factor * median
            ),
            "regret_per_seed_pp": seeds,
            "regret_seed_max_pp": max(known)
            if known and len(known) == len(seeds)
            else None,
            "regret_seed_mean_pp": float(np.mean(known)) if known else None,
        }
    return out


def load_setting(args):
    """The setting's model factory, optimizer factory and (train, val) arrays."""
    from flax import nnx

    from lrjax._src.batches import scale_images
    from lrjax._src.data import load_dataset
    from lrjax._src.models import cnn, mlp

    ds = load_dataset("fashion_mnist")
    n = args.n_train or len(ds.y_train)
    nv = args.n_val or len(ds.y_val)
    in_size = math.prod(ds.x_train.shape[1:])

    def model(k):  # the uint8 images scaled in front, as lrjax-train builds it
        if args.model == "cnn":
            net = cnn(ds.num_classes, key=k, input_shape=ds.x_train.shape[1:])
        else:
            net = mlp(in_size, ds.num_classes, (300, 100), key=k)
        return nnx.Sequential(scale_images, net)

    opt = optimizer_factory(args.optimizer, args.weight_decay)
    return model, opt, (ds.x_train[:n], ds.y_train[:n]), (ds.x_val[:nv], ds.y_val[:nv])


def run_setting(args) -> dict:
    import jax
    import numpy as np

    from lrjax._src.range_test import lr_range_test
    from lrjax._src.recipes import FAMILIES
    from lrjax._src.specs import Population, Sweep

    model, opt, (x, y), (xv, yv) = load_setting(args)
    n, nv = len(y), len(yv)
    doc = {
        "description": "recipe regret against a (family x peak x seed) grid at the "
        "training budget (benchmarks/recipe_quality.py)",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "setting": {
            "model": args.model,
            "optimizer": args.optimizer,
            "batch_size": args.batch_size,
            "weight_decay": args.weight_decay,
            "epochs": args.epochs,
            "n_train": n,
            "n_val": nv,
        },
        "heldout": args.heldout,
    }
    out = Path(args.out)

    def save():
        write_atomic(out, json.dumps(doc, indent=1) + "\n")

    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    rt = lr_range_test(  # the range test lrjax-train --lr auto runs (its sweep)
        model,
        opt,
        (x, y),
        key=jax.random.fold_in(key, 2),
        sweep=Sweep(batch_size=args.batch_size),
        population=Population(seeds=args.range_seeds),
    )
    per_method = dict(rt.spread["per_method"]) if rt.spread else {}
    doc["range_test"] = {
        "seeds": args.range_seeds,
        "suggestions": rt.suggestions,
        "per_method": per_method,
        "diverged_at_lr": rt.diverged_at_lr,
        "steps_run": rt.steps_run,
        "wall_s": time.perf_counter() - t0,
    }
    save()
    knee = [v for v in per_method.get("knee", []) if v] or [rt.suggestions["knee"]]
    lo, hi = args.lo_mult * min(knee), args.hi_mult * max(knee)
    peaks = np.geomspace(lo, hi, args.peaks)
    steps = n // args.batch_size
    total = steps * args.epochs
    print(
        f"range test {doc['range_test']['wall_s']:.1f}s, knee {knee}; grid "
        f"{len(FAMILIES)} families x {len(peaks)} peaks {lo:.3g}..{hi:.3g} x "
        f"{args.grid_seeds} seeds x {args.epochs} epochs ({total} updates)",
        flush=True,
    )
    t0 = time.perf_counter()
    doc["grids"], timings, device = run_grid(
        args, model, opt, (x, y), (xv, yv), peaks, total, key
    )
    doc["grid"] = {
        "families": list(FAMILIES),
        "peaks": peaks.tolist(),
        "seeds": args.grid_seeds,
        "epochs": args.epochs,
        "total_steps": total,
        "wall_s": time.perf_counter() - t0,
        "timings": timings,
        "device": device,
    }
    doc["best"] = best_of(doc)
    rescore(doc)
    save()
    print(report(doc), flush=True)
    if args.train_seeds:
        doc["train"] = train_recipe(args, doc)
        save()
        print(report(doc), flush=True)
    return doc


def family_summary(lrs, val) -> dict:
    """One family's stored grid: ``val`` is ``[peaks][seeds]`` final val accuracy."""
    import numpy as np

    lrs, val = np.asarray(lrs, np.float64), np.asarray(val, np.float64)
    mean = val.mean(axis=1)
    i = int(np.argmax(mean))
    seeds = val.shape[1]
    return {
        "lrs": lrs.tolist(),
        "final_accuracy_mean": mean.tolist(),
        "val_accuracy": val.tolist(),
        "best_lr": float(lrs[i]),
        "best_accuracy": float(mean[i]),
        # the grid's noise: standard error over seeds at the family's best
        "best_stderr_pp": float(100 * np.std(val[i]) / math.sqrt(seeds - 1))
        if seeds > 1
        else None,
    }


def best_of(doc: dict) -> dict:
    family = max(doc["grids"], key=lambda f: doc["grids"][f]["best_accuracy"])
    return {
        "family": family,
        "lr": doc["grids"][family]["best_lr"],
        "accuracy": doc["grids"][family]["best_accuracy"],
    }


def run_grid(args, model, opt, train, val, peaks, total: int, key):
    """Every family x ``peaks`` x ``--grid-seeds`` in one program: ``({family:
    family_summary}, timings, device)`` of that program. The grid key
    is fixed (``fold_in(key, 1000)``): members of one seed share the
    initialisation and batch order at every peak, also across ``--extend`` runs."""
    import jax

    from lrjax._src.lr_grid import recipe_grid
    from lrjax._src.recipes import FAMILIES, unit_schedule
    from lrjax._src.specs import Execution, GridConfig, Population

    grids = recipe_grid(
        model,
        opt,
        train,
        val,
        lrs=peaks,
        families={f: unit_schedule(f, total) for f in FAMILIES},
        key=jax.random.fold_in(key, 1000),  # fresh inits and batch orders
        config=GridConfig(epochs=args.epochs, batch_size=args.batch_size),
        population=Population(seeds=args.grid_seeds),
        execution=Execution(progress=sys.stderr.isatty()),
    )
    first = next(iter(grids.values()))  # timings and device are the program's
    summaries = {
        f: family_summary(r.lrs, r.val_accuracy[:, :, -1]) for f, r in grids.items()
    }
    return summaries, first.timings.to_json(), first.device


def extend_setting(args) -> dict:
    """``--extend``: more peaks (``--lo-mult``..``--hi-mult`` x the stored knee) for
    the grid stored in ``--out``, merged into it and rescored; the range test
    and the stored cells are kept (same setting and seeds, checked)."""
    import jax
    import numpy as np

    out = Path(args.out)
    doc = json.loads(out.read_text())
    names = ("model", "optimizer", "batch_size", "weight_decay", "epochs")
    mine = tuple(getattr(args, k) for k in names)
    theirs = tuple(doc["setting"][k] for k in names)
    if mine != theirs or args.grid_seeds != doc["grid"]["seeds"]:
        raise SystemExit(
            f"--extend: {out} holds {theirs} x {doc['grid']['seeds']} seeds, "
            f"not {mine} x {args.grid_seeds} seeds"
        )
    model, opt, train, val = load_setting(args)
    per = doc["range_test"]["per_method"].get("knee") or []
    knee = [v for v in per if v] or [doc["range_test"]["suggestions"]["knee"]]
    old = np.asarray(doc["grid"]["peaks"])
    peaks = np.geomspace(args.lo_mult * min(knee), args.hi_mult * max(knee), args.peaks)
    peaks = np.array([p for p in peaks if not np.isclose(old, p, rtol=1e-6).any()])
    if not len(peaks):
        raise SystemExit("--extend: every requested peak is already in the grid")
    print(f"extending {out} by peaks {np.round(peaks, 5).tolist()}", flush=True)
    t0 = time.perf_counter()
    new, _, _ = run_grid(
        args, model, opt, train, val, peaks, doc["grid"]["total_steps"],
        jax.random.key(args.seed),
    )  # fmt: skip
    for f in doc["grids"]:
        lrs = doc["grids"][f]["lrs"] + new[f]["lrs"]
        vals = doc["grids"][f]["val_accuracy"] + new[f]["val_accuracy"]
        order = np.argsort(lrs)
        doc["grids"][f] = family_summary(
            np.asarray(lrs)[order], np.asarray(vals)[order]
        )
    doc["grid"]["peaks"] = sorted(doc["grid"]["peaks"] + peaks.tolist())
    doc["grid"]["wall_s"] += time.perf_counter() - t0
    doc["grid"].setdefault("extended_by", []).append(
        " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    )
    doc["best"] = best_of(doc)
    rescore(doc)
    write_atomic(out, json.dumps(doc, indent=1) + "\n")
    print(report(doc), flush=True)
    return doc


def kind_rules(doc: dict) -> dict:
    """Today's rules for the setting's optimizer kind: family -> PeakRule."""
    from lrjax._src.recipes import PEAK_RULES, optimizer_kind

    return PEAK_RULES[optimizer_kind(doc["setting"]["optimizer"])]


def kind_auto(doc: dict) -> str:
    """Today's auto family for the setting's optimizer kind."""
    from lrjax._src.recipes import AUTO_FAMILIES, optimizer_kind

    return AUTO_FAMILIES[optimizer_kind(doc["setting"]["optimizer"])]


def rescore(doc: dict) -> None:
    doc["rules"] = score_rules(doc, kind_rules(doc))
    auto = kind_auto(doc)
    doc["auto"] = {"family": auto, **doc["rules"][auto]}


def train_recipe(args, doc) -> dict:
    """The recommended recipe run as a user runs it: lrjax-train --lr auto."""
    auto = kind_auto(doc)
    runs = []
    for s in range(args.train_seeds):
        cmd = [
            sys.executable, "-m", "lrjax.train", "--model", args.model,
            "--optimizer", args.optimizer, "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--lr", "auto", "--schedule", "auto",
            "--seed", str(s), "--json", "--no-plot", "--force",
            "--logdir", f"/tmp/recipe_quality/{Path(args.out).stem}/seed{s}",
        ]  # fmt: skip
        if args.weight_decay is not None:
            cmd += ["--weight-decay", str(args.weight_decay)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if p.returncode:
            runs.append({"seed": s, "error": p.stderr[-2000:]})
            continue
        m = json.loads(p.stdout.strip().splitlines()[-1])
        peak = m["lr"]
        best = best_cell(doc)
        grid_regret = regret_at(doc["grids"][auto], best, peak)
        runs.append(
            {
                "seed": s,
                "peak_lr": peak,
                "schedule": m["schedule"],
                "val_accuracy": m["val_accuracy"],
                "test_accuracy": m["test_accuracy"],
                "grid_val_accuracy_at_peak": None
                if grid_regret is None
                else best - grid_regret / 100,
                "wall_s": time.perf_counter() - t0,
            }
        )
        print(f"train seed {s}: {runs[-1]}", flush=True)
    return {"family": auto, "runs": runs}


def report(doc: dict) -> str:
    s = doc["setting"]
    lines = [
        f"## {s['model']} {s['optimizer']} b{s['batch_size']} wd "
        f"{s['weight_decay']} {s['epochs']} epochs"
        + (" (held out)" if doc.get("heldout") else "")
    ]
    best = best_cell(doc)
    for f, g in doc["grids"].items():
        r = doc["rules"][f]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(
            f"{f:14s} best {100 * g['best_accuracy']:.2f}% at {g['best_lr']:.3g}; "
            f"rule {r['factor']:.4g} x {r['method']} -> {r['peak'] or 0:.3g}: regret "
            f"{fmt(r['regret_pp'])} pp (seeds max {fmt(r['regret_seed_max_pp'])})"
        )
    lines.append(f"best cell {100 * best:.2f}% ({doc['best']['family']})")
    for run in (doc.get("train") or {}).get("runs", []):
        if "error" in run:
            lines.append(f"train seed {run['seed']}: ERROR")
            continue
        lines.append(
            f"train seed {run['seed']}: peak {run['peak_lr']:.4g} val "
            f"{100 * run['val_accuracy']:.2f}% test {100 * run['test_accuracy']:.2f}%"
            f" (grid at that peak: "
            f"{100 * (run['grid_val_accuracy_at_peak'] or math.nan):.2f}%)"
        )
    return "\n".join(lines)


TARGET_REGRET_PP = 0.15  # issue #16: the recommended recipe, in every setting


def _setting_name(doc: dict) -> str:
    s = doc["setting"]
    wd = "" if s["weight_decay"] is None else f", wd {s['weight_decay']:g}"
    return (
        f"{s['model'].upper() if s['model'] == 'cnn' else 'MLP'} {s['optimizer']}, "
        f"batch {s['batch_size']}{wd}, {s['epochs']} "
        + ("epoch" if s["epochs"] == 1 else "epochs")
    )


def _edge(lr: float, peaks) -> str:
    """' (grid edge)' when ``lr`` is the lowest or highest peak of the grid: the
    best cell may lie outside it."""
    return " (grid edge)" if lr in (min(peaks), max(peaks)) else ""


def _pp(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(results: Path) -> str:
    """The tables of docs/results.md from every ``recipe_*.json`` in ``results``:
    the recommended recipe's regret per setting (target <= 0.15 pp), and each
    family's rule and regret. Rendered by benchmarks/report.py."""
    docs = []
    for path in sorted(results.glob("recipe_*.json")):
        doc = json.loads(path.read_text())
        if "grids" in doc:
            docs.append((path.name, doc))
    if not docs:
        return NOT_MEASURED
    head = (
        "| setting | grid (families x peaks x seeds, cost) | best cell | recipe "
        "(auto) | regret, median / worst seed | target <= "
        f"{TARGET_REGRET_PP} pp | grid noise | `lrjax-train --lr auto` runs |"
    )
    rows = [head, "|" + "---|" * 8]
    for name, d in docs:
        g, a, best = d["grid"], d["auto"], d["best"]
        regret = a["regret_pp"]
        met = (
            "-"
            if regret is None
            else ("met" if regret <= TARGET_REGRET_PP else "**missed**")
        )
        noise = [v["best_stderr_pp"] for v in d["grids"].values()]
        noise = [v for v in noise if v is not None]
        train = [r for r in (d.get("train") or {}).get("runs", []) if "error" not in r]
        runs = "; ".join(
            f"val {100 * r['val_accuracy']:.2f}% (grid "
            f"{100 * r['grid_val_accuracy_at_peak']:.2f}%)"
            if r.get("grid_val_accuracy_at_peak") is not None
            else f"val {100 * r['val_accuracy']:.2f}% (peak outside the grid)"
            for r in train
        )
        rows.append(
            f"| {_setting_name(d)}{' (held out)' if d.get('heldout') else ''} "
            f"(`{name}`) | {len(g['families'])} x {len(g['peaks'])} x {g['seeds']}, "
            f"{g['wall_s'] / 60:.0f} min | {best['family']} at {best['lr']:.3g}"
            f"{_edge(best['lr'], g['peaks'])}: {100 * best['accuracy']:.2f}% | "
            f"{a['family']}, {a['factor']:.3g} x "
            f"{a['method']} = {a['peak'] or 0:.3g} | {_pp(regret)} / "
            f"{_pp(a['regret_seed_max_pp'])} pp | {met} | "
            + (f"{max(noise):.2f} pp" if noise else "-")
            + f" | {runs or '-'} |"
        )
    fams = list(docs[0][1]["grids"])
    rows += [
        "",
        "Each family's rule and its regret (median suggestion; pp below the best cell "
        "of the whole grid):",
        "",
        "| setting | " + " | ".join(fams) + " |",
        "|---|" + "---|" * len(fams),
    ]
    for _name, d in docs:
        cells = []
        for f in fams:
            r = d["rules"][f]
            g = d["grids"][f]
            cells.append(
                f"{r['factor']:.3g} x {r['method']}: {_pp(r['regret_pp'])} "
                f"(best {100 * g['best_accuracy']:.2f}% at {g['best_lr']:.3g})"
            )
        rows.append(f"| {_setting_name(d)} | " + " | ".join(cells) + " |")
    fitted = results / "recipe_fit.json"
    if fitted.exists():
        f = json.loads(fitted.read_text())
        kinds = "; ".join(
            f"**{kind}** kind: {_rule_words(k['shared'])}, "
            "fitted on "
            + ", ".join(_setting_name({"setting": s}) for s in k["settings"])
            + " (worst per-seed regret of any family there "
            + f"{k['shared']['worst_pp']:.2f} pp)"
            for kind, k in f["kinds"].items()
        )
        rows += [
            "",
            f"The rules (`recipe_fit.json`, `recipe_quality.py --fit`): {kinds}. The "
            "auto family per kind: "
            + ", ".join(f"{k} **{a}**" for k, a in f["auto_families"].items())
            + ". Settings marked held out were not used.",
        ]
        rows += _loo_rows(f.get("leave_one_out") or {})
    return "\n".join(rows)


def _loo_rows(loo: dict) -> list[str]:
    """The leave-one-setting-out table of ``recipe_fit.json``."""
    if not loo:
        return []
    rows = [
        "",
        "Leave one setting out (`leave_one_out` in `recipe_fit.json`): the same "
        "procedure, run on all the other settings of the kind (held out or not), "
        "judged on the one it did not see:",
        "",
        "| setting left out | rule chosen on the others | auto family | regret, "
        f"median / worst seed | <= {TARGET_REGRET_PP} pp |",
        "|---|---|---|---|---|",
    ]
    for kind, settings in loo.items():
        for r in settings:
            regret = r["regret_seed_max_pp"]
            verdict = (
                "outside the grid"
                if regret is None
                else ("met" if regret <= TARGET_REGRET_PP else "**missed**")
            )
            rows.append(
                f"| {_setting_name(r)} ({kind}) | {_rule_words(r)} | {r['family']} | "
                f"{_pp(r['regret_pp'])} / {_pp(regret)} pp | {verdict} |"
            )
    return rows


def _rule_words(r: dict) -> str:
    """``"2.83 x knee"``, or with a budget exponent ``"2 x knee x (1000 / T)^0.3"``
    and the budgets it holds between (``", T in [429, 8590]"``)."""
    if not r.get("budget_exponent"):
        return f"{r['factor']:g} x {r['method']}"
    held = f", T in [{r['budgets'][0]}, {r['budgets'][1]}]" if r.get("budgets") else ""
    return (
        f"{r['factor']:g} x {r['method']} x (1000 / T)^{r['budget_exponent']:g}{held}"
    )


def choose(mine: list[dict]) -> dict:
    """The rule ``--fit`` chooses for one optimizer kind from its settings' grids.

    Per family, the rule (method, factor, budget exponent:
    ``lrjax.recipes.PeakRule``) that minimises the worst regret over the settings,
    judged at every range-test seed's suggestion (not only the median); ties go to
    the lower mean (``families``, for information). The exponent is fitted only
    when the settings span more than one budget (else it is 0: with one budget a
    factor and an exponent are the same number). The rule lrjax uses is ONE rule
    for all families (``shared``): the lowest mean over the families of their
    worst regret, ties to the smaller exponent. The auto family is the one with
    the lowest worst regret under that rule (``auto``). A rule keeps the
    shortest and longest budgets it was fitted on (``budgets``): outside them
    lrjax holds an exponent's multiple at the nearest one, and says so.
    """
    from lrjax._src.recipes import FAMILIES
    from lrjax._src.suggestions import METHODS

    # Every candidate rule scored once per family: (worst, mean) over the
    # settings of the per-seed regret; None where a setting's suggestion x
    # factor falls outside its grid.
    scores: dict[tuple, tuple[float, float] | None] = {}
    budgets = {d["grid"]["total_steps"] for d in mine}
    exps = EXPONENTS if len(budgets) > 1 else (0.0,)
    candidates = [(m, f, e) for m in METHODS for f in FACTORS for e in exps]
    for fam in FAMILIES:
        for rule in candidates:
            rs = [score_rules(d, {fam: rule})[fam] for d in mine]
            worst = [r["regret_seed_max_pp"] for r in rs]
            scores[(fam, *rule)] = (
                None
                if None in worst
                else (
                    max(0.0, *worst),
                    sum(r["regret_seed_mean_pp"] for r in rs) / len(mine),
                )
            )
    families = {}
    for fam in FAMILIES:
        cands = sorted((*v, m, f, e) for (fa, m, f, e), v in scores.items()
                       if fa == fam and v)  # fmt: skip
        worst, mean, method, factor, exponent = cands[0]
        families[fam] = _rule(
            method,
            factor,
            exponent,
            fit_worst_seed_regret_pp=worst,
            fit_mean_seed_regret_pp=mean,
            runners_up=[
                _rule(m, f, e, worst=w, mean=a) for w, a, m, f, e in cands[1:6]
            ],
        )
    shared = []
    for method, factor, exponent in candidates:
        per_family = [scores[fam, method, factor, exponent] for fam in FAMILIES]
        if None not in per_family:
            worst = [v[0] for v in per_family if v is not None]
            shared.append(
                (sum(worst) / len(worst), max(worst), exponent, method, factor)
            )
    shared.sort()
    mean, worst, exponent, method, factor = shared[0]
    chosen = {fam: scores[fam, method, factor, exponent] for fam in FAMILIES}
    scored = {fam: v[0] for fam, v in chosen.items() if v is not None}
    # the budgets the rule was fitted on: an exponent holds between them, not
    # beyond them, and recommend says when a budget lies outside them
    span = (min(budgets), max(budgets))
    return {
        "rule": (method, factor, exponent, span),
        "auto": min(scored, key=lambda f: (scored[f], f)),
        "families": families,
        "shared": {
            **_rule(method, factor, exponent, budgets=span),
            "mean_of_family_worst_pp": mean,
            "worst_pp": worst,
            "runners_up": [
                _rule(m, f, e, mean=a, worst=w) for a, w, e, m, f in shared[1:6]
            ],
            "best_without_budget": next(
                {"method": m, "factor": f, "mean": a, "worst": w}
                for a, w, e, m, f in shared
                if e == 0
            ),
        },
        "auto_fit_worst_seed_regret_pp": scored,
    }


def _rule(method: str, factor: float, exponent: float, **stats) -> dict:
    """A candidate rule as recipe_fit.json stores it, with its statistics."""
    return {"method": method, "factor": factor, "budget_exponent": exponent, **stats}


def leave_one_out(docs: list[dict]) -> dict:
    """How well ``choose`` does on a setting it did not see, per optimizer kind.

    For every setting of a kind with at least two (held out or not), the rule
    and auto family chosen on the kind's OTHER settings, scored on it: the
    regret of the auto family at the median suggestion and at the worst seed
    (None: the peak falls outside that setting's grid). This judges the fitting
    procedure, not the rules lrjax ships (those are fitted on the non-held-out
    settings only).
    """
    out: dict = {}
    for kind, mine in _by_kind(docs).items():
        if len(mine) < 2:
            continue
        rows = []
        for i, d in enumerate(mine):
            c = choose(mine[:i] + mine[i + 1 :])
            r = score_rules(d, {c["auto"]: c["rule"]})[c["auto"]]
            method, factor, exponent, span = c["rule"]
            rows.append(
                {
                    "setting": d["setting"],
                    **_rule(
                        method,
                        factor,
                        exponent,
                        budgets=span,
                        family=c["auto"],
                        peak=r["peak"],
                        regret_pp=r["regret_pp"],
                        regret_seed_max_pp=r["regret_seed_max_pp"],
                    ),
                }
            )
        out[kind] = rows
    return out


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    """The settings per optimizer kind (``lrjax.recipes.optimizer_kind``), kinds
    sorted, settings in their order."""
    from lrjax._src.recipes import optimizer_kind

    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(optimizer_kind(d["setting"]["optimizer"]), []).append(d)
    return dict(sorted(out.items()))


def fit(paths: list[str], out: str | None) -> int:
    """Refit the peak rules on the non-held-out settings, per optimizer kind
    (``choose``), score the held-out settings with their kind's rule, and judge
    the procedure setting by setting (``leave_one_out``, all settings)."""
    from lrjax._src.recipes import FAMILIES, optimizer_kind

    docs = [json.loads(Path(p).read_text()) for p in paths]
    docs = [d for d in docs if "grids" in d]
    fitting = [d for d in docs if not d.get("heldout")]
    held = [d for d in docs if d.get("heldout")]
    result: dict = {"fit_on": [], "heldout": [], "kinds": {}, "auto_families": {}}
    rules: dict[str, dict] = {}
    for kind, mine in _by_kind(fitting).items():
        c = choose(mine)
        rules[kind] = dict.fromkeys(FAMILIES, c["rule"])
        result["kinds"][kind] = {
            "settings": [d["setting"] for d in mine],
            "families": c["families"],
            "shared": c["shared"],
            "auto_fit_worst_seed_regret_pp": c["auto_fit_worst_seed_regret_pp"],
        }
        result["auto_families"][kind] = c["auto"]
    for d, bucket in [(d, "fit_on") for d in fitting] + [(d, "heldout") for d in held]:
        kind = optimizer_kind(d["setting"]["optimizer"])
        if kind not in rules:  # a kind with no fit setting: no rule to score
            continue
        result[bucket].append(
            {"setting": d["setting"], "rules": score_rules(d, rules[kind])}
        )
    result["leave_one_out"] = leave_one_out(docs)
    print(json.dumps(result, indent=1))
    if out:
        write_atomic(Path(out), json.dumps(result, indent=1) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
    p.add_argument("--optimizer", default="sgd")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--peaks", type=int, default=8)
    p.add_argument("--lo-mult", type=float, default=0.5, help="lowest peak / knee")
    p.add_argument("--hi-mult", type=float, default=12.0, help="highest peak / knee")
    p.add_argument("--range-seeds", type=int, default=3)
    p.add_argument("--grid-seeds", type=int, default=2)
    p.add_argument("--train-seeds", type=int, default=0)
    p.add_argument("--heldout", action="store_true", help="not used by --fit")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None, help="subset (smoke tests)")
    p.add_argument("--n-val", type=int, default=None, help="subset (smoke tests)")
    p.add_argument("--devices", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="benchmarks/results/recipe_quality.json")
    p.add_argument(
        "--train-only",
        action="store_true",
        help="keep --out's range test and grid; rescore them with today's rules and "
        "run only the --train-seeds recipe runs",
    )
    p.add_argument(
        "--extend",
        action="store_true",
        help="add --peaks peaks (--lo-mult..--hi-mult x the stored knee) to --out's "
        "grid, keeping its range test and cells",
    )
    p.add_argument("--fit", nargs="+", default=None, metavar="JSON")
    p.add_argument("--fit-out", default=None)
    p.add_argument(
        "--rescore",
        nargs="+",
        default=None,
        metavar="JSON",
        help="score stored grids with today's lrjax.recipes rules (no training)",
    )
    args = p.parse_args(argv)
    if args.fit:
        return fit(args.fit, args.fit_out)
    if args.rescore:
        for path in args.rescore:
            doc = json.loads(Path(path).read_text())
            if "grids" in doc:
                rescore(doc)
                write_atomic(Path(path), json.dumps(doc, indent=1) + "\n")
                print(report(doc), flush=True)
        return 0
    if args.train_only:
        doc = json.loads(Path(args.out).read_text())
        rescore(doc)
        doc["train"] = train_recipe(args, doc)
        write_atomic(Path(args.out), json.dumps(doc, indent=1) + "\n")
        print(report(doc), flush=True)
        return 0
    setup_jax(args.devices)
    if args.extend:
        extend_setting(args)
    else:
        run_setting(args)
    return 0


# The block benchmarks/report.py stitches into docs/results.md.
BLOCKS = {"recipe_quality": markdown}


if __name__ == "__main__":
    raise SystemExit(main())
