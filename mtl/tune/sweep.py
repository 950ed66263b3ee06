"""The sweep driver: ``run_sweep(spec)`` is what ``launch/tune.py`` calls.

Preflight (:mod:`mtl.tune.preflight`) first, then Ray (:mod:`mtl.tune.cluster`), the MLflow
parent run, the shared pretraining, the Tuner, and once every trial has ended the winner's
test and summary.json, written once.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from mtl.config import affects_pretraining
from mtl.configs import save_config
from mtl.data.evalset import decode_splits
from mtl.files import write_json_atomic, write_text_atomic
from mtl.tune import SweepInterrupted
from mtl.tune.claim import SweepClaim
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
from mtl.tune.finals import comparison, ray_runner, run_finals
from mtl.tune.preflight import SPEC_FILE, Launch, check_inputs, check_state, identity
from mtl.tune.spec import SweepSpec
from mtl.tune.summary import (
    artifacts,
    figures,
    finished_trials,
    format_table,
    mark_baseline,
    summary_metrics,
    sweep_params,
    ties,
    trial_rows,
    verdict,
)

log = logging.getLogger(__name__)
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              ray_init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep end to end; returns the summary also written to summary.json.

    The sweep's claim (:mod:`mtl.tune.claim`) is held from the check of what the storage holds
    to the end, so two launches of one name never both run."""
    uri = check_inputs(spec)
    with SweepClaim(spec.storage, spec.name):
        launch = check_state(spec, uri, resume=resume)
        if launch.finished is not None:  # ran to its end already: changes nothing, not even its wall time
            log.info("sweep %s finished already (%s); nothing to run", spec.name, spec.experiment_dir / "summary.json")
            return {**launch.finished, "reused": True}
        start = time.time()
        decode_splits(spec.base)  # a corrupt image of any split the sweep reads: found before Ray and training
        connect(address, **(ray_init or {}))
        sigterm = sigterm_as_ctrl_c()
        try:
            return _run(launch, start)
        finally:
            restore_sigterm(sigterm)


def _run(launch: Launch, start: float) -> dict[str, Any]:
    spec = launch.spec
    resources = trial_resources(spec)
    exp = spec.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    if not (exp / SPEC_FILE).exists():
        write_json_atomic(exp / SPEC_FILE, identity(spec, launch.tracking_uri))
    tracker = None
    from mtl.tune.progress import progress_callback  # ray.tune: only once Ray runs

    callbacks: list[Any] = [progress_callback(spec, resources, start)]  # epoch, trial-end and progress lines
    if launch.tracking_uri:
        from mtl.tracking.mlflow import SweepTracker

        tracker = SweepTracker(launch.tracking_uri, launch.experiment, spec.name,
                               planned_epochs=spec.base.meta.epochs, metric=spec.tune.metric, mode=spec.tune.mode,
                               baseline=spec.tune.baseline)
        tracker.start(sweep_params(spec), tags={"spec": spec.source}, reattach=launch.reattach)
        callbacks.append(tracker.callback())
    status = "FAILED"
    try:
        if not any(affects_pretraining(k) for k in spec.space):
            import ray

            info = ray.get(remote(_pretrain_task, resources).remote(spec.base.to_dict(), str(launch.cache_root)))
            log.info("shared pretraining entry %s (%s)", info["key"], info["status"])
        result_grid = build_tuner(launch, resources, callbacks).fit()
        # Ctrl+C / SIGUSR1 make Ray Tune save its state and return early: no winner to test yet
        finished = finished_trials(exp, result_grid)
        if finished < spec.tune.num_samples:
            status = "KILLED"
            raise SweepInterrupted(spec.name, finished, spec.tune.num_samples, exp)
        mlflow = None if tracker is None else {"tracking_uri": launch.tracking_uri, "experiment": launch.experiment,
                                               "parent_run_id": tracker.parent_run_id, "ui_url": tracker.ui_url()}
        summary = summarize(launch, result_grid, resources, time.time() - start, mlflow=mlflow)
        write_json_atomic(exp / "summary.json", summary)
        figs = figures(summary)
        _write_report(summary, exp, figs)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None and status != "FINISHED":
            tracker.finish({}, status=status)
    if summary["best"] is None:
        log.error("no trial produced a checkpoint; see the errors in %s/summary.json", exp)
    if tracker is not None:
        tracker.finish(summary_metrics(summary), artifacts=artifacts(exp), figures=figs,
                       best_trial=summary["best"]["trial_id"] if summary["best"] else None,
                       description=format_table(summary))
    return summary


def _write_report(summary: dict[str, Any], exp: Any, figs: dict[str, Any]) -> None:
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

    from mtl.tune.progress import adopt_output
    from mtl.tune.trainable import train_mtl

    spec, t = launch.spec, launch.spec.tune
    trainable = tune.with_resources(
        tune.with_parameters(train_mtl, base=spec.base.to_dict(), cache_root=str(launch.cache_root)), resources)
    if launch.resume:
        tuner = tune.Tuner.restore(str(spec.experiment_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        adopt_output(tuner, callbacks, tune_verbosity())  # the restored RunConfig holds the first run's
        return tuner
    sampler = (TPESampler(seed=t.seed, n_startup_trials=t.n_startup_trials) if t.searcher == "optuna"
               else RandomSampler(seed=t.seed))
    point = spec.baseline_point()  # the base config, proposed first (Optuna's enqueued trial)
    searcher = OptunaSearch(sampler=sampler, points_to_evaluate=[point] if point else None)
    scheduler = (ASHAScheduler(time_attr=t.time_attr, max_t=spec.max_t, grace_period=t.grace_period,
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
    from mtl.runtime import make_env
    from mtl.trial import load_data, pretrained_backbone

    setup_worker_logging("pretrain")
    cfg = config_from_dict(base)
    env = replace(make_env(cfg.runtime), progress=False)
    ref = pretrained_backbone(cfg, env, load_data(cfg, env), cache_root, who="driver").ref
    return {"key": ref["key"], "status": ref["status"], "val_acc": ref["val_acc"]}


def summarize(launch: Launch, result_grid: Any, resources: dict[str, float], wall_s: float,
              mlflow: dict[str, Any] | None = None, run: Any = None) -> dict[str, Any]:
    """The sweep's summary: one row per trial (the baseline marked); the winner (best validation
    accuracy), the runners-up and the baseline tested on the same episodes, compared pairwise
    (:mod:`mtl.tune.finals`; ``run`` runs its tasks, default as Ray tasks with ``resources``); the
    winner's state, config and per-episode accuracies exported to ``best/``."""
    from mtl.data.evalset import describe

    spec = launch.spec
    exp = spec.experiment_dir
    rows = trial_rows(result_grid, spec.base.meta.epochs)
    point = spec.baseline_point()
    baseline = mark_baseline(rows, point)
    finals = run_finals(spec, rows, baseline, str(launch.cache_root), exp, run or ray_runner(resources))
    best, extra = None, {}
    if finals is not None:
        extra = comparison(finals, spec)
        win = finals["chosen"][0][0]
        res = finals["tests"][win["trial_id"]]
        cfg = spec.base.with_overrides(win["config"])
        (exp / "best").mkdir(parents=True, exist_ok=True)
        save_config(cfg, exp / "best" / "config.yaml")
        write_text_atomic(exp / "best" / "test_accs.csv", "episode,acc\n" + "".join(
            f"{i},{a:.6f}\n" for i, a in enumerate(res["accs"])))
        candidates = [t for t in rows if t["checkpoint"] and t["best_val_acc"] is not None]
        best = {"trial_id": win["trial_id"], "config": win["config"], "val_acc": win["best_val_acc"],
                "val_ci95": win["best_val_ci95"], "ties": ties(win, candidates), "baseline": win["baseline"],
                "test_acc": res["acc"], "test_ci95": res["ci95"], "test_episodes": len(res["accs"]),
                "train_data": describe(cfg.data), "test_data": res["test_data"],
                "checkpoint": str(exp / "best" / "meta_state.pt"), "config_file": str(exp / "best" / "config.yaml"),
                "resolved_config": cfg.to_dict()}
    summary = {"name": spec.name, "spec": spec.source, "metric": spec.tune.metric,
               "space": {k: {d.kind: list(d.args)} for k, d in spec.space.items()},
               "resources": resources, "baseline": {"trial_id": baseline, "config": point} if point else None,
               "best": best, **extra, "trials": rows, "wall_s": wall_s}
    summary["verdict"] = verdict(summary)
    if mlflow is not None:
        summary["mlflow"] = mlflow
    return summary
