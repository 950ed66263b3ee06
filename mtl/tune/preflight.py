"""Everything checked before Ray starts or anything is written, and the dry-run text.

Whatever can be wrong with the user's input (spec, data, tracking URI, an existing sweep, a
resume with other settings) fails here, so bad input leaves no job, run or file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtl.config import affects_pretraining, check_against_data
from mtl.data import split_stats
from mtl.data.evalset import check_eval_shapes, index_eval
from mtl.errors import ConfigError
from mtl.files import check_writable_dir
from mtl.recipes import recipe_note
from mtl.results import SweepSummary
from mtl.schema import changed, dotted
from mtl.tune.cluster import local_cpu_problem
from mtl.tune.spec import SweepSpec

SPEC_FILE = "sweep.json"  # what the first launch resolved; a resume must match it
_TRACKING, _EXPERIMENT = "mlflow.tracking_uri", "mlflow.experiment"  # where its runs are (sweep.json)


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
    finished: SweepSummary | None = None  # the summary of a sweep that had already finished


def check_data(spec: SweepSpec) -> None:
    """The layouts of the dataset and of the test set (``eval.data``, which the winner is tested on),
    and the episode shapes of the base config and of every space bound against them."""
    stats = split_stats(spec.base.data)  # missing dataset root -> DataError with the expected layout
    check_against_data(spec.base, stats)
    test = index_eval(spec.base)
    for key, dist in spec.space.items():
        for v in dist.bounds():
            try:
                cfg = spec.base.with_overrides({key: v})
                check_against_data(cfg, stats)
                check_eval_shapes(cfg, test)
            except ConfigError as e:
                raise ConfigError(f"space {key}: value {v!r} does not fit the data ({e})") from None


def finished_summary(spec: SweepSpec) -> SweepSummary | None:
    """The summary of the sweep of this name if it ran to its end (summary.json is written last;
    one that does not read as a summary was cut short: the sweep resumes and writes it again)."""
    path = spec.experiment_dir / "summary.json"
    try:
        return SweepSummary.load(path) if path.is_file() else None
    except ConfigError:
        return None


def preflight(spec: SweepSpec, *, resume: bool = False) -> Launch:
    """All checks that need neither Ray nor any write: :func:`check_inputs`, then
    :func:`check_state` (the driver runs the two apart, holding the sweep's claim between them)."""
    return check_state(spec, check_inputs(spec), resume=resume)


def check_inputs(spec: SweepSpec) -> str | None:
    """What the user gave, and the environment it names: the data (layouts, shapes, the test
    set), the storage folder, the MLflow store. Returns the resolved tracking URI (None: off)."""
    check_data(spec)
    check_writable_dir(spec.storage, "storage", "point --storage (or storage: in the spec) at a writable folder")
    if not spec.settings.mlflow.enabled:
        return None
    from mtl.tracking.uri import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(spec.settings.mlflow.tracking_uri)
    check_tracking_uri(uri)
    return uri


def check_state(spec: SweepSpec, uri: str | None, *, resume: bool = False) -> Launch:
    """What the storage holds of a sweep of this name, against what this launch asks for.

    A sweep of this name that already finished is not run again, with or without --resume
    (``Launch.finished`` holds its summary) when its settings are the same; with other settings
    it is an error that asks for another name."""
    exp = spec.experiment_dir
    done = finished_summary(spec)
    if done is not None:
        _check_same_sweep(spec, uri, exp / SPEC_FILE, resume)
    elif resume and not exp.exists():
        raise ConfigError(f"nothing to resume: no sweep {spec.name!r} under {spec.storage}; drop --resume to start it")
    elif not resume and exp.exists():
        raise ConfigError(f"sweep {spec.name!r} already exists under {spec.storage} and has not finished; pass "
                          f"--resume to continue it, or --set name=<new name> to start another")
    elif resume:
        _check_same_sweep(spec, uri, exp / SPEC_FILE, resume)
    # a sweep stopped before Ray Tune saved any state (e.g. while pretraining) starts its trials afresh,
    # keeping its pretraining cache and MLflow runs
    tuner_state = resume and (exp / "tuner.pkl").exists() and any(exp.glob("experiment_state-*.json"))
    return Launch(spec, exp / "pretrain_cache", uri, spec.settings.mlflow.experiment or spec.name, tuner_state,
                  reattach=resume, finished=done)


def identity(spec: SweepSpec, uri: str | None = None) -> dict[str, Any]:
    """What a resumed sweep must share with its first launch (Ray Tune restores the searcher,
    scheduler and trials from its own state; trials get the base config from this launch), and
    where its MLflow runs are (a resume elsewhere would start a second set of runs)."""
    d = spec.as_dict()
    return {**dotted({"base": d["base_config"], "space": d["space"], "tune": d["settings"]["tune"]}),
            _TRACKING: uri, _EXPERIMENT: spec.settings.mlflow.experiment or spec.name if uri else None}



def _check_same_sweep(spec: SweepSpec, uri: str | None, path: Path, resume: bool) -> None:
    if not path.is_file():
        return
    try:
        first = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        first = f"{type(e).__name__}: {e}"
    if not isinstance(first, dict):
        raise ConfigError(f"{path} is damaged ({str(first)[:100]}); it records the sweep's first launch: restore "
                          f"it, or --set name=<new name> to start another sweep")
    now = json.loads(json.dumps(identity(spec, uri)))
    diff = changed(first, now)
    if not resume:  # a finished sweep is only read again: where its runs are does not matter
        diff = [k for k in diff if k not in (_TRACKING, _EXPERIMENT)]
    if resume and _TRACKING in diff and first[_TRACKING] and now[_TRACKING]:
        raise ConfigError(f"--resume of sweep {spec.name!r} with MLflow tracking URI {now[_TRACKING]} but its first "
                          f"launch logged to {first[_TRACKING]}; resume from the first launch's folder or set "
                          "mlflow.tracking_uri (or MLFLOW_TRACKING_URI) to that URI")
    if diff:
        shown = ", ".join(f"{k} ({first.get(k)!r} -> {now.get(k)!r})" for k in diff[:4]) + (" ..." if len(diff) > 4 else "")
        if resume:
            raise ConfigError(f"--resume of sweep {spec.name!r} with settings that differ from its first launch: "
                              f"{shown}; repeat the first launch's spec and --set options")
        raise ConfigError(f"sweep {spec.name!r} already ran under {spec.storage} with other settings: {shown}; "
                          f"--set name=<new name> starts a sweep with these")


def dry_run(spec: SweepSpec) -> str:
    """What ``--dry-run`` prints, after the checks of the data that the run would make first."""
    check_data(spec)
    return dry_run_text(spec)


def after_search(spec: SweepSpec) -> list[str]:
    """What the sweep runs besides its trials, and what that costs, for the dry-run text."""
    t, m = spec.tune, spec.base.meta
    point = spec.baseline_point()
    n = t.final_seeds - 1
    runs = 2 * n if point else n
    top = min(t.race_top, t.num_samples)
    return [
        "baseline: " + (f"trial 1 is the base config ({', '.join(f'{k}={v}' for k, v in point.items())})"
                        if point else "none (tune.baseline: false): the summary cannot say whether searching helped"),
        (f"race: the top {top} trials by validation accuracy re-validated on {t.race_episodes} fresh validation "
         f"episodes ({top * t.race_episodes} episode evaluations, the cost of validating a trial "
         f"{top * t.race_episodes / spec.base.eval.val_episodes:.0f} times, in one task with a trial's resources); "
         "the race's leader is the winner" if top else
         "race: none (tune.race_top: 0): the winner is the best validation accuracy of the search"),
        (f"after the search: the winner, the next {t.compare_top}{' and the baseline' if point else ''} tested on "
         f"the same {spec.base.eval.episodes} test episodes (at most {t.compare_top + (2 if point else 1)} test "
         "passes, in one task with a trial's resources)" + (
             "; a baseline that ASHA stops in pretraining is trained to its end first (the cost of one trial)"
             if point and spec.searches_pretraining else "")),
        f"final seeds: {t.final_seeds} per config" + (
            f": {runs} more meta-trainings ({n} each for the winner{' and the baseline' if point else ''}, up to "
            f"{spec.upper('meta.epochs')} epochs of {m.batches_per_epoch} batches, no pretraining), as Ray tasks "
            f"with a trial's resources: the cost of {runs} of the {t.num_samples} trials run to their end"
            if n else " (the search's own runs; set tune.final_seeds to re-run the winner and the baseline)"),
    ]


def dry_run_text(spec: SweepSpec) -> str:
    """The dry-run text: resolved base config (the sections that apply), search space, resources,
    search settings."""
    import yaml

    t, r = spec.tune, spec.resources
    shared = not any(affects_pretraining(k) for k in spec.space)
    base = spec.base.to_dict()
    for name in ("synthetic", "omniglot"):  # a dataset's own options only where they apply
        if name not in (spec.base.data.dataset, spec.base.eval.data.dataset):
            base["data"].pop(name)
    lines = [
        f"sweep {spec.name} ({spec.source})",
        "base config (resolved):",
        f"  # {recipe_note(spec.base)}",
        yaml.safe_dump(base, sort_keys=False).rstrip().replace("\n", "\n  ").join(["  ", ""]),
        "search space:",
        *(f"  {k}: {d.kind}{list(d.args)}" for k, d in spec.space.items()),
        *(f"  # a trial with {k}={v}: {recipe_note(spec.base.with_overrides({k: v}))}"
          for k, d in spec.space.items() if k == "pretrain.recipe" for v in d.bounds()),
        f"resources per trial: {r.cpu:g} CPU, {r.gpu:g} GPU"
        + (" (falls back to CPU when the cluster has no GPU)" if r.gpu else ""),
        f"search: {t.searcher} (seed {t.seed}), {t.num_samples} trials, max concurrent {t.max_concurrent or 'auto'}",
        f"scheduler: {t.scheduler}" + (f" on {spec.time_attr}, grace {t.grace_period}, reduction {t.reduction_factor}, "
                                       f"max_t {spec.max_t}" if t.scheduler == "asha" else ""),
        f"metric: {t.metric} ({t.mode}); retries per trial: {t.max_failures}",
        "pretraining: " + ("one shared entry for all trials" if shared else (
            f"in the search, one entry per distinct pretraining setup; each pretraining epoch is a result on the "
            f"trial_epoch axis (1 to {spec.pretrain_span}, meta-training from {spec.pretrain_span + 1}), so ASHA "
            "can stop a bad pretraining early")),
        *after_search(spec),
        f"storage: {spec.experiment_dir}",
        f"mlflow: {'on' if spec.settings.mlflow.enabled else 'off'}"
        + (f" ({spec.settings.mlflow.tracking_uri or 'default store'})" if spec.settings.mlflow.enabled else ""),
        *([f"warning: {p}"] if (p := local_cpu_problem(spec)) else []),
    ]
    return "\n".join(lines)
