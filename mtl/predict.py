"""Few-shot classification of a user's own images with a trained model (``python -m mtl predict``).

The support set is a folder ``DIR/<class>/<images>``: two to ``meta.way`` classes, any number
of images each. As in a test episode, the meta-learned head (its first N rows for N classes)
adapts to the support features for ``eval.inner_steps`` steps of ``meta.inner_lr``, with
flipped support copies under ``eval.protocol: paper`` (the loss summed over all and divided by the
number of original images, as in evaluation); then each query image gets the class of
highest probability. Images are read like dataset images (any PIL format and mode, resized to
the model's ``data.image_size``, normalised as in training).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtl.config import Config
from mtl.data.decode import is_image_name, read_image
from mtl.data.formats import subfolders
from mtl.data.transforms import hflip
from mtl.errors import DataError
from mtl.models.head import adapt_head, logits
from mtl.phases.evaluate import meta_model
from mtl.runtime import Env

LAYOUT = "DIR/<class>/<image files>"


@dataclass(frozen=True)
class Prediction:
    query: str
    label: str
    probability: float
    probabilities: dict[str, float]  # every support class


def _images(folder: Path) -> list[Path]:
    return sorted((Path(e.path) for e in os.scandir(folder) if is_image_name(e.name) and e.is_file()),
                  key=lambda p: p.name)


def support_set(root: str | Path, way: int) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted) and each class's image files; a layout the model cannot use is a DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"support folder {root} does not exist; --support takes a folder {LAYOUT}")
    classes = subfolders(root)
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class folders"
        raise DataError(f"support folder {root} holds {found}; a few-shot task needs at least 2 classes: {LAYOUT}")
    if len(classes) > way:
        raise DataError(f"support folder {root} holds {len(classes)} classes but the model was meta-trained for "
                        f"{way}-way tasks; give at most {way} classes, or train with meta.way={len(classes)}")
    files = [_images(root / c) for c in classes]
    for c, f in zip(classes, files):
        if not f:
            raise DataError(f"class folder {root / c} holds no images (.jpg, .png, ...); add images or remove it")
    return classes, files


def query_files(paths: Sequence[str | Path]) -> list[Path]:
    """Query image files: each path is an image file, or a folder whose images are all queries."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = _images(p)
            if not found:
                raise DataError(f"query folder {p} holds no images (.jpg, .png, ...)")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"query image {p} does not exist; check the path")
    return out


def _read(files: Sequence[Path], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([read_image(f, size) for f in files]))


def predict(ck: dict[str, Any], cfg: Config, env: Env, support: str | Path,
            queries: Sequence[str | Path]) -> list[Prediction]:
    """Adapt the checkpoint's head to the support folder and classify every query image."""
    classes, files = support_set(support, cfg.meta.way)
    query = query_files(queries)
    size = cfg.data.image_size
    xs, xq = _read([f for fs in files for f in fs], size), _read(query, size)
    labels = torch.cat([torch.full((len(fs),), c, dtype=torch.int64) for c, fs in enumerate(files)]).to(env.device)
    embed, head = meta_model(ck, cfg, env)
    with torch.no_grad():
        xs, xq = embed.normalize(xs.to(env.device)), embed.normalize(xq.to(env.device))
        fs, fq = embed.features(xs), embed.features(xq)  # support and query batches apart (batch_stats BN)
        originals = len(fs)
        if cfg.eval.protocol == "paper":
            fs, labels = torch.cat([fs, embed.features(hflip(xs))]), torch.cat([labels, labels])
        n = len(classes)
        w, b = adapt_head(fs[None], labels[None], head.weight[:n], head.bias[:n], steps=cfg.eval.inner_steps,
                          lr=cfg.meta.inner_lr, first_order=True, originals=originals)  # as evaluate()
        prob = torch.softmax(logits(fq[None], w, b)[0], dim=-1).cpu()
    return [Prediction(str(q), classes[int(p.argmax())], float(p.max()), dict(zip(classes, p.tolist())))
            for q, p in zip(query, prob)]


def to_csv(preds: Sequence[Prediction]) -> str:
    """``query,predicted,probability`` and one ``p_<class>`` column per support class."""
    classes = list(preds[0].probabilities) if preds else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["query", "predicted", "probability", *(f"p_{c}" for c in classes)])
    for p in preds:
        w.writerow([p.query, p.label, f"{p.probability:.6f}", *(f"{p.probabilities[c]:.6f}" for c in classes)])
    return buf.getvalue()
