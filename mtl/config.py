"""One typed, validated experiment configuration, declared once.

A config is a tree of frozen sections (data, model, pretrain, meta, hard_tasks, eval, runtime);
each field carries its type, range and choices (:mod:`mtl.schema`). It is built in one
documented order: field defaults < the YAML file (and the files it names under ``base:``) <
dotted overrides such as ``meta.inner_lr=0.02`` (:func:`load_config`, in :mod:`mtl.configs`).
An unknown key, a wrong type or an impossible value raises :class:`~mtl.errors.ConfigError`
with one line that names the key and the fix.

Pretraining fields left ``None`` are filled from the chosen recipe (:mod:`mtl.recipes`), so the
resolved config written next to a result states every number that was used.
Fields that change what pretraining produces are marked (:func:`~mtl.schema.pretraining_field`,
or a section's ``pretraining = True``); :func:`pretraining_keys` lists them and the pretraining
cache key is derived from them.
"""

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from mtl.errors import ConfigError
from mtl.recipes import DEFAULT_RECIPE, merge_layers
from mtl.registry import BACKBONES, DATASETS, HEAD_INITS, NORMALIZATIONS, RECIPES
from mtl.schema import (
    Section,
    as_mapping,
    at_least,
    choice,
    fail,
    fields,
    flatten,
    in_range,
    int_in,
    load,
    marked,
    positive,
    pretraining_field,
)
from mtl.schema import check_key as schema_check_key

Count = at_least(1)

# Upper bounds that no real run reaches, each far above what the reference codes and papers use: a
# value above one is a typo or an attack, not an experiment (meta.epochs 1e20 was accepted with an ETA
# of 7e17 minutes; eval.inner_steps 1e9 made predict never answer).
EPOCHS = int_in(1, 100_000, ": no run needs more epochs (the reference codes train 17 to 200)")
STEPS = int_in(1, 100_000, ": no run needs more steps (the reference codes take 20 to 100)")
BATCHES = int_in(1, 1_000_000, ": no run needs more meta-batches")
BATCH = int_in(1, 65_536, ": no device holds a larger batch")  # images, tasks of a meta-batch, episodes per pass
# a 95% interval needs two episodes (one reports ± 0.00); the papers test 600, some works 10,000
EPISODES = int_in(2, 1_000_000, ": a 95% interval needs at least two episodes (one reports ± 0.00), and no "
                  "test needs more than a million")
# the largest class of a few-shot dataset holds about 1,300 images (tieredImageNet)
QUERIES = int_in(1, 100_000, ": an episode needs a query per class, and no dataset's class holds 100,000 images")
LearningRate = positive(" (a learning rate)")
Decay = in_range(0, 1, "(]", " (a decay factor)")


class Synthetic(Section):
    """Shape of the procedural dataset (``data.dataset: synthetic``)."""

    pretraining: ClassVar[bool] = True
    train_classes: Count = 64
    val_classes: Count = 16
    test_classes: Count = 20
    images_per_class: Count = 60
    seed: int = 0  # seed of the generator: same seed, same images


class Omniglot(Section):
    """Omniglot's splits (``data.dataset: omniglot``): Lake et al.'s background alphabets give
    train and val, the evaluation alphabets give test."""

    pretraining: ClassVar[bool] = True
    val_alphabets: Count = 5  # the last N background alphabets (sorted by name) form the val split
    rotations: bool = False  # True: each character also at 90, 180, 270 degrees, as new classes (Vinyals et al.)


class Data(Section):
    dataset: choice(DATASETS) = pretraining_field("synthetic")
    root: str | None = pretraining_field(None)  # dataset folder; enters the pretraining key as the dataset's fingerprint
    # images are resized to image_size x image_size; the cap is far above few-shot sets' 28-84 px (memory)
    image_size: int_in(16, 1024, " pixels") = pretraining_field(32)
    normalization: choice(NORMALIZATIONS) = pretraining_field("pt")
    cache_dir: str | None = None  # uint8 array cache; default $MTL_CACHE_DIR or ~/.cache/mtl
    synthetic: Synthetic = Field(default_factory=Synthetic)
    omniglot: Omniglot = Field(default_factory=Omniglot)


class Model(Section):
    backbone: choice(BACKBONES) = pretraining_field("tiny")  # resnet12 (paper), resnet25 (official PyTorch code), tiny
    # BN in meta-transfer (docs/algorithm.md §9.3): frozen = running stats and affine fixed;
    # train_affine = the PyTorch code: BN affine learns with lr_ss, and in training each task's support
    # and query set are normalised by their own batch statistics (running statistics at evaluation);
    # batch_stats = TF behaviour, batch statistics always (transductive at test).
    bn_mode: Literal["frozen", "train_affine", "batch_stats"] = "frozen"
    # which convs get scale and shift: all (the PyTorch code; a 1x1 conv's scale has as many numbers as
    # its weight, so it is fine-tuned) or 3x3 (the TF code: 1x1 shortcuts stay frozen)
    ss_scope: Literal["all", "3x3"] = "all"
    scale_granularity: Literal["kernel", "channel"] = "kernel"  # Cout x Cin x 1 x 1, or Cout x 1 x 1 x 1 ablation


class Pretrain(Section):
    pretraining: ClassVar[bool] = True
    recipe: choice(RECIPES) = DEFAULT_RECIPE
    epochs: EPOCHS  # this and the fields down to dropout: None or missing takes the recipe's value
    batch_size: BATCH
    optimizer: Literal["sgd", "adam"]
    lr: LearningRate
    momentum: in_range(0, 1, "[)")
    nesterov: bool
    weight_decay: in_range(0, None)
    lr_step: EPOCHS  # epochs between learning-rate decays
    lr_gamma: Decay
    augment: bool  # random resized crop + horizontal flip
    crop_scale: in_range(0, 1, "(]") = 0.08  # smallest crop area share (torchvision's RandomResizedCrop default)
    dropout: in_range(0, 1, "[)")  # dropout after each residual block, pretraining only
    # the pretraining classifier, dropped before meta-transfer: linear, or mlp = features -> 1000 -> ReLU -> classes
    head: Literal["linear", "mlp"]
    selection: Literal["best", "last"]  # backbone kept: best probe accuracy, or the last epoch's (TF: fixed iteration)
    # the probe: a linear head adapted on frozen features over a fixed bank of validation episodes
    val_every: Count = 1
    val_way: at_least(2) = 5
    val_shot: Count = 1
    val_query: Count = 15
    val_episodes: EPISODES = 600
    probe_steps: STEPS = 100
    probe_lr: LearningRate = 0.01
    checkpoint: str | None = None  # an existing pretrained backbone: skip pretraining

    @model_validator(mode="before")
    @classmethod
    def _from_recipe(cls, values: Any) -> Any:
        if not isinstance(values, Mapping):
            return values
        recipe = values.get("recipe", DEFAULT_RECIPE)
        if not isinstance(recipe, str) or recipe not in RECIPES:
            return values  # the recipe field reports it
        filled = {k: v for k, v in RECIPES.get(recipe).items() if values.get(k) is None}
        return {**values, **filled}


class Meta(Section):
    way: at_least(2, " (a task needs two classes)") = 5
    shot: Count = 1
    query: Count = 15  # query images per class in meta-training tasks
    epochs: EPOCHS = 100
    batches_per_epoch: BATCHES = 100  # normal meta-batches per epoch (hard ones come on top)
    meta_batch: BATCH = 2  # tasks averaged per outer update
    inner_lr: LearningRate = 0.01  # on the mean support cross-entropy
    inner_steps: STEPS = 20  # inner steps in meta-training (evaluation: eval.inner_steps)
    first_order: bool = False  # True: do not differentiate through the inner loop
    lr_ss: LearningRate = 1e-4  # Adam lr of scale, shift (and BN affine in train_affine mode)
    lr_head: LearningRate = 1e-3  # Adam lr of the head initialisation
    # outer updates (normal + hard) between decays
    lr_step: int_in(1, 100_000_000, ": no run takes that many updates") = 1000
    lr_gamma: Decay = 0.5
    lr_floor: in_range(0, None) = 0.0  # no group's lr decays below this
    head_init: choice(HEAD_INITS) = "kaiming"


class HardTasks(Section):
    """Hard-task meta-batch (docs/algorithm.md §4.3)."""

    ratio: in_range(0, 1, "[)", ": the share of hard updates (0 turns them off)") = 1 / 3
    window: BATCHES = 10  # normal meta-batches whose failure classes are pooled
    top_m: Count = 1  # failure classes taken from each task
    min_pool: at_least(0) = 0  # pool size needed to run hard batches (at least meta.way)


class EvalData(Section):
    """The test set (cross-domain evaluation): by default the training data's test split. Another
    dataset is read at the trained model's ``data.image_size`` and ``data.normalization``."""

    dataset: choice(DATASETS) | None = None  # None: data.dataset
    root: str | None = None  # None: data.root when the dataset is data.dataset's
    split: Literal["train", "val", "test"] = "test"


class Eval(Section):
    episodes: EPISODES = 600  # test episodes
    query: Count = 15  # query images per class at evaluation (protocol: standard)
    inner_steps: STEPS = 100
    val_episodes: EPISODES = 600  # size of the fixed validation bank used for model selection
    val_query: QUERIES = 15  # query images per class in validation episodes, under either protocol
    val_every: Count = 1  # meta-train epochs between validations
    protocol: Literal["standard", "paper"] = "standard"  # paper: query = shot, flipped support copies
    # seed of three separate episode banks: the pretraining probe's, meta-validation's, the test episodes
    seed: int = pretraining_field(0)
    batch_episodes: BATCH = 32  # episodes evaluated together
    data: EvalData = Field(default_factory=EvalData)  # the test set; default: the training data's test split


class Runtime(Section):
    seed: int = pretraining_field(0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = pretraining_field("fp32")  # autocast for the backbone
    # faster for these convnets on GPUs and on CPUs (2x training on a 2-core CPU)
    channels_last: bool = pretraining_field(True)
    # torch CPU threads (None: torch's default); a fixed cap, not this machine's cores: sweeps run on other nodes
    threads: int_in(1, 1024, " threads") | None = None
    data_on_device: bool = True  # keep the uint8 image cache on the device
    progress: bool = True  # progress bars (only when stderr is a terminal)


class Config(Section):
    data: Data = Field(default_factory=Data)
    model: Model = Field(default_factory=Model)
    pretrain: Pretrain = Field(default_factory=Pretrain)
    meta: Meta = Field(default_factory=Meta)
    hard_tasks: HardTasks = Field(default_factory=HardTasks)
    eval: Eval = Field(default_factory=Eval)
    runtime: Runtime = Field(default_factory=Runtime)

    @model_validator(mode="after")
    def _consistent(self) -> "Config":
        if self.hard_tasks.ratio > 0 and self.hard_tasks.top_m >= self.meta.way:
            raise fail(f"hard_tasks.top_m = {self.hard_tasks.top_m} must be smaller than meta.way ({self.meta.way})")
        if self.data.dataset != "synthetic" and not self.data.root:
            raise fail(f"data.root is not set for dataset {self.data.dataset!r}; "
                       f"pass --set data.root=/path/to/{self.data.dataset}")
        return self

    def with_overrides(self, overrides: Mapping[str, Any] | Sequence[str]) -> "Config":
        """A new validated config with dotted overrides applied as one layer over this config
        (:func:`merge_layers`: a recipe switch moves the fields that hold the old recipe's values)."""
        return load(Config, {}, merge_layers([flatten(self.to_dict(), Config), as_mapping(overrides)]))


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Strictly build a Config from a (possibly partial) nested mapping."""
    return load(Config, tree)


def pretraining_keys() -> list[str]:
    """Dotted keys that change what pretraining produces (marked in the sections above)."""
    return marked(Config, "pretraining")


def affects_pretraining(key: str) -> bool:
    """Whether searching ``key`` gives trials different pretraining entries."""
    return key in pretraining_keys()


def hard_batches_per_window(ht: HardTasks) -> float:
    """Hard meta-batches owed after each window so that hard / (hard + normal) = ratio
    (fractional values are carried over windows; 1/3 with a window of 10 gives the authors' 5)."""
    return ht.window * ht.ratio / (1 - ht.ratio) if ht.ratio > 0 else 0.0


def eval_query(meta: Meta, ev: Eval) -> int:
    """Query images per class at evaluation: ``shot`` under the paper protocol (Q = K)."""
    return meta.shot if ev.protocol == "paper" else ev.query


def validation_query(ev: Eval) -> int:
    """Query images per class of the validation bank: ``eval.val_query``, whatever the test's protocol."""
    return ev.val_query


def check_against_data(cfg: Config, splits: Mapping[str, tuple[int, int]]) -> None:
    """Episode shapes against the data: ``splits`` maps split -> (classes, fewest images in a class).
    Called after the (cheap) dataset listing and before any decoding or training."""

    def need(split: str, way: int, per_class: int, what: str, way_key: str, fix: str = "") -> None:
        n_cls, min_imgs = splits[split]
        if way > n_cls:
            raise ConfigError(f"{way_key} = {way} but the {split} split has only {n_cls} classes; "
                              f"lower {way_key} to at most {n_cls}")
        if per_class > min_imgs:
            raise ConfigError(f"{what} = {per_class} images per class but a {split} class has only {min_imgs}; "
                              f"{fix or 'lower the shot or query counts'}")

    m, p = cfg.meta, cfg.pretrain
    need("train", m.way, m.shot + m.query, f"meta.shot + meta.query ({m.shot}+{m.query})", "meta.way")
    qv, room = validation_query(cfg.eval), splits["val"][1] - m.shot  # room: queries a val class has beside the shot
    need("val", m.way, m.shot + qv, f"meta.shot + eval.val_query ({m.shot}+{qv})", "meta.way",
         f"lower eval.val_query (validation queries per class) to at most {room}" if room > 0 else "lower meta.shot")
    need("test", m.way, m.shot + (qe := eval_query(m, cfg.eval)), f"meta.shot + eval query ({m.shot}+{qe})", "meta.way")
    if p.checkpoint is None:
        need("val", p.val_way, p.val_shot + p.val_query,
             f"pretrain.val_shot + pretrain.val_query ({p.val_shot}+{p.val_query})", "pretrain.val_way")


def all_keys() -> list[str]:
    """Every dotted key a config accepts."""
    return sorted(fields(Config))


def check_key(key: str) -> None:
    """An unknown dotted config key raises with close matches."""
    schema_check_key(key, Config)


def field_type(key: str) -> Any:
    """The declared annotation of a dotted config key."""
    cls, name = fields(Config)[key]
    return cls.model_fields[name].annotation
