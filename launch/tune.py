#!/usr/bin/env python
"""Search MTL hyperparameters with Ray Tune (Optuna + ASHA), logging every trial to MLflow.

    python launch/tune.py search_spaces/mini1shot.yaml [--address ADDR] [--storage DIR]
                          [--resume] [--set key=value ...] [--dry-run] [--verbose]

Without --address a local Ray starts; with it (host:port of a running head, or "auto")
the sweep joins that cluster. ``ray job submit --working-dir . -- python launch/tune.py ...``
runs it on a cluster. Errors in the input print one line and exit with status 2. Ctrl+C or
SIGTERM (``ray job stop``, a batch scheduler) stop the sweep with its state saved, print the
command that resumes it and exit with status 130; after a crash (SIGKILL) --resume continues
from Ray Tune's last state snapshot. The terminal shows each trial's epochs and outcome and the
sweep's progress with an ETA; --verbose adds Ray's, Ray Tune's and Optuna's own output.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mtl.errors import MTLError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="launch/tune.py", description=__doc__.split("\n\n")[0])
    specs = sorted(p.name for p in (Path(__file__).resolve().parents[1] / "search_spaces").glob("*.yaml"))
    ap.add_argument("spec", help=f"sweep spec YAML; ready ones in search_spaces/: {', '.join(specs)}")
    ap.add_argument("--address", help="Ray cluster to join (host:port or auto); default: start a local Ray")
    ap.add_argument("--storage", help="folder for sweep results and the pretraining cache (overrides the spec)")
    ap.add_argument("--resume", action="store_true", help="continue the sweep of the same name after an interruption")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec setting (tune.num_samples=8) or a base-config field (meta.epochs=5)")
    ap.add_argument("--dry-run", action="store_true", help="print the resolved sweep and start nothing")
    ap.add_argument("--verbose", action="store_true", help="also show Ray's, Ray Tune's and Optuna's own output")
    args = ap.parse_args(argv)
    from mtl.tune.cluster import LOG_DATEFMT, LOG_FORMAT, configure_output

    configure_output(args.verbose)  # before anything imports ray
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt=LOG_DATEFMT)
    from mtl.tune import SweepInterrupted
    from mtl.tune.cluster import check_local_resources
    from mtl.tune.spec import load_spec

    spec = None
    try:
        overrides = list(args.overrides) + ([f"storage={args.storage}"] if args.storage else [])
        spec = load_spec(args.spec, overrides)
        from mtl.tune.preflight import dry_run  # torch: after the cheap checks
        from mtl.tune.summary import format_table, next_steps
        from mtl.tune.sweep import run_sweep

        if args.dry_run:
            print(dry_run(spec))
            return 0
        if args.address is None and not os.environ.get("RAY_ADDRESS"):  # ray.init would join RAY_ADDRESS
            check_local_resources(spec)
        summary = run_sweep(spec, address=args.address, resume=args.resume)
    except MTLError as e:  # raised in a Ray task: Ray's RayTaskError subclasses it; its cause holds the line
        print(f"error: {getattr(e, 'cause', None) or e}", file=sys.stderr)
        return 2
    except SweepInterrupted as e:
        again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--resume"]
        cmd = shlex.join([sys.executable, sys.argv[0], *again, "--resume"])
        print(f"error: {e}; continue it with: {cmd}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted; run the same command again, with --resume if the sweep folder exists",
              file=sys.stderr)
        return 130
    except Exception as e:  # a full disk met by code that is not ours (Ray Tune's state, MLflow's SQLite store)
        full = _disk_full(e, spec)
        if full is None:
            raise
        print(f"error: {full}", file=sys.stderr)
        return 2
    if summary.reused:
        print(f"sweep {spec.name} finished already; nothing was run (--set name=<new name> starts another). "
              "Its summary:")
    print(format_table(summary))
    print(next_steps(summary) if summary.best else f"summary: {spec.experiment_dir / 'summary.json'}")
    if summary.mlflow and summary.mlflow.ui_url:
        print(f"then open:          {summary.mlflow.ui_url}")
    return 0 if summary.best else 1


def _disk_full(error: Exception, spec) -> Exception | None:
    """``error`` as the one line of a full disk (:func:`mtl.files.disk_full_of`) where the sweep writes:
    its storage, the data cache, a SQLite MLflow store; None if it is not about space."""
    if spec is None:
        return None
    from mtl.data.cache import cache_dir
    from mtl.files import disk_full_of
    from mtl.tracking.uri import resolve_tracking_uri

    where = [spec.storage, cache_dir(spec.base.data)]
    try:
        uri = resolve_tracking_uri(spec.settings.mlflow.tracking_uri) if spec.settings.mlflow.enabled else ""
    except MTLError:
        uri = ""
    if uri.startswith("sqlite:///"):
        where.append(Path(uri.removeprefix("sqlite:///").partition("?")[0]))
    return disk_full_of(error, *where, infer=True)


if __name__ == "__main__":
    sys.exit(main())
