"""Pure models with a state of their own (#18 item 1): Linen and Equinox.

``lr_range_test(params, optimizer, data, loss_fn=..., model_state=state, key=...)``
against a hand-written loop of the same updates: the documented batch order, the
documented rng of each update, optax's own schedule. The batch statistics change
inside the sweep, and the caller's arrays are untouched.
"""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax._src.batches import batch_indices

RTOL, ATOL = 1e-5, 1e-6  # float32, two programs fused differently
STEPS, BATCH = 30, 16


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 3)), -1).astype(np.int32)
    return x, y


def hand_loop(loss_fn, params, state, data, key, *, steps=STEPS, end_value=0.3):
    """The sweep written out: SGD with momentum on the exponential schedule."""
    sched = lrjax.exponential_sweep(1e-5, end_value, steps)
    tx = optax.sgd(sched, momentum=0.9)
    opt = tx.init(params)
    idx = batch_indices(jax.random.fold_in(key, 0), len(data[1]), BATCH, steps)
    rngs = jax.random.fold_in(jax.random.fold_in(key, 0), 2)

    def objective(params, state, batch, key):
        loss, state, metrics = loss_fn(params, state, batch, key)
        return loss, (state, metrics)

    @jax.jit
    def update(params, state, opt, batch, t):
        (loss, (state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, state, batch, jax.random.fold_in(rngs, t)
        )
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), state, opt, loss, metrics

    x, y = data
    losses, probes = [], []
    for t, rows in enumerate(np.asarray(idx)):
        batch = (x[rows], y[rows])
        params, state, opt, loss, metrics = update(params, state, opt, batch, t)
        losses.append(float(loss))
        probes.append(float(metrics["bn_mean"]))
    return np.array(losses), np.array(probes)


def host(tree):
    return [np.array(a) for a in jax.tree.leaves(tree)]


def check_against_the_loop(loss_fn, params, state, data):
    before = host((params, state))
    key = jax.random.key(7)
    got = lrjax.lr_range_test(
        params, lambda lr: optax.sgd(lr, momentum=0.9), data, key=key,
        loss_fn=loss_fn, model_state=state,
        sweep=lrjax.Sweep(num_steps=STEPS, end_value=0.3, batch_size=BATCH),
        divergence=lrjax.Divergence(stop=False),
    )  # fmt: skip
    losses, probes = hand_loop(loss_fn, params, state, data, key)
    np.testing.assert_allclose(got.losses[0], losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.metrics["bn_mean"][0], probes, rtol=RTOL, atol=ATOL)
    assert probes[0] == 0.0 and len(set(probes[1:].tolist())) == STEPS - 1
    for a, b in zip(before, host((params, state)), strict=True):
        np.testing.assert_array_equal(a, b)
    return got


class LinenNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(nn.Dense(16)(x))
        x = nn.Dropout(0.3, deterministic=not train)(nn.relu(x))
        return nn.Dense(3)(x)


def linen_loss(params, state, batch, key):
    x, y = batch
    logits, new_state = LinenNet().apply(
        {"params": params, **state}, x, train=True, mutable=list(state),
        rngs={"dropout": key},
    )  # fmt: skip
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    # the running mean this update started from: 0 only if the state is not carried
    return (
        loss,
        new_state,
        {"bn_mean": state["batch_stats"]["BatchNorm_0"]["mean"].sum()},
    )


def test_linen_batchnorm_and_dropout_equal_a_hand_written_loop(data):
    variables = LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)), train=False)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    got = check_against_the_loop(linen_loss, params, state, data)
    # dropout draws a new mask each update: the same loop without it differs
    no_drop = lambda p, s, b, k: linen_loss(p, s, b, jax.random.key(0))  # noqa: E731
    losses, _ = hand_loop(no_drop, params, state, data, jax.random.key(7))
    assert np.abs(losses - got.losses[0]).max() > 1e-3


class EqxNet(eqx.Module):
    hidden: eqx.nn.Linear
    bn: eqx.nn.BatchNorm
    out: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(8, 16, key=k1)
        self.bn = eqx.nn.BatchNorm(16, axis_name="batch", momentum=0.9, mode="ema")
        self.out = eqx.nn.Linear(16, 3, key=k2)

    def __call__(self, x, state):
        x, state = self.bn(self.hidden(x), state)
        return self.out(jax.nn.relu(x)), state


def test_equinox_batchnorm_state_equals_a_hand_written_loop(data):
    model, state = eqx.nn.make_with_state(EqxNet)(jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(params, state, batch, key):
        x, y = batch
        model = eqx.combine(params, static)
        bn_mean = state.get(model.bn.ema_state_index)[0].sum()  # before this update
        logits, state = jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )(x, state)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, state, {"bn_mean": bn_mean}

    check_against_the_loop(loss_fn, params, state, data)


def test_seeds_get_their_own_update_rngs(data):
    variables = LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)), train=False)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

    def loss_fn(params, state, batch, key):
        loss, state, metrics = linen_loss(params, state, batch, key)
        return loss, state, {**metrics, "key": jax.random.uniform(key)}

    got = lrjax.lr_range_test(
        params, optax.sgd, data, key=jax.random.key(7), loss_fn=loss_fn,
        model_state=state, sweep=lrjax.Sweep(num_steps=5, batch_size=BATCH),
        population=lrjax.Population(seeds=2),
    )  # fmt: skip
    seen = got.metrics["key"]  # [seeds, steps]
    for s in range(2):
        base = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), s), 2)
        want = [jax.random.uniform(jax.random.fold_in(base, t)) for t in range(5)]
        np.testing.assert_allclose(seen[s], want, rtol=1e-6)
    assert len(set(seen.ravel().tolist())) == 10


@pytest.mark.parametrize(
    "out, match",
    [
        (lambda loss, s: loss, r"must return \(loss, model_state\)"),
        (lambda loss, s: (loss, s, loss), r"must return \(loss, model_state\)"),
        (lambda loss, s: (loss, {"x": s}), "model_state of the structure"),
    ],
)
def test_a_stateful_loss_of_another_form_is_refused(data, out, match):
    variables = LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)), train=False)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}

    def loss_fn(params, state, batch, key):
        loss, new, _ = linen_loss(params, state, batch, key)
        return out(loss, new)

    with pytest.raises(ValueError, match=match):
        lrjax.lr_range_test(
            params, optax.sgd, data, key=jax.random.key(0), loss_fn=loss_fn,
            model_state=state, sweep=lrjax.Sweep(num_steps=3),
        )  # fmt: skip


def test_model_state_needs_params_and_a_loss_fn(data):
    variables = LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)), train=False)
    kw = dict(key=jax.random.key(0), sweep=lrjax.Sweep(num_steps=3), model_state={})
    with pytest.raises(ValueError, match="model_state needs a loss_fn"):
        lrjax.lr_range_test(variables["params"], optax.sgd, data, **kw)
    with pytest.raises(TypeError, match=r"must be a pytree of arrays.*'function'"):
        lrjax.lr_range_test(lambda k: variables["params"], optax.sgd, data,
                            loss_fn=linen_loss, **kw)  # fmt: skip


def test_a_loss_of_the_other_arity_is_refused_before_any_work(data):
    """A two-argument loss with model_state, or the four-argument one without
    it, is one line naming the call it gets (Python's own error was "takes 2
    positional arguments but 4 were given", from deep inside the trace)."""
    variables = LinenNet().init(jax.random.key(1), jnp.zeros((1, 8)), train=False)
    params, state = variables["params"], {"batch_stats": variables["batch_stats"]}
    kw = dict(key=jax.random.key(0), sweep=lrjax.Sweep(num_steps=3))

    def two(params, batch):
        return linen_loss(params, state, batch, None)[0]

    with pytest.raises(
        TypeError,
        match=r"called as loss_fn\(params, model_state, "
        r"batch, key\), but its signature is \(params, batch\)$",
    ):
        lrjax.lr_range_test(params, optax.sgd, data, loss_fn=two, model_state=state,
                            **kw)  # fmt: skip
    with pytest.raises(TypeError, match=r"called as loss_fn\(model, batch\) \(no "
                       r"model_state given\), but its signature is \(params, state, "
                       r"batch, key\)$"):  # fmt: skip
        lrjax.lr_range_test(params, optax.sgd, data, loss_fn=linen_loss, **kw)
