"""The two shapes a dataset split takes: a cheap listing and the decoded images.

:class:`SplitIndex` is what every reader returns: class names, per-class counts and a
fingerprint of the source, found without decoding a single image, so episode shapes can be
checked against the data (``config.check_against_data``) before any slow work. It carries
the :class:`Decoder` that turns the listing into pixels later.

:class:`Split` is the decoded form: one uint8 tensor with the images of a class in one
contiguous block, so an episode is a handful of index tensors into it (architecture.md,
"Data lives on the GPU").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

# Bumped whenever decoding (mode conversion, resizing, synthetic rendering) or the cache
# layout changes: it is part of every fingerprint, so old cache entries stop matching.
FORMAT_VERSION = 1


class Decoder(Protocol):
    """Turns rows ``start:stop`` of a listing into pixels.

    Rows are in the split's grouped order (class 0's images first). ``decode`` returns
    uint8 ``[stop - start, 3, S, S]`` and must be safe to call from several threads at
    once: the cache calls it on consecutive chunks from a thread pool.
    """

    num_items: int

    def decode(self, start: int, stop: int) -> np.ndarray: ...


@dataclass(frozen=True)
class SplitIndex:
    """Listing of one split; building one never decodes an image.

    ``fingerprint`` is a hex digest of everything the decoded pixels depend on: the file
    list with sizes and modification times (or the pickle files' sizes and times, or the
    synthetic parameters), ``image_size`` and the loader's format version. It keys the
    cache, so a changed source is decoded again and an unchanged one never is.
    """

    dataset: str  # config name: synthetic | folder | mini | tiered | fc100 | cifar_fs | omniglot
    split: str  # train | val | test
    class_names: list[str]  # sorted
    counts: list[int]  # images per class, same order
    fingerprint: str
    image_size: int = 0
    source: str = ""  # where the pixels come from, for messages and the cache's meta.json
    cacheable: bool = True  # False: cheaper to decode again than to read back (synthetic)
    _decoder: Decoder | None = field(default=None, repr=False, compare=False)

    @property
    def num_images(self) -> int:
        return int(sum(self.counts))

    @property
    def decoder(self) -> Decoder:
        if self._decoder is None:
            raise RuntimeError(f"{self.dataset}/{self.split} index was built without a decoder")
        return self._decoder


@dataclass
class Split:
    """Decoded images of one split, grouped by class.

    ``images`` is uint8 ``[N, 3, S, S]``; class ``c`` occupies rows
    ``offsets[c]:offsets[c + 1]`` and ``labels[i]`` is the position of the image's class
    in ``class_names``. Normalisation and augmentation happen later, on the device.
    """

    images: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    class_names: list[str]
    fingerprint: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device: torch.device | str) -> Split:
        """A Split whose tensors live on ``device`` (tensors already there are shared, not copied)."""
        return Split(self.images.to(device), self.labels.to(device), self.offsets.to(device),
                     list(self.class_names), self.fingerprint)


def offsets_of(counts: list[int]) -> np.ndarray:
    """``[0, c0, c0 + c1, ...]`` as int64."""
    return np.concatenate([[0], np.cumsum(np.asarray(counts, dtype=np.int64))]).astype(np.int64)


def labels_of(counts: list[int]) -> np.ndarray:
    """Class position of every row of a grouped split, as int64."""
    return np.repeat(np.arange(len(counts), dtype=np.int64), np.asarray(counts, dtype=np.int64))


def split_from_arrays(images: np.ndarray, class_names: list[str], counts: list[int],
                      fingerprint: str) -> Split:
    """Wrap grouped uint8 images (owned, writable) into a Split."""
    return Split(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels_of(counts)),
        offsets=torch.from_numpy(offsets_of(counts)),
        class_names=list(class_names),
        fingerprint=fingerprint,
    )
