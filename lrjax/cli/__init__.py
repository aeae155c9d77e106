"""The command lines (find, train, grid) and the pieces they share: one-line errors,
output dirs, JAX setup, model and optimizer flags."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")


class UsageError(Exception):
    """Bad input: reported as one line on stderr with exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        raise UsageError(message)


def usage_name(script: str) -> str:
    """The name ``--help`` shows: the console script's (``lrjax-find``) when it
    runs as one, else the module's.

    >>> usage_name("lrjax-no-such-script")
    'python -m lrjax.no.such.script'
    """
    if Path(sys.argv[0]).name == script:
        return script
    return "python -m " + script.replace("-", ".")


def fail(prog: str, message: str) -> int:
    """Prints ``prog: error: message`` as ONE line on stderr and returns 2.

    Only the first line of ``message`` is printed: an error raised inside traced
    code carries JAX's multi-line note about filtered frames after it.
    """
    first = next((line for line in str(message).splitlines() if line.strip()), "")
    print(f"{prog}: error: {first}", file=sys.stderr)
    return 2


def progress(prog: str, quiet: bool) -> dict:
    """``Execution``'s progress for a command line: a tqdm bar on a terminal,
    :class:`lrjax.hooks.ProgressLines` on a pipe or in a log, nothing with
    ``--quiet``. ``{"progress": bool, "hooks": [...]}``."""
    if quiet:
        return {"progress": False, "hooks": []}
    if sys.stderr.isatty():
        return {"progress": True, "hooks": []}
    from lrjax._src.hooks import ProgressLines

    return {"progress": False, "hooks": [ProgressLines(prog)]}


def interrupted(prog: str, what: str = "") -> int:
    """Ctrl-C outside a run that stops at a chunk boundary: one line, exit 130."""
    print(f"{prog}: interrupted{what and ' '}{what}", file=sys.stderr)
    return 130


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def hidden_sizes(text: str) -> tuple[int, ...]:
    """``--hidden 300,100`` -> ``(300, 100)``; argparse reports a bad value."""
    from lrjax._src.models import parse_hidden

    try:
        return parse_hidden(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The data, model and optimizer flags shared by find, grid and train."""
    p.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist (default), mnist, or tfds:NAME",
    )
    p.add_argument("--data-dir", default=None, help="directory with the IDX files")
    p.add_argument(
        "--model",
        default="mlp",
        metavar="mlp|cnn|FILE.py:FUNCTION",
        help="mlp (default: the seed recipe's MLP), cnn (Conv-BN-ReLU-pool x2, Dense "
        "128, Dropout 0.3), or FILE.py:FUNCTION, your factory FUNCTION(num_classes, "
        "*, rngs) -> nnx.Module (a loss_fn(model, batch) beside it is used too)",
    )
    p.add_argument(
        "--hidden",
        type=hidden_sizes,
        default=None,
        help="mlp's hidden sizes (default 300,100; an error with other models)",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="random 2-pixel shifts and horizontal flips of the training images, on "
        "the device (lrjax.models.Augment in front of the model)",
    )
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--batch-size", type=int_at_least(1), default=32)


@dataclasses.dataclass(frozen=True)
class ModelChoice:
    """What ``--model`` (and ``--hidden``, ``--augment``) built.

    ``build(key) -> nnx.Module`` makes one initialisation; ``loss_fn`` is the
    user file's ``loss_fn`` or None (the classification loss); ``config`` goes
    into the JSON outputs.
    """

    build: Callable[[Any], Any]
    loss_fn: Callable | None
    config: dict[str, Any]


def _why(e: Exception) -> str:
    """``Type: first line of the message``: the user's error, on one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _load_user_factory(spec: str):
    """``FILE.py:FUNCTION -> (function, loss_fn | None)``; UsageError otherwise."""
    import importlib.util

    path, _, name = spec.rpartition(":")
    if not path or not name.isidentifier():
        raise UsageError(f"--model must be mlp, cnn or FILE.py:FUNCTION, got {spec!r}")
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--model {spec}: no such file {path}")
    module_name = f"lrjax_user_model_{abs(hash(str(file.resolve())))}"
    try:
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        if module_spec is None or module_spec.loader is None:
            raise ImportError("not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except Exception as e:  # the user's code: any error is bad input
        raise UsageError(
            f"--model {spec}: importing {path} failed: {_why(e)}"
        ) from None
    fn = getattr(module, name, None)
    if fn is None:
        raise UsageError(f"--model {spec}: {path} defines no {name}")
    if not callable(fn):
        raise UsageError(f"--model {spec}: {name} is not a function")
    loss_fn = getattr(module, "loss_fn", None)
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"--model {spec}: loss_fn in {path} is not a function")
    return fn, loss_fn


def model_choice(args: argparse.Namespace, ds) -> ModelChoice:
    """The model factory of ``--model``, ``--hidden`` and ``--augment`` for ``ds``.

    ``mlp`` and ``cnn`` are :func:`lrjax.mlp` and :func:`lrjax.cnn`;
    ``FILE.py:FUNCTION`` calls ``FUNCTION(ds.num_classes, rngs=nnx.Rngs(key))``.
    The data stay uint8 on the device: the model is ``nnx.Sequential(
    lrjax.scale_images, model)``, with ``--augment`` ``nnx.Sequential(
    lrjax.scale_images, Augment(...), model)``, the augmentation's stream drawn
    from ``fold_in(key, 1)``. The factory is called
    once here, so that a user's factory that raises or returns something other
    than an ``nnx.Module`` is bad input before any work.

    Raises:
      UsageError: an unknown model, a missing file or function, a factory that
        fails, ``--hidden`` with a model other than mlp.
    """
    import math

    import jax
    from flax import nnx

    from lrjax._src import models
    from lrjax._src.batches import scale_images

    spec = args.model
    loss_fn = None
    if args.hidden is not None and spec != "mlp":
        raise UsageError(f"--hidden applies to --model mlp only, not {spec}")
    config: dict[str, Any] = {"model": spec, "augment": bool(args.augment)}
    if spec == "mlp":
        hidden = args.hidden or (300, 100)
        size = math.prod(ds.input_shape)
        config["hidden"] = list(hidden)

        def base(k):
            return models.mlp(size, ds.num_classes, hidden, key=k)

    elif spec == "cnn":
        config["hidden"] = None

        def base(k):
            return models.cnn(ds.num_classes, key=k, input_shape=ds.input_shape)

    else:
        fn, loss_fn = _load_user_factory(spec)
        config["hidden"] = None

        def base(k):
            return fn(ds.num_classes, rngs=nnx.Rngs(k))

    def framed(model, k):  # the layers in front of the model
        layers: list[Any] = [scale_images]
        if args.augment:
            layers.append(
                models.Augment(rngs=nnx.Rngs(augment=jax.random.fold_in(k, 1)))
            )
        return nnx.Sequential(*layers, model)

    def build(k):
        return framed(base(k), k)

    if spec not in ("mlp", "cnn"):
        key = jax.random.key(0)
        try:
            probe = base(key)
        except Exception as e:  # the user's code: any error is bad input
            raise UsageError(f"--model {spec}: the factory raised {_why(e)}") from None
        if not isinstance(probe, nnx.Module):
            raise UsageError(
                f"--model {spec}: the factory returned {type(probe).__name__}, "
                "not an nnx.Module"
            )
        check_first_batch(spec, framed(probe, key), loss_fn, ds, args.batch_size)
    return ModelChoice(build, loss_fn, config)


def batch_form(ds, batch_size: int | str = "B") -> str:
    """The batches the command lines give a model file's ``loss_fn``:
    ``(images uint8[B, 28, 28], labels int32[B])`` for (Fashion-)MNIST; the model
    it gets scales the images to float32 in [0, 1] (:func:`model_choice`)."""
    dims = ", ".join(str(d) for d in (batch_size, *ds.x_train.shape[1:]))
    x, y = ds.x_train.dtype, ds.y_train.dtype
    return f"(images {x}[{dims}], labels {y}[{batch_size}])"


def check_first_batch(spec: str, model, loss_fn, ds, batch_size: int) -> None:
    """Traces a model file's ``loss_fn`` (or the default loss) once on the batch
    form the command lines pass (:func:`batch_form`; ``model`` scales the images):
    nothing runs, and a loss written for another form (``batch["image"]``) is one
    line before any work, not a traceback from inside a compiled step.

    Raises:
      UsageError: the loss or the model raised on that form, or the loss returned
        something other than a scalar or ``(scalar, {name: scalar})``.
    """
    import jax

    from lrjax._src.step import classification_loss, loss_and_metrics, split_model

    loss = classification_loss() if loss_fn is None else loss_fn
    m, params, rest = split_model(model)
    batch = (
        jax.ShapeDtypeStruct((batch_size, *ds.x_train.shape[1:]), ds.x_train.dtype),
        jax.ShapeDtypeStruct((batch_size,), ds.y_train.dtype),
    )

    def first(params, rest, batch):
        return loss_and_metrics(loss(m.bind(params, rest, train=True), batch))

    try:
        jax.eval_shape(first, params, rest, batch)
    except Exception as e:  # the user's code: any error is bad input
        path = spec.rpartition(":")[0]
        what = (
            f"loss_fn in {path}" if loss_fn is not None else "the model (default loss)"
        )
        raise UsageError(
            f"--model {spec}: {what} failed on the first batch {batch_form(ds)}: "
            f"{_why(e)}; the command lines pass every batch as that (x, y) tuple "
            "(docs/guide.md, 'Your own model on the command line')"
        ) from None


def load_data(args: argparse.Namespace):
    """Loads ``--dataset`` (from ``--data-dir``) and checks ``--batch-size``.

    Raises:
      lrjax._src.data.DatasetError: missing, corrupt or unknown dataset.
      UsageError: a batch larger than the training split.
    """
    from lrjax._src.data import load_dataset

    ds = load_dataset(args.dataset, args.data_dir)
    n = len(ds.y_train)
    if args.batch_size > n:
        raise UsageError(
            f"--batch-size {args.batch_size} is larger than the training set "
            f"({n} examples)"
        )
    return ds


def save_png(fig, path: Path, dpi: int = 110) -> None:
    """Saves a matplotlib figure atomically as PNG and closes it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def nonneg_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise UsageError(f"expected a finite number >= 0, got {text}")
    return value


def check_budget(args, steps_per_epoch: int, families, label: str) -> None:
    """Refuses a budget (``--epochs`` x ``steps_per_epoch``) too short for the
    recipe ``families``' shapes, before any work, naming the flags that set it.

    Raises:
      UsageError: ``--schedule {label} needs at least ... updates``.
    """
    from lrjax._src.recipes import min_total_steps

    least = max((min_total_steps(f) for f in families), default=0)
    total = args.epochs * steps_per_epoch
    if total < least:
        raise UsageError(
            f"--schedule {label} needs at least {least} updates, got {total} "
            f"({args.epochs} epoch(s) of {steps_per_epoch} at --batch-size "
            f"{args.batch_size}): raise --epochs or lower --batch-size"
        )


def decay_of(name: str, weight_decay: float | None) -> float:
    """The weight decay ``optimizer_factory(name, weight_decay)`` applies: 1e-4
    for adamw when none is given, else the flag's (0 for none)."""
    if weight_decay is None:
        return 1e-4 if name == "adamw" else 0.0
    return weight_decay


def optimizer_factory(name: str, weight_decay: float | None = None):
    """``name -> (learning_rate -> optax.GradientTransformation)``.

    ``weight_decay``: adamw's decoupled decay; for the other optimizers L2 through
    ``optax.add_decayed_weights`` before the update, so it is scaled by the lr like
    sgd's. ``None`` (the default) means 1e-4 for adamw and none for the others;
    ``0.0`` means no decay for all, adamw included.

    Raises:
      UsageError: an unknown optimizer, or a negative or non-finite decay.
    """
    import math

    import optax

    if weight_decay is not None and not (
        weight_decay >= 0 and math.isfinite(weight_decay)
    ):
        raise UsageError(f"weight decay must be finite and >= 0, got {weight_decay}")
    adamw_decay = decay_of("adamw", weight_decay)
    factories = {
        "sgd": optax.sgd,
        "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
        "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        "adam": optax.adam,
        "adamw": lambda lr: optax.adamw(lr, weight_decay=adamw_decay),
    }
    if name not in factories:
        raise UsageError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
    base = factories[name]
    if not weight_decay or name == "adamw":
        return base
    return lambda lr: optax.chain(optax.add_decayed_weights(weight_decay), base(lr))


def prepare_out_dir(out: str | None, kind: str, force: bool) -> Path:
    """Creates the output directory; refuses a non-empty one unless ``force``.

    The default is a new timestamped directory under ``runs/``. Under several
    processes the directory must be given (the same one, seen by every process)
    and only process 0 checks that it is empty.
    """
    from lrjax._src.distributed import is_main, process_count

    if out is None and process_count() > 1:
        flag = "--logdir" if kind == "train" else "--out"
        raise UsageError(
            f"{flag} is required with several processes: one directory that every "
            "process sees, the same on all"
        )
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{kind}-{stamp}"
        n = 1
        while path.exists():
            n += 1
            path = Path("runs") / f"{kind}-{stamp}-{n}"
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise UsageError(f"--out {out} exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not force and is_main():
            raise UsageError(
                f"--out {out} is not empty; pass --force to write into it "
                f"(files of the same name are replaced) or choose another directory"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lrjax-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(
            f"cannot write to output directory {path}: {e.strerror}"
        ) from None
    return path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Writes via a temp file in the same directory and ``os.replace``; under
    several processes only process 0 writes.

    Raises:
      OSError: with ``filename`` ``path``; the temp file is removed.
    """
    from lrjax._src.distributed import is_main

    if not is_main():
        return
    tmp = path.with_name(f".{path.name}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # e.g. a full disk: leave no partial file, name the path
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e


def setup_jax(cpu_devices: int | None = None) -> None:
    """Persistent compilation cache, and optionally several XLA host devices.

    Must run before JAX initialises its backends (the first array op).
    """
    import jax

    try:
        from jax._src.xla_bridge import backends_are_initialized
    except ImportError:  # private API moved: leave the device count alone
        started = True
    else:
        started = backends_are_initialized()
    if cpu_devices and cpu_devices > 1 and not started:
        # One XLA host device per core, so a vmapped population (seeds, lrs) is
        # sharded over the cores, each device on one thread: with Eigen's shared
        # pool every device would spread over every core and they would contend
        # (8 seeds on 2 cores: 5.6x one seed with the pool, 4.3x without; see
        # benchmarks/bench_find.py). Only the CPU backend reads these settings.
        jax.config.update("jax_num_cpu_devices", cpu_devices)
        flag = "--xla_cpu_multi_thread_eigen=false"
        flags = os.environ.get("XLA_FLAGS", "")
        if flag not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    cache = os.environ.get("LRJAX_JAX_CACHE") or os.path.join(
        os.environ.get("LRJAX_CACHE_DIR")
        or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lrjax"
        ),
        "jax_cache",
    )
    if cache != "off":
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
