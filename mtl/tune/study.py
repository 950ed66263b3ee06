"""The sweep driver: preflight checks, Ray, the Tuner, the winner's test, the summary.

``run_sweep(spec)`` is what ``launch/tune.py`` calls. Order matters: everything that can be
wrong with the user's input (spec, data, tracking URI, Ray address, an existing sweep) is
checked before Ray starts or anything is written, so bad input leaves no job, run or file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.config import check_against_data, save_config
from mtl.data import split_stats
from mtl.errors import ConfigError
from mtl.tune import SweepInterrupted
from mtl.tune.pretrain_cache import affects_pretraining
from mtl.tune.spec import SweepSpec
from mtl.typed import dotted
from mtl.tune.summary import (artifacts, figures, finished_trials, flat_params, format_table,  # noqa: F401
                              summary_metrics, trial_rows, write_json)

log = logging.getLogger(__name__)
_USER_MAX_PENDING = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")  # a user's own setting wins


@dataclass(frozen=True)
class Launch:
    """What preflight resolved: where things go and what each trial gets."""

    spec: SweepSpec
    cache_root: Path
    tracking_uri: str | None
    experiment: str
    resume: bool


def preflight(spec: SweepSpec, *, resume: bool = False) -> Launch:
    """All checks that need neither Ray nor any write."""
    stats = split_stats(spec.base.data)  # missing dataset root -> DataError with the expected layout
    check_against_data(spec.base, stats)
    for key, dist in spec.space.items():
        for v in dist.bounds():
            try:
                check_against_data(spec.base.with_overrides({key: v}), stats)
            except ConfigError as e:
                raise ConfigError(f"space {key}: value {v!r} does not fit the data ({e})") from None
    exp = spec.experiment_dir
    if resume and not exp.exists():
        raise ConfigError(f"nothing to resume: no sweep {spec.name!r} under {spec.storage}; drop --resume to start it")
    if not resume and exp.exists():
        raise ConfigError(f"sweep {spec.name!r} already exists under {spec.storage}; pass --resume to continue it, "
                          f"or --set name=<new name> to start another")
    if resume:
        _check_same_sweep(spec, exp / SPEC_FILE)
    # a sweep stopped before Ray Tune saved any state (e.g. while pretraining) starts its trials afresh,
    # keeping its pretraining cache and MLflow runs
    tuner_state = resume and (exp / "tuner.pkl").exists() and any(exp.glob("experiment_state-*.json"))
    uri = None
    if spec.settings.mlflow.enabled:
        from mtl.tracking.uri import check_tracking_uri, resolve_tracking_uri

        uri = resolve_tracking_uri(spec.settings.mlflow.tracking_uri)
        check_tracking_uri(uri)
    return Launch(spec, exp / "pretrain_cache", uri, spec.settings.mlflow.experiment or spec.name, tuner_state)


SPEC_FILE = "sweep.json"  # what the first launch resolved; a resume must match it


def _identity(spec: SweepSpec) -> dict[str, Any]:
    """What a resumed sweep must share with its first launch (Ray Tune restores the searcher,
    scheduler and trials from its own state; trials get the base config from this launch)."""
    d = spec.describe()
    return dotted({"base": d["base_config"], "space": d["space"], "tune": d["settings"]["tune"]})


def _check_same_sweep(spec: SweepSpec, path: Path) -> None:
    if not path.is_file():
        return
    first = json.loads(path.read_text())
    now = json.loads(json.dumps(_identity(spec)))
    diff = sorted(k for k in first.keys() | now.keys() if first.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k} ({first.get(k)!r} -> {now.get(k)!r})" for k in diff[:4])
        raise ConfigError(f"--resume of sweep {spec.name!r} with settings that differ from its first launch: {shown}"
                          f"{' ...' if len(diff) > 4 else ''}; repeat the first launch's spec and --set options")


def describe(spec: SweepSpec) -> str:
    """The dry-run text: resolved base config, search space, resources and search settings."""
    import yaml

    t, r = spec.tune, spec.resources
    shared = not any(affects_pretraining(k) for k in spec.space)
    lines = [
        f"sweep {spec.name} ({spec.source})",
        "base config (resolved):",
        yaml.safe_dump(spec.base.to_dict(), sort_keys=False).rstrip().replace("\n", "\n  ").join(["  ", ""]),
        "search space:",
        *(f"  {k}: {d.kind}{list(d.args)}" for k, d in spec.space.items()),
        f"resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU"
        + (" (falls back to CPU when the cluster has no GPU)" if r.gpu else ""),
        f"search: {t.searcher} (seed {t.seed}), {t.num_samples} trials, max concurrent {t.max_concurrent or 'auto'}",
        f"scheduler: {t.scheduler}" + (f" on {t.time_attr}, grace {t.grace_period}, reduction {t.reduction_factor}, "
                                       f"max_t {spec.max_t}" if t.scheduler == "asha" else ""),
        f"metric: {t.metric} ({t.mode}); retries per trial: {t.max_failures}",
        f"pretraining: {'one shared entry for all trials' if shared else 'one entry per distinct pretraining setup'}",
        f"storage: {spec.experiment_dir}",
        f"mlflow: {'on' if spec.settings.mlflow.enabled else 'off'}"
        + (f" ({spec.settings.mlflow.tracking_uri or 'default store'})" if spec.settings.mlflow.enabled else ""),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- Ray


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``address`` (checked for reachability first) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": _env_for_trials()}
    if address is None:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, runtime_env=env, configure_logging=False,
                 include_dashboard=False, log_to_driver=True)
        return
    if address not in ("auto",) and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
                pass
        except (OSError, ValueError) as e:
            raise ConfigError(f"Ray cluster at {address} is unreachable ({e.__class__.__name__}: {e}); "
                              "start it with `ray start --head` or drop --address to run locally") from None
    try:
        ray.init(address=address, runtime_env=env, configure_logging=False, log_to_driver=True)
    except (ConnectionError, RuntimeError) as e:
        raise ConfigError(f"cannot join the Ray cluster at {address} ({str(e).splitlines()[0][:200]}); "
                          "check the address (host:port of the head's GCS, default port 6379)") from None


def _env_for_trials() -> dict[str, str]:
    """The driver's MLflow URI and data cache folder, for the trials. Under ``ray job submit``
    the job's runtime env already reaches them, and Ray refuses a key that both set."""
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MTL_CACHE_DIR") if k in os.environ}
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        job = {}
    return {k: v for k, v in env.items() if k not in (job.get("env_vars") or {})}


def trial_resources(spec: SweepSpec) -> dict[str, float]:
    """The spec's per-trial resources; a GPU request on a cluster without GPUs falls back to CPU
    (Ray would otherwise leave the trials pending forever)."""
    import ray

    res = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    wait = spec.resources.wait_for_gpu_s
    if res["gpu"] > 0 and ray.cluster_resources().get("GPU", 0) <= 0 and wait > 0:
        from ray.autoscaler.sdk import request_resources

        log.info("no GPU in the cluster yet: asking the autoscaler for one and waiting up to %g s", wait)
        request_resources(bundles=[{"GPU": 1}])
        deadline = time.time() + wait
        while time.time() < deadline and ray.cluster_resources().get("GPU", 0) <= 0:
            time.sleep(5)
    if res["gpu"] > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        log.warning("resources.gpu = %g but the Ray cluster has no GPU: running trials on CPU", res["gpu"])
        res["gpu"] = 0.0
    return res


def concurrent_slots(resources: dict[str, float]) -> int:
    """How many trials with ``resources`` the cluster holds at once (at least 1)."""
    import ray

    total = ray.cluster_resources()
    fits = [total.get("CPU", 0.0) / resources["cpu"]]
    if resources["gpu"] > 0:
        fits.append(total.get("GPU", 0.0) / resources["gpu"])
    return max(1, int(min(fits) + 1e-9))


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def build_tuner(launch: Launch, resources: dict[str, float], callbacks: list[Any]):
    from optuna.samplers import RandomSampler, TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from mtl.tune.trainable import train_mtl

    spec, t = launch.spec, launch.spec.tune
    trainable = tune.with_resources(
        tune.with_parameters(train_mtl, base=spec.base.to_dict(), cache_root=str(launch.cache_root)), resources)
    if launch.resume:
        return tune.Tuner.restore(str(spec.experiment_dir), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    sampler = (TPESampler(seed=t.seed, n_startup_trials=t.n_startup_trials) if t.searcher == "optuna"
               else RandomSampler(seed=t.seed))
    scheduler = (ASHAScheduler(time_attr=t.time_attr, max_t=spec.max_t, grace_period=t.grace_period,
                               reduction_factor=t.reduction_factor) if t.scheduler == "asha" else FIFOScheduler())
    # With a searcher Ray Tune keeps one trial pending at a time, so trials would start one after
    # another; let it queue as many as the cluster holds now (an autoscaler may add more later).
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = _USER_MAX_PENDING or str(t.max_concurrent or concurrent_slots(resources))
    return tune.Tuner(
        trainable,
        param_space=spec.param_space(),
        tune_config=tune.TuneConfig(metric=t.metric, mode=t.mode, search_alg=OptunaSearch(sampler=sampler),
                                    scheduler=scheduler, num_samples=t.num_samples,
                                    max_concurrent_trials=t.max_concurrent,
                                    reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=spec.name, storage_path=str(spec.storage), callbacks=callbacks, verbose=1,
            failure_config=tune.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=t.checkpoints_to_keep)),
    )


def _pretrain_task(base: dict[str, Any], cache_root: str) -> dict[str, Any]:
    """Ray task: build (or find) the shared pretraining entry before any trial starts."""
    from dataclasses import replace

    from mtl.config import config_from_dict
    from mtl.experiment import load_data
    from mtl.runtime import make_env
    from mtl.tune.pretrain_cache import backbone_for

    logging.basicConfig(level=logging.INFO)
    cfg = config_from_dict(base)
    env = replace(make_env(cfg.runtime), progress=False)
    entry = backbone_for(cfg, env, load_data(cfg, env), cache_root, who="driver")
    return {"key": entry.key, "status": entry.status, "val_acc": entry.val_acc}


def _remote(fn, resources: dict[str, float]):
    import ray

    return ray.remote(fn).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=0)


# ----------------------------------------------------------------------------- the sweep


def run_sweep(spec: SweepSpec, *, address: str | None = None, resume: bool = False,
              ray_init: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) a sweep end to end; returns the summary also written to summary.json."""
    launch = preflight(spec, resume=resume)
    start = time.time()
    connect(address, **(ray_init or {}))
    sigterm = _sigterm_as_ctrl_c()
    try:
        return _run(launch, spec, start)
    finally:
        if sigterm is not False:
            signal.signal(signal.SIGTERM, sigterm or signal.SIG_DFL)  # None: Ray's own, set from C++


def _sigterm_as_ctrl_c() -> Any:
    """SIGTERM (``ray job stop``, a batch scheduler, ``docker stop``) as Ctrl+C: Ray Tune then
    saves the sweep's state and returns, and the sweep can be resumed. Installed after
    ``ray.init``, which sets a SIGTERM handler of its own; returns the handler it replaced
    (False: none replaced, signals are for the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def _run(launch: Launch, spec: SweepSpec, start: float) -> dict[str, Any]:
    resources = trial_resources(spec)
    exp = spec.experiment_dir
    exp.mkdir(parents=True, exist_ok=True)
    if not (exp / SPEC_FILE).exists():
        write_json(exp / SPEC_FILE, _identity(spec))
    tracker = None
    callbacks: list[Any] = []
    if launch.tracking_uri:
        from mtl.tracking.mlflow import SweepTracker

        tracker = SweepTracker(launch.tracking_uri, launch.experiment, spec.name, exp / "mlflow_runs.json")
        tracker.start(flat_params(spec), tags={"sweep": spec.name, "spec": spec.source})
        callbacks.append(tracker.callback())
    status = "FAILED"
    try:
        if not any(affects_pretraining(k) for k in spec.space):
            import ray

            info = ray.get(_remote(_pretrain_task, resources).remote(spec.base.to_dict(), str(launch.cache_root)))
            log.info("shared pretraining entry %s (%s)", info["key"], info["status"])
        result_grid = build_tuner(launch, resources, callbacks).fit()
        # Ctrl+C / SIGUSR1 make Ray Tune save its state and return early: no winner to test yet
        finished = finished_trials(exp, result_grid)
        if finished < spec.tune.num_samples:
            status = "KILLED"
            raise SweepInterrupted(spec.name, finished, spec.tune.num_samples, exp)
        summary = summarize(launch, result_grid, resources, time.time() - start)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None and status != "FINISHED":
            tracker.finish({}, status=status)
    if tracker is not None:
        summary["mlflow"] = {"tracking_uri": launch.tracking_uri, "experiment": launch.experiment,
                             "parent_run_id": tracker.parent_run_id}
        write_json(exp / "summary.json", summary)
        tracker.finish(summary_metrics(summary), artifacts=artifacts(exp), figures=figures(summary))
    return summary


def summarize(launch: Launch, result_grid: Any, resources: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Pick the best trial by validation accuracy, test it once, write summary.json and the winner."""
    import ray

    from mtl.tune.trainable import evaluate_trial

    spec = launch.spec
    exp = spec.experiment_dir
    rows = trial_rows(result_grid)
    candidates = [t for t in rows if t["checkpoint"] and t["best_val_acc"] is not None]
    best = None
    if candidates:
        win = max(candidates, key=lambda t: t["best_val_acc"])
        (exp / "best").mkdir(parents=True, exist_ok=True)
        res = ray.get(_remote(evaluate_trial, resources).remote(
            win["checkpoint"], str(launch.cache_root), str(exp / "best" / "meta_state.pt")))
        cfg = spec.base.with_overrides(win["config"])
        save_config(cfg, exp / "best" / "config.yaml")
        (exp / "best" / "test_accs.csv").write_text("episode,acc\n" + "".join(
            f"{i},{a:.6f}\n" for i, a in enumerate(res["accs"])))
        best = {"trial_id": win["trial_id"], "config": win["config"], "val_acc": win["best_val_acc"],
                "test_acc": res["acc"], "test_ci95": res["ci95"], "test_episodes": len(res["accs"]),
                "checkpoint": str(exp / "best" / "meta_state.pt"), "resolved_config": cfg.to_dict()}
    summary = {"name": spec.name, "spec": spec.source, "metric": spec.tune.metric,
               "space": {k: {d.kind: list(d.args)} for k, d in spec.space.items()},
               "resources": resources, "best": best, "trials": rows, "wall_s": wall_s}
    write_json(exp / "summary.json", summary)
    if best is None:
        log.error("no trial produced a checkpoint; see the errors in %s/summary.json", exp)
    return summary


