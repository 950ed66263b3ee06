"""The finalists' race (mtl.tune.race): fresh validation episodes disjoint from the bank that
selected them, the leader by its race accuracy (also where the search ranked another first), the
paired difference to the leader and whether the winner stands apart, kept for a resumed driver."""

from __future__ import annotations

import pytest
import torch

from mtl.episodes import episode_bank, task_key
from mtl.results import TrialRow
from mtl.stats import paired
from mtl.tune.race import finalists, ranked, run_race
from mtl.tune.tasks import Evaluated


def test_the_race_bank_holds_no_task_of_the_selection_bank():
    """Five classes of two images, 1-shot 1-query: 32 distinct tasks, so banks of 20 and 10 share some
    unless the second is drawn to exclude the first."""
    offsets = torch.arange(0, 11, 2)
    selection = episode_bank(offsets, 5, 1, 1, 20, seed=1)
    seen = {task_key(selection, i) for i in range(len(selection))}
    plain = episode_bank(offsets, 5, 1, 1, 10, seed=2)
    assert any(task_key(plain, i) in seen for i in range(len(plain)))  # drawn blindly, they meet
    fresh = episode_bank(offsets, 5, 1, 1, 10, seed=2, exclude=selection)
    assert len(fresh) == 10 and not any(task_key(fresh, i) in seen for i in range(len(fresh)))
    again = episode_bank(offsets, 5, 1, 1, 10, seed=2, exclude=selection)  # a fixed bank: the same every time
    assert torch.equal(again.support, fresh.support) and torch.equal(again.query, fresh.query)


def _row(tid, best, seq):
    return TrialRow(trial_id=tid, seq=seq, config={"meta.inner_lr": best}, best_val_acc=best, val_acc=best,
                    best_val_ci95=0.02, checkpoint=f"/ck/{tid}", epoch=4, planned_epochs=4, outcome="completed")


# per-episode race accuracies (5 queries per class, steps of 0.04) of three finalists on the same 12
# episodes: b beats a on every episode but one, a and c are tied episode by episode
A = [0.60, 0.72, 0.48, 0.88, 0.64, 0.56, 0.80, 0.68, 0.60, 0.72, 0.48, 0.88]
B = [a + 0.08 for a in A[:11]] + [A[11]]
C = [a + (0.04 if i % 2 else -0.04) for i, a in enumerate(A)]


class Runner:
    """Runs the race task in-process with stand-in accuracies, counting the finalists it raced."""

    def __init__(self, accs):
        self.accs, self.raced = accs, []

    def __call__(self, calls, done):
        for name, fn, (items, _, n) in calls:
            assert fn.__name__ == "race_task"
            self.raced += [tid for tid, _ in items]
            done(name, {tid: Evaluated(acc=sum(self.accs[tid]) / len(self.accs[tid]), ci95=0.03,
                                       accs=self.accs[tid], episodes_key=f"race {n}").model_dump()
                        for tid, _ in items})


class Spec:
    class tune:  # noqa: N801 - the shape of SweepSpec.tune
        race_top, race_episodes = 3, 12


def test_the_leader_of_the_race_wins_where_the_search_ranked_another_first(tmp_path):
    rows = [_row("a", 0.80, 1), _row("b", 0.78, 2), _row("c", 0.77, 3), _row("d", 0.70, 4)]
    assert [t.trial_id for t in finalists(rows, 3)] == ["a", "b", "c"]  # the search's top three
    runner = Runner({"a": A, "b": B, "c": C})
    race = run_race(Spec, rows, "/cache", tmp_path, runner)
    assert runner.raced == ["a", "b", "c"] and race.episodes == 12
    # b leads the race, though a had the best validation accuracy in the search
    assert [e.trial_id for e in race.trials] == ["b", "a", "c"]
    assert race.trials[0].vs_leader is None and race.trials[0].selection_val_acc == 0.78
    assert race.trials[1].vs_leader == paired(B, A) and race.trials[2].vs_leader == paired(B, C)
    assert race.separated is True and race.says.startswith("the winner is separated from the runner-up")
    # the sweep's order: the race's finalists first, in its order, then the others
    order = ranked(rows, race)
    assert [(t.trial_id, t.rank) for t in order] == [("b", 1), ("a", 2), ("c", 3), ("d", 4)]
    from mtl.tune.finals import compared

    assert [(t.trial_id, roles) for t, roles in compared(order, "d", 1)] == [
        ("b", ["winner"]), ("a", ["runner_up"]), ("d", ["baseline"])]

    # kept under final/: a resumed driver races no finalist twice, and gets the same race
    again = Runner({"a": A, "b": B, "c": C})
    assert run_race(Spec, rows, "/cache", tmp_path, again) == race and again.raced == []
    (tmp_path / "final" / "race-c.json").write_text("{")  # cut short by a crash: raced again, alone
    third = Runner({"a": A, "b": B, "c": C})
    run_race(Spec, rows, "/cache", tmp_path, third)
    assert third.raced == ["c"]


def test_a_runner_up_the_race_cannot_tell_apart_is_a_tie(tmp_path):
    rows = [_row("a", 0.80, 1), _row("c", 0.79, 2)]
    race = run_race(Spec, rows, "/cache", tmp_path, Runner({"a": A, "c": C}))
    d = race.trials[1].vs_leader
    assert d.ci_low < 0 < d.ci_high and race.separated is False
    assert race.says.startswith("the winner is tied with the runner-up on validation") and "cannot tell" in race.says
    alone = run_race(Spec, rows[:1], "/cache", tmp_path / "one", Runner({"a": A}))
    assert alone.separated is None and alone.says.startswith("one finalist")


def test_no_race_keeps_the_searchs_order(tmp_path):
    class NoRace(Spec):
        class tune:  # noqa: N801
            race_top, race_episodes = 0, 12

    rows = [_row("b", 0.78, 2), _row("a", 0.80, 1)]
    assert run_race(NoRace, rows, "/cache", tmp_path, Runner({})) is None
    assert [(t.trial_id, t.rank) for t in ranked(rows, None)] == [("a", 1), ("b", 2)]


@pytest.mark.parametrize("bad", ["tune.race_episodes=1", "tune.race_top=-1"])
def test_race_settings_are_checked(tmp_path, bad):
    from mtl.errors import ConfigError
    from mtl.tune.spec import load_spec

    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        load_spec("search_spaces/smoke.yaml", [f"storage={tmp_path}", bad])
