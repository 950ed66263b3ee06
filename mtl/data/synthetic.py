"""A procedural few-shot dataset: glyph classes under heavy nuisance variation.

It is how the whole project is tested, so it must behave like a real few-shot benchmark in
miniature: classes of the three splits are disjoint but come from one generative family
(so features learnt on train classes transfer to novel test classes), and class identity
lives in *shape*, which a small conv net picks up, while raw pixels are dominated by
nuisances, so nearest-centroid on pixels stays near chance (see
:func:`mtl.data.baselines.raw_pixel_nearest_centroid`).

A class is a binary glyph on a 5 x 5 grid (connected, 9-16 cells on, touching all four
borders so that no glyph is a shifted copy of another, and at Hamming distance >= 3 from
every other glyph under all flips and rotations, so flip augmentation cannot merge two
classes) plus a foreground hue. An image is a random background (per-image colour, a
linear gradient and smooth low-frequency noise, all independent of the class) with the
glyph drawn at a random size (45-75 % of the side) and position (fully inside), a jittered
hue, saturation and value, a global brightness jitter and pixel noise. Edges are
antialiased by 2 x 2 supersampling.

Everything is drawn from ``numpy`` generators seeded by (seed, split, class), so the data is
a pure function of ``data.synthetic`` and ``data.image_size``. Images are generated on the
fly rather than cached on disk: generating is about as fast as reading an entry back and
keeps test runs from writing to the user's cache folder.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from mtl.config import Data, Synthetic
from mtl.data.splits import FORMAT_VERSION, SplitIndex
from mtl.errors import DataError

GRID = 5
SPLITS = ("train", "val", "test")
MIN_DISTANCE = 3  # Hamming distance between any two glyphs, under the 8 flips/rotations


def class_glyphs(syn: Synthetic) -> tuple[np.ndarray, np.ndarray]:
    """Glyphs (bool ``[C, 5, 5]``) and hues (``[C]`` in [0, 1)) of all classes, train then val then test."""
    total = syn.train_classes + syn.val_classes + syn.test_classes
    rng = np.random.default_rng([syn.seed, 0x6C1F])
    variants = np.zeros((0, GRID * GRID), dtype=bool)  # every accepted glyph under the 8 symmetries
    glyphs: list[np.ndarray] = []
    attempts = 0
    while len(glyphs) < total:
        attempts += 1
        if attempts > 2000 + 400 * total:
            raise DataError(f"cannot draw {total} distinct synthetic glyphs; "
                            f"lower data.synthetic.*_classes")
        g = rng.random((GRID, GRID)) < 0.5
        if not (9 <= g.sum() <= 16 and g[0].any() and g[-1].any() and g[:, 0].any()
                and g[:, -1].any() and _connected(g)):
            continue
        if len(variants) and (variants != g.reshape(-1)).sum(1).min() < MIN_DISTANCE:
            continue
        glyphs.append(g)
        sym = [np.rot90(h, k) for h in (g, g[:, ::-1]) for k in range(4)]
        variants = np.concatenate([variants, np.stack(sym).reshape(8, -1)])
    hues = rng.random(total)
    return np.stack(glyphs), hues


def _connected(g: np.ndarray) -> bool:
    """4-connectivity of the on cells (flood fill from one of them)."""
    cells = {(int(r), int(c)) for r, c in zip(*np.nonzero(g))}
    stack, seen = [next(iter(cells))], set()
    while stack:
        r, c = stack.pop()
        if (r, c) in seen:
            continue
        seen.add((r, c))
        stack.extend(n for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)) if n in cells)
    return len(seen) == len(cells)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB; inputs ``[n]`` in [0, 1], output ``[n, 3]``."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _upsample(low: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``[n, c, k, k]`` to ``[n, c, size, size]`` (separable matrices)."""
    k = low.shape[-1]
    pos = np.clip((np.arange(size) + 0.5) * k / size - 0.5, 0, k - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, k - 1)
    m = np.zeros((size, k))
    m[np.arange(size), lo] += 1 - (pos - lo)
    m[np.arange(size), hi] += pos - lo
    return np.einsum("yi,ncij,xj->ncyx", m, low, m)


def render_class(glyph: np.ndarray, hue: float, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` images of one class as uint8 ``[n, 3, size, size]``."""
    f32 = np.float32
    # background: colour + linear gradient + smooth noise, all independent of the class
    bg = rng.uniform(0.0, 0.8, (n, 3, 1, 1))
    theta = rng.uniform(0, 2 * np.pi, n)
    ramp = (np.arange(size) + 0.5) / size - 0.5
    grad = np.cos(theta)[:, None, None] * ramp[None, None, :] + np.sin(theta)[:, None, None] * ramp[None, :, None]
    grad = grad[:, None] * rng.uniform(0.0, 0.5, (n, 3, 1, 1))
    noise = _upsample(rng.normal(0.0, 0.15, (n, 3, 4, 4)), size)
    img = (bg + grad + noise).astype(f32)
    # glyph placement: side length and top-left corner in pixels, fully inside the image
    side = rng.uniform(0.45, 0.75, n) * size
    x0 = rng.uniform(0, 1, n) * (size - side)
    y0 = rng.uniform(0, 1, n) * (size - side)
    ss = 2  # supersampling for antialiased edges
    sub = (np.arange(size * ss) + 0.5) / ss
    cx = np.floor((sub[None, :] - x0[:, None]) / side[:, None] * GRID).astype(int)
    cy = np.floor((sub[None, :] - y0[:, None]) / side[:, None] * GRID).astype(int)
    inx, iny = (cx >= 0) & (cx < GRID), (cy >= 0) & (cy < GRID)
    hit = glyph[np.clip(cy, 0, GRID - 1)[:, :, None], np.clip(cx, 0, GRID - 1)[:, None, :]]
    hit &= iny[:, :, None] & inx[:, None, :]
    alpha = hit.reshape(n, size, ss, size, ss).mean((2, 4)).astype(f32)[:, None]
    fg = _hsv_to_rgb((hue + rng.normal(0, 0.04, n)) % 1.0, rng.uniform(0.5, 1.0, n), rng.uniform(0.6, 1.0, n))
    img = img * (1 - alpha) + fg[:, :, None, None].astype(f32) * alpha
    img = img * rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(f32) + rng.normal(0, 0.04, img.shape).astype(f32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class SyntheticDecoder:
    """Rows are generated, class by class, from generators seeded by (seed, split, class)."""

    def __init__(self, syn: Synthetic, split: str, size: int):
        glyphs, hues = class_glyphs(syn)
        first = {"train": 0, "val": syn.train_classes, "test": syn.train_classes + syn.val_classes}[split]
        count = getattr(syn, f"{split}_classes")
        self.glyphs, self.hues = glyphs[first:first + count], hues[first:first + count]
        self.seed, self.split_id, self.size = syn.seed, SPLITS.index(split), size
        self.per_class = syn.images_per_class
        self.num_items = count * self.per_class

    def decode(self, start: int, stop: int) -> np.ndarray:
        k = self.per_class
        parts = []
        for c in range(start // k, (stop - 1) // k + 1 if stop > start else start // k):
            rng = np.random.default_rng([self.seed, self.split_id, c, 0x1A6E])
            block = render_class(self.glyphs[c], float(self.hues[c]), k, self.size, rng)
            parts.append(block[max(start - c * k, 0):min(stop - c * k, k)])
        if not parts:
            return np.zeros((0, 3, self.size, self.size), dtype=np.uint8)
        return np.concatenate(parts)


def synthetic_index(data: Data, split: str) -> SplitIndex:
    """Listing of one synthetic split; the fingerprint hashes every generation parameter."""
    syn = data.synthetic
    count = getattr(syn, f"{split}_classes")
    width = max(3, len(str(count - 1)))
    payload = ["synthetic", FORMAT_VERSION, split, data.image_size, syn.to_dict()]
    return SplitIndex(
        dataset="synthetic",
        split=split,
        class_names=[f"{split}-{i:0{width}d}" for i in range(count)],
        counts=[syn.images_per_class] * count,
        fingerprint=hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(),
        image_size=data.image_size,
        source=f"synthetic(seed={syn.seed})",
        cacheable=False,
        _decoder=SyntheticDecoder(syn, split, data.image_size),
    )
