"""A write that fails (a full disk) ends ``lrjax-train`` at once with one line
naming the path and the cause; the last good checkpoint is kept and ``--resume``
continues from it once there is room (issue #18 item 4).

The first tests make the writes fail by patching (they run anywhere); the last
ones fill a real small tmpfs, and are skipped where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lrjax._src import hooks
from lrjax.cli import train
from tests.test_train_cli import SNAP_ARGS, read, tiny, without_times  # noqa: F401

ENOSPC = os.strerror(errno.ENOSPC)
SPE = 16  # 512 training examples in batches of 32
ARGS = [*SNAP_ARGS, "--no-plot"]  # 3 epochs of 2 chunks


@contextlib.contextmanager
def deadline(seconds: int):
    """Fails instead of hanging (a dead writer thread once blocked forever)."""

    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def after_epoch_1(monkeypatch, action) -> list[float]:
    """Runs ``action()`` once, right after the checkpoints of epoch 1; returns
    the time it ran (a list, filled then)."""
    original = hooks.Checkpoints.act
    when: list[float] = []

    def act(self, run, end):
        out = original(self, run, end)
        if end.record["epoch"] == 1 and not when:
            action()
            when.append(time.monotonic())
        return out

    monkeypatch.setattr(hooks.Checkpoints, "act", act)
    return when


def failed_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # no thread or Orbax tracebacks
    return lines[0]


def steps_kept(logdir: Path) -> list[str]:
    return sorted(p.name for p in (logdir / "checkpoints" / "latest").iterdir())


def resumes_to_the_full_run(tiny, tmp_path, logdir: Path, capsys) -> None:  # noqa: F811
    full = tmp_path / "full"
    assert train.main([*tiny, *ARGS, "--logdir", str(full)]) == 0
    assert train.main(["--logdir", str(logdir), "--resume"]) == 0, capsys.readouterr()
    assert without_times(read(logdir)) == without_times(read(full))


def test_a_tensorboard_write_that_fails_stops_the_run(
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    """tensorboardX's writer thread died on ENOSPC and the next add_scalar blocked
    forever on its queue (ignoring SIGTERM); now the write fails in the run."""
    from tensorboardX.record_writer import RecordWriter

    full = []
    original = RecordWriter.write

    def write(self, data):
        if full:
            raise OSError(errno.ENOSPC, ENOSPC)
        return original(self, data)

    run = tmp_path / "run"
    with monkeypatch.context() as m, deadline(120):
        m.setattr(RecordWriter, "write", write)
        when = after_epoch_1(m, lambda: full.append(1))
        rc = train.main([*tiny, *ARGS, "--logdir", str(run)])
    assert rc == 2 and time.monotonic() - when[0] < 30
    line = failed_line(capsys)
    (events,) = run.glob("events.out.tfevents.*")
    assert line == (
        f"lrjax.train: error: cannot write {events}: [Errno 28] {ENOSPC}; the last "
        "good checkpoint (epoch 1) is kept: free space and run again with --resume"
    )
    assert steps_kept(run) == [str(SPE)] and not (run / "metrics.json").exists()
    resumes_to_the_full_run(tiny, tmp_path, run, capsys)


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_partial_step(
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    """Orbax raises TensorStore's error as a ValueError whose text carries the
    os error code; its threads log tracebacks. One line names the step and the
    cause, the partial step directory is removed, epoch 1's checkpoint is kept."""
    ocp = hooks.orbax_checkpoint()  # as lrjax imports it

    original = ocp.CheckpointManager.save

    def save(self, step, *args, **kwargs):
        if step == 2 * SPE and self.directory.name == "latest":
            partial = Path(self.directory) / f"{step}.orbax-checkpoint-tmp"
            (partial / "state").mkdir(parents=True)
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing "carry.0000/0" in OCDBT database '
                f'at local file "{partial}/state/": Failed to write 996590 bytes to '
                f"file 11: No space left on device [os_error_code='28']"
            )
        return original(self, step, *args, **kwargs)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ocp.CheckpointManager, "save", save)
        assert train.main([*tiny, *ARGS, "--logdir", str(run)]) == 2
    line = failed_line(capsys)
    step_dir = (run / "checkpoints" / "latest" / str(2 * SPE)).absolute()
    assert line == (
        f"lrjax.train: error: cannot write {step_dir}: [Errno 28] {ENOSPC}; the last "
        "good checkpoint (epoch 1) is kept: free space and run again with --resume"
    )
    assert steps_kept(run) == [str(SPE)]  # no partial step left behind
    resumes_to_the_full_run(tiny, tmp_path, run, capsys)


def test_a_results_file_that_cannot_be_written_says_what_is_kept(
    tiny,  # noqa: F811
    tmp_path,
    monkeypatch,
    capsys,
):
    from lrjax import cli

    original = cli.write_atomic

    def write_atomic(path, data):
        if path.name == "metrics.json":
            raise OSError(errno.ENOSPC, ENOSPC, str(path))
        return original(path, data)

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(train, "write_atomic", write_atomic)
        assert train.main([*tiny, *ARGS, "--logdir", str(run)]) == 2
    assert failed_line(capsys) == (
        f"lrjax.train: error: cannot write {run / 'metrics.json'}: [Errno 28] "
        f"{ENOSPC}; the last good checkpoint (epoch 3) is kept: free space and run "
        "again with --resume"
    )
    assert train.main(["--logdir", str(run), "--resume"]) == 0
    assert read(run)["epochs_run"] == 3


# A real full disk: a small tmpfs, filled up after epoch 1's checkpoints.


@pytest.fixture
def small_disk(tmp_path):
    where = tmp_path / "disk"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)]
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs is not permitted here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(path: Path) -> None:
    """Writes ``path`` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


@pytest.mark.parametrize("tensorboard", [True, False], ids=["all", "checkpoints"])
def test_a_full_disk_ends_the_run_and_resume_works_after(
    tiny,  # noqa: F811
    tmp_path,
    small_disk,
    monkeypatch,
    capfd,
    tensorboard,
):
    """Without TensorBoard the checkpoint is the first write to fail (Orbax's own
    error and threads); with it, whichever comes first."""
    fit = importlib.import_module("lrjax._src.fit")

    ballast = small_disk / "ballast"
    run = small_disk / "run"
    with monkeypatch.context() as m, deadline(120):
        if not tensorboard:
            m.setattr(fit, "TensorBoard", lambda *a, **k: hooks.Hook())
        when = after_epoch_1(m, lambda: fill(ballast))
        rc = train.main([*tiny, *ARGS, "--logdir", str(run)])
    assert rc == 2 and time.monotonic() - when[0] < 30
    line = failed_line(capfd)
    assert line.startswith(f"lrjax.train: error: cannot write {run}")
    assert line.endswith(
        f": [Errno 28] {ENOSPC}; the last good checkpoint (epoch 1) is kept: free "
        "space and run again with --resume"
    )
    if not tensorboard:
        assert f"checkpoints/latest/{2 * SPE}:" in line
    assert steps_kept(run) == [str(SPE)]
    ballast.unlink()  # room again
    resumes_to_the_full_run(tiny, tmp_path, run, capfd)
