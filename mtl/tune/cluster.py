"""The Ray side of a sweep's driver: joining or starting Ray, what trials get (environment,
resources, how many fit at once), tasks beside the trials, SIGTERM as Ctrl+C, and what reaches
the terminal (Ray's, Ray Tune's and Optuna's own output off unless ``--verbose``; workers'
log lines in the driver's format with the trial's name)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from mtl.compat import QUIET_TUNE_ENV, checked
from mtl.errors import ConfigError
from mtl.tune.spec import SweepSpec

log = logging.getLogger(__name__)

LOG_FORMAT, LOG_DATEFMT = "%(asctime)s %(name)s: %(message)s", "%H:%M:%S"  # the driver's; workers add [trial]
VERBOSE_ENV = "MTL_VERBOSE"  # "1": Ray's and Optuna's own output too (launch/tune.py --verbose); trials inherit it
# Read when Ray (MLflow) is imported; the driver prints what workers write: set by configure_output before.
_QUIET_RAY_ENV = {
    "RAY_DISABLE_WORKER_LOG_PREFIX": "1",  # no "(train_mtl pid=...)" before worker lines: they carry our format
    "RAY_DEDUP_LOGS": "0",  # each trial's line is its own: no "[repeated 2x across cluster]", no dedup banner
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables...", "Updating database tables"
}
# Read by Ray Tune when a sweep starts (tune_verbosity).
_QUIET_TUNE_ENV = {
    # the legacy output engine prints nothing at verbose=0 (the new one still prints its header: searcher,
    # scheduler, results folder, TensorBoard hint); mtl.tune.callbacks prints instead
    **QUIET_TUNE_ENV,
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # no traceback per failed trial: our line names its error and trace file
    # "Experiment state snapshotting has been triggered multiple times ...": short trials checkpointing every
    # epoch with num_to_keep set do that by design (ecosystem.md 1.3); the slow-snapshot warning stays
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
_QUIET_LEVELS = {
    "ray": logging.WARNING,  # "Started a local Ray instance", "Checkpoint successfully created at: ..." (in trials)
    "ray._private.authentication": logging.ERROR,  # "Token authentication is enabled for this Ray cluster..."
}
_MTL_HANDLER = "_mtl_worker_handler"


def verbose() -> bool:
    """Whether Ray's, Ray Tune's and Optuna's own output is on (``launch/tune.py --verbose``)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def configure_output(verbose: bool) -> None:
    """What the sweep's terminal shows: our lines only, or also Ray's and Optuna's own with
    ``verbose``. Call before ``import ray`` (launch/tune.py does): Ray reads some settings then.
    A variable the user set wins."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if not verbose:
        for key, value in _QUIET_RAY_ENV.items():
            os.environ.setdefault(key, value)


def tune_verbosity() -> int:
    """``RunConfig(verbose=...)``: 1 (Ray Tune's trial table) with --verbose, else 0 with the
    output engine that keeps it silent, our :mod:`mtl.tune.progress` lines in its place."""
    if verbose():
        return 1
    checked("ray", "RAY_AIR_NEW_OUTPUT")
    for key, value in _QUIET_TUNE_ENV.items():
        os.environ.setdefault(key, value)
    return 0


def _quiet_loggers(driver: bool = True) -> None:
    """Ray's INFO lines off, its warnings through our handler (in our format); in the driver
    Optuna's too. After ``import ray``, which sets up its logger, and before ``ray.init``."""
    if verbose():
        return
    ray_log = logging.getLogger("ray")
    ray_log.handlers.clear()
    ray_log.propagate = True
    for name, level in _QUIET_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    if driver:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory with name: ..."
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()


def setup_worker_logging(name: str | None = None) -> None:
    """In a Ray worker (a trial, the shared-pretraining task): log lines in the driver's format,
    tagged ``[name]`` (default: the running trial's id), INFO and up; Ray's own lines as in the
    driver. Call first thing; again for the next trial of an actor Ray Tune reuses."""
    if name is None:
        from ray import tune

        name = tune.get_context().get_trial_id() or "worker"
    root = logging.getLogger()
    for h in list(root.handlers):  # ours from an earlier trial, or a basicConfig one
        if getattr(h, _MTL_HANDLER, False) or type(h) is logging.StreamHandler:
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _MTL_HANDLER, True)
    tag = str(name).replace("%", "%%")
    handler.setFormatter(logging.Formatter(LOG_FORMAT.replace("%(name)s", f"[{tag}] %(name)s"), LOG_DATEFMT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    _quiet_loggers(driver=False)
    sys.unraisablehook = _quiet_exit_on_sigterm


def _quiet_exit_on_sigterm(u: Any) -> None:
    """A worker stopped by Ray (a finished or early-stopped trial's actor) gets SIGTERM; Ray's handler
    raises SystemExit, and where that lands in a garbage-collection callback Python prints an
    "Exception ignored" trace that Ray forwards to the driver's terminal. That exit is the intended
    one: say nothing. Every other unraisable exception is printed as Python would."""
    if not isinstance(u.exc_value, SystemExit):
        sys.__unraisablehook__(u)


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join the cluster at ``address`` (checked for reachability first) or start a local Ray."""
    import ray

    _quiet_loggers()
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
    """The driver's MLflow URI, data cache folder and verbosity, for the trials. Under ``ray job submit``
    the job's runtime env already reaches them, and Ray refuses a key that both set."""
    env = {k: os.environ[k] for k in ("MLFLOW_TRACKING_URI", "MTL_CACHE_DIR", VERBOSE_ENV) if k in os.environ}
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        job = {}
    return {k: v for k, v in env.items() if k not in (job.get("env_vars") or {})}


def local_cpu_problem(spec: SweepSpec, cpus: int | None = None) -> str | None:
    """Per-trial CPUs a local Ray on this machine (``cpus`` cores, default all of them) can never
    give, so that every trial would stay pending forever, in words; None if they fit."""
    cpus = cpus or os.cpu_count() or 1
    if spec.resources.cpu <= cpus:
        return None
    return (f"resources.cpu = {spec.resources.cpu:g} is more than this machine's {cpus} CPUs, so a local Ray could "
            f"start no trial; set resources.cpu to at most {cpus}, or join a cluster with such nodes (--address)")


def check_local_resources(spec: SweepSpec, cpus: int | None = None) -> None:
    """:func:`local_cpu_problem` as an error, for a sweep that starts its own Ray (no ``--address``,
    no ``RAY_ADDRESS``); a cluster may have larger nodes."""
    if problem := local_cpu_problem(spec, cpus):
        raise ConfigError(problem)


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
            time.sleep(5)  # a real cluster: nodes take minutes, there is nothing to wait on but the count
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


def remote(fn, resources: dict[str, float]):
    """``fn`` as a Ray task with a trial's resources, not retried (its errors are the user's)."""
    import ray

    return ray.remote(fn).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"], max_retries=0)


def sigterm_as_ctrl_c() -> Any:
    """SIGTERM (``ray job stop``, a batch scheduler, ``docker stop``) as Ctrl+C: Ray Tune then
    saves the sweep's state and returns, and the sweep can be resumed. Installed after
    ``ray.init``, which sets a SIGTERM handler of its own; returns the handler it replaced
    (False: none replaced, signals are for the main thread). Undo with :func:`restore_sigterm`."""
    if threading.current_thread() is not threading.main_thread():
        return False
    return signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))


def restore_sigterm(previous: Any) -> None:
    """Put back the handler :func:`sigterm_as_ctrl_c` replaced."""
    if previous is not False:
        signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)  # None: Ray's own, set from C++
