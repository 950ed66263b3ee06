"""``python -m mtl.bench [--set KEY=VALUE ...] [--quick] [--json PATH]``: every speed figure of the library
and its backbone-only floor, in one run.

Prints a table and (``--json PATH``) writes the figures, their floors, the ratios, the environment
and the resolved settings. On a CUDA device it also prints each figure's target with PASS/FAIL; on
a CPU only the ratios. ``--quick`` (``--set quick=true``) shrinks every size for a smoke run
(seconds on a CPU). Every other setting is a key of :class:`~mtl.bench.settings.BenchSettings`,
e.g. ``--set backbone=resnet25 --set meta.shots=[1,5] --set trials.n=4``; ``--help`` lists them
all. A bad setting prints one line (``error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from mtl.bench.settings import BenchSettings, keys_help, load_settings, resolve
from mtl.errors import ConfigError, MTLError
from mtl.schema import as_mapping


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message}; give settings as --set KEY=VALUE (python -m mtl.bench --help lists them)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m mtl.bench", description=__doc__.split("\n\n")[0].replace("``", ""),
                 epilog=keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a setting listed below, e.g. --set trials.n=4 --set meta.shots=[1,5] (repeatable)")
    ap.add_argument("--quick", action="store_true", help="smoke sizes, one timed call per block: --set quick=true")
    ap.add_argument("--json", metavar="PATH", help="write the result here (rewritten after every figure)")
    return ap


def settings(argv: Sequence[str]) -> tuple[BenchSettings, str | None]:
    """The resolved settings and the JSON path of a command line (a ConfigError if either is bad)."""
    args = parser().parse_args(argv)
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not of the form KEY=VALUE, e.g. --set trials.n=4")
    over = as_mapping(args.overrides)
    if args.quick:
        over["quick"] = True
    return resolve(load_settings(over)), args.json


def _log(t0: float, name: str, f: dict[str, Any]) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {f['value']:.4g} {f['unit']}, floor {f['floor']:.4g}, "
          f"ratio {f['ratio']:.3f} ({f['ratio_kind']})", file=sys.stderr, flush=True)


def run(s: BenchSettings, json_path: str | None = None, command: Sequence[str] = ()) -> dict[str, Any]:
    """Every figure ``s`` (resolved, :func:`~mtl.bench.settings.resolve`) asks for; the result as a dict,
    also written to ``json_path`` after every figure."""
    from mtl.bench import figures as F
    from mtl.bench.report import targets
    from mtl.bench.timing import Plan, device_info, release
    from mtl.bench.trials import concurrent_trials
    from mtl.bench.workload import build, overrides, workload_settings
    from mtl.files import write_json_atomic

    t0 = time.perf_counter()
    over = overrides(s)
    w = build(over)
    tm = s.timing
    plan = Plan(tm.warmup, tm.iters, tm.repeats, tm.seconds)
    eval_plan = Plan(tm.warmup, None, min(tm.repeats, 3 if w.env.cuda else 2), tm.seconds)
    info = device_info(w.env.device)
    figs: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] = {"schema": 1, "complete": False, "quick": s.quick, "command": list(command),
                              "environment": info, "settings": workload_settings(w), "bench_settings": s.to_dict(),
                              "timing_plan": {"warmup": plan.warmup, "iters": plan.iters, "repeats": plan.repeats,
                                              "seconds": plan.seconds}, "figures": figs, "memory": None}

    def done(name: str, f: dict[str, Any]) -> None:
        release(w.env.device)  # the figure's objects are gone: give their cached memory back
        figs[name] = f
        _log(t0, name, f)
        if json_path:
            write_json_atomic(json_path, result)

    print(f"[{time.perf_counter() - t0:6.1f}s] {info['device']} {info['name']}, {s.backbone} @ {s.image_size} px,"
          f" {s.precision}, threads {info['threads']}", file=sys.stderr, flush=True)
    t = s.trials
    if "pretrain" in s.only:
        done("pretrain", F.pretrain(w, plan))
    if "meta" in s.only:
        for shot in s.meta.shots:
            for mb in s.meta.meta_batches:
                for steps in s.meta.steps:
                    done(f"meta_{shot}shot_{steps}steps_mb{mb}", F.meta_train(w, shot, steps, mb, plan))
    if "eval" in s.only:
        for shot in s.eval.shots:
            done(f"eval_{shot}shot_600", F.evaluate(w, shot, s.eval.episodes, eval_plan))
    if "memory" in s.only and w.env.cuda:
        result["memory"] = F.trial_memory(w, t.shot, t.steps, t.meta_batch, plan)
        release(w.env.device)
    if "trials" in s.only and t.n > 0:
        done(f"trials_{t.n}", concurrent_trials(
            over, w.state, t.n, shot=t.shot, steps=t.steps, meta_batch=t.meta_batch, seconds=t.seconds,
            warmup=tm.warmup, threads=t.threads, total_memory_gb=info.get("total_memory_gb")))
    result["targets"] = targets(figs) if w.env.cuda else None
    result["complete"] = True
    result["elapsed_s"] = time.perf_counter() - t0
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from mtl.bench.report import table
    from mtl.files import write_json_atomic

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        s, json_path = settings(argv)
        result = run(s, json_path, ["python", "-m", "mtl.bench", *argv])
    except MTLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(result), flush=True)
    if json_path:
        write_json_atomic(json_path, result)
        print(f"wrote {json_path}", file=sys.stderr)
    return 0
