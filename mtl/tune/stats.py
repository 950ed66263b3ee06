"""Paired comparisons of two configurations on the same episodes, and what they say in words.

Few-shot accuracies of two configurations routinely differ by less than their own 95% intervals
(about +-0.8 points at 600 episodes); the per-episode differences on the *same* episodes have a
far smaller spread, since both configurations find the same episodes hard or easy. The paired
t-test here (mean difference, its 95% t-interval, two-sided p-value; what ``scipy.stats.ttest_rel``
computes) is how the sweep tells a real gain from a lucky trial.

Student's t distribution is computed here (regularised incomplete beta by Lentz's continued
fraction, Numerical Recipes 3rd ed. §6.4), so the driver needs no scipy; the tests check it
against scipy and against the closed form for 4 degrees of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ALPHA = 0.05  # 95% intervals; a difference is significant when its interval excludes zero


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile (0 < q < 1) of Student's t, by bisection on :func:`t_sf`."""
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1.0 - q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_sf(mid, df) > 1.0 - q else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(accs: Sequence[float]) -> dict[str, float]:
    """Mean accuracy and the half-width of its 95% interval, as every test accuracy in this
    project is reported (1.96 population std / sqrt(n), mtl.models.head.ci95)."""
    n = len(accs)
    mean = sum(accs) / n
    sd = math.sqrt(sum((a - mean) ** 2 for a in accs) / n)
    return {"acc": mean, "ci95": 1.96 * sd / math.sqrt(n), "episodes": n}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """``a`` minus ``b`` over the same episodes: mean difference, its 95% t-interval, the paired
    t-test's two-sided p-value, and whether the interval excludes zero. Differences that are all
    equal have no spread: the interval is that one value and p is 0 (1 if they are all zero)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"a paired comparison needs two equally long lists of at least 2 episodes, "
                         f"got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    if sd < 1e-12:
        low = high = mean
        p = 1.0 if abs(mean) < 1e-12 else 0.0
    else:
        se = sd / math.sqrt(n)
        half = t_ppf(1 - ALPHA / 2, n - 1) * se
        low, high = mean - half, mean + half
        p = min(1.0, 2.0 * t_sf(abs(mean) / se, n - 1))
    return {"diff": mean, "ci_low": low, "ci_high": high, "p": p, "episodes": n,
            "significant": low > 0 or high < 0}


def points(x: float) -> str:
    """An accuracy difference in percentage points with its sign: ``+1.9``."""
    return f"{100 * x:+.1f}"


def in_words(label: str, d: dict[str, Any]) -> str:
    """``winner vs baseline: +1.9 points (95% CI +1.2 to +2.6, p = 0.003)``, ending in ``: not
    significant`` when the interval covers zero."""
    p = f"p = {d['p']:.2g}" if d["p"] >= 0.001 else "p < 0.001"
    text = f"{label}: {points(d['diff'])} points (95% CI {points(d['ci_low'])} to {points(d['ci_high'])}, {p})"
    return text if d["significant"] else text + ": not significant"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of a few values (one per seed)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": n}
