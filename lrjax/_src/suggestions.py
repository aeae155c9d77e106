"""Smoothing, divergence and learning-rate suggestions of a range-test curve.

Plain numpy on the host, so every rule is easy to test on curves with known
answers; :mod:`lrjax._src.range_test` calls these between compiled chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHODS = ("steep", "valley", "minimum", "divergence", "balanced", "knee")
DEFAULT_METHOD = "knee"  # the lowest regret on fresh grids (README, finder quality)
KNEE_DESCENT = 0.75  # the knee: where the smoothed loss has made 75% of its descent
KNEE_TOWARD_DIVERGENCE = 0.25  # ... then a quarter of the way to divergence (log lr)


def smooth(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average, as fastai and Lightning use.

    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i`` (``avg_{-1} = 0``) and
    ``smoothed_i = avg_i / (1 - beta**(i + 1))`` along the last axis (leading axes,
    e.g. seeds, are smoothed independently). Once a loss is non-finite every later
    smoothed value is NaN.

    >>> smooth(np.array([1.0, 2.0, 3.0]), beta=0.5).round(4).tolist()
    [1.0, 1.6667, 2.4286]
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
    losses = np.asarray(losses, np.float64)
    out = np.empty_like(losses)
    avg = np.zeros(losses.shape[:-1])
    for i in range(losses.shape[-1]):  # vectorised over leading (seed) axes
        avg = beta * avg + (1.0 - beta) * losses[..., i]
        out[..., i] = avg / (1.0 - beta ** (i + 1))
    # NaN from the first non-finite loss on, per row.
    bad = np.logical_or.accumulate(~np.isfinite(losses), axis=-1)
    out[bad] = np.nan
    return out


def find_divergence(
    losses: np.ndarray,
    smoothed: np.ndarray,
    threshold: float = 4.0,
    rebound: float | None = 0.5,
) -> int | None:
    """The first step at which the sweep has diverged, or None.

    Three signals, whichever comes first:

    * a non-finite loss;
    * the smoothed loss above ``threshold`` x its best value so far (fastai's and
      Lightning's rule, pytorch-lr-finder uses 5);
    * a rebound: after the best point, the smoothed loss has climbed back by
      ``rebound`` of the descent from its start (``smoothed[0]``) to its best. A
      loss that blows up onto the ln(num_classes) plateau of dead ReLUs never
      reaches 4 x best when the best is above ~0.6; this catches it. Only counted
      when the descent was real (best below 95% of the start). ``rebound=None``
      turns the signal off.

    >>> s = np.array([2.0, 1.0, 0.5, 0.6, 1.4, 1.9])
    >>> find_divergence(s, s)  # climbed back above 0.5 + 0.5 * (2.0 - 0.5)
    4
    >>> find_divergence(s, s, rebound=None) is None
    True
    """
    losses = np.asarray(losses, np.float64)
    smoothed = np.asarray(smoothed, np.float64)
    n = len(losses)
    if n == 0:
        return None
    bad = ~(np.isfinite(losses) & np.isfinite(smoothed))
    first_bad = int(np.argmax(bad)) if bad.any() else n
    s = smoothed[:first_bad]
    best = np.minimum.accumulate(s) if len(s) else s
    hits = s > threshold * best
    if rebound is not None and len(s):
        start = s[0]
        real = best < 0.95 * start
        hits |= real & (s - best >= rebound * (start - best)) & (s > best)
    idx = int(np.argmax(hits)) if hits.any() else n
    idx = min(idx, first_bad)
    return idx if idx < n else None


def _valley_index(losses: np.ndarray) -> int:
    """fastai's valley: the longest strictly decreasing subsequence of the losses.

    ``lds[i]`` is the length of the longest decreasing subsequence ending at ``i``;
    with ``end`` its argmax (first) and ``start = end - lds[end]`` (fastai's own
    offset), the suggestion is ``start + L//3 + L//6`` with ``L = end - start``
    (about half way down, in index space), written as ``int(L/3) + int(L/6)``.
    """
    n = len(losses)
    lds = np.ones(n, np.int64)
    for i in range(1, n):
        higher = losses[:i] > losses[i]
        if higher.any():
            lds[i] = 1 + lds[:i][higher].max()
    end = int(np.argmax(lds))
    start = end - int(lds[end])
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


def suggest(
    lrs: np.ndarray,
    smoothed: np.ndarray,
    diverged_at: int | None,
    *,
    skip_start: float = 0.1,
    skip_end: int = 5,
    knee_descent: float = KNEE_DESCENT,
    knee_toward: float = KNEE_TOWARD_DIVERGENCE,
) -> dict[str, float | None]:
    """All suggestion methods on one curve.

    The curve is cut at the divergence step (inclusive) and at the first NaN;
    then the first ``skip_start`` fraction and the last ``skip_end`` points are
    dropped (fastai's conventions). Methods:

    * ``steep``: argmin of d(smoothed loss)/d(log lr).
    * ``valley``: fastai's longest-valley rule (:func:`_valley_index`).
    * ``minimum``: lr at the smoothed minimum / 10.
    * ``divergence``: half the lr where the loss diverged (the seed recipe's rule).
    * ``balanced``: the geometric mean of ``valley`` and ``divergence``: midway on
      the log axis between the start of the good region and the blow-up.
    * ``knee``: the first lr at which the smoothed loss has made
      ``knee_descent`` (75%) of its descent from the start of the curve to its
      minimum, moved ``knee_toward`` (a quarter) of the way on the log axis
      toward ``divergence``: ``knee75**0.75 * divergence**0.25``; without a
      divergence, the 75% point itself. The constants were fitted on the 2-epoch
      grids of ``benchmarks/finder_quality.py`` and checked on fresh grids (README).

    A method with nothing to go on (too short a curve, no divergence) gives None.

    A loss flat at 2 up to lr 1e-3, falling linearly in log lr to 0.5 at lr 0.1,
    then blowing up (10 lrs a decade):

    >>> lrs = np.geomspace(1e-4, 1.0, 41)
    >>> x = np.log10(lrs)
    >>> loss = np.clip(2.0 - 0.75 * (x + 3), 0.5, 2.0) + np.maximum(0.0, 5 * (x + 1))
    >>> diverged_at = find_divergence(loss, loss)  # back above 0.5 + 0.5 * 1.5
    >>> diverged_at, round(float(lrs[diverged_at]), 4)  # 10**-0.8
    (32, 0.1585)
    >>> s = suggest(lrs, loss, diverged_at)
    >>> # lrs[32] / 2, and lrs[27] / 10: the lowest loss before the skip_end points
    >>> round(s["divergence"], 4), round(s["minimum"], 5)
    (0.0792, 0.00501)
    >>> round(s["knee"], 4)  # 75% down at 10**-1.7: 10**(-1.7 * 0.75) * 0.0792**0.25
    0.0282
    >>> all(1e-3 < s[m] < 0.1 for m in ("steep", "valley", "knee"))  # where it falls
    True
    """
    lrs = np.asarray(lrs, np.float64)
    smoothed = np.asarray(smoothed, np.float64)
    end = len(lrs) if diverged_at is None else min(len(lrs), diverged_at + 1)
    finite = np.isfinite(smoothed[:end])
    if not finite.all():
        end = int(np.argmin(finite))
    lo = int(skip_start * end)
    hi = end - skip_end
    out: dict[str, float | None] = dict.fromkeys(METHODS)
    if diverged_at is not None:
        out["divergence"] = float(lrs[diverged_at] / 2)
    if hi - lo >= 3:
        x, y = np.log(lrs[lo:hi]), smoothed[lo:hi]
        out["steep"] = float(np.exp(x[int(np.argmin(np.gradient(y, x)))]))
        out["valley"] = float(lrs[lo + _valley_index(y)])
        out["minimum"] = float(lrs[lo + int(np.argmin(y))] / 10)
        out["knee"] = _knee(x, y, out["divergence"], knee_descent, knee_toward)
    if out["valley"] is not None and out["divergence"] is not None:
        out["balanced"] = float(math.sqrt(out["valley"] * out["divergence"]))
    return out


def _knee(log_lrs, y, divergence: float | None, descent: float, toward: float):
    """The ``knee`` suggestion on a cut curve (log lrs and smoothed losses)."""
    target = y.min() + (1.0 - descent) * (y[0] - y.min())
    knee = float(np.exp(log_lrs[int(np.argmax(y <= target))]))
    if divergence is None:
        return knee
    return float(knee ** (1.0 - toward) * divergence**toward)


def pick(suggestions: dict[str, float | None], method: str) -> float | None:
    """The suggestion of ``method``, falling back to valley, then minimum."""
    for m in (method, "valley", "minimum"):
        if suggestions.get(m) is not None:
            return suggestions[m]
    return None


def median(values: Sequence[float | None], at_least: int = 1) -> float | None:
    """Median over the non-None values; None if fewer than ``at_least`` exist.

    A geometric median would also do; lrs are compared on a log axis, and for an
    odd count the two agree. For an even count this takes the geometric mean of
    the middle pair.
    """
    v = sorted(x for x in values if x is not None)
    if len(v) < max(1, at_least):
        return None
    mid = len(v) // 2
    if len(v) % 2:
        return float(v[mid])
    return float(math.sqrt(v[mid - 1] * v[mid]))


class Smoother:
    """:func:`smooth` fed chunk by chunk: ``push(losses[S, n]) -> smoothed[S, n]``.

    The concatenation of the pushed outputs equals :func:`smooth` of the
    concatenated losses (the EMA is causal), at O(n) cost over a whole sweep.
    """

    def __init__(self, rows: int, beta: float = 0.98):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"smoothing beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.avg = np.zeros(rows)
        self.count = 0
        self.bad = np.zeros(rows, bool)

    def push(self, losses: np.ndarray) -> np.ndarray:
        losses = np.asarray(losses, np.float64)
        out = np.empty_like(losses)
        for i in range(losses.shape[-1]):
            self.count += 1
            self.avg = self.beta * self.avg + (1.0 - self.beta) * losses[:, i]
            out[:, i] = self.avg / (1.0 - self.beta**self.count)
            self.bad |= ~np.isfinite(losses[:, i])
            out[self.bad, i] = np.nan
        return out


class DivergenceTracker:
    """:func:`find_divergence` of one curve, fed chunk by chunk in O(n).

    ``push(losses, smoothed)`` returns the divergence step once found (the same
    index :func:`find_divergence` gives on the whole prefix), else None.
    """

    def __init__(self, threshold: float = 4.0, rebound: float | None = 0.5):
        self.threshold, self.rebound = threshold, rebound
        self.n = 0
        self.start: float | None = None  # the first smoothed loss
        self.best = np.inf
        self.found: int | None = None

    def push(self, losses: np.ndarray, smoothed: np.ndarray) -> int | None:
        if self.found is not None:
            return self.found
        for loss, s in zip(np.asarray(losses), np.asarray(smoothed), strict=True):
            i, self.n = self.n, self.n + 1
            if not (np.isfinite(loss) and np.isfinite(s)):
                self.found = i
                break
            if self.start is None:
                self.start = s
            self.best = min(self.best, s)
            hit = s > self.threshold * self.best
            if self.rebound is not None:
                real = self.best < 0.95 * self.start
                climb = s - self.best >= self.rebound * (self.start - self.best)
                hit = hit or (real and climb and s > self.best)
            if hit:
                self.found = i
                break
        return self.found


SWEEP_TOLERANCE = 0.01  # minima within 1% of the lowest count as equally low


def curve_minimum(smoothed: np.ndarray, diverged_at: int | None) -> float | None:
    """The lowest smoothed loss up to the divergence step (inclusive), or None.

    NaNs are ignored; None when nothing before the divergence is finite.

    >>> curve_minimum(np.array([2.0, 1.0, 0.5, 9.0, 0.1]), diverged_at=3)
    0.5
    """
    s = np.asarray(smoothed, np.float64)
    s = s if diverged_at is None else s[: diverged_at + 1]
    s = s[np.isfinite(s)]
    return float(s.min()) if s.size else None


def best_sweep_value(
    min_losses: Sequence[float | None],
    diverged_lrs: Sequence[float | None],
    suggested_lrs: Sequence[float | None],
    *,
    tolerance: float = SWEEP_TOLERANCE,
) -> int | None:
    """Which value of a second hyperparameter wins a sweep (Smith 2018, made exact).

    Smith's rule for weight decay and momentum: run the lr range test at each
    value; the value whose curve reaches the lowest loss and stays stable to the
    highest lr wins. Value ``i`` has the lowest smoothed loss ``min_losses[i]``
    (:func:`curve_minimum`), diverges at ``diverged_lrs[i]`` (None: stable to the
    end of the sweep, counted as +inf) and suggests ``suggested_lrs[i]``. Then:

    1. candidates are the values with a finite minimum and a suggested lr (if no
       value has a suggestion, every value with a finite minimum);
    2. with ``best`` the lowest candidate minimum, the values with a minimum
       ``<= best + tolerance * |best|`` are tied for the lowest loss;
    3. of those, the one that diverges at the highest lr wins;
    4. remaining ties go to the lower minimum, then to the value listed first.

    Returns the winner's index, or None when no value has a finite minimum.

    >>> best_sweep_value([0.50, 0.502, 0.60], [1.0, 2.0, 4.0], [0.1, 0.2, 0.4])
    1
    >>> best_sweep_value([0.50, 0.52, 0.40], [1.0, 2.0, None], [0.1, 0.2, None])
    0
    """
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    n = len(min_losses)
    if not len(diverged_lrs) == len(suggested_lrs) == n:
        raise ValueError("min_losses, diverged_lrs and suggested_lrs differ in length")
    finite = {  # index -> its finite minimum
        i: m for i, m in enumerate(min_losses) if m is not None and math.isfinite(m)
    }
    candidates = [i for i in finite if suggested_lrs[i] is not None] or list(finite)
    if not candidates:
        return None
    best = min(finite[i] for i in candidates)
    tied = [i for i in candidates if finite[i] <= best + tolerance * abs(best)]

    def stability(i: int) -> float:
        d = diverged_lrs[i]
        return math.inf if d is None else d

    return min(tied, key=lambda i: (-stability(i), finite[i], i))
