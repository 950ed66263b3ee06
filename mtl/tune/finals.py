"""After the search: the winner, the runners-up and the baseline on the same test episodes, and
the winner's and the baseline's meta-training again with other seeds (``tune.final_seeds``).

Which trials (:func:`compared`): the winner (the race's leader, :mod:`mtl.tune.race`; without a
race the best validation accuracy), the next ``tune.compare_top`` in the sweep's order and the
baseline. One Ray task with a trial's resources tests them all (:func:`mtl.tune.tasks.compare_task`):
the test split is decoded once, every trial sees the same episodes. A baseline that ASHA stopped in
pretraining (a sweep that searches pretraining) left no meta-training to test: it is trained to its
end first (:func:`mtl.tune.tasks.finish_task`, the cost of one trial), so the verdict still compares
the winner with the base config on the same episodes. Each seed run is a Ray task of
its own (:func:`mtl.tune.tasks.seed_task`) on the trial's own pre-trained backbone, so seeds share
the pretraining. Every result is kept under ``<sweep>/final/`` as it arrives, so a resumed driver
uses what an earlier one finished and runs nothing twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mtl.results import ComparedTrial, Comparison, EpochPaired, FinalSeeds, Role, SeedRun, SeedRuns, TrialRow
from mtl.stats import paired, spread
from mtl.tune.tasks import Reseeded, Runner, Tested, cached, compare_task, finish_task, keep, seed_task

log = logging.getLogger(__name__)

FINAL_DIR = "final"


def compared(rows: list[TrialRow], baseline: str | None, top: int) -> list[tuple[TrialRow, list[Role]]]:
    """(row, roles) of the trials to test: the winner, the next ``top`` and the baseline, in that
    order; a role list holds ``winner``, ``runner_up`` and/or ``baseline``, the others in the sweep's
    order (:attr:`~mtl.results.TrialRow.place`: the race's, :func:`mtl.tune.race.ranked`). The baseline
    is there also when ASHA stopped it in pretraining (no checkpoint: :func:`run_finals` finishes it)."""
    ranked = sorted((t for t in rows if t.ranked), key=lambda t: t.place)
    out: list[tuple[TrialRow, list[Role]]] = [(t, ["winner" if i == 0 else "runner_up"])
                                              for i, t in enumerate(ranked[:1 + top])]
    for t, roles in out:
        if t.trial_id == baseline:
            roles.append("baseline")
    base = next((t for t in rows if t.trial_id == baseline and (t.ranked or t.stopped_in == "pretrain")), None)
    if base is not None and all(t is not base for t, _ in out):
        out.append((base, ["baseline"]))
    return out


def run_finals(spec: Any, rows: list[TrialRow], baseline: str | None, cache_root: str, exp: Path,
               run: Runner) -> dict[str, Any] | None:
    """The paired comparison and the seed runs; None when no trial left a checkpoint."""
    chosen = compared(rows, baseline, spec.tune.compare_top)
    if not chosen or "winner" not in chosen[0][1]:
        return None
    folder = exp / FINAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    win = chosen[0][0]
    tests = {t.trial_id: cached(folder / f"test-{t.trial_id}.json", Tested) for t, _ in chosen}
    missing = [(t.trial_id, t.checkpoint) for t, _ in chosen if tests[t.trial_id] is None and t.checkpoint]
    unfinished = [t for t, _ in chosen if tests[t.trial_id] is None and not t.checkpoint]
    if missing:
        (exp / "best").mkdir(parents=True, exist_ok=True)
        export = {win.trial_id: str(exp / "best" / "meta_state.pt")}

        def done(_: str, result: dict[str, Any]) -> None:
            for tid, r in result.items():
                tests[tid] = Tested.model_validate(r)
                keep(folder / f"test-{tid}.json", tests[tid])

        log.info("testing %d trial(s) on the same test episodes: %s", len(missing), ", ".join(t for t, _ in missing))
        run([("compare", compare_task, (missing, cache_root, export))], done)
    for t in unfinished:
        log.info("the baseline %s was stopped by ASHA in pretraining: training it to its end to test it "
                 "(the cost of one trial)", t.trial_id)
        config = spec.base.with_overrides(t.config).to_dict()
        run([("finish", finish_task, (config, cache_root))], lambda _, r, t=t: _finished(folder, tests, t, r))
    chosen = [(t, r) for t, r in chosen if tests[t.trial_id] is not None]
    seeds = _seed_runs(spec, [(t, r) for t, r in chosen if {"winner", "baseline"} & set(r) and t.checkpoint],
                       cache_root, folder, run)
    return {"chosen": chosen, "tests": tests, "seeds": seeds}


def _finished(folder: Path, tests: dict[str, Tested | None], t: TrialRow, result: dict[str, Any] | None) -> None:
    if result is None:
        log.warning("the baseline %s diverged when trained to its end: it is left out of the comparison", t.trial_id)
        return
    tests[t.trial_id] = Tested.model_validate(result)
    keep(folder / f"test-{t.trial_id}.json", tests[t.trial_id])


def search_seed(t: TrialRow, spec: Any) -> int:
    """The ``runtime.seed`` a trial ran with in the search (seed runs take the next ones)."""
    return int(t.config.get("runtime.seed", spec.base.runtime.seed))


def _seed_runs(spec: Any, chosen: list, cache_root: str, folder: Path, run: Runner) -> dict[str, list[Reseeded]]:
    """trial id -> its extra seed runs (``tune.final_seeds - 1`` of them), from the cache or run now."""
    n = spec.tune.final_seeds
    if n <= 1:
        return {}
    out: dict[str, list[Reseeded]] = {t.trial_id: [] for t, _ in chosen}
    calls = []
    for t, _ in chosen:
        first = search_seed(t, spec)
        for seed in range(first + 1, first + n):
            if (hit := cached(folder / f"seed-{t.trial_id}-{seed}.json", Reseeded)) is not None:
                out[t.trial_id].append(hit)
            else:
                calls.append((f"{t.trial_id}:{seed}", seed_task, (t.checkpoint, cache_root, seed)))

    def done(name: str, result: dict[str, Any]) -> None:
        tid = name.split(":")[0]
        r = Reseeded.model_validate(result)
        keep(folder / f"seed-{tid}-{r.seed}.json", r)
        out[tid].append(r)

    if calls:
        log.info("meta-training again with other seeds: %d run(s) (tune.final_seeds = %d)", len(calls), n)
        run(calls, done)
    return {tid: sorted(v, key=lambda r: r.seed) for tid, v in out.items()}


def comparison(finals: dict[str, Any], spec: Any) -> tuple[Comparison, FinalSeeds | None]:
    """The summary's ``comparison`` and ``final_seeds``: each compared trial's test accuracy with its
    95% CI, the winner minus each other one over the same test episodes (and per epoch on the
    validation bank), and each seeded config's mean and spread over seeds."""
    tests, chosen = finals["tests"], finals["chosen"]
    w = tests[chosen[0][0].trial_id]
    entries = []
    for i, (t, roles) in enumerate(chosen):
        r: Tested = tests[t.trial_id]
        same = r.episodes_key == w.episodes_key and len(w.accs) > 1
        entries.append(ComparedTrial(
            trial_id=t.trial_id, roles=roles, config=t.config, val_acc=r.val_acc if r.finished else t.best_val_acc,
            test_acc=r.acc, test_ci95=r.ci95, episodes=len(r.accs), shared_features=r.shared_features,
            stopped_early=t.stopped_early and not r.finished, finished=r.finished, epoch=t.epoch,
            planned_epochs=t.planned_epochs,
            vs_winner=paired(w.accs, r.accs) if i and same else None, val_vs_winner=_val_pairs(w, r) if i else []))
    seeds = None
    if finals["seeds"]:
        seeds = FinalSeeds(n=spec.tune.final_seeds, trials=[
            _seeds(t, roles, tests[t.trial_id], finals["seeds"][t.trial_id], search_seed(t, spec))
            for t, roles in chosen if t.trial_id in finals["seeds"]])
    return Comparison(episodes=len(w.accs), trials=entries), seeds


def _val_pairs(w: Tested, r: Tested) -> list[EpochPaired]:
    """Winner minus ``r`` on the validation bank at every epoch both were validated."""
    if w.val_key != r.val_key:
        return []
    other = {v["epoch"]: v["accs"] for v in r.val_accs}
    return [EpochPaired(epoch=v["epoch"], **paired(v["accs"], other[v["epoch"]]).model_dump())
            for v in w.val_accs if v["epoch"] in other and len(v["accs"]) > 1]


def _seeds(t: TrialRow, roles: list[Role], test: Tested, runs: list[Reseeded], seed: int) -> SeedRuns:
    """One config over its seeds: the search's own run first, then the re-runs."""
    first = SeedRun(seed=seed, val_acc=t.best_val_acc, test_acc=test.acc, test_ci95=test.ci95,
                    epochs=t.epoch)  # fewer than the re-runs' if ASHA stopped the trial
    rows = [first, *(SeedRun(seed=r.seed, val_acc=r.val_acc, test_acc=r.test_acc, test_ci95=r.test_ci95,
                             epochs=r.epochs) for r in runs)]
    return SeedRuns(trial_id=t.trial_id, roles=roles, runs=rows, val=spread([r.val_acc for r in rows]),
                    test=spread([r.test_acc for r in rows]),
                    # same config, another seed, same episodes: the noise floor of a single run
                    reseed_vs_search=paired(runs[0].accs, test.accs) if runs else None,
                    backbones=sorted({r.backbone_sha256 for r in runs} | {test.backbone_sha256}))
