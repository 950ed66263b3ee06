"""Paired comparisons of two configurations on the same episodes, and what they say in words.

Few-shot accuracies of two configurations routinely differ by less than their own 95% intervals
(about +-0.8 points at 600 episodes); the per-episode differences on the *same* episodes have a
far smaller spread, since both configurations find the same episodes hard or easy. The paired
t-test (scipy's ``ttest_rel``: the mean difference, its 95% t-interval, the two-sided p-value) is
how a sweep tells a real gain from a lucky trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict

ALPHA = 0.05  # 95% intervals; a difference is significant when its interval excludes zero


class Paired(BaseModel):
    """``a`` minus ``b`` over the same episodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    diff: float
    ci_low: float
    ci_high: float
    p: float
    episodes: int
    significant: bool


class Spread(BaseModel):
    """A few values (one per seed): mean, sample standard deviation, range."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mean: float
    sd: float
    min: float
    max: float
    n: int


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a`` minus ``b`` over the same episodes: mean difference, its 95% t-interval, the paired
    t-test's two-sided p-value, and whether the interval excludes zero. Differences that are all
    equal have no spread (scipy then has no interval): the interval is that one value and p is 0
    (1 if they are all zero)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired comparison needs two equally long lists of at least 2 episodes, "
                         f"got {len(a)} and {len(b)}")
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    mean = float(d.mean())
    if float(d.std(ddof=1)) < 1e-12:
        low = high = mean
        p = 1.0 if abs(mean) < 1e-12 else 0.0
    else:
        test = stats.ttest_rel(x, y)
        ci = test.confidence_interval(1 - ALPHA)
        low, high, p = float(ci.low), float(ci.high), float(test.pvalue)
    return Paired(diff=mean, ci_low=low, ci_high=high, p=p, episodes=len(d), significant=low > 0 or high < 0)


def spread(values: Sequence[float]) -> Spread:
    """Mean, sample standard deviation (0 for one value), min and max of a few values."""
    v = np.asarray(values, dtype=float)
    return Spread(mean=float(v.mean()), sd=float(v.std(ddof=1)) if len(v) > 1 else 0.0, min=float(v.min()),
                  max=float(v.max()), n=len(v))


def points(x: float) -> str:
    """An accuracy difference in percentage points with its sign: ``+1.9``."""
    return f"{100 * x:+.1f}"


def in_words(label: str, d: Paired) -> str:
    """``winner vs baseline: +1.9 points (95% CI +1.2 to +2.6, p = 0.003)``, ending in ``: not
    significant`` when the interval covers zero."""
    p = f"p = {d.p:.2g}" if d.p >= 0.001 else "p < 0.001"
    text = f"{label}: {points(d.diff)} points (95% CI {points(d.ci_low)} to {points(d.ci_high)}, {p})"
    return text if d.significant else text + ": not significant"
