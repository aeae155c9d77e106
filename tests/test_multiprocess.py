"""Two real JAX processes (gloo over loopback) against one process with two devices.

The same worker (this file, run as a script) trains, resumes, sweeps and grids
twice: once as 2 processes of one CPU device each, connected by
``jax.distributed`` on 127.0.0.1, and once as ONE process with 2 XLA host
devices. Both see the same global batches, so losses and params must agree to
float32 rounding (the gradient's cross-device sum is the only reduction whose
order may differ). A third run kills one of two processes mid-training: the other
must fail with the distributed runtime's error within a bounded time. Every
process started here is killed in a ``finally``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).resolve()
ROOT = WORKER.parent.parent
N, BATCH, EPOCHS, STEPS = 256, 32, 2, 24
HEARTBEAT_S = 5
# Startup of two processes on this 2-core machine takes ~15 s; a dead peer is
# noticed after HEARTBEAT_S (or at once, by a collective in flight).
DEATH_DEADLINE_S = 30


# --------------------------------------------------------------------- worker


def synthetic(n, seed, size=8):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).integers(0, 200, (10, size, size))
    y = rng.integers(0, 10, n).astype(np.int32)
    x = np.clip(templates[y] + rng.integers(-90, 90, (n, size, size)), 0, 255)
    return x.astype(np.uint8), y


def worker(mode: str, out: Path, port: int, rank: int, nproc: int) -> None:
    import tempfile

    import jax

    from lrjax._src import distributed

    # Compiles on this machine dominate (~0.6 s each, even for an init): the
    # resumed fit and later runs of the suite reuse them, as conftest.py does.
    cache = Path(tempfile.gettempdir()) / f"lrjax-tests-jax-cache-{os.getuid()}"
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    if nproc > 1:
        distributed.initialize(
            f"127.0.0.1:{port}",
            nproc,
            rank,
            bind_address=f"127.0.0.1:{port}",
            initialization_timeout_s=60,
            heartbeat_timeout_s=HEARTBEAT_S,
            shutdown_timeout_s=10,
        )
    import optax

    from lrjax._src.batches import scale_images
    from lrjax._src.fit import FitConfig, fit
    from lrjax._src.hooks import Hook
    from lrjax._src.lr_grid import lr_grid
    from lrjax._src.models import mlp as plain_mlp
    from lrjax._src.range_test import lr_range_test
    from lrjax._src.specs import Divergence, Execution, GridConfig, Population, Sweep

    train, val = synthetic(N, 0), synthetic(64, 1)

    def mlp(*args, **kwargs):  # fed uint8 images: scale_images in front
        from flax import nnx

        return nnx.Sequential(scale_images, plain_mlp(*args, **kwargs))

    def sync(name):
        if nproc > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    class Losses(Hook):
        def __init__(self):
            self.losses = []

        def act(self, run, end):
            if self.epochs > EPOCHS and not self.losses:
                print("ready", flush=True)  # training: the test may kill a peer
            self.losses += end.metrics["loss"].tolist()

    def train_mlp(epochs, ckpt=None, resume=False, logdir=None):
        losses = Losses()
        losses.epochs = epochs
        res = fit(
            mlp(64, 10, (16,), key=jax.random.key(0)),
            optax.sgd,
            train,
            key=jax.random.key(1),
            config=FitConfig(
                epochs=epochs,
                batch_size=BATCH,
                learning_rate=0.05,
                chunks_per_epoch=2,
                checkpoint_dir=ckpt,
                resume=resume,
                logdir=logdir,
                hooks=[losses],
            ),
            val_data=val,
        )
        params = [np.asarray(a).tolist() for a in jax.tree.leaves(res.params)]
        return {
            "losses": losses.losses,
            "val_loss": [r["val_loss"] for r in res.history],
            "params": params,
            "device": res.device,
        }

    doc = {"processes": jax.process_count(), "devices": jax.device_count()}
    ckpt = out / "ckpt"
    doc["fit"] = train_mlp(EPOCHS, ckpt=ckpt, logdir=out / "tb")
    sync("fit done")
    doc["event_files"] = len(list((out / "tb").glob("events.out.tfevents.*")))
    # A job that died during its last epoch leaves the previous epoch's
    # checkpoint: drop the last one, then resume from there under 2 processes.
    steps = sorted(int(p.name) for p in (ckpt / "latest").iterdir() if p.name.isdigit())
    doc["checkpoints"] = steps
    sync("checkpoints listed")
    if distributed.is_main():
        for kind in ("latest", "best"):
            shutil.rmtree(ckpt / kind / str(steps[-1]), ignore_errors=True)
    sync("checkpoint dropped")
    doc["resumed"] = train_mlp(EPOCHS, ckpt=ckpt, resume=True)
    # An iterable of batches: each process yields ITS rows of every global batch.
    rows = BATCH // nproc
    x, y = train
    mine = [
        (
            x[i + rank * rows : i + (rank + 1) * rows],
            y[i + rank * rows : i + (rank + 1) * rows],
        )
        for i in range(0, N, BATCH)
    ]
    losses = Losses()
    losses.epochs = 1
    fit(
        mlp(64, 10, (16,), key=jax.random.key(0)),
        optax.sgd,
        mine,
        key=jax.random.key(1),
        config=FitConfig(
            epochs=1, batch_size=BATCH, learning_rate=0.05, hooks=[losses]
        ),
    )
    doc["fit_iterable"] = {"losses": losses.losses}
    rt = lr_range_test(
        lambda k: mlp(64, 10, (16,), key=k),
        optax.sgd,
        train,
        key=jax.random.key(2),
        sweep=Sweep(num_steps=STEPS, init_value=1e-3, end_value=1.0, batch_size=BATCH),
        divergence=Divergence(stop=False),
        population=Population(seeds=2),
        execution=Execution(chunks=3),
    )
    doc["range_test"] = {
        "losses": rt.losses.tolist(),
        "lrs": rt.lrs.tolist(),
        "device": rt.device,
    }
    try:
        g = lr_grid(
            mlp(64, 10, (16,), key=jax.random.key(0)),
            optax.sgd,
            train,
            val,
            lrs=[0.01, 0.1],
            key=jax.random.key(3),
            config=GridConfig(batch_size=BATCH),
        )
        doc["grid"] = {
            "val_loss": g.val_loss.tolist(),
            "train_loss": g.train_loss.tolist(),
            "device": g.device,
        }
    except RuntimeError as e:  # lr_grid fetching an array sharded over processes
        doc["grid"] = {"error": str(e).splitlines()[0]}
    (out / f"result-{rank}.json").write_text(json.dumps(doc))
    if nproc > 1:
        train_mlp(10_000)  # until the test kills one of the two processes
        raise SystemExit("the peer was killed but this process kept training")


# ---------------------------------------------------------------------- tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
    e.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    if devices > 1:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return e


def start(mode, out, port, rank, nproc, devices=1, **kw):
    cmd = [sys.executable, "-W", "error", str(WORKER), mode, str(out), str(port)]
    return subprocess.Popen(
        [*cmd, str(rank), str(nproc)],
        env=env(devices),
        cwd=str(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def finish(procs, timeout):
    """Waits for every process; kills them all on a timeout or an error."""
    outs = []
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outs.append(out)
    finally:
        kill_all(procs)
    return outs


def kill_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(two_processes, one_process, death)``: each worker's JSON, and what the
    survivor did after its peer was killed.

    The pair, once done, keeps training until process 1 is killed; process 0
    must then fail on its own within ``DEATH_DEADLINE_S``.
    """
    multi = tmp_path_factory.mktemp("two-processes")
    single = tmp_path_factory.mktemp("one-process")
    port = free_port()
    # The reference runs alongside the pair: the pair spends its start waiting.
    pair = [start("check", multi, port, r, 2) for r in (0, 1)]
    ref = start("check", single, 0, 0, 1, devices=2)
    procs = [*pair, ref]
    try:
        ref_out = finish([ref], timeout=150)[0]
        assert ref.returncode == 0, ref_out[-4000:]
        deadline = time.monotonic() + 150
        logs = [[], []]
        for p, log in zip(pair, logs, strict=True):
            while not log or "ready" not in log[-1]:
                line = p.stdout.readline()
                assert line or p.poll() is None, "".join(log)[-4000:]
                assert time.monotonic() < deadline, "".join(log)[-4000:]
                log.append(line)
        pair[1].kill()
        t0 = time.monotonic()
        out = "".join(logs[0]) + finish([pair[0]], timeout=DEATH_DEADLINE_S)[0]
        death = {"s": time.monotonic() - t0, "rc": pair[0].returncode, "out": out}
    finally:
        kill_all(procs)
    docs = [json.loads((multi / f"result-{r}.json").read_text()) for r in (0, 1)]
    assert docs[0] == docs[1], "the two processes disagree"
    return docs[0], json.loads((single / "result-0.json").read_text()), death


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=rtol, atol=atol)


def test_runs_are_what_they_claim(runs):
    two, one, _ = runs
    assert (two["processes"], two["devices"]) == (2, 2)
    assert (one["processes"], one["devices"]) == (1, 2)
    assert two["fit"]["device"] == one["fit"]["device"] == "cpu x2 (cpu)"
    assert two["range_test"]["device"] == "cpu x2 (cpu)"


def test_fit_two_processes_equal_one_process_with_two_devices(runs):
    two, one, _ = runs
    steps = EPOCHS * (N // BATCH)
    assert len(two["fit"]["losses"]) == len(one["fit"]["losses"]) == steps
    # float32: the only difference is the order of a 2-term gradient sum.
    close(two["fit"]["losses"], one["fit"]["losses"])
    close(two["fit"]["val_loss"], one["fit"]["val_loss"])
    for a, b in zip(two["fit"]["params"], one["fit"]["params"], strict=True):
        close(a, b)
    # and it learned something: not two equal constants
    assert np.mean(two["fit"]["losses"][-8:]) < np.mean(two["fit"]["losses"][:8])


def test_fit_on_an_iterable_of_each_process_rows(runs):
    """Each process's iterable yields its half of every global batch: the same
    updates as one process fed the whole batches (fit raised UnboundLocalError
    here before: the steps per epoch were set only for one process's iterable)."""
    two, one, _ = runs
    losses = two["fit_iterable"]["losses"]
    assert len(losses) == len(one["fit_iterable"]["losses"]) == N // BATCH
    close(losses, one["fit_iterable"]["losses"])
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learned


def test_tensorboard_is_written_once_for_the_job(runs):
    for doc in runs[:2]:
        assert doc["event_files"] == 1


def test_resume_under_two_processes_is_exact(runs):
    for doc in runs[:2]:
        spe = N // BATCH
        assert doc["checkpoints"] == [spe * (EPOCHS - 1), spe * EPOCHS]
        assert doc["resumed"]["params"] == doc["fit"]["params"]
        assert doc["resumed"]["val_loss"] == doc["fit"]["val_loss"]


def test_range_test_seeds_sharded_over_processes(runs):
    two, one, _ = runs
    assert np.shape(two["range_test"]["losses"]) == (2, STEPS)
    close(two["range_test"]["lrs"], one["range_test"]["lrs"], rtol=0, atol=0)
    close(two["range_test"]["losses"], one["range_test"]["losses"])
    # the seeds are different runs, not one run twice
    assert two["range_test"]["losses"][0] != two["range_test"]["losses"][1]


def test_grid_population_sharded_over_processes(runs):
    two, one, _ = runs
    assert "error" not in two["grid"], two["grid"].get("error")
    assert two["grid"]["device"] == "cpu x2 (cpu)"
    close(two["grid"]["train_loss"], one["grid"]["train_loss"])
    close(two["grid"]["val_loss"], one["grid"]["val_loss"])


def test_a_dead_process_takes_the_job_down(runs):
    death = runs[2]
    assert death["rc"] != 0, death["out"][-3000:]
    assert death["s"] < DEATH_DEADLINE_S
    assert (
        "distributed service detected fatal errors" in death["out"]
        or "Gloo" in death["out"]
    ), death["out"][-3000:]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--coordinator", "h:1"], "also needs --num-processes, --process-id"),
        (["--num-processes", "2", "--process-id", "0"], "also needs --coordinator"),
        (
            ["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
            "below",
        ),
        (["--distributed", "auto", "--process-id", "0"], "detects --process-id"),
        (["--coordinator", "nohost"], "HOST:PORT"),
        (["--num-processes", "0"], "must be >= 1"),
    ],
)
def test_distributed_flags_refuse_what_cannot_work(argv, message):
    from lrjax.cli import ArgumentParser, UsageError
    from lrjax.cli.distributed import add_distributed_args, init_distributed

    p = ArgumentParser(prog="t")
    add_distributed_args(p)
    with pytest.raises(UsageError, match=message):
        init_distributed(p.parse_args(argv))


def test_one_process_needs_no_runtime():
    import jax

    from lrjax._src import distributed
    from lrjax.cli import ArgumentParser
    from lrjax.cli.distributed import add_distributed_args, init_distributed

    p = ArgumentParser(prog="t")
    add_distributed_args(p)
    assert init_distributed(p.parse_args([]))
    one = ["--coordinator", "127.0.0.1:1", "--num-processes", "1", "--process-id", "0"]
    assert init_distributed(p.parse_args(one))
    assert not jax.distributed.is_initialized()
    assert distributed.is_main() and distributed.agree("signal") == "signal"
    a = jax.numpy.arange(3.0)
    np.testing.assert_array_equal(distributed.host(a), [0.0, 1.0, 2.0])


if __name__ == "__main__":
    mode, out, port, rank, nproc = sys.argv[1:6]
    worker(mode, Path(out), int(port), int(rank), int(nproc))
