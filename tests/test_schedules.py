"""Tests for lrjax.schedules against independent references.

References: the worked values of the papers / REFERENCE.md, plain-Python float64
simulations written like stateful schedulers (counters advanced one step at a
time, not the closed form), and PyTorch's own schedulers where torch imports.

Tolerances come from float32 rounding: each float32 op adds a relative error of
at most u = 2**-24 (XLA's exp/cos/sin: about 2 u), and every schedule sums
positive terms (no cancellation; the cosine is evaluated as cos**2 / sin**2 of a
small angle), so the relative error is a small multiple of u, counted below per
schedule.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lrjax._src import schedules as S

U = 2.0**-24  # unit roundoff of float32
TINY = float(np.finfo(np.float32).tiny)
# cyclic: r/up, f*scale, height*(.), base+(.) plus rounding of base and height.
RTOL_CYCLIC = 8 * U
# cosine: pos/T, *pi/2 (and pi/2's own rounding), cos or sin (2u), squared,
# height*f, lo+(.), rounding of peak and lo: about 12 u; keep a margin.
RTOL_COSINE = 16 * U


def rtol_exp(z):
    """Relative error bound of exp(z) with z = a * b formed in float32.

    Both factors are rounded (2 u) and multiplied (1 u): |dz| <= 3 u |z|, hence
    exp is off by a factor exp(3 u |z|) ~ 1 + 3 u |z|, plus 2 u for exp itself.
    """
    return (3 * np.abs(z) + 2) * U


# ---------------------------------------------------------------------------
# Stateful float64 references (one step at a time, like a torch scheduler).


def ref_cyclic(base, peak, up, down, mode, gamma, n):
    out = []
    pos, cycle = 0, 1  # steps into the current cycle, 1-based cycle count
    for t in range(n):
        frac = pos / up if pos <= up else (up + down - pos) / down
        if mode == "triangular":
            scale = 1.0
        elif mode == "triangular2":
            scale = 0.5 ** (cycle - 1)
        else:
            scale = gamma**t
        out.append(base + (peak - base) * frac * scale)
        pos += 1
        if pos == up + down:
            pos, cycle = 0, cycle + 1
    return np.array(out)


def ref_sgdr(peak, first, mult, lo, decay, warmup, n):
    """SGDR like torch's CosineAnnealingWarmRestarts.step(), plus decay/warmup.

    Cycle ends are the rounded running sums of the float periods first*mult**i.
    """
    out = []
    i = 0  # cycle index
    cum_float = float(first)  # unrounded end of cycle i
    t_i, t_cur, height = first, 0, peak - lo  # height of the peak above lo
    for _ in range(n):
        if t_cur < warmup:
            frac = t_cur / warmup
        else:
            frac = (1 + math.cos(math.pi * (t_cur - warmup) / (t_i - warmup))) / 2
        out.append(lo + height * frac)
        t_cur += 1
        if t_cur >= t_i:
            end = round(cum_float)
            i += 1
            cum_float += first * mult**i
            t_i = round(cum_float) - end
            t_cur = 0
            height *= decay
    return np.array(out)


def same(actual, desired):
    """Equal up to a few ulps (the cosine's error budget).

    XLA may compile the same expression differently in different programs (FMA
    contraction, x / c as x * (1 / c)), so eager, jit, vmap and scan results of
    one schedule can differ in the last bit or two.
    """
    assert np.asarray(actual).dtype == np.float32
    np.testing.assert_allclose(actual, desired, rtol=RTOL_COSINE, atol=TINY)


def check(actual, desired, rtol):
    """|actual - desired| <= rtol * |desired| elementwise (rtol may be an array)."""
    actual = np.asarray(actual)
    assert actual.dtype == np.float32
    desired = np.asarray(desired, np.float64)
    err = np.abs(actual.astype(np.float64) - desired)
    # Subnormal lrs may be flushed to zero by XLA on CPU.
    bound = np.broadcast_to(rtol * np.abs(desired) + TINY, err.shape)
    bad = np.flatnonzero(err > bound)
    if bad.size:
        i = bad[0]
        pytest.fail(
            f"{bad.size} mismatches, first at index {i}: got {actual.flat[i]!r}, "
            f"want {desired.flat[i]!r}, |err| = {err.flat[i]:.3g} > {bound.flat[i]:.3g}"
        )


# ---------------------------------------------------------------------------
# Worked values.


def test_cyclic_worked_values():
    tri = S.triangular(1e-3, 6e-3, 2000)
    for t, want in [(0, 1e-3), (1000, 3.5e-3), (2000, 6e-3), (4000, 1e-3)]:
        assert float(tri(t)) == pytest.approx(want, rel=RTOL_CYCLIC)
    tri2 = S.triangular2(1e-3, 6e-3, 2000)
    assert float(tri2(6000)) == pytest.approx(3.5e-3, rel=RTOL_CYCLIC)
    exr = S.exp_range(1e-3, 6e-3, 2000, gamma=0.99994)
    assert float(exr(2000)) == pytest.approx(5.4346e-3, abs=5e-8)


def test_sgdr_worked_values():
    s = S.cosine_restarts(0.1, first_period=10, period_mult=2)
    want = {0: 0.1, 5: 0.05, 9: 0.002447, 10: 0.1, 29: 0.000616, 30: 0.1}
    for t, v in want.items():
        assert float(s(t)) == pytest.approx(v, abs=5e-7)


def test_sweep_endpoints_exact():
    s = S.exponential_sweep(1e-5, 10.0, 100)
    assert float(s(0)) == np.float32(1e-5)
    assert float(s(99)) == np.float32(10.0)
    assert float(s(10**6)) == np.float32(10.0)
    lin = S.linear_sweep(0.3, 0.1, 7)
    assert float(lin(0)) == np.float32(0.3)
    assert float(lin(6)) == np.float32(0.1)
    assert float(lin(-4)) == np.float32(0.3)  # negative steps act as step 0


# ---------------------------------------------------------------------------
# Against the stateful float64 references, plain and under jit.

N = 6000
STEPS = np.arange(N)

CYCLIC_CONFIGS = [
    (1e-3, 6e-3, 2000, None, "triangular", 1.0),
    (0.0, 1.0, 7, 3, "triangular", 1.0),
    (1e-4, 1e-1, 300, 900, "triangular2", 1.0),
    (1e-3, 6e-3, 500, 120, "exp_range", 0.9995),
    (1e-3, 6e-3, 2000, None, "exp_range", 0.99994),
]


@pytest.mark.parametrize("base,peak,up,down,mode,gamma", CYCLIC_CONFIGS)
def test_cyclic_matches_stateful_reference(base, peak, up, down, mode, gamma):
    s = S.cyclic(base, peak, up, mode=mode, gamma=gamma, step_size_down=down)
    want = ref_cyclic(base, peak, up, down or up, mode, gamma, N)
    rtol = RTOL_CYCLIC + rtol_exp(STEPS * math.log(gamma))
    check(s(STEPS), want, rtol)
    check(jax.jit(s)(jnp.asarray(STEPS)), want, rtol)


SGDR_CONFIGS = [
    # peak, first, mult, lo, decay, warmup
    (0.1, 10, 1, 0.0, 1.0, 0),
    (0.1, 10, 2, 0.0, 1.0, 0),
    (0.05, 7, 3, 1e-4, 1.0, 0),
    (0.2, 10, 1.5, 1e-3, 0.5, 0),
    (0.2, 100, 1, 0.0, 0.8, 10),
    (1.0, 13, 2, 0.01, 0.5, 4),
    (0.3, 5, 1.25, 0.0, 0.9, 2),
]


@pytest.mark.parametrize("peak,first,mult,lo,decay,warmup", SGDR_CONFIGS)
def test_cosine_restarts_matches_stateful_reference(
    peak, first, mult, lo, decay, warmup
):
    s = S.cosine_restarts(peak, first, mult, lo, decay, warmup)
    want = ref_sgdr(peak, first, mult, lo, decay, warmup, N)
    # peak_decay**i as exp2(i * log2(decay)): exact for 0.5, else rtol_exp.
    n_cycles = len(S.cosine_restart_steps(first, mult, num_steps=N)) + 1
    rtol = RTOL_COSINE + rtol_exp(n_cycles * math.log(decay))
    check(s(STEPS), want, rtol)
    check(jax.jit(s)(jnp.asarray(STEPS)), want, rtol)


@pytest.mark.parametrize("peak,first,mult,lo,decay,warmup", SGDR_CONFIGS)
def test_restart_steps_consistent(peak, first, mult, lo, decay, warmup):
    s = S.cosine_restarts(peak, first, mult, lo, decay, warmup)
    ends = S.cosine_restart_steps(first, mult, num_steps=N - 1)
    assert ends.dtype == np.int64 and len(ends) >= 2
    assert np.all(np.diff(ends) >= first) and ends[-1] < N - 1
    starts = np.concatenate([[0], ends[:-1] + 1])
    periods = ends - starts + 1
    cycles = np.arange(len(ends) + 1)
    heights = (peak - lo) * decay**cycles  # peak_i - lo
    # peak_decay**i is exp2(i * log2(decay)) in float32.
    rtol = RTOL_COSINE + rtol_exp(cycles * math.log(decay))
    lr = np.asarray(s(STEPS))
    if warmup == 0:
        # The restart step is back at the decayed peak ...
        check(lr[ends + 1], lo + heights[1:], rtol[1:])
        # ... and the lr rises only there.
        np.testing.assert_array_equal(np.flatnonzero(np.diff(lr) > 0), ends)
    else:
        # ... or, with warmup, back at min and rising.
        check(lr[ends + 1], np.full(len(ends), lo), RTOL_COSINE)
    # The cycle's last step is one cosine step above min.
    tail = np.sin(np.pi / (2 * (periods - warmup))) ** 2
    check(lr[ends], lo + heights[:-1] * tail, rtol[:-1])


def test_restart_steps_values():
    assert S.cosine_restart_steps(10, 2, num_steps=71).tolist() == [9, 29, 69]
    assert S.cosine_restart_steps(10, 2, num_steps=69).tolist() == [9, 29]
    assert S.cosine_restart_steps(10, num_steps=0).tolist() == []
    # Float multiplier: ends at round(10 * (1.5**i - 1) / 0.5) - 1.
    want = [round(10 * (1.5**i - 1) / 0.5) - 1 for i in range(1, 8)]
    assert S.cosine_restart_steps(10, 1.5, num_steps=want[-1] + 1).tolist() == want


def test_exponential_sweep_matches_stateful_reference():
    init, end, n = 1e-7, 10.0, 1719
    lr, want = init, []
    ratio = (end / init) ** (1 / (n - 1))
    for t in range(N):
        want.append(lr if t < n - 1 else end)
        lr *= ratio
    s = S.exponential_sweep(init, end, n)
    rtol = rtol_exp(math.log(end / init)) + 2 * U
    check(s(STEPS), want, rtol)
    check(jax.jit(s)(jnp.asarray(STEPS)), want, rtol)


def test_linear_sweep_matches_stateful_reference():
    init, end, n = 0.0, 2.0, 1000
    want = [init + (end - init) * min(t, n - 1) / (n - 1) for t in range(N)]
    s = S.linear_sweep(init, end, n)
    check(s(STEPS), want, 4 * U)
    check(jax.jit(s)(jnp.asarray(STEPS)), want, 4 * U)


@pytest.mark.parametrize("init,factor,size", [(0.1, 0.5, 30), (0.3, 0.9, 250)])
def test_step_decay_matches_stateful_reference(init, factor, size):
    lr, want = init, []
    for t in range(N):
        want.append(lr)
        if (t + 1) % size == 0:
            lr *= factor
    s = S.step_decay(init, factor, size)
    rtol = rtol_exp(N // size * math.log(factor)) + 2 * U
    check(s(STEPS), want, rtol)
    check(jax.jit(s)(jnp.asarray(STEPS)), want, rtol)


# ---------------------------------------------------------------------------
# PyTorch equality (torch only in these tests).


def torch_groups(make_scheduler, n, make_optimizer=None):
    """Copies of ``param_groups[0]`` (lr, momentum, betas) before each update."""
    torch = pytest.importorskip("torch")
    param = torch.nn.Parameter(torch.zeros(1))
    if make_optimizer is None:
        opt = torch.optim.SGD([param], lr=1.0)
    else:
        opt = make_optimizer(torch, [param])
    sched = make_scheduler(torch, opt)
    groups = []
    for _ in range(n):
        groups.append(dict(opt.param_groups[0]))
        param.grad = torch.ones(1)
        opt.step()  # before sched.step(), or torch warns
        sched.step()
    return groups


def torch_lrs(make_scheduler, n):
    return np.array([g["lr"] for g in torch_groups(make_scheduler, n)])


@pytest.mark.parametrize(
    "up,down,mode,gamma",
    [
        (200, None, "triangular", 1.0),
        (150, 350, "triangular", 1.0),
        (100, None, "triangular2", 1.0),
        (60, 140, "triangular2", 1.0),
        (250, 100, "exp_range", 0.9993),
    ],
)
def test_cyclic_equals_torch(up, down, mode, gamma):
    n = 2000
    want = torch_lrs(
        lambda torch, opt: torch.optim.lr_scheduler.CyclicLR(
            opt,
            base_lr=1e-4,
            max_lr=3e-2,
            step_size_up=up,
            step_size_down=down,
            mode=mode,
            gamma=gamma,
            cycle_momentum=False,
        ),
        n,
    )
    s = S.cyclic(1e-4, 3e-2, up, mode=mode, gamma=gamma, step_size_down=down)
    check(s(np.arange(n)), want, RTOL_CYCLIC + rtol_exp(n * math.log(gamma)))


@pytest.mark.parametrize("t0,tmult,eta_min", [(10, 1, 0.0), (10, 2, 1e-3), (7, 3, 0.0)])
def test_cosine_restarts_equals_torch(t0, tmult, eta_min):
    n = 2000
    want = torch_lrs(
        lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=t0, T_mult=tmult, eta_min=eta_min
        ),
        n,
    )
    s = S.cosine_restarts(1.0, t0, tmult, min_value=eta_min)
    check(s(np.arange(n)), want, RTOL_COSINE)


def test_step_decay_equals_torch():
    n = 1000
    want = torch_lrs(
        lambda torch, opt: torch.optim.lr_scheduler.StepLR(
            opt, step_size=30, gamma=0.7
        ),
        n,
    )
    s = S.step_decay(1.0, 0.7, 30)
    check(s(np.arange(n)), want, rtol_exp(n // 30 * math.log(0.7)) + 2 * U)


# ---------------------------------------------------------------------------
# Input types, vmap, giant steps.

ALL = {
    "exponential_sweep": (S.exponential_sweep(1e-6, 1.0, 500), 1e-6, 1.0),
    "linear_sweep": (S.linear_sweep(1e-3, 0.5, 500), 1e-3, 0.5),
    "triangular": (S.triangular(1e-3, 6e-3, 2000, 777), 1e-3, 6e-3),
    "triangular2": (S.triangular2(1e-3, 6e-3, 2000), 1e-3, 6e-3),
    "exp_range": (S.exp_range(1e-3, 6e-3, 2000, 0.99994), 1e-3, 6e-3),
    "sgdr1": (S.cosine_restarts(0.1, 10, 1, 1e-4, 0.9), 1e-4, 0.1),
    "sgdr2": (S.cosine_restarts(0.1, 10, 2, 1e-4, 0.5, 3), 1e-4, 0.1),
    "sgdr1.1": (S.cosine_restarts(0.1, 3, 1.1, 0.0), 0.0, 0.1),
    "step_decay": (S.step_decay(0.1, 0.5, 7), 0.0, 0.1),
    "one_cycle": (S.one_cycle(0.1, 1000), 0.1 / 25 / 1e4, 0.1),
    "one_cycle3": (
        S.one_cycle(0.1, 3001, pct_start=0.37, anneal="linear", three_phase=True),
        0.1 / 25 / 1e4,
        0.1,
    ),
    "one_cycle_momentum": (S.one_cycle_momentum(1000), 0.85, 0.95),
    "warmup_cosine": (S.warmup_cosine(0.1, 3000, warmup_steps=100), 0.0, 0.1),
    "linear_decay": (S.linear_decay(0.1, 3000, end_value=1e-3), 1e-3, 0.1),
    "wsd": (S.wsd(0.1, 3000, warmup_steps=100, decay="sqrt"), 0.0, 0.1),
}
BIG = np.array([2**31 - 1, 2**31 - 2, 2**31 - 2000, 2**30 + 3, 2**24 + 1])


@pytest.mark.parametrize("name", list(ALL))
def test_input_types_vmap_and_giant_steps(name):
    s, lo, hi = ALL[name]
    # Two negative steps, ordinary steps, giant steps: one shape, few compiles.
    t = np.concatenate([[-1, -(2**31)], np.arange(0, 5000, 37), BIG])
    want = np.asarray(jax.jit(s)(t))
    assert want.dtype == np.float32 and want.shape == t.shape
    same(s(t), want)  # eager, int64 numpy
    np.testing.assert_array_equal(s(t.astype(np.int32)), s(jnp.asarray(t, jnp.int32)))
    same(jax.jit(jax.vmap(s))(t), want)
    same(jax.jit(s)(t[2:].astype(np.uint32)), want[2:])
    # Scalars: Python, numpy and JAX ints give float32 scalars.
    for x in (37, np.int16(37), np.int64(37), jnp.int32(37)):
        lr = s(x)
        assert lr.shape == () and lr.dtype == jnp.float32
        same(lr, want[3])
    # Negative steps act as step 0.
    assert want[0] == want[1] == want[2]
    big = want[-len(BIG) :]
    assert np.all(np.isfinite(big))
    assert np.all(big >= np.float32(lo)) and np.all(big <= np.float32(hi))


def test_giant_steps_exact_cycle_position():
    # Integer arithmetic keeps the position inside the cycle exact at 2**31 - 1.
    t = 2**31 - 1
    tri = S.triangular(0.0, 1.0, 1000, 333)
    r = t % 1333
    want = r / 1000 if r <= 1000 else (1333 - r) / 333
    assert float(tri(t)) == pytest.approx(want, rel=RTOL_CYCLIC)
    sgdr = S.cosine_restarts(1.0, 1000)
    want = (1 + math.cos(math.pi * (t % 1000) / 1000)) / 2
    assert float(sgdr(t)) == pytest.approx(want, rel=RTOL_COSINE)
    sgdr2 = S.cosine_restarts(1.0, 10, 2)
    n = int(math.log2(t / 10 + 1))
    want = (1 + math.cos(math.pi * (t - 10 * (2**n - 1)) / (10 * 2**n))) / 2
    assert float(sgdr2(t)) == pytest.approx(want, rel=RTOL_COSINE)
    assert float(S.triangular2(0.1, 1.0, 10)(t)) == np.float32(0.1)
    assert float(S.exp_range(0.1, 1.0, 10, 0.999)(t)) == np.float32(0.1)


def test_host_integers_beyond_int32_saturate():
    s = S.cosine_restarts(0.1, 10, 2)
    last = float(s(2**31 - 1))
    assert float(s(2**40)) == last
    np.testing.assert_array_equal(s(np.array([2**40, 2**63 - 1])), [last, last])
    # uint64 beyond int64
    assert float(s(np.uint64(2**64 - 1))) == last


def test_float_steps_follow_the_formula():
    s = S.cosine_restarts(1.0, 10)
    assert float(s(2.5)) == pytest.approx((1 + math.cos(math.pi / 4)) / 2, rel=1e-6)
    assert float(S.triangular(0.0, 1.0, 4)(1.5)) == pytest.approx(0.375, rel=1e-6)


# ---------------------------------------------------------------------------
# Inside optax.


def run_sgd(opt, n):
    """Per-step updates of sgd on loss = sum(params): update t is -lr(t)."""
    params = jnp.zeros(3)

    @jax.jit
    def train(params):
        def body(carry, _):
            params, state = carry
            grads = jnp.ones_like(params)
            updates, state = opt.update(grads, state, params)
            lr = getattr(state, "hyperparams", {}).get("learning_rate", jnp.nan)
            return (optax.apply_updates(params, updates), state), (updates[0], lr)

        _, out = jax.lax.scan(body, (params, opt.init(params)), length=n)
        return out

    return train(params)


@pytest.mark.parametrize(
    "name",
    ["triangular", "exp_range", "sgdr2", "step_decay", "one_cycle3", "wsd"],
)
def test_sgd_applies_exactly_the_schedule(name):
    s = ALL[name][0]
    n = 2000
    updates, _ = run_sgd(optax.sgd(learning_rate=s), n)
    want = np.asarray(s(np.arange(n)))
    same(-updates, want)
    # The test can fail: the lr of the next step is not the same.
    assert not np.allclose(-updates[:-1], want[1:], rtol=RTOL_COSINE, atol=0)


def test_inject_hyperparams_reads_the_schedule():
    s = ALL["sgdr2"][0]
    n = 500
    updates, lrs = run_sgd(optax.inject_hyperparams(optax.sgd)(learning_rate=s), n)
    same(lrs, s(np.arange(n)))
    same(-updates, s(np.arange(n)))


def test_join_schedules_warmup_then_restarts():
    warm = optax.linear_schedule(0.0, 0.1, 50)
    restarts = S.cosine_restarts(0.1, 100, 2, min_value=1e-4, peak_decay=0.5)
    joined = optax.join_schedules([warm, restarts], boundaries=[50])
    t = np.arange(2000)
    want = np.where(t < 50, warm(t), restarts(np.maximum(t - 50, 0)))
    same(jax.jit(joined)(jnp.asarray(t)), want)
    updates, _ = run_sgd(optax.sgd(learning_rate=joined), 2000)
    same(-updates, want)


# ---------------------------------------------------------------------------
# Argument validation.

BAD = [
    (
        S.exponential_sweep,
        (1e-3, 1.0, 2**31 + 1),
        "num_steps must be an integer <= 2147483648, got",
    ),
    (S.cyclic, (0.0, 1.0, 2**30 + 1), "step_size .* <= 1073741824, got 1073741825"),
    (
        S.cyclic,
        (0.0, 1.0, 5, "triangular", 1.0, 2**31),
        "step_size_down .* <= 1073741824",
    ),
    (S.cosine_restarts, (0.1, 2**31), "first_period .* <= 2147483647, got 2147483648"),
    (S.step_decay, (0.1, 0.5, 2**40), "step_size .* <= 2147483647, got 1099511627776"),
    (
        S.exponential_sweep,
        (0.0, 1.0, 10),
        "init_value must be a real number > 0, got 0.0",
    ),
    (S.exponential_sweep, (1e-3, -1.0, 10), "end_value .* got -1.0"),
    (S.exponential_sweep, (1e-3, 1.0, 1), "num_steps must be an integer >= 2, got 1"),
    (
        S.exponential_sweep,
        (1e-3, 1.0, 10.0),
        "num_steps must be an integer >= 2, got 10.0",
    ),
    (S.exponential_sweep, (1e-3, math.inf, 10), "end_value .* got inf"),
    (S.exponential_sweep, (math.nan, 1.0, 10), "init_value .* got nan"),
    (
        S.linear_sweep,
        (-1.0, 1.0, 10),
        "init_value must be a real number >= 0, got -1.0",
    ),
    (S.linear_sweep, (0.0, "1", 10), "end_value .* got '1'"),
    (S.linear_sweep, (0.0, 1.0, True), "num_steps must be an integer >= 2, got True"),
    (S.cyclic, (-1e-3, 6e-3, 10), "base_value .* >= 0, got -0.001"),
    (S.cyclic, (6e-3, 1e-3, 10), r"peak_value .* >= base_value \(0.006\), got 0.001"),
    (S.cyclic, (1e-3, 6e-3, 0), "step_size must be an integer >= 1, got 0"),
    (S.cyclic, (1e-3, 6e-3, 2.5), "step_size must be an integer >= 1, got 2.5"),
    (S.cyclic, (1e-3, 6e-3, 10, "cosine"), "mode must be one of .* got 'cosine'"),
    (S.cyclic, (1e-3, 6e-3, 10, "exp_range", 0.0), r"gamma .* in \(0, 1\], got 0.0"),
    (S.cyclic, (1e-3, 6e-3, 10, "exp_range", 1.5), r"gamma .* in \(0, 1\], got 1.5"),
    (S.cyclic, (1e-3, 6e-3, 10, "triangular", 1.0, 0), "step_size_down .* >= 1, got 0"),
    (S.triangular, (1e-3, 6e-3, -3), "step_size must be an integer >= 1, got -3"),
    (S.triangular2, (1e-3, 6e-3, 10, False), "step_size_down .* got False"),
    (S.exp_range, (1e-3, 6e-3, 10, -0.5), r"gamma .* got -0.5"),
    (S.cosine_restarts, (0.1, 0), "first_period must be an integer >= 1, got 0"),
    (
        S.cosine_restarts,
        (0.1, 10, 0.5),
        "period_mult must be a real number >= 1, got 0.5",
    ),
    (S.cosine_restarts, (0.1, 10, 1, -1e-3), "min_value .* >= 0, got -0.001"),
    (
        S.cosine_restarts,
        (0.1, 10, 1, 0.2),
        r"peak_value .* >= min_value \(0.2\), got 0.1",
    ),
    (S.cosine_restarts, (0.1, 10, 1, 0.0, 0.0), r"peak_decay .* in \(0, 1\], got 0.0"),
    (S.cosine_restarts, (0.1, 10, 1, 0.0, 1.5), r"peak_decay .* got 1.5"),
    (
        S.cosine_restarts,
        (0.1, 10, 1, 0.0, 1.0, 10),
        r"warmup_steps .* \[0, 10\), got 10",
    ),
    (S.cosine_restarts, (0.1, 10, 1, 0.0, 1.0, -1), "warmup_steps .* >= 0, got -1"),
    (S.cosine_restarts, (0.1, 1, 1 + 1e-9), "period_mult .* got 1.000000001"),
    (S.step_decay, (0.1, 0.0, 10), r"factor .* in \(0, 1\], got 0.0"),
    (S.step_decay, (0.1, 2.0, 10), r"factor .* got 2.0"),
    (S.step_decay, (-0.1, 0.5, 10), "init_value .* got -0.1"),
    (S.step_decay, (0.1, 0.5, None), "step_size must be an integer >= 1, got None"),
]


@pytest.mark.parametrize("factory,args,match", BAD)
def test_bad_arguments_raise(factory, args, match):
    with pytest.raises(ValueError, match=match):
        factory(*args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(first_period=0, num_steps=5), "first_period .* got 0"),
        (dict(first_period=5, period_mult=0.9, num_steps=5), "period_mult .* got 0.9"),
        (
            dict(first_period=5, num_steps=-1),
            "num_steps must be an integer >= 0, got -1",
        ),
        (
            dict(first_period=5, num_steps=2**31 + 1),
            "num_steps must be an integer <= 2147483648, got",
        ),
    ],
)
def test_bad_restart_steps_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.cosine_restart_steps(**kwargs)


def test_numpy_scalars_accepted_as_arguments():
    s = S.cyclic(
        np.float32(0.0), np.float64(1.0), np.int64(4), step_size_down=np.int32(2)
    )
    assert float(s(4)) == 1.0


# ---------------------------------------------------------------------------
# The 1cycle policy: PyTorch's OneCycleLR, step for step.

ONE_CYCLE_CONFIGS = [
    # total_steps, pct_start, div_factor, final_div_factor
    (10, 0.3, 25.0, 1e4),
    (10, 0.25, 10.0, 100.0),  # phase ends at 1.5 (and 3.0 with three phases)
    (100, 0.3, 25.0, 1e4),  # 0.3 * 100 = 30.000000000000004 in float64
    (100, 0.29, 25.0, 1e4),  # 0.29 * 100 = 28.999999999999996
    (100, 0.123, 5.0, 1.0),
    (1001, 0.3, 25.0, 1e4),  # ends at 299.3 (and 598.6)
    (1001, 0.45, 0.5, 3.0),  # div_factor < 1: the "peak" is the lowest lr
]


def torch_one_cycle(total, pct, div, final_div, anneal, three, optimizer="sgd"):
    """lr and momentum (SGD's momentum or Adam's betas[0]) of OneCycleLR."""

    def make_optimizer(torch, params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=1.0, momentum=0.9)
        return torch.optim.Adam(params, lr=1.0)

    groups = torch_groups(
        lambda torch, opt: torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=1.0,
            total_steps=total,
            pct_start=pct,
            div_factor=div,
            final_div_factor=final_div,
            anneal_strategy=anneal,
            three_phase=three,
        ),
        total,
        make_optimizer,
    )
    momentum = [g["momentum"] if optimizer == "sgd" else g["betas"][0] for g in groups]
    return np.array([g["lr"] for g in groups]), np.array(momentum)


@pytest.mark.parametrize("three", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("total,pct,div,final_div", ONE_CYCLE_CONFIGS)
def test_one_cycle_equals_torch(total, pct, div, final_div, anneal, three):
    want_lr, want_m = torch_one_cycle(total, pct, div, final_div, anneal, three)
    lr = S.one_cycle(
        1.0,
        total,
        pct_start=pct,
        div_factor=div,
        final_div_factor=final_div,
        anneal=anneal,
        three_phase=three,
    )
    m = S.one_cycle_momentum(total, pct_start=pct, anneal=anneal, three_phase=three)
    t = np.arange(total)
    # lr = a * w + b * (1 - w) with both weights computed directly: a few ulps.
    check(lr(t), want_lr, RTOL_COSINE)
    check(jax.jit(lr)(jnp.asarray(t)), want_lr, RTOL_COSINE)
    check(m(t), want_m, RTOL_COSINE)
    check(jax.jit(m)(jnp.asarray(t)), want_m, RTOL_COSINE)
    # Past the end (where torch extrapolates, then raises) the last value holds.
    later = np.array([total, total + 1, 10 * total, 2**31 - 1])
    np.testing.assert_array_equal(lr(later), np.full(4, lr(total - 1)))
    np.testing.assert_array_equal(m(later), np.full(4, np.float32(0.95)))


@pytest.mark.parametrize("three", [False, True])
def test_one_cycle_momentum_equals_torch_adam_beta1(three):
    total, pct, base, top = 500, 0.25, 0.8, 0.99
    want_lr, want_b1 = torch_one_cycle_adam(total, pct, base, top, three)
    lr = S.one_cycle(1.0, total, pct_start=pct, three_phase=three)
    b1 = S.one_cycle_momentum(
        total, pct_start=pct, base_momentum=base, max_momentum=top, three_phase=three
    )
    check(b1(np.arange(total)), want_b1, RTOL_COSINE)
    # Optax's Adam reads b1 from the schedule at every update.
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1)
    hparams = injected_hyperparams(tx, total)
    check(hparams["b1"], want_b1, RTOL_COSINE)
    check(hparams["learning_rate"], want_lr, RTOL_COSINE)


def torch_one_cycle_adam(total, pct, base, top, three):
    groups = torch_groups(
        lambda torch, opt: torch.optim.lr_scheduler.OneCycleLR(
            opt,
            max_lr=1.0,
            total_steps=total,
            pct_start=pct,
            base_momentum=base,
            max_momentum=top,
            three_phase=three,
        ),
        total,
        lambda torch, params: torch.optim.Adam(params, lr=1.0),
    )
    return np.array([g["lr"] for g in groups]), np.array(
        [g["betas"][0] for g in groups]
    )


def injected_hyperparams(tx, n):
    """``state.hyperparams`` after each of n updates (the values each one used)."""
    params = jnp.zeros(3)

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            updates, state = tx.update(jnp.ones_like(params), state, params)
            return (optax.apply_updates(params, updates), state), (
                state.hyperparams,
                updates[0],
            )

        _, out = jax.lax.scan(body, (params, tx.init(params)), length=n)
        return out

    hparams, updates = run(params)
    return {**hparams, "updates": updates}


def test_one_cycle_sgd_momentum_applies_the_schedules():
    """optax.sgd with injected lr and momentum follows torch's SGD update rule."""
    n = 300
    lr = S.one_cycle(0.5, n, pct_start=0.4)
    m = S.one_cycle_momentum(n, pct_start=0.4)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=m)
    out = injected_hyperparams(tx, n)
    lrs, ms = np.asarray(lr(np.arange(n)), np.float64), np.asarray(m(np.arange(n)))
    same(out["learning_rate"], lrs)
    same(out["momentum"], ms)
    # torch's SGD: buf = momentum * buf + grad (buf = grad at first), p -= lr * buf.
    buf, want = 0.0, []
    for t in range(n):
        buf = ms[t] * buf + 1.0
        want.append(-lrs[t] * buf)
    # Each step adds about 2 u of relative rounding to buf, damped by m <= 0.95:
    # at most 2 u / (1 - 0.95) = 40 u, plus the lr's few u.
    check(out["updates"], want, 64 * U)


def test_one_cycle_worked_values():
    s = S.one_cycle(1.0, 100)  # torch 2.13: 0.04, 1.0, 0.9995 (rounded)
    lo = 0.04 / 1e4
    assert float(s(0)) == np.float32(0.04)
    assert float(s(29)) == pytest.approx(1.0, rel=RTOL_COSINE)
    assert float(s(30)) == pytest.approx(0.9995, abs=5e-5)
    want = lo + (1 - lo) * (1 + math.cos(math.pi / 70)) / 2
    assert float(s(30)) == pytest.approx(want, rel=RTOL_COSINE)
    assert float(s(99)) == pytest.approx(lo, rel=RTOL_COSINE)
    # Optax's cosine_onecycle_schedule peaks one step later.
    onecycle = optax.cosine_onecycle_schedule(100, 1.0, 0.3, 25.0, 1e4)
    assert int(np.argmax(s(np.arange(100)))) == 29
    assert int(np.argmax([float(onecycle(t)) for t in range(100)])) == 30
    m = S.one_cycle_momentum(100)
    assert float(m(0)) == np.float32(0.95)
    assert float(m(29)) == pytest.approx(0.85, rel=RTOL_COSINE)
    assert float(m(99)) == np.float32(0.95)
    # Three phases, linear: back at initial at 2 * 30 - 2, then towards min.
    s3 = S.one_cycle(1.0, 100, anneal="linear", three_phase=True)
    assert float(s3(58)) == pytest.approx(0.04, rel=RTOL_CYCLIC)
    assert float(s3(78)) == pytest.approx(0.04 + (lo - 0.04) * 20 / 41, rel=RTOL_CYCLIC)
    m3 = S.one_cycle_momentum(100, three_phase=True)
    np.testing.assert_array_equal(m3(np.arange(58, 120)), np.float32(0.95))


def test_one_cycle_giant_total_steps():
    total = 2**31
    s = S.one_cycle(1.0, total)
    e1 = 0.3 * total - 1
    lo = 0.04 / 1e4
    for t in [0, 2**20, int(e1), int(e1) + 1, 2**30, 2**31 - 1000, 2**31 - 1]:
        if t <= e1:
            want = 1.0 + (0.04 - 1.0) * (1 + math.cos(math.pi * t / e1)) / 2
        else:
            pct = (t - e1) / (total - 1 - e1)
            want = lo + (1.0 - lo) * (1 + math.cos(math.pi * pct)) / 2
        assert float(s(t)) == pytest.approx(want, rel=RTOL_COSINE), t


def test_piecewise_float_steps_follow_the_formula():
    s = S.one_cycle(1.0, 100)
    lo = 0.04 / 1e4
    want = lo + (1 - lo) * (1 + math.cos(math.pi * 0.5 / 70)) / 2
    assert float(s(29.5)) == pytest.approx(want, rel=1e-6)
    assert float(S.wsd(1.0, 10, warmup_steps=2, decay_steps=4)(7.5)) == 0.625
    assert float(S.linear_decay(1.0, 10, warmup_steps=2)(0.5)) == 0.25


# ---------------------------------------------------------------------------
# Warmup, then decay: warmup_cosine, linear_decay, wsd.


def ref_wsd(peak, total, warmup, decay_steps, init, end, decay, n):
    """Hand formulas in float64: warmup, stable, decay over the last steps."""
    out = []
    for t in range(n):
        if t < warmup:
            lr = init + (peak - init) * t / warmup
        elif t < total - decay_steps:
            lr = peak
        elif t < total:
            p = (t - (total - decay_steps)) / decay_steps
            if decay == "linear":
                lr = peak + (end - peak) * p
            elif decay == "cosine":
                lr = end + (peak - end) * (1 + math.cos(math.pi * p)) / 2
            else:
                lr = peak - (peak - end) * math.sqrt(p)
        else:
            lr = end
        out.append(lr)
    return np.array(out)


WARMUP_CONFIGS = [
    # peak, total_steps, warmup_steps, init_value, end_value
    (1.0, 100, 0, 0.0, 0.0),
    (0.1, 1000, 100, 1e-3, 1e-4),
    (3e-4, 5000, 250, 0.0, 3e-5),
    (2.0, 7, 6, 2.0, 0.0),
    (0.5, 1, 0, 0.0, 0.5),
]


@pytest.mark.parametrize("peak,total,warmup,init,end", WARMUP_CONFIGS)
def test_warmup_cosine_equals_optax(peak, total, warmup, init, end):
    s = S.warmup_cosine(
        peak, total, warmup_steps=warmup, init_value=init, end_value=end
    )
    t = np.arange(total + 50)
    want = optax.warmup_cosine_decay_schedule(init, peak, warmup, total, end)(t)
    want = np.asarray(want, np.float64)
    # Optax forms 1 + cos(x), which cancels near x = pi: absolute error of a few
    # u * peak; lrjax is accurate relative to its value (RTOL_COSINE).
    atol = 8 * U * peak
    np.testing.assert_allclose(s(t), want, rtol=RTOL_COSINE, atol=atol)
    np.testing.assert_allclose(jax.jit(s)(t), want, rtol=RTOL_COSINE, atol=atol)
    ref = ref_wsd(peak, total, warmup, total - warmup, init, end, "cosine", t.size)
    check(s(t), ref, RTOL_COSINE)


@pytest.mark.parametrize("peak,total,warmup,init,end", WARMUP_CONFIGS)
def test_linear_decay_matches_hand_formula(peak, total, warmup, init, end):
    s = S.linear_decay(peak, total, warmup_steps=warmup, init_value=init, end_value=end)
    t = np.arange(total + 50)
    want = ref_wsd(peak, total, warmup, total - warmup, init, end, "linear", t.size)
    check(s(t), want, RTOL_CYCLIC)
    check(jax.jit(s)(jnp.asarray(t)), want, RTOL_CYCLIC)


WSD_CONFIGS = [
    # peak, total_steps, warmup_steps, decay_steps, init_value, end_value, decay
    (1.0, 100, 0, None, 0.0, 0.0, "linear"),
    (0.1, 1000, 50, 200, 1e-3, 1e-4, "cosine"),
    (3e-4, 2500, 100, 500, 0.0, 0.0, "sqrt"),
    (0.1, 1000, 0, 300, 0.0, 0.02, "sqrt"),
    (1.0, 10, 2, 8, 0.0, 0.0, "sqrt"),  # no stable phase
    (0.5, 37, 0, 37, 0.0, 0.05, "cosine"),  # all decay
    (1.0, 1, 0, None, 0.0, 0.0, "linear"),  # default decay_steps: max(1, 0)
]


@pytest.mark.parametrize("peak,total,warmup,decay_steps,init,end,decay", WSD_CONFIGS)
def test_wsd_matches_hand_formula(peak, total, warmup, decay_steps, init, end, decay):
    s = S.wsd(
        peak,
        total,
        warmup_steps=warmup,
        decay_steps=decay_steps,
        init_value=init,
        end_value=end,
        decay=decay,
    )
    t = np.arange(total + 50)
    length = max(1, round(0.2 * total)) if decay_steps is None else decay_steps
    want = ref_wsd(peak, total, warmup, length, init, end, decay, t.size)
    check(s(t), want, RTOL_COSINE)
    check(jax.jit(s)(jnp.asarray(t)), want, RTOL_COSINE)
    # The stable phase is exactly the peak.
    stable = np.asarray(s(np.arange(warmup, total - length + 1)))
    np.testing.assert_array_equal(stable, np.float32(peak))


def test_warmup_decay_worked_values():
    s = S.linear_decay(0.2, 100, warmup_steps=10)
    assert [float(s(t)) for t in (0, 5, 10, 55, 100, 1000)] == pytest.approx(
        [0.0, 0.1, 0.2, 0.1, 0.0, 0.0], rel=RTOL_CYCLIC
    )
    w = S.wsd(1.0, 100)  # decays over the last 20 steps
    assert [float(w(t)) for t in (0, 80, 85, 90, 100)] == pytest.approx(
        [1.0, 1.0, 0.75, 0.5, 0.0], rel=RTOL_CYCLIC
    )
    w = S.wsd(1.0, 100, decay="sqrt")
    assert float(w(85)) == pytest.approx(0.5, rel=RTOL_CYCLIC)
    assert float(w(99)) == pytest.approx(1 - math.sqrt(0.95), rel=RTOL_COSINE)
    w = S.wsd(1.0, 100, decay="cosine", end_value=0.1)
    assert float(w(90)) == pytest.approx(0.55, rel=RTOL_COSINE)
    c = S.warmup_cosine(1.0, 10, warmup_steps=2, init_value=0.5)
    assert float(c(1)) == 0.75 and float(c(6)) == pytest.approx(0.5, rel=RTOL_COSINE)
    # wsd whose decay is the whole schedule after warmup is warmup_cosine.
    t = np.arange(1200)
    same(
        S.wsd(0.1, 1000, warmup_steps=30, decay_steps=970, decay="cosine")(t),
        S.warmup_cosine(0.1, 1000, warmup_steps=30)(t),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: S.warmup_cosine(0.1, 500, warmup_steps=20, end_value=1e-3),
        lambda: S.linear_decay(0.1, 500, warmup_steps=20, end_value=1e-3),
        lambda: S.wsd(0.1, 500, warmup_steps=20, end_value=1e-3, decay="cosine"),
    ],
)
def test_warmup_schedules_hold_end_value(make):
    s = make()
    later = np.array([500, 501, 5000, 2**31 - 1])
    np.testing.assert_array_equal(s(later), np.full(4, np.float32(1e-3)))
    assert float(s(2**40)) == np.float32(1e-3)
    assert float(s(499)) > np.float32(1e-3)


@pytest.mark.parametrize(
    "name",
    ["one_cycle", "one_cycle3", "one_cycle_momentum", "warmup_cosine", "wsd"],
)
def test_python_ints_match_arrays_and_jit(name):
    s = ALL[name][0]
    t = np.arange(0, 3100, 97)
    arr = np.asarray(s(t))
    same(np.float32([float(s(int(x))) for x in t]), arr)
    same(jax.jit(s)(jnp.asarray(t)), arr)
    updates, _ = run_sgd(optax.sgd(learning_rate=s), 100)
    same(-updates, s(np.arange(100)))


# ---------------------------------------------------------------------------
# Argument validation of the piecewise schedules (keyword-only arguments).

BAD_PIECEWISE = [
    # one_cycle
    (S.one_cycle, (0.0, 100), {}, "peak_value must be a real number > 0, got 0.0"),
    (S.one_cycle, (1.0, 1), {}, "total_steps must be an integer >= 2, got 1"),
    (S.one_cycle, (1.0, 100.0), {}, "total_steps must be an integer >= 2, got 100.0"),
    (S.one_cycle, (1.0, 2**31 + 1), {}, "total_steps .* <= 2147483648, got"),
    (
        S.one_cycle,
        (1.0, 100),
        dict(pct_start=0.0),
        r"pct_start must be a real number in \(0, 1\), got 0.0",
    ),
    (S.one_cycle, (1.0, 100), dict(pct_start=1.0), r"pct_start .* got 1.0"),
    (
        S.one_cycle,
        (1.0, 100),
        dict(pct_start=0.01),
        r"pct_start must be in \(1 / total_steps, 1\) = \(0.01, 1\) for "
        r"total_steps=100, .* divide by zero\), got 0.01",
    ),
    (
        S.one_cycle,
        (1.0, 100),
        dict(pct_start=0.505, three_phase=True),
        r"pct_start must be in \(1 / total_steps, \(total_steps \+ 1\) / \(2 \* "
        r"total_steps\)\) = \(0.01, 0.505\) for total_steps=100 and "
        r"three_phase=True, .* got 0.505",
    ),
    (S.one_cycle, (1.0, 100), dict(div_factor=0.0), "div_factor .* > 0, got 0.0"),
    (
        S.one_cycle,
        (1.0, 100),
        dict(final_div_factor=-1.0),
        "final_div_factor must be a real number > 0, got -1.0",
    ),
    (
        S.one_cycle,
        (1.0, 100),
        dict(anneal="cosine"),
        r"anneal must be one of \('cos', 'linear'\), got 'cosine'",
    ),
    (
        S.one_cycle,
        (1.0, 100),
        dict(three_phase="yes"),
        "three_phase must be True or False, got 'yes'",
    ),
    # one_cycle_momentum
    (S.one_cycle_momentum, (1,), {}, "total_steps must be an integer >= 2, got 1"),
    (
        S.one_cycle_momentum,
        (100,),
        dict(base_momentum=-0.1),
        "base_momentum must be a real number >= 0, got -0.1",
    ),
    (
        S.one_cycle_momentum,
        (100,),
        dict(max_momentum=0.8),
        r"max_momentum must be a real number >= base_momentum \(0.85\), got 0.8",
    ),
    (S.one_cycle_momentum, (100,), dict(pct_start=1.5), "pct_start .* got 1.5"),
    (S.one_cycle_momentum, (100,), dict(anneal="exp"), "anneal .* got 'exp'"),
    # warmup_cosine
    (S.warmup_cosine, (1.0, 0), {}, "total_steps must be an integer >= 1, got 0"),
    (
        S.warmup_cosine,
        (1.0, 100),
        dict(warmup_steps=100),
        r"warmup_steps must be an integer in \[0, total_steps\) = \[0, 100\), got 100",
    ),
    (
        S.warmup_cosine,
        (1.0, 100),
        dict(warmup_steps=-1),
        "warmup_steps must be an integer >= 0, got -1",
    ),
    (S.warmup_cosine, (1.0, 100), dict(warmup_steps=2.0), "warmup_steps .* got 2.0"),
    (
        S.warmup_cosine,
        (1.0, 100),
        dict(init_value=-0.1),
        "init_value must be a real number >= 0, got -0.1",
    ),
    (S.warmup_cosine, (1.0, 100), dict(end_value=-1e-3), "end_value .* got -0.001"),
    (
        S.warmup_cosine,
        (0.1, 100),
        dict(init_value=0.2),
        r"peak_value must be a real number >= max\(init_value, end_value\) \(0.2\), "
        "got 0.1",
    ),
    (
        S.warmup_cosine,
        (0.1, 100),
        dict(end_value=0.3),
        r"peak_value .* \(0.3\), got 0.1",
    ),
    (S.warmup_cosine, (math.nan, 100), {}, "peak_value .* got nan"),
    # linear_decay
    (S.linear_decay, (1.0, True), {}, "total_steps must be an integer >= 1, got True"),
    (
        S.linear_decay,
        (1.0, 10),
        dict(warmup_steps=10),
        r"warmup_steps .* \[0, 10\), got 10",
    ),
    (S.linear_decay, (0.1, 10), dict(end_value=0.5), r"peak_value .* got 0.1"),
    # wsd
    (S.wsd, (1.0, 0), {}, "total_steps must be an integer >= 1, got 0"),
    (
        S.wsd,
        (1.0, 100),
        dict(decay_steps=0),
        "decay_steps must be an integer >= 1, got 0",
    ),
    (
        S.wsd,
        (1.0, 100),
        dict(decay_steps=101),
        "decay_steps must be an integer <= 100, got 101",
    ),
    (
        S.wsd,
        (1.0, 100),
        dict(warmup_steps=90, decay_steps=20),
        r"warmup_steps \+ decay_steps must be <= total_steps \(100\), "
        r"got 90 \+ 20 = 110",
    ),
    (S.wsd, (1.0, 100), dict(warmup_steps=85), r"got 85 \+ 20 = 105"),
    (
        S.wsd,
        (1.0, 100),
        dict(decay="cos"),
        r"decay must be one of \('linear', 'cosine', 'sqrt'\), got 'cos'",
    ),
    (S.wsd, (0.1, 100), dict(init_value=0.3), r"peak_value .* \(0.3\), got 0.1"),
]


@pytest.mark.parametrize("factory,args,kwargs,match", BAD_PIECEWISE)
def test_bad_piecewise_arguments_raise(factory, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(*args, **kwargs)
