"""What was passed as the model is read explicitly (#18 item 3).

Every accepted form (an NNX module, a factory, params with a ``loss_fn``, params
with ``model_state``) runs; everything else (a bare Linen or Equinox module, a
flax ``TrainState``, Linen variables with ``batch_stats`` passed as params, params
without a ``loss_fn``) is refused before any work with ONE line that names what was
passed, the accepted forms and the guide's section.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import lrjax
from lrjax._src.step import MODEL_FORMS_DOC, model_form

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide.md"
KW = dict(key=jax.random.key(0), sweep=lrjax.Sweep(num_steps=4, batch_size=16))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    return x, y


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(4)(x))
        return nn.Dense(2)(nn.relu(x))


def linen_variables():
    return LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)))


def linen_state_loss(params, state, batch, key):
    x, y = batch
    logits, state = LinenNet().apply(
        {"params": params, **state}, x, train=True, mutable=list(state)
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


def eqx_mlp():
    return eqx.nn.MLP(8, 2, 4, 1, key=jax.random.key(1))  # relu: a function leaf


def eqx_loss(static):
    def loss_fn(params, batch):
        x, y = batch
        logits = jax.vmap(eqx.combine(params, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss_fn


def any_loss(params, batch):
    return jnp.float32(0.0)


class NnxNet(nnx.Module):
    def __init__(self, *, rngs):
        self.hidden = nnx.Linear(8, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.bn(self.hidden(x))))


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def the_section_exists() -> None:
    title = re.search(r"section '([^']+)'", MODEL_FORMS_DOC).group(1)
    headings = [
        line.lstrip("#").strip()
        for line in GUIDE.read_text().splitlines()
        if line.startswith("#")
    ]
    assert title in headings, (title, headings)


def test_the_guide_has_the_section_the_errors_name():
    the_section_exists()


# (what is passed, extra keywords, the error, words the message must hold)
BAD = {
    "linen module": (
        lambda: LinenNet(),
        {},
        TypeError,
        ["a Linen module (LinenNet)", "variables['params']", "model_state=",
         "module.apply"],
    ),
    "linen module with a loss": (
        lambda: LinenNet(),
        {"loss_fn": any_loss},
        TypeError,
        ["a Linen module (LinenNet)"],
    ),
    "linen variables as params": (
        linen_variables,
        {"loss_fn": any_loss},
        ValueError,
        ["Linen variables", "['batch_stats']", "variables['params']",
         "model_state=", "never be updated"],
    ),
    "linen variables with model_state": (
        linen_variables,
        {"loss_fn": linen_state_loss, "model_state": {}},
        ValueError,
        ["Linen variables", "['batch_stats']"],
    ),
    "equinox module": (
        eqx_mlp,
        {},
        TypeError,
        ["an Equinox module (MLP)", "eqx.partition(model, eqx.is_inexact_array)",
         "eqx.combine", "model_state=state"],
    ),
    "equinox module with a loss": (
        eqx_mlp,
        {"loss_fn": any_loss},  # relu is a leaf: not a params pytree
        TypeError,
        ["an Equinox module (MLP)", "eqx.partition"],
    ),
    "equinox array half without a loss": (
        lambda: eqx.partition(eqx_mlp(), eqx.is_inexact_array)[0],
        {},
        TypeError,
        ["the array half of an Equinox module (MLP, as eqx.partition gives it) "
         "without a loss_fn", "give a loss_fn(params, batch) that calls "
         "eqx.combine(params, static)"],
    ),
    "train state": (
        lambda: TrainState.create(
            apply_fn=LinenNet().apply,
            params=linen_variables()["params"],
            tx=optax.sgd(0.1),
        ),
        {"loss_fn": any_loss},
        TypeError,
        ["a flax TrainState", "lrjax.step_range_test(train_step, state",
         "Your own train step"],
    ),
    "params without a loss": (
        lambda: {"w": jnp.zeros((8, 2))},
        {},
        ValueError,
        ["a params pytree (dict)", "needs loss_fn(params, batch)"],
    ),
    "a factory of linen modules": (
        lambda: (lambda key: LinenNet()),
        {},
        TypeError,
        ["the model the factory returned is a Linen module (LinenNet)"],
    ),
    "a string": (lambda: "mlp", {}, TypeError, ["model is str 'mlp'"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_form_is_one_line_to_lr_range_test(data, name):
    make, extra, error, words = BAD[name]
    with pytest.raises(error) as excinfo:
        lrjax.lr_range_test(make(), optax.sgd, data, **KW, **extra)
    message = one_line(excinfo)
    for w in [*words, "lrjax takes an nnx.Module, a factory", MODEL_FORMS_DOC]:
        assert w in message, (w, message)


@pytest.mark.parametrize(
    "name", ["linen module", "linen variables as params", "equinox module"]
)
def test_fit_and_lr_grid_refuse_the_same(data, name):
    make, extra, error, words = BAD[name]
    extra = {k: v for k, v in extra.items() if k != "model_state"}
    with pytest.raises(error) as excinfo:
        lrjax.fit(make(), optax.sgd, data, key=jax.random.key(0), **extra)
    assert words[0] in one_line(excinfo)
    with pytest.raises(error) as excinfo:
        lrjax.lr_grid(make(), optax.sgd, data, data, lrs=[0.1], key=jax.random.key(0),
                      config=lrjax.GridConfig(batch_size=16), **extra)  # fmt: skip
    assert words[0] in one_line(excinfo)


def test_ensembles_refuse_a_bare_linen_module(data):
    stacked = jax.tree.map(lambda a: a[None], linen_variables())
    with pytest.raises(TypeError) as excinfo:
        lrjax.member_probs(LinenNet(), stacked, data[0])
    message = one_line(excinfo)
    assert "a Linen LinenNet" in message and "module.apply(p, x)" in message
    probs = lrjax.member_probs(lambda p, x: LinenNet().apply(p, x), stacked, data[0])
    assert probs.shape == (1, 64, 2)


def test_model_form_names_each_accepted_form():
    variables = linen_variables()
    params, static = eqx.partition(eqx_mlp(), eqx.is_inexact_array)
    assert model_form(NnxNet(rngs=nnx.Rngs(0))) == "module"
    assert model_form(lambda key: NnxNet(rngs=nnx.Rngs(key))) == "factory"
    assert model_form({"w": jnp.zeros(3)}) == "params"
    assert model_form(params) == "params"  # the array half, with a loss_fn
    # Linen variables of nothing but params: the loss receives them as they are
    assert model_form({"params": variables["params"]}) == "params"
    assert model_form(variables["params"], model_state={}) == "stateful"
    with pytest.raises(TypeError, match="only where a model is built"):
        model_form(lambda key: None, factory=False)
    with pytest.raises(ValueError, match="model_state needs a loss_fn"):
        model_form(variables["params"], model_state={}, has_loss_fn=False)


def test_every_accepted_form_runs(data):
    """Each form through the range test; the stateful ones update their state."""
    variables = linen_variables()
    runs = {
        "module": lrjax.lr_range_test(NnxNet(rngs=nnx.Rngs(0)), optax.sgd, data, **KW),
        "factory": lrjax.lr_range_test(
            lambda key: NnxNet(rngs=nnx.Rngs(key)),
            optax.sgd,
            data,
            population=lrjax.Population(seeds=2),
            **KW,
        ),
    }

    def only_params_loss(variables, batch):  # {"params": ...} as it came
        x, y = batch
        logits = nn.Dense(2).apply(variables, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    dense = nn.Dense(2).init(jax.random.key(0), jnp.zeros((1, 8)))
    runs["linen params only"] = lrjax.lr_range_test(
        dense, optax.sgd, data, loss_fn=only_params_loss, **KW
    )
    runs["linen params + model_state"] = lrjax.lr_range_test(
        variables["params"], optax.sgd, data, loss_fn=linen_state_loss,
        model_state={"batch_stats": variables["batch_stats"]}, **KW,
    )  # fmt: skip
    params, static = eqx.partition(eqx_mlp(), eqx.is_inexact_array)
    runs["equinox array half"] = lrjax.lr_range_test(
        params, optax.sgd, data, loss_fn=eqx_loss(static), **KW
    )
    for name, r in runs.items():
        assert r.steps_run == 4 and np.all(np.isfinite(r.losses)), name
    assert np.shape(runs["factory"].losses) == (2, 4)


def test_fit_takes_the_equinox_array_half(data):
    params, static = eqx.partition(eqx_mlp(), eqx.is_inexact_array)
    config = lrjax.FitConfig(epochs=1, batch_size=16, learning_rate=0.1)
    r = lrjax.fit(params, optax.sgd, data, key=jax.random.key(0), config=config,
                  loss_fn=eqx_loss(static))  # fmt: skip
    assert r.epochs_run == 1
    assert not np.array_equal(r.params.layers[0].weight, params.layers[0].weight)


def test_lrjax_imports_and_refuses_without_equinox():
    """equinox is an optional extra: never imported by lrjax itself."""
    code = (
        "import sys; sys.modules['equinox'] = None\n"
        "import jax.numpy as jnp, lrjax\n"
        "from lrjax._src.step import model_form\n"
        "assert model_form({'w': jnp.zeros(2)}) == 'params'\n"
        "try:\n"
        "    model_form({'params': {}, 'cache': {}})\n"
        "except ValueError as e:\n"
        "    print('refused', 'cache' in str(e))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused True"
