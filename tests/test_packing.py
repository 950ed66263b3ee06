"""python -m mtl.bench.packing: how many packed trials ran at once, their peak memory, and their
throughput together against one alone, read from Ray Tune's result.json files."""

from __future__ import annotations

import json

import pytest

from mtl.bench.packing import main, most_at_once, packing


def _trial(folder, tid, epochs, peak=2.0):
    """A trial's result.json: (start, seconds, episodes/s) per meta epoch after one pretraining row."""
    d = folder / f"trial_{tid}"
    d.mkdir(parents=True)
    rows = [{"trial_id": tid, "phase": "pretrain", "timestamp": epochs[0][0], "time_this_iter_s": 1.0}]
    rows += [{"trial_id": tid, "phase": "meta", "timestamp": start + secs, "time_this_iter_s": secs,
              "episodes_per_s": rate, "gpu_peak_gb": peak + i} for i, (start, secs, rate) in enumerate(epochs)]
    (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_overlap_peak_memory_and_throughput_leave_the_warm_up_epoch_out(tmp_path):
    alone, packed = tmp_path / "alone", tmp_path / "packed"
    _trial(alone, "a", [(0, 10, 5.0), (10, 2, 40.0), (12, 2, 44.0)])  # the first epoch: warm-up
    # three packed trials: all running from 20 to 30; c starts its steady epochs late and alone-ish
    _trial(packed, "p", [(0, 10, 3.0), (20, 5, 15.0), (25, 5, 17.0)])
    _trial(packed, "q", [(0, 12, 3.0), (20, 5, 16.0), (25, 5, 16.0)], peak=3.0)
    _trial(packed, "r", [(0, 15, 3.0), (20, 5, 14.0), (25, 5, 14.0), (30, 2, 40.0)])  # its last epoch ran alone
    got = packing(alone, packed)
    assert got["trials"] == 3 and got["at_once"] == 3
    assert got["peak_gb"] == {"p": 4.0, "q": 5.0, "r": 5.0} and got["alone_peak_gb"] == 4.0
    assert got["alone_episodes_per_s"] == pytest.approx(42.0)
    assert got["packed_episodes_per_s"] == pytest.approx(16.0 + 16.0 + 14.0)  # inside the shared window only
    assert got["ratio"] == pytest.approx(46.0 / 42.0)
    assert main([str(alone), str(packed), "--json", str(tmp_path / "p.json")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["at_once"] == 3


def test_most_at_once_counts_touching_intervals_as_one_after_another():
    assert most_at_once([(0, 1), (1, 2), (2, 3)]) == 1
    assert most_at_once([(0, 4), (1, 2), (1.5, 3), (3.5, 5)]) == 3


def test_a_sweep_that_did_not_run_is_one_line(tmp_path):
    (tmp_path / "alone").mkdir()
    with pytest.raises(SystemExit, match="must hold one trial"):
        packing(tmp_path / "alone", tmp_path / "alone")
