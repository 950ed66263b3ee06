"""Figures for a finished sweep: validation curves per trial and hyperparameter importance.

Figures are built with ``matplotlib.figure.Figure`` directly (rendered by Agg on save), not
through pyplot, so nothing depends on or changes a global backend or figure registry.
"""

from __future__ import annotations

import logging
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 3
_MAX_LEGEND_ENTRIES = 12


def plot_validation_curves(trials: Sequence[Mapping[str, Any]], metric: str = "val_acc",
                           step_key: str = "epoch") -> Figure:
    """One line per trial: ``metric`` against ``step_key`` (training_iteration if absent).

    ``trials``: rows as :func:`mtl.tune.outcome.trial_row` makes them, each with ``trial_id``
    (the label), ``history`` (its results in order) and ``stopped_early``. A trial stopped
    early (by ASHA) is drawn dashed and ending in a cross. The best final value is drawn bold.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    curves = {}
    for trial in trials:
        points = [(row.get(step_key, row.get("training_iteration", i + 1)), row[metric])
                  for i, row in enumerate(trial.get("history") or ()) if _number(row.get(metric))]
        if points:
            curves[str(trial["trial_id"])] = (points, bool(trial.get("stopped_early")))
    best = max(curves, key=lambda k: curves[k][0][-1][1], default=None)
    for label, (points, stopped) in curves.items():
        xs, ys = zip(*points)
        line, = ax.plot(xs, ys, linestyle="--" if stopped else "-", alpha=0.6 if stopped else 0.9,
                        linewidth=2.5 if label == best else 1.2, marker="o", markersize=3, label=label)
        if stopped:
            ax.plot(xs[-1], ys[-1], marker="x", color=line.get_color(), markersize=8)
    ax.set_xlabel(step_key)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (dashed, x: stopped early)")
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= _MAX_LEGEND_ENTRIES:
        ax.legend(fontsize="small")
    return fig


def plot_param_importance(rows: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str,
                          mode: str = "max", space: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
                          budget: str = "") -> Figure | None:
    """Bar chart of Optuna's importance (PED-ANOVA by default) of ``params`` for ``metric``.

    ``rows``: one dict per trial holding the param values and the metric, every trial measured at
    the same budget (``budget`` says which on the figure, e.g. "epoch 2"), or the importance
    measures how long trials ran. ``space``: the sweep's distributions (``{key: {kind: args}}``);
    a param without one gets a distribution spanning its values. Params that never vary are left
    out. Returns None, and logs why, when fewer than MIN_TRIALS_FOR_IMPORTANCE trials have a
    finite metric or no searched param varies.
    """
    usable = [r for r in rows if _number(r.get(metric)) and math.isfinite(r[metric])
              and all(p in r for p in params)]
    if len(usable) < MIN_TRIALS_FOR_IMPORTANCE:
        logger.info("No importance plot: %d trial(s) with a finite %s, need %d",
                    len(usable), metric, MIN_TRIALS_FOR_IMPORTANCE)
        return None
    distributions = {p: d for p in params if (d := _distribution([r[p] for r in usable])) is not None}
    distributions = {p: _from_space(space[p]) if space and p in space else d for p, d in distributions.items()}
    if not distributions:
        logger.info("No importance plot: none of %s varies across trials", list(params))
        return None
    importances = _importances(usable, distributions, metric, mode)

    from matplotlib.figure import Figure

    names = sorted(importances, key=importances.get)
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {metric} (normalised)")
    title = f"Hyperparameter importance from {len(usable)} trials" + (f" at {budget}" if budget else "")
    ax.set_title(textwrap.fill(title, 56), fontsize="medium")
    ax.set_xlim(0, max(1.0, *importances.values()))
    return fig


def _importances(rows: Sequence[Mapping[str, Any]], distributions: dict, metric: str,
                 mode: str) -> dict[str, float]:
    """Optuna's evaluator on an in-memory study rebuilt from the rows."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # silence "A new study created"
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        for row in rows:
            study.add_trial(optuna.trial.create_trial(
                params={p: _value(row[p], d) for p, d in distributions.items()},
                distributions=distributions, value=float(row[metric])))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, params=list(distributions))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for w in caught:
        logger.info("Parameter importance: %s", w.message)
    return importances


def _distribution(values: list[Any]):
    """Optuna distribution spanning ``values``; None if they do not vary."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if len({_hashable(v) for v in values}) < 2:
        return None
    if all(_number(v) for v in values):
        lo, hi = min(values), max(values)
        if all(isinstance(v, int) for v in values):
            return IntDistribution(int(lo), int(hi))
        return FloatDistribution(float(lo), float(hi), log=lo > 0 and hi / lo >= 100)
    return CategoricalDistribution(sorted({_hashable(v) for v in values}, key=str))


def _from_space(dist: Mapping[str, Sequence[Any]]):
    """The Optuna distribution of a sweep-spec distribution ``{kind: args}`` (mtl.tune.spec)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    (kind, args), = dist.items()
    if kind == "choice":
        return CategoricalDistribution([_hashable(a) for a in args])
    log = kind.startswith(("log", "qlog"))
    if kind in ("int", "logint"):
        return IntDistribution(int(args[0]), int(args[1]), log=log)
    step = args[2] if len(args) == 3 and not log else None
    return FloatDistribution(float(args[0]), float(args[1]), log=log, step=step)


def _value(value: Any, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return _hashable(value)
    return value


def _hashable(value: Any) -> Any:
    """Optuna categorical choices must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def plot_parallel_coordinates(trials: Sequence[Mapping[str, Any]], params: Sequence[str], metric: str = "best_val_acc",
                              space: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> Figure | None:
    """One line per trial through an axis per searched param and a last axis for ``metric``,
    coloured by ``metric``; the baseline (``baseline`` in its row) drawn black and dashed.

    ``trials``: summary rows (``config``, ``metric``); ``space``: the sweep's distributions, which
    give each axis its range and scale (log for log distributions, one tick per choice). Returns
    None, and logs why, with fewer than two trials holding the metric."""
    rows = [t for t in trials if _number(t.get(metric)) and math.isfinite(t[metric])
            and all(p in (t.get("config") or {}) for p in params)]
    if len(rows) < 2 or not params:
        logger.info("No parallel-coordinates plot: %d trial(s) with %s", len(rows), metric)
        return None
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    axes = [_axis([t["config"][p] for t in rows], (space or {}).get(p)) for p in params]
    values = [t[metric] for t in rows]
    axes.append(_axis(values, None))
    norm, cmap = Normalize(min(values), max(values)), colormaps["viridis"]
    fig = Figure(figsize=(max(6.0, 1.8 * len(axes)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for t in sorted(rows, key=lambda t: t[metric]):  # the best drawn last, on top
        ys = [scale(v) for (scale, _), v in zip(axes, [*(t["config"][p] for p in params), t[metric]])]
        base = bool(t.get("baseline"))
        ax.plot(range(len(axes)), ys, color="black" if base else cmap(norm(t[metric])), linestyle="--" if base else "-",
                linewidth=2.2 if base else 1.4, alpha=0.9, label="baseline" if base else None)
    for i, (_, ticks) in enumerate(axes):
        ax.axvline(i, color="0.6", linewidth=0.8)
        for y, text in ticks:
            ax.annotate(text, (i, y), xytext=(4, 0), textcoords="offset points", fontsize="x-small", va="center")
    ax.set_xticks(range(len(axes)), [*params, metric], rotation=15, fontsize="small")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title(f"searched parameters against {metric} ({len(rows)} trials)")
    if any(t.get("baseline") for t in rows):
        ax.legend(fontsize="small", loc="upper left")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric)
    return fig


def _axis(values: Sequence[Any], dist: Mapping[str, Sequence[Any]] | None):
    """(value -> [0, 1], ticks as (position, label)) for one axis of the parallel coordinates."""
    kind, args = next(iter(dist.items())) if dist else (None, ())
    if kind == "choice" or not all(_number(v) for v in values):
        cats = [str(a) for a in args] if kind == "choice" else sorted({str(v) for v in values})
        pos = {c: i / max(1, len(cats) - 1) for i, c in enumerate(cats)}
        label = {str(a): f"{a:.4g}" if isinstance(a, float) else str(a)[:16] for a in (args or values)}
        return (lambda v: pos.get(str(v), 0.5)), [(y, label.get(c, c)) for c, y in pos.items()]
    lo, hi = (float(args[0]), float(args[1])) if args else (float(min(values)), float(max(values)))
    log = bool(kind and kind.startswith(("log", "qlog"))) and lo > 0
    f = math.log if log else float
    span = (f(hi) - f(lo)) or 1.0
    return (lambda v: (f(v) - f(lo)) / span), [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]


def plot_paired_differences(entries: Sequence[Mapping[str, Any]]) -> Figure | None:
    """The winner minus each other trial on the validation bank, per epoch, in accuracy points,
    with its 95% interval as error bars (:func:`mtl.tune.stats.paired`). ``entries``: the summary's
    compared trials, each with ``trial_id`` and ``val_vs_winner`` (epoch, diff, ci_low, ci_high).
    None if no entry holds a curve."""
    curves = [e for e in entries if e.get("val_vs_winner")]
    if not curves:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, e in enumerate(curves):
        pts = e["val_vs_winner"]
        xs = [p["epoch"] + 0.06 * (i - (len(curves) - 1) / 2) for p in pts]  # side by side, not on top
        ys = [100 * p["diff"] for p in pts]
        err = [[y - 100 * p["ci_low"] for y, p in zip(ys, pts)], [100 * p["ci_high"] - y for y, p in zip(ys, pts)]]
        label = str(e["trial_id"]) + (" (baseline)" if "baseline" in e.get("roles", ()) else "")
        ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=3, label=f"winner - {label}")
    from matplotlib.ticker import MaxNLocator

    ax.axhline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("paired difference (points)")
    ax.set_title("winner minus each trial on the validation bank (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bars fill the plot
    return fig
