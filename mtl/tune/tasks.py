"""The Ray tasks a sweep runs after its search, and what each returns.

:func:`race_task` re-validates the finalists on fresh validation episodes (:mod:`mtl.tune.race`),
:func:`compare_task` tests the compared trials on the same test episodes, :func:`finish_task` trains
a baseline that ASHA stopped in pretraining to its end and tests it there, and :func:`seed_task`
meta-trains a config again with another seed (:mod:`mtl.tune.finals`). Each task is a plain function
(a test calls it in-process); :func:`ray_runner` runs them as Ray tasks with a trial's resources.
The evaluating tasks load each split once, evaluate every trial on the same episodes, and embed them
once for trials with the same feature extractor (backbone, learnt scale and shift). Their results
are kept under ``<sweep>/final/`` as they arrive (:func:`cached`, :func:`keep`), so a resumed driver
runs nothing twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mtl.files import write_text_atomic

Runner = Callable[[list[tuple[str, Callable, tuple]], Callable[[str, Any], None]], None]


class Evaluated(BaseModel):
    """A trial's best state on a bank of episodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    acc: float
    ci95: float
    accs: list[float]  # per episode
    episodes_key: str  # what decides the episodes (:func:`episodes_key`)
    shared_features: bool = False  # embedded once with another trial's


class Tested(Evaluated):
    """One trial's best state on the test episodes (``final/test-<trial>.json``)."""

    val_key: str  # what decides its validation bank
    val_accs: list[dict[str, Any]]  # per epoch: {"epoch", "accs"} on the validation bank
    backbone_sha256: str
    test_data: str = ""
    finished: bool = False  # trained to its end after the search (:func:`finish_task`)
    val_acc: float | None = None  # its best validation accuracy, when it was finished here


class Reseeded(BaseModel):
    """A config meta-trained again with another seed (``final/seed-<trial>-<seed>.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    seed: int
    val_acc: float | None
    test_acc: float
    test_ci95: float
    accs: list[float]
    epochs: int
    backbone_sha256: str


def episodes_key(cfg: Any, split: str = "test", count: int | None = None) -> str:
    """What decides a bank of episodes: the data, way, shot, queries, count and seed (``split``:
    test, val, or race, the fresh validation episodes of ``count`` episodes)."""
    from mtl.config import eval_query, validation_query
    from mtl.episodes import bank_seed

    data = {k: v for k, v in cfg.data.to_dict().items() if k != "cache_dir"}
    m, e = cfg.meta, cfg.eval
    if split == "test":
        data["eval.data"] = e.data.to_dict()
        return json.dumps([data, m.way, m.shot, eval_query(m, e), e.episodes, bank_seed(e.seed, "test")], sort_keys=True)
    parts = [data, m.way, m.shot, validation_query(e), e.val_episodes, bank_seed(e.seed, "val")]
    if split == "race":
        parts += [count, bank_seed(e.seed, "race")]
    return json.dumps(parts, sort_keys=True)


def feature_key(ck: dict[str, Any], cfg: Any, episodes: str) -> str:
    """Trials with equal keys compute equal features on the episodes ``episodes`` names."""
    from mtl.pretraining import content_hash

    state = ck["best_state"] or ck["current"]
    parts = [ck["backbone_ref"]["sha256"], content_hash(state["model"]), cfg.model.to_dict(), cfg.runtime.precision,
             cfg.runtime.channels_last, cfg.eval.protocol, cfg.eval.batch_episodes, episodes]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _evaluate_all(items: list[tuple[str, str]], cache_root: str, split: str, count: int | None,
                  each: Callable[[str, dict[str, Any], Any, Evaluated], None]) -> None:
    """Evaluate each ``(trial_id, checkpoint_dir)``'s best state on the bank ``split`` names (see
    :func:`episodes_key`); ``each(trial_id, stand-alone checkpoint, config, result)`` sees each."""
    from mtl.checkpoint import load_checkpoint
    from mtl.config import config_from_dict, validation_query
    from mtl.data import load_split
    from mtl.episodes import bank_seed, episode_bank
    from mtl.phases.evaluate import evaluate_checkpoint
    from mtl.pretraining import standalone
    from mtl.runtime import make_env
    from mtl.trial import load_test
    from mtl.tune.trainable import CHECKPOINT_FILE

    cks = {tid: load_checkpoint(Path(d) / CHECKPOINT_FILE, "meta") for tid, d in items}
    cfgs = {tid: config_from_dict(ck["config"]) for tid, ck in cks.items()}
    banks = {tid: episodes_key(cfg, split, count) for tid, cfg in cfgs.items()}
    keys = {tid: feature_key(cks[tid], cfgs[tid], banks[tid]) for tid in cks}
    features: dict[str, list] = {k: [] for k in set(keys.values()) if list(keys.values()).count(k) > 1}
    loaded: dict[str, Any] = {}
    for tid, _ in items:
        ck, cfg = standalone(cks.pop(tid), store=cache_root), cfgs[tid]
        env = replace(make_env(cfg.runtime), progress=False)
        if banks[tid] not in loaded:
            if split == "test":  # eval.data: by default the training data's test split
                loaded[banks[tid]] = (load_test(cfg, env), None)
            else:
                m, e = cfg.meta, cfg.eval
                val = load_split(cfg.data, "val", progress=False)
                val = val.to(env.device) if cfg.runtime.data_on_device else val
                q = validation_query(e)
                selection = episode_bank(val.offsets, m.way, m.shot, q, e.val_episodes, bank_seed(e.seed, "val"))
                fresh = episode_bank(val.offsets, m.way, m.shot, q, count, bank_seed(e.seed, "race"), exclude=selection)
                loaded[banks[tid]] = (val, selection if split == "val" else fresh)
        source, episodes = loaded[banks[tid]]
        res = evaluate_checkpoint(ck, cfg, env, source, episodes, features=features.get(keys[tid]))
        each(tid, ck, cfg, Evaluated(acc=res["acc"], ci95=res["ci95"], accs=res["accs"], episodes_key=banks[tid],
                                     shared_features=keys[tid] in features))


def compare_task(items: list[tuple[str, str]], cache_root: str, export: dict[str, str]) -> dict[str, Any]:
    """Ray task: test each ``(trial_id, checkpoint_dir)`` once on its test episodes; ``export``:
    trial id -> where to write its stand-alone checkpoint (the winner's ``best/meta_state.pt``)."""
    from mtl.checkpoint import save_checkpoint
    from mtl.data.evalset import data_label, eval_data
    from mtl.tune.cluster import setup_worker_logging

    setup_worker_logging("compare")
    out = {}

    def each(tid: str, ck: dict[str, Any], cfg: Any, res: Evaluated) -> None:
        if tid in export:
            save_checkpoint(export[tid], ck)
        out[tid] = Tested(**res.model_dump(), val_key=episodes_key(cfg, "val"), val_accs=ck["val_accs"],
                          backbone_sha256=ck["backbone_ref"]["sha256"],
                          test_data=data_label(eval_data(cfg), cfg.eval.data.split)).model_dump()

    _evaluate_all(items, cache_root, "test", None, each)
    return out


def race_task(items: list[tuple[str, str]], cache_root: str, episodes: int) -> dict[str, Any]:
    """Ray task: re-validate each ``(trial_id, checkpoint_dir)``'s best state on ``episodes`` fresh
    validation episodes, none of them a task of the validation bank that selected it."""
    from mtl.tune.cluster import setup_worker_logging

    setup_worker_logging("race")
    out: dict[str, Any] = {}
    _evaluate_all(items, cache_root, "race", episodes, lambda tid, ck, cfg, res: out.update({tid: res.model_dump()}))
    return out


def seed_task(checkpoint_dir: str, cache_root: str, seed: int) -> dict[str, Any]:
    """Ray task: the trial's config through :func:`~mtl.trial.run_trial` again with ``runtime.seed =
    seed`` on the trial's own pre-trained backbone (no pretraining), its best state tested on the same
    test episodes."""
    from mtl.checkpoint import load_checkpoint
    from mtl.config import config_from_dict
    from mtl.phases.evaluate import evaluate_checkpoint
    from mtl.pretraining import backbone_of, standalone
    from mtl.runtime import make_env
    from mtl.trial import load_test, run_trial
    from mtl.tune.cluster import setup_worker_logging
    from mtl.tune.trainable import CHECKPOINT_FILE

    setup_worker_logging(f"seed {seed}")
    ck = load_checkpoint(Path(checkpoint_dir) / CHECKPOINT_FILE, "meta")
    cfg = config_from_dict(ck["config"]).with_overrides({"runtime.seed": seed})
    env = replace(make_env(cfg.runtime), progress=False)
    backbone = backbone_of(ck["backbone_ref"], cfg, cache_root)
    trainer = run_trial(cfg, store=cache_root, report=lambda m, c: None, env=env, backbone=backbone).meta
    state = standalone({**trainer.state_dict(), "config": cfg.to_dict()}, backbone)
    res = evaluate_checkpoint(state, cfg, env, load_test(cfg, env))
    return Reseeded(seed=seed, val_acc=trainer.best_acc, test_acc=res["acc"], test_ci95=res["ci95"], accs=res["accs"],
                    epochs=trainer.epoch, backbone_sha256=backbone.ref["sha256"]).model_dump()


def finish_task(config: dict[str, Any], cache_root: str) -> dict[str, Any] | None:
    """Ray task: a config that ASHA stopped in pretraining (the baseline of a sweep that searches
    pretraining) trained to its end, the rest of its pretraining from the store (the build it left)
    and then meta-training, and its best state tested on the test episodes; None if it diverged."""
    from mtl.config import config_from_dict
    from mtl.data.evalset import data_label, eval_data
    from mtl.phases.evaluate import evaluate_checkpoint
    from mtl.pretraining import standalone
    from mtl.runtime import make_env
    from mtl.trial import load_test, run_trial
    from mtl.tune.cluster import setup_worker_logging

    setup_worker_logging("baseline")
    cfg = config_from_dict(config)
    env = replace(make_env(cfg.runtime), progress=False)
    end = run_trial(cfg, store=cache_root, report=lambda m, c: None, env=env)
    if end.meta is None or end.meta.best_acc < 0:  # pretraining diverged, or no epoch was validated
        return None
    state = standalone({**end.meta.state_dict(), "config": cfg.to_dict()}, end.backbone)
    res = evaluate_checkpoint(state, cfg, env, load_test(cfg, env))
    return Tested(acc=res["acc"], ci95=res["ci95"], accs=res["accs"], episodes_key=episodes_key(cfg),
                  val_key=episodes_key(cfg, "val"), val_accs=state["val_accs"], backbone_sha256=end.backbone.ref["sha256"],
                  test_data=data_label(eval_data(cfg), cfg.eval.data.split), finished=True,
                  val_acc=end.meta.best_acc).model_dump()


def ray_runner(resources: dict[str, float]) -> Runner:
    """Run ``(name, fn, args)`` calls as Ray tasks with ``resources``, all at once as the cluster
    allows; ``done(name, result)`` sees each as it finishes."""

    def run(calls: list[tuple[str, Callable, tuple]], done: Callable[[str, Any], None]) -> None:
        import ray

        from mtl.tune.cluster import remote

        pending = {remote(fn, resources).remote(*args): name for name, fn, args in calls}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done(pending.pop(ready[0]), ray.get(ready[0]))

    return run


def cached(path: Path, kind: type[BaseModel]) -> Any:
    """A result kept at ``path``, None if there is none (or one cut short by a crash: run it again)."""
    try:
        return kind.model_validate_json(path.read_bytes()) if path.is_file() else None
    except (ValidationError, ValueError):
        return None


def keep(path: Path, result: BaseModel) -> None:
    write_text_atomic(path, result.model_dump_json() + "\n")
