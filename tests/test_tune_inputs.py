"""Bad sweep input fails before Ray starts: one line on stderr naming the problem and the fix,
exit status 2, no files. Every case runs ``launch/tune.py``'s ``main`` in-process; three of them
also run as real subprocesses, for the exit status and stderr of the command itself. Plus
--dry-run, the GPU request's fallback to CPU, and the spec checks that guard the sweep at run time."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tune_support import LAUNCH, RAY_ENV, SMOKE, closed_port, launch_main

from mtl.errors import ConfigError

SPACE_OK = "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"


def _spec(space: str = SPACE_OK, head: str = "base: synthetic\n") -> str:
    return f"{head}space:\n{space}"


# case id -> (spec YAML text or None for search_spaces/smoke.yaml, extra CLI args,
#             words the message must hold: the problem ..., the fix)
CASES = {
    "malformed-yaml": ("base: synthetic\nspace: [meta.inner_lr\n", [], ["malformed YAML", "line", "fix the syntax"]),
    "unknown-spec-key": (_spec().replace("space:", "spaces:"), [], ["unknown sweep spec key 'spaces'", "valid keys"]),
    "unknown-setting": (None, ["--set", "tune.num_sample=3"], ["tune.num_sample", "did you mean tune.num_samples"]),
    "space-key-not-a-field": (_spec("  meta.inner_lrr: {uniform: [0.1, 0.5]}\n"), [],
                              ["'meta.inner_lrr' is not a config field", "did you mean meta.inner_lr"]),
    "low-above-high": (_spec("  meta.inner_lr: {uniform: [0.5, 0.1]}\n"), [], ["meta.inner_lr", "needs low < high"]),
    "low-equals-high": (_spec("  meta.inner_lr: {uniform: [0.1, 0.1]}\n"), [], ["meta.inner_lr", "needs low < high"]),
    "log-low-zero": (_spec("  meta.inner_lr: {loguniform: [0, 0.1]}\n"), [],
                     ["loguniform", "needs a positive low bound, got 0"]),
    "log-low-negative": (_spec("  meta.inner_steps: {logint: [-2, 8]}\n"), [], ["logint", "positive low bound"]),
    "arity-short": (_spec("  meta.inner_lr: {uniform: [0.1]}\n"), [], ["uniform takes [low, high]", "[0.1]"]),
    "arity-long": (_spec("  meta.inner_lr: {quniform: [0.1, 0.5]}\n"), [], ["quniform takes [low, high, step]"]),
    "unknown-kind": (_spec("  meta.inner_lr: {normal: [0.1, 0.5]}\n"), [],
                     ["unknown distribution 'normal'", "use one of", "loguniform"]),
    "not-a-distribution": (_spec("  meta.inner_lr: 0.1\n"), [], ["meta.inner_lr", "write one distribution as"]),
    "bound-invalid-for-config": (_spec("  hard_tasks.ratio: {uniform: [0.0, 1.0]}\n"), [],
                                 ["hard_tasks.ratio", "1.0", "must be in [0, 1)"]),
    "fractions-for-int-field": (_spec("  meta.inner_steps: {uniform: [2, 8]}\n"), [],
                                ["meta.inner_steps takes whole numbers", "use {int: [low, high]}"]),
    "zero-samples": (None, ["--set", "tune.num_samples=0"], ["tune.num_samples = 0", "must be at least 1"]),
    "gpu-above-one": (None, ["--set", "resources.gpu=1.5"], ["resources.gpu = 1.5", "fraction of one GPU in (0, 1]"]),
    "gpu-negative": (None, ["--set", "resources.gpu=-0.25"], ["resources.gpu = -0.25", "(0, 1]"]),
    "val-acc-not-every-epoch": (None, ["--set", "eval.val_every=2"], ["eval.val_every = 2", "set eval.val_every=1"]),
    "ray-unreachable": (None, ["--address", "127.0.0.1:{port}"],
                        ["Ray cluster at 127.0.0.1:", "unreachable", "ray start --head", "drop --address"]),
    "mlflow-unreachable": (None, ["--set", "mlflow.tracking_uri=http://127.0.0.1:{port}"],
                           ["MLflow tracking URI http://127.0.0.1:", "unreachable", "mlflow server"]),
    "missing-dataset-root": ("base: mini_1shot\nconfig: {data: {root: /nonexistent/mini}}\nspace:\n"
                             "  meta.inner_lr: {loguniform: [0.005, 0.5]}\n", [],
                             ["miniImageNet not found under /nonexistent/mini", "expected ROOT/"]),
    "dataset-root-unset": ("base: mini_1shot\nspace:\n" + SPACE_OK, [],
                           ["data.root is not set", "--set data.root="]),
    "eval-data-root-unset": (None, ["--set", "eval.data.dataset=folder"],
                             ["eval.data.root is not set for the test dataset 'folder'", "--set eval.data.root="]),
    "eval-data-missing": (None, ["--set", "eval.data.dataset=omniglot", "--set", "eval.data.root=/nonexistent/omni"],
                          ["Omniglot not found under /nonexistent/omni", "expected ROOT/omniglot-py/images_back"]),
    "spec-missing": ("MISSING", [], ["not found", "give the path of a YAML file"]),
    "baseline-outside-space": (_spec("  meta.inner_lr: {loguniform: [0.2, 0.5]}\n"), [],
                               ["space meta.inner_lr", "base config's value 0.1 lies outside loguniform[0.2, 0.5]",
                                "baseline trial", "tune.baseline: false"]),
    "baseline-not-a-choice": (_spec("  hard_tasks.ratio: {choice: [0.0, 0.5]}\n"), [],
                              ["space hard_tasks.ratio", "0.3333333333 lies outside choice[0.0, 0.5]"]),
    "unknown-backbone-set": (None, ["--set", "model.backbone=resnet13"],
                             ["model.backbone", "unknown backbone 'resnet13'", "did you mean resnet12"]),
    "unknown-backbone-in-space": (_spec("  model.backbone: {choice: [tiny, resnet13]}\n"), [],
                                  ["space model.backbone", "unknown backbone 'resnet13'", "resnet12"]),
}


SUBPROCESS_CASES = ("malformed-yaml", "ray-unreachable")  # the exit-2 contract end to end


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env.update(RAY_ENV)
    env["RAY_TMPDIR"] = str(tmp / "raytmp")  # Ray, were it started, would create raytmp/ray
    return env


def _case_args(case: str, cwd: Path) -> list[str]:
    text, extra, _ = CASES[case]
    if text is None:
        spec = str(SMOKE)
    elif text == "MISSING":
        spec = str(cwd / "nope.yaml")
    else:
        (cwd / "spec.yaml").write_text(text)
        spec = "spec.yaml"
    port = closed_port()
    return [spec, "--storage", "results", *(a.format(port=port) for a in extra)]


def _check(case: str, code: int, out: str, err: str, cwd: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    for w in CASES[case][2]:
        assert w in lines[0], (w, lines[0])
    assert out == ""
    # nothing written: no storage folder, no MLflow store, no Ray session
    left = sorted(p.name for p in cwd.iterdir() if p.name != "spec.yaml")
    assert left == [], left


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_in_one_line_before_ray_starts(case, tmp_path, monkeypatch, capsys):
    """In-process: parsing and preflight errors, the same code path as the command line."""
    for k in [k for k in os.environ if k.startswith(("MLFLOW_", "RAY_"))]:
        monkeypatch.delenv(k)
    for k, v in {**RAY_ENV, "RAY_TMPDIR": str(tmp_path / "raytmp")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    code = launch_main()(_case_args(case, tmp_path))
    captured = capsys.readouterr()
    _check(case, code, captured.out, captured.err, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_exits_2_from_the_command_line(case, tmp_path):
    proc = subprocess.run([sys.executable, str(LAUNCH), *_case_args(case, tmp_path)], cwd=tmp_path,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=900, check=False)
    _check(case, proc.returncode, proc.stdout, proc.stderr, tmp_path)


def test_dry_run_prints_the_resolved_sweep_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = launch_main()([str(SMOKE), "--storage", "results", "--dry-run", "--set", "meta.epochs=5",
                           "--set", "resources.gpu=0.25", "--set", "resources.cpu=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    out = captured.out
    assert "base config (resolved):" in out
    assert "    epochs: 5" in out  # meta.epochs override
    assert "    recipe: pt" in out and "    momentum: 0.9" in out  # pretraining recipe filled in
    assert "search space:\n  meta.inner_lr: loguniform[0.02, 0.5]\n  meta.inner_steps: int[3, 12]" in out
    assert "resources per trial: 2 CPU, 0.25 GPU (falls back to CPU when the cluster has no GPU)" in out
    assert "search: optuna (seed 0), 6 trials, max concurrent 2" in out
    assert "scheduler: asha on epoch, grace 1, reduction 2, max_t 5" in out
    assert f"storage: {tmp_path / 'results' / 'smoke'}" in out
    assert list(tmp_path.iterdir()) == []


def test_gpu_request_without_gpus_falls_back_to_cpu(monkeypatch, caplog, tmp_path):
    """The decision the dry run announces (test_tune_resume.py runs such a sweep to the end on a
    local Ray without GPUs)."""
    import ray

    from mtl.tune import cluster
    from mtl.tune.spec import load_spec

    spec = load_spec(SMOKE, ["resources.gpu=0.25", f"storage={tmp_path}"])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    with caplog.at_level(logging.WARNING, logger="mtl.tune.cluster"):
        assert cluster.trial_resources(spec) == {"cpu": 1.0, "gpu": 0.0}
    assert "no GPU: running trials on CPU" in caplog.text
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    assert cluster.trial_resources(spec) == {"cpu": 1.0, "gpu": 0.25}



# --- spec checks that protect a running sweep (in-process, no Ray) -------------------------------

def _load(tmp_path, space: str, overrides=()):
    from mtl.tune.spec import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(_spec(space))
    return load_spec(path, list(overrides))


def test_max_t_covers_the_longest_trial_of_the_space(tmp_path):
    spec = _load(tmp_path, "  meta.epochs: {int: [2, 7]}\n", ["meta.epochs=3"])
    assert spec.max_t == 7  # not the base's 3: ASHA would cut the 7-epoch trials at 3
    # updates: normal batches plus the hard ones on top, at the largest hard-task ratio searched
    spec = _load(tmp_path, "  hard_tasks.ratio: {uniform: [0.0, 0.5]}\n",
                 ["meta.epochs=4", "meta.batches_per_epoch=10", "tune.time_attr=updates"])
    assert spec.max_t >= 4 * 10 / (1 - 0.5)
    assert _load(tmp_path, SPACE_OK, ["meta.epochs=4", "tune.max_t=2"]).max_t == 2


def test_quantised_distribution_on_int_field_needs_whole_steps(tmp_path):
    assert _load(tmp_path, "  meta.inner_steps: {quniform: [2, 10, 2]}\n").space["meta.inner_steps"].kind == "quniform"
    with pytest.raises(ConfigError, match="takes whole numbers"):
        _load(tmp_path, "  meta.inner_steps: {quniform: [2, 10, 0.5]}\n")
    # ints are fine for a float field (the base's 0.1 is outside: no baseline trial then)
    assert _load(tmp_path, "  meta.inner_lr: {int: [1, 3]}\n", ["tune.baseline=false"]).space


def test_val_every_is_fine_for_a_metric_reported_every_epoch(tmp_path):
    spec = _load(tmp_path, SPACE_OK, ["eval.val_every=2", "tune.metric=best_val_acc"])
    assert spec.base.eval.val_every == 2
    with pytest.raises(ConfigError, match="eval.val_every"):
        _load(tmp_path, "  eval.val_every: {int: [1, 2]}\n")


def test_resume_must_repeat_the_first_launch(tmp_path):
    """--resume with other settings than the first launch fails before Ray starts (the restored
    trials would silently get the new base config, the restored searcher the old settings)."""
    from mtl.files import write_json_atomic
    from mtl.tune.preflight import SPEC_FILE, preflight
    from mtl.tune.preflight import identity as _identity

    over = [f"storage={tmp_path / 'res'}", "mlflow.enabled=false", "meta.epochs=3"]
    spec = _load(tmp_path, SPACE_OK, over)
    exp = spec.experiment_dir
    exp.mkdir(parents=True)
    write_json_atomic(exp / SPEC_FILE, _identity(spec))
    # stopped before Ray Tune saved state (no tuner.pkl): --resume starts the trials afresh
    assert preflight(spec, resume=True).resume is False
    (exp / "tuner.pkl").write_bytes(b"")
    assert preflight(spec, resume=True).resume is False  # nor before its first state snapshot
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert preflight(spec, resume=True).resume is True
    with pytest.raises(ConfigError, match=r"meta\.epochs \(3 -> 4\).*repeat the first launch"):
        preflight(_load(tmp_path, SPACE_OK, [*over, "meta.epochs=4"]), resume=True)
    with pytest.raises(ConfigError, match="num_samples"):
        preflight(_load(tmp_path, SPACE_OK, [*over, "tune.num_samples=3"]), resume=True)
    with pytest.raises(ConfigError, match="already exists.*--resume"):
        preflight(spec)
