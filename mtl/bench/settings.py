"""The benchmark's settings: one frozen tree of sections, set with ``--set key=value``.

Every field states its type, range and choices beside its name (:mod:`mtl.schema`), so the
command's ``--help``, its one-line errors and the JSON record of a run all come from this one
declaration. Fields left ``null`` depend on the device and on ``quick``: :func:`resolve` fills
them (and turns ``device: auto`` into ``cpu`` or ``cuda``), so a resolved run states every size.
"""

import textwrap
import types
import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field

from mtl.errors import ConfigError
from mtl.schema import Section, at_least, dotted, fields, in_range, load, nest, positive, satisfies, validate

BACKBONE_SIZE = {"resnet25": 80, "resnet12": 84, "tiny": 32}  # each backbone's native image size
SECTIONS = ("pretrain", "meta", "eval", "memory", "trials")  # what ``only`` can pick
WHAT = "bench"  # names the settings in error messages: "unknown bench key ..."


def _as_list(v: Any) -> Any:
    """``1,5`` (a YAML string) -> ``[1, 5]``; a lone scalar -> a one-item list."""
    if isinstance(v, str):
        return [yaml.safe_load(x) for x in v.split(",") if x.strip()]
    return v if isinstance(v, list) or v is None else [v]


def listed(item: Any) -> Any:
    """A non-empty list of ``item``; written ``[1,5]`` (or ``1,5``) in ``--set``."""
    return satisfies(Annotated[list[item], BeforeValidator(_as_list)], lambda v: len(v) > 0,
                     "must list at least one value")


def doc(default: Any, text: str) -> Any:
    """A field's default and its one-line description (shown by ``--help``)."""
    return Field(default, description=text)


Count = at_least(1)
Counts = listed(Count)


class Timing(Section):
    """How each figure and its floor are timed (:mod:`mtl.bench.timing`)."""

    warmup: at_least(0) | None = doc(None, "untimed calls before each measurement; null: 3 (quick: 1)")
    iters: Count | None = doc(None, "calls per timed block; null: sized from timing.seconds")
    repeats: Count | None = doc(None, "timed blocks per measurement, the median is reported; null: 5 (quick: 2)")
    seconds: in_range(0, None) | None = doc(None, "target timed seconds per measurement; null: 1.0 "
                                                     "(quick: 0, one call per block)")


class Pretrain(Section):
    batch: Count | None = doc(None, "pretraining batch size; null: 128 (quick: 32)")
    steps: Count | None = doc(None, "batches per timed pretraining epoch; null: 10 on CUDA, 4 on a CPU or quick")


class Meta(Section):
    shots: Counts = doc([1, 5], "shots of the meta-training figures (and of the evaluation ones: eval.shots)")
    steps: Counts = doc([20, 100], "inner steps of the meta-training figures")
    meta_batches: Counts = doc([1, 4], "meta-batch sizes of the meta-training figures")
    first_order: bool = doc(False, "first-order meta-gradient (false: second order, as configured); trials too")


class Eval(Section):
    shots: Counts | None = doc(None, "shots of the evaluation figures; null: meta.shots")
    episodes: Count | None = doc(None, "episodes actually evaluated, scaled to 600; null: 600 (quick: 32)")
    batch: Count | None = doc(None, "episodes per evaluation forward (the config's eval.batch_episodes); "
                                       "null: 32 (quick: 16)")


class Trials(Section):
    """Concurrent trials on one device against one trial alone (:mod:`mtl.bench.trials`)."""

    n: at_least(0, " (0 runs no trials)") = doc(0, "trials run at once against one alone; 0: none")
    shot: Count = doc(1, "shot of a trial")
    steps: Count = doc(20, "inner steps of a trial (the configs' default)")
    meta_batch: Count = doc(2, "meta-batch of a trial (the configs' default)")
    seconds: positive(" (seconds)") | None = doc(None, "timed seconds of each trial; null: 15 on CUDA, "
                                                          "5 on a CPU (quick: 1.5)")
    threads: Count | None = doc(None, "torch threads per trial; null: cores / trials.n")


class BenchSettings(Section):
    device: Literal["auto", "cpu", "cuda"] = doc("auto", "auto: CUDA when one is visible, else the CPU")
    backbone: Literal["resnet12", "resnet25", "tiny"] | None = doc(None, "null: resnet25 on CUDA, tiny on a CPU")
    image_size: at_least(16, " pixels") | None = doc(None, "null: 80 for resnet25, 84 for resnet12, "
                                                              "32 for tiny (quick: 16)")
    precision: Literal["fp32", "bf16"] | None = doc(None, "null: bf16 on CUDA, fp32 on a CPU")
    channels_last: bool = doc(True, "channels_last memory format")
    threads: Count | None = doc(None, "torch CPU threads of the main process; null: torch's default")
    quick: bool = doc(False, "smoke sizes and one timed call per block (the --quick flag)")
    only: listed(Literal[SECTIONS]) = doc(list(SECTIONS), "sections to run")
    timing: Timing = Field(default_factory=Timing)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    meta: Meta = Field(default_factory=Meta)
    eval: Eval = Field(default_factory=Eval)
    trials: Trials = Field(default_factory=Trials)


def load_settings(overrides: dict[str, Any]) -> BenchSettings:
    """Defaults < dotted ``overrides``; an unknown key or a bad value raises a one-line ConfigError."""
    return load(BenchSettings, {}, overrides, what=WHAT)


def resolve(s: BenchSettings, cuda_available: bool | None = None) -> BenchSettings:
    """The settings with every ``null`` that depends on the device or on ``quick`` filled in."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if s.device == "cuda" and not cuda_available:
        raise ConfigError("device = 'cuda' but no CUDA device is visible; set device=cpu (or auto)")
    cuda, q = s.device == "cuda" or (s.device == "auto" and cuda_available), s.quick
    backbone = s.backbone or ("resnet25" if cuda else "tiny")
    filled = {
        "backbone": backbone,
        "image_size": 16 if q else BACKBONE_SIZE[backbone],
        "precision": "bf16" if cuda else "fp32",
        "timing.warmup": 1 if q else 3,
        "timing.repeats": 2 if q else 5,
        "timing.seconds": 0.0 if q else 1.0,
        "pretrain.batch": 32 if q else 128,
        "pretrain.steps": 4 if q or not cuda else 10,
        "eval.shots": list(s.meta.shots),
        "eval.episodes": 32 if q else 600,
        "eval.batch": 16 if q else 32,
        "trials.seconds": 1.5 if q else 15.0 if cuda else 5.0,
    }
    flat = dotted(s.to_dict())
    flat.update({k: v for k, v in filled.items() if flat[k] is None}, device="cuda" if cuda else "cpu")
    return validate(BenchSettings, nest(flat), WHAT)


# Help


def _type_text(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return _type_text(next(a for a in args if a is not type(None)))
    if origin is Literal:
        return "|".join(map(str, args))
    if origin is list:
        return f"list of {_type_text(args[0])}"
    return getattr(t, "__name__", str(t))


def _value_text(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(map(_value_text, v)) + "]"
    if v is None:
        return "null"
    return str(v).lower() if isinstance(v, bool) else str(v)


def keys_help(width: int = 110) -> str:
    """Every settable key with its default, type and meaning (the epilog of ``--help``)."""
    lines = ["settings (--set KEY=VALUE, repeatable; values are YAML scalars, lists as [1,5]):",
             f"  {'KEY = DEFAULT':<32} TYPE: MEANING"]
    for key, (cls, name) in fields(BenchSettings).items():
        f = cls.model_fields[name]
        text = f"  {key + ' = ' + _value_text(f.default):<32} {_type_text(f.annotation)}: {f.description or ''}"
        lines += textwrap.wrap(text, width, subsequent_indent=" " * 35, break_on_hyphens=False)
    return "\n".join(lines)
