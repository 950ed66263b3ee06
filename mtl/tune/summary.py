"""A finished sweep on paper: the baseline's row, the ties with the winner, the verdict, the printed
table and the commands that come next. Pure functions of :mod:`mtl.results` types."""

from __future__ import annotations

from typing import Any

from mtl.results import Best, SweepSummary, TrialRow, fmt, pct
from mtl.stats import in_words
from mtl.tune.race import race_lines


def mark_baseline(rows: list[TrialRow], point: dict[str, Any] | None) -> tuple[list[TrialRow], str | None]:
    """The rows with the baseline marked, and its trial id (None: no baseline, or it is not among the
    rows): the trial the searcher proposed first (sequence 1) holding the base values, or, for one
    that never reported (so no sequence is known), the first with them."""
    found = None
    if point is not None:
        same = [t for t in rows if all(t.config.get(k) == v for k, v in point.items())]
        found = next((t for t in same if t.seq == 1), None) or next((t for t in same if t.seq is None), None)
    marked = [t.model_copy(update={"baseline": t is found}) for t in rows]
    return marked, found.trial_id if found else None


def ties(win: TrialRow, rows: list[TrialRow]) -> list[str]:
    """Trials whose best validation interval overlaps the winner's: on these episodes the winner is
    not distinguishably better than them."""
    def interval(t: TrialRow) -> tuple[float, float]:
        ci = t.best_val_ci95 or 0.0
        return t.best_val_acc - ci, t.best_val_acc + ci

    low, _ = interval(win)
    return sorted(t.trial_id for t in rows
                  if t.trial_id != win.trial_id and t.best_val_acc is not None and interval(t)[1] >= low)


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={fmt(v)}" for k, v in config.items())


def verdict(s: SweepSummary) -> str:
    """Whether searching helped, in one plain sentence that always names the best config."""
    b, trials = s.best, s.trials
    if b is None:
        if trials and all(t.outcome == "diverged" for t in trials):
            return "every trial diverged: lower the searched learning rates (meta.inner_lr, meta.lr_ss, meta.lr_head)"
        return "no trial left a checkpoint: there is nothing to compare"
    best = f"the best config found is {_config_text(b.config)}"
    base = s.baseline
    if base is None:
        return f"no baseline trial (tune.baseline: false), so whether searching helped is unknown; {best}"
    if any(t.trial_id == base.trial_id and t.outcome == "diverged" for t in trials):
        return f"the base config diverged (its loss became non-finite), so any config that trains beats it; {best}"
    if base.trial_id is None:
        return f"the baseline trial left no checkpoint, so whether searching helped is unknown; {best}"
    if b.baseline:
        return (f"searching found nothing better than the base config: the baseline has the best validation "
                f"accuracy of all trials; {best} (the base config)")
    entry = s.comparison.entry("baseline") if s.comparison else None
    d = entry.vs_winner if entry else None
    if d is None:
        return f"the winner and the baseline were tested on different episodes, so they cannot be paired; {best}"
    words = in_words("winner vs baseline", d)
    if d.significant and d.diff > 0:
        return f"searching helped: {words}; {best}"
    if d.significant:
        return (f"the winner is worse than the baseline on the test episodes ({words}): its validation lead did "
                f"not hold, and the base config is the better choice; by validation, {best}")
    return (f"nothing was learnt by searching: no trial beats the baseline significantly on the test episodes "
            f"({words}); {best}")


def label(trial_id: str, roles: list[str]) -> str:
    """``3f2a_00001 (winner, baseline)``."""
    shown = [r.replace("_", "-") for r in roles if r != "runner_up"]
    return trial_id + (f" ({', '.join(shown)})" if shown else "")


def comparison_lines(s: SweepSummary) -> list[str]:
    """The paired comparison and the seed runs, as the printed table says them."""
    comp = s.comparison
    if comp is None:
        return []
    lines = [f"paired comparison on the same {comp.episodes} test episodes (95% CI; winner minus each, paired t-test):"]
    names = {t.trial_id: label(t.trial_id, t.roles) for t in comp.trials}
    width = max(len(x) for x in names.values())
    lines += [f"  {names[t.trial_id].ljust(width)}  test {pct(t.test_acc, t.test_ci95)}" + (
              f" (stopped early by ASHA at epoch {t.epoch}/{t.planned_epochs})" if t.stopped_early else
              " (stopped by ASHA in pretraining; trained to its end after the search)" if t.finished else "")
              for t in comp.trials]
    for t in comp.trials[1:]:
        name = f"winner vs {names[t.trial_id]}"
        lines.append("  " + (in_words(name, t.vs_winner) if t.vs_winner else f"{name}: other test episodes, not paired"))
    for r in s.final_seeds.trials if s.final_seeds else []:
        test = r.test
        lines.append(f"  {label(r.trial_id, r.roles)} over {test.n} seeds: test {100 * test.mean:.2f}% "
                     f"(sd {100 * test.sd:.2f}, {100 * test.min:.2f} to {100 * test.max:.2f})")
        if r.reseed_vs_search:
            lines.append("    " + in_words(f"same config, seed {r.runs[1].seed} vs seed {r.runs[0].seed}",
                                          r.reseed_vs_search))
    return lines


def _best_lines(b: Best) -> list[str]:
    tie_note = (f"; within its 95% CI: {', '.join(b.ties)} (marked ~): the winner is not clearly better"
                if b.ties else "; no other trial within its 95% CI")
    race = f"\n  race acc {pct(b.race_acc, b.race_ci95)} (fresh validation episodes)" if b.race_acc is not None else ""
    return [f"best trial {b.trial_id}: " + _config_text(b.config),
            f"  val acc  {pct(b.val_acc, b.val_ci95)}{tie_note}{race}",
            (f"  test acc {pct(b.test_acc, b.test_ci95)} (95% CI, {b.test_episodes} episodes; on {b.test_data}, "
             f"trained on {b.train_data})")]


def format_table(s: SweepSummary, top: int = 8) -> str:
    """The end of a sweep as the terminal prints it (and MLflow's parent run describes it)."""
    lines = [(f"sweep {s.name}: {len(s.trials)} trials ({s.count('completed')} completed, "
              f"{s.count('stopped_early')} stopped early by ASHA, {s.count('diverged')} diverged, "
              f"{s.count('errored')} errored) in {s.wall_s:.0f} s")]
    tied = set(s.best.ties) if s.best else set()
    if s.best:
        lines += _best_lines(s.best)
    lines += race_lines(s.race) if s.race else []
    lines += comparison_lines(s)
    if s.verdict:
        lines.append(f"verdict: {s.verdict}")
    keys = list(s.space)
    ranked = s.ranked()
    ranked = ranked[:top] + [t for t in ranked[top:] if t.baseline]  # the baseline is always shown
    head = ["trial", *keys, "best_val", "epochs", "outcome"]
    rows = [[t.trial_id + (" ~" if t.trial_id in tied else "") + (" baseline" if t.baseline else ""),
             *(fmt(t.config.get(k)) for k in keys), pct(t.best_val_acc, t.best_val_ci95), t.reached, t.outcome]
            for t in ranked]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines.append("top trials:")
    lines += ["  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [head, *rows]]
    return "\n".join(lines)


def next_steps(s: SweepSummary) -> str:
    """Where the winner is and the commands that use it, for the end of the terminal output."""
    lines = []
    if s.best:
        b, exp = s.best, s.best.folder
        lines.append(f"summary:            {exp / 'summary.json'}")
        if (exp / "report.html").exists():
            lines.append(f"report:             {exp / 'report.html'}  (trials, curves, paired comparison; opens offline)")
        lines += [f"winner checkpoint:  {b.checkpoint}", f"winner config:      {b.config_file}",
                  f"test it again:      python -m mtl evaluate {b.checkpoint} --set eval.episodes=2000"]
    uri = s.mlflow.tracking_uri if s.mlflow else None
    if uri:
        lines.append("compare the trials: " + (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite")
                                               else f"open {uri}"))
    return "\n".join(lines)
