"""The Ray side of a sweep's driver: joining or starting Ray, what trials get (environment,
resources, how many fit at once), tasks beside the trials, and SIGTERM as Ctrl+C."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from mtl.errors import ConfigError
from mtl.tune.spec import SweepSpec

log = logging.getLogger(__name__)


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
