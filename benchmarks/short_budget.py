"""``--lr auto`` at a short budget, for every optimizer the command line offers.

Runs, per optimizer, exactly what a new user types::

    lrjax-train --model cnn --epochs 1 --lr auto --batch-size 128 --optimizer OPT

(the default schedule: the recommended recipe for that budget) and records the
test accuracy, the recipe (family, peak, rule) and the wall time. Writes the JSON
after every run; a run whose ``metrics.json`` exists in ``--runs`` is read, not
run again.

    python benchmarks/short_budget.py                         # the CNN, 1 epoch
    python benchmarks/short_budget.py --model mlp --batch-size 32 \\
        --out benchmarks/results/short_budget_mlp.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from _report_util import NOT_MEASURED

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
TARGET_ACCURACY = 0.88  # issue #16: the CNN after one epoch, every optimizer


def run(args, opt: str) -> dict:
    logdir = Path(args.runs) / opt
    argv = [
        "--model", args.model, "--epochs", str(args.epochs), "--lr", "auto",
        "--batch-size", str(args.batch_size), "--optimizer", opt,
        "--seed", str(args.seed), "--quiet", "--no-plot",
    ]  # fmt: skip
    metrics = logdir / "metrics.json"
    t0 = time.perf_counter()
    if not metrics.exists():
        cmd = [sys.executable, "-m", "lrjax.train", *argv, "--logdir", str(logdir)]
        cmd.append("--force")
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    m = json.loads(metrics.read_text())
    s = m["schedule"]
    return {
        "optimizer": opt,
        "command": "lrjax-train " + " ".join(argv),
        "test_accuracy": m["test_accuracy"],
        "val_accuracy": m["val_accuracy"],
        "family": s.get("family", s["name"]),
        "peak_lr": m["lr"],
        "rule": s.get("rule"),
        "suggestions": (m.get("lr_finder") or {}).get("suggestions"),
        "wall_s": m["timings"].get("wall_s"),
        "ran_now_s": time.perf_counter() - t0,
        "device": m["device"],
    }


def markdown(results: Path) -> str:
    """One row per optimizer of every ``short_budget*.json``; rendered by
    benchmarks/report.py."""
    rows = [
        "| command | optimizer | recipe (family, peak, rule) | test accuracy | "
        f"target >= {100 * TARGET_ACCURACY:.0f}% (CNN) | wall |",
        "|---|---|---|---|---|---|",
    ]
    runs = [
        r
        for path in sorted(results.glob("short_budget*.json"))
        for r in json.loads(path.read_text())["runs"]
    ]
    if not runs:
        return NOT_MEASURED
    for r in runs:
        cnn = "--model cnn" in r["command"]
        ok = r["test_accuracy"] >= TARGET_ACCURACY
        rows.append(
            f"| `{r['command'].replace(' --optimizer ' + r['optimizer'], '')}` | "
            f"{r['optimizer']} | {r['family']}, {r['peak_lr']:.3g} "
            f"({r['rule'] or '-'}) | {100 * r['test_accuracy']:.2f}% | "
            + (("met" if ok else "**missed**") if cnn else "-")
            + f" | {r['wall_s']:.0f} s |"
        )
    return "\n".join(rows) + _over_seeds(runs)


def _over_seeds(runs: list[dict]) -> str:
    """Runs that differ only in ``--seed``, under the same rule: their mean."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        same = re.sub(r" --seed \d+", "", r["command"])
        rule = re.sub(r" \([0-9.e+-]+\)", "", r["rule"] or "-")  # its value
        groups.setdefault((same, r["optimizer"], rule), []).append(r)
    lines = []
    for (command, opt, rule), same_runs in groups.items():
        if len(same_runs) < 2:
            continue
        accs = [100 * r["test_accuracy"] for r in same_runs]
        cnn = "--model cnn" in command
        mean = sum(accs) / len(accs)
        lines.append(
            f"- {opt} ({rule}): {', '.join(f'{a:.2f}' for a in accs)}% over "
            f"{len(same_runs)} seeds, mean **{mean:.2f}%**"
            + (
                f" ({'met' if mean >= 100 * TARGET_ACCURACY else 'missed'})"
                if cnn
                else ""
            )
            + ";"
        )
    if not lines:
        return ""
    return (
        "\n\nThe same command over seeds (rows above that differ only in `--seed`, "
        "under the same rule), test accuracy:\n\n" + "\n".join(lines)[:-1] + "."
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    p.add_argument("--runs", default=str(ROOT / "runs" / "short_budget"))
    p.add_argument("--out", default=str(HERE / "results" / "short_budget_cnn.json"))
    args = p.parse_args(argv)
    doc = {"description": __doc__.splitlines()[0], "runs": []}
    for opt in args.optimizers:
        doc["runs"].append(run(args, opt))
        r = doc["runs"][-1]
        print(
            f"{opt}: test {100 * r['test_accuracy']:.2f}% with {r['family']} peak "
            f"{r['peak_lr']:.3g} ({r['rule']}), {r['wall_s']:.0f} s",
            flush=True,
        )
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


# The block benchmarks/report.py stitches into docs/results.md.
BLOCKS = {"short_budget": markdown}


if __name__ == "__main__":
    raise SystemExit(main())
