"""Pure models with a state of their own in fit, lr_grid and seeds (#18 item 1).

``fit(params, ..., model_state=state)`` and ``lr_grid(..., model_state=state)``
against hand-written loops of the same updates: the documented batch order of
each driver, the documented rng of each update, optax's own optimizer, the
user's ``eval_fn``. Linen (BatchNorm and Dropout) and Equinox (``eqx.nn.State``);
a factory ``key -> (params, model_state)`` for seeds; an interrupted ``fit``
resumed from its checkpoint equals the uninterrupted one bit for bit.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrjax
from lrjax._src.batches import batch_indices
from lrjax._src.hooks import Hook
from tests.test_model_state import EqxNet, LinenNet

RTOL, ATOL = 2e-5, 2e-6  # float32, two programs fused differently, ~30 updates
BATCH, N = 32, 256
SPE = N // BATCH


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 64, 8)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(8, 3)), -1).astype(np.int32)
    return (x[:N], y[:N]), (x[N:], y[N:])


def host(tree):
    return [np.array(a) for a in jax.tree.leaves(tree)]


def assert_close(a, b, rtol=RTOL, atol=ATOL):
    for x, y in zip(host(a), host(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_same(a, b):
    for x, y in zip(host(a), host(b), strict=True):
        np.testing.assert_array_equal(x, y)


# Linen: BatchNorm and Dropout --------------------------------------------------


def linen_init(key):
    variables = LinenNet().init(key, jnp.zeros((1, 8)), train=False)
    return variables["params"], {"batch_stats": variables["batch_stats"]}


def linen_loss(params, state, batch, key):
    x, y = batch
    logits, state = LinenNet().apply(
        {"params": params, **state}, x, train=True, mutable=list(state),
        rngs={"dropout": key},
    )  # fmt: skip
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state


def linen_eval(params, state, batch):
    x, y = batch
    logits = LinenNet().apply({"params": params, **state}, x, train=False)
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
    }


# Equinox: eqx.nn.BatchNorm with its eqx.nn.State --------------------------------


def eqx_parts():
    model, state = eqx.nn.make_with_state(EqxNet)(jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def logits_of(params, state, x):
        model = eqx.combine(params, static)
        batched = jax.vmap(
            model, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )
        return batched(x, state)

    def loss_fn(params, state, batch, key):
        x, y = batch
        logits, state = logits_of(params, state, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    def eval_fn(params, state, batch):
        x, y = batch
        model = eqx.nn.inference_mode(eqx.combine(params, static))
        logits, _ = jax.vmap(model, in_axes=(0, None), out_axes=(0, None))(x, state)
        return {
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        }

    return params, state, loss_fn, eval_fn


# The hand-written references ---------------------------------------------------


def hand_fit(loss_fn, eval_fn, params, state, data, val, key, *, tx, epochs):
    """fit written out: epoch e's batches are ``batch_indices(fold_in(key, e),
    N, B, SPE)``, update t's rng ``fold_in(fold_in(fold_in(key, 0), 2), t)``, the
    mean batch loss and the eval metrics after every epoch."""
    rngs = jax.random.fold_in(jax.random.fold_in(key, 0), 2)
    opt = tx.init(params)

    def objective(params, state, batch, key):
        loss, state = loss_fn(params, state, batch, key)
        return loss, state

    @jax.jit
    def update(params, state, opt, batch, t):
        (loss, state), grads = jax.value_and_grad(objective, has_aux=True)(
            params, state, batch, jax.random.fold_in(rngs, t)
        )
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), state, opt, loss

    x, y = data
    history, t = [], 0
    for e in range(epochs):
        losses = []
        idx = batch_indices(jax.random.fold_in(key, e), N, BATCH, SPE)
        for rows in np.asarray(idx):
            params, state, opt, loss = update(params, state, opt, (x[rows], y[rows]), t)
            losses.append(float(loss))
            t += 1
        ev = jax.jit(eval_fn)(params, state, val)
        history.append({"train_loss": np.mean(losses), **jax.device_get(ev)})
    return params, state, history


def hand_grid_member(loss_fn, eval_fn, params, state, data, val, key, *, lr, seed,
                     epochs):  # fmt: skip
    """One lr_grid member written out: seed s's batches are ``batch_indices(
    fold_in(key, s), N, B, epochs * SPE)``, its rngs ``fold_in(fold_in(fold_in(
    key, s), 2), t)``, plain SGD at ``lr``; each epoch's mean batch loss and its
    eval metrics after it."""
    tx = optax.sgd(lr)
    rngs = jax.random.fold_in(jax.random.fold_in(key, seed), 2)
    opt = tx.init(params)

    @jax.jit
    def update(params, state, opt, batch, t):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, batch, jax.random.fold_in(rngs, t)
        )
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), state, opt, loss

    x, y = data
    idx = batch_indices(jax.random.fold_in(key, seed), N, BATCH, epochs * SPE)
    losses, train_loss, evals = [], [], []
    for t, rows in enumerate(np.asarray(idx)):
        params, state, opt, loss = update(params, state, opt, (x[rows], y[rows]), t)
        losses.append(float(loss))
        if (t + 1) % SPE == 0:
            train_loss.append(np.mean(losses[-SPE:]))
            evals.append(jax.device_get(jax.jit(eval_fn)(params, state, val)))
    return train_loss, evals


# fit ---------------------------------------------------------------------------


def fit_kw(loss_fn, eval_fn, val, **config):
    return dict(
        key=jax.random.key(3), loss_fn=loss_fn, eval_fn=eval_fn, val_data=val,
        config=lrjax.FitConfig(batch_size=BATCH, learning_rate=SCHED, **config),
    )  # fmt: skip


SCHED = optax.cosine_decay_schedule(0.2, 3 * SPE)
MOMENTUM = 0.9


def sgd(lr):
    return optax.sgd(lr, momentum=MOMENTUM)


def test_linen_fit_equals_a_hand_written_loop(data):
    train, val = data
    params, state = linen_init(jax.random.key(1))
    before = host((params, state))
    got = lrjax.fit(params, sgd, train, model_state=state,
                    **fit_kw(linen_loss, linen_eval, val, epochs=3))  # fmt: skip
    want_params, want_state, history = hand_fit(
        linen_loss, linen_eval, params, state, train, val, jax.random.key(3),
        tx=optax.sgd(SCHED, momentum=MOMENTUM), epochs=3,
    )  # fmt: skip
    assert_close(got.params, want_params)
    assert_close(got.model_state, want_state)
    assert got.model is got.params  # a pure model: the params are the model
    assert jax.tree.structure(got.model_state) == jax.tree.structure(state)
    for rec, want in zip(got.history, history, strict=True):
        assert rec["train_loss"] == pytest.approx(want["train_loss"], rel=RTOL)
        assert rec["val_loss"] == pytest.approx(want["loss"], rel=RTOL)
        assert rec["val_accuracy"] == want["accuracy"]
    mean = np.asarray(got.model_state["batch_stats"]["BatchNorm_0"]["mean"])
    assert np.abs(mean).min() > 0  # the running mean was trained
    assert_same(before, (params, state))  # the caller's arrays are untouched
    # Dropout draws from the documented key of each update: another key differs.
    other, _, _ = hand_fit(
        linen_loss, linen_eval, params, state, train, val, jax.random.key(4),
        tx=optax.sgd(SCHED, momentum=MOMENTUM), epochs=1,
    )  # fmt: skip
    assert not np.allclose(host(other)[0], host(want_params)[0], atol=1e-3)
    # The result evaluates with lrjax.evaluate and the same eval_fn.
    ev = lrjax.evaluate(got.params, val, model_state=got.model_state,
                        eval_fn=linen_eval)  # fmt: skip
    assert ev["accuracy"] == pytest.approx(got.history[-1]["val_accuracy"])
    # Without the eval_fn, the line says that is what is missing (it named loss_fn)
    with pytest.raises(ValueError, match=r"^with model_state, evaluation .* needs "
                       r"eval_fn\(params, model_state, batch\)"):  # fmt: skip
        lrjax.evaluate(got.params, val, model_state=got.model_state)


def test_equinox_fit_equals_a_hand_written_loop(data):
    train, val = data
    params, state, loss_fn, eval_fn = eqx_parts()
    before = host((params, state))
    got = lrjax.fit(params, sgd, train, model_state=state,
                    **fit_kw(loss_fn, eval_fn, val, epochs=3))  # fmt: skip
    want_params, want_state, history = hand_fit(
        loss_fn, eval_fn, params, state, train, val, jax.random.key(3),
        tx=optax.sgd(SCHED, momentum=MOMENTUM), epochs=3,
    )  # fmt: skip
    assert_close(got.params, want_params)
    assert isinstance(got.model_state, eqx.nn.State)
    assert_close(got.model_state, want_state)
    assert not np.allclose(host(got.model_state)[0], host(state)[0])  # stats moved
    for rec, want in zip(got.history, history, strict=True):
        assert rec["train_loss"] == pytest.approx(want["train_loss"], rel=RTOL)
        assert rec["val_loss"] == pytest.approx(want["loss"], rel=RTOL)
    assert_same(before, (params, state))


class StopAfter(Hook):
    def __init__(self, chunks):
        self.left = chunks

    def act(self, run, end):
        self.left -= 1
        return "requested" if self.left == 0 else None


def test_fit_resumes_bit_identically_with_snapshots_and_the_average(data, tmp_path):
    train, val = data
    params, state = linen_init(jax.random.key(1))
    config = dict(epochs=3, chunks_per_epoch=2, snapshot_steps=[SPE - 1, 2 * SPE - 1],
                  average_start=SPE, patience=3, monitor="val_accuracy")  # fmt: skip

    def run(directory, hooks=(), **more):
        kw = fit_kw(linen_loss, linen_eval, val, checkpoint_dir=directory,
                    hooks=hooks, **config, **more)  # fmt: skip
        return lrjax.fit(params, sgd, train, model_state=state, test_data=val,
                         **kw)  # fmt: skip

    full = run(tmp_path / "full")
    # Stopped by a hook mid-epoch 2 (after 3 of 6 chunks), then resumed.
    cut = run(tmp_path / "cut", hooks=[StopAfter(3)])
    assert cut.interrupted and cut.step == SPE + SPE // 2
    resumed = run(tmp_path / "cut", resume=True)
    assert_same(resumed.params, full.params)
    assert_same(resumed.model_state, full.model_state)  # batch stats
    assert_same(resumed.snapshots, full.snapshots)
    assert_same(resumed.average_params, full.average_params)
    assert [{k: v for k, v in h.items() if k != "time_s"} for h in resumed.history] == [
        {k: v for k, v in h.items() if k != "time_s"} for h in full.history
    ]
    assert resumed.test == full.test and resumed.average_test == full.average_test
    # Each snapshot holds its own batch stats, in the caller's kind of state.
    s_params, s_state = full.snapshots
    means = np.asarray(s_state["batch_stats"]["BatchNorm_0"]["mean"])
    assert means.shape == (2, 16) and not np.array_equal(means[0], means[1])
    # The average: the params' mean, the last update's state (not re-estimated).
    assert full.average_count == 2 * SPE and full.average_bn_batches == 0
    assert_same(full.average_model_state, full.model_state)


def test_fit_takes_a_factory_of_params_and_model_state(data):
    train, val = data
    key = jax.random.key(3)
    got = lrjax.fit(linen_init, sgd, train, model_state="from_factory",
                    **fit_kw(linen_loss, linen_eval, val, epochs=1))  # fmt: skip
    # The factory is called with fold_in(fold_in(key, 0), 1), as seed 0's.
    params, state = linen_init(jax.random.fold_in(jax.random.fold_in(key, 0), 1))
    same = lrjax.fit(params, sgd, train, model_state=state,
                     **fit_kw(linen_loss, linen_eval, val, epochs=1))  # fmt: skip
    assert_same(got.params, same.params)
    assert_same(got.model_state, same.model_state)


def test_evaluation_with_model_state_needs_an_eval_fn(data):
    train, val = data
    params, state = linen_init(jax.random.key(1))
    with pytest.raises(ValueError, match=r"eval_fn\(params, model_state, batch\)"):
        lrjax.fit(params, sgd, train, model_state=state, loss_fn=linen_loss,
                  key=jax.random.key(0), val_data=val)  # fmt: skip
    with pytest.raises(ValueError, match=r"eval_fn\(params, model_state, batch\)"):
        lrjax.lr_grid(params, optax.sgd, train, val, lrs=[0.1], key=jax.random.key(0),
                      loss_fn=linen_loss, model_state=state)  # fmt: skip
    with pytest.raises(ValueError, match=r"eval_fn\(params, model_state, batch\)"):
        lrjax.evaluate(params, val, model_state=state, loss_fn=linen_loss)


@pytest.mark.parametrize(
    "model, model_state, match",
    [
        (linen_init, None, None),  # a factory of a tuple is a params factory...
        (lambda k: linen_init(k)[0], "from_factory", r"must return \(params, "),
        (linen_init, "from factory", "must be a pytree of arrays or 'from_factory'"),
    ],
)
def test_a_factory_is_stateful_only_when_said(data, model, model_state, match):
    train, _ = data
    kw = dict(key=jax.random.key(0), loss_fn=linen_loss, model_state=model_state,
              config=lrjax.FitConfig(epochs=1, batch_size=BATCH))  # fmt: skip
    # ... whose loss then gets (params, batch): never taken for (params, state)
    with pytest.raises((TypeError, ValueError), match=match):
        lrjax.fit(model, sgd, train, **kw)


# Seeds: a factory key -> (params, model_state) ------------------------------------


def test_range_test_seeds_each_get_the_factory_s_model(data):
    train, _ = data
    key, steps = jax.random.key(5), 12
    got = lrjax.lr_range_test(
        linen_init, optax.sgd, train, key=key, loss_fn=linen_loss,
        model_state="from_factory", population=lrjax.Population(seeds=2),
        sweep=lrjax.Sweep(num_steps=steps, end_value=1.0, batch_size=BATCH),
        divergence=lrjax.Divergence(stop=False),
    )  # fmt: skip
    sched = lrjax.exponential_sweep(1e-5, 1.0, steps)
    for s in range(2):  # seed s: its own initialisation, batches and rngs
        seed_key = jax.random.fold_in(key, s)
        params, state = linen_init(jax.random.fold_in(seed_key, 1))
        rngs = jax.random.fold_in(seed_key, 2)
        idx = np.asarray(batch_indices(seed_key, N, BATCH, steps))
        tx, losses = optax.sgd(sched), []
        opt = tx.init(params)
        for t, rows in enumerate(idx):
            batch = (train[0][rows], train[1][rows])
            (loss, state), grads = jax.value_and_grad(linen_loss, has_aux=True)(
                params, state, batch, jax.random.fold_in(rngs, t)
            )
            updates, opt = tx.update(grads, opt, params)
            params = optax.apply_updates(params, updates)
            losses.append(float(loss))
        np.testing.assert_allclose(got.losses[s], losses, rtol=RTOL, atol=ATOL)
    assert not np.allclose(got.losses[0], got.losses[1])


# lr_grid and recipe_grid -------------------------------------------------------


LRS, EPOCHS = [0.03, 0.3], 2
CONFIG = lrjax.GridConfig(epochs=EPOCHS, batch_size=BATCH)
GRID_TOL = dict(rtol=1e-4, atol=1e-5)


def check_grid(result, loss_fn, eval_fn, members, data, key):
    """Every member of ``result`` against :func:`hand_grid_member`; ``members(s)``
    is seed ``s``'s ``(params, state)``."""
    train, val = data
    for i, lr in enumerate(LRS):
        for s in range(result.seeds):
            train_loss, evals = hand_grid_member(
                loss_fn, eval_fn, *members(s), train, val, key, lr=lr, seed=s,
                epochs=EPOCHS,
            )  # fmt: skip
            want = [e["loss"] for e in evals]
            # vmapped members against one unbatched run: float32, 16 updates
            np.testing.assert_allclose(result.val_loss[i, s], want, **GRID_TOL)
            np.testing.assert_allclose(result.train_loss[i, s], train_loss, **GRID_TOL)


def test_lr_grid_members_equal_hand_written_runs_linen(data):
    train, val = data
    params, state = linen_init(jax.random.key(1))
    before = host((params, state))
    key = jax.random.key(6)
    got = lrjax.lr_grid(params, optax.sgd, train, val, lrs=LRS, key=key,
                        loss_fn=linen_loss, model_state=state, eval_fn=linen_eval,
                        config=CONFIG,
                        population=lrjax.Population(seeds=2))  # fmt: skip
    check_grid(got, linen_loss, linen_eval, lambda s: (params, state), data, key)
    assert got.best_by == "accuracy"
    assert_same(before, (params, state))
    # A factory key -> (params, model_state): each seed its own initialisation.
    by_factory = lrjax.recipe_grid(
        linen_init, optax.sgd, train, val, lrs=LRS, key=key,
        families={"constant": None}, loss_fn=linen_loss,
        model_state="from_factory", eval_fn=linen_eval, config=CONFIG,
        population=lrjax.Population(seeds=2),
    )["constant"]  # fmt: skip

    def member(s):
        return linen_init(jax.random.fold_in(jax.random.fold_in(key, s), 1))

    check_grid(by_factory, linen_loss, linen_eval, member, data, key)


def test_lr_grid_members_equal_hand_written_runs_equinox(data):
    train, val = data
    params, state, loss_fn, eval_fn = eqx_parts()
    key = jax.random.key(6)
    got = lrjax.lr_grid(params, optax.sgd, train, val, lrs=LRS, key=key,
                        config=CONFIG, loss_fn=loss_fn, model_state=state,
                        eval_fn=eval_fn)  # fmt: skip
    check_grid(got, loss_fn, eval_fn, lambda s: (params, state), data, key)
    assert got.best_by == "loss"
