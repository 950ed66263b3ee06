"""Datasets: cheap listings, a decoded uint8 cache, a procedural test set.

``index_split`` lists a split without decoding (class names, counts, fingerprint);
``load_split`` returns its images as one uint8 tensor grouped by class, decoded once into
the on-disk cache; ``split_stats`` feeds ``config.check_against_data``; and
``dataset_fingerprint`` keys the shared pretraining cache. ``data.dataset`` picks the
reader: ``synthetic``, ``folder``, ``mini``, ``tiered``, ``fc100``, ``cifar_fs`` or ``omniglot``; the test
set can come from another dataset (:mod:`mtl.data.evalset`).
"""

from mtl.data.datasets import dataset_fingerprint, index_split, index_splits, load_split, split_stats
from mtl.data.splits import Split, SplitIndex

__all__ = ["Split", "SplitIndex", "dataset_fingerprint", "index_split", "index_splits", "load_split", "split_stats"]
