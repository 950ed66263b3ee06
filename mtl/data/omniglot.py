"""Omniglot as torchvision lays it out, with the splits few-shot papers use.

Layout: ``ROOT/omniglot-py/images_{background,evaluation}/<alphabet>/<character>/<png>`` (what
``torchvision.datasets.Omniglot(ROOT, background=...)`` downloads and unpacks), or ROOT being that
``omniglot-py`` folder. Images are 105 x 105 px, 1 bit, resized to ``data.image_size`` like any
other image (:mod:`mtl.data.decode`).

Splits (Lake et al., Science 2015, give background = 30 alphabets / 964 characters and
evaluation = 20 alphabets / 659 characters):

- test: every character of the evaluation alphabets;
- val: the characters of the last ``data.omniglot.val_alphabets`` background alphabets (sorted by
  name), so validation classes come from alphabets never trained on, as test classes do;
- train: the characters of the other background alphabets.

A class is one character (``<alphabet>/<character>``). With ``data.omniglot.rotations`` each
character gives four classes, its images turned by 0, 90, 180 and 270 degrees
(``<alphabet>/<character>/rot90``; Vinyals et al., NeurIPS 2016). Rotations are made inside a
split, from that split's characters, so no character, turned or not, is in two splits.
"""

from __future__ import annotations

import json
from pathlib import Path

from mtl.data.decode import FileDecoder
from mtl.data.formats import Source, class_images, hasher, subfolders, warn_skipped
from mtl.errors import DataError

PARTS = ("images_background", "images_evaluation")
LAYOUT = ("ROOT/omniglot-py/images_background/<alphabet>/<character>/*.png and "
          "ROOT/omniglot-py/images_evaluation/... (torchvision's Omniglot), or ROOT being that omniglot-py folder")


def omniglot_dir(root: Path) -> Path | None:
    """``root/omniglot-py``, or root itself when it holds both parts; None if neither."""
    for d in (root / "omniglot-py", root):
        if all((d / p).is_dir() for p in PARTS):
            return d
    return None


def split_alphabets(base: Path, split: str, val_alphabets: int) -> tuple[Path, list[str]]:
    """The folder (background or evaluation) and the alphabets of ``split``."""
    part = base / (PARTS[1] if split == "test" else PARTS[0])
    alphabets = subfolders(part)
    if not alphabets:
        raise DataError(f"{part} holds no alphabet folders: expected {LAYOUT}")
    if split == "test":
        return part, alphabets
    if val_alphabets >= len(alphabets):
        raise DataError(f"data.omniglot.val_alphabets = {val_alphabets} leaves no training alphabet: {part} holds "
                        f"{len(alphabets)}; lower it to at most {len(alphabets) - 1}")
    return part, alphabets[-val_alphabets:] if split == "val" else alphabets[:-val_alphabets]


def omniglot_source(base: Path, split: str, size: int, val_alphabets: int, rotations: bool) -> Source:
    part, alphabets = split_alphabets(base, split, val_alphabets)
    h = hasher(f"omniglot-rot{int(rotations)}", split, size)
    h.update(json.dumps(alphabets).encode())
    characters: list[tuple[str, list[str]]] = []
    skipped: list[str] = []
    for a in alphabets:
        for c in subfolders(part / a):
            characters.append((f"{a}/{c}", class_images(part / a / c, f"{a}/{c}", h, "character folder", skipped)))
    warn_skipped(f"{part} ({split} split)", skipped)
    if not characters:
        raise DataError(f"the alphabets of the Omniglot {split} split under {part} hold no character folders: "
                        f"expected {LAYOUT}")
    turns = (0, 1, 2, 3) if rotations else (0,)
    classes = sorted((f"{name}/rot{90 * t}" if rotations else name, paths, t)
                     for name, paths in characters for t in turns)
    decoder = FileDecoder([p for _, paths, _ in classes for p in paths], size,
                          [t for _, paths, t in classes for _ in paths] if rotations else None)
    names, counts = [c[0] for c in classes], [len(c[1]) for c in classes]
    return Source(str(part), h.hexdigest(), lambda: (names, counts, decoder), cheap=True)
