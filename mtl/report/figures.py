"""The figures of a finished sweep (report.html and the MLflow parent run hold the same ones).

Validation curves per trial, hyperparameter importance (Optuna's evaluator on the trials, every
one measured at the same budget), the searched parameters against the best validation accuracy
(parallel coordinates) and the winner minus each compared trial on the validation bank per epoch.
The sweep's search space comes as Optuna distributions (``SweepSummary.distributions``, written
by the driver from Ray Tune's own conversion), which give the importance its space and each axis
its range and scale.

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

from mtl.metrics import is_number
from mtl.results import ComparedTrial, SweepSummary, TrialRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

MIN_TRIALS_FOR_IMPORTANCE = 3
_MAX_LEGEND_ENTRIES = 12


def figures(s: SweepSummary) -> dict[str, Figure]:
    """File name -> figure, for every figure the sweep has the data to draw."""
    space = distributions(s)
    figs = {"validation_curves.png": plot_validation_curves(s.trials)}
    # every trial at the same budget: the largest epoch all of them reached (ASHA stops some early);
    # a diverged trial does not set it: it stays at its worst, 0, at any later epoch
    curves = [t for t in s.trials if t.history and t.outcome != "diverged"]
    budget = min((t.history[-1].epoch for t in curves), default=0)
    rows = [{**t.config, "val_acc": h.val_acc} for t in curves for h in t.history if h.epoch == budget]
    rows += [{**t.config, "val_acc": 0.0} for t in s.trials if t.outcome == "diverged"]
    drawn = {"param_importance.png": plot_param_importance(rows, space, "val_acc",
                                                           budget=f"epoch {budget} (the last epoch every trial reached)"),
             "parallel_coordinates.png": plot_parallel_coordinates(s.trials, space),
             "paired_val_differences.png": plot_paired_differences(s.comparison.trials[1:] if s.comparison else [])}
    return {**figs, **{k: f for k, f in drawn.items() if f is not None}}


def distributions(s: SweepSummary) -> dict[str, Any]:
    """The sweep's search space as Optuna distributions."""
    from optuna.distributions import json_to_distribution

    return {k: json_to_distribution(v) for k, v in s.distributions.items()}


def plot_validation_curves(trials: Sequence[TrialRow], metric: str = "val_acc") -> Figure:
    """One line per trial: ``metric`` against the epoch. A trial stopped early (by ASHA) is drawn
    dashed and ending in a cross, the baseline labelled so; the best final value is drawn bold."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    curves = {t.trial_id + (" (baseline)" if t.baseline else ""): ([(h.epoch, h.val_acc) for h in t.history],
                                                                   t.stopped_early)
              for t in trials if t.history}
    best = max(curves, key=lambda k: curves[k][0][-1][1], default=None)
    for name, (points, stopped) in curves.items():
        xs, ys = zip(*points)
        line, = ax.plot(xs, ys, linestyle="--" if stopped else "-", alpha=0.6 if stopped else 0.9,
                        linewidth=2.5 if name == best else 1.2, marker="o", markersize=3, label=name)
        if stopped:
            ax.plot(xs[-1], ys[-1], marker="x", color=line.get_color(), markersize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (dashed, x: stopped early)")
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= _MAX_LEGEND_ENTRIES:
        ax.legend(fontsize="small")
    return fig


def plot_param_importance(rows: Sequence[Mapping[str, Any]], space: Mapping[str, Any], metric: str,
                          mode: str = "max", budget: str = "") -> Figure | None:
    """Bar chart of Optuna's importance (its default evaluator) of the searched params for ``metric``.

    ``rows``: one dict per trial holding the param values and the metric, every trial measured at
    the same budget (``budget`` says which on the figure, e.g. "epoch 2"), or the importance
    measures how long trials ran. ``space``: param -> Optuna distribution. Params that never vary
    are left out. Returns None, and logs why, when fewer than MIN_TRIALS_FOR_IMPORTANCE trials
    have a finite metric or no searched param varies."""
    import optuna

    usable = [r for r in rows if is_number(r.get(metric)) and math.isfinite(r[metric]) and all(p in r for p in space)]
    varied = {p: d for p, d in space.items() if len({str(r[p]) for r in usable}) > 1}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # silence "A new study created"
    try:
        study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
        for r in usable:
            try:
                study.add_trial(optuna.trial.create_trial(params={p: r[p] for p in varied}, distributions=varied,
                                                          value=float(r[metric])))
            except ValueError as e:  # a value its distribution does not hold
                log.info("Parameter importance: a trial left out (%s)", e)
        if len(study.trials) < MIN_TRIALS_FOR_IMPORTANCE or not varied:
            log.info("No importance plot: %d trial(s) with a finite %s (need %d), %d searched param(s) varying",
                     len(study.trials), metric, MIN_TRIALS_FOR_IMPORTANCE, len(varied))
            return None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importances = optuna.importance.get_param_importances(study, params=list(varied))
    finally:
        optuna.logging.set_verbosity(verbosity)
    for w in caught:
        log.info("Parameter importance: %s", w.message)

    from matplotlib.figure import Figure

    names = sorted(importances, key=importances.get)
    fig = Figure(figsize=(6, 0.5 * len(names) + 1.5), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {metric} (normalised)")
    title = f"Hyperparameter importance from {len(study.trials)} trials" + (f" at {budget}" if budget else "")
    ax.set_title(textwrap.fill(title, 56), fontsize="medium")
    ax.set_xlim(0, max(1.0, *importances.values()))
    return fig


def _axis(dist: Any, values: Sequence[Any]):
    """(value -> [0, 1], ticks as (position, label)) for one axis of the parallel coordinates: a tick
    per choice of a categorical distribution, else its range on its scale (log for log ones)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution) or not all(is_number(v) for v in values):
        cats = [str(c) for c in dist.choices] if isinstance(dist, CategoricalDistribution) else sorted(
            {str(v) for v in values})
        pos = {c: i / max(1, len(cats) - 1) for i, c in enumerate(cats)}
        return (lambda v: pos.get(str(v), 0.5)), [(y, c[:16]) for c, y in pos.items()]
    lo, hi = (float(dist.low), float(dist.high)) if dist is not None else (float(min(values)), float(max(values)))
    f = math.log if dist is not None and dist.log and lo > 0 else float
    span = (f(hi) - f(lo)) or 1.0
    return (lambda v: (f(v) - f(lo)) / span), [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]


def plot_parallel_coordinates(trials: Sequence[TrialRow], space: Mapping[str, Any],
                              metric: str = "best_val_acc") -> Figure | None:
    """One line per trial through an axis per searched param and a last axis for ``metric``,
    coloured by ``metric``; the baseline drawn black and dashed. Returns None, and logs why, with
    fewer than two trials holding the metric."""
    params = list(space)
    rows = [t for t in trials if is_number(getattr(t, metric)) and math.isfinite(getattr(t, metric))
            and all(p in t.config for p in params)]
    if len(rows) < 2 or not params:
        log.info("No parallel-coordinates plot: %d trial(s) with %s", len(rows), metric)
        return None
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    values = [getattr(t, metric) for t in rows]
    axes = [_axis(space[p], [t.config[p] for t in rows]) for p in params] + [_axis(None, values)]
    norm, cmap = Normalize(min(values), max(values)), colormaps["viridis"]
    fig = Figure(figsize=(max(6.0, 1.8 * len(axes)), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for t in sorted(rows, key=lambda t: getattr(t, metric)):  # the best drawn last, on top
        v = getattr(t, metric)
        ys = [scale(x) for (scale, _), x in zip(axes, [*(t.config[p] for p in params), v])]
        ax.plot(range(len(axes)), ys, color="black" if t.baseline else cmap(norm(v)),
                linestyle="--" if t.baseline else "-", linewidth=2.2 if t.baseline else 1.4, alpha=0.9,
                label="baseline" if t.baseline else None)
    for i, (_, ticks) in enumerate(axes):
        ax.axvline(i, color="0.6", linewidth=0.8)
        for y, text in ticks:
            ax.annotate(text, (i, y), xytext=(4, 0), textcoords="offset points", fontsize="x-small", va="center")
    ax.set_xticks(range(len(axes)), [*params, metric], rotation=15, fontsize="small")
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(axes) - 0.6)
    ax.set_title(f"searched parameters against {metric} ({len(rows)} trials)")
    if any(t.baseline for t in rows):
        ax.legend(fontsize="small", loc="upper left")
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=metric)
    return fig


def plot_paired_differences(entries: Sequence[ComparedTrial]) -> Figure | None:
    """The winner minus each other trial on the validation bank, per epoch, in accuracy points,
    with its 95% interval as error bars. None if no entry holds a curve."""
    curves = [e for e in entries if e.val_vs_winner]
    if not curves:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.5, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, e in enumerate(curves):
        pts = e.val_vs_winner
        xs = [p.epoch + 0.06 * (i - (len(curves) - 1) / 2) for p in pts]  # side by side, not on top
        ys = [100 * p.diff for p in pts]
        err = [[y - 100 * p.ci_low for y, p in zip(ys, pts)], [100 * p.ci_high - y for y, p in zip(ys, pts)]]
        name = e.trial_id + (" (baseline)" if "baseline" in e.roles else "")
        ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=3, label=f"winner - {name}")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("paired difference (points)")
    ax.set_title("winner minus each trial on the validation bank (bars: 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the bars fill the plot
    return fig
