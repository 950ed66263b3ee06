"""The test set of an experiment: ``eval.data``, by default the training data's test split.

Cross-domain evaluation ("A Closer Look at Few-shot Classification", Chen et al., ICLR 2019:
train on miniImageNet, test on CUB) reads another dataset's split with the trained model's
``data.image_size`` and ``data.normalization``, whatever that dataset's native resolution, and
with the same cache folder. Everything else about ``data`` (the Omniglot options, the synthetic
set's shape) is shared with the training data.
"""

from __future__ import annotations

from mtl.config import Config, Data, eval_query
from mtl.data.datasets import ensure_cached, index_split
from mtl.data.splits import SplitIndex
from mtl.errors import ConfigError


def eval_data(cfg: Config) -> Data:
    """The ``data`` section the test set is read with."""
    ed = cfg.eval.data
    dataset = ed.dataset or cfg.data.dataset
    root = ed.root if (ed.root or dataset != cfg.data.dataset) else cfg.data.root
    if dataset != "synthetic" and not root:
        raise ConfigError(f"eval.data.root is not set for the test dataset {dataset!r}; "
                          f"pass --set eval.data.root=/path/to/{dataset}")
    return Data.model_validate({**cfg.data.to_dict(), "dataset": dataset, "root": root})


def is_cross_domain(cfg: Config) -> bool:
    data = eval_data(cfg)
    return (data.dataset, data.root) != (cfg.data.dataset, cfg.data.root)


def data_label(data: Data, split: str | None = None) -> str:
    """``"mini /data/miniImageNet"``, ``"folder /data/cub (test split)"``, ``"synthetic"``: for results and messages."""
    text = data.dataset if data.dataset == "synthetic" or not data.root else f"{data.dataset} {data.root}"
    return f"{text} ({split} split)" if split else text


def check_eval_shapes(cfg: Config, index: SplitIndex) -> None:
    """The test episodes (meta.way classes, meta.shot + eval query images each) fit the test set."""
    m, where = cfg.meta, data_label(eval_data(cfg), cfg.eval.data.split)
    per_class = m.shot + eval_query(m, cfg.eval)
    if m.way > len(index.class_names):
        raise ConfigError(f"meta.way = {m.way} but the test set {where} has only {len(index.class_names)} classes; "
                          "lower meta.way or choose another eval.data")
    if per_class > min(index.counts):
        raise ConfigError(f"test episodes need meta.shot + eval query = {per_class} images per class but a class of "
                          f"the test set {where} has only {min(index.counts)}; lower eval.query")


def index_eval(cfg: Config) -> SplitIndex:
    """The test set's listing, checked against the test episodes (no image is decoded)."""
    index = index_split(eval_data(cfg), cfg.eval.data.split)
    check_eval_shapes(cfg, index)
    return index


def decode_splits(cfg: Config, progress: bool = True, indexes: dict[str, SplitIndex] | None = None) -> None:
    """Decode into the cache every split a run of ``cfg`` reads (train, val and the test set), so
    that a corrupt image fails the run before any training instead of at the test after it; a
    split cached already costs its listing only (none with ``indexes``: the training data's
    listings from ``index_splits``). Generated (synthetic) splits have nothing to check."""
    indexes = indexes or {}
    test = None if is_cross_domain(cfg) else indexes.get(cfg.eval.data.split)
    for data, split, index in ((cfg.data, "train", indexes.get("train")), (cfg.data, "val", indexes.get("val")),
                               (eval_data(cfg), cfg.eval.data.split, test)):
        ensure_cached(data, split, progress=progress, index=index)
