#!/usr/bin/env python
"""Search MTL hyperparameters with Ray Tune (Optuna + ASHA), logging every trial to MLflow.

    python launch/tune.py search_spaces/mini1shot.yaml [--address ADDR] [--storage DIR]
                          [--resume] [--set key=value ...] [--dry-run]

Without --address a local Ray starts; with it (host:port of a running head, or "auto")
the sweep joins that cluster. ``ray job submit --working-dir . -- python launch/tune.py ...``
runs it on a cluster. Errors in the input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mtl.errors import MTLError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="launch/tune.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="sweep spec YAML, e.g. search_spaces/mini1shot.yaml")
    ap.add_argument("--address", help="Ray cluster to join (host:port or auto); default: start a local Ray")
    ap.add_argument("--storage", help="folder for sweep results and the pretraining cache (overrides the spec)")
    ap.add_argument("--resume", action="store_true", help="continue the sweep of the same name after an interruption")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec setting (tune.num_samples=8) or a base-config field (meta.epochs=5)")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved sweep and start nothing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        from mtl.tune.spec import load_spec
        from mtl.tune.study import describe, format_table, run_sweep

        overrides = list(args.overrides) + ([f"storage={args.storage}"] if args.storage else [])
        spec = load_spec(args.spec, overrides)
        if args.dry_run:
            print(describe(spec))
            return 0
        summary = run_sweep(spec, address=args.address, resume=args.resume)
    except MTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(summary))
    print(f"summary: {spec.experiment_dir / 'summary.json'}")
    if summary.get("mlflow"):
        print(f"compare trials: mlflow ui --backend-store-uri {summary['mlflow']['tracking_uri']}")
    return 0 if summary["best"] else 1


if __name__ == "__main__":
    sys.exit(main())
