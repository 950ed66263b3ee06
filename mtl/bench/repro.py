"""``python -m mtl.bench.repro PRESET [--set KEY=VALUE ...] [--json PATH] [--out DIR]``: a shortened
reproduction of one packaged preset, timed, its result written as JSON.

The preset runs end to end (pretraining, meta-transfer, the test episodes) with the lengths in
:data:`SHORT` (each only lowers the preset's value), so that a GPU finishes it within minutes:
the figure it measures is an early point of the preset's run, not the reproduction itself (the
full run is ``python -m mtl train PRESET``; the README's reproduction table holds the figures
each preset targets). ``--set`` options come after the shortening and win. ``launch/gpu_repro.sh``
is the prepared GPU run; its JSON goes beside the benchmark results in ``mtl/bench/results/``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# the lengths of a shortened run: few pretraining epochs, 1,000 outer updates, smaller validation
# banks; the test keeps the preset's episode count, so its interval is the preset's
SHORT = {"pretrain.epochs": 4, "pretrain.val_episodes": 200, "meta.epochs": 10, "eval.val_episodes": 200}


def shortened(preset: str, overrides: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The preset's config with :data:`SHORT` applied (never raising a length), then ``overrides``;
    and the shortening that was applied."""
    from mtl.configs import load_config

    full = load_config(preset, list(overrides))
    short = {k: min(v, full.get(k)) for k, v in SHORT.items()}
    return load_config(preset, [*(f"{k}={v}" for k, v in short.items()), *overrides]), short


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "threads": torch.get_num_threads()}


def run(preset: str, overrides: Sequence[str], out: str | Path, json_path: str | None = None) -> dict[str, Any]:
    """Run the shortened preset in ``out``; the JSON record (also written to ``json_path``)."""
    from mtl.experiment import run_experiment
    from mtl.files import write_json_atomic

    cfg, short = shortened(preset, overrides)
    start = time.monotonic()
    ends: dict[str, float] = {}

    def report(m: dict[str, Any]) -> None:
        ends[m["phase"]] = time.monotonic()  # the end of each phase's latest epoch

    res = run_experiment(cfg, out, report=report)
    end = time.monotonic()
    pre_end = ends.get("pretrain", start)  # no pretraining epochs: the store held the backbone
    meta_end = ends.get("meta", pre_end)
    record = {
        "kind": "repro", "preset": preset, "shortened": short, "overrides": list(overrides),
        "note": "a shortened run of the preset: an early point of its training, not the reproduction; "
                f"the full run is: python -m mtl train {preset}",
        "environment": environment(),
        "wall_s": {"total": end - start, "pretrain": pre_end - start, "meta": meta_end - pre_end,
                   "test": end - meta_end},
        "result": {k: res[k] for k in ("test_acc", "test_ci95", "val_acc", "best_epoch", "pretrain_val_acc",
                                       "test_episodes", "protocol")},
        "config": res["config"],
    }
    if json_path:
        write_json_atomic(json_path, record)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    from mtl.configs import packaged_configs
    from mtl.errors import MTLError

    ap = argparse.ArgumentParser(prog="python -m mtl.bench.repro",
                                 description=__doc__.split("\n\n")[0].replace("``", ""))
    ap.add_argument("preset", help=f"a packaged config: {', '.join(packaged_configs())}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field after the shortening, e.g. --set data.root=/data/miniImageNet")
    ap.add_argument("--json", metavar="PATH", help="write the record here")
    ap.add_argument("--out", help="the run folder (default repro-runs/<preset>-<time>)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    out = args.out or f"repro-runs/{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        rec = run(args.preset, args.overrides, out, args.json)
    except MTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = rec["result"]
    print(f"{args.preset} (shortened: {rec['shortened']}): test {100 * r['test_acc']:.2f}% ± "
          f"{100 * r['test_ci95']:.2f} ({r['protocol']}), {rec['wall_s']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
