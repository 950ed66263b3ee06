"""``python -m mtl.bench.search [--out DIR] [--set KEY=VALUE ...] [--json PATH]``: does
searching pretraining help, and what does it cost?

Two sweeps on the synthetic set from one deliberately poor base pretraining (:data:`POOR`: a 25th
of the preset's learning rate), at the same trial budget: (a) ``search_spaces/smoke.yaml``, the
meta-level knobs only, on the shared poor pretraining; (b) ``search_spaces/smoke_pretrain.yaml``,
pretraining's learning rate, weight decay and length searched with them, each pretraining epoch
reported to ASHA. For each it prints the CPU time it took (the machine's: run it on a quiet one),
the pretraining epochs it ran and those ASHA saved (stopped trials' unrun epochs), the winner's
paired test difference against the baseline (the base config) with its 95% interval, and whether
the race separated the winner from the runner-up; then (b)'s winner against (a)'s on the same test
episodes. A claim that searching pretraining helps stands on that last interval.
A benchmark, not a test: minutes of CPU, figures to commit (README, "Searching pretraining").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {"meta_only": ROOT / "search_spaces" / "smoke.yaml", "with_pretraining": ROOT / "search_spaces" / "smoke_pretrain.yaml"}
POOR = ["pretrain.lr=0.002"]  # the synthetic preset pretrains at 0.05 (probe 0.73 after 8 epochs; 0.002: 0.60)
BUDGET = 8  # trials of each sweep (smoke_pretrain.yaml's own; smoke.yaml runs 6 on its own)


def _cpu_s() -> float:
    """CPU seconds the whole machine has spent so far (user, nice and system time in ``/proc/stat``;
    Linux). Per-process accounting misses Ray's workers: the raylet does not wait for the workers of
    finished trials, so their time is counted by no live process. Run the benchmark on a quiet
    machine: whatever else runs is counted too."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:4]
    return sum(int(x) for x in fields) / os.sysconf("SC_CLK_TCK")


def _test_accs(summary: Any) -> list[float]:
    lines = (summary.best.folder / "best" / "test_accs.csv").read_text().splitlines()[1:]
    return [float(line.split(",")[1]) for line in lines]


def sweep(name: str, path: Path, out: Path, overrides: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """Run one sweep with its own local Ray; its figures and its summary."""
    import ray

    from mtl.tune.spec import load_spec
    from mtl.tune.sweep import run_sweep

    spec = load_spec(path, [*POOR, f"name=bench-{name}", f"storage={out}", "mlflow.enabled=false",
                            f"tune.num_samples={BUDGET}", *overrides])
    before = _cpu_s()
    summary = run_sweep(spec)
    cpu = _cpu_s() - before  # before the shutdown: Ray's processes are still there to count
    ray.shutdown()
    rows = summary.trials
    planned = sum(t.planned_pretrain_epochs or 0 for t in rows if t.stopped_in == "pretrain")
    ran = sum(len(t.pretrain_history) for t in rows)
    base = summary.comparison.entry("baseline") if summary.comparison else None
    d = base.vs_winner if base else None
    if base is not None and base.finished:  # the baseline ASHA stopped ran its remaining pretraining after all
        row = next(t for t in rows if t.trial_id == base.trial_id)
        planned -= (row.planned_pretrain_epochs or 0) - len(row.pretrain_history)
    return {
        "spec": str(path), "trials": len(rows), "cpu_s": round(cpu, 1), "wall_s": round(summary.wall_s, 1),
        "stopped_in_pretraining": sum(t.stopped_in == "pretrain" for t in rows),
        "pretrain_epochs_reported": ran if spec.searches_pretraining else None,
        "pretrain_epochs_saved": planned - sum(len(t.pretrain_history) for t in rows if t.stopped_in == "pretrain")
        if spec.searches_pretraining else None,
        "winner": summary.best.trial_id if summary.best else None,
        "winner_config": summary.best.config if summary.best else None,
        "winner_test_acc": summary.best.test_acc if summary.best else None,
        "winner_vs_baseline": d.model_dump() if d else None,
        "baseline_finished_after_search": bool(base and base.finished),
        "race_separated": summary.race.separated if summary.race else None,
        "race_says": summary.race.says if summary.race else None,
        "verdict": summary.verdict,
    }, summary


def run(out: Path, overrides: Sequence[str]) -> dict[str, Any]:
    from mtl.stats import paired

    record: dict[str, Any] = {"poor_base": POOR, "overrides": list(overrides), "sweeps": {}}
    summaries = {}
    for name, path in SWEEPS.items():
        record["sweeps"][name], summaries[name] = sweep(name, path, out, overrides)
    a, b = summaries["meta_only"], summaries["with_pretraining"]
    if a.best and b.best:
        record["pretraining_winner_vs_meta_only_winner"] = paired(_test_accs(b), _test_accs(a)).model_dump()
    return record


def lines(record: dict[str, Any]) -> list[str]:
    """The record as the terminal prints it."""
    from mtl.results import pct
    from mtl.stats import Paired, in_words

    out = [f"from a poor base pretraining ({', '.join(record['poor_base'])}), the same trial budget:"]
    for name, s in record["sweeps"].items():
        out.append(f"{name} ({Path(s['spec']).name}): {s['trials']} trials, {s['cpu_s'] / 60:.1f} CPU minutes "
                   f"({s['wall_s'] / 60:.1f} minutes wall)")
        if s["pretrain_epochs_reported"] is not None:
            out.append(f"  pretraining: {s['pretrain_epochs_reported']} epochs reported, {s['stopped_in_pretraining']} "
                       f"trial(s) stopped by ASHA in pretraining, saving {s['pretrain_epochs_saved']} epochs")
        d = s["winner_vs_baseline"]
        out.append(f"  winner {s['winner']} test {pct(s['winner_test_acc'])}; " + (
            in_words("winner vs baseline", Paired(**d)) if d else s["verdict"]))
        if s.get("baseline_finished_after_search"):
            out.append("  the baseline, stopped by ASHA in pretraining, was trained to its end after the search to be "
                       "tested (counted in the CPU time; its remaining pretraining epochs are not counted as saved)")
        out.append(f"  race: {s['race_says']}")
    d = record.get("pretraining_winner_vs_meta_only_winner")
    if d:
        out.append(in_words("with-pretraining winner vs meta-only winner, same test episodes", Paired(**d)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mtl.bench.search", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="folder for the two sweeps (default: a temporary one)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting of both sweeps, e.g. --set tune.num_samples=4")
    ap.add_argument("--json", help="also write the record here")
    args = ap.parse_args(argv)
    from mtl.tune.cluster import LOG_DATEFMT, LOG_FORMAT, configure_output

    configure_output(False)
    import logging

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT)
    with tempfile.TemporaryDirectory() as tmp:
        record = run(Path(args.out or tmp).resolve(), args.overrides)
    print("\n".join(lines(record)))
    if args.json:
        from mtl.files import write_json_atomic

        write_json_atomic(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
