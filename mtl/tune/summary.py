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
from mtl.tune.stats import in_words

log = logging.getLogger(__name__)


def trial_rows(result_grid: Any, default_epochs: int | None) -> list[dict[str, Any]]:
    """One row per trial (:func:`mtl.tune.outcome.trial_row`); ``default_epochs``: the base
    config's ``meta.epochs``, the planned length of trials that do not search it."""
    return [result_row(r, default_epochs) for r in result_grid]


def mark_baseline(rows: list[dict[str, Any]], point: dict[str, Any] | None) -> str | None:
    """Mark each row's ``baseline`` and return the baseline's trial id (None: no baseline, or it
    is not among the rows): the trial the searcher proposed first (sequence 1) holding the base
    values, or, for one that never reported (so no sequence is known), the first with them."""
    found = None
    if point is not None:
        same = [t for t in rows if all(t["config"].get(k) == v for k, v in point.items())]
        found = next((t for t in same if t.get("seq") == 1), None) or next(
            (t for t in same if t.get("seq") is None), None)
    for t in rows:
        t["baseline"] = t is found
    return found["trial_id"] if found else None


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in config.items())


def verdict(summary: dict[str, Any]) -> str:
    """Whether searching helped, in one plain sentence that always names the best config."""
    b = summary.get("best")
    trials = summary.get("trials") or []
    if not b:
        if trials and all(t["outcome"] == "diverged" for t in trials):
            return "every trial diverged: lower the searched learning rates (meta.inner_lr, meta.lr_ss, meta.lr_head)"
        return "no trial left a checkpoint: there is nothing to compare"
    best = f"the best config found is {_config_text(b['config'])}"
    base = summary.get("baseline")
    if base is None:
        return f"no baseline trial (tune.baseline: false), so whether searching helped is unknown; {best}"
    if any(t["trial_id"] == base["trial_id"] and t["outcome"] == "diverged" for t in trials):
        return f"the base config diverged (its loss became non-finite), so any config that trains beats it; {best}"
    if base["trial_id"] is None:
        return f"the baseline trial left no checkpoint, so whether searching helped is unknown; {best}"
    if b.get("baseline"):
        return (f"searching found nothing better than the base config: the baseline has the best validation "
                f"accuracy of all trials; {best} (the base config)")
    entry = next((t for t in summary["comparison"]["trials"] if "baseline" in t["roles"]), None)
    d = entry and entry.get("vs_winner")
    if not d:
        return f"the winner and the baseline were tested on different episodes, so they cannot be paired; {best}"
    words = in_words("winner vs baseline", d)
    if d["significant"] and d["diff"] > 0:
        return f"searching helped: {words}; {best}"
    if d["significant"]:
        return (f"the winner is worse than the baseline on the test episodes ({words}): its validation lead did "
                f"not hold, and the base config is the better choice; by validation, {best}")
    return (f"nothing was learnt by searching: no trial beats the baseline significantly on the test episodes "
            f"({words}); {best}")


def comparison_lines(summary: dict[str, Any]) -> list[str]:
    """The paired comparison and the seed runs, as the printed table says them."""
    comp = summary.get("comparison")
    if not comp:
        return []
    head = f"paired comparison on the same {comp['episodes']} test episodes (95% CI; winner minus each, paired t-test):"
    lines = [head]
    label = {t["trial_id"]: _label(t) for t in comp["trials"]}
    width = max(len(x) for x in label.values())
    lines += [f"  {label[t['trial_id']].ljust(width)}  test {_pct(t['test_acc'], t['test_ci95'])}" + (
              f" (stopped early by ASHA at epoch {t['epoch']}/{t['planned_epochs']})" if t.get("stopped_early") else "")
              for t in comp["trials"]]
    for t in comp["trials"][1:]:
        d = t.get("vs_winner")
        name = f"winner vs {label[t['trial_id']]}"
        lines.append("  " + (in_words(name, d) if d else f"{name}: other test episodes, not paired"))
    for s in (summary.get("final_seeds") or {}).get("trials", []):
        test = s["test"]
        lines.append(f"  {_label(s)} over {test['n']} seeds: test {100 * test['mean']:.2f}% (sd {100 * test['sd']:.2f},"
                     f" {100 * test['min']:.2f} to {100 * test['max']:.2f})")
        if s.get("reseed_vs_search"):
            lines.append("    " + in_words(f"same config, seed {s['runs'][1]['seed']} vs seed {s['runs'][0]['seed']}",
                                          s["reseed_vs_search"]))
    return lines


def _label(t: dict[str, Any]) -> str:
    """``3f2a_00001 (winner, baseline)``."""
    roles = [r.replace("_", "-") for r in t["roles"] if r != "runner_up"]
    return t["trial_id"] + (f" ({', '.join(roles)})" if roles else "")


def ties(win: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Trials whose best validation interval overlaps the winner's: on these episodes the winner is
    not distinguishably better than them."""
    def interval(t: dict[str, Any]) -> tuple[float, float]:
        ci = t.get("best_val_ci95") or 0.0
        return t["best_val_acc"] - ci, t["best_val_acc"] + ci

    low, _ = interval(win)
    return sorted(t["trial_id"] for t in rows
                  if t is not win and t["best_val_acc"] is not None and interval(t)[1] >= low)


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
    lines += comparison_lines(summary)
    if summary.get("verdict"):
        lines.append(f"verdict: {summary['verdict']}")
    keys = list(summary["space"])
    ranked = sorted(summary["trials"], key=lambda t: -(t["best_val_acc"] or -1))
    ranked = ranked[:top] + [t for t in ranked[top:] if t.get("baseline")]  # the baseline is always shown
    head = ["trial", *keys, "best_val", "epochs", "outcome"]
    rows = [[t["trial_id"] + (" ~" if t["trial_id"] in tied else "") + (" baseline" if t.get("baseline") else ""),
             *(_fmt(t["config"].get(k)) for k in keys),
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
    if exp and (exp / "report.html").exists():
        lines.append(f"report:             {exp / 'report.html'}  (trials, curves, paired comparison; opens offline)")
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
    out = {("best_" + k if k in ("val_acc", "test_acc", "test_ci95") else k): float(v) for k, v in out.items()}
    for t in (summary.get("comparison") or {}).get("trials", []):
        if "baseline" in t["roles"]:
            out.update(baseline_val_acc=t["val_acc"], baseline_test_acc=t["test_acc"])
            for k, v in (t.get("vs_winner") or {}).items():
                if k in ("diff", "ci_low", "ci_high", "p"):
                    out[f"winner_vs_baseline_{k}"] = float(v)
    for s in (summary.get("final_seeds") or {}).get("trials", []):
        role = "winner" if "winner" in s["roles"] else "baseline"
        out.update({f"{role}_seeds_test_mean": s["test"]["mean"], f"{role}_seeds_test_sd": s["test"]["sd"]})
    return out


def artifacts(exp: Path) -> dict[str, Path]:
    names = {"summary.json": exp / "summary.json", "report.html": exp / "report.html",
             "best/meta_state.pt": exp / "best" / "meta_state.pt",
             "best/config.yaml": exp / "best" / "config.yaml", "best/test_accs.csv": exp / "best" / "test_accs.csv"}
    return {k: p for k, p in names.items() if p.exists()}


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    from mtl.tracking import (
        plot_paired_differences,
        plot_parallel_coordinates,
        plot_param_importance,
        plot_validation_curves,
    )

    labelled = [{**t, "trial_id": t["trial_id"] + " (baseline)"} if t.get("baseline") else t for t in summary["trials"]]
    figs = {"validation_curves.png": plot_validation_curves(labelled)}
    # every trial at the same budget: the largest epoch all of them reached (ASHA stops some early);
    # a diverged trial does not set it: it stays at its worst, 0, at any later epoch
    curves = [t for t in summary["trials"] if t["history"] and t["outcome"] != "diverged"]
    budget = min((t["history"][-1]["epoch"] for t in curves), default=0)
    rows = [{**t["config"], "val_acc": h["val_acc"]} for t in curves for h in t["history"] if h["epoch"] == budget]
    rows += [{**t["config"], "val_acc": 0.0} for t in summary["trials"] if t["outcome"] == "diverged"]
    imp = plot_param_importance(rows, list(summary["space"]), "val_acc", space=summary["space"],
                                budget=f"epoch {budget} (the last epoch every trial reached)")
    if imp is not None:
        figs["param_importance.png"] = imp
    par = plot_parallel_coordinates(summary["trials"], list(summary["space"]), "best_val_acc", summary["space"])
    if par is not None:
        figs["parallel_coordinates.png"] = par
    diffs = plot_paired_differences((summary.get("comparison") or {}).get("trials", [])[1:])
    if diffs is not None:
        figs["paired_val_differences.png"] = diffs
    return figs
