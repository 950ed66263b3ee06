"""The paired statistics that say whether one config beats another on the same episodes."""

from __future__ import annotations

import math

import pytest

from mtl.stats import in_words, paired, spread

# A fixed table of per-episode accuracies (5-way, 5 queries per class: steps of 0.04) of two configs
# on the same 8 episodes. By hand: differences d = a - b.
A = [0.60, 0.72, 0.48, 0.88, 0.64, 0.56, 0.80, 0.68]
B = [0.52, 0.72, 0.40, 0.80, 0.64, 0.48, 0.76, 0.56]


def test_paired_interval_and_p_value_match_a_hand_computation():
    d = [0.08, 0.0, 0.08, 0.08, 0.0, 0.08, 0.04, 0.12]
    n, mean = 8, 0.48 / 8  # 0.06
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))  # sqrt(0.0128 / 7)
    se = sd / math.sqrt(n)
    t = mean / se  # 3.9686
    t975 = 2.364624  # Student's t, 7 degrees of freedom, 0.975 quantile (any t table)
    # two-sided p for 7 df: the t CDF has a closed form for odd df (Abramowitz & Stegun 26.7.3)
    th = math.atan(t / math.sqrt(7))
    c = math.cos(th)
    cdf_mass = (2 / math.pi) * (th + math.sin(th) * (c + (2 / 3) * c ** 3 + (8 / 15) * c ** 5))
    p_hand = 1 - cdf_mass

    r = paired(A, B)
    assert r.episodes == 8
    assert r.diff == pytest.approx(mean, abs=1e-12)
    assert r.ci_low == pytest.approx(mean - t975 * se, abs=1e-6)
    assert r.ci_high == pytest.approx(mean + t975 * se, abs=1e-6)
    assert r.p == pytest.approx(p_hand, rel=1e-6) and 0.005 < r.p < 0.006
    assert r.significant is True
    assert in_words("winner vs baseline", r) == "winner vs baseline: +6.0 points (95% CI +2.4 to +9.6, p = 0.0054)"
    flipped = paired(B, A)
    assert flipped.diff == pytest.approx(-mean) and flipped.ci_high == pytest.approx(-r.ci_low)


def test_two_episodes_take_the_one_degree_of_freedom_closed_form():
    """With two episodes the t distribution is Cauchy: its 0.975 quantile is tan(0.475 pi) and a
    t of 1 has the two-sided p 1 - 2 atan(1) / pi = 0.5."""
    r = paired([0.5, 0.6], [0.5, 0.5])  # d = [0, 0.1]: mean 0.05, se 0.05, t = 1
    half = math.tan(0.475 * math.pi) * 0.05
    assert (r.ci_low, r.ci_high) == (pytest.approx(0.05 - half), pytest.approx(0.05 + half))
    assert r.p == pytest.approx(0.5) and not r.significant


def test_identical_configs_give_an_interval_that_covers_zero():
    same = paired(A, list(A))
    assert same.diff == 0 and same.ci_low <= 0 <= same.ci_high and same.p == 1.0
    assert not same.significant
    assert in_words("winner vs t2", same).endswith(": not significant")
    # one episode apart in a hundred: a tiny, insignificant difference
    b = [*A * 12, 0.6, 0.6, 0.6, 0.6]
    a = [*A * 12, 0.6, 0.6, 0.6, 0.64]
    d = paired(a, b)
    assert d.ci_low < 0 < d.ci_high and d.p > 0.05 and not d.significant
    constant = paired([x + 0.04 for x in A], A)  # every episode exactly 4 points better: no spread
    assert constant.ci_low == constant.ci_high == pytest.approx(0.04) and constant.p == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired(A, B[:-1])


def test_spread_over_seeds():
    s = spread([0.5, 0.52, 0.54])
    assert s.mean == pytest.approx(0.52) and s.sd == pytest.approx(0.02) and (s.min, s.max) == (0.5, 0.54)
    assert spread([0.5]).sd == 0.0
