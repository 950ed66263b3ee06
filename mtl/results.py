"""What a sweep produces, as types: a trial's row, the comparisons after the search, the summary.

The driver (:mod:`mtl.tune`) builds these; the printed table, ``report.html`` (:mod:`mtl.report`),
MLflow (:mod:`mtl.tracking`) and a resumed driver read them. ``summary.json`` is the serialisation of
:class:`SweepSummary` (:meth:`SweepSummary.save`, :meth:`SweepSummary.load`); nothing reads it as a
dict. Every model is frozen: a changed row is a new row (``model_copy(update=...)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from mtl.errors import ConfigError
from mtl.files import write_text_atomic
from mtl.metrics import is_number
from mtl.stats import Paired, Spread

Outcome = Literal["completed", "stopped_early", "diverged", "errored"]
Phase = Literal["pretrain", "meta"]
Role = Literal["winner", "runner_up", "baseline"]


class Result(BaseModel):
    # non-finite numbers (a diverged trial's training loss) are written as null: summary.json stays JSON
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="null")


class TrialInfo(Result):
    """A trial as the driver knows it while the sweep runs: what MLflow's child run is named and
    holds (the Ray callback of :mod:`mtl.tune.callbacks` makes it from Ray Tune's ``Trial``)."""

    trial_id: str
    name: str  # Ray Tune's name of the trial
    seq: int | None = None  # the searcher's sequence number (1: the first it proposed)
    config: dict[str, Any] = Field(default_factory=dict)  # the trial's whole config, as the trainable gets it
    searched: dict[str, Any] = Field(default_factory=dict)  # the values the searcher chose, dotted keys
    path: str | None = None  # its folder in the sweep's storage
    retries: int = 0


class Point(Result):
    epoch: int
    val_acc: float


class TrialRow(Result):
    """How one trial ended: its searched values, last metrics, outcome and validation curve.

    ``outcome`` is decided once, by :func:`mtl.tune.outcome.trial_row`; a diverged trial holds no
    checkpoint (the weights after a non-finite update are no model), so it is never a winner."""

    trial_id: str
    seq: int | None = None  # the searcher's sequence number (1: the first it proposed)
    config: dict[str, Any] = Field(default_factory=dict)  # the searched values, dotted keys
    val_acc: float | None = None
    best_val_acc: float | None = None
    val_ci95: float | None = None
    best_val_ci95: float | None = None
    train_loss: float | None = None
    stopped_in: Phase | None = None  # the phase of its last result (None: it reported nothing)
    epoch: int = 0  # the last epoch it reported, of that phase
    planned_epochs: int | None = None  # of meta-training
    planned_pretrain_epochs: int | None = None  # of its own pretraining, where the sweep reported it
    outcome: Outcome
    diverged_update: int | None = None
    error: str | None = None
    checkpoint: str | None = None
    history: list[Point] = Field(default_factory=list)  # meta-validation accuracy per meta epoch
    pretrain_history: list[Point] = Field(default_factory=list)  # the probe's accuracy per pretraining epoch
    baseline: bool = False  # the base config, proposed first
    rank: int | None = None  # its place in the sweep's order (1: the winner; mtl.tune.race.ranked)

    @computed_field
    @property
    def stopped_early(self) -> bool:
        return self.outcome == "stopped_early"

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: Any) -> Any:
        """summary.json holds ``stopped_early`` for its readers; it is derived, not read back."""
        return {k: v for k, v in data.items() if k != "stopped_early"} if isinstance(data, dict) else data

    @property
    def reached(self) -> str:
        """``4/6``, or ``pretraining 2/5`` for a trial that ended in pretraining."""
        if self.stopped_in == "pretrain":
            return f"pretraining {self.epoch}" + (f"/{self.planned_pretrain_epochs}"
                                                 if self.planned_pretrain_epochs else "")
        return f"{self.epoch}/{self.planned_epochs}" if self.planned_epochs else str(self.epoch)

    @property
    def ranked(self) -> bool:
        """Whether it can win: it left a checkpoint and a validation accuracy."""
        return self.checkpoint is not None and self.best_val_acc is not None

    @property
    def order(self) -> tuple[float, float, str]:
        """The sort key of "best first": the highest best validation accuracy, ties to the trial the
        searcher proposed first (then its id), so the order never depends on how the rows came."""
        acc = -self.best_val_acc if self.best_val_acc is not None else math.inf
        return acc, self.seq if self.seq is not None else math.inf, self.trial_id

    @property
    def place(self) -> tuple[float, tuple[float, float, str]]:
        """The sort key of the sweep's order: its ``rank`` where the sweep gave it one, else :attr:`order`."""
        return (self.rank if self.rank is not None else math.inf), self.order


class EpochPaired(Paired):
    epoch: int


class ComparedTrial(Result):
    """One trial of the paired comparison on the test episodes."""

    trial_id: str
    roles: list[Role]
    config: dict[str, Any]
    val_acc: float | None
    test_acc: float
    test_ci95: float
    episodes: int
    shared_features: bool = False
    stopped_early: bool = False
    finished: bool = False  # ASHA stopped it in pretraining; trained to its end after the search to be tested
    epoch: int = 0
    planned_epochs: int | None = None
    vs_winner: Paired | None = None  # None for the winner, and for a trial tested on other episodes
    val_vs_winner: list[EpochPaired] = Field(default_factory=list)  # the same pairs on the validation bank

    @property
    def is_winner(self) -> bool:
        return "winner" in self.roles


class Comparison(Result):
    episodes: int
    trials: list[ComparedTrial]

    def entry(self, role: Role) -> ComparedTrial | None:
        return next((t for t in self.trials if role in t.roles), None)


class SeedRun(Result):
    seed: int
    val_acc: float | None
    test_acc: float
    test_ci95: float
    epochs: int


class SeedRuns(Result):
    """One config over its seeds: the search's own run first, then the re-runs."""

    trial_id: str
    roles: list[Role]
    runs: list[SeedRun]
    val: Spread
    test: Spread
    reseed_vs_search: Paired | None  # same config, another seed, same episodes: the noise floor of one run
    backbones: list[str]


class FinalSeeds(Result):
    n: int
    trials: list[SeedRuns]


class RaceEntry(Result):
    """A finalist re-validated on the race's fresh episodes."""

    trial_id: str
    val_acc: float  # on the race's episodes
    val_ci95: float
    selection_val_acc: float  # the best validation accuracy that made it a finalist
    vs_leader: Paired | None = None  # the leader minus it, over the same episodes (None: the leader)


class Race(Result):
    """The finalists of the search (its top trials by validation accuracy) on a fresh validation bank,
    none of its episodes a task that selected them: the leader is the winner, and it is separated
    from the runner-up when the interval of their paired difference excludes zero."""

    episodes: int
    trials: list[RaceEntry]  # the leader first
    separated: bool | None  # None: no runner-up to tell apart (one finalist, or other episodes)
    says: str  # the same in words


class Best(Result):
    """The winner: its searched values, validation and test accuracy, and where its files are."""

    trial_id: str
    config: dict[str, Any]
    val_acc: float
    val_ci95: float | None
    race_acc: float | None = None  # on the race's fresh validation episodes
    race_ci95: float | None = None
    ties: list[str]  # trials whose validation interval overlaps the winner's
    baseline: bool
    test_acc: float
    test_ci95: float
    test_episodes: int
    train_data: str
    test_data: str
    checkpoint: str
    config_file: str
    resolved_config: dict[str, Any]

    @property
    def folder(self) -> Path:
        """The sweep's folder (``best/`` lies in it)."""
        return Path(self.checkpoint).parents[1]


class Baseline(Result):
    trial_id: str | None  # None: the baseline trial is not among the trials
    config: dict[str, Any]


class MlflowLink(Result):
    tracking_uri: str
    experiment: str
    parent_run_id: str | None
    ui_url: str | None = None


class SweepSummary(Result):
    """A finished sweep: ``summary.json``."""

    name: str
    spec: str
    metric: str
    space: dict[str, dict[str, list[Any]]]  # key -> {distribution kind: its arguments}, as the spec wrote it
    distributions: dict[str, str]  # key -> the Optuna distribution the searcher drew it from, as Optuna's JSON
    resources: dict[str, float]
    baseline: Baseline | None
    best: Best | None
    race: Race | None = None
    comparison: Comparison | None = None
    final_seeds: FinalSeeds | None = None
    trials: list[TrialRow]
    wall_s: float
    verdict: str = ""
    mlflow: MlflowLink | None = None
    reused: bool = Field(False, exclude=True)  # this launch found it finished and ran nothing

    def count(self, outcome: Outcome) -> int:
        return sum(t.outcome == outcome for t in self.trials)

    def ranked(self) -> list[TrialRow]:
        """Every trial in the sweep's order (:attr:`TrialRow.rank`: the race's finalists first)."""
        return sorted(self.trials, key=lambda t: t.place)

    def save(self, path: str | Path) -> None:
        write_text_atomic(path, self.model_dump_json(indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> SweepSummary:
        """summary.json; a ConfigError naming the fix when it is not one."""
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as e:
            first = str(e).splitlines()[0][:200]
            raise ConfigError(f"{path} is not the summary of a finished sweep ({first}); run the sweep again with "
                              "--resume to write it anew") from None


def pct(acc: Any, ci: Any = None, digits: int = 2) -> str:
    """``80.00%`` or ``80.00% ± 1.00`` (points); ``-`` when there is no finite accuracy."""
    if not (is_number(acc) and math.isfinite(acc)):
        return "-"
    return f"{100 * acc:.{digits}f}%" + (f" ± {100 * ci:.{digits}f}" if is_number(ci) else "")


def fmt(v: Any) -> str:
    """A searched value as a table shows it: floats to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
