"""``cli.optimizer_factory``'s weight decay: ``0`` means none, adamw included;
``None`` means adamw's 1e-4 (issue #11). Updates are compared with optax's own
optimizers and with a numpy reference, plain and under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax.cli import OPTIMIZERS, UsageError, optimizer_factory

LR = 0.1


def tree(key):
    kw, kb = jax.random.split(key)
    return {
        "w": jax.random.normal(kw, (3, 2), jnp.float32),  # float32[3, 2]
        "b": jax.random.normal(kb, (2,), jnp.float32) + 1.0,  # float32[2]
    }


PARAMS = tree(jax.random.key(0))
GRADS = [tree(jax.random.key(k)) for k in range(1, 4)]  # three steps


def updates(tx: optax.GradientTransformation, jit: bool) -> list[dict]:
    """The updates of three steps from PARAMS, params moving with them."""
    update = jax.jit(tx.update) if jit else tx.update
    params, state, out = PARAMS, tx.init(PARAMS), []
    for grads in GRADS:
        u, state = update(grads, state, params)
        params = optax.apply_updates(params, u)
        out.append(jax.device_get(u))
    return out


def assert_same(got: list[dict], want: list[dict]) -> None:
    for g, w in zip(got, want, strict=True):
        for name in ("w", "b"):
            np.testing.assert_array_equal(g[name], w[name])


@pytest.mark.parametrize("jit", [False, True])
def test_adamw_with_zero_decay_is_adam(jit):
    got = updates(optimizer_factory("adamw", weight_decay=0.0)(LR), jit)
    # optax.adamw(weight_decay=0) adds 0 * params: bit for bit optax.adam.
    assert_same(got, updates(optax.adam(LR), jit))
    # ...and that is not what the default decay gives (the test can fail).
    default = updates(optimizer_factory("adamw")(LR), jit)
    assert not np.array_equal(got[0]["w"], default[0]["w"])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("weight_decay, want", [(None, 1e-4), (3e-2, 3e-2)])
def test_adamw_decay_default_and_explicit(weight_decay, want, jit):
    got = updates(optimizer_factory("adamw", weight_decay)(LR), jit)
    assert_same(got, updates(optax.adamw(LR, weight_decay=want), jit))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "adamw"])
@pytest.mark.parametrize("weight_decay", [None, 0.0])
def test_no_decay_for_the_others_by_default_or_zero(name, weight_decay, jit):
    got = updates(optimizer_factory(name, weight_decay)(LR), jit)
    assert_same(got, updates(optimizer_factory(name)(LR), jit))


@pytest.mark.parametrize("jit", [False, True])
def test_sgd_decay_against_numpy(jit):
    wd = 5e-3
    got = updates(optimizer_factory("sgd", wd)(LR), jit)
    params = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
    for u, grads in zip(got, GRADS, strict=True):
        for name in ("w", "b"):
            want = -LR * (np.asarray(grads[name], np.float64) + wd * params[name])
            # a few float32 roundings of values of order LR * |g|
            np.testing.assert_allclose(u[name], want, rtol=1e-6, atol=1e-7)
            params[name] = params[name] + np.asarray(u[name], np.float64)


@pytest.mark.parametrize("bad", [-1e-4, float("nan"), float("inf")])
def test_bad_decay_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="weight decay must be finite and >= 0"):
        optimizer_factory("adamw", bad)
