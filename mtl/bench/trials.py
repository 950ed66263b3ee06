"""Concurrent trials sharing one device, as Ray Tune places four ``gpu=0.25`` trials.

Each trial is a separate process (``multiprocessing`` spawn, so every one has its own CUDA
context, as a Ray worker does) that rebuilds the workload, warms up, waits at a barrier so
that all start together, then runs meta-training outer steps for a fixed time and reports
its episodes/s. After the timed window it runs one validation chunk, so its peak memory is
that of a whole trial (training plus validation). The same worker run alone is the floor:
``ratio = aggregate episodes/s of N trials / episodes/s of one trial alone``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

BARRIER_TIMEOUT_S = 600.0


def _worker(rank: int, spec: dict[str, Any], barrier: Any, queue: Any) -> None:
    try:
        torch.set_num_threads(spec["threads"])
        from mtl.bench.timing import sync
        from mtl.bench.workload import QUERY, WAY, build, shape
        from mtl.episodes import episode_bank
        from mtl.trial import meta_trainer

        state = torch.load(spec["state_path"], map_location="cpu", weights_only=True)
        w = build(spec["overrides"], state)
        cfg = shape(w.cfg, spec["shot"], spec["steps"], spec["meta_batch"])
        dev = w.env.device
        tr = meta_trainer(cfg, w.env, w.data, w.state)
        for _ in range(spec["warmup"]):
            tr.outer_step(tr.sample())
        sync(dev)
        barrier.wait(timeout=BARRIER_TIMEOUT_S)
        start = time.perf_counter()
        steps = 0
        while True:
            tr.outer_step(tr.sample())
            steps += 1
            if time.perf_counter() - start >= spec["seconds"]:
                break
        sync(dev)
        secs = time.perf_counter() - start
        bank = episode_bank(w.val.offsets, WAY, spec["shot"], QUERY, cfg.eval.batch_episodes, cfg.eval.seed)
        tr.evaluate(w.val, bank)  # a validation chunk: part of a trial's peak memory
        out: dict[str, Any] = {"rank": rank, "episodes": steps * spec["meta_batch"], "seconds": secs,
                               "episodes_per_s": steps * spec["meta_batch"] / secs, "threads": torch.get_num_threads()}
        if dev.type == "cuda":
            sync(dev)
            out["peak_alloc_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
            out["peak_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / 2**30
        queue.put(out)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        barrier.abort()
        queue.put({"rank": rank, "error": traceback.format_exc()})


def run_group(n: int, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Start ``n`` trial processes together; their results, in rank order."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, spec, barrier, queue), daemon=True) for r in range(n)]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + BARRIER_TIMEOUT_S + 4 * spec["seconds"] + 120
    finished = False
    try:
        while len(results) < n:
            try:
                results.append(queue.get(timeout=2.0))
            except queue_mod.Empty:
                reported = {r["rank"] for r in results}
                dead = [r for r, p in enumerate(procs) if r not in reported and p.exitcode not in (None, 0)]
                if dead:  # killed without a word (out of memory, a signal): stop waiting for the rest
                    raise RuntimeError(f"trial process {dead[0]} exited with code {procs[dead[0]].exitcode} "
                                       "before reporting") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {n} trial processes did not report in time") from None
        finished = True
    finally:
        for p in procs:
            if not finished and p.is_alive():
                p.terminate()
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    errors = [r["error"] for r in results if "error" in r]
    real = [e for e in errors if "BrokenBarrierError" not in e.splitlines()[-1]] or errors
    if real:
        raise RuntimeError(f"a trial process failed:\n{real[0]}")
    return sorted(results, key=lambda r: r["rank"])


def concurrent_trials(over: list[str], state: dict[str, torch.Tensor], n: int, *, shot: int, steps: int,
                      meta_batch: int, seconds: float, warmup: int, threads: int | None,
                      total_memory_gb: float | None) -> dict[str, Any]:
    """``n`` trials at once against one alone; the figure plus each trial's peak memory."""
    threads = threads or max(1, (os.cpu_count() or 1) // n)
    over = [o for o in over if not o.startswith("runtime.threads=")] + [f"runtime.threads={threads}"]
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as d:
        path = Path(d) / "backbone.pt"
        torch.save(state, path)
        spec = {"overrides": list(over), "state_path": str(path), "shot": shot, "steps": steps,
                "meta_batch": meta_batch, "seconds": seconds, "warmup": warmup, "threads": threads}
        solo = run_group(1, spec)[0]
        group = run_group(n, spec)
    agg = sum(r["episodes_per_s"] for r in group)
    fig: dict[str, Any] = {
        "what": f"{n} concurrent trials (5-way {shot}-shot, {steps} steps, meta-batch {meta_batch}, "
                f"{threads} threads each) vs one alone",
        "value": agg, "floor": solo["episodes_per_s"], "unit": "episodes/s", "ratio": agg / solo["episodes_per_s"],
        "ratio_kind": "throughput", "ratio_def": f"aggregate episodes/s of {n} trials / one trial alone "
        "(higher is better; 1.0 = no gain from sharing)",
        "trials": n, "seconds": seconds, "threads_per_trial": threads, "shot": shot, "inner_steps": steps,
        "meta_batch": meta_batch, "per_trial": group, "solo": solo,
        "floor_def": "the same trial process running alone on the device",
    }
    peaks = [r["peak_alloc_gb"] for r in group if "peak_alloc_gb" in r]
    if peaks and total_memory_gb:
        fig["max_trial_peak_alloc_gb"] = max(peaks)
        fig["quarter_card_gb"] = total_memory_gb / 4
        fig["max_trial_peak_share"] = max(peaks) / total_memory_gb
    return fig
