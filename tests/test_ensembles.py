"""Snapshot buffer in the scan carry, and softmax-averaging ensemble prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax import schedules, snapshots
from lrjax.models import mlp
from lrjax.trainer import Carry, _chunk_fn
from lrjax.training import batch_indices, init_state, make_optimizer, make_step


def synthetic(n, seed=0, size=8, classes=10):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).integers(0, 200, (classes, size, size))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.clip(templates[y] + rng.integers(-60, 60, (n, size, size)), 0, 255)
    return x.astype(np.uint8), y


def test_snapshot_steps_are_the_last_cycle_ends():
    np.testing.assert_array_equal(
        snapshots.snapshot_steps(4, num_steps=20, num_snapshots=2), [15, 19]
    )
    np.testing.assert_array_equal(
        snapshots.snapshot_steps(2, 2.0, num_steps=30, num_snapshots=3), [5, 13, 29]
    )
    with pytest.raises(ValueError, match="complete"):
        snapshots.snapshot_steps(4, num_steps=20, num_snapshots=6)


@pytest.mark.parametrize("cond", [False, True])
def test_scan_buffer_matches_a_python_loop(cond):
    """The buffer written inside the scan == params recorded by a host loop."""
    x, y = synthetic(256)
    data = (jnp.asarray(x), jnp.asarray(y))
    apply, params = mlp(64, 10, (16,), key=jax.random.key(0))
    tx = make_optimizer(optax.sgd, schedules.cosine_restarts(0.1, 5))
    step = make_step(apply, tx)
    idx = batch_indices(jax.random.key(1), 256, 32, 20)
    ends = snapshots.snapshot_steps(5, num_steps=20, num_snapshots=3)  # 9, 14, 19

    carry = Carry(init_state(params, tx), snapshots.init_buffer(params, 3))
    chunk = jax.jit(_chunk_fn(step, cond))
    # Two chunks, so a snapshot write crosses a chunk boundary.
    carry, _ = chunk(carry, idx[:12], data, jnp.asarray(ends, jnp.int32))
    assert int(carry.snaps.count) == 1
    carry, _ = chunk(carry, idx[12:], data, jnp.asarray(ends, jnp.int32))
    assert int(carry.snaps.count) == 3

    state, expected = init_state(params, tx), []
    jstep = jax.jit(step)
    for t in range(20):
        state, _ = jstep(state, idx[t], data)
        if t in ends:
            expected.append(state.params)
    got = snapshots.snapshots(carry.snaps)
    for k in range(3):
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda s, k=k: s[k], got)),
            jax.tree.leaves(expected[k]),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_write_cond_and_write_agree():
    params = {"w": jnp.arange(3.0)}
    buf = snapshots.init_buffer(params, 2)
    a = snapshots.write(buf, params, jnp.array(True))
    b = snapshots.write_cond(buf, params, jnp.array(True))
    np.testing.assert_array_equal(a.params["w"][:2], b.params["w"][:2])
    assert int(a.count) == int(b.count) == 1
    c = snapshots.write(a, {"w": jnp.ones(3)}, jnp.array(False))
    assert int(c.count) == 1
    np.testing.assert_array_equal(c.params["w"][0], jnp.arange(3.0))


def test_ensemble_averages_softmax_not_logits():
    """Two linear models whose mean LOGITS (= mean weights) pick class 1 while
    their mean PROBABILITIES pick class 0: the ensemble must say 0."""
    apply = lambda w, x: x @ w  # noqa: E731
    w = jnp.stack(
        [jnp.array([[5.0, 0.0, 0.0]]), jnp.array([[-5.0, 1.0, 0.0]])]
    )  # one input feature, three classes
    x = jnp.ones((1, 1))
    probs = snapshots.ensemble_predict(apply, w, x)
    manual = (jax.nn.softmax(w[0][0]) + jax.nn.softmax(w[1][0])) / 2
    np.testing.assert_allclose(probs[0], manual, rtol=1e-6)
    mean_logits = (w[0][0] + w[1][0]) / 2
    assert int(jnp.argmax(mean_logits)) == 1  # [0, 0.5, 0]
    assert int(jnp.argmax(probs[0])) == 0  # about [0.49, 0.37, 0.14]
    # The last m=1 member alone predicts class 1.
    assert int(jnp.argmax(snapshots.ensemble_predict(apply, w, x, m=1)[0])) == 1
    with pytest.raises(ValueError, match="m must be"):
        snapshots.ensemble_predict(apply, w, x, m=3)


def test_ensemble_curve_against_manual_average():
    x, y = synthetic(300, seed=3)
    apply, _ = mlp(64, 10, (16,), key=jax.random.key(0))
    members = [mlp(64, 10, (16,), key=jax.random.key(k))[1] for k in range(4)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    single, ens = snapshots.ensemble_curve(apply, stacked, x, y)
    xf = jnp.asarray(x, jnp.float32) / 255
    probs = [jax.nn.softmax(apply(p, xf)) for p in members]
    for i, p in enumerate(probs):
        assert single[i] == pytest.approx(float(jnp.mean(jnp.argmax(p, -1) == y)))
    for m in range(1, 5):
        avg = sum(probs[4 - m :]) / m
        assert ens[m - 1] == pytest.approx(float(jnp.mean(jnp.argmax(avg, -1) == y)))
    assert ens[0] == single[-1]
