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


def ties(win: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Trials whose best validation interval overlaps the winner's: on these episodes the winner is
    not distinguishably better than them."""
    def interval(t: dict[str, Any]) -> tuple[float, float]:
        ci = t.get("best_val_ci95") or 0.0
        return t["best_val_acc"] - ci, t["best_val_acc"] + ci

    low, _ = interval(win)
    return [t["trial_id"] for t in rows if t is not win and t["best_val_acc"] is not None and interval(t)[1] >= low]


def format_table(summary: dict[str, Any], top: int = 8) -> str:
    b, trials = summary["best"], summary["trials"]
    count = {o: sum(t["outcome"] == o for t in trials) for o in OUTCOMES}
    lines = [(f"sweep {summary['name']}: {len(trials)} trials ({count['completed']} completed, "
              f"{count['stopped_early']} stopped early by ASHA, {count['diverged']} diverged, "
              f"{count['errored']} errored) in {summary['wall_s']:.0f} s")]
    tied = set(b.get("ties") or []) if b else set()
    if b:
        tie_note = (f"; within its 95% CI: {', '.join(sorted(tied))} (marked ~): the winner is not clearly better"
                    if tied else "; no other trial within its 95% CI")
        lines += [f"best trial {b['trial_id']}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in b["config"].items()),
                  f"  val acc  {_pct(b['val_acc'], b.get('val_ci95'))}{tie_note}",
                  (f"  test acc {100 * b['test_acc']:.2f}% ± {100 * b['test_ci95']:.2f} "
                   f"(95% CI, {b['test_episodes']} episodes"
                   + (f"; on {b['test_data']}, trained on {b['train_data']})" if b.get("test_data") else ")"))]
    keys = list(summary["space"])
    ranked = sorted(summary["trials"], key=lambda t: -(t["best_val_acc"] or -1))[:top]
    head = ["trial", *keys, "best_val", "epochs", "outcome"]
    rows = [[t["trial_id"] + (" ~" if t["trial_id"] in tied else ""), *(_fmt(t["config"].get(k)) for k in keys),
             _pct(t["best_val_acc"], t.get("best_val_ci95")) if t["best_val_acc"] is not None else "-",
             f"{t['epoch']}/{t['planned_epochs']}" if t.get("planned_epochs") else str(t["epoch"]),
             t["outcome"]] for t in ranked]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines.append("top trials:")
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _pct(acc: float, ci: float | None) -> str:
    return f"{100 * acc:.2f}%" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def next_steps(summary: dict[str, Any]) -> str:
    """Where the winner is and the commands that use it, for the end of the terminal output."""
    exp = Path(summary["best"]["checkpoint"]).parents[1] if summary.get("best") else None
    lines = [f"summary:            {exp / 'summary.json'}"] if exp else []
    if summary.get("best"):
        b = summary["best"]
        lines += [f"winner checkpoint:  {b['checkpoint']}",
                  f"winner config:      {b.get('config_file') or Path(b['checkpoint']).with_name('config.yaml')}",
                  f"test it again:      python -m mtl evaluate {b['checkpoint']} --set eval.episodes=2000"]
    uri = (summary.get("mlflow") or {}).get("tracking_uri")
    if uri:
        lines.append("compare the trials: " + (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite")
                                               else f"open {uri}"))
    return "\n".join(lines)


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
    # every trial at the same budget: the largest epoch all of them reached (ASHA stops some early)
    curves = [t for t in summary["trials"] if t["history"]]
    budget = min((t["history"][-1]["epoch"] for t in curves), default=0)
    rows = [{**t["config"], "val_acc": h["val_acc"]} for t in curves for h in t["history"] if h["epoch"] == budget]
    imp = plot_param_importance(rows, list(summary["space"]), "val_acc", space=summary["space"],
                                budget=f"epoch {budget} (the last epoch every trial reached)")
    if imp is not None:
        figs["param_importance.png"] = imp
    return figs
