"""Hard-task pools and hard tasks for hand-made accuracy tables (mtl-algorithm.md §4.3)."""

import pytest
import torch

from mtl.config import HardTasks, hard_batches_per_window
from mtl.hard_tasks import HardTaskScheduler

G = torch.Generator().manual_seed(0)


def test_failure_class_is_the_lowest_accuracy_with_loss_then_random_ties():
    classes = torch.tensor([[10, 11, 12, 13, 14], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34]])
    acc = torch.tensor([[0.9, 0.2, 0.8, 0.6, 1.0],   # 11 is worst
                        [0.4, 0.4, 0.9, 0.9, 0.4],   # tie 20/21/24 -> highest loss: 24
                        [0.5, 0.5, 0.5, 0.5, 0.5]])  # full tie, equal losses -> random
    loss = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1],
                         [1.0, 1.2, 0.1, 0.1, 1.5],
                         [0.3, 0.3, 0.3, 0.3, 0.3]])
    worst = HardTaskScheduler.failure_classes(classes, acc, loss, 1, torch.Generator().manual_seed(0))
    assert worst[:2, 0].tolist() == [11, 24]
    picks = {int(HardTaskScheduler.failure_classes(classes, acc, loss, 1, torch.Generator().manual_seed(s))[2, 0])
             for s in range(40)}
    assert picks == {30, 31, 32, 33, 34}  # ties beyond the loss are broken at random
    top2 = HardTaskScheduler.failure_classes(classes, acc, loss, 2, G)
    assert top2[0].tolist() == [11, 13] and top2[1].tolist() == [24, 21]


def test_pool_window_and_clearing():
    s = HardTaskScheduler(way=3, window=2, hard_per_window=4)
    cls = torch.tensor([[0, 1, 2], [3, 4, 5]])
    s.record(cls, torch.tensor([[0.1, 0.9, 0.9], [0.9, 0.2, 0.9]]), torch.zeros(2, 3))
    assert s.end_normal_batch() is None and s.pool == {0, 4}
    s.record(cls + 10, torch.tensor([[0.9, 0.9, 0.0], [0.9, 0.9, 0.3]]), torch.zeros(2, 3))
    assert s.end_normal_batch() == ([0, 4, 12, 15], 4)
    assert s.pool == set() and s.count == 0  # the window is cleared, not a stale copy
    # the next window pools only its own failures; too few -> no hard batches
    s.record(cls, torch.tensor([[0.1, 0.9, 0.9], [0.9, 0.9, 0.0]]), torch.zeros(2, 3))
    assert s.end_normal_batch() is None
    s.record(cls, torch.tensor([[0.1, 0.9, 0.9], [0.9, 0.9, 0.0]]), torch.zeros(2, 3))
    assert s.end_normal_batch() is None  # pool {0, 5} < way


def test_hard_tasks_use_distinct_pool_classes():
    s = HardTaskScheduler(way=5, window=1, hard_per_window=1)
    pool = [3, 8, 13, 21, 34, 55, 89]
    rows = s.hard_classes(pool, 200, torch.Generator().manual_seed(0))
    assert rows.shape == (200, 5)
    for r in rows.tolist():
        assert len(set(r)) == 5 and set(r) <= set(pool)
    assert set(rows.flatten().tolist()) == set(pool)


def test_min_pool_and_disabled():
    s = HardTaskScheduler(way=2, window=1, hard_per_window=1, min_pool=3)
    s.record(torch.tensor([[0, 1], [2, 3]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.zeros(2, 2))
    assert s.end_normal_batch() is None  # pool {0, 2} below min_pool 3
    off = HardTaskScheduler(way=2, window=1, hard_per_window=0)
    off.record(torch.tensor([[0, 1]]), torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2))
    assert off.pool == set() and off.end_normal_batch() is None


def test_state_round_trip():
    s = HardTaskScheduler(way=3, window=5, hard_per_window=2)
    s.record(torch.tensor([[0, 1, 2]]), torch.tensor([[0.0, 1.0, 1.0]]), torch.zeros(1, 3))
    s.end_normal_batch()
    t = HardTaskScheduler(way=3, window=5, hard_per_window=2)
    t.load_state_dict(s.state_dict())
    assert t.pool == {0} and t.count == 1


def test_ratio_sets_hard_batches_like_the_authors_default():
    assert hard_batches_per_window(HardTasks(ratio=1 / 3, window=10)) == pytest.approx(5)  # (hard, normal) = (5, 10)
    assert hard_batches_per_window(HardTasks(ratio=0.0)) == 0
    assert hard_batches_per_window(HardTasks(ratio=0.5, window=4)) == pytest.approx(4)


@pytest.mark.parametrize("ratio", [0.03, 0.2, 1 / 3, 0.6])
def test_fractional_hard_batches_meet_the_ratio_in_the_long_run(ratio):
    way, window = 3, 4
    s = HardTaskScheduler(way, window, hard_batches_per_window(HardTasks(ratio=ratio, window=window)))
    normal = hard = 0
    for _ in range(4000):
        s.record(torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 8]]), torch.tensor([[0.0, 1, 1]] * 3),
                 torch.zeros(3, 3))
        normal += 1
        due = s.end_normal_batch()
        if due is not None:
            hard += due[1]
    assert hard / (hard + normal) == pytest.approx(ratio, abs=0.002)
