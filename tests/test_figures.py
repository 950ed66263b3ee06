"""The figures of a finished sweep (report.html and MLflow's parent run): validation curves and
hyperparameter importance from Optuna's evaluator over the searcher's own distributions."""

import io

from mtl.report.figures import plot_param_importance, plot_validation_curves
from mtl.results import TrialRow


def test_validation_curves_figure():
    rows = [
        TrialRow(trial_id="a", outcome="completed", history=[{"epoch": e, "val_acc": 0.3 + 0.05 * e} for e in range(1, 5)]),
        TrialRow(trial_id="b", outcome="stopped_early", history=[{"epoch": 1, "val_acc": 0.2}]),  # stopped by ASHA
        TrialRow(trial_id="c", outcome="errored"),
    ]
    fig = plot_validation_curves(rows)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "val_acc"
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles["a"] == "-" and styles["b"] == "--"
    fig.savefig(io.BytesIO(), format="png")


def test_param_importance_figure_and_too_few_trials():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rows = [{"meta.inner_lr": lr, "hard_tasks.enabled": i % 2 == 0, "meta.way": 5, "val_acc": 10 * lr + i % 2}
            for i, lr in enumerate([0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.05, 0.002])]
    space = {"meta.inner_lr": FloatDistribution(0.001, 0.2, log=True),
             "hard_tasks.enabled": CategoricalDistribution([True, False]), "meta.way": IntDistribution(2, 20)}
    fig = plot_param_importance(rows, space, "val_acc")
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert sorted(labels) == ["hard_tasks.enabled", "meta.inner_lr"]  # meta.way never varies
    assert "from 8 trials" in fig.axes[0].get_title()
    assert plot_param_importance(rows[:2], space, "val_acc") is None
    assert plot_param_importance(rows, {"meta.way": space["meta.way"]}, "val_acc") is None
    # a value its distribution does not hold (outside the range) leaves that trial out, not the figure
    fig = plot_param_importance([*rows, {**rows[0], "meta.inner_lr": 5.0}], space, "val_acc")
    assert "from 8 trials" in fig.axes[0].get_title()
