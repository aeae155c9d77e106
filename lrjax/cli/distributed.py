"""The multi-process flags every command line shares (``jax.distributed``).

Two lines wire them into a command line: ``add_distributed_args(parser)`` in its
parser, and ``init_distributed(args)`` right after parsing, before anything
starts JAX's backends (the first array, ``jax.devices()``). Then every process
runs the same command; only process 0 prints (the others' stdout is discarded;
stderr stays, so every process's errors are seen).

* ``--coordinator HOST:PORT --num-processes N --process-id I``: explicit, e.g.
  two processes on one machine with ``--coordinator 127.0.0.1:1234``.
* ``--distributed auto``: ``jax.distributed.initialize()`` reads the cluster's
  environment (SLURM, Open MPI, Cloud TPU pod slices).
* neither: one process, as before.
"""

from __future__ import annotations

import argparse
import os
import sys

from lrjax.cli import UsageError, int_at_least

__all__ = ["add_distributed_args", "init_distributed"]


def _address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Adds the flags: ``--coordinator``, ``--num-processes``, ``--process-id``,
    ``--distributed``."""
    g = parser.add_argument_group(
        "several processes (jax.distributed; docs/multiprocess.md)"
    )
    g.add_argument(
        "--coordinator",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help="address of process 0, where the coordination service listens; the "
        "same on every process",
    )
    g.add_argument(
        "--num-processes",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="how many processes the job has",
    )
    g.add_argument(
        "--process-id",
        type=int_at_least(0),
        default=None,
        metavar="I",
        help="this process's rank, 0 .. N-1 (0 prints and writes the files)",
    )
    g.add_argument(
        "--distributed",
        choices=("auto",),
        default=None,
        help="auto: jax.distributed.initialize() detects the processes (SLURM, "
        "Open MPI, Cloud TPU); instead of the three flags above",
    )


def init_distributed(args: argparse.Namespace) -> bool:
    """Connects the processes if the flags ask for it; True on process 0.

    Call before JAX starts its backends. On processes other than 0 stdout is
    discarded from here on.

    Raises:
      UsageError: flags missing or contradicting each other, or a failure that
        ``jax.distributed.initialize`` reports (e.g. no cluster to detect).
    """
    explicit = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    given = [k for k, v in explicit.items() if v is not None]
    if args.distributed == "auto":
        if given:
            raise UsageError(f"--distributed auto detects {', '.join(given)} itself")
        kwargs = {}
    elif not given:
        return True
    else:
        missing = [k for k, v in explicit.items() if v is None]
        if missing:
            raise UsageError(f"{', '.join(given)} also needs {', '.join(missing)}")
        if args.process_id >= args.num_processes:
            raise UsageError(
                f"--process-id must be below --num-processes ({args.num_processes}), "
                f"got {args.process_id}"
            )
        if args.num_processes == 1:
            return True
        kwargs = {
            "coordinator_address": args.coordinator,
            "num_processes": args.num_processes,
            "process_id": args.process_id,
        }
    from lrjax._src import distributed

    try:
        distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as e:  # one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"jax.distributed.initialize failed: {first}") from None
    if not distributed.is_main():
        # fd 1 itself, so that the runtime's own lines (gloo's) go too.
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return distributed.is_main()
