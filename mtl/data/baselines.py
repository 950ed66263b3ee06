"""Reference accuracies that need no learning, to compare learnt models against."""

from __future__ import annotations

import torch

from mtl.data.splits import Split


def nearest_centroid_accuracy(vectors: torch.Tensor, offsets: torch.Tensor, way: int = 5, shot: int = 1,
                              query: int = 15, episodes: int = 200, seed: int = 0) -> float:
    """Mean nearest-centroid accuracy over random episodes of rows grouped by class.

    ``vectors`` is ``[N, ...]`` (images or features; each row is flattened to float) with
    class ``c`` in rows ``offsets[c]:offsets[c + 1]``. Each episode draws ``way`` classes
    and, per class, ``shot + query`` distinct rows (support and query disjoint) with
    ``torch.Generator().manual_seed(seed)``; a query gets the class whose mean support
    vector is nearest in Euclidean distance.
    """
    offsets = offsets.cpu()
    counts = offsets[1:] - offsets[:-1]
    num_classes = len(counts)
    if way > num_classes:
        raise ValueError(f"way={way} but there are only {num_classes} classes")
    if shot + query > int(counts.min()):
        raise ValueError(f"shot + query = {shot + query} but a class has only {int(counts.min())} rows")
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(way).repeat_interleave(query)
    correct = 0
    for _ in range(episodes):
        classes = torch.randperm(num_classes, generator=g)[:way]
        rows = torch.stack([offsets[c] + torch.randperm(int(counts[c]), generator=g)[:shot + query]
                            for c in classes])  # [way, shot + query]
        x = vectors[rows.reshape(-1).to(vectors.device)].float().reshape(way, shot + query, -1)
        centroids = x[:, :shot].mean(1)  # [way, D]
        pred = torch.cdist(x[:, shot:].reshape(way * query, -1), centroids).argmin(1).cpu()
        correct += int((pred == truth).sum())
    return correct / (episodes * way * query)


def raw_pixel_nearest_centroid(split: Split, way: int = 5, shot: int = 1, query: int = 15,
                               episodes: int = 200, seed: int = 0) -> float:
    """Nearest centroid on raw pixel vectors: what a model must clearly beat.

    Pixels are used as they are (0..255): scaling every vector alike leaves every nearest
    centroid unchanged, so this equals the result on pixels in [0, 1]. A dataset where this
    is high does not need a learnt embedding; on the synthetic set it stays near chance.
    """
    return nearest_centroid_accuracy(split.images, split.offsets, way, shot, query, episodes, seed)
