"""A sweep's search space: dotted config keys -> one distribution each, checked against the base config.

``space:`` in a spec maps config keys to ``{kind: [args]}``: ``uniform``/``loguniform`` [low,
high], ``quniform``/``qloguniform`` [low, high, step], ``int``/``logint`` [low, high] (inclusive),
``choice`` [values...] (at most 200). Every argument is a finite number (``choice`` values may be anything the
key takes), and every bound or choice must be a value the base config accepts for its key, so a
value a trial would reject (an unknown backbone, a learning rate of 0) fails at spec load, naming
the space key.
"""

import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.config import Config, check_key, field_type
from mtl.errors import ConfigError, shown


@dataclass(frozen=True)
class Dist:
    kind: str
    args: tuple[Any, ...]

    def bounds(self) -> list[Any]:
        """Values that must be valid config values: the ends of a range, every choice."""
        return list(self.args) if self.kind == "choice" else list(self.args[:2])

    def contains(self, value: Any) -> bool:
        """Whether the distribution can draw ``value`` (a choice, or a number within the range)."""
        if self.kind == "choice":
            return any(value == a for a in self.args)  # 10 == 10.0: numbers compare by value
        return _number(value) and self.args[0] <= value <= self.args[1]

    def to_ray(self) -> Any:
        from ray import tune

        a = self.args
        return {
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "qloguniform": lambda: tune.qloguniform(a[0], a[1], a[2]),
            "int": lambda: tune.randint(a[0], a[1] + 1),  # inclusive upper bound in the spec
            "logint": lambda: tune.lograndint(a[0], a[1] + 1),
            "choice": lambda: tune.choice(list(a)),
        }[self.kind]()


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


DIST_ARITY = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "int": 2, "logint": 2}
DISTS = (*DIST_ARITY, "choice")
MAX_CHOICES = 200  # values of one choice: far more than a sweep's trials can try; each is checked by building a config


def parse_space(raw: Any, base: Config, path: Path) -> dict[str, Dist]:
    if not raw:
        raise ConfigError(f"'space' in {path} is empty; add at least one config key to search, "
                          "e.g. meta.inner_lr: {loguniform: [0.001, 0.1]}")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"'space' in {path} must map config keys to distributions")
    space = {}
    for key, d in raw.items():
        key = str(key)
        try:
            check_key(key)
        except ConfigError as e:
            raise ConfigError(f"space key {shown(key)} is not a config field: {e}") from None
        dist = _parse_dist(key, d)
        if not _takes_fractions(field_type(key)) and (
                dist.kind in ("uniform", "loguniform")
                or dist.kind in ("quniform", "qloguniform") and not all(isinstance(a, int) for a in dist.args)):
            whole = {"uniform": "int", "loguniform": "logint"}.get(dist.kind, dist.kind)
            raise ConfigError(f"space {key}: {key} takes whole numbers but {dist.kind}{list(dist.args)} draws "
                              f"fractions; use {{{whole}: [low, high{', step' if whole.startswith('q') else ''}]}} "
                              "with integer arguments")
        for v in dist.bounds():
            try:
                base.with_overrides({key: v})
            except ConfigError as e:
                raise ConfigError(f"space {key}: value {shown(v)} of its {dist.kind} distribution is invalid "
                                  f"({e})") from None
        space[key] = dist
    return space


def _takes_fractions(typ: Any) -> bool:
    """Whether a config field of declared type ``typ`` (Annotated, Optional) accepts non-integral numbers."""
    return typ is float or any(_takes_fractions(a) for a in typing.get_args(typ))


def _parse_dist(key: str, d: Any) -> Dist:
    usage = (f"space {key}: write one distribution as {{kind: [args]}}, kind one of {', '.join(DISTS)}, "
             "e.g. {loguniform: [0.001, 0.1]}")
    if not isinstance(d, Mapping) or len(d) != 1:
        raise ConfigError(usage)
    kind, args = next(iter(d.items()))
    if kind not in DISTS:
        raise ConfigError(f"space {key}: unknown distribution {shown(kind)}; use one of {', '.join(DISTS)}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"space {key}: {kind} needs a non-empty list of arguments")
    if kind == "choice":
        if len(args) > MAX_CHOICES:  # before each value is checked against the config (a config build each)
            raise ConfigError(f"space {key}: choice lists {len(args)} values; give at most {MAX_CHOICES} (a search "
                              "draws a few dozen trials), or a range: {int: [low, high]} or {uniform: [low, high]}")
        bad = [a for a in args if isinstance(a, float) and not math.isfinite(a)]
        if bad:
            raise ConfigError(f"space {key}: choice values must be finite, got {bad[0]!r} in {shown(args)}")
        return Dist(kind, tuple(args))
    n = DIST_ARITY[kind]
    if len(args) != n:
        what = "[low, high, step]" if n == 3 else "[low, high]"
        raise ConfigError(f"space {key}: {kind} takes {what}, got {shown(args)}")
    if not all(_number(a) for a in args):
        raise ConfigError(f"space {key}: {kind} arguments must be numbers, got {shown(args)}")
    if not all(math.isfinite(a) for a in args):
        raise ConfigError(f"space {key}: {kind} arguments must be finite numbers (no .inf or .nan), got {args}")
    lo, hi = args[0], args[1]
    if kind in ("int", "logint") and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"space {key}: int bounds must be integers, got {args}")
    if not lo < hi:
        raise ConfigError(f"space {key}: {kind} needs low < high, got {args}")
    if kind.startswith(("log", "qlog")) and lo <= 0:
        raise ConfigError(f"space {key}: {kind} needs a positive low bound, got {lo}")
    if n == 3 and not args[2] > 0:
        raise ConfigError(f"space {key}: {kind} step must be positive, got {args[2]}")
    return Dist(kind, tuple(args))
