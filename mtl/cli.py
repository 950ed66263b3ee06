"""``python -m mtl train CONFIG``, ``python -m mtl evaluate CHECKPOINT`` and ``python -m mtl report STORAGE/NAME``.

Errors in the user's input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from mtl.configs import packaged_configs
from mtl.errors import MTLError

log = logging.getLogger("mtl")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtl", description="Meta-Transfer Learning, one experiment")
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="pretrain -> meta-transfer -> test")
    tr.add_argument("config", help=f"YAML path or packaged config name: {', '.join(packaged_configs())}")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set meta.inner_lr=0.02 (repeatable)")
    tr.add_argument("--out", help="output folder (default runs/<config>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out")
    ev = sub.add_parser("evaluate", help="re-evaluate a meta checkpoint (meta_state.pt)")
    ev.add_argument("checkpoint", help="a run's meta_state.pt, or a sweep's best/meta_state.pt")
    ev.add_argument("--split", choices=["test", "val"], default="test",
                    help="the split to evaluate on (default: test)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override eval.* (episodes, query, inner_steps, protocol, seed) or data.root")
    ev.add_argument("--out", help="write the result JSON (accuracy, CI, per-episode accuracies) here")
    rp = sub.add_parser("report", help="write a finished sweep's report.html (and attach it to its MLflow run)")
    rp.add_argument("sweep", help="the sweep's folder, STORAGE/NAME (it holds summary.json)")
    rp.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the sweep's MLflow run")
    for p in (tr, ev, rp):
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return {"train": _train, "evaluate": _evaluate, "report": _report}[args.command](args)
    except MTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from mtl.configs import load_config
    from mtl.experiment import run_experiment

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = run_experiment(cfg, out, resume=args.resume)
    print(f"val accuracy  {100 * res['val_acc']:.2f}% (best epoch {res['best_epoch']})")
    print(f"test accuracy {100 * res['test_acc']:.2f}% ± {100 * res['test_ci95']:.2f} "
          f"(95% CI over {res['test_episodes']} episodes; {res['protocol']})")
    print(f"results in {out}/result.json")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from mtl.checkpoint import load_checkpoint
    from mtl.config import config_from_dict
    from mtl.files import write_json_atomic
    from mtl.runtime import make_env
    from mtl.trial import load_data, test_checkpoint

    ck = load_checkpoint(args.checkpoint, "meta")
    cfg = config_from_dict(ck["config"]).with_overrides(args.overrides)
    env = make_env(cfg.runtime)
    split = load_data(cfg, env, (args.split,))[args.split]
    res = test_checkpoint(ck, cfg, env, split)
    print(f"{args.split} accuracy {100 * res['acc']:.2f}% ± {100 * res['ci95']:.2f} "
          f"(95% CI over {len(res['accs'])} episodes)")
    if args.out:
        write_json_atomic(args.out, {f"{args.split}_acc": res["acc"], f"{args.split}_ci95": res["ci95"],
                                     "accs": res["accs"], "config": cfg.to_dict()})
    return 0


def _report(args: argparse.Namespace) -> int:
    from mtl.report import attach_to_run, load_summary, write_report

    summary = load_summary(args.sweep)
    path = write_report(summary, args.sweep)
    print(f"report: {path}")
    if not args.no_mlflow:
        try:
            run = attach_to_run(summary, path)
        except Exception as e:  # noqa: BLE001 - the file is written; the store is a convenience here
            log.warning("could not attach the report to the sweep's MLflow run: %s", str(e).splitlines()[0][:200])
        else:
            if run:
                print(f"attached to MLflow run {run}")
    return 0
