"""The end of a sweep as a user reads it: ties with the winner, the next-step commands, a finished
sweep that is not run again, the dry run's checks, an importance figure at one budget."""

import json

import pytest

from mtl.errors import ConfigError, MTLError
from mtl.results import Best, MlflowLink, SweepSummary, TrialRow
from mtl.tracking.runlog import summary_metrics
from mtl.tune.outcome import trial_row
from mtl.tune.summary import format_table, next_steps, ties, verdict

DISTRIBUTIONS = {"meta.inner_lr": '{"name": "FloatDistribution", "attributes": {"step": null, "low": 0.01, '
                                  '"high": 0.5, "log": true}}'}


def _trial(tid, acc, ci, epochs=4, planned=4, lr=0.1):
    return TrialRow(trial_id=tid, config={"meta.inner_lr": lr}, val_acc=acc, best_val_acc=acc, best_val_ci95=ci,
                    val_ci95=ci, train_loss=1.0, epoch=epochs, planned_epochs=planned,
                    outcome="completed" if epochs == planned else "stopped_early", checkpoint=f"/x/{tid}",
                    history=[{"epoch": e, "val_acc": acc - 0.01 * (epochs - e)} for e in range(1, epochs + 1)])


def _summary(tmp_path, trials, **over):
    win = max(trials, key=lambda t: t.best_val_acc)
    best = Best(trial_id=win.trial_id, config=win.config, val_acc=win.best_val_acc, val_ci95=win.best_val_ci95,
                ties=ties(win, trials), baseline=False, test_acc=0.5, test_ci95=0.02, test_episodes=600,
                train_data="synthetic", test_data="synthetic (test split)",
                checkpoint=str(tmp_path / "smoke" / "best" / "meta_state.pt"),
                config_file=str(tmp_path / "smoke" / "best" / "config.yaml"), resolved_config={})
    return SweepSummary(**{"name": "smoke", "spec": "s.yaml", "metric": "val_acc", "resources": {"cpu": 1.0},
                           "space": {"meta.inner_lr": {"loguniform": [0.01, 0.5]}}, "distributions": DISTRIBUTIONS,
                           "baseline": None, "best": best, "trials": trials, "wall_s": 12.0,
                           "mlflow": MlflowLink(tracking_uri="sqlite:////w/mlflow.db", experiment="smoke",
                                                parent_run_id="p"), **over})


def test_trials_within_the_winners_interval_are_ties():
    trials = [_trial("a", 0.80, 0.01), _trial("b", 0.785, 0.01), _trial("c", 0.70, 0.01), _trial("d", 0.77, 0.01)]
    assert ties(trials[0], trials) == ["b"]  # 0.795 >= 0.79; d reaches 0.78 only
    e = _trial("e", 0.9, 0.0)
    assert ties(e, [*trials, e]) == []


def test_table_shows_the_interval_the_ties_and_the_planned_length(tmp_path):
    s = _summary(tmp_path, [_trial("a", 0.80, 0.01), _trial("b", 0.785, 0.01, epochs=2), _trial("c", 0.5, 0.01)])
    text = format_table(s)
    assert "val acc  80.00% ± 1.00; within its 95% CI: b (marked ~): the winner is not clearly better" in text
    assert "b ~" in text and "2/4" in text and "c ~" not in text
    alone = format_table(_summary(tmp_path, [_trial("a", 0.80, 0.01), _trial("c", 0.5, 0.01)]))
    assert "no other trial within its 95% CI" in alone


def _diverged(tid, epoch=2):
    """The row of a trial whose last result is the trainer's diverged one (mtl.tune.trainable)."""
    last = {"epoch": epoch, "val_acc": 0.0, "best_val_acc": 0.0, "train_loss": float("inf"), "diverged": 1,
            "diverged_update": 5}
    return trial_row(tid, {"meta.inner_lr": 80.0}, last, None, 4, checkpoint=f"/x/{tid}",
                     history=[{"epoch": epoch, "val_acc": 0.0}])


def test_diverged_trials_are_their_own_outcome_in_the_table_and_the_metrics(tmp_path):
    s = _summary(tmp_path, [_trial("a", 0.80, 0.01), _trial("b", 0.6, 0.01, epochs=2), _diverged("c")])
    text = format_table(s)
    assert "3 trials (1 completed, 1 stopped early by ASHA, 1 diverged, 0 errored)" in text
    row = next(line for line in text.splitlines() if line.lstrip().startswith("c "))
    assert row.split()[-2:] == ["2/4", "diverged"] and "0.00%" in row
    assert summary_metrics(s)["diverged"] == 1.0 and summary_metrics(s)["errored"] == 0.0
    assert s.trials[2].checkpoint is None  # no model to test or to win


def test_the_verdict_says_when_the_base_config_or_every_trial_diverged(tmp_path):
    from mtl.results import Baseline

    s = _summary(tmp_path, [_trial("a", 0.80, 0.01), _diverged("c")],
                 baseline=Baseline(trial_id="c", config={"meta.inner_lr": 80.0}))
    assert verdict(s).startswith("the base config diverged (its loss became non-finite), so any config that trains "
                                 "beats it; the best config found is meta.inner_lr=0.1")
    none = _summary(tmp_path, [_diverged("c"), _trial("a", 0.80, 0.01)]).model_copy(
        update={"best": None, "trials": [_diverged("c")]})
    assert verdict(none).startswith("every trial diverged: lower the searched learning rates")


def test_next_steps_name_the_winner_and_the_commands(tmp_path):
    text = next_steps(_summary(tmp_path, [_trial("a", 0.8, 0.01)]))
    ck = tmp_path / "smoke" / "best" / "meta_state.pt"
    assert f"winner checkpoint:  {ck}" in text and f"winner config:      {ck.with_name('config.yaml')}" in text
    assert f"python -m mtl evaluate {ck} --set eval.episodes=2000" in text
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in text
    assert f"summary:            {tmp_path / 'smoke' / 'summary.json'}" in text


def test_importance_compares_every_trial_at_the_same_budget(tmp_path, monkeypatch):
    from optuna.distributions import FloatDistribution

    from mtl.report import figures

    seen = {}

    def fake(rows, space, metric, mode="max", budget=""):
        seen.update(rows=rows, space=space, budget=budget)

    monkeypatch.setattr(figures, "plot_param_importance", fake)
    monkeypatch.setattr(figures, "plot_validation_curves", lambda rows: None)
    trials = [_trial("a", 0.8, 0.01, lr=0.1), _trial("b", 0.6, 0.01, epochs=2, lr=0.2), _trial("c", 0.7, 0.01, lr=0.3)]
    figures.figures(_summary(tmp_path, trials))
    assert seen["budget"].startswith("epoch 2")
    # a's and c's values at epoch 2, not their final ones
    assert [r["val_acc"] for r in seen["rows"]] == [pytest.approx(0.78), pytest.approx(0.6), pytest.approx(0.68)]
    assert seen["space"] == {"meta.inner_lr": FloatDistribution(0.01, 0.5, log=True)}
    # a trial that diverged at epoch 1 does not shrink the budget: it counts at its worst
    figures.figures(_summary(tmp_path, [*trials, _diverged("d", epoch=1)]))
    assert seen["budget"].startswith("epoch 2") and seen["rows"][-1] == {"meta.inner_lr": 80.0, "val_acc": 0.0}


def test_the_summary_holds_the_searchers_own_distributions(tmp_path):
    """The figures get the space as the searcher draws from it: Ray Tune's conversion to Optuna."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution, json_to_distribution

    from mtl.tune.spec import load_spec
    from mtl.tune.sweep import space_distributions

    path = tmp_path / "s.yaml"
    path.write_text("base: synthetic\nspace:\n  meta.inner_lr: {loguniform: [0.001, 0.1]}\n"
                    "  meta.inner_steps: {int: [3, 12]}\n  hard_tasks.ratio: {choice: [0.0, 0.3333333333]}\n")
    got = {k: json_to_distribution(v) for k, v in space_distributions(load_spec(path, [f"storage={tmp_path}"])).items()}
    assert got == {"meta.inner_lr": FloatDistribution(0.001, 0.1, log=True),
                   "meta.inner_steps": IntDistribution(3, 12),  # inclusive, as the spec writes it
                   "hard_tasks.ratio": CategoricalDistribution([0.0, 0.3333333333])}


def _spec(tmp_path, *over):
    from mtl.tune.spec import load_spec

    return load_spec("search_spaces/smoke.yaml", [f"storage={tmp_path / 'res'}", "mlflow.enabled=false", *over])


def test_a_finished_sweep_is_not_run_again(tmp_path):
    from mtl.files import write_json_atomic
    from mtl.tune.preflight import SPEC_FILE, identity, preflight

    spec = _spec(tmp_path)
    exp = spec.experiment_dir
    exp.mkdir(parents=True)
    write_json_atomic(exp / SPEC_FILE, identity(spec))
    done = _summary(tmp_path, [_trial("a", 0.8, 0.01)], wall_s=445.7)
    done.save(exp / "summary.json")
    written = (exp / "summary.json").read_text()
    for resume in (False, True):
        assert preflight(spec, resume=resume).finished == done
    with pytest.raises(ConfigError, match=r"already ran under .* with other settings: .*meta\.epochs.*--set name="):
        preflight(_spec(tmp_path, "meta.epochs=9"))
    from mtl.tune.sweep import run_sweep

    again = run_sweep(spec)  # starts no Ray, writes nothing
    assert again.reused and again.wall_s == 445.7
    assert (exp / "summary.json").read_text() == written
    assert json.loads(written)["wall_s"] == 445.7


def test_dry_run_checks_the_data_and_shows_what_applies(tmp_path):
    from mtl.tune.preflight import dry_run, dry_run_text
    from mtl.tune.spec import load_spec

    text = dry_run(_spec(tmp_path, "resources.cpu=4096"))
    assert "    synthetic:" in text and "warning: resources.cpu = 4096 is more than this machine's" in text
    spec = tmp_path / "mini.yaml"
    spec.write_text("base: mini_1shot\nconfig: {data: {root: /nonexistent/mini}}\nspace:\n"
                    "  meta.inner_lr: {loguniform: [0.005, 0.5]}\n")
    mini = load_spec(spec, [f"storage={tmp_path / 'res'}"])
    assert "synthetic:" not in dry_run_text(mini) and "dataset: mini" in dry_run_text(mini)
    with pytest.raises(MTLError, match="miniImageNet not found under /nonexistent/mini"):
        dry_run(mini)
