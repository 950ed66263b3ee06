"""A sweep whose space holds a pretraining field: each trial pretrains in the search, reporting every
pretraining epoch to Ray Tune on the one trial_epoch axis, so ASHA stops a bad pretraining before it
has run its course; trials that agree on every pretraining field still share one build."""

from __future__ import annotations

import json

import mlflow
import pytest
from tune_support import TINY, results, trial_dirs

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# The baseline pretrains at the synthetic preset's lr (its probe: 0.29, 0.35, 0.36, 0.40 over four
# epochs at these sizes); 1e-5 learns nothing (0.26, 0.23, ...): at the rung of trial_epoch 2 it is
# below the baseline's, which ran first (one trial at a time), so ASHA stops it in its pretraining.
# The random searcher's seed 7 draws (1e-5, 0.2) and then the baseline's values again: a third trial
# that shares the baseline's pretraining (its build, and its results to the scheduler).
SPEC = """name: pretrain-search
base: synthetic
space:
  pretrain.lr: {choice: [0.05, 1.0e-5]}
  meta.inner_lr: {choice: [0.1, 0.2]}
tune: {num_samples: 3, max_concurrent: 1, searcher: random, seed: 7, grace_period: 2, reduction_factor: 2,
       max_failures: 0, compare_top: 1, race_top: 0}
resources: {cpu: 1, gpu: 0}
"""


def test_pretraining_in_the_space_is_reported_and_stopped_early_and_shared(ray_local, tmp_path):
    from mtl.tune.spec import load_spec
    from mtl.tune.sweep import run_sweep

    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = load_spec(path, [*TINY, "meta.epochs=2", f"storage={tmp_path / 'results'}", f"mlflow.tracking_uri={store}"])
    assert spec.searches_pretraining and spec.pretrain_span == 4 and spec.time_attr == "trial_epoch"
    assert spec.max_t == 6  # four pretraining epochs, then two meta epochs, on one axis
    summary = run_sweep(spec)
    rows = {t.trial_id: t for t in summary.trials}
    assert len(rows) == 3 and sum(t.baseline for t in rows.values()) == 1
    bad = [t for t in rows.values() if t.config["pretrain.lr"] == 1e-5]
    good = [t for t in rows.values() if t.config["pretrain.lr"] == 0.05]
    assert len(bad) == 1 and len(good) == 2, [t.config for t in rows.values()]

    # the bad pretraining: stopped by ASHA at its first rung, in pretraining, with its probe's curve
    (b,) = bad
    assert (b.outcome, b.stopped_in, b.epoch, b.reached) == ("stopped_early", "pretrain", 2, "pretraining 2/4")
    assert b.checkpoint is None and b.best_val_acc is None and [p.epoch for p in b.pretrain_history] == [1, 2]
    # Ray saw its pretraining epochs on the trial_epoch axis, and nothing after the rung
    reported = results(trial_dirs(spec.experiment_dir)[b.trial_id])
    assert [(r["phase"], r["epoch"], r["trial_epoch"]) for r in reported] == [("pretrain", 1, 1), ("pretrain", 2, 2)]

    # the good pretraining, built once: the trial that found it built reported the builder's pretraining
    # epochs (the same values, so the same rung decisions), then meta-trained from trial_epoch 5
    exp = spec.experiment_dir
    builds = [json.loads(x) for x in (exp / "pretrain_cache" / "builds.log").read_text().splitlines()]
    assert len(builds) == 1  # the bad one never finished its build: it publishes nothing
    curves = []
    for t in good:
        assert (t.outcome, t.stopped_in, t.reached) == ("completed", "meta", "2/2") and t.checkpoint
        rs = results(trial_dirs(exp)[t.trial_id])
        assert [(r["phase"], r["trial_epoch"]) for r in rs] == [("pretrain", e) for e in (1, 2, 3, 4)] + [
            ("meta", 5), ("meta", 6)]
        curves.append([r["val_acc"] for r in rs if r["phase"] == "pretrain"])
        assert rs[-1]["pretrain_built"] == (t.trial_id == builds[0]["built_by"])
    assert curves[0] == curves[1] and curves[0][1] > b.pretrain_history[1].val_acc

    # MLflow: the pretraining epochs are their own series (pretrain/...), step = pretraining epoch
    client = mlflow.MlflowClient(store)
    exp_id = client.get_experiment_by_name("pretrain-search").experiment_id
    child = {r.data.tags["trial_id"]: r for r in client.search_runs([exp_id]) if "trial_id" in r.data.tags}
    history = client.get_metric_history(child[b.trial_id].info.run_id, "pretrain/val_acc")
    assert [m.step for m in history] == [1, 2] and child[b.trial_id].data.tags["outcome"] == "stopped_early"
    assert [m.step for m in client.get_metric_history(child[good[0].trial_id].info.run_id, "val_acc")] == [1, 2]
    assert summary.best is not None and summary.best.trial_id in {t.trial_id for t in good}
