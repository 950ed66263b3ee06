"""A finished sweep on paper: per-trial rows, the printed table, summary.json, MLflow extras.

Pure functions of Ray Tune's results and the spec; :mod:`mtl.tune.sweep` calls them. The rows
and outcomes themselves come from :mod:`mtl.tune.outcome`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from mtl.tune.outcome import OUTCOMES, result_row
from mtl.tune.spec import SweepSpec

log = logging.getLogger(__name__)


def trial_rows(result_grid: Any, default_epochs: int | None) -> list[dict[str, Any]]:
    """One row per trial (:func:`mtl.tune.outcome.trial_row`); ``default_epochs``: the base
    config's ``meta.epochs``, the planned length of trials that do not search it."""
    return [result_row(r, default_epochs) for r in result_grid]


def format_table(summary: dict[str, Any], top: int = 8) -> str:
    b, trials = summary["best"], summary["trials"]
    count = {o: sum(t["outcome"] == o for t in trials) for o in OUTCOMES}
    lines = [(f"sweep {summary['name']}: {len(trials)} trials ({count['completed']} completed, "
              f"{count['stopped_early']} stopped early by ASHA, {count['diverged']} diverged, "
              f"{count['errored']} errored) in {summary['wall_s']:.0f} s")]
    if b:
        lines += [f"best trial {b['trial_id']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in b["config"].items()),
                  f"  val acc  {100 * b['val_acc']:.2f}%",
                  (f"  test acc {100 * b['test_acc']:.2f}% ± {100 * b['test_ci95']:.2f} "
                   f"(95% CI, {b['test_episodes']} episodes)")]
    keys = list(summary["space"])
    ranked = sorted(summary["trials"], key=lambda t: -(t["best_val_acc"] or -1))[:top]
    head = ["trial", *keys, "best_val", "epochs", "outcome"]
    rows = [[t["trial_id"], *(_fmt(t["config"].get(k)) for k in keys),
             f"{100 * t['best_val_acc']:.2f}" if t["best_val_acc"] is not None else "-", str(t["epoch"]),
             t["outcome"]] for t in ranked]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines.append("top trials:")
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def finished_trials(exp: Path, result_grid: Any) -> int:
    """Trials that ended (completed, stopped by the scheduler, errored) by Ray Tune's last state
    snapshot. An interrupted Ray Tune writes that snapshot and only then marks its running trials
    TERMINATED on the way out, so the result grid cannot tell (nor can its ``done`` flags: Ray
    Tune drops them from the snapshot of trials that had finished before a resume)."""
    try:
        state = json.loads(max(exp.glob("experiment_state-*.json")).read_text())
        trials = [json.loads(t) if isinstance(t, str) else t for t, _ in state["trial_data"]]
        return sum(t["status"] in ("TERMINATED", "ERROR") for t in trials)
    except (OSError, ValueError, KeyError, TypeError) as e:  # no snapshot, or Ray changed its format
        log.warning("cannot read Ray Tune's state in %s (%s); taking the sweep as finished", exp, e)
        return len(result_grid)


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's parameters for its parent run (nested; the tracker flattens them)."""
    return {"base": spec.base.to_dict(), "space": {k: f"{d.kind}{list(d.args)}" for k, d in spec.space.items()},
            "tune": spec.settings.to_dict()}


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    b = summary["best"] or {}
    out = {k: b[k] for k in ("val_acc", "test_acc", "test_ci95") if b.get(k) is not None}
    out.update(trials=len(summary["trials"]), stopped_early=sum(t["stopped_early"] for t in summary["trials"]),
               diverged=sum(t["outcome"] == "diverged" for t in summary["trials"]),
               errored=sum(t["outcome"] == "errored" for t in summary["trials"]), wall_s=summary["wall_s"])
    return {("best_" + k if k in ("val_acc", "test_acc", "test_ci95") else k): float(v) for k, v in out.items()}


def artifacts(exp: Path) -> dict[str, Path]:
    names = {"summary.json": exp / "summary.json", "best/meta_state.pt": exp / "best" / "meta_state.pt",
             "best/config.yaml": exp / "best" / "config.yaml", "best/test_accs.csv": exp / "best" / "test_accs.csv"}
    return {k: p for k, p in names.items() if p.exists()}


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    from mtl.tracking import plot_param_importance, plot_validation_curves

    figs = {"validation_curves.png": plot_validation_curves(summary["trials"])}
    rows = [{**t["config"], summary["metric"]: t["best_val_acc"]} for t in summary["trials"]
            if t["best_val_acc"] is not None]
    imp = plot_param_importance(rows, list(summary["space"]), summary["metric"])
    if imp is not None:
        figs["param_importance.png"] = imp
    return figs
