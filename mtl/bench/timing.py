"""Timing primitives and device facts for the benchmark.

A measurement runs ``warmup`` calls (the last one timed alone, synchronised, to size the
timed blocks), then ``repeats`` blocks of ``iters`` calls each; the device is synchronised
before and after every block, so a block's time covers all the work it queued, while calls
inside a block may overlap host and device work as they do in training. The figure is the
median over blocks of the time per call. A figure and its floor are timed in alternating
blocks (:func:`interleaved`), so both see the same load on a shared machine. Nothing here
touches a CUDA API unless the device is a CUDA device.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Plan:
    """How long and how often to time one measurement."""

    warmup: int = 3  # untimed calls first (compilation, cudnn autotuning, allocator growth)
    iters: int | None = None  # calls per timed block; None: sized so all blocks take ``seconds``
    repeats: int = 5  # timed blocks; the median is reported
    seconds: float = 1.0  # target time of all timed blocks together (when ``iters`` is None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], device: torch.device, plan: Plan) -> dict[str, Any]:
    """Median seconds per call of ``fn`` (see the module docstring for the protocol)."""
    return interleaved(device, {"fn": (fn, plan)})["fn"]


def interleaved(device: torch.device, entries: dict[str, tuple[Callable[[], Any], Plan]]) -> dict[str, dict[str, Any]]:
    """Time several functions in alternating blocks (a block of each per repeat), so that a
    figure and its floor see the same machine state; a shared CPU's load changes by the second.
    Each entry has its own warm-up and block size; the number of repeats is the largest asked."""
    iters: dict[str, int] = {}
    for name, (fn, plan) in entries.items():
        for _ in range(max(plan.warmup - 1, 0)):
            fn()
        n = plan.iters
        if plan.warmup > 0 or n is None:
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            once = time.perf_counter() - t
            if n is None:
                n = int(min(10_000, max(1, round(plan.seconds / max(plan.repeats, 1) / max(once, 1e-9)))))
        iters[name] = n
    times: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(max(max(p.repeats for _, p in entries.values()), 1)):
        for name, (fn, _) in entries.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(iters[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t) / iters[name])
    return {name: {"s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "iters": iters[name],
                   "repeats": len(ts)} for name, ts in times.items()}


class PeakMemory:
    """Peak allocated (and reserved) CUDA memory of the code inside the ``with``; None on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.allocated_gb: float | None = None
        self.reserved_gb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.allocated_gb = torch.cuda.max_memory_allocated(self.device) / 2**30
            self.reserved_gb = torch.cuda.max_memory_reserved(self.device) / 2**30


def release(device: torch.device) -> None:
    """Give cached blocks back to the driver (between measurements, before spawning trials)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, Any]:
    """What ran the benchmark: device, software versions, threads, date."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_name(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), total_memory_gb=props.total_memory / 2**30,
                    multiprocessors=props.multi_processor_count)
    else:
        info["name"] = info["cpu"]
    return info
