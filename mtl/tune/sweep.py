"""The sweep driver: ``run_sweep(spec)`` is what ``launch/tune.py`` calls.

Preflight (:mod:`mtl.tune.preflight`) first, then Ray (:mod:`mtl.tune.cluster`), the MLflow
parent run, the shared pretraining, the Tuner, and once every trial has ended the winner's
test and summary.json, written once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from mtl.claim import SweepClaim
from mtl.compat import trial_statuses
from mtl.configs import save_config
from mtl.data.evalset import data_label, decode_splits
from mtl.errors import MTLError
from mtl.files import write_json_atomic, write_text_atomic
from mtl.results import Baseline, Best, MlflowLink, SweepSummary
from mtl.tune import SweepInterrupted
from mtl.tune.cluster import (
    concurrent_slots,
    connect,
    remote,
    restore_sigterm,
    setup_worker_logging,
    sigterm_as_ctrl_c,
    trial_resources,
    tune_verbosity,
)
from mtl.tune.finals import comparison, run_finals
from mtl.tune.outcome import result_row
from mtl.tune.preflight import SPEC_FILE, Launch, check_inputs, check_state, identity
from mtl.tune.race import ranked, run_race
from mtl.tune.spec import SweepSpec
from mtl.tune.summary import format_table, mark_baseline, ties, verdict
from mtl.tune.tasks import ray_runner

log = logging.getLogger(__name__)
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              ray_init: dict[str, Any] | None = None) -> SweepSummary:
    """Run (or resume) a sweep end to end; returns the summary also written to summary.json.

    The sweep's claim (:mod:`mtl.claim`) is held from the check of what the storage holds
    to the end, so two launches of one name never both run."""
    uri = check_inputs(spec)
    with SweepClaim(spec.storage, spec.name):
        launch = check_state(spec, uri, resume=resume)
        if launch.finished is not None:  # ran to its end already: changes nothing, not even its wall time
            log.info("sweep %s finished already (%s); nothing to run", spec.name, spec.experiment_dir / "summary.json")
            return launch.finished.model_copy(update={"reused": True})
        start = time.time()
        decode_splits(spec.base)  # a corrupt image of any split the sweep reads: found before Ray and training
        connect(address, **(ray_init or {}))
        sigterm = sigterm_as_ctrl_c()
        try:
            return _run(launch, start)
        finally:
            restore_sigterm(sigterm)


def _run(launch: Launch, start: float) -> SweepSummary:
    spec = launch.spec
    resources = trial_resources(spec)
    exp = spec.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    if not (exp / SPEC_FILE).exists():
        write_json_atomic(exp / SPEC_FILE, identity(spec, launch.tracking_uri))
    tracker = None
    from mtl.tune.callbacks import TrackerCallback, progress_callback  # ray.tune: only once Ray runs

    callbacks: list[Any] = [progress_callback(spec, resources, start)]  # epoch, trial-end and progress lines
    if launch.tracking_uri:
        from mtl.tracking.mlflow import SweepTracker
        from mtl.tracking.runlog import summary_metrics

        tracker = SweepTracker(launch.tracking_uri, launch.experiment, spec.name, metric=spec.tune.metric,
                               mode=spec.tune.mode, baseline=spec.tune.baseline)
        tracker.start(sweep_params(spec), tags={"spec": spec.source}, reattach=launch.reattach)
        callbacks.append(TrackerCallback(tracker, spec.base.meta.epochs, spec.base.pretrain.epochs))
    status = "FAILED"
    try:
        if not spec.searches_pretraining:
            import ray

            info = ray.get(remote(_pretrain_task, resources).remote(spec.base.to_dict(), str(launch.cache_root)))
            if "diverged" in info:
                raise MTLError(f"the shared pretraining of the base config diverged ({info['diverged']}); no trial "
                               "can start from it")
            log.info("shared pretraining entry %s (%s)", info["key"], info["status"])
        result_grid = build_tuner(launch, resources, callbacks).fit()
        # Ctrl+C / SIGUSR1 make Ray Tune save its state and return early: no winner to test yet
        finished = finished_trials(exp, result_grid)
        if finished < spec.tune.num_samples:
            status = "KILLED"
            raise SweepInterrupted(spec.name, finished, spec.tune.num_samples, exp)
        mlflow = None if tracker is None else MlflowLink(tracking_uri=launch.tracking_uri, experiment=launch.experiment,
                                                         parent_run_id=tracker.parent_run_id, ui_url=tracker.ui_url())
        summary = summarize(launch, result_grid, resources, time.time() - start, mlflow=mlflow)
        summary.save(exp / "summary.json")
        from mtl.report.figures import figures

        figs = figures(summary)
        _write_report(summary, exp, figs)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None and status != "FINISHED":
            tracker.finish({}, status=status)
    if summary.best is None:
        log.error("no trial produced a checkpoint; see the errors in %s/summary.json", exp)
    if tracker is not None:
        tracker.finish(summary_metrics(summary), artifacts=artifacts(exp), figures=figs,
                       best_trial=summary.best.trial_id if summary.best else None, description=format_table(summary),
                       ranks={t.trial_id: t.rank for t in summary.trials if t.rank is not None},
                       race={e.trial_id: e.val_acc for e in summary.race.trials} if summary.race else None)
    return summary


def finished_trials(exp: Path, result_grid: Any) -> int:
    """Trials that ended (completed, stopped by the scheduler, errored) by Ray Tune's last state
    snapshot. An interrupted Ray Tune writes that snapshot and only then marks its running trials
    TERMINATED on the way out, so the result grid cannot tell (nor can its ``done`` flags: Ray
    Tune drops them from the snapshot of trials that had finished before a resume)."""
    statuses = trial_statuses(exp)
    if statuses is None:
        log.warning("taking the sweep as finished")
        return len(result_grid)
    return sum(s in ("TERMINATED", "ERROR") for s in statuses.values())


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The sweep's parameters for its parent run (nested; the tracker flattens them)."""
    return {"base": spec.base.to_dict(), "space": {k: f"{d.kind}{list(d.args)}" for k, d in spec.space.items()},
            "tune": spec.settings.to_dict()}


def artifacts(exp: Path) -> dict[str, Path]:
    """What the sweep's parent run keeps: the summary, the report, the winner's files."""
    names = {"summary.json": exp / "summary.json", "report.html": exp / "report.html",
             "best/meta_state.pt": exp / "best" / "meta_state.pt",
             "best/config.yaml": exp / "best" / "config.yaml", "best/test_accs.csv": exp / "best" / "test_accs.csv"}
    return {k: p for k, p in names.items() if p.exists()}


def _write_report(summary: SweepSummary, exp: Any, figs: dict[str, Any]) -> None:
    """report.html beside summary.json; a failure here loses no result (``python -m mtl report``
    writes it again from summary.json)."""
    from mtl.report import write_report

    try:
        path = write_report(summary, exp, figs)
        log.info("report: %s", path)
    except Exception:  # the sweep's results are written already
        log.exception("could not write the sweep's report; `python -m mtl report %s` tries again", exp)


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(launch: Launch, resources: dict[str, float], callbacks: list[Any]):
    """A new Tuner for the spec, or the saved one restored (with its searcher and callbacks)."""
    from optuna.samplers import RandomSampler, TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from mtl.tune.callbacks import adopt_output
    from mtl.tune.trainable import train_mtl

    spec, t = launch.spec, launch.spec.tune
    trainable = tune.with_resources(
        tune.with_parameters(train_mtl, base=spec.base.to_dict(), cache_root=str(launch.cache_root),
                             span=spec.pretrain_span), resources)
    if launch.resume:
        tuner = tune.Tuner.restore(str(spec.experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        adopt_output(tuner, tune_verbosity())  # the restored RunConfig holds the first run's
        return tuner
    sampler = (TPESampler(seed=t.seed, n_startup_trials=t.n_startup_trials) if t.searcher == "optuna"
               else RandomSampler(seed=t.seed))
    point = spec.baseline_point()  # the base config, proposed first (Optuna's enqueued trial)
    searcher = OptunaSearch(sampler=sampler, points_to_evaluate=[point] if point else None)
    scheduler = (ASHAScheduler(time_attr=spec.time_attr, max_t=spec.max_t, grace_period=t.grace_period,
                               reduction_factor=t.reduction_factor) if t.scheduler == "asha" else FIFOScheduler())
    # With a searcher Ray Tune keeps one trial pending at a time, so trials would start one after
    # another; let it queue as many as the cluster holds now (an autoscaler may add more later).
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(t.max_concurrent or concurrent_slots(resources))
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, search_alg=searcher,
                                    scheduler=scheduler, num_samples=t.num_samples,
                                    max_concurrent_trials=t.max_concurrent,
                                    reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(spec.storage), callbacks=callbacks, verbose=tune_verbosity(),
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=t.checkpoints_to_keep)),
    )


def _pretrain_task(base: dict[str, Any], cache_root: str) -> dict[str, Any]:
    """Ray task: build (or find) the shared pretraining entry before any trial starts."""
    from dataclasses import replace

    from mtl.config import config_from_dict
    from mtl.phases.divergence import Divergence
    from mtl.pretraining import pretrained_backbone
    from mtl.runtime import make_env
    from mtl.trial import load_data

    setup_worker_logging("pretrain")
    cfg = config_from_dict(base)
    env = replace(make_env(cfg.runtime), progress=False)
    got = pretrained_backbone(cfg, env, load_data(cfg, env), cache_root, who="driver")
    if isinstance(got, Divergence):  # every trial would start from it
        return {"diverged": got.line()}
    return {"key": got.ref["key"], "status": got.ref["status"], "val_acc": got.ref["val_acc"]}


def summarize(launch: Launch, result_grid: Any, resources: dict[str, float], wall_s: float,
              mlflow: MlflowLink | None = None, run: Any = None) -> SweepSummary:
    """The sweep's summary: one row per trial (the baseline marked); the finalists raced on fresh
    validation episodes (:mod:`mtl.tune.race`), whose leader is the winner; the winner, the runners-up
    and the baseline tested on the same episodes, compared pairwise (:mod:`mtl.tune.finals`; ``run``
    runs the tasks, default as Ray tasks with ``resources``); the winner's state, config and
    per-episode accuracies exported to ``best/``."""
    spec = launch.spec
    exp = spec.experiment_dir
    point = spec.baseline_point()
    rows, baseline = mark_baseline([result_row(r, spec.base.meta.epochs, spec.base.pretrain.epochs)
                                    for r in result_grid], point)
    run = run or ray_runner(resources)
    raced = run_race(spec, rows, str(launch.cache_root), exp, run)
    rows = ranked(rows, raced)
    finals = run_finals(spec, rows, baseline, str(launch.cache_root), exp, run)
    best, comp, seeds = None, None, None
    if finals is not None:
        comp, seeds = comparison(finals, spec)
        win = finals["chosen"][0][0]
        res = finals["tests"][win.trial_id]
        cfg = spec.base.with_overrides(win.config)
        (exp / "best").mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp / "best" / "config.yaml")
        write_text_atomic(exp / "best" / "test_accs.csv", "episode,acc\n" + "".join(
            f"{i},{a:.6f}\n" for i, a in enumerate(res.accs)))
        lead = raced.trials[0] if raced else None
        best = Best(trial_id=win.trial_id, config=win.config, val_acc=win.best_val_acc, val_ci95=win.best_val_ci95,
                    race_acc=lead.val_acc if lead else None, race_ci95=lead.val_ci95 if lead else None,
                    ties=ties(win, [t for t in rows if t.ranked]), baseline=win.baseline, test_acc=res.acc,
                    test_ci95=res.ci95, test_episodes=len(res.accs), train_data=data_label(cfg.data),
                    test_data=res.test_data, checkpoint=str(exp / "best" / "meta_state.pt"),
                    config_file=str(exp / "best" / "config.yaml"), resolved_config=cfg.to_dict())
    summary = SweepSummary(
        name=spec.name, spec=spec.source, metric=spec.tune.metric,
        space={k: {d.kind: list(d.args)} for k, d in spec.space.items()},
        distributions=space_distributions(spec),
        resources=resources, baseline=Baseline(trial_id=baseline, config=point) if point else None,
        best=best, race=raced, comparison=comp, final_seeds=seeds, trials=rows, wall_s=wall_s, mlflow=mlflow)
    return summary.model_copy(update={"verdict": verdict(summary)})


def space_distributions(spec: SweepSpec) -> dict[str, str]:
    """The search space as the Optuna distributions the searcher draws from (Ray Tune's own
    conversion), in Optuna's JSON: what the report's figures need of the space."""
    from optuna.distributions import distribution_to_json
    from ray.tune.search.optuna import OptunaSearch

    return {k: distribution_to_json(d) for k, d in OptunaSearch.convert_search_space(spec.param_space()).items()}
