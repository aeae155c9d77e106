"""``python -m lrjax.train``: train a model with a found lr and a schedule.

The second half of the seed recipe: a learning rate (a number, or ``auto``: the
range test's suggestion for the same model and optimizer), a schedule, early
stopping, Orbax checkpoints with exact resume, TensorBoard curves, and snapshot
ensembles collected inside the compiled scan.

Exit codes: 0 done, 2 bad input or a file that cannot be written (a full disk:
one line with the path and the cause; the last good checkpoint is kept), 130 /
143 stopped by SIGINT / SIGTERM after saving a checkpoint (continue with
``--resume``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from lrjax._src.recipes import AUTO_FAMILIES, FAMILIES, optimizer_kind
from lrjax._src.suggestions import DEFAULT_METHOD, METHODS
from lrjax.cli import (
    ArgumentParser,
    ModelChoice,
    UsageError,
    add_model_args,
    check_budget,
    decay_of,
    fail,
    int_at_least,
    interrupted,
    load_data,
    model_choice,
    nonneg_float,
    optimizer_factory,
    positive_float,
    progress,
    save_png,
    setup_jax,
    usage_name,
    write_atomic,
)
from lrjax.cli.distributed import add_distributed_args, init_distributed

PROG = "lrjax.train"
SCHEDULES = (
    "auto",
    *FAMILIES,
    "constant",
    "step",
    "triangular",
    "triangular2",
    "exp_range",
    "cosine_restarts",
    "onecycle",  # the name before 0.2: now one_cycle (PyTorch's OneCycleLR)
)
CYCLIC = ("triangular", "triangular2", "exp_range", "cosine_restarts")
DEFAULT_SCHEDULE = "auto"
DEFAULT_PEAK_DECAY = 0.8  # SGDR with --period-mult > 1, see _check


def recipe_family(schedule: str, optimizer: str) -> str | None:
    """The recipe family of ``--schedule`` (``auto``: the one recommended for
    ``--optimizer``'s kind), else None."""
    if schedule == "auto":
        return AUTO_FAMILIES[optimizer_kind(optimizer)]
    if schedule == "onecycle":
        return "one_cycle"
    return schedule if schedule in FAMILIES else None


def default_lr_method(schedule: str, optimizer: str) -> str:
    """The suggestion ``--lr auto`` uses for a schedule that is not a recipe.

    (A recipe family's peak comes from :func:`lrjax.recommend`'s rule.)
    Half the divergence lr is a good PEAK for plain SGD on a schedule that spends
    little time there; with momentum it diverged (1 of 3 seeds, see
    README.md "Training"), and a constant lr must be lower: the finder's default
    (``knee``) then, which trained as well as ``balanced`` did in both cases.
    """
    if optimizer == "sgd" and schedule not in ("constant", "step"):
        return "divergence"
    return DEFAULT_METHOD


def lr_value(text: str):
    if text == "auto":
        return text
    try:
        return positive_float(text)
    except Exception as e:
        raise UsageError(f"--lr must be a number > 0 or 'auto': {e}") from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog=usage_name("lrjax-train"),
        description="Train a model (--model) with a learning rate (or 'auto': the "
        "range test's suggestion) and a schedule; early stopping, checkpoints, "
        "TensorBoard and snapshot ensembles.",
    )
    add_model_args(p)
    _lr_args(p)
    _schedule_args(
        p.add_argument_group("schedule shapes (cosine_restarts, cyclic, step)")
    )
    _training_args(p.add_argument_group("training"))
    _output_args(p.add_argument_group("run directory and output"))
    add_distributed_args(p)
    return p


def _lr_args(p: ArgumentParser) -> None:
    """The optimizer's weight decay, the learning rate and the schedule family."""
    a = p.add_argument
    a(
        "--weight-decay",
        type=nonneg_float,
        default=None,
        help="decoupled weight decay (adamw, default 1e-4); for the others L2 "
        "added to the gradient (default none)",
    )
    a(
        "--lr",
        type=lr_value,
        default="auto",
        help="learning rate, or 'auto' (default): run the range test first and use "
        "its suggestion (the peak of cyclic schedules)",
    )
    a(
        "--lr-method",
        default=None,
        choices=METHODS,
        help="which range-test suggestion --lr auto uses as the peak (default: the "
        "recipe's rule for auto and the recipe families, see lrjax.recipes; "
        "divergence, i.e. half the lr where the loss blew up, for cyclic and restart "
        "schedules with plain sgd; the finder default, knee, otherwise)",
    )
    a(
        "--schedule",
        default=None,
        choices=SCHEDULES,
        help=f"lr schedule (default {DEFAULT_SCHEDULE}: the recommended recipe, "
        "per optimizer kind "
        + ", ".join(f"{k}: {f}" for k, f in AUTO_FAMILIES.items())
        + ", with a peak from the range test; cosine_restarts when "
        "a restart flag (--snapshots, --cycle-epochs, --first-cycle-epochs, "
        "--period-mult, --peak-decay) is given); one_cycle, warmup_cosine, "
        "linear_decay and wsd are the recipe families, shaped for --epochs as "
        "lrjax.recipes.build_schedule says",
    )


def _schedule_args(g) -> None:
    a = g.add_argument
    a(
        "--cycle-epochs",
        type=positive_float,
        default=None,
        help="cosine_restarts: first period; cyclic: a full cycle (up + down), in "
        "epochs (default: with --snapshots M, M cycles of T // M updates, the "
        "first also taking the T mod M left over; else 2 for cosine_restarts "
        "(2+4+8+16 = 30 epochs) and 5 for the others)",
    )
    a(
        "--first-cycle-epochs",
        type=positive_float,
        default=None,
        help="cosine_restarts: a longer first cycle of this many epochs, then "
        "cycles of --cycle-epochs (which then defaults to 5); default off",
    )
    a(
        "--period-mult",
        type=positive_float,
        default=None,
        help="cosine_restarts: period multiplier T_mult (>= 1; default 1 with "
        "--snapshots (Huang et al.) or --cycle-epochs, else 2)",
    )
    a(
        "--peak-decay",
        type=positive_float,
        default=None,
        help="cosine_restarts: peak multiplier per restart (in (0, 1]; default "
        f"{DEFAULT_PEAK_DECAY:g} with growing periods (--period-mult > 1, the default "
        "SGDR 2+4+8+16), else 1)",
    )
    a(
        "--min-lr",
        type=nonneg_float,
        default=0.0,
        help="cosine_restarts: eta_min (default 0)",
    )
    a(
        "--base-lr",
        type=nonneg_float,
        default=None,
        help="cyclic schedules: lowest lr (default lr / 10)",
    )
    a(
        "--gamma",
        type=positive_float,
        default=0.99994,
        help="exp_range: decay per step (default 0.99994)",
    )
    a(
        "--step-epochs",
        type=positive_float,
        default=10.0,
        help="step: epochs between decays (default 10)",
    )
    a(
        "--factor",
        type=positive_float,
        default=0.5,
        help="step: decay factor (default 0.5)",
    )


def _training_args(g) -> None:
    a = g.add_argument
    a("--epochs", type=int, default=30, help="epochs (default 30)")
    a(
        "--patience",
        type=int,
        default=0,
        help="early stopping patience in epochs (0 = off, default)",
    )
    a("--monitor", default="val_loss", choices=("val_loss", "val_accuracy"))
    a(
        "--snapshots",
        type=int,
        default=0,
        metavar="M",
        help="snapshot ensemble of the last M cycle ends (a cyclic schedule)",
    )
    a(
        "--average-from",
        type=float,
        default=None,
        metavar="FRACTION",
        help="weight averaging (SWA): a running mean of the weights after every "
        "update from this fraction of the run on (0.75: the last 25%%), BatchNorm "
        "statistics re-estimated for it; in [0, 1) (default: off)",
    )


def _output_args(g) -> None:
    a = g.add_argument
    a("--seed", type=int, default=0)
    a("--logdir", default=None, help="output directory (default runs/train-*)")
    a("--resume", action="store_true", help="continue from --logdir's checkpoint")
    a("--force", action="store_true", help="replace an existing --logdir")
    a(
        "--max-to-keep",
        type=int_at_least(1),
        default=2,
        help="latest checkpoints kept (default 2)",
    )
    a(
        "--chunks",
        type=int_at_least(1),
        default=8,
        help="compiled chunks per epoch (default 8)",
    )
    a(
        "--save-probs",
        action="store_true",
        help="write test_probs.npy: the final model's softmax outputs on the test "
        "split, float32 [N, classes] (to ensemble independent runs); with "
        "--average-from also test_probs_average.npy, the weight average's",
    )
    a(
        "--json",
        action="store_true",
        help="print metrics.json to stdout (the epoch lines go to stderr)",
    )
    a("--quiet", action="store_true", help="no progress bar, epoch lines or summary")
    a("--no-plot", action="store_true", help="do not write learning_curves.png")


def _check(args) -> None:
    for name in ("epochs", "patience", "snapshots"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.schedule is None:
        restart_flags = (
            args.snapshots,
            args.cycle_epochs,
            args.first_cycle_epochs,
            args.period_mult,
            args.peak_decay,
        )
        restarts = any(v not in (None, 0) for v in restart_flags)
        args.schedule = "cosine_restarts" if restarts else DEFAULT_SCHEDULE
    _check_unused(args)
    if args.period_mult is None:
        # SGDR 2+4+8+16 only when nothing fixes the cycles; else constant cycles.
        fixed = args.snapshots or args.cycle_epochs is not None
        args.period_mult = 1.0 if (fixed or args.schedule != "cosine_restarts") else 2.0
    if args.period_mult < 1:
        raise UsageError(f"--period-mult must be >= 1, got {args.period_mult:g}")
    if args.peak_decay is None:
        # 0.8 for SGDR with growing periods: 90.03% vs 89.92% mean test accuracy
        # over 5 seeds (README.md "Training", variant default_peak_decay_0.8); Huang et
        # al.'s equal cycles keep equal peaks.
        growing = args.schedule == "cosine_restarts" and args.period_mult > 1
        args.peak_decay = DEFAULT_PEAK_DECAY if growing else 1.0
    if args.peak_decay > 1:
        raise UsageError(f"--peak-decay must be in (0, 1], got {args.peak_decay:g}")
    if args.factor > 1:
        raise UsageError(f"--factor must be in (0, 1], got {args.factor:g}")
    if args.gamma > 1:
        raise UsageError(f"--gamma must be in (0, 1], got {args.gamma:g}")
    if args.snapshots and args.schedule not in CYCLIC:
        raise UsageError(
            f"--snapshots needs a cyclic schedule ({', '.join(CYCLIC)}), "
            f"got --schedule {args.schedule}"
        )
    f = args.average_from
    if f is not None and not 0 <= f < 1:
        raise UsageError(
            f"--average-from must be a fraction of the run in [0, 1), got {f:g}"
        )
    if args.resume and args.force:
        raise UsageError("--resume and --force exclude each other")
    if args.resume and args.logdir is None:
        raise UsageError("--resume needs --logdir DIR of the run to continue")


# Flags that say where the run's files and data are and how it reports, not what
# it computes: a --resume may give them anew; every other flag it may only repeat.
# Each defaults to the saved run's (run.json), except the processes', which are
# always this command line's (a resume may run on other machines).
RESUME_OWN_FLAGS = (
    "resume",
    "force",
    "logdir",
    "data_dir",
    "quiet",
    "json",
    "no_plot",
    "save_probs",
    "max_to_keep",
)
PROCESS_FLAGS = ("coordinator", "num_processes", "process_id", "distributed")


# The shape flags and the schedules that read them; given with another schedule
# they would be ignored, so they are refused. A value that changes nothing (the
# default; 1 for the restart multipliers, which _check sets) passes.
SHAPE_FLAGS = {
    "cycle_epochs": CYCLIC,
    "period_mult": ("cosine_restarts",),
    "peak_decay": ("cosine_restarts",),
    "min_lr": ("cosine_restarts",),
    "base_lr": ("triangular", "triangular2", "exp_range"),
    "gamma": ("exp_range",),
    "step_epochs": ("step",),
    "factor": ("step",),
}


def _check_unused(args) -> None:
    """Refuses a flag that the run would ignore: a shape flag of another
    schedule, ``--lr-method`` with a learning rate given.

    Raises:
      UsageError: naming the flag and what it applies to.
    """
    defaults = build_parser()
    for dest, users in SHAPE_FLAGS.items():
        value = getattr(args, dest)
        multiplier = dest in ("period_mult", "peak_decay")
        inert = (defaults.get_default(dest), *((1.0,) if multiplier else ()))
        if args.schedule not in users and value not in inert:
            raise UsageError(
                f"{_flag(dest, value)} shapes --schedule {' / '.join(users)}, not "
                f"--schedule {args.schedule}: drop it (it would be ignored)"
            )
    if args.lr_method is not None and args.lr != "auto":
        raise UsageError(
            f"--lr-method chooses the peak of --lr auto, and --lr {args.lr:g} is "
            "given: drop one of them"
        )


def _flag(dest: str, value) -> str:
    flag = "--" + dest.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    if value is None:
        return f"no {flag}"
    if isinstance(value, tuple):
        value = ",".join(str(v) for v in value)
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def resumed_args(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """The flags of the run that ``--resume`` continues.

    Every flag that decides what the run computes comes from the saved run's
    command line (``run.json``'s ``argv``), its defaults included; this command
    line may give :data:`RESUME_OWN_FLAGS` anew (where the files are, how it
    reports; the saved ones otherwise), and :data:`PROCESS_FLAGS` are always its
    own. Any other flag given here that the saved run had with another value
    (after the defaults each one implies) is refused, so that ``--epochs 6``
    interrupted and resumed without flags still ends at epoch 6. Without a
    ``run.json`` (none was written yet) ``args`` are returned as they are.

    Raises:
      UsageError: a contradicting flag, or a ``run.json`` that does not read.
    """
    meta = Path(args.logdir) / "run.json"
    if not meta.is_file():
        return args
    parser = build_parser()
    try:
        saved_argv = json.loads(meta.read_text())["argv"]
        saved = parser.parse_args([str(a) for a in saved_argv])
    except (OSError, ValueError, KeyError, TypeError, UsageError) as e:
        raise UsageError(
            f"--resume: cannot read the saved run's flags in {meta}: {e}"
        ) from None
    # Only the flags on this command line: argparse sets no default on an
    # attribute that the namespace already has.
    unset = object()
    ns = argparse.Namespace(**dict.fromkeys(vars(parser.parse_args([])), unset))
    given = {
        k: v for k, v in vars(parser.parse_args(argv, ns)).items() if v is not unset
    }
    merged = copy.copy(saved)
    for dest in ("resume", "force", "logdir", *PROCESS_FLAGS):
        setattr(merged, dest, getattr(args, dest))
    for dest, value in given.items():
        setattr(merged, dest, value)
    # Compared as they will run: --schedule left out and --schedule auto agree.
    want, got = copy.copy(saved), copy.copy(merged)
    want.resume = got.resume = False
    want.force = got.force = False
    _check(want)
    _check(got)
    for dest in given:
        if dest in (*RESUME_OWN_FLAGS, *PROCESS_FLAGS):
            continue
        if getattr(got, dest) != getattr(want, dest):
            raise UsageError(
                f"--resume: {_flag(dest, getattr(got, dest))} contradicts the saved "
                f"run's {_flag(dest, getattr(want, dest))} ({meta}); a resume "
                "continues the saved run with its flags: drop the flag, or start a "
                "new run in another --logdir"
            )
    return merged


def make_schedule(args, peak: float, steps_per_epoch: int):
    """``(schedule, description, snapshot_steps | None)`` from args."""
    import numpy as np
    import optax

    from lrjax._src import schedules

    total = args.epochs * steps_per_epoch
    s = args.schedule
    family = recipe_family(s, args.optimizer)
    if family is not None:
        from lrjax._src.recipes import build_schedule

        _check_budget(args, steps_per_epoch)
        recipe, params = build_schedule(family, peak, total)
        return recipe, {"name": s, **params, "cycle_ends": []}, None
    desc: dict = {"name": s, "peak_lr": peak}
    cycle, first = _cycle_steps(args, total, steps_per_epoch)
    ends: list[int] | np.ndarray = []
    sched: float | schedules.Schedule  # a constant lr is a float
    if s == "constant":
        sched = peak
    elif s == "step":
        size = max(1, round(args.step_epochs * steps_per_epoch))
        sched = schedules.step_decay(peak, args.factor, size)
        desc.update(step_steps=size, factor=args.factor)
    elif s == "onecycle":
        sched = optax.cosine_onecycle_schedule(total, peak)
        desc.update(transition_steps=total)
    elif s == "cosine_restarts":
        sched, ends = _restarts(args, peak, cycle, first, total, desc)
    else:
        base = args.base_lr if args.base_lr is not None else peak / 10
        if base > peak:
            raise UsageError(f"--base-lr {base:g} is above the peak lr {peak:g}")
        half = max(1, cycle // 2)
        sched = schedules.cyclic(base, peak, half, mode=s, gamma=args.gamma)
        # A triangular cycle ends at its lowest lr, every 2 * half steps.
        ends = np.arange(2 * half - 1, total, 2 * half)
        desc.update(base_lr=base, step_size=half, gamma=args.gamma)
        cycle = 2 * half
    snaps = None
    if args.snapshots:
        if len(ends) < args.snapshots:
            raise UsageError(
                f"--snapshots {args.snapshots} is more than the {len(ends)} complete "
                f"cycles of {cycle} steps in {args.epochs} epochs"
            )
        # The last M cycle ends (for cosine_restarts without a long first cycle
        # this is lrjax._src.ensembles.snapshot_steps).
        snaps = np.asarray(ends[-args.snapshots :], np.int64)
    desc["cycle_ends"] = [int(e) for e in ends]
    return sched, desc, snaps


def _check_budget(args, steps_per_epoch: int) -> None:
    """Refuses a recipe family's budget too short for its shape (before the
    range test runs).

    Raises:
      UsageError: naming the flags that set the budget.
    """
    family = recipe_family(args.schedule, args.optimizer)
    if family is not None:
        which = "" if family == args.schedule else f" ({family} for {args.optimizer})"
        check_budget(args, steps_per_epoch, [family], args.schedule + which)


def _cycle_steps(args, total: int, steps_per_epoch: int) -> tuple[int, int | None]:
    """``(cycle, first)``: a cyclical schedule's cycle length in updates, and the
    long first cycle of ``--first-cycle-epochs`` (or Huang's leftover steps), if
    any."""
    s = args.schedule
    first = None
    if args.first_cycle_epochs is not None:
        if s != "cosine_restarts":
            raise UsageError("--first-cycle-epochs needs --schedule cosine_restarts")
        first = round(args.first_cycle_epochs * steps_per_epoch)
        if not 1 <= first < total:
            raise UsageError(
                f"--first-cycle-epochs must be shorter than --epochs, got "
                f"{args.first_cycle_epochs:g} of {args.epochs}"
            )
    if args.cycle_epochs is not None:
        cycle_epochs = args.cycle_epochs
    elif first is not None:
        cycle_epochs = 5.0
    elif args.snapshots and args.period_mult == 1:
        # Huang et al.: M cycles over the T steps of training. P = T // M (not
        # ceil) so that all M cycles complete; equal to ceil(T/M) when M | T.
        cycle = max(1, total // args.snapshots)
        if s == "cosine_restarts" and total % args.snapshots:
            # The T mod M leftover steps go into the first cycle, so that the
            # last cycle ends at the last step instead of restarting at the peak.
            first = cycle + total % args.snapshots
        return cycle, first
    elif s == "cosine_restarts":
        cycle_epochs = 2.0
    else:
        cycle_epochs = 5.0
    return max(1, round(cycle_epochs * steps_per_epoch)), first


def _restarts(args, peak: float, cycle: int, first, total: int, desc: dict):
    """``(schedule, cycle ends)`` of ``--schedule cosine_restarts`` (SGDR, after
    one long first cosine of ``first`` updates if given); fills ``desc``."""
    import numpy as np
    import optax

    from lrjax._src import schedules

    if args.min_lr > peak:
        raise UsageError(f"--min-lr {args.min_lr:g} is above the peak lr {peak:g}")
    sched = schedules.cosine_restarts(
        peak, cycle, args.period_mult, args.min_lr, args.peak_decay
    )
    ends = schedules.cosine_restart_steps(cycle, args.period_mult, num_steps=total)
    desc.update(
        first_period_steps=cycle,
        period_mult=args.period_mult,
        peak_decay=args.peak_decay,
        min_lr=args.min_lr,
    )
    if first is not None:
        # One long cosine first, then the restarts: a join of two schedules.
        head = schedules.cosine_restarts(peak, first, 1.0, args.min_lr)
        sched = optax.join_schedules([head, sched], [first])
        rest = schedules.cosine_restart_steps(
            cycle, args.period_mult, num_steps=total - first
        )
        ends = np.concatenate([[first - 1], first + rest])
        desc.update(first_period_steps=first, then_period_steps=cycle)
    return sched, ends


def _prepare_logdir(args) -> Path:
    if args.logdir is None:
        from lrjax.cli import prepare_out_dir

        return prepare_out_dir(None, "train", False)
    path = Path(args.logdir)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--logdir {path} exists and is not a directory")
    exists = path.is_dir() and any(path.iterdir())
    if args.resume:
        if not (path / "checkpoints" / "latest").is_dir():
            raise UsageError(f"--resume: no checkpoint in {path / 'checkpoints'}")
    elif exists:
        if not args.force:
            raise UsageError(
                f"--logdir {path} already exists; pass --resume to continue it or "
                "--force to replace it"
            )
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --logdir {path}: {e.strerror}") from None
    return path


def _last_checkpoint(out: Path) -> int | None:
    """The step of the newest complete checkpoint in ``out`` (Orbax writes a step
    under a temporary name and renames it to the bare number when complete)."""
    latest = out / "checkpoints" / "latest"
    try:
        steps = [int(p.name) for p in latest.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    return max(steps, default=None)


def _write_failed(e: OSError, out: Path, steps_per_epoch: int) -> str:
    """One line for a write that failed: the path, the cause, what was kept.

    >>> e = OSError(28, "No space left on device", "runs/b/metrics.json")
    >>> _write_failed(e, Path("no-such-dir"), 100)  # doctest: +NORMALIZE_WHITESPACE
    'cannot write runs/b/metrics.json: [Errno 28] No space left on device; no
    checkpoint was written yet: free space and run again with --force'
    """
    from lrjax._src import hooks

    what = str(hooks.WriteError.of(e.filename or out, e))
    step = _last_checkpoint(out)
    if step is None:
        kept = "no checkpoint was written yet: free space and run again with --force"
    else:
        epoch, part = divmod(step, steps_per_epoch)
        at = f"epoch {epoch}" if not part else f"step {step}, in epoch {epoch + 1}"
        kept = (
            f"the last good checkpoint ({at}) is kept: free space and run again "
            "with --resume"
        )
    return f"{what}; {kept}"


def _plot(metrics: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrjax._src.plots import plot_learning_curves

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    plot_learning_curves(metrics, ax)
    save_png(fig, out / "learning_curves.png", dpi=90)


def softmax_outputs(model, x, batch_size: int = 1000):
    """Softmax outputs ``float32[N, C]`` of ``model`` in eval mode on images ``x``.

    One jitted batch at a time (a convolution inside ``lax.map`` is slow on
    XLA:CPU).
    """
    import jax
    import numpy as np

    from lrjax._src.step import split_model

    spec, params, rest = split_model(model)

    @jax.jit
    def probs(params, rest, xb):
        return jax.nn.softmax(spec.merge(params, rest, train=False)(xb), -1)

    out = [
        np.asarray(probs(params, rest, x[i : i + batch_size]))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Runs ``python -m lrjax.train``; returns the exit code (module docstring)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # outside the training (in it: StopOnSignals)
        return interrupted(PROG)


def _say(args: argparse.Namespace) -> Callable[..., None]:
    """Where the epoch lines go: stdout, stderr under ``--json`` (stdout is the
    JSON alone), nowhere under ``--quiet``."""
    if args.quiet:
        return lambda *a: None
    if args.json:
        return functools.partial(print, file=sys.stderr)
    return print


def _main(argv: list[str] | None) -> int:
    t_start = time.perf_counter()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        args = _parse_args(argv)
        init_distributed(args)  # before JAX starts its backends
    except (UsageError, ValueError) as e:
        return fail(PROG, str(e))

    setup_jax()
    import jax

    from lrjax._src import hooks
    from lrjax._src.data import DatasetError

    try:
        setup = _setup(args)
        _check_budget(args, setup.steps_per_epoch)
    except (UsageError, DatasetError, ValueError) as e:
        return fail(PROG, str(e))
    out, steps_per_epoch = setup.out, setup.steps_per_epoch

    key = jax.random.key(args.seed)
    model = setup.choice.build(jax.random.fold_in(key, 0))
    shown = progress(PROG, args.quiet)  # a bar, or lines on a pipe
    say = _say(args)
    try:
        peak, finder_doc = _peak_lr(args, setup, model, key, shown, say)
    except _Exit as e:
        return e.code
    if not args.resume:
        doc = {"argv": argv, "lr": peak, "lr_finder": finder_doc}
        try:
            write_atomic(out / "run.json", json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            return fail(PROG, _write_failed(e, out, steps_per_epoch))
    plan = _plan(args, peak, finder_doc, steps_per_epoch, say)

    try:
        result, signum = _train(args, setup, model, key, plan, shown, say)
    except OSError as e:  # hooks.WriteError: a full disk, a lost mount, ...
        return fail(PROG, _write_failed(e, out, steps_per_epoch))
    except (hooks.CheckpointError, ValueError) as e:
        return fail(PROG, str(e))
    if result.interrupted:
        # Several processes stop together: one that got no signal itself exits
        # as if it had received the scheduler's SIGTERM.
        by = f"signal {signum}" if signum is not None else "a signal to another process"
        print(
            f"{PROG}: stopped by {by} at step {result.step}; checkpoint "
            f"saved in {out / 'checkpoints'}; continue with --resume",
            file=sys.stderr,
        )
        return 128 + int(signal.SIGTERM if signum is None else signum)

    metrics = _metrics(args, setup, result, plan, t_start)
    try:
        _write_outputs(args, setup, result, metrics)
    except OSError as e:
        return fail(PROG, _write_failed(e, out, steps_per_epoch))
    if args.json:
        print(json.dumps(metrics))
    else:
        say(_test_line(metrics))
        t = result.timings
        say(
            f"time: compile {t.compile_s:.2f} s, train {t.run_s:.2f} s "
            f"({t.mean_epoch_s or 0:.2f} s/epoch) on {result.device}; "
            f"written to {out}"
        )
    return 0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    """The flags (a ``--resume``'s merged with the saved run's), checked.

    Raises:
      UsageError, ValueError: a bad flag, or one that contradicts the saved run.
    """
    args = build_parser().parse_args(argv)
    if args.resume and args.logdir is not None and not args.force:
        args = resumed_args(args, argv)
    _check(args)
    return args


class _Exit(Exception):
    """Leaves :func:`main` with ``code``; its message is printed already."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


class _Setup(NamedTuple):
    """What the run trains on and with, and where its files go."""

    ds: Any  # the dataset (lrjax.data)
    choice: ModelChoice  # --model: its factory, loss and config
    opt: Callable  # --optimizer: learning_rate -> optax.GradientTransformation
    steps_per_epoch: int
    out: Path  # --logdir, prepared


def _setup(args) -> _Setup:
    """The data, model and optimizer, checked before any work.

    Raises:
      UsageError, DatasetError, ValueError: a bad flag, data or logdir.
    """
    import jax

    ds = load_data(args)
    ndev = jax.local_device_count()
    if args.batch_size % ndev:
        raise UsageError(
            f"--batch-size {args.batch_size} must be divisible by the number of "
            f"devices ({ndev}) for data-parallel training"
        )
    choice = model_choice(args, ds)
    opt = optimizer_factory(args.optimizer, args.weight_decay)
    steps_per_epoch = len(ds.y_train) // args.batch_size
    # Validate the schedule before any work (auto's peak is unknown: use 1).
    make_schedule(args, 1.0 if args.lr == "auto" else args.lr, steps_per_epoch)
    return _Setup(ds, choice, opt, steps_per_epoch, _prepare_logdir(args))


def _peak_lr(args, setup: _Setup, model, key, shown: dict, say) -> tuple:
    """``(peak lr, the range test's record or None)``: the resumed run's, the
    range test's (``--lr auto``, :func:`_auto_lr`) or ``--lr``'s."""
    resume_meta = setup.out / "run.json"
    if args.resume and resume_meta.exists():
        prev = json.loads(resume_meta.read_text())
        return prev["lr"], prev.get("lr_finder")
    if args.lr == "auto":
        return _auto_lr(args, setup, model, key, shown, say)
    return float(args.lr), None


def _auto_lr(args, setup: _Setup, model, key, shown: dict, say) -> tuple:
    """``--lr auto``: the range test's suggestion, or a recipe's peak from it.

    Raises:
      _Exit: interrupted (130), or no suggestion or recipe (2, after the error).
    """
    import jax

    from lrjax._src.range_test import lr_range_test
    from lrjax._src.specs import Execution, Sweep

    family = recipe_family(args.schedule, args.optimizer)
    if family is not None:
        from lrjax._src.recipes import PEAK_RULES

        kind = optimizer_kind(args.optimizer)
        method = args.lr_method or PEAK_RULES[kind][family].method
    else:
        method = args.lr_method or default_lr_method(args.schedule, args.optimizer)
    t0 = time.perf_counter()
    try:
        rt = lr_range_test(
            model,
            setup.opt,
            (setup.ds.x_train, setup.ds.y_train),
            key=jax.random.fold_in(key, 2),
            loss_fn=setup.choice.loss_fn,
            method=method,
            sweep=Sweep(batch_size=args.batch_size),
            execution=Execution(**shown),
        )
    except KeyboardInterrupt:  # before any training: nothing to save
        print(f"{PROG}: interrupted during the range test", file=sys.stderr)
        raise _Exit(130) from None
    if rt.suggested_lr is None:
        raise _Exit(
            fail(PROG, "--lr auto: the range test gave no suggestion; pass --lr FLOAT")
        )
    peak = float(rt.suggested_lr)
    recipe = None
    if family is not None:
        from lrjax._src.recipes import recommend

        try:
            recipe = recommend(
                rt,
                args.epochs * setup.steps_per_epoch,
                family,
                optimizer=args.optimizer,
                method=args.lr_method,
            )
        except ValueError as e:
            raise _Exit(fail(PROG, f"--lr auto: {e}")) from None
        peak = recipe.peak_lr
    finder_doc = {
        "method": method,
        "suggested_lr": float(rt.suggested_lr),
        "peak_lr": peak,
        "recipe": None if recipe is None else recipe.to_json(),
        "suggestions": rt.suggestions,
        "diverged_at_lr": rt.diverged_at_lr,
        "time_s": time.perf_counter() - t0,
    }
    if recipe is None:
        say(f"lr auto: range test suggests {peak:.4g} ({method})")
    else:
        say(f"lr auto: recipe {recipe.describe()}")
    return peak, finder_doc


class _Plan(NamedTuple):
    """The lr and its schedule, decided before training."""

    peak: float
    finder_doc: dict | None  # --lr auto: the range test's numbers
    sched: Any  # a float (constant) or a schedule step -> lr
    desc: dict  # metrics.json's "schedule"
    snap_steps: Any  # int64[M] update indices of the snapshots, or None
    average_start: int | None  # --average-from: the first update index averaged


def _plan(args, peak: float, finder_doc, steps_per_epoch: int, say) -> _Plan:
    """The schedule at ``peak`` (:func:`make_schedule`); a recipe's is printed."""
    sched, desc, snap_steps = make_schedule(args, peak, steps_per_epoch)
    average_start = None
    if args.average_from is not None:  # the first update index averaged
        total = args.epochs * steps_per_epoch
        average_start = min(round(args.average_from * total), total - 1)
    recipe_doc = (finder_doc or {}).get("recipe")
    if recipe_doc:
        desc.update(
            {k: recipe_doc[k] for k in ("method", "suggestion", "factor", "rule")}
        )
    if recipe_family(args.schedule, args.optimizer) is not None:
        say(
            "schedule: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in desc.items()
                if k not in ("name", "cycle_ends")
            )
        )
    return _Plan(peak, finder_doc, sched, desc, snap_steps, average_start)


def _epoch_line(rec: dict, epochs: int) -> str:
    """The line printed after an epoch, from what its record has.

    >>> _epoch_line({"epoch": 2, "train_loss": 0.5, "lr": 0.1, "time_s": 1.0}, 3)
    'epoch   2/3  loss 0.5000  lr 0.1  1.00s'
    """
    extra = ""
    if "ensemble_val_accuracy" in rec:
        extra = (
            f"  ensemble({rec['snapshots']}) val_acc {rec['ensemble_val_accuracy']:.4f}"
        )
    # A user's loss_fn may report no accuracy: print what the record has.
    parts = [f"epoch {rec['epoch']:3d}/{epochs}"]
    for name, label in (
        ("train_loss", "loss"),
        ("train_accuracy", "acc"),
        ("val_loss", "val_loss"),
        ("val_accuracy", "val_acc"),
    ):
        if name in rec:
            parts.append(f"{label} {rec[name]:.4f}")
    parts.append(f"lr {rec['lr']:.4g}  {rec['time_s']:.2f}s{extra}")
    return "  ".join(parts)


def _train(args, setup: _Setup, model, key, plan: _Plan, shown: dict, say):
    """``(FitResult, the signal received or None)``: :func:`lrjax.fit` with the
    flags' config, stopped at a chunk boundary by SIGINT / SIGTERM."""
    import jax

    from lrjax._src import hooks
    from lrjax._src.fit import FitConfig, fit

    ds, out = setup.ds, setup.out
    stop = hooks.StopOnSignals()
    config = FitConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=plan.sched,
        patience=args.patience,
        monitor=args.monitor,
        snapshot_steps=plan.snap_steps,
        average_start=plan.average_start,
        chunks_per_epoch=args.chunks,
        logdir=out,
        checkpoint_dir=out / "checkpoints",
        resume=args.resume,
        max_to_keep=args.max_to_keep,
        progress=shown["progress"],
        hooks=[
            hooks.EpochEnd(lambda rec: say(_epoch_line(rec, args.epochs))),
            *shown["hooks"],
            stop,
        ],
    )
    with stop:
        result = fit(
            model,
            setup.opt,
            (ds.x_train, ds.y_train),
            key=jax.random.fold_in(key, 1),
            config=config,
            loss_fn=setup.choice.loss_fn,
            val_data=(ds.x_val, ds.y_val),
            test_data=(ds.x_test, ds.y_test) if len(ds.y_test) else None,
        )
        return result, stop.received


def _metrics(args, setup: _Setup, result, plan: _Plan, t_start: float) -> dict:
    """``metrics.json``: the test, the best epoch, the run's flags and numbers."""
    metrics = {
        "test_accuracy": result.test.get("accuracy") if result.test else None,
        "test_loss": result.test.get("loss") if result.test else None,
        "val_accuracy": result.history[result.best_epoch - 1].get("val_accuracy")
        if (result.best_epoch and args.patience)
        else (result.history[-1].get("val_accuracy") if result.history else None),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "restored_best": bool(args.patience),
        "lr": plan.peak,
        "lr_finder": plan.finder_doc,
        "schedule": plan.desc,
        "optimizer": args.optimizer,
        "weight_decay": decay_of(args.optimizer, args.weight_decay),  # applied
        "batch_size": args.batch_size,
        **setup.choice.config,
        "seed": args.seed,
        "dataset": args.dataset,
        "timings": {
            **result.timings.to_json(),
            "wall_s": time.perf_counter() - t_start,
        },
        "device": result.device,
        "history": result.history,
    }
    if plan.snap_steps is not None:
        metrics.update(_ensemble_metrics(result))
    if plan.average_start is not None:
        metrics["average"] = _average_metrics(result, plan.average_start)
    return metrics


def _ensemble_metrics(result) -> dict:
    """The snapshots' accuracies, their ensembles' (last m, m = 1..M), and the
    best ensemble: ``m`` chosen on the validation curve, judged on test.

    ``best_ensemble`` is ``{"m", "chosen_on": "val", "val_accuracy",
    "test_accuracy"}`` with ``m`` the first maximum of the validation curve (ties:
    the smallest m); None without a validation curve: ``m`` is never chosen on
    the test curve, which would overstate its test accuracy.
    """
    test = result.ensemble_curve or []
    val = result.ensemble_val_curve or []
    written = max(len(test), len(val))  # snapshots written (early stops write fewer)
    test_single = result.snapshot_test_accuracy or [None] * written
    val_single = result.snapshot_val_accuracy or [None] * written
    best = None
    if val:
        i = val.index(max(val))  # the first maximum: ties go to the smallest m
        best = {
            "m": i + 1,
            "chosen_on": "val",
            "val_accuracy": val[i],
            "test_accuracy": test[i] if test else None,
        }
    return {
        "snapshots": [
            {"epoch": e, "step": int(s) + 1, "val_accuracy": v, "test_accuracy": t}
            for e, s, v, t in zip(
                result.snapshot_epochs[:written],
                result.snapshot_steps[:written],
                val_single,
                test_single,
                strict=True,
            )
        ],
        "ensemble_curve": [
            {"m": i + 1, "test_accuracy": a} for i, a in enumerate(test)
        ],
        "ensemble_val_curve": [
            {"m": i + 1, "val_accuracy": a} for i, a in enumerate(val)
        ],
        "ensemble_test_accuracy": test[-1] if test else None,
        "best_ensemble": best,
    }


def _average_metrics(result, start_step: int) -> dict:
    """The weight average's accuracies, with and without BatchNorm re-estimated."""

    def accuracy(ev):
        return ev.get("accuracy") if ev else None

    return {
        "start_step": start_step,
        "count": result.average_count,
        "bn_batches": result.average_bn_batches,
        "val_accuracy": accuracy(result.average_val),
        "test_accuracy": accuracy(result.average_test),
        # None without BatchNorm: nothing to re-estimate
        "val_accuracy_no_bn_update": accuracy(result.average_val_no_bn),
        "test_accuracy_no_bn_update": accuracy(result.average_test_no_bn),
    }


def _write_outputs(args, setup: _Setup, result, metrics: dict) -> None:
    """``test_probs*.npy`` (``--save-probs``), ``metrics.json`` and the plot.

    Raises:
      OSError: a file that cannot be written.
    """
    import numpy as np

    ds, out = setup.ds, setup.out
    if args.save_probs and len(ds.y_test):
        import io

        probs = {"test_probs.npy": result.model}
        if result.averaged_model is not None:
            probs["test_probs_average.npy"] = result.averaged_model
        for name, m in probs.items():
            buf = io.BytesIO()
            np.save(buf, softmax_outputs(m, ds.x_test))
            write_atomic(out / name, buf.getvalue())
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    if not args.no_plot:
        _plot(metrics, out)


def _test_line(metrics: dict) -> str:
    """The summary line of ``metrics.json``: test accuracy, ensemble, average."""
    curve = metrics.get("ensemble_curve") or []
    average, best = metrics.get("average"), metrics.get("best_ensemble")
    ensemble = ""
    if best:  # the ensemble chosen on validation (best_ensemble), not all M
        ensemble = (
            f"  ensemble(last {best['m']} of {len(curve)}, m chosen on val) "
            f"{best['test_accuracy']:.4f}"
        )
    elif curve:
        ensemble = f"  ensemble({len(curve)}) {metrics['ensemble_test_accuracy']:.4f}"
    return (
        f"test accuracy {metrics['test_accuracy'] or float('nan'):.4f}"
        + ensemble
        + (
            f"  average({average['count']}) {average['test_accuracy']:.4f}"
            + (
                f" (no BN update {average['test_accuracy_no_bn_update']:.4f})"
                if average["test_accuracy_no_bn_update"] is not None
                else ""
            )
            if average and average["test_accuracy"] is not None
            else ""
        )
        + f"  best epoch {metrics['best_epoch']}  epochs {metrics['epochs_run']}"
        + ("  (stopped early)" if metrics["stopped_early"] else "")
    )


if __name__ == "__main__":
    raise SystemExit(main())
