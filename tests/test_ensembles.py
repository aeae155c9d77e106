"""Snapshot buffer in the scan carry, and softmax-averaging ensemble prediction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lrjax._src import ensembles, schedules
from lrjax._src.batches import batch_indices, scale_images, take
from lrjax._src.fit import FitConfig, fit
from lrjax._src.loop import conv_on_cpu, member_of
from lrjax._src.models import mlp, pure
from lrjax._src.step import (
    classification_loss,
    init_state,
    make_optimizer,
    make_step,
    split_model,
)


def synthetic(n, seed=0, size=8, classes=10):
    rng = np.random.default_rng(seed)
    templates = np.random.default_rng(123).integers(0, 200, (classes, size, size))
    y = rng.integers(0, classes, n).astype(np.int32)
    x = np.clip(templates[y] + rng.integers(-60, 60, (n, size, size)), 0, 255)
    return x.astype(np.uint8), y


def test_snapshot_steps_are_the_last_cycle_ends():
    np.testing.assert_array_equal(
        ensembles.snapshot_steps(4, num_steps=20, num_snapshots=2), [15, 19]
    )
    np.testing.assert_array_equal(
        ensembles.snapshot_steps(2, 2.0, num_steps=30, num_snapshots=3), [5, 13, 29]
    )
    with pytest.raises(ValueError, match="complete"):
        ensembles.snapshot_steps(4, num_steps=20, num_snapshots=6)


def test_buffer_in_fit_matches_a_python_loop():
    """The buffer written inside the compiled chunks == states recorded by a host
    loop of the same step; a snapshot write crosses a chunk boundary."""
    x, y = synthetic(256)
    x = scale_images(x)  # float images on the host
    sched = schedules.cosine_restarts(0.1, 5)
    ends = ensembles.snapshot_steps(5, num_steps=16, num_snapshots=3)  # 5, 10, 15
    r = fit(mlp(64, 10, (16,), key=jax.random.key(0)), optax.sgd, (x, y),
            key=jax.random.key(1),
            config=FitConfig(epochs=2, batch_size=32, learning_rate=sched,
                             snapshot_steps=ends, chunks_per_epoch=3))  # fmt: skip
    spec, params, rest = split_model(mlp(64, 10, (16,), key=jax.random.key(0)))
    tx = make_optimizer(optax.sgd, sched)
    step = jax.jit(make_step(spec, classification_loss(), tx))
    state, expected = init_state(params, rest, tx), []
    data = (jnp.asarray(x), jnp.asarray(y))
    t = 0
    for e in range(2):
        for i in batch_indices(jax.random.fold_in(jax.random.key(1), e), 256, 32, 8):
            state, _ = step(state, take(data, i))
            if t in ends:
                expected.append(state.params)
            t += 1
    got_params, _ = r.snapshots
    for k in range(3):
        for a, b in zip(
            jax.tree.leaves(jax.tree.map(lambda s, k=k: s[k], got_params)),
            jax.tree.leaves(expected[k]),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_write_only_when_taken():
    tree = ({"w": jnp.arange(3.0)}, {"k": jax.random.key(0)})  # keys stack too
    buf = ensembles.init_buffer(tree, 2)
    a = ensembles.write(buf, tree, jnp.array(True))
    assert int(a.count) == 1
    c = ensembles.write(a, ({"w": jnp.ones(3)}, tree[1]), jnp.array(False))
    assert int(c.count) == 1
    np.testing.assert_array_equal(c.members[0]["w"][0], jnp.arange(3.0))


def test_ensemble_averages_softmax_not_logits():
    """Two linear models whose mean LOGITS (= mean weights) pick class 1 while
    their mean PROBABILITIES pick class 0: the ensemble must say 0."""
    apply = lambda w, x: x @ w  # noqa: E731
    w = jnp.stack(
        [jnp.array([[5.0, 0.0, 0.0]]), jnp.array([[-5.0, 1.0, 0.0]])]
    )  # one input feature, three classes
    x = jnp.ones((1, 1))
    probs = ensembles.ensemble_predict(apply, w, x)
    manual = (jax.nn.softmax(w[0][0]) + jax.nn.softmax(w[1][0])) / 2
    np.testing.assert_allclose(probs[0], manual, rtol=1e-6)
    mean_logits = (w[0][0] + w[1][0]) / 2
    assert int(jnp.argmax(mean_logits)) == 1  # [0, 0.5, 0]
    assert int(jnp.argmax(probs[0])) == 0  # about [0.49, 0.37, 0.14]
    # The last m=1 member alone predicts class 1.
    assert int(jnp.argmax(ensembles.ensemble_predict(apply, w, x, m=1)[0])) == 1
    with pytest.raises(ValueError, match="m must be"):
        ensembles.ensemble_predict(apply, w, x, m=3)


def test_ensemble_curve_against_manual_average():
    x, y = synthetic(300, seed=3)
    apply, _ = pure(mlp(64, 10, (16,), key=jax.random.key(0)))
    members = [pure(mlp(64, 10, (16,), key=jax.random.key(k)))[1] for k in range(4)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    xf = jnp.asarray(x, jnp.float32) / 255
    single, ens = ensembles.ensemble_curve(apply, stacked, xf, y)
    probs = [jax.nn.softmax(apply(p, xf)) for p in members]
    for i, p in enumerate(probs):
        assert single[i] == pytest.approx(float(jnp.mean(jnp.argmax(p, -1) == y)))
    for m in range(1, 5):
        avg = sum(probs[4 - m :]) / m
        assert ens[m - 1] == pytest.approx(float(jnp.mean(jnp.argmax(avg, -1) == y)))
    assert ens[0] == single[-1]


def test_member_probs_of_a_conv_net_dispatched_equal_one_program_and_by_hand():
    """A convolution on the CPU takes the dispatched path (one forward pass per
    member and batch, a tail batch included); it equals the one-program path
    (vmap over members, lax.map over batches) and each member's softmax by hand,
    with each member's own BatchNorm statistics."""
    from lrjax._src.models import cnn

    nets = [cnn(10, key=jax.random.key(k), input_shape=(8, 8)) for k in range(3)]
    parts = [split_model(n) for n in nets]
    spec = parts[0][0]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[(p, s) for _, p, s in parts])

    # distinct running statistics per member, so that a mix-up would show
    def shift(a):  # the float statistics, not the rng keys
        if not jnp.issubdtype(a.dtype, jnp.floating):
            return a
        return a + 0.1 * jnp.arange(3.0).reshape((3,) + (1,) * (a.ndim - 1))

    stacked = (stacked[0], jax.tree.map(shift, stacked[1]))
    x = jax.random.uniform(jax.random.key(9), (25, 8, 8))
    logits, members = ensembles._logits_fn(spec, stacked)
    assert conv_on_cpu(logits, member_of(members, 0), x[:1])
    probs = ensembles.member_probs(spec, stacked, x, batch_size=10)  # 10, 10, 5
    one_program = ensembles._probs_in_one_program(logits, members, x, 10)
    by_hand = jnp.stack([
        jax.nn.softmax(spec.merge(*member_of(stacked, i), train=False)(x))
        for i in range(3)
    ])  # fmt: skip
    assert probs.shape == (3, 25, 10)
    np.testing.assert_allclose(probs, by_hand, atol=1e-6)
    np.testing.assert_allclose(one_program, by_hand, atol=1e-6)
    assert not np.allclose(probs[0], probs[1])


def test_fit_val_curve_against_a_hand_written_ensemble():
    """FitResult.ensemble_val_curve == the mean softmax of the last m snapshots,
    each predicting on the validation split, written out by hand; the test curve
    is the same rule on test, and without val_data there is no val curve."""
    x, y = synthetic(256)
    xv, yv = synthetic(300, seed=5)
    xt, yt = synthetic(200, seed=6)
    ends = ensembles.snapshot_steps(4, num_steps=16, num_snapshots=3)  # 7, 11, 15
    config = FitConfig(epochs=2, batch_size=32, snapshot_steps=ends,
                       learning_rate=schedules.cosine_restarts(0.1, 4))  # fmt: skip
    model = nnx.Sequential(scale_images, mlp(64, 10, (16,), key=jax.random.key(0)))
    r = fit(model, optax.sgd, (x, y), key=jax.random.key(1), config=config,
            val_data=(xv, yv), test_data=(xt, yt))  # fmt: skip
    apply, _ = pure(mlp(64, 10, (16,), key=jax.random.key(0)))
    params, _ = r.snapshots  # stacked [3, ...]; the MLP holds no other state
    params = params["layers"][1]  # the MLP's, behind scale_images

    def by_hand(xs, ys):
        xf = jnp.asarray(xs, jnp.float32) / 255
        probs = [
            jax.nn.softmax(apply(jax.tree.map(lambda a, k=k: a[k], params), xf))
            for k in range(3)
        ]
        single = [float(jnp.mean(jnp.argmax(p, -1) == ys)) for p in probs]
        ens = [
            float(jnp.mean(jnp.argmax(sum(probs[3 - m :]) / m, -1) == ys))
            for m in range(1, 4)
        ]
        return single, ens

    single, ens = by_hand(xv, yv)
    assert r.snapshot_val_accuracy == pytest.approx(single, rel=1e-6)
    assert r.ensemble_val_curve == pytest.approx(ens, rel=1e-6)
    single, ens = by_hand(xt, yt)
    assert r.snapshot_test_accuracy == pytest.approx(single, rel=1e-6)
    assert r.ensemble_curve == pytest.approx(ens, rel=1e-6)
    # The last epoch's record scores the ensemble of all snapshots on val too.
    assert r.history[-1]["ensemble_val_accuracy"] == r.ensemble_val_curve[-1]
    assert r.ensemble_val_curve != r.ensemble_curve  # two splits, two curves

    model = nnx.Sequential(scale_images, mlp(64, 10, (16,), key=jax.random.key(0)))
    r = fit(model, optax.sgd, (x, y), key=jax.random.key(1), config=config,
            test_data=(xt, yt))  # fmt: skip
    assert r.ensemble_val_curve is None and r.snapshot_val_accuracy is None
    assert r.ensemble_curve == pytest.approx(ens, rel=1e-6)
