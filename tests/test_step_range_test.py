"""The range test through a user's own train step (``lrjax.step_range_test``).

Each form against an independent reference: a flax ``TrainState`` step and an NNX
``nnx.Optimizer`` step give the losses of ``lrjax.lr_range_test`` on the same
model, optimizer and batches, and an iterable of batches the losses of a plain
Python loop that sets the hyperparameter itself. The caller's state is compared
bit for bit afterwards.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training.train_state import TrainState

import lrjax
from lrjax import Divergence, Execution, Sweep

# float32: a few ulps per op, a few hundred ops between a loss and the start of
# the sweep; the two programs fuse differently, so not bit-identical.
RTOL, ATOL = 1e-5, 1e-6
STEPS, BATCH = 40, 16


def inject_sgd():
    return optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)


def sgd(lr):
    return optax.sgd(lr, momentum=0.9)


@pytest.fixture(scope="module")
def data():
    """Three linearly separable classes in 8 dimensions."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 3)), -1).astype(np.int32)
    return x, y


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


def linen_loss(params, batch):
    x, y = batch
    logits = LinenMLP().apply({"params": params}, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def flax_step(state, batch):
    """The flax examples' train step, as it stands."""
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: state.apply_fn(p, batch), has_aux=True
    )(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss, **metrics}


def train_state(tx=None) -> TrainState:
    params = LinenMLP().init(jax.random.key(1), jnp.zeros((1, 8)))["params"]
    return TrainState.create(apply_fn=linen_loss, params=params, tx=tx or inject_sgd())


class Net(nnx.Module):
    """Dense-BatchNorm-ReLU-Dropout-Dense: batch statistics and an rng stream."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jax.nn.relu(self.bn(self.hidden(x)))))


def nnx_loss(model, batch):
    x, y = batch
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def host(tree) -> list[np.ndarray]:
    """Every leaf on the host (rng keys as their raw data)."""
    out = []
    for a in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
            a = jax.random.key_data(a)
        out.append(np.array(a))
    return out


def assert_same(before: list[np.ndarray], after: list[np.ndarray]):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def assert_same_curve(got, ref):
    """``got`` ran all its steps and equals ``ref`` (float32 tolerance)."""
    assert got.steps_run == STEPS and got.stop_reason is None
    assert got.losses.shape == ref.losses.shape == (1, STEPS)  # [seeds, steps_run]
    np.testing.assert_allclose(got.lrs, ref.lrs, rtol=1e-6)
    np.testing.assert_allclose(got.losses, ref.losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(
        got.metrics["accuracy"], ref.metrics["accuracy"], rtol=RTOL, atol=ATOL
    )
    assert not np.allclose(got.losses[0, :5], got.losses[0, -5:])  # it did train


# ----------------------------------------------------- equal to lr_range_test


@pytest.mark.parametrize("jit", ["donating", "eager"])
def test_a_flax_train_state_step_equals_lr_range_test(data, jit):
    step = jax.jit(flax_step, donate_argnums=0) if jit == "donating" else flax_step
    state = train_state()
    before = host(state)
    key = jax.random.key(3)
    kw = dict(key=key, sweep=Sweep(STEPS, end_value=0.3, batch_size=BATCH))
    got = lrjax.step_range_test(step, state, data, **kw)
    ref = lrjax.lr_range_test(
        state.params, sgd, data, loss_fn=linen_loss,
        divergence=Divergence(stop=False), **kw,
    )  # fmt: skip
    assert_same_curve(got, ref)
    assert got.config.hyperparam == ".opt_state.hyperparams['learning_rate']"
    assert got.timings.loop == "dispatch" and got.device == ref.device
    assert_same(before, host(state))  # not donated, not changed
    _, metrics = flax_step(state, jax.tree.map(lambda a: a[:BATCH], data))
    assert np.isfinite(metrics["loss"])  # the caller's arrays are alive


@pytest.mark.parametrize("returns", ["metrics", "state_and_metrics"])
def test_an_nnx_optimizer_step_equals_lr_range_test(data, returns):
    model = Net(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, inject_sgd(), wrt=nnx.Param)

    @nnx.jit
    def train_step(state, batch):  # in place, as NNX steps are
        model, optimizer = state
        grad_fn = nnx.value_and_grad(nnx_loss, has_aux=True)
        (loss, metrics), grads = grad_fn(model, batch)
        optimizer.update(model, grads)
        metrics = {"loss": loss, **metrics}
        return metrics if returns == "metrics" else (state, metrics)

    before = host((nnx.state(model), nnx.state(optimizer)))
    kw = dict(
        key=jax.random.key(3), sweep=Sweep(STEPS, end_value=0.3, batch_size=BATCH)
    )
    got = lrjax.step_range_test(train_step, (model, optimizer), data, **kw)
    ref = lrjax.lr_range_test(
        model, sgd, data, loss_fn=nnx_loss, divergence=Divergence(stop=False), **kw
    )
    assert_same_curve(got, ref)
    assert got.config.hyperparam == "[1].opt_state.hyperparams['learning_rate']"
    assert_same(before, host((nnx.state(model), nnx.state(optimizer))))


def test_an_iterable_equals_a_python_loop_that_sets_the_lr_itself(data):
    """A one-shot generator of 25 batches: the loop's losses, then "data"."""
    x, y = data
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, 200, 8)]
    step = jax.jit(flax_step)
    lrs = lrjax.exponential_sweep(1e-4, 1.0, STEPS)(jnp.arange(STEPS))
    state, losses = train_state(), []
    for t, batch in enumerate(batches):
        hps = {**state.opt_state.hyperparams, "learning_rate": lrs[t]}
        state = state.replace(opt_state=state.opt_state._replace(hyperparams=hps))
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    got = lrjax.step_range_test(
        step, train_state(), iter(batches),
        sweep=Sweep(STEPS, init_value=1e-4, end_value=1.0, batch_size=BATCH),
    )  # fmt: skip
    assert got.stop_reason == "data" and got.steps_run == 25
    np.testing.assert_allclose(got.losses[0], losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.lrs, lrs[:25], rtol=1e-6)
    assert got.config.data == "iterable" and got.config.batch_size == BATCH


def test_a_list_of_batches_is_restarted_and_a_wrong_batch_size_refused(data):
    x, y = data
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, 4 * BATCH, BATCH)]
    got = lrjax.step_range_test(
        jax.jit(flax_step), train_state(), batches, sweep=Sweep(10, end_value=1e-3)
    )
    assert got.steps_run == 10 and got.config.data_restarts == 2
    np.testing.assert_allclose(got.losses[0, 4:8], got.losses[0, :4], rtol=0.05)
    with pytest.raises(ValueError, match="batch_size=32 does not match .* of 16"):
        lrjax.step_range_test(flax_step, train_state(), batches,
                              sweep=Sweep(num_steps=4, batch_size=32))  # fmt: skip


# ------------------------------------------------------ divergence, the result


def test_divergence_stops_the_sweep_and_the_suggestion_is_inside_it(data):
    got = lrjax.step_range_test(
        jax.jit(flax_step), train_state(), data, key=jax.random.key(0),
        sweep=Sweep(num_steps=300, end_value=1e3, batch_size=BATCH),
    )  # fmt: skip
    (at,) = got.diverged_at_step
    assert got.stop_reason == "diverged" and at is not None
    assert got.steps_run == at + 2 < 300  # the host reads a step behind
    assert got.diverged_at_lr == pytest.approx(got.lrs[at])
    assert got.lrs[0] <= got.suggested_lr < got.diverged_at_lr
    assert got.suggested_lr == got.suggestions["knee"]
    # the rules of lr_range_test, on this curve
    (losses,) = got.losses  # one seed: [1, steps_run]
    smoothed = lrjax.smooth(losses)
    np.testing.assert_array_equal(got.smoothed_losses, smoothed[None])
    assert lrjax.find_divergence(losses, smoothed) == at
    assert got.suggestions == lrjax.suggest(got.lrs, smoothed, at)
    assert "suggested_lr=" in repr(got)
    assert got.to_json()["stop_reason"] == "diverged"


def test_its_one_curve_keeps_the_seed_axis(data):
    """The rule of every result: per-seed arrays are ``[seeds, steps_run]``, here
    ``[1, steps_run]``; ``lrs`` is ``[steps_run]``; ``to_json`` writes the same."""
    got = lrjax.step_range_test(
        jax.jit(flax_step), train_state(), data, key=jax.random.key(0),
        sweep=Sweep(8, batch_size=BATCH),
    )  # fmt: skip
    assert got.seeds == 1 and got.steps_run == 8 and got.lrs.shape == (8,)
    assert got.losses.shape == got.smoothed_losses.shape == (1, 8)
    assert {k: v.shape for k, v in got.metrics.items()} == {"accuracy": (1, 8)}
    doc = got.to_json()
    assert np.shape(doc["lrs"]) == (8,)
    assert np.shape(doc["losses"]) == np.shape(doc["smoothed_losses"]) == (1, 8)
    assert np.shape(doc["metrics"]["accuracy"]) == (1, 8)


def test_set_lr_points_anywhere(data):
    """A callable sets the lr itself; the lr recorded is the lr it was given."""
    seen = []

    def set_lr(state, lr):
        seen.append(float(lr))
        hps = {**state.opt_state.hyperparams, "learning_rate": lr}
        return state.replace(opt_state=state.opt_state._replace(hyperparams=hps))

    got = lrjax.step_range_test(
        flax_step, train_state(), data, key=jax.random.key(0), sweep=Sweep(5),
        hyperparam=set_lr,
    )  # fmt: skip
    assert got.config.hyperparam == "set_lr"
    np.testing.assert_array_equal(got.lrs, seen)


# ------------------------------------------------------------------ errors


def two_learning_rates() -> TrainState:
    params = LinenMLP().init(jax.random.key(1), jnp.zeros((1, 8)))["params"]
    tx = optax.multi_transform(
        {
            "hidden": optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
            "out": optax.inject_hyperparams(optax.adam)(learning_rate=1e-3),
        },
        {"Dense_0": "hidden", "Dense_1": "out"},
    )
    return TrainState.create(apply_fn=linen_loss, params=params, tx=tx)


def test_two_learning_rates_are_named_and_one_can_be_chosen(data):
    kw = dict(key=jax.random.key(0), sweep=Sweep(num_steps=3))
    with pytest.raises(ValueError) as e:
        lrjax.step_range_test(flax_step, two_learning_rates(), data, **kw)
    msg = str(e.value)
    hidden = (
        ".opt_state.inner_states['hidden'].inner_state.hyperparams['learning_rate']"
    )
    assert msg.startswith("2 inject_hyperparams states in the state have")
    assert hidden in msg and hidden.replace("hidden", "out") in msg
    assert "hyperparam=" in msg and "set_lr" in msg
    got = lrjax.step_range_test(
        flax_step, two_learning_rates(), data, hyperparam=hidden, **kw
    )
    assert got.config.hyperparam == hidden and got.steps_run == 3


@pytest.mark.parametrize(
    "tx, hyperparam, match",
    [
        (
            optax.sgd(0.1, momentum=0.9),
            "learning_rate",
            r"no optax.inject_hyperparams state in the state; it holds .*TraceState"
            r".*optax.inject_hyperparams\(optax.sgd\)",
        ),
        (
            None,
            "lr",
            r"no hyperparameter 'lr' .*\.opt_state: learning_rate, momentum",
        ),
        (None, ".opt_state.hyperparams['lr']", "is not in the state; it has"),
        (
            optax.inject_hyperparams(optax.sgd)(
                learning_rate=optax.constant_schedule(0.1)
            ),
            "learning_rate",
            r"update 0 applied lr 0.1 where lrjax set 1e-05 .*\(a schedule",
        ),
    ],
)
def test_bad_hyperparameters_say_what_the_state_holds(data, tx, hyperparam, match):
    with pytest.raises(ValueError, match=match):
        lrjax.step_range_test(
            flax_step, train_state(tx), data, key=jax.random.key(0),
            sweep=Sweep(3), hyperparam=hyperparam,
        )  # fmt: skip


def test_an_nnx_optimizer_without_inject_hyperparams(data):
    model = Net(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    with pytest.raises(ValueError, match="no optax.inject_hyperparams state in the "
                       "state's NNX objects; it holds .*ScaleByAdamState"):  # fmt: skip
        lrjax.step_range_test(
            lambda s, b: {"loss": 0.0}, (model, optimizer), data,
            key=jax.random.key(0), sweep=Sweep(3),
        )  # fmt: skip


@pytest.mark.parametrize(
    "step, kwargs, match",
    [
        (lambda s, b: (s, {"l": 0.0}), {}, r"no 'loss' \(keys: \['l'\]\)"),
        (lambda s, b: {"loss": 0.0}, {}, r"must return \(state, metrics\)"),
        (flax_step, {"key": None}, "key is required for in-memory data"),
        (flax_step, {"sweep": None}, r"needs the sweep's length: pass sweep=lrjax"),
        (flax_step, {"sweep": Sweep()}, r"needs the sweep's length: pass sweep=lrjax"),
        (
            flax_step,
            {"sweep": Sweep(3, accumulate_steps=2)},
            "accumulate_steps must be 1, got 2",
        ),
        (
            flax_step,
            {"divergence": Divergence(stop=False)},
            "Divergence.stop must be True, got False",
        ),
        (
            flax_step,
            {"execution": Execution(loop="scan")},
            r"^step_range_test calls your step once per update from the host: "
            r"Execution.loop must be 'auto', got 'scan'$",
        ),
    ],
)
def test_bad_steps_and_arguments(data, step, kwargs, match):
    """A bad spec field fails in the spec's constructor (tests/test_specs.py)."""
    kw = dict(key=jax.random.key(0), sweep=Sweep(num_steps=3)) | kwargs
    with pytest.raises(ValueError, match=match):
        lrjax.step_range_test(step, train_state(), data, **kw)


def test_a_linear_sweep_applies_its_lrs(data):
    """Sweep.mode reaches the user's step too (0.2 swept exponentially only)."""
    sweep = Sweep(6, init_value=0.01, end_value=0.06, mode="linear")
    got = lrjax.step_range_test(
        flax_step, train_state(), data, key=jax.random.key(0), sweep=sweep
    )
    np.testing.assert_allclose(got.lrs, np.linspace(0.01, 0.06, 6), rtol=1e-6)
    assert got.config.mode == "linear"
