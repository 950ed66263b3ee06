"""The speed benchmark: the CLI runs on a CPU and writes every figure with its floor and ratio;
its settings (one declared tree, set with --set); the timing, memory and report helpers; no Ray,
MLflow or Optuna on import."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl.bench.cli import main
from mtl.bench.report import table, targets
from mtl.bench.settings import BenchSettings, load_settings, resolve
from mtl.bench.timing import PeakMemory, Plan, device_info, interleaved, measure, release
from mtl.schema import fields

ROOT = Path(__file__).resolve().parents[1]
META = [f"meta_{s}shot_{n}steps_mb{b}" for s in (1, 5) for b in (1, 4) for n in (20, 100)]
FIGURES = ["pretrain", *META, "eval_1shot_600", "eval_5shot_600"]


def _bench(tmp_path, *args, timeout=1500):
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "mtl.bench", "--set", "device=cpu", "--set", "threads=1", "--quick",
           "--json", str(out), *args]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _check_figure(f):
    for key in ("value", "floor", "ratio"):
        assert isinstance(f[key], float) and math.isfinite(f[key]) and f[key] > 0, (key, f)
    assert f["ratio_kind"] in ("throughput", "time") and f["ratio_def"] and f["unit"] and f["what"]
    if f["ratio_kind"] == "throughput" or f["unit"] == "s":
        assert f["ratio"] == pytest.approx(f["value"] / f["floor"])
    else:  # a rate whose ratio is a time ratio
        assert f["ratio"] == pytest.approx(f["floor"] / f["value"])


@pytest.mark.slow
def test_quick_run_writes_every_figure_with_its_floor_and_ratio(tmp_path):
    res, stdout = _bench(tmp_path)
    assert res["complete"] and res["quick"]
    assert sorted(res["figures"]) == sorted(FIGURES)
    for name in FIGURES:
        _check_figure(res["figures"][name])
    env = res["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["threads"] == 1
    assert res["settings"]["backbone"] == "tiny" and res["settings"]["meta_gradient"] == "second order"
    assert res["targets"] is None and res["memory"] is None  # GPU-only
    assert res["bench_settings"]["quick"] and res["bench_settings"]["device"] == "cpu"
    assert res["bench_settings"]["pretrain"]["batch"] == 32 and res["command"][-1] == str(tmp_path / "out.json")
    m = res["figures"]["meta_5shot_100steps_mb4"]
    assert (m["images"], m["shot"], m["inner_steps"], m["meta_batch"]) == (400, 5, 100, 4)
    assert res["figures"]["eval_1shot_600"]["extrapolated"] is True
    assert "ratio" in stdout and "meta-train 5-shot 100 steps mb4" in stdout and "PASS" not in stdout


@pytest.mark.slow
def test_quick_run_with_concurrent_trials(tmp_path):
    res, stdout = _bench(tmp_path, "--set", "trials.n=2", "--set", "only=[trials]", "--set", "trials.seconds=1",
                         "--set", "meta.first_order=true")
    f = res["figures"]["trials_2"]
    _check_figure(f)
    assert len(f["per_trial"]) == 2 and f["threads_per_trial"] == 1 and f["solo"]["episodes"] > 0
    assert all(r["episodes"] > 0 and r["seconds"] >= 1.0 for r in f["per_trial"])
    assert f["value"] == pytest.approx(sum(r["episodes_per_s"] for r in f["per_trial"]))
    assert res["settings"]["meta_gradient"] == "first order"
    assert "2 trials at once vs 1 alone" in stdout


@pytest.mark.slow
def test_importing_the_benchmark_pulls_in_no_ray_mlflow_or_optuna():
    code = ("import sys, mtl.bench, mtl.bench.cli, mtl.bench.figures, mtl.bench.trials, mtl.bench.report; "
            "print([m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'optuna')])")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cpu_timing_never_touches_cuda(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a CUDA API was called on a CPU run")

    for name in ("synchronize", "reset_peak_memory_stats", "max_memory_allocated", "max_memory_reserved",
                 "empty_cache", "get_device_properties", "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, boom)
    cpu = torch.device("cpu")
    calls = []
    t = measure(lambda: calls.append(1), cpu, Plan(warmup=2, iters=3, repeats=4))
    assert len(calls) == 2 + 3 * 4 and t["iters"] == 3 and t["repeats"] == 4 and t["s"] >= 0
    with PeakMemory(cpu) as pm:
        pass
    assert pm.allocated_gb is None
    release(cpu)
    assert device_info(cpu)["device"] == "cpu"


def test_interleaved_alternates_blocks_and_sizes_them_from_seconds():
    order = []
    t = interleaved(torch.device("cpu"), {"a": (lambda: order.append("a"), Plan(0, 2, 3)),
                                          "b": (lambda: order.append("b"), Plan(0, 1, 3))})
    assert "".join(order) == "aab" * 3 and t["a"]["iters"] == 2 and t["b"]["repeats"] == 3
    sized = measure(lambda: sum(range(1000)), torch.device("cpu"), Plan(warmup=1, iters=None, repeats=2, seconds=0.02))
    assert sized["iters"] > 1


def _fig(value, floor, kind, unit="episodes/s", **extra):
    ratio = value / floor if kind == "throughput" or unit == "s" else floor / value
    return {"what": "x", "value": value, "floor": floor, "unit": unit, "ratio": ratio, "ratio_kind": kind,
            "ratio_def": "d", **extra}


def test_targets_and_table_on_a_cuda_result():
    """The GPU report path, exercised with a made-up CUDA result."""
    figs = {
        "pretrain": _fig(5200.0, 6000.0, "throughput", "images/s", batch=128),
        "meta_1shot_100steps_mb1": _fig(50.0, 60.0, "time", ms=20.0, floor_ms=16.0, shot=1, inner_steps=100,
                                        meta_batch=1),
        "meta_5shot_100steps_mb4": _fig(30.0, 60.0, "time", ms=133.0, floor_ms=66.0, shot=5, inner_steps=100,
                                        meta_batch=4),
        "eval_1shot_600": _fig(2.5, 2.0, "time", "s", shot=1, inner_steps=100),
        "trials_4": _fig(130.0, 50.0, "throughput", trials=4, quarter_card_gb=20.0, max_trial_peak_alloc_gb=25.0,
                         per_trial=[{"peak_alloc_gb": p} for p in (25.0, 3.0, 3.0, 3.0)]),
    }
    checks = targets(figs)
    assert checks["pretrain"]["pass"] is True  # 0.87 >= 0.85
    assert checks["meta_1shot_100steps_mb1"]["pass"] is True  # 1.2 <= 1.25
    assert checks["meta_5shot_100steps_mb4"]["pass"] is False  # 2.0
    assert checks["eval_1shot_600"]["pass"] is True  # 2.5 s <= 3 s
    assert checks["trials_4"]["pass"] is True and checks["trials_4_memory"]["pass"] is False
    env = {"device": "cuda", "name": "NVIDIA H200", "torch": "2.11.0", "cuda": "13.0", "cudnn": 91000,
           "threads": 16, "cpu_count": 16, "date": "2026-11-26", "total_memory_gb": 80.0}
    settings = {"backbone": "resnet25", "image_size": 80, "precision": "bf16", "channels_last": True,
                "meta_gradient": "second order", "bn_mode": "frozen", "query": 15}
    out = table({"environment": env, "settings": settings, "figures": figs, "targets": checks, "quick": False,
                 "memory": {"peak_alloc_gb": 5.0, "peak_reserved_gb": 6.0}})
    assert out.count("PASS") == 4 and out.count("FAIL") == 2 and "NVIDIA H200" in out and "1/4 = 20.0 GB" in out


@pytest.mark.parametrize("setting, words", [
    ("trails.n=4", ["unknown bench key 'trails.n'", "did you mean trials.n"]),
    ("trials.n=-1", ["trials.n = -1", "at least 0"]),
    ("meta.shots=[1,0]", ["meta.shots.1 = 0", "at least 1"]),
    ("backbone=resnet18", ["backbone must be one of", "resnet25"]),
])
def test_a_bad_setting_exits_2_with_one_line(capsys, setting, words):
    assert main(["--set", setting, "--quick"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("argv", [["--trials", "4"], ["--set", "trials.n"]])
def test_an_old_flag_or_a_set_without_value_exits_2_with_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "KEY=VALUE" in err[0], err


def test_help_lists_every_setting_with_its_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in fields(BenchSettings):
        assert f"  {key} = " in out, key
    assert "meta.shots = [1,5]" in out and "trials.n = 0" in out and "backbone = null" in out


def test_device_and_quick_dependent_defaults_are_resolved():
    gpu = resolve(load_settings({}), cuda_available=True)
    assert (gpu.device, gpu.backbone, gpu.image_size, gpu.precision) == ("cuda", "resnet25", 80, "bf16")
    assert (gpu.pretrain.batch, gpu.pretrain.steps, gpu.trials.seconds, gpu.eval.episodes) == (128, 10, 15.0, 600)
    assert gpu.timing.warmup == 3 and gpu.timing.repeats == 5 and gpu.eval.shots == [1, 5]
    cpu = resolve(load_settings({"quick": True, "backbone": "resnet12", "eval.batch": 8, "meta.shots": "1"}), False)
    assert (cpu.device, cpu.image_size, cpu.precision, cpu.pretrain.steps, cpu.trials.seconds) == (
        "cpu", 16, "fp32", 4, 1.5)
    assert cpu.eval.batch == 8 and cpu.eval.shots == [1] and cpu.timing.seconds == 0.0
    assert resolve(load_settings({"backbone": "resnet12"}), False).image_size == 84


def test_asking_for_cuda_without_one_exits_2(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--set", "device=cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: device = 'cuda' but no CUDA device is visible; set device=cpu (or auto)"


# ----------------------------------------------------------------------------- shortened reproduction


def test_shortened_reproduction_only_lowers_lengths_and_set_wins():
    from mtl.bench.repro import SHORT, shortened

    cfg, short = shortened("mini_1shot_tf", ["data.root=/data", "eval.val_episodes=50"])
    assert (cfg.pretrain.epochs, cfg.meta.epochs, cfg.pretrain.val_episodes) == (4, 10, 200)
    assert cfg.eval.val_episodes == 50 and cfg.eval.episodes == 600  # --set wins; the test keeps its size
    assert cfg.meta.inner_lr == 0.005 and cfg.model.ss_scope == "3x3"  # the rest is the preset
    cfg, short = shortened("synthetic", [])
    assert short["meta.epochs"] == cfg.meta.epochs == 8 and set(short) == set(SHORT)  # 8 < 10: not raised


@pytest.mark.slow
def test_gpu_repro_script_runs_a_preset_on_the_cpu_and_writes_its_json(tmp_path):
    import os

    from tiny_settings import TINY

    extra = " ".join(f"--set {kv}" for kv in [*TINY, "meta.epochs=1", "pretrain.epochs=1"])
    env = {**os.environ, "REPRO_DEVICE": "cpu", "PRESET": "synthetic", "REPRO_EXTRA": extra,
           "OUT": str(tmp_path / "out"), "REPRO_RUN_DIR": str(tmp_path / "runs"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "launch/gpu_repro.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = (tmp_path / "out").glob("repro-cpu-*-synthetic.json")
    rec = json.loads(path.read_text())
    assert rec["preset"] == "synthetic" and rec["kind"] == "repro" and "not the reproduction" in rec["note"]
    assert rec["config"]["meta"]["epochs"] == 1 and rec["environment"]["device"] == "cpu"
    assert 0.0 <= rec["result"]["test_acc"] <= 1.0 and rec["result"]["test_episodes"] == 40
    assert all(v >= 0 for v in rec["wall_s"].values())
    assert path.with_suffix(".log").is_file()
