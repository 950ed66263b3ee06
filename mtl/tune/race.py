"""The finalists raced on fresh episodes: who wins a sweep, and whether the winner stands apart.

The best validation accuracy of N trials is biased upwards (the winner's curse: the trial chosen is
the luckiest as often as the best), and a validation bank too small to rank trials ties the top
ones. So after the search the top ``tune.race_top`` trials by best validation accuracy (its
finalists) are re-validated, each at the state it selected, on ``tune.race_episodes`` fresh
validation episodes (none of them a task of the bank that selected them), all on the same episodes
(:func:`mtl.tune.tasks.race_task`). The race's leader is the winner; each other finalist gets the
leader's paired difference over it with a 95% interval, and the winner is *separated* from the
runner-up when that interval excludes zero, else *tied*. Only then is the test split touched
(:mod:`mtl.tune.finals`). Each finalist's result is kept as ``final/race-<trial>.json``, so a
resumed driver reruns no finished entry.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mtl.results import Race, RaceEntry, TrialRow, pct
from mtl.stats import in_words, paired
from mtl.tune.tasks import Evaluated, Runner, cached, keep, race_task

log = logging.getLogger(__name__)


def finalists(rows: list[TrialRow], top: int) -> list[TrialRow]:
    """The ``top`` trials that can win, by best validation accuracy (:attr:`TrialRow.order`)."""
    return sorted((t for t in rows if t.ranked), key=lambda t: t.order)[:top]


def run_race(spec: Any, rows: list[TrialRow], cache_root: str, exp: Path, run: Runner) -> Race | None:
    """The race of the sweep's finalists; None with ``tune.race_top: 0`` or no trial to race."""
    chosen = finalists(rows, spec.tune.race_top)
    if not chosen:
        return None
    n = spec.tune.race_episodes
    folder = exp / "final"
    folder.mkdir(parents=True, exist_ok=True)
    got = {t.trial_id: cached(folder / f"race-{t.trial_id}.json", Evaluated) for t in chosen}
    missing = [(t.trial_id, t.checkpoint) for t in chosen if got[t.trial_id] is None]
    if missing:
        def done(_: str, result: dict[str, Any]) -> None:
            for tid, r in result.items():
                got[tid] = Evaluated.model_validate(r)
                keep(folder / f"race-{tid}.json", got[tid])

        log.info("racing %d finalist(s) on %d fresh validation episodes: %s", len(missing), n,
                 ", ".join(t for t, _ in missing))
        run([("race", race_task, (missing, cache_root, n))], done)
    return race(chosen, got, n)


def race(chosen: list[TrialRow], got: dict[str, Evaluated], episodes: int) -> Race:
    """The race's table from each finalist's accuracies on its episodes: leader first."""
    order = sorted(chosen, key=lambda t: (-got[t.trial_id].acc, t.order))
    lead = got[order[0].trial_id]
    entries = []
    for i, t in enumerate(order):
        r = got[t.trial_id]
        same = i > 0 and r.episodes_key == lead.episodes_key and len(r.accs) > 1
        entries.append(RaceEntry(trial_id=t.trial_id, val_acc=r.acc, val_ci95=r.ci95,
                                 selection_val_acc=t.best_val_acc, vs_leader=paired(lead.accs, r.accs) if same else None))
    d = entries[1].vs_leader if len(entries) > 1 else None
    separated = None if d is None else d.significant
    if len(entries) == 1:
        says = f"one finalist ({entries[0].trial_id}): there is no runner-up to tell it apart from"
    elif d is None:
        says = f"the runner-up {entries[1].trial_id} was raced on other episodes: they cannot be paired"
    else:
        words = in_words(f"leader {entries[0].trial_id} vs runner-up {entries[1].trial_id}", d)
        says = (f"the winner is separated from the runner-up on validation ({words})" if d.significant and d.diff > 0
                else f"the winner is tied with the runner-up on validation ({words}): the search cannot tell them "
                     "apart")
    return Race(episodes=episodes, trials=entries, separated=separated, says=says)


def ranked(rows: list[TrialRow], result: Race | None) -> list[TrialRow]:
    """The rows in the sweep's order, each with its ``rank`` (1: the winner): the race's finalists in
    the race's order, then every other trial by best validation accuracy. The printed table, the
    report and MLflow's saved view all rank the trials so."""
    first = [e.trial_id for e in result.trials] if result else []
    by_id = {t.trial_id: t for t in rows}
    rest = sorted((t for t in rows if t.trial_id not in first), key=lambda t: t.order)
    return [t.model_copy(update={"rank": i}) for i, t in enumerate([*(by_id[x] for x in first), *rest], start=1)]


def race_lines(r: Race) -> list[str]:
    """The race as the printed table says it."""
    lines = [(f"race of the top {len(r.trials)} on {r.episodes} fresh validation episodes (95% CI; the leader "
             "minus each, paired t-test):")]
    width = max(len(e.trial_id) for e in r.trials)
    for i, e in enumerate(r.trials):
        leader = " leader: the winner" if i == 0 else ""
        lines.append(f"  {e.trial_id.ljust(width)}  val {pct(e.val_acc, e.val_ci95)} (in the search "
                     f"{pct(e.selection_val_acc)}){leader}")
    lines += ["  " + in_words(f"leader vs {e.trial_id}", e.vs_leader) for e in r.trials[1:] if e.vs_leader]
    lines.append(f"  {r.says}")
    return lines
