"""``python -m mtl.bench``: every speed figure of the library and its backbone-only floor, in one run.

Prints a table and (``--json PATH``) writes the figures, their floors, the ratios and the
environment. On a CUDA device it also prints each figure's target with PASS/FAIL; on a CPU
only the ratios. ``--quick`` shrinks every size for a smoke run (seconds on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

BACKBONE_SIZE = {"resnet25": 80, "resnet12": 84, "tiny": 32}
SECTIONS = ("pretrain", "meta", "eval", "memory", "trials")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mtl.bench", description=__doc__.split("\n\n")[0])
    a = ap.add_argument
    a("--device", choices=["auto", "cpu", "cuda"], default="auto")
    a("--backbone", choices=sorted(BACKBONE_SIZE), help="default: resnet25 on CUDA, tiny on a CPU")
    a("--image-size", type=int, help="default: 80 for resnet25, 84 for resnet12, 32 for tiny (16 with --quick)")
    a("--precision", choices=["fp32", "bf16"], help="default: bf16 on CUDA, fp32 on a CPU")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    a("--first-order", action="store_true", help="first-order meta-gradient (default: second order, as configured)")
    a("--quick", action="store_true", help="tiny sizes and one timed call per block: a smoke run")
    a("--trials", type=int, default=0, metavar="N", help="also run N concurrent trials against one alone")
    a("--json", metavar="PATH", help="write the result here (rewritten after every figure)")
    a("--warmup", type=int, help="untimed calls before each measurement (default 3; quick 1)")
    a("--iters", type=int, help="calls per timed block (default: sized from --seconds)")
    a("--repeats", type=int, help="timed blocks per measurement, median reported (default 5; quick 2)")
    a("--seconds", type=float, help="target timed seconds per measurement (default 1.0; quick: 1 call per block)")
    a("--threads", type=int, help="torch CPU threads of the main process")
    a("--only", default=",".join(SECTIONS), help=f"comma list of sections to run: {','.join(SECTIONS)}")
    a("--shots", type=_ints, default=[1, 5])
    a("--steps", type=_ints, default=[20, 100], help="inner steps of the meta-training figures")
    a("--meta-batches", type=_ints, default=[1, 4])
    a("--pretrain-batch", type=int, help="default 128 (quick 32)")
    a("--pretrain-steps", type=int, help="batches per timed pretraining epoch (default 10 on CUDA, 4 on a CPU)")
    a("--eval-episodes", type=int, help="episodes actually evaluated (default 600; quick 32, scaled to 600)")
    a("--eval-batch", type=int, help="episodes per evaluation forward, eval.batch_episodes (default 32)")
    a("--trial-shot", type=int, default=1)
    a("--trial-steps", type=int, default=20, help="inner steps of a trial (the configs' default: 20)")
    a("--trial-meta-batch", type=int, default=2, help="meta-batch of a trial (the configs' default: 2)")
    a("--trial-seconds", type=float, help="timed seconds of each trial (default 15 on CUDA, 5 on a CPU, quick 1.5)")
    a("--trial-threads", type=int, help="torch threads per trial (default: cores / N)")
    return ap


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on the device and on ``--quick``."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible")
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.device = "cuda" if cuda else "cpu"
    q = args.quick
    args.backbone = args.backbone or ("resnet25" if cuda else "tiny")
    args.image_size = args.image_size or (16 if q else BACKBONE_SIZE[args.backbone])
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.warmup = 1 if q and args.warmup is None else 3 if args.warmup is None else args.warmup
    args.repeats = args.repeats or (2 if q else 5)
    args.seconds = args.seconds if args.seconds is not None else (0.0 if q else 1.0)
    args.pretrain_batch = args.pretrain_batch or (32 if q else 128)
    args.pretrain_steps = args.pretrain_steps or (4 if q or not cuda else 10)
    args.eval_episodes = args.eval_episodes or (32 if q else 600)
    args.eval_batch = args.eval_batch or (16 if q else 32)
    args.trial_seconds = args.trial_seconds or (1.5 if q else 15.0 if cuda else 5.0)
    args.only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = args.only - set(SECTIONS)
    if unknown:
        raise SystemExit(f"error: --only: unknown section(s) {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def _log(t0: float, name: str, f: dict[str, Any]) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {f['value']:.4g} {f['unit']}, floor {f['floor']:.4g}, "
          f"ratio {f['ratio']:.3f} ({f['ratio_kind']})", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mtl.bench import figures as F
    from mtl.bench.report import targets, write_json
    from mtl.bench.timing import Plan, device_info, release
    from mtl.bench.trials import concurrent_trials
    from mtl.bench.workload import Sizes, build, describe, overrides

    t0 = time.perf_counter()
    sizes = Sizes(backbone=args.backbone, image_size=args.image_size, precision=args.precision,
                  channels_last=args.channels_last, device=args.device, first_order=args.first_order,
                  pre_batch=args.pretrain_batch, pre_steps=args.pretrain_steps, train_classes=16 if args.quick else 64,
                  eval_batch=args.eval_batch, threads=args.threads)
    over = overrides(sizes)
    w = build(over)
    plan = Plan(args.warmup, args.iters, args.repeats, args.seconds)
    eval_plan = Plan(args.warmup, None, min(args.repeats, 3 if w.env.cuda else 2), args.seconds)
    info = device_info(w.env.device)
    figs: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"schema": 1, "complete": False, "quick": args.quick, "command": sys.argv,
                              "environment": info, "settings": describe(w),
                              "timing_plan": {"warmup": plan.warmup, "iters": plan.iters, "repeats": plan.repeats,
                                              "seconds": plan.seconds}, "figures": figs, "memory": None}

    def done(name: str, f: dict[str, Any]) -> None:
        release(w.env.device)  # the figure's objects are gone: give their cached memory back
        figs[name] = f
        _log(t0, name, f)
        if args.json:
            write_json(result, args.json)

    print(f"[{time.perf_counter() - t0:6.1f}s] {info['device']} {info['name']}, {args.backbone} @ {args.image_size} px,"
          f" {args.precision}, threads {info['threads']}", file=sys.stderr, flush=True)
    if "pretrain" in args.only:
        done("pretrain", F.pretrain(w, plan))
    if "meta" in args.only:
        for shot in args.shots:
            for mb in args.meta_batches:
                for steps in args.steps:
                    done(f"meta_{shot}shot_{steps}steps_mb{mb}", F.meta_train(w, shot, steps, mb, plan))
    if "eval" in args.only:
        for shot in args.shots:
            done(f"eval_{shot}shot_600", F.evaluate(w, shot, args.eval_episodes, eval_plan))
    if "memory" in args.only and w.env.cuda:
        result["memory"] = F.trial_memory(w, args.trial_shot, args.trial_steps, args.trial_meta_batch, plan)
        release(w.env.device)
    if "trials" in args.only and args.trials > 0:
        done(f"trials_{args.trials}", concurrent_trials(
            over, w.state, args.trials, shot=args.trial_shot, steps=args.trial_steps,
            meta_batch=args.trial_meta_batch, seconds=args.trial_seconds, warmup=args.warmup,
            threads=args.trial_threads, total_memory_gb=info.get("total_memory_gb")))
    result["targets"] = targets(figs) if w.env.cuda else None
    result["complete"] = True
    result["elapsed_s"] = time.perf_counter() - t0
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from mtl.bench.report import table, write_json

    args = resolve(parser().parse_args(argv))
    result = run(args)
    print(table(result), flush=True)
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
