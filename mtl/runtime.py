"""Device, precision and seeding, derived from ``cfg.runtime`` and returned, never stored globally."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch

from mtl.config import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Env:
    """Where and how a trainer computes: device, precision, memory format, progress output, seed."""

    device: torch.device
    precision: str
    channels_last: bool
    progress: bool
    seed: int = 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for the backbone when asked for; fp32 otherwise."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the compute device (augmentation draws happen there)."""
        return torch.Generator(device=self.device).manual_seed(seed)


def make_env(rt: Runtime) -> Env:
    if rt.device == "cuda" and not torch.cuda.is_available():
        from mtl.errors import ConfigError

        raise ConfigError("runtime.device = 'cuda' but no CUDA device is visible; use runtime.device=auto or cpu")
    device = torch.device("cuda" if rt.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if rt.threads is not None:
        torch.set_num_threads(rt.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = rt.precision
    if precision == "bf16" and device.type == "cpu":
        log.debug("bf16 autocast on CPU is slow; it is honoured but fp32 is usually faster there")
    return Env(device=device, precision=precision, channels_last=rt.channels_last,
               progress=rt.progress and sys.stderr.isatty(), seed=rt.seed)


class RngStream:
    """A private stream of torch's global RNG, which module initialisation and dropout draw from.

    ``with stream:`` swaps the caller's global RNG state for the stream's own and swaps it back on
    exit, keeping the stream's advanced state: a trainer that runs its work inside its stream
    is reproducible and resumable (``state`` is checkpointed) and leaves no global state changed.
    """

    def __init__(self, env: Env, seed: int) -> None:
        self.env = env
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed)
            self.state = rng_state(env)

    def _devices(self) -> list[torch.device]:
        return [self.env.device] if self.env.cuda else []

    def __enter__(self) -> RngStream:
        self._fork = torch.random.fork_rng(devices=self._devices())
        self._fork.__enter__()
        set_rng_state(self.env, self.state)
        return self

    def __exit__(self, *exc: object) -> None:
        self.state = rng_state(self.env)
        self._fork.__exit__(*exc)


def rng_state(env: Env) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if env.cuda:
        state["cuda"] = torch.cuda.get_rng_state(env.device)
    return state


def set_rng_state(env: Env, state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if env.cuda and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], env.device)


def progress(it: Iterable[T], env: Env, total: int | None = None, desc: str = "") -> Iterator[T]:
    """A tqdm bar when progress output is on, else the plain iterable."""
    if not env.progress:
        yield from it
        return
    from tqdm.auto import tqdm

    yield from tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
