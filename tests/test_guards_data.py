"""``--data-dir`` naming a missing, empty or incomplete directory is one line on
stderr and exit code 2 for every command line, never a silent fallback to another
copy of the dataset (issue #11)."""

from __future__ import annotations

import importlib

import pytest

PROGS = {  # module -> the flag naming its output directory
    "find": "--out",
    "grid": "--out",
    "train": "--logdir",
}


@pytest.fixture
def elsewhere(tiny_fashion_mnist, monkeypatch):
    """A complete copy in $LRJAX_DATA_DIR: the old fallback would have loaded it."""
    monkeypatch.setenv("LRJAX_DATA_DIR", str(tiny_fashion_mnist))

    def no_network(*args, **kwargs):
        pytest.fail("a test touched the network")

    monkeypatch.setattr("urllib.request.urlopen", no_network)
    return tiny_fashion_mnist


def missing(tmp_path, tiny):
    return tmp_path / "nonexistent", "no such directory"


def empty(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", "none of train-images-idx3-ubyte.gz"


def incomplete(tmp_path, tiny):
    d = tmp_path / "partial"
    d.mkdir()
    name = "train-images-idx3-ubyte.gz"
    (d / name).write_bytes((tiny / name).read_bytes())
    return d, f"incomplete, {d} lacks train-labels-idx1-ubyte.gz"


@pytest.mark.parametrize("make_dir", [missing, empty, incomplete])
@pytest.mark.parametrize("prog", sorted(PROGS))
def test_bad_data_dir_is_one_line_exit_2(prog, make_dir, elsewhere, tmp_path, capsys):
    main = importlib.import_module(f"lrjax.{prog}").main
    data_dir, needle = make_dir(tmp_path, elsewhere)
    out = tmp_path / "out"
    code = main(["--data-dir", str(data_dir), PROGS[prog], str(out), "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith(
        f"lrjax.{prog}: error: Fashion-MNIST not found in data_dir={data_dir}: {needle}"
    )
    assert err.count("\n") == 1 and err.endswith("\n")
    assert stdout == "" and not out.exists()
