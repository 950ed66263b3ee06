"""The cluster path: launch/cluster.yaml against Ray's schema, the job upload, and a real job.

``test_smoke_sweep_as_job`` starts a one-node Ray cluster the way a cluster head runs (``ray
start --head`` with the dashboard's job server, here on loopback), submits the smoke sweep with
``ray job submit --working-dir`` exactly as docs/cluster.md tells users to, and checks what the
job left behind: summary.json on the storage path and the MLflow runs.

Every Ray process gets RAY_AUTH_MODE=disabled (head, job CLI, driver): token auth is on by default
and the CLI must agree with the head (ecosystem.md §1.12). The head gets its own short --temp-dir
and its own ports, so it can run beside other Ray instances on the same machine; it is torn down
by signalling the ``ray start --block`` process this test started (never ``ray stop``, which would
stop every Ray on the machine), then any leftover process of that temp dir.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from pathlib import Path

import pytest
import yaml
from tiny_settings import TINY_SWEEP

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: its `ray`, and the `python` the job driver runs
RAY = str(BIN / "ray")

# Kept out of the --working-dir upload (gitignore-style, relative to the repo; "/x/" anchors a
# folder at the top: a bare "data/" would also drop the mtl/data package). launch/submit.sh uses
# the same list; test_submit_script_excludes checks that they agree.
EXCLUDES = [".git", "/.venv/", "/venv/", "/data/", "/ray_results/", "/runs/", "mlflow.db", "/mlruns/",
            "/mlartifacts/", "*.pt", "__pycache__", ".pytest_cache", ".ruff_cache", "*.egg-info"]

# The smoke sweep, shrunk to about a minute on 2 CPU cores: fewer, smaller classes, short
# pretraining and meta-training, few evaluation episodes. Still far above chance (20%).
SMALL = ["tune.num_samples=3", "tune.race_top=0", *TINY_SWEEP,  # the race: test_tune_sweep.py
         "data.synthetic.train_classes=16", "pretrain.epochs=2", "meta.epochs=2"]


# ----------------------------------------------------------------------------- cluster.yaml


def test_cluster_yaml_passes_ray_schema():
    """Ray's own config preparation and JSON-schema validation, as `ray up` runs them first.

    prepare_config fills the AWS defaults and merges the setup commands; it needs neither boto3
    calls nor credentials. What `ray up` does next (creating the key pair, security group and
    instances) needs an AWS account and is not exercised here."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "launch" / "cluster.yaml").read_text())
    cfg = prepare_config(raw)
    validate_config(cfg)

    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    gpu_workers = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    assert gpu_workers and all(t["resources"].get("CPU", 0) > 0 for t in gpu_workers.values())
    assert any(t["min_workers"] >= 1 for t in gpu_workers.values()), "a sweep must see a GPU at launch"
    assert "." in cfg["file_mounts"].values()
    setup = " ; ".join(cfg["head_setup_commands"])
    assert cfg["head_setup_commands"] != [] and cfg["worker_setup_commands"][:len(raw["setup_commands"])] == \
        raw["setup_commands"]
    assert "pip install -e" in setup and "ray[default" in setup and "boto3" in setup
    assert "/mnt/shared" in setup and "RAY_AUTH_MODE=" in setup
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" in head_start and "--dashboard-port=8265" in head_start
    assert "mlflow server" in head_start


def test_cluster_yaml_typo_is_rejected():
    """The validation above is real: a misspelt key fails it."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "launch" / "cluster.yaml").read_text())
    raw["setup_comands"] = raw.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(raw))


def test_cluster_yaml_commands_are_valid_bash():
    raw = yaml.safe_load((REPO / "launch" / "cluster.yaml").read_text())
    keys = ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    for cmd in (c for k in keys for c in raw.get(k) or []):
        r = subprocess.run(["bash", "-n", "-c", cmd], check=False, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd!r}: {r.stderr}"


# ----------------------------------------------------------------------------- the upload


def _upload(tmp_path: Path, excludes: list[str]) -> zipfile.ZipFile:
    """The zip Ray would upload for ``--working-dir <repo>`` (Ray's own packing code: private, so a Ray
    that moves it fails this test loudly)."""
    from ray._private.runtime_env import packaging

    out = tmp_path / "pkg.zip"
    packaging._zip_files(str(REPO), excludes, str(out), include_gitignore=True)
    return zipfile.ZipFile(out)


def test_working_dir_upload_is_small(tmp_path):
    z = _upload(tmp_path, EXCLUDES)
    names = z.namelist()
    size = sum(i.file_size for i in z.infolist())
    assert size < 20 * 2**20, f"working dir upload is {size / 2**20:.1f} MiB"
    for needed in ("launch/tune.py", "mtl/data/__init__.py", "mtl/tune/sweep.py", "search_spaces/smoke.yaml",
                   "pyproject.toml"):
        assert needed in names, f"{needed} missing from the upload"
    assert any(n.startswith("tests/data/") for n in names)
    banned = (".git/", ".venv/", "ray_results/", "runs/", "mlruns/", "data/")
    assert not [n for n in names if n.startswith(banned) or n.endswith((".pt", "mlflow.db")) or "__pycache__" in n]


def test_submit_script_excludes(tmp_path):
    """launch/submit.sh builds the documented `ray job submit` command with the same excludes."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MTL_CACHE_DIR", "RAY_AUTH_MODE")}
    r = subprocess.run(["bash", str(REPO / "launch" / "submit.sh"), "--print", "-a", "http://head:8265",
                        "-e", "MLFLOW_TRACKING_URI=http://127.0.0.1:5000", "-i", "sweep-1", "--",
                        "search_spaces/mini1shot.yaml", "--set", "storage=/mnt/shared/ray_results"],
                       check=False, capture_output=True, text=True, env={**env, "RAY_AUTH_MODE": "token"})
    assert r.returncode == 0, r.stderr
    argv = shlex.split(r.stdout)
    assert argv[:3] == ["ray", "job", "submit"]
    assert argv[argv.index("--address") + 1] == "http://head:8265"
    assert argv[argv.index("--working-dir") + 1] == str(REPO)
    assert argv[argv.index("--submission-id") + 1] == "sweep-1"
    assert argv[argv.index("--") + 1:] == ["python", "launch/tune.py", "search_spaces/mini1shot.yaml", "--set",
                                           "storage=/mnt/shared/ray_results"]
    renv = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert renv["excludes"] == EXCLUDES
    assert renv["env_vars"] == {"RAY_AUTH_MODE": "token", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                                "RAY_JOB_STOP_WAIT_TIME_S": "60"}


# ----------------------------------------------------------------------------- a real job


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports, none in Ray's default worker port range (10002-19999)."""
    socks: list[socket.socket] = []
    try:
        while len(socks) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            if 10002 <= s.getsockname()[1] <= 19999:
                s.close()
                continue
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", RAY_worker_niceness="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def _kill_leftovers(marker: str) -> list[int]:
    """SIGKILL processes whose command line names this cluster's own temp dir (Linux /proc)."""
    killed = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(proc.name)
            if pid != os.getpid() and marker in proc.joinpath("cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except (OSError, ValueError):
            pass
    return killed


def _die_with_parent() -> None:
    """In the `ray start` child: get SIGTERM if pytest dies without its teardown (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture
def ray_head():
    """A Ray head on loopback with the job server; yields (dashboard URL, env for Ray CLIs)."""
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    (gcs, dash, client, agent_http, agent_grpc, metrics, renv_agent, node_mgr, obj_mgr) = _free_ports(9)
    env = _ray_env()
    log = open(Path(temp_dir) / "ray_start.log", "w")  # noqa: SIM115 (closed in the teardown)
    cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2", "--num-gpus=0",
           "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}",
           f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
           f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={renv_agent}",
           f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
           f"--object-store-memory={300 * 2**20}", "--disable-usage-stats"]
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 (prctl only)
    url = f"http://127.0.0.1:{dash}"
    try:
        while True:
            if proc.poll() is not None:
                log_text = (Path(temp_dir) / "ray_start.log").read_text()
                pytest.fail(f"ray start exited with {proc.returncode}:\n{log_text}")
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - started > 600:  # a hang guard, not a speed check
                pytest.fail(f"Ray head not ready after 600 s:\n{(Path(temp_dir) / 'ray_start.log').read_text()}")
            time.sleep(0.5)
        print(f"\nray head up in {time.time() - started:.1f} s (dashboard {url}, temp dir {temp_dir})")
        yield url, env
    finally:
        t0 = time.time()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # --block: stops this node's processes, then exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        time.sleep(1)
        leftovers = _kill_leftovers(temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
        print(f"ray head stopped in {time.time() - t0:.1f} s"
              + (f"; killed leftovers {leftovers}" if leftovers else ""))


@pytest.mark.ray
@pytest.mark.slow
def test_smoke_sweep_as_job(ray_head, tmp_path):
    url, env = ray_head
    storage = tmp_path / "results"
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"  # absolute path: sqlite:////tmp/...
    runtime_env = {"excludes": EXCLUDES,
                   "env_vars": {"MTL_CACHE_DIR": str(tmp_path / "cache"), "RAY_AUTH_MODE": "disabled",
                                "MLFLOW_TRACKING_URI": uri}}
    sid = f"mtl-smoke-{uuid.uuid4().hex[:8]}"
    sets = [a for s in SMALL for a in ("--set", s)]
    cmd = [RAY, "job", "submit", "--address", url, "--submission-id", sid, "--working-dir", str(REPO),
           "--runtime-env-json", json.dumps(runtime_env), "--log-style", "record", "--log-color", "false",
           "--", "python", "launch/tune.py", "search_spaces/smoke.yaml", "--storage", str(storage), *sets]
    t0 = time.time()
    try:
        job = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=1500)
    except subprocess.TimeoutExpired as e:
        subprocess.run([RAY, "job", "stop", "--address", url, sid], check=False, env=env, capture_output=True,
                       timeout=60)
        pytest.fail(f"job {sid} did not finish in 1500 s; output so far:\n{e.stdout or ''}{e.stderr or ''}")
    out = job.stdout + job.stderr
    print(f"job {sid}: exit {job.returncode} after {time.time() - t0:.1f} s")
    assert job.returncode == 0, f"ray job submit failed:\n{out[-8000:]}"

    assert "Uploading package gcs://_ray_pkg_" in out, out[-4000:]  # the --working-dir went up as a package
    status = subprocess.run([RAY, "job", "status", "--address", url, "--log-style", "record", "--log-color",
                             "false", sid], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert f"Job '{sid}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr

    # what the sweep wrote on the storage path (an absolute path outside the job's working dir)
    summary = json.loads((storage / "smoke" / "summary.json").read_text())
    trials = summary["trials"]
    assert len(trials) == 3 and len({t["trial_id"] for t in trials}) == 3
    assert not [t for t in trials if t["outcome"] == "errored"], [t["error"] for t in trials]
    best = summary["best"]
    assert best is not None and best["test_acc"] > 0.2, best
    assert Path(best["checkpoint"]).is_file()

    # the MLflow record: one parent run for the sweep, one finished child per trial
    from mlflow import MlflowClient

    assert summary["mlflow"]["tracking_uri"] == uri
    parent_id = summary["mlflow"]["parent_run_id"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(summary["mlflow"]["experiment"])
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.info.run_id == parent_id]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(parents) == 1 and len(runs) == 1 + len(trials)
    assert {r.data.tags.get("trial_id") for r in children} == {t["trial_id"] for t in trials}
    assert {r.info.status for r in runs} == {"FINISHED"}
    print(f"job ok: best test acc {best['test_acc']:.3f}, {len(children)} child runs; "
          f"total {time.time() - t0:.1f} s")
