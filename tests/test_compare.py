"""Did searching help: the baseline trial, the comparisons and seed runs after the search (their
bookkeeping, with stand-in tasks), and the verdict in words (in-process; the smoke sweep in
test_tune_sweep.py runs all of it for real). The report of such a sweep: test_report.py."""

from __future__ import annotations

import json

import pytest

from mtl.results import Baseline, Best, SweepSummary, TrialRow
from mtl.stats import paired
from mtl.tracking.runlog import summary_metrics

# per-episode accuracies of two configs on the same 8 episodes (tests/test_stats.py)
A = [0.60, 0.72, 0.48, 0.88, 0.64, 0.56, 0.80, 0.68]
B = [0.52, 0.72, 0.40, 0.80, 0.64, 0.48, 0.76, 0.56]
DISTRIBUTIONS = {"meta.inner_lr": '{"name": "FloatDistribution", "attributes": {"step": null, "low": 0.02, '
                                  '"high": 0.5, "log": true}}'}


# --- the baseline trial -------------------------------------------------------------------------

def _spec_file(tmp_path, space, tune=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(f"base: synthetic\nconfig: {{meta: {{inner_lr: 0.05}}}}\nspace:\n{space}{tune}")
    return path


def test_the_baseline_is_the_base_config_or_turned_off(tmp_path):
    from mtl.errors import ConfigError
    from mtl.tune.spec import load_spec

    space = "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n  meta.inner_steps: {int: [3, 12]}\n"
    spec = load_spec(_spec_file(tmp_path, space), [f"storage={tmp_path}"])
    assert spec.baseline_point() == {"meta.inner_lr": 0.05, "meta.inner_steps": 10}  # config: override, base value
    assert (spec.tune.compare_top, spec.tune.final_seeds) == (2, 1)
    outside = "  meta.inner_lr: {loguniform: [0.1, 0.5]}\n"
    with pytest.raises(ConfigError, match=r"^space meta.inner_lr: the base config's value 0.05 lies outside "
                                          r"loguniform\[0.1, 0.5\].*tune.baseline: false$"):
        load_spec(_spec_file(tmp_path, outside), [f"storage={tmp_path}"])
    off = load_spec(_spec_file(tmp_path, outside, "tune: {baseline: false}\n"), [f"storage={tmp_path}"])
    assert off.baseline_point() is None


def test_dry_run_states_what_runs_after_the_search(tmp_path):
    from mtl.tune.preflight import dry_run_text
    from mtl.tune.spec import load_spec

    spec = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"),
                     [f"storage={tmp_path}", "tune.final_seeds=3", "tune.num_samples=8", "meta.epochs=5"])
    text = dry_run_text(spec)
    assert "baseline: trial 1 is the base config (meta.inner_lr=0.05)" in text
    assert "the winner, the next 2 and the baseline tested on the same 600 test episodes (at most 4 test passes" in text
    assert ("final seeds: 3 per config: 4 more meta-trainings (2 each for the winner and the baseline, up to 5 epochs "
            "of 25 batches, no pretraining)") in text and "the cost of 4 of the 8 trials run to their end" in text
    off = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.2, 0.5]}\n", "tune: {baseline: false}\n"),
                    [f"storage={tmp_path}"])
    assert "baseline: none (tune.baseline: false)" in dry_run_text(off)
    assert "final seeds: 1 per config (the search's own runs" in dry_run_text(off)


def _row(tid, acc, seq, lr, ck=True, **kw):
    return TrialRow(**{"trial_id": tid, "seq": seq, "config": {"meta.inner_lr": lr}, "best_val_acc": acc,
                       "val_acc": acc, "best_val_ci95": 0.02, "val_ci95": 0.02, "checkpoint": f"/ck/{tid}" if ck else None,
                       "epoch": 4, "planned_epochs": 4, "outcome": "completed", "train_loss": 1.0,
                       "history": [{"epoch": e, "val_acc": acc - 0.01 * (4 - e)} for e in range(1, 5)] if acc else [],
                       **kw})


def test_baseline_row_is_the_first_proposed_trial_with_the_base_values():
    from mtl.tune.summary import mark_baseline

    rows = [_row("b", 0.6, 2, 0.1), _row("a", 0.5, 1, 0.1), _row("c", 0.7, 3, 0.3)]
    marked, found = mark_baseline(rows, {"meta.inner_lr": 0.1})
    assert found == "a"  # b drew the same value later
    assert [r.baseline for r in marked] == [False, True, False]
    never = [_row("x", None, None, 0.1, ck=False), _row("y", 0.7, 2, 0.3)]  # errored before its first report
    assert mark_baseline(never, {"meta.inner_lr": 0.1})[1] == "x"
    unmarked, found = mark_baseline(marked, None)
    assert found is None and not any(r.baseline for r in unmarked)


def test_compared_trials_are_the_winner_the_next_ones_and_the_baseline():
    from mtl.tune.finals import compared

    rows = [_row("base", 0.50, 1, 0.1), _row("w", 0.80, 2, 0.2), _row("r1", 0.78, 3, 0.3), _row("r2", 0.7, 4, 0.4),
            _row("r3", 0.6, 5, 0.5), _row("dead", None, 6, 0.6, ck=False)]
    got = [(t.trial_id, roles) for t, roles in compared(rows, "base", 2)]
    assert got == [("w", ["winner"]), ("r1", ["runner_up"]), ("r2", ["runner_up"]), ("base", ["baseline"])]
    got = [(t.trial_id, roles) for t, roles in compared(rows, "r1", 1)]
    assert got == [("w", ["winner"]), ("r1", ["runner_up", "baseline"])]
    assert [t.trial_id for t, _ in compared(rows, "w", 0)] == ["w"]


# --- the runs after the search, with stand-in tasks ---------------------------------------------

def _fake_tests(tid_accs):
    def compare(items, cache_root, export):
        return {tid: {"acc": sum(tid_accs[tid]) / len(tid_accs[tid]), "ci95": 0.05, "accs": tid_accs[tid],
                      "episodes_key": "same", "val_key": "v", "shared_features": False, "backbone_sha256": "bb",
                      "test_data": "synthetic (test split)",
                      "val_accs": [{"epoch": e, "accs": [a - 0.04 * (3 - e) for a in tid_accs[tid]]}
                                   for e in (1, 2, 3)]}
                for tid, _ in items}
    return compare


class Runner:
    """Runs the calls in-process, counting them by task."""

    def __init__(self, accs):
        self.calls: list[str] = []
        self.compare = _fake_tests(accs)

    def __call__(self, calls, done):
        for name, fn, args in calls:
            self.calls.append(fn.__name__)
            if fn.__name__ == "compare_task":
                done(name, self.compare(*args))
            else:
                _, _, seed = args
                tid = name.split(":")[0]
                done(name, {"seed": seed, "val_acc": 0.6 + seed / 100, "test_acc": 0.55 + seed / 100,
                            "test_ci95": 0.05, "accs": ACCS[tid], "epochs": 4, "backbone_sha256": "bb"})


ACCS = {"w": [*A, *A], "r1": [*B[:4], *A[4:], *A], "r2": [*B, *B], "base": [*B, *B]}


def _finals(tmp_path, runner, seeds=3):
    from mtl.tune.finals import comparison, run_finals
    from mtl.tune.spec import load_spec

    spec = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"),
                     [f"storage={tmp_path / 'res'}", f"tune.final_seeds={seeds}"])
    rows = [_row("base", 0.50, 1, 0.05), _row("w", 0.80, 2, 0.2), _row("r1", 0.78, 3, 0.3),
            _row("r2", 0.7, 4, 0.4, epoch=2, outcome="stopped_early")]
    exp = tmp_path / "exp"
    finals = run_finals(spec, rows, "base", str(tmp_path / "cache"), exp, runner)
    return exp, finals, comparison(finals, spec)


def test_finals_test_each_trial_once_and_rerun_winner_and_baseline_per_seed(tmp_path):
    runner = Runner(ACCS)
    exp, _, (comp, seeds) = _finals(tmp_path, runner)
    # one test pass for all four, then (3 - 1) seeds x (winner, baseline) meta-trainings
    assert runner.calls == ["compare_task"] + ["seed_task"] * 4
    assert [(t.trial_id, t.roles) for t in comp.trials] == [
        ("w", ["winner"]), ("r1", ["runner_up"]), ("r2", ["runner_up"]), ("base", ["baseline"])]
    assert comp.episodes == 16 and comp.trials[0].vs_winner is None
    base = comp.trials[3]
    assert base.vs_winner == paired(ACCS["w"], ACCS["base"]) and base.vs_winner.significant
    assert [p.epoch for p in base.val_vs_winner] == [1, 2, 3]
    assert base.val_vs_winner[0].diff == pytest.approx(paired(ACCS["w"], ACCS["base"]).diff)
    assert seeds.n == 3 and [t.trial_id for t in seeds.trials] == ["w", "base"]
    w = seeds.trials[0]
    assert [r.seed for r in w.runs] == [0, 1, 2] and w.test.n == 3 and w.backbones == ["bb"]
    assert w.reseed_vs_search.diff == 0  # the stand-in re-run scored the same episodes alike
    assert sorted(p.name for p in (exp / "final").iterdir()) == sorted(
        [f"test-{t}.json" for t in ACCS] + [f"seed-{t}-{s}.json" for t in ("w", "base") for s in (1, 2)])

    # a resumed driver finds every result on disk: nothing runs twice, the same comparison comes out
    again = Runner(ACCS)
    _, _, out2 = _finals(tmp_path, again)
    assert again.calls == [] and out2 == (comp, seeds)
    # a half-written result (a crash mid-write) is run again, alone
    (exp / "final" / "seed-w-2.json").write_text("{")
    third = Runner(ACCS)
    _finals(tmp_path, third)
    assert third.calls == ["seed_task"]


def test_a_baseline_stopped_in_pretraining_is_trained_to_its_end_and_paired(tmp_path):
    """A sweep that searches pretraining: ASHA may stop the baseline before meta-training, leaving no
    checkpoint. It is finished after the search (one finish_task) and tested on the winner's episodes,
    so the verdict still pairs the winner with the base config; a resumed driver runs it no more."""
    from mtl.tune.finals import comparison, run_finals
    from mtl.tune.spec import load_spec
    from mtl.tune.summary import comparison_lines

    class Finishing(Runner):
        def __call__(self, calls, done):
            for name, fn, args in [c for c in calls if c[1].__name__ == "finish_task"]:
                self.calls.append(fn.__name__)
                config, _ = args
                assert config["meta"]["inner_lr"] == 0.05  # the base config with the baseline's values
                done(name, {**self.compare([("base", None)], None, None)["base"], "finished": True, "val_acc": 0.55})
            super().__call__([c for c in calls if c[1].__name__ != "finish_task"], done)

    spec = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"), [f"storage={tmp_path}"])
    rows = [_row("base", None, 1, 0.05, ck=False, outcome="stopped_early", stopped_in="pretrain", epoch=2),
            _row("w", 0.80, 2, 0.2), _row("r1", 0.78, 3, 0.3)]
    runner = Finishing(ACCS)
    finals = run_finals(spec, rows, "base", str(tmp_path / "cache"), tmp_path / "exp", runner)
    assert runner.calls == ["compare_task", "finish_task"]
    comp, _ = comparison(finals, spec)
    base = comp.trials[-1]
    assert (base.trial_id, base.roles, base.finished, base.stopped_early, base.val_acc) == (
        "base", ["baseline"], True, False, 0.55)
    assert base.vs_winner == paired(ACCS["w"], ACCS["base"])
    s = SweepSummary(name="x", spec="s.yaml", metric="val_acc", space={}, distributions={}, resources={}, baseline=None, best=None,
                     comparison=comp, final_seeds=None, trials=rows, wall_s=1.0)
    assert any("base (baseline)" in line and "trained to its end after the search" in line
               for line in comparison_lines(s))
    again = Finishing(ACCS)
    run_finals(spec, rows, "base", str(tmp_path / "cache"), tmp_path / "exp", again)
    assert again.calls == []


def test_one_seed_runs_nothing_more(tmp_path):
    runner = Runner(ACCS)
    _, _, (_, seeds) = _finals(tmp_path, runner, seeds=1)
    assert runner.calls == ["compare_task"] and seeds is None


# --- the verdict and the printed table ----------------------------------------------------------

def _summary(tmp_path, accs=ACCS, baseline="base", seeds=3):
    from mtl.tune.summary import mark_baseline, ties, verdict

    exp, finals, (comp, final_seeds) = _finals(tmp_path, Runner(accs), seeds)
    rows, _ = mark_baseline([t for t, _ in finals["chosen"]], {"meta.inner_lr": 0.05} if baseline else None)
    win = rows[0]
    best = Best(trial_id=win.trial_id, config=win.config, val_acc=win.best_val_acc, val_ci95=0.02,
                ties=ties(win, rows), baseline=win.baseline, test_acc=0.7, test_ci95=0.03, test_episodes=16,
                train_data="synthetic", test_data="synthetic (test split)",
                checkpoint=str(exp / "best" / "meta_state.pt"), config_file=str(exp / "best" / "config.yaml"),
                resolved_config={"meta": {"inner_lr": 0.2}})
    s = SweepSummary(name="smoke", spec="search_spaces/smoke.yaml", metric="val_acc",
                     space={"meta.inner_lr": {"loguniform": [0.02, 0.5]}}, distributions=DISTRIBUTIONS,
                     resources={"cpu": 1.0, "gpu": 0.0}, best=best, comparison=comp, final_seeds=final_seeds,
                     trials=rows, wall_s=12.0,
                     baseline=Baseline(trial_id="base", config={"meta.inner_lr": 0.05}) if baseline else None)
    return s.model_copy(update={"verdict": verdict(s)})


def test_the_table_says_in_words_whether_the_winner_beats_each_trial(tmp_path):
    from mtl.tune.summary import format_table

    s = _summary(tmp_path)
    text = format_table(s)
    assert "paired comparison on the same 16 test episodes" in text
    assert "winner vs base (baseline): +6.0 points (95% CI +3.8 to +8.2, p < 0.001)" in text
    assert "winner vs r1: +1.5 points (95% CI -0.2 to +3.2, p = 0.083): not significant" in text
    assert "w (winner) over 3 seeds: test" in text
    assert "r2               test 61.00% ± 5.00 (stopped early by ASHA at epoch 2/4)" in text
    assert "verdict: searching helped: winner vs baseline: +6.0 points" in text
    assert "base baseline" in text  # the trials table marks it
    m = summary_metrics(s)
    assert m["winner_vs_baseline_diff"] == pytest.approx(0.06) and m["winner_vs_baseline_p"] < 0.001
    assert m["baseline_test_acc"] == pytest.approx(sum(ACCS["base"]) / 16) and "winner_seeds_test_sd" in m
    # summary.json is the summary's serialisation: it reads back as the same summary
    s.save(tmp_path / "summary.json")
    assert SweepSummary.load(tmp_path / "summary.json") == s
    assert json.loads((tmp_path / "summary.json").read_text())["trials"][2]["stopped_early"] is True


def test_nothing_learnt_is_said_plainly_and_still_names_the_best_config(tmp_path):
    accs = {**ACCS, "base": [*A, *A[::-1]]}  # the baseline as good as the winner, on other episodes
    s = _summary(tmp_path, accs)
    assert s.verdict.startswith("nothing was learnt by searching: no trial beats the baseline significantly")
    assert "not significant" in s.verdict and s.verdict.endswith("the best config found is meta.inner_lr=0.2")
    assert "no baseline trial" in _summary(tmp_path / "x", baseline=None).verdict


