"""Everything checked before Ray starts or anything is written, and the dry-run text.

Whatever can be wrong with the user's input (spec, data, tracking URI, an existing sweep, a
resume with other settings) fails here, so bad input leaves no job, run or file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.config import check_against_data
from mtl.data import split_stats
from mtl.errors import ConfigError
from mtl.config import affects_pretraining
from mtl.tune.spec import SweepSpec
from mtl.schema import dotted

SPEC_FILE = "sweep.json"  # what the first launch resolved; a resume must match it


@dataclass(frozen=True)
class Launch:
    """What preflight resolved: where things go and what each trial gets.

    ``resume``: Ray Tune saved state to restore the Tuner from; ``reattach``: --resume was
    given, so the sweep's MLflow runs are looked up, not created afresh (a sweep stopped before
    Ray Tune saved any state still has its parent run)."""

    spec: SweepSpec
    cache_root: Path
    tracking_uri: str | None
    experiment: str
    resume: bool
    reattach: bool = False


def preflight(spec: SweepSpec, *, resume: bool = False) -> Launch:
    """All checks that need neither Ray nor any write."""
    stats = split_stats(spec.base.data)  # missing dataset root -> DataError with the expected layout
    check_against_data(spec.base, stats)
    for key, dist in spec.space.items():
        for v in dist.bounds():
            try:
                check_against_data(spec.base.with_overrides({key: v}), stats)
            except ConfigError as e:
                raise ConfigError(f"space {key}: value {v!r} does not fit the data ({e})") from None
    exp = spec.experiment_dir
    if resume and not exp.exists():
        raise ConfigError(f"nothing to resume: no sweep {spec.name!r} under {spec.storage}; drop --resume to start it")
    if not resume and exp.exists():
        raise ConfigError(f"sweep {spec.name!r} already exists under {spec.storage}; pass --resume to continue it, "
                          f"or --set name=<new name> to start another")
    if resume:
        _check_same_sweep(spec, exp / SPEC_FILE)
    # a sweep stopped before Ray Tune saved any state (e.g. while pretraining) starts its trials afresh,
    # keeping its pretraining cache and MLflow runs
    tuner_state = resume and (exp / "tuner.pkl").exists() and any(exp.glob("experiment_state-*.json"))
    uri = None
    if spec.settings.mlflow.enabled:
        from mtl.tracking.uri import check_tracking_uri, resolve_tracking_uri

        uri = resolve_tracking_uri(spec.settings.mlflow.tracking_uri)
        check_tracking_uri(uri)
    return Launch(spec, exp / "pretrain_cache", uri, spec.settings.mlflow.experiment or spec.name, tuner_state,
                  reattach=resume)


def identity(spec: SweepSpec) -> dict[str, Any]:
    """What a resumed sweep must share with its first launch (Ray Tune restores the searcher,
    scheduler and trials from its own state; trials get the base config from this launch)."""
    d = spec.describe()
    return dotted({"base": d["base_config"], "space": d["space"], "tune": d["settings"]["tune"]})


def _check_same_sweep(spec: SweepSpec, path: Path) -> None:
    if not path.is_file():
        return
    first = json.loads(path.read_text())
    now = json.loads(json.dumps(identity(spec)))
    diff = sorted(k for k in first.keys() | now.keys() if first.get(k) != now.get(k))
    if diff:
        shown = ", ".join(f"{k} ({first.get(k)!r} -> {now.get(k)!r})" for k in diff[:4])
        raise ConfigError(f"--resume of sweep {spec.name!r} with settings that differ from its first launch: {shown}"
                          f"{' ...' if len(diff) > 4 else ''}; repeat the first launch's spec and --set options")


def describe(spec: SweepSpec) -> str:
    """The dry-run text: resolved base config, search space, resources and search settings."""
    import yaml

    t, r = spec.tune, spec.resources
    shared = not any(affects_pretraining(k) for k in spec.space)
    lines = [
        f"sweep {spec.name} ({spec.source})",
        "base config (resolved):",
        yaml.safe_dump(spec.base.to_dict(), sort_keys=False).rstrip().replace("\n", "\n  ").join(["  ", ""]),
        "search space:",
        *(f"  {k}: {d.kind}{list(d.args)}" for k, d in spec.space.items()),
        f"resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU"
        + (" (falls back to CPU when the cluster has no GPU)" if r.gpu else ""),
        f"search: {t.searcher} (seed {t.seed}), {t.num_samples} trials, max concurrent {t.max_concurrent or 'auto'}",
        f"scheduler: {t.scheduler}" + (f" on {t.time_attr}, grace {t.grace_period}, reduction {t.reduction_factor}, "
                                       f"max_t {spec.max_t}" if t.scheduler == "asha" else ""),
        f"metric: {t.metric} ({t.mode}); retries per trial: {t.max_failures}",
        f"pretraining: {'one shared entry for all trials' if shared else 'one entry per distinct pretraining setup'}",
        f"storage: {spec.experiment_dir}",
        f"mlflow: {'on' if spec.settings.mlflow.enabled else 'off'}"
        + (f" ({spec.settings.mlflow.tracking_uri or 'default store'})" if spec.settings.mlflow.enabled else ""),
    ]
    return "\n".join(lines)
