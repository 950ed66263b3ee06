"""After the search: the winner, the runners-up and the baseline on the same test episodes, and
the winner's and the baseline's meta-training again with other seeds (``tune.final_seeds``).

Which trials (:func:`compared`): the winner (best validation accuracy), the next
``tune.compare_top`` by validation accuracy and the baseline. One Ray task with a trial's
resources tests them all (:func:`compare_task`): the test split is decoded once, every trial sees
the same episodes, and trials with the same feature extractor (backbone, learnt scale and shift)
embed them once. Each seed run is a Ray task of its own (:func:`seed_task`) that runs the trial's
config through :func:`mtl.trial.run_trial` with ``runtime.seed`` changed, on the trial's own
pre-trained backbone, so seeds share the pretraining. Every result is kept under ``<sweep>/final/``
as it arrives, so a resumed driver uses what an earlier one finished and runs nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from mtl.files import write_text_atomic
from mtl.results import ComparedTrial, Comparison, EpochPaired, FinalSeeds, Role, SeedRun, SeedRuns, TrialRow
from mtl.stats import paired, spread

log = logging.getLogger(__name__)

FINAL_DIR = "final"
Runner = Callable[[list[tuple[str, Callable, tuple]], Callable[[str, Any], None]], None]


class Tested(BaseModel):
    """One trial's best state on the test episodes (``final/test-<trial>.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    acc: float
    ci95: float
    accs: list[float]
    episodes_key: str  # what decides the test episodes (:func:`episodes_key`)
    val_key: str  # ... and the validation bank
    val_accs: list[dict[str, Any]]  # per epoch: {"epoch", "accs"} on the validation bank
    shared_features: bool
    backbone_sha256: str
    test_data: str = ""


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


def compared(rows: list[TrialRow], baseline: str | None, top: int) -> list[tuple[TrialRow, list[Role]]]:
    """(row, roles) of the trials to test: the winner, the next ``top`` and the baseline, in that
    order; a role list holds ``winner``, ``runner_up`` and/or ``baseline``."""
    ranked = sorted((t for t in rows if t.ranked), key=lambda t: t.order)
    out: list[tuple[TrialRow, list[Role]]] = [(t, ["winner" if i == 0 else "runner_up"])
                                              for i, t in enumerate(ranked[:1 + top])]
    for t, roles in out:
        if t.trial_id == baseline:
            roles.append("baseline")
    base = next((t for t in ranked if t.trial_id == baseline), None)
    if base is not None and all(t is not base for t, _ in out):
        out.append((base, ["baseline"]))
    return out


def episodes_key(cfg: Any, split: str = "test") -> str:
    """What decides a bank of episodes: the data, way, shot, queries, count and seed."""
    from mtl.config import eval_query, validation_query
    from mtl.episodes import bank_seed

    data = {k: v for k, v in cfg.data.to_dict().items() if k != "cache_dir"}
    m, e = cfg.meta, cfg.eval
    if split == "test":
        data["eval.data"] = e.data.to_dict()
    count, seed = (e.episodes, bank_seed(e.seed, "test")) if split == "test" else (e.val_episodes, bank_seed(e.seed, "val"))
    query = eval_query(m, e) if split == "test" else validation_query(e)
    return json.dumps([data, m.way, m.shot, query, count, seed], sort_keys=True)


def _feature_key(ck: dict[str, Any], cfg: Any) -> str:
    """Trials with equal keys compute equal features on the test episodes."""
    from mtl.pretraining import content_hash

    state = ck["best_state"] or ck["current"]
    parts = [ck["backbone_ref"]["sha256"], content_hash(state["model"]), cfg.model.to_dict(), cfg.runtime.precision,
             cfg.runtime.channels_last, cfg.eval.protocol, cfg.eval.batch_episodes, episodes_key(cfg)]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def compare_task(items: list[tuple[str, str]], cache_root: str, export: dict[str, str]) -> dict[str, Any]:
    """Ray task: test each ``(trial_id, checkpoint_dir)`` once on its test episodes; ``export``:
    trial id -> where to write its stand-alone checkpoint (the winner's ``best/meta_state.pt``)."""
    from mtl.checkpoint import load_checkpoint, save_checkpoint
    from mtl.config import config_from_dict
    from mtl.data.evalset import data_label, eval_data
    from mtl.phases.evaluate import evaluate_checkpoint
    from mtl.pretraining import standalone
    from mtl.runtime import make_env
    from mtl.trial import load_test
    from mtl.tune.cluster import setup_worker_logging
    from mtl.tune.trainable import CHECKPOINT_FILE

    setup_worker_logging("compare")
    cks = {tid: load_checkpoint(Path(d) / CHECKPOINT_FILE, "meta") for tid, d in items}
    keys = {tid: _feature_key(ck, config_from_dict(ck["config"])) for tid, ck in cks.items()}
    features: dict[str, list] = {k: [] for k in set(keys.values()) if list(keys.values()).count(k) > 1}
    splits: dict[str, Any] = {}
    out = {}
    for tid, _ in items:
        ck = standalone(cks.pop(tid), store=cache_root)
        cfg = config_from_dict(ck["config"])
        env = replace(make_env(cfg.runtime), progress=False)
        data_key = json.dumps([cfg.data.to_dict(), cfg.eval.data.to_dict()], sort_keys=True)
        if data_key not in splits:
            splits[data_key] = load_test(cfg, env)  # eval.data: by default the training data's test split
        res = evaluate_checkpoint(ck, cfg, env, splits[data_key], features=features.get(keys[tid]))
        if tid in export:
            save_checkpoint(export[tid], ck)
        out[tid] = Tested(acc=res["acc"], ci95=res["ci95"], accs=res["accs"], episodes_key=episodes_key(cfg),
                          val_key=episodes_key(cfg, "val"), val_accs=ck["val_accs"],
                          shared_features=keys[tid] in features, backbone_sha256=ck["backbone_ref"]["sha256"],
                          test_data=data_label(eval_data(cfg), cfg.eval.data.split)).model_dump()
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


def _cached(path: Path, kind: type[BaseModel]) -> Any:
    try:
        return kind.model_validate_json(path.read_bytes()) if path.is_file() else None
    except (ValidationError, ValueError):  # cut short by a crash: run it again
        return None


def _keep(path: Path, result: BaseModel) -> None:
    write_text_atomic(path, result.model_dump_json() + "\n")


def run_finals(spec: Any, rows: list[TrialRow], baseline: str | None, cache_root: str, exp: Path,
               run: Runner) -> dict[str, Any] | None:
    """The paired comparison and the seed runs; None when no trial left a checkpoint."""
    chosen = compared(rows, baseline, spec.tune.compare_top)
    if not chosen:
        return None
    folder = exp / FINAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    win = chosen[0][0]
    tests = {t.trial_id: _cached(folder / f"test-{t.trial_id}.json", Tested) for t, _ in chosen}
    missing = [(t.trial_id, t.checkpoint) for t, _ in chosen if tests[t.trial_id] is None]
    if missing:
        (exp / "best").mkdir(parents=True, exist_ok=True)
        export = {win.trial_id: str(exp / "best" / "meta_state.pt")}

        def keep(_: str, result: dict[str, Any]) -> None:
            for tid, r in result.items():
                tests[tid] = Tested.model_validate(r)
                _keep(folder / f"test-{tid}.json", tests[tid])

        log.info("testing %d trial(s) on the same test episodes: %s", len(missing), ", ".join(t for t, _ in missing))
        run([("compare", compare_task, (missing, cache_root, export))], keep)
    seeds = _seed_runs(spec, [(t, r) for t, r in chosen if {"winner", "baseline"} & set(r)], cache_root, folder, run)
    return {"chosen": chosen, "tests": tests, "seeds": seeds}


def search_seed(t: TrialRow, spec: Any) -> int:
    """The ``runtime.seed`` a trial ran with in the search (seed runs take the next ones)."""
    return int(t.config.get("runtime.seed", spec.base.runtime.seed))


def _seed_runs(spec: Any, chosen: list, cache_root: str, folder: Path, run: Runner) -> dict[str, list[Reseeded]]:
    """trial id -> its extra seed runs (``tune.final_seeds - 1`` of them), from the cache or run now."""
    n = spec.tune.final_seeds
    if n <= 1:
        return {}
    out: dict[str, list[Reseeded]] = {t.trial_id: [] for t, _ in chosen}
    calls = []
    for t, _ in chosen:
        first = search_seed(t, spec)
        for seed in range(first + 1, first + n):
            if (hit := _cached(folder / f"seed-{t.trial_id}-{seed}.json", Reseeded)) is not None:
                out[t.trial_id].append(hit)
            else:
                calls.append((f"{t.trial_id}:{seed}", seed_task, (t.checkpoint, cache_root, seed)))

    def keep(name: str, result: dict[str, Any]) -> None:
        tid = name.split(":")[0]
        r = Reseeded.model_validate(result)
        _keep(folder / f"seed-{tid}-{r.seed}.json", r)
        out[tid].append(r)

    if calls:
        log.info("meta-training again with other seeds: %d run(s) (tune.final_seeds = %d)", len(calls), n)
        run(calls, keep)
    return {tid: sorted(v, key=lambda r: r.seed) for tid, v in out.items()}


def comparison(finals: dict[str, Any], spec: Any) -> tuple[Comparison, FinalSeeds | None]:
    """The summary's ``comparison`` and ``final_seeds``: each compared trial's test accuracy with its
    95% CI, the winner minus each other one over the same test episodes (and per epoch on the
    validation bank), and each seeded config's mean and spread over seeds."""
    tests, chosen = finals["tests"], finals["chosen"]
    w = tests[chosen[0][0].trial_id]
    entries = []
    for i, (t, roles) in enumerate(chosen):
        r: Tested = tests[t.trial_id]
        same = r.episodes_key == w.episodes_key and len(w.accs) > 1
        entries.append(ComparedTrial(
            trial_id=t.trial_id, roles=roles, config=t.config, val_acc=t.best_val_acc, test_acc=r.acc,
            test_ci95=r.ci95, episodes=len(r.accs), shared_features=r.shared_features, stopped_early=t.stopped_early,
            epoch=t.epoch, planned_epochs=t.planned_epochs,
            vs_winner=paired(w.accs, r.accs) if i and same else None, val_vs_winner=_val_pairs(w, r) if i else []))
    seeds = None
    if finals["seeds"]:
        seeds = FinalSeeds(n=spec.tune.final_seeds, trials=[
            _seeds(t, roles, tests[t.trial_id], finals["seeds"][t.trial_id], search_seed(t, spec))
            for t, roles in chosen if t.trial_id in finals["seeds"]])
    return Comparison(episodes=len(w.accs), trials=entries), seeds


def _val_pairs(w: Tested, r: Tested) -> list[EpochPaired]:
    """Winner minus ``r`` on the validation bank at every epoch both were validated."""
    if w.val_key != r.val_key:
        return []
    other = {v["epoch"]: v["accs"] for v in r.val_accs}
    return [EpochPaired(epoch=v["epoch"], **paired(v["accs"], other[v["epoch"]]).model_dump())
            for v in w.val_accs if v["epoch"] in other and len(v["accs"]) > 1]


def _seeds(t: TrialRow, roles: list[Role], test: Tested, runs: list[Reseeded], seed: int) -> SeedRuns:
    """One config over its seeds: the search's own run first, then the re-runs."""
    first = SeedRun(seed=seed, val_acc=t.best_val_acc, test_acc=test.acc, test_ci95=test.ci95,
                    epochs=t.epoch)  # fewer than the re-runs' if ASHA stopped the trial
    rows = [first, *(SeedRun(seed=r.seed, val_acc=r.val_acc, test_acc=r.test_acc, test_ci95=r.test_ci95,
                             epochs=r.epochs) for r in runs)]
    return SeedRuns(trial_id=t.trial_id, roles=roles, runs=rows, val=spread([r.val_acc for r in rows]),
                    test=spread([r.test_acc for r in rows]),
                    # same config, another seed, same episodes: the noise floor of a single run
                    reseed_vs_search=paired(runs[0].accs, test.accs) if runs else None,
                    backbones=sorted({r.backbone_sha256 for r in runs} | {test.backbone_sha256}))
