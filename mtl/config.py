"""One typed, validated experiment configuration.

A config is a tree of frozen dataclasses (data, model, pretrain, meta, hard_tasks, eval,
runtime). It is built in one documented order: field defaults < the YAML file (and the
files it names under ``base:``) < dotted overrides such as ``meta.inner_lr=0.02``. Every
key and value is checked on the way in: an unknown key, a wrong type or an impossible
value raises :class:`~mtl.errors.ConfigError` with one line that names the key and the fix.

Fields left ``None`` in :class:`Pretrain` are filled from the chosen recipe (``pt``: the
official PyTorch code's SGD recipe; ``tf``: the TensorFlow code's Adam recipe, see
``mtl-algorithm.md`` §2) by :func:`resolve`, so the resolved config written next to a
result states every number that was used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from mtl.errors import ConfigError
from mtl.files import write_text_atomic
from mtl.typed import (apply, as_mapping, build, deep_merge, field_types, flatten, parse_override,  # noqa: F401
                       read_yaml)
from mtl.typed import check_key as typed_check_key

# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Synthetic:
    """Shape of the procedural dataset (``data.dataset: synthetic``)."""

    train_classes: int = 64
    val_classes: int = 16
    test_classes: int = 20
    images_per_class: int = 60
    seed: int = 0  # seed of the generator: same seed, same images


@dataclass(frozen=True)
class Data:
    dataset: Literal["synthetic", "folder", "mini", "fc100", "tiered"] = "synthetic"
    root: str | None = None  # dataset folder; unused by the synthetic set
    image_size: int = 32  # images are resized to image_size x image_size on decoding
    normalization: Literal["imagenet", "cifar", "pt", "none"] = "pt"
    cache_dir: str | None = None  # uint8 array cache; default $MTL_CACHE_DIR or ~/.cache/mtl
    synthetic: Synthetic = field(default_factory=Synthetic)


@dataclass(frozen=True)
class Model:
    backbone: str = "tiny"  # registry name: resnet12 (paper), resnet25 (official PyTorch code), tiny
    # BN in meta-transfer (mtl-algorithm.md §9.3): frozen = running stats and affine fixed;
    # train_affine = BN affine learns with lr_ss and batch statistics are used in training;
    # batch_stats = TF behaviour, batch statistics always (transductive at test).
    bn_mode: Literal["frozen", "train_affine", "batch_stats"] = "frozen"
    ss_scope: Literal["all", "3x3"] = "all"  # which convs get scale and shift
    scale_granularity: Literal["kernel", "channel"] = "kernel"  # Cout x Cin x 1 x 1, or Cout x 1 x 1 x 1 ablation


@dataclass(frozen=True)
class Pretrain:
    recipe: Literal["pt", "tf"] = "pt"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: Literal["sgd", "adam"] | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    lr_step: int | None = None  # epochs between learning-rate decays
    lr_gamma: float | None = None
    augment: bool | None = None  # random resized crop + horizontal flip
    crop_scale: float = 0.08  # smallest crop area share (torchvision's RandomResizedCrop default)
    dropout: float | None = None  # dropout after each residual block, pretraining only
    # model selection: few-shot linear probe on a fixed bank of validation episodes
    val_every: int = 1
    val_way: int = 5
    val_shot: int = 1
    val_query: int = 15
    val_episodes: int = 600
    probe_steps: int = 100
    probe_lr: float = 0.01
    checkpoint: str | None = None  # an existing pretrained backbone: skip pretraining


PRETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # official PyTorch code (run_pre.py), mtl-algorithm.md §2
    "pt": dict(epochs=110, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True,
               weight_decay=5e-4, lr_step=30, lr_gamma=0.2, augment=True, dropout=0.0),
    # TF code: Adam 1e-3 halved every 5k iterations, batch 64, 10k iterations, dropout 0.1, no
    # augmentation. In epochs of miniImageNet's 38,400 images: 10k it. = 16.7, 5k it. = 8.3.
    "tf": dict(epochs=17, batch_size=64, optimizer="adam", lr=1e-3, momentum=0.9, nesterov=False,
               weight_decay=0.0, lr_step=8, lr_gamma=0.5, augment=False, dropout=0.1),
}


@dataclass(frozen=True)
class Meta:
    way: int = 5
    shot: int = 1
    query: int = 15  # query images per class in meta-training tasks
    epochs: int = 100
    batches_per_epoch: int = 100  # normal meta-batches per epoch (hard ones come on top)
    meta_batch: int = 2  # tasks averaged per outer update
    inner_lr: float = 0.01  # on the mean support cross-entropy
    inner_steps: int = 20  # inner steps in meta-training (evaluation: eval.inner_steps)
    first_order: bool = False  # True: do not differentiate through the inner loop
    lr_ss: float = 1e-4  # Adam lr of scale, shift (and BN affine in train_affine mode)
    lr_head: float = 1e-3  # Adam lr of the head initialisation
    lr_step: int = 1000  # outer updates (normal + hard) between decays
    lr_gamma: float = 0.5
    lr_floor: float = 0.0  # no group's lr decays below this
    head_init: Literal["kaiming", "xavier", "zeros"] = "kaiming"


@dataclass(frozen=True)
class HardTasks:
    """Hard-task meta-batch (mtl-algorithm.md §4.3)."""

    ratio: float = 1 / 3  # share of outer updates that are hard; 0 turns hard tasks off
    window: int = 10  # normal meta-batches whose failure classes are pooled
    top_m: int = 1  # failure classes taken from each task
    min_pool: int = 0  # pool size needed to run hard batches (at least meta.way)


@dataclass(frozen=True)
class Eval:
    episodes: int = 600  # test episodes
    query: int = 15  # query images per class at evaluation (protocol: standard)
    inner_steps: int = 100
    val_episodes: int = 600  # size of the fixed validation bank used for model selection
    val_every: int = 1  # meta-train epochs between validations
    protocol: Literal["standard", "paper"] = "standard"  # paper: query = shot, flipped support copies
    seed: int = 0  # seed of the validation bank and the test episodes (shared across trials)
    batch_episodes: int = 32  # episodes evaluated together


@dataclass(frozen=True)
class Runtime:
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast for the backbone
    channels_last: bool = True  # faster for these convnets on GPUs and on CPUs (2x training on a 2-core CPU)
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    data_on_device: bool = True  # keep the uint8 image cache on the device
    progress: bool = True  # progress bars (only when stderr is a terminal)


@dataclass(frozen=True)
class Config:
    data: Data = field(default_factory=Data)
    model: Model = field(default_factory=Model)
    pretrain: Pretrain = field(default_factory=Pretrain)
    meta: Meta = field(default_factory=Meta)
    hard_tasks: HardTasks = field(default_factory=HardTasks)
    eval: Eval = field(default_factory=Eval)
    runtime: Runtime = field(default_factory=Runtime)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def get(self, key: str) -> Any:
        """Value of a dotted key, e.g. ``cfg.get("meta.inner_lr")``."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return node

    def with_overrides(self, overrides: Mapping[str, Any] | Sequence[str]) -> "Config":
        """A new validated config with dotted overrides applied.

        Changing ``pretrain.recipe`` moves the pretraining fields that still hold the old
        recipe's values to the new recipe's values; fields set to other values stay.
        """
        flat = as_mapping(overrides)
        tree = self.to_dict()
        new_recipe = flat.get("pretrain.recipe", self.pretrain.recipe)
        if new_recipe != self.pretrain.recipe and new_recipe in PRETRAIN_RECIPES:
            for k, v in PRETRAIN_RECIPES[self.pretrain.recipe].items():
                if tree["pretrain"][k] == v and f"pretrain.{k}" not in flat:
                    tree["pretrain"][k] = None
        return _validated(apply(tree, flat, Config))



# ----------------------------------------------------------------------------- loading

CONFIG_PACKAGE = "mtl.configs"


def packaged_configs() -> list[str]:
    """Names of the configs shipped in ``mtl/configs/``."""
    files = resources.files(CONFIG_PACKAGE)
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """A config file by path, or by bare name of a packaged config (``mini_1shot``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") or str(p.parent) == "":
        packaged = resources.files(CONFIG_PACKAGE) / f"{name}.yaml"
        if packaged.is_file():
            return Path(str(packaged))
    raise ConfigError(
        f"config {str(name_or_path)!r} not found: give a YAML file path or one of "
        f"{', '.join(packaged_configs())}"
    )


def _file_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The file's mapping with its ``base:`` chain merged underneath it."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through 'base:'; remove the cycle")
    doc = read_yaml(path)
    base = doc.pop("base", None)
    if base is None:
        return doc
    if not isinstance(base, str):
        raise ConfigError(f"'base' in {path} must be a config name or path, not {base!r}")
    base_path = (path.parent / base) if (path.parent / base).is_file() else find_config(base)
    return deep_merge(_file_tree(base_path, seen + (path,)), doc)


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] = (),
) -> Config:
    """Build a validated, resolved config.

    ``source`` is a YAML path, the bare name of a packaged config, a mapping of sections,
    or None for the defaults. ``overrides`` is a mapping or a list of ``"key=value"``
    strings with dotted keys; values are parsed as YAML scalars (``0.01``, ``true``, ``null``).
    """
    if source is None:
        tree: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        tree = dict(source)
        base = tree.pop("base", None)
        if base is not None:
            tree = deep_merge(_file_tree(find_config(base)), tree)
    else:
        tree = _file_tree(find_config(source))
    flat = flatten(tree, Config)
    flat.update(as_mapping(overrides))
    return _validated(apply(Config().to_dict(), flat, Config))


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Strictly build a Config from a (possibly partial) nested mapping, then resolve and validate."""
    return _validated(apply(Config().to_dict(), flatten(tree, Config), Config))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def all_keys() -> list[str]:
    """Every dotted key a config accepts."""
    return sorted(field_types(Config).keys())


def check_key(key: str) -> type:
    """The declared type of a dotted config key; an unknown key raises with close matches."""
    return typed_check_key(key, Config)


def _validated(tree: dict[str, Any]) -> Config:
    cfg = resolve(build(Config, tree))
    validate(cfg)
    return cfg


def resolve(cfg: Config) -> Config:
    """Fill the pretraining fields left None from the chosen recipe."""
    recipe = PRETRAIN_RECIPES[cfg.pretrain.recipe]
    filled = {k: v for k, v in recipe.items() if getattr(cfg.pretrain, k) is None}
    return replace(cfg, pretrain=replace(cfg.pretrain, **filled)) if filled else cfg


def validate(cfg: Config) -> None:
    """Checks that need no data: positivity, ranges, consistency between fields."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key} = {cfg.get(key)!r} {msg}")

    for key in ("data.image_size", "meta.way", "meta.shot", "meta.query", "meta.epochs",
                "meta.batches_per_epoch", "meta.meta_batch", "meta.inner_steps", "meta.lr_step",
                "hard_tasks.window", "hard_tasks.top_m", "eval.episodes", "eval.query",
                "eval.inner_steps", "eval.val_episodes", "eval.val_every", "eval.batch_episodes",
                "pretrain.epochs", "pretrain.batch_size", "pretrain.lr_step", "pretrain.val_every",
                "pretrain.val_way", "pretrain.val_shot", "pretrain.val_query", "pretrain.val_episodes",
                "pretrain.probe_steps", "data.synthetic.images_per_class",
                "data.synthetic.train_classes", "data.synthetic.val_classes",
                "data.synthetic.test_classes"):
        need(cfg.get(key) >= 1, key, "must be at least 1")
    for key in ("meta.inner_lr", "meta.lr_ss", "meta.lr_head", "pretrain.lr", "pretrain.probe_lr"):
        need(cfg.get(key) > 0, key, "must be positive (a learning rate)")
    for key in ("meta.lr_gamma", "pretrain.lr_gamma"):
        need(0 < cfg.get(key) <= 1, key, "must be in (0, 1] (a decay factor)")
    need(0 <= cfg.pretrain.dropout < 1, "pretrain.dropout", "must be in [0, 1)")
    need(0 < cfg.pretrain.crop_scale <= 1, "pretrain.crop_scale", "must be in (0, 1]")
    need(cfg.pretrain.weight_decay >= 0, "pretrain.weight_decay", "must be >= 0")
    need(0 <= cfg.pretrain.momentum < 1, "pretrain.momentum", "must be in [0, 1)")
    need(cfg.meta.lr_floor >= 0, "meta.lr_floor", "must be >= 0")
    need(cfg.meta.way >= 2, "meta.way", "must be at least 2 (a task needs two classes)")
    need(cfg.pretrain.val_way >= 2, "pretrain.val_way", "must be at least 2")
    need(cfg.data.image_size >= 16, "data.image_size", "must be at least 16 pixels")
    ht = cfg.hard_tasks
    need(0 <= ht.ratio < 1, "hard_tasks.ratio", "must be in [0, 1): the share of hard updates (0 turns them off)")
    need(ht.min_pool >= 0, "hard_tasks.min_pool", "must be >= 0")
    if ht.ratio > 0:
        need(ht.top_m < cfg.meta.way, "hard_tasks.top_m", f"must be smaller than meta.way ({cfg.meta.way})")
    if cfg.runtime.threads is not None:
        need(cfg.runtime.threads >= 1, "runtime.threads", "must be at least 1")
    if cfg.data.dataset != "synthetic" and not cfg.data.root:
        raise ConfigError(
            f"data.root is not set for dataset {cfg.data.dataset!r}; "
            f"pass --set data.root=/path/to/{cfg.data.dataset}"
        )


def hard_batches_per_window(ht: HardTasks) -> float:
    """Hard meta-batches owed after each window so that hard / (hard + normal) = ratio
    (fractional values are carried over windows; 1/3 with a window of 10 gives the authors' 5)."""
    return ht.window * ht.ratio / (1 - ht.ratio) if ht.ratio > 0 else 0.0


def eval_query(cfg: Config) -> int:
    """Query images per class at evaluation: ``shot`` under the paper protocol (Q = K)."""
    return cfg.meta.shot if cfg.eval.protocol == "paper" else cfg.eval.query


def check_against_data(cfg: Config, splits: Mapping[str, tuple[int, int]]) -> None:
    """Episode shapes against the data: ``splits`` maps split -> (classes, fewest images in a class).

    Called after the (cheap) dataset listing and before any decoding or training.
    """

    def need(split: str, way: int, per_class: int, what: str, way_key: str) -> None:
        n_cls, min_imgs = splits[split]
        if way > n_cls:
            raise ConfigError(
                f"{way_key} = {way} but the {split} split has only {n_cls} classes; "
                f"lower {way_key} to at most {n_cls}"
            )
        if per_class > min_imgs:
            raise ConfigError(
                f"{what} = {per_class} images per class but a {split} class has only {min_imgs}; "
                f"lower the shot or query counts"
            )

    m, p = cfg.meta, cfg.pretrain
    need("train", m.way, m.shot + m.query, f"meta.shot + meta.query ({m.shot}+{m.query})", "meta.way")
    qe = eval_query(cfg)
    for split in ("val", "test"):
        need(split, m.way, m.shot + qe, f"meta.shot + eval query ({m.shot}+{qe})", "meta.way")
    if p.checkpoint is None:
        need("val", p.val_way, p.val_shot + p.val_query,
             f"pretrain.val_shot + pretrain.val_query ({p.val_shot}+{p.val_query})", "pretrain.val_way")
