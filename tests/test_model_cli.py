"""``--model mlp|cnn|FILE.py:FUNCTION`` and ``--augment`` through find, train and
grid, in-process on the tiny dataset; every bad model spec is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrjax import find, grid, train
from tests import test_train_cli

tiny = test_train_cli.tiny  # the fixture of 8x8 images, for the CNN test

USER_MODEL = """
import jax
import jax.numpy as jnp
from flax import nnx

import lrjax

CALLS = []


class Small(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.hidden = nnx.Linear(28 * 28, 16, rngs=rngs)
        self.out = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def small(num_classes, *, rngs):
    CALLS.append(num_classes)
    return Small(num_classes, rngs=rngs)


_ce = lrjax.classification_loss()


def loss_fn(model, batch):
    loss, metrics = _ce(model, batch)
    return loss, {**metrics, "marker": jnp.float32(7.0)}


def not_a_module(num_classes, *, rngs):
    return {"w": jnp.zeros(3)}


def raises(num_classes, *, rngs):
    raise RuntimeError("no weights today")


NOT_CALLABLE = 3
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL)
    return path


def run(capsys, main, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_user_model_and_loss_through_find(
    tiny_fashion_mnist, user_file, tmp_path, capsys
):
    out = tmp_path / "find"
    spec = f"{user_file}:small"
    run(capsys, find.main, "--data-dir", str(tiny_fashion_mnist), "--model", spec,
        "--out", str(out), "--steps", "20", "--batch-size", "16", "--seeds", "2",
        "--augment", "--no-plot", "--quiet")  # fmt: skip
    doc = json.loads((out / "lr_find.json").read_text())
    assert doc["config"]["model"] == spec and doc["config"]["hidden"] is None
    assert doc["config"]["augment"] is True
    header = (out / "lr_find.csv").read_text().splitlines()[0].split(",")
    rows = np.loadtxt(out / "lr_find.csv", delimiter=",", skiprows=1)
    for k in range(2):  # the file's loss_fn was the loss of every seed
        np.testing.assert_array_equal(rows[:, header.index(f"marker_seed{k}")], 7.0)
    losses = rows[:, [header.index("loss_seed0"), header.index("loss_seed1")]]
    assert not np.array_equal(losses[:, 0], losses[:, 1])  # two initialisations


def test_user_model_and_loss_through_train(
    tiny_fashion_mnist, user_file, tmp_path, capsys
):
    out = tmp_path / "train"
    spec = f"{user_file}:small"
    run(capsys, train.main, "--data-dir", str(tiny_fashion_mnist), "--model", spec,
        "--logdir", str(out), "--epochs", "1", "--lr", "0.05", "--batch-size", "50",
        "--chunks", "1", "--save-probs", "--no-plot", "--quiet")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == spec and m["augment"] is False and m["hidden"] is None
    assert m["history"][0]["train_marker"] == pytest.approx(7.0)
    probs = np.load(out / "test_probs.npy")
    assert probs.shape == (400, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert 0.0 <= m["test_accuracy"] <= 1.0


def test_user_model_and_loss_through_grid(
    tiny_fashion_mnist, user_file, tmp_path, capsys
):
    out = tmp_path / "grid"
    spec = f"{user_file}:small"
    run(capsys, grid.main, "--data-dir", str(tiny_fashion_mnist), "--model", spec,
        "--out", str(out), "--batch-size", "50", "--min-lr", "1e-2", "--max-lr",
        "1e-1", "--num", "2", "--epochs", "1", "--quiet")  # fmt: skip
    doc = json.loads((out / "grid.json").read_text())
    assert doc["config"]["model"] == spec and doc["config"]["hidden"] is None
    assert np.array(doc["val_accuracy"], dtype=float).shape == (2, 1, 1)


def test_cnn_with_augment_trains(tiny, tmp_path, capsys):
    # ``tiny``: 8x8 images (the CNN pools them to 2x2), so a CPU run takes seconds.
    out = tmp_path / "cnn"
    argv = [a for a in tiny if a not in ("--hidden", "16")]
    run(capsys, train.main, *argv, "--model", "cnn", "--augment", "--logdir",
        str(out), "--epochs", "1", "--lr", "0.05", "--optimizer", "nesterov",
        "--batch-size", "64", "--chunks", "1", "--save-probs", "--no-plot")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "cnn" and m["augment"] is True and m["hidden"] is None
    assert m["timings"]["loop"] == "dispatch"  # a convolution on the CPU
    assert np.load(out / "test_probs.npy").shape == (128, 10)


def test_mlp_default_config_is_unchanged(tiny_fashion_mnist, tmp_path, capsys):
    out = tmp_path / "find"
    run(capsys, find.main, "--data-dir", str(tiny_fashion_mnist), "--out", str(out),
        "--steps", "10", "--batch-size", "16", "--no-plot", "--quiet")  # fmt: skip
    config = json.loads((out / "lr_find.json").read_text())["config"]
    assert config["model"] == "mlp" and config["hidden"] == [300, 100]


BAD = [
    ("{dir}/missing.py:small", "no such file"),
    ("{file}:absent", "defines no absent"),
    ("{file}:NOT_CALLABLE", "is not a function"),
    ("{file}:raises", "the factory raised RuntimeError: no weights today"),
    ("{file}:not_a_module", "returned dict, not an nnx.Module"),
    ("{dir}/broken.py:small", "importing"),
    ("resnet", "must be mlp, cnn or FILE.py:FUNCTION"),
]


@pytest.mark.parametrize("cli", [find, train, grid], ids=["find", "train", "grid"])
@pytest.mark.parametrize("spec, needle", BAD, ids=[b[1].split()[0] for b in BAD])
def test_bad_model_spec_is_one_line_and_exit_2(
    tiny_fashion_mnist, user_file, tmp_path, capsys, cli, spec, needle
):
    (tmp_path / "broken.py").write_text("def small(:\n")
    spec = spec.format(dir=tmp_path, file=user_file)
    code = cli.main(["--data-dir", str(tiny_fashion_mnist), "--model", spec,
                     "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(
        f"lrjax.{cli.__name__.split('.')[-1]}: error:"
    )
    assert needle in lines[0] and "Traceback" not in err


@pytest.mark.parametrize("model", ["cnn", "{file}:small"])
def test_hidden_with_another_model_is_an_error(
    tiny_fashion_mnist, user_file, capsys, model
):
    spec = model.format(file=user_file)
    code = train.main(["--data-dir", str(tiny_fashion_mnist), "--quiet",
                       "--model", spec, "--hidden", "32"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--hidden applies to --model mlp only" in err


DICT_BATCH_MODEL = """
import jax
import optax
from flax import nnx


class MyNet(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.out = nnx.Linear(28 * 28, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(x.reshape(x.shape[0], -1))


def build(num_classes, *, rngs):
    return MyNet(num_classes, rngs=rngs)
"""
LOSSES = {
    "dict": (
        "def loss_fn(model, batch):\n"
        "    logits = model(batch['image'])\n"
        "    return optax.softmax_cross_entropy_with_integer_labels(\n"
        "        logits, batch['label']).mean()\n",
        "loss_fn in {path} failed on the first batch (images uint8[B, 28, 28], "
        "labels int32[B]): TypeError: tuple indices must be integers or slices, not "
        "str; the command lines pass every batch as that (x, y) tuple",
    ),
    "logits": (
        "def loss_fn(model, batch):\n"
        "    logits = model(batch[0])\n"
        "    return optax.softmax_cross_entropy_with_integer_labels(\n"
        "        logits, batch[1]).mean(), logits\n",
        "loss_fn in {path} failed on the first batch (images uint8[B, 28, 28], "
        "labels int32[B]): ValueError: loss_fn must return a scalar loss",
    ),
    "channels, default loss": (
        "class Channels(MyNet):\n"
        "    def __call__(self, x):  # written for [B, 28, 28, 3]\n"
        "        return self.out(x.reshape(x.shape[0], 28 * 28, 3).mean(-1))\n\n\n"
        "def build(num_classes, *, rngs):\n"
        "    return Channels(num_classes, rngs=rngs)\n",
        "the model (default loss) failed on the first batch (images uint8[B, 28, "
        "28], labels int32[B]): TypeError: cannot reshape",
    ),
}


@pytest.mark.parametrize("cli", [find, train, grid], ids=["find", "train", "grid"])
@pytest.mark.parametrize("loss", list(LOSSES))
def test_a_loss_for_another_batch_form_is_one_line(
    tiny_fashion_mnist, tmp_path, capsys, cli, loss
):
    """The README's MyNet with a dict-batch loss_fn (``batch["image"]``): exit 2 and
    one line with the batch form the command lines pass, not a traceback."""
    code, needle = LOSSES[loss]
    path = tmp_path / "mynet.py"
    path.write_text(DICT_BATCH_MODEL + "\n\n" + code)
    rc = cli.main(["--data-dir", str(tiny_fashion_mnist), "--model", f"{path}:build",
                   "--quiet", "--out" if cli is not train else "--logdir",
                   str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"--model {path}:build: " in lines[0]
    assert needle.format(path=path) in lines[0], lines[0]
    assert not (tmp_path / "out" / "metrics.json").exists()
