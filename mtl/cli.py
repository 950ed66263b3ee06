"""``python -m mtl train CONFIG``, ``python -m mtl evaluate CHECKPOINT``,
``python -m mtl predict CHECKPOINT --support DIR --query PATH...`` and ``python -m mtl report STORAGE/NAME``.

Errors in the user's input print one line (``error: ...``) and exit with status 2. Training that
diverges (a loss became non-finite, in either phase) prints one line (``diverged: ...``), writes
the run's result.json marked so and exits with status 3.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from mtl.configs import packaged_configs
from mtl.errors import CheckpointError, ConfigError, MTLError, shown

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
    tr.add_argument("--dry-run", action="store_true",
                    help="print the resolved config and check it against the dataset listing; run and write nothing")
    ev = sub.add_parser("evaluate", help="re-evaluate a meta checkpoint (meta_state.pt)")
    ev.add_argument("checkpoint", help="a run's meta_state.pt, or a sweep's best/meta_state.pt")
    ev.add_argument("--split", choices=["test", "val", "train"], default=None,
                    help="the split of the test set to evaluate on (default: eval.data.split, test)")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override eval.* (episodes, query, inner_steps, protocol, seed; eval.data.dataset, "
                         "eval.data.root for another test set) or data.root")
    ev.add_argument("--out", help="write the result JSON (accuracy, CI, per-episode accuracies) here")
    pr = sub.add_parser("predict", help="classify your own images: adapt to a support folder, label the queries")
    pr.add_argument("checkpoint", help="a run's meta_state.pt, or a sweep's best/meta_state.pt")
    pr.add_argument("--support", required=True, metavar="DIR", help="support images: DIR/<class>/<image files>")
    pr.add_argument("--query", required=True, nargs="+", metavar="PATH",
                    help="query image files, or folders whose images are all queries")
    pr.add_argument("--out", metavar="CSV", help="also write the predictions (and every class's probability) here")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override eval.inner_steps, eval.protocol or runtime.device, e.g. --set runtime.device=cpu")
    rp = sub.add_parser("report", help="write a finished sweep's report.html (and attach it to its MLflow run)")
    rp.add_argument("sweep", help="the sweep's folder, STORAGE/NAME (it holds summary.json)")
    rp.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the sweep's MLflow run")
    for p in (tr, ev, pr, rp):
        p.add_argument("-q", "--quiet", action="store_true", help="only warnings and the result")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        return {"train": _train, "evaluate": _evaluate, "predict": _predict, "report": _report}[args.command](args)
    except MTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130


def _train(args: argparse.Namespace) -> int:
    from mtl.configs import load_config

    cfg = load_config(args.config, args.overrides)  # before torch is imported: a refusal takes a moment
    from mtl.experiment import run_experiment

    if args.dry_run:
        print(dry_run(cfg))
        return 0
    out = Path(args.out or f"runs/{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    res = run_experiment(cfg, out, resume=args.resume)
    if res["diverged"]:
        print(f"diverged: {res['diverged_line']}; nothing was tested; results in {out}/result.json", file=sys.stderr)
        return 3
    print(f"val accuracy  {100 * res['val_acc']:.2f}% (best epoch {res['best_epoch']})")
    print(f"test accuracy {100 * res['test_acc']:.2f}% ± {100 * res['test_ci95']:.2f} "
          f"(95% CI over {res['test_episodes']} episodes; {res['protocol']})")
    print(f"  on {res['test_data']}, trained on {res['train_data']}")
    print(f"results in {out}/result.json")
    return 0


def dry_run(cfg) -> str:
    """The resolved config (``train --dry-run``), after the checks of the episode shapes against the
    dataset's listing that a run makes first (no image is decoded, nothing is written)."""
    from mtl.config import check_against_data
    from mtl.configs import config_text
    from mtl.data import split_stats

    check_against_data(cfg, split_stats(cfg.data))
    return config_text(cfg).rstrip()


def _evaluate(args: argparse.Namespace) -> int:
    from mtl.data.evalset import data_label, eval_data
    from mtl.files import write_json_atomic
    from mtl.phases.evaluate import evaluate_checkpoint
    from mtl.runtime import make_env
    from mtl.trial import load_test

    _check_out(args.out, "eval.json")
    ck = meta_checkpoint(args.checkpoint)
    split_set = [f"eval.data.split={args.split}"] if args.split else []
    cfg = checkpoint_config(ck, [*split_set, *args.overrides], args.checkpoint)
    env = make_env(cfg.runtime)
    with _naming(args.checkpoint):
        res = evaluate_checkpoint(ck, cfg, env, load_test(cfg, env))
    split = cfg.eval.data.split
    test_data, train_data = data_label(eval_data(cfg), split), data_label(cfg.data)
    print(f"{split} accuracy {100 * res['acc']:.2f}% ± {100 * res['ci95']:.2f} "
          f"(95% CI over {len(res['accs'])} episodes) on {test_data}, trained on {train_data}")
    if args.out:
        write_json_atomic(args.out, {f"{split}_acc": res["acc"], f"{split}_ci95": res["ci95"],
                                     "accs": res["accs"], "test_data": test_data, "train_data": train_data,
                                     "config": cfg.to_dict()})
    return 0


# what the trained weights fix: evaluate and predict cannot change these
FIXED = ("model.", "meta.way", "data.dataset", "data.image_size", "data.normalization")
AS_WRITTEN = "use the meta_state.pt a run or a sweep wrote, unedited"


def _check_out(out: str | None, example: str) -> None:
    """``--out`` names a file to write: not an existing folder, nor under a file (before any work)."""
    if out is None:
        return
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; name a file to write, e.g. --out {path / example}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out} lies under {parent}, which is a file, not a folder; name a file in a folder")


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """A CheckpointError raised in the block (weights that do not fit their config) names the file."""
    try:
        yield
    except CheckpointError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None


def meta_checkpoint(path: str) -> dict:
    """A meta checkpoint for evaluate and predict, its weights checked finite at load (before any work):
    a checkpoint holding NaN would report chance accuracy with a zero interval, or NaN probabilities."""
    from mtl.checkpoint import load_checkpoint, nonfinite

    ck = load_checkpoint(path, "meta")
    bad = nonfinite({"backbone": ck.get("backbone"), "best_state": ck["best_state"], "current": ck["current"]})
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights ({bad} has NaN or inf), so it is no "
                              "model; use the meta_state.pt of a run that did not diverge, unedited")
    return ck


def checkpoint_config(ck: dict, overrides: Sequence[str], path: str = "the checkpoint"):
    """The checkpoint's config with ``overrides``, which may change how it is tested but not a field
    its weights fix (:data:`FIXED`: loading would fail, or test another model than was trained). A
    config that is not a mapping or does not validate (an edited file) is a CheckpointError naming ``path``."""
    from mtl.config import config_from_dict
    from mtl.schema import changed, dotted

    raw = ck["config"]
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint {path}: its config is a {type(raw).__name__}, not a mapping of "
                              f"sections; {AS_WRITTEN}")
    try:
        trained = config_from_dict(raw)
    except ConfigError as e:
        raise CheckpointError(f"checkpoint {path}: its config does not validate ({e}); {AS_WRITTEN}") from None
    cfg = trained.with_overrides(overrides)
    old, new = dotted(trained.to_dict()), dotted(cfg.to_dict())
    for key in (k for k in changed(trained.to_dict(), cfg.to_dict()) if k.startswith(FIXED)):
        raise ConfigError(f"{key} = {shown(new[key])} differs from the checkpoint's {shown(old[key])}: the trained "
                          "model fixes model.*, meta.way, data.dataset, data.image_size and data.normalization; drop "
                          f"--set {key} (for another test set: eval.data.dataset, eval.data.root)")
    return cfg


def _predict(args: argparse.Namespace) -> int:
    from mtl.files import write_text_atomic
    from mtl.predict import predict, to_csv
    from mtl.runtime import make_env

    _check_out(args.out, "predictions.csv")
    ck = meta_checkpoint(args.checkpoint)
    cfg = checkpoint_config(ck, args.overrides, args.checkpoint)
    with _naming(args.checkpoint):
        preds = predict(ck, cfg, make_env(cfg.runtime), args.support, args.query)
    width = max(len(p.query) for p in preds)
    for p in preds:
        print(f"{p.query.ljust(width)}  {p.label}  {p.probability:.3f}")
    if args.out:
        write_text_atomic(args.out, to_csv(preds))
    return 0


def _report(args: argparse.Namespace) -> int:
    from mtl.report import REPORT_FILE, load_summary, write_report

    summary = load_summary(args.sweep)
    path = write_report(summary, args.sweep)
    print(f"report: {path}")
    link = summary.mlflow
    if not args.no_mlflow and link is not None and link.parent_run_id:
        from mtl.tracking.runlog import attach

        try:
            attach(link.tracking_uri, link.parent_run_id, REPORT_FILE, path)
        except Exception as e:  # noqa: BLE001 - the file is written; the store is a convenience here
            log.warning("could not attach the report to the sweep's MLflow run: %s", str(e).splitlines()[0][:200])
        else:
            print(f"attached to MLflow run {link.parent_run_id}")
    return 0
