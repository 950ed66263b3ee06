"""Sweep specs: a base experiment config, a search space over its dotted keys, and how to search.

A spec is YAML::

    name: mini1shot               # sweep name (Ray run folder, MLflow experiment); default: file name
    base: mini_1shot              # a packaged config name or a YAML path (relative to the spec)
    config: {data: {root: /data/miniImageNet}}   # overrides of the base config
    space:                        # dotted config keys -> one distribution each
      meta.inner_lr: {loguniform: [1.0e-3, 1.0e-1]}
      meta.inner_steps: {int: [5, 40]}
      hard_tasks.ratio: {uniform: [0.0, 0.5]}
    tune: {num_samples: 32, max_concurrent: 8, grace_period: 5}   # baseline, compare_top, final_seeds: see README
    resources: {cpu: 4, gpu: 0.25}
    storage: ray_results
    mlflow: {tracking_uri: null}

Everything is checked before Ray starts: unknown keys, distributions and their arguments
(:mod:`mtl.tune.space`),
and every bound or choice of the space applied to the base config (so a value the config
would reject fails here, naming the space key), and, unless ``tune.baseline: false``, that each
space key's base value is one the space can draw (the baseline trial is the base config).
"""

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mtl.config import Config, affects_pretraining
from mtl.configs import find_config, load_config
from mtl.errors import ConfigError, shown
from mtl.metrics import optimisable
from mtl.schema import Float, Int, Section, as_mapping, at_least, fail, in_range, int_in, load, positive, satisfies
from mtl.tune.space import Dist, parse_space
from mtl.yamlio import read_yaml


class TuneSettings(Section):
    metric: Literal[tuple(optimisable())] = "val_acc"  # a metric every meta epoch reports (mtl.metrics)
    mode: Literal["max", "min"] = "max"
    num_samples: at_least(1, " (the number of trials)") = 16
    max_concurrent: at_least(1) | None = None  # None: as many as the cluster's resources allow at launch
    searcher: Literal["optuna", "random"] = "optuna"
    seed: int = 0  # sampler seed
    n_startup_trials: at_least(1) = 5  # random trials before TPE models the space
    scheduler: Literal["asha", "none"] = "asha"
    # epoch: meta-training epochs; trial_epoch: pretraining's, then meta-training's, on one axis (the
    # default, and the only axis, when the space searches pretraining fields: SweepSpec.pretrain_span)
    time_attr: Literal["trial_epoch", "epoch", "updates", "training_iteration"] | None = None
    grace_period: at_least(1) = 1
    reduction_factor: at_least(2) = 3
    max_t: at_least(1) | None = None  # None: the longest trial (meta.epochs, its updates, plus the pretraining span)
    max_failures: satisfies(Int, lambda v: v >= -1, "must be >= 0 (or -1: retry forever)") = 2  # retries of a trial
    checkpoints_to_keep: at_least(1) = 2
    baseline: bool = True  # run the base config (its values of the space keys) as the first trial
    # the finalists raced on fresh validation episodes (mtl.tune.race; 0: no race, the winner is the best
    # validation accuracy of the search): 2,000 episodes tell apart what a 600-episode bank ties
    race_top: int_in(0, 1_000, " finalists") = 4
    race_episodes: int_in(2, 1_000_000, " episodes (an interval needs two)") = 2_000
    compare_top: at_least(0) = 2  # trials after the winner tested on the winner's test episodes
    final_seeds: at_least(1) = 1  # seeds of the winner's and the baseline's meta-training (1: the search's own)

    @model_validator(mode="after")
    def _mode_fits_metric(self) -> "TuneSettings":
        want = optimisable()[self.metric]
        if self.mode != want:
            raise fail(f"tune.mode = {self.mode!r} does not fit tune.metric = {self.metric!r}; use mode {want}")
        return self


class Resources(Section):
    cpu: positive() = 1.0
    # fraction of one GPU per trial: 0.25 packs four trials on a GPU
    gpu: satisfies(Float, lambda v: 0 <= v <= 1, "must be a fraction of one GPU in (0, 1] (e.g. 0.25 packs four "
                   "trials per GPU), or 0 for CPU trials") = 0.0
    wait_for_gpu_s: in_range(0, None, why=" (seconds)") = 0.0  # an autoscaling cluster: wait this long for a GPU


class Mlflow(Section):
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str | None = None  # None: the sweep name


class SweepSettings(Section):
    name: str | None = None
    base: str | None = None
    storage: str = "ray_results"
    tune: TuneSettings = Field(default_factory=TuneSettings)
    resources: Resources = Field(default_factory=Resources)
    mlflow: Mlflow = Field(default_factory=Mlflow)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    base: Config
    space: dict[str, Dist]
    settings: SweepSettings
    source: str

    @property
    def tune(self) -> TuneSettings:
        return self.settings.tune

    @property
    def resources(self) -> Resources:
        return self.settings.resources

    @property
    def storage(self) -> Path:
        return Path(self.settings.storage).expanduser().resolve()

    @property
    def experiment_dir(self) -> Path:
        return self.storage / self.name

    @property
    def searches_pretraining(self) -> bool:
        """Whether trials differ in pretraining: then each pretrains in the search, reporting its
        pretraining epochs to the scheduler, instead of sharing one pretraining built beforehand."""
        return any(affects_pretraining(k) for k in self.space)

    @property
    def pretrain_span(self) -> int:
        """Where meta-training starts on the ``trial_epoch`` axis: the most pretraining epochs a trial
        of the sweep runs (0 when pretraining is shared and not reported). Every trial reports one
        result per step of the span, those that pretrain fewer epochs holding their last, so that a
        rung compares pretraining with pretraining and meta-training with meta-training."""
        return self.upper("pretrain.epochs") if self.searches_pretraining else 0

    @property
    def time_attr(self) -> str:
        return self.tune.time_attr or ("trial_epoch" if self.searches_pretraining else "epoch")

    @property
    def max_t(self) -> int:
        """ASHA's cap: the longest trial the sweep can run (ASHA stops any trial that reaches it).
        Searched epoch/batch counts count with their upper bound; ``updates`` include the hard-task
        updates that come on top of the normal ones (1 / (1 - ratio) times as many in all)."""
        t = self.tune
        if t.max_t is not None:
            return t.max_t
        epochs = self.upper("meta.epochs")
        if self.time_attr == "trial_epoch":
            return self.pretrain_span + epochs
        if self.time_attr != "updates":
            return epochs
        return math.ceil(epochs * self.upper("meta.batches_per_epoch") / (1 - self.upper("hard_tasks.ratio"))) + 1

    def upper(self, key: str) -> Any:
        """The largest value a numeric config key takes in this sweep (base value or space bound)."""
        dist = self.space.get(key)
        return max([self.base.get(key), *(dist.bounds() if dist else [])])

    def baseline_point(self) -> dict[str, Any] | None:
        """The base config's values of the space keys: the first trial of the sweep, proposed to the
        searcher before any other (None with ``tune.baseline: false``)."""
        return {k: self.base.get(k) for k in self.space} if self.tune.baseline else None

    def param_space(self) -> dict[str, Any]:
        return {k: d.to_ray() for k, d in self.space.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "base_config": self.base.to_dict(),
                "space": {k: {d.kind: list(d.args)} for k, d in self.space.items()},
                "settings": self.settings.to_dict(), "storage": str(self.storage)}


SPEC_KEYS = ("name", "base", "config", "space", "storage", "tune", "resources", "mlflow")


def load_spec(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> SweepSpec:
    """Read and fully validate a sweep spec; ``overrides`` are ``key=value`` strings whose key is
    either a spec setting (``tune.num_samples=8``, ``storage=/x``) or a base-config field
    (``meta.epochs=5``). Raises ConfigError naming the key and the fix; creates nothing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} not found; give the path of a YAML file such as search_spaces/smoke.yaml")
    doc = read_yaml(path, "sweep spec", "base: synthetic with a space: mapping (see search_spaces/smoke.yaml)")
    for k in doc:
        if k not in SPEC_KEYS:
            raise ConfigError(f"unknown sweep spec key {shown(k)} in {path}; valid keys: {', '.join(SPEC_KEYS)}")
    spec_over, cfg_over = {}, {}
    for k, v in as_mapping(overrides).items():
        (spec_over if k.split(".")[0] in SPEC_KEYS else cfg_over)[k] = v
    if any(k.split(".")[0] in ("config", "space") for k in spec_over):
        raise ConfigError("override base-config fields directly (e.g. meta.epochs=5) and edit 'space' in the YAML")
    if "name" in spec_over and spec_over["name"] in (None, ""):
        raise ConfigError(f"--set name= gives an empty sweep name; give one, e.g. --set name={path.stem}-2, "
                          "or drop it to use the spec's")

    settings_tree = {k: doc[k] for k in ("name", "base", "storage", "tune", "resources", "mlflow") if k in doc}
    settings: SweepSettings = load(SweepSettings, settings_tree, spec_over, what="sweep spec")
    name = path.stem if settings.name is None else settings.name
    check_name(name)

    base = _load_base(path, settings.base, doc.get("config") or {}, cfg_over)
    space = parse_space(doc.get("space"), base, path)
    val_every = {base.eval.val_every, *(space["eval.val_every"].bounds() if "eval.val_every" in space else [])}
    if settings.tune.metric == "val_acc" and val_every != {1}:
        raise ConfigError(f"eval.val_every = {max(val_every)}: a sweep on val_acc needs it every meta epoch (every "
                          "report must hold the metric); set eval.val_every=1, or tune.metric=best_val_acc")
    if "://" in settings.storage and not settings.storage.startswith("file://"):
        raise ConfigError(
            f"storage {shown(settings.storage)}: use a filesystem path that every node sees (local disk, NFS); "
            "the shared pretraining cache needs file locks, which object stores lack")
    settings = _replace_storage(settings)
    spec = SweepSpec(name=name, base=base, space=space, settings=settings, source=str(path))
    if settings.tune.baseline:
        _check_baseline(spec)
    _check_pretraining_search(spec)
    if spec.tune.scheduler == "asha" and spec.tune.grace_period > spec.max_t:
        raise ConfigError(f"tune.grace_period = {spec.tune.grace_period} exceeds max_t = {spec.max_t}; "
                          "lower the grace period or raise meta.epochs / tune.max_t")
    return spec


MAX_NAME = 100  # characters of a sweep name: it names folders and files (.<name>.claim), which hold 255 bytes


def check_name(name: str) -> None:
    """A sweep name names folders and an MLflow experiment: up to :data:`MAX_NAME` letters, digits,
    '.', '_' and '-', the first a letter or digit (a leading '.' hides the folder, a '-' reads as an option)."""
    rule = f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most {MAX_NAME} characters"
    if not name:
        raise ConfigError(f"sweep name '' is empty; give a name of {rule}")
    if len(name) > MAX_NAME:
        raise ConfigError(f"sweep name {shown(name, 40)} is {len(name)} characters long; give one of at most "
                          f"{MAX_NAME} (--set name=...)")
    if not re.fullmatch(r"[A-Za-z0-9_.-]*", name):
        raise ConfigError(f"sweep name {shown(name)} may hold only letters, digits, '.', '_' and '-'; give a name of "
                          f"{rule}")
    if not re.match(r"[A-Za-z0-9]", name):
        fix = name.lstrip("._-") or "sweep"
        raise ConfigError(f"sweep name {shown(name)} must start with a letter or digit (a leading '.' hides its "
                          f"folder, a '-' reads as an option); e.g. --set name={fix}")


def _check_pretraining_search(spec: SweepSpec) -> None:
    """A space with pretraining fields reports pretraining epochs to the scheduler on the
    ``trial_epoch`` axis: each of them must hold the metric, and no other axis tells pretraining
    from meta-training."""
    if not spec.searches_pretraining:
        return
    keys = ", ".join(k for k in spec.space if affects_pretraining(k))
    if spec.time_attr != "trial_epoch":
        raise ConfigError(f"tune.time_attr = {spec.time_attr}: the space searches pretraining ({keys}), whose epochs "
                          "the scheduler sees on the trial_epoch axis only; drop tune.time_attr (or set trial_epoch)")
    every = {spec.base.pretrain.val_every, *(spec.space["pretrain.val_every"].bounds()
                                            if "pretrain.val_every" in spec.space else [])}
    if every != {1}:
        raise ConfigError(f"pretrain.val_every = {max(every)}: the space searches pretraining ({keys}), so every "
                          "pretraining epoch reports its probe accuracy to the scheduler; set pretrain.val_every=1")
    if spec.base.pretrain.checkpoint:
        raise ConfigError(f"pretrain.checkpoint is set, so no trial pretrains, yet the space searches pretraining "
                          f"({keys}); drop pretrain.checkpoint or those keys from the space")


def _check_baseline(spec: SweepSpec) -> None:
    """The baseline trial is the base config itself: each space key's base value must be one the
    searcher could draw. Rejected rather than skipped, so that a sweep never silently loses the
    comparison that says whether searching helped (docs: README, Hyperparameter search)."""
    for key, dist in spec.space.items():
        value = spec.base.get(key)
        if not dist.contains(value):
            raise ConfigError(
                f"space {key}: the base config's value {shown(value)} lies outside {dist.kind}{list(dist.args)}, so "
                f"the baseline trial (the base config, run first) cannot be proposed; widen the range, set {key} "
                "inside it in the spec's config:, or set tune.baseline: false")


def _replace_storage(s: SweepSettings) -> SweepSettings:
    return s.model_copy(update={"storage": s.storage.removeprefix("file://")})


def _load_base(path: Path, base: str | None, inline: Any, cfg_over: dict[str, Any]) -> Config:
    if not isinstance(inline, Mapping):
        raise ConfigError(f"'config' in {path} must be a mapping of config sections")
    tree: dict[str, Any] = dict(inline)
    if base is not None:
        local = path.parent / base
        tree["base"] = str(local) if local.is_file() else str(find_config(base))
    cfg = load_config(tree, cfg_over)
    # trials run in their own working folders: make the config's paths absolute here
    paths = {k: str(Path(v).expanduser().resolve()) for k in ("data.root", "data.cache_dir", "pretrain.checkpoint")
             if (v := cfg.get(k)) and "://" not in v}
    return cfg.with_overrides(paths) if paths else cfg
