"""Pixels: one image file or one array row -> uint8 ``[3, S, S]``.

Every reader in :mod:`mtl.data.formats` ends in one of the decoders here, so mode
conversion and resizing are the same for all datasets.

Resizing uses PIL's BILINEAR filter with ``reducing_gap=3``. PIL widens the bilinear
kernel by the downscale factor, so it is antialiased (close to the OpenCV INTER_AREA
resize that produced the usual 84 px miniImageNet class folders, docs/algorithm.md §7)
without Lanczos' ringing and at about a third of its cost; the reducing gap first
box-reduces very large photos by an integer factor, which is much faster and, per PIL's
documentation, indistinguishable from a full resample in most cases at that gap. Images
already S x S are not resampled, so their pixels pass through exactly.

Colour: everything goes through ``Image.convert("RGB")`` as torchvision's ``pil_loader``
does (alpha is dropped, CMYK/P/L/1 expanded), except 16/32-bit integer and float greyscale,
which PIL would clip to 0..255: those are scaled (integers as 16-bit, ``v / 257``; floats
as 0..1 when their maximum is at most 1, else clipped to 0..255). Animated files give their
first frame; EXIF orientation is ignored, as in the usual loaders.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from mtl.data.splits import Decoder
from mtl.errors import DataError

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
})


def is_image_name(name: str) -> bool:
    """Image extension (any case) and not hidden: .DS_Store, Thumbs.db, notes.txt are skipped."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (see the module docstring for the high-bit-depth rule)."""
    mode = im.mode
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        im = Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8), "L")
    elif mode == "I" or mode.startswith("I;16"):
        a = np.asarray(im).astype(np.float64)
        im = Image.fromarray(np.clip(a / 257.0, 0, 255).round().astype(np.uint8), "L")
    elif mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL warns when P with transparency goes straight to RGB
    return im if im.mode == "RGB" else im.convert("RGB")


def resize_rgb(im: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 ``[3, size, size]``."""
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8).transpose(2, 0, 1))


def read_image(path: str | Path | IO[bytes], size: int, name: str | None = None) -> np.ndarray:
    """Decode one file (or an open binary stream, called ``name`` in messages) to uint8
    ``[3, size, size]``; anything unreadable is a DataError naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter; a real failure raises below
            with Image.open(path) as im:
                im.load()
                return resize_rgb(to_rgb(im), size)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, EOFError, struct.error...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot decode image {name or path}: {reason}; remove or replace the file") from None


def resize_array(images: np.ndarray, size: int, layout: str) -> np.ndarray:
    """uint8 images in ``layout`` "hwc" or "chw" -> uint8 ``[n, 3, size, size]``."""
    chw = images if layout == "chw" else images.transpose(0, 3, 1, 2)
    if chw.shape[-1] == size and chw.shape[-2] == size:
        return np.ascontiguousarray(chw, dtype=np.uint8)
    hwc = chw.transpose(0, 2, 3, 1)
    out = np.empty((len(hwc), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(hwc):
        out[i] = resize_rgb(Image.fromarray(np.ascontiguousarray(img), "RGB"), size)
    return out


class FileDecoder:
    """Rows are image files, decoded one by one (PIL releases the GIL, so threads help).

    ``turns`` (one per row, optional) rotates a row's image by that many quarter turns
    counter-clockwise after resizing: rotated copies of a class are new classes (Omniglot)."""

    def __init__(self, paths: Sequence[str | Path], size: int, turns: Sequence[int] | None = None):
        self.paths = list(paths)
        self.size = size
        self.turns = None if turns is None else list(turns)
        self.num_items = len(self.paths)

    def decode(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, 3, self.size, self.size), dtype=np.uint8)
        for i, path in enumerate(self.paths[start:stop]):
            out[i] = read_image(path, self.size)
            if self.turns is not None and self.turns[start + i]:
                out[i] = np.rot90(out[i], self.turns[start + i], axes=(1, 2))
        return out


class BlobDecoder:
    """Rows are encoded images (PNG/JPEG bytes) held in memory, e.g. tieredImageNet's pickles;
    ``where`` names their file in messages."""

    def __init__(self, blobs: Sequence[bytes], rows: np.ndarray, size: int, where: str):
        self.blobs, self.rows, self.size, self.where = blobs, np.asarray(rows, np.int64), size, where
        self.num_items = len(self.rows)

    def decode(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, 3, self.size, self.size), dtype=np.uint8)
        for i, row in enumerate(self.rows[start:stop]):
            out[i] = read_image(io.BytesIO(self.blobs[row]), self.size, f"{self.where} row {row}")
        return out


class ArrayDecoder:
    """Rows are ``array[rows[i]]`` of an in-memory uint8 array (unpickled data)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, size: int, layout: str):
        self.array, self.rows, self.size, self.layout = array, np.asarray(rows, np.int64), size, layout
        self.num_items = len(self.rows)

    def decode(self, start: int, stop: int) -> np.ndarray:
        return resize_array(self.array[self.rows[start:stop]], self.size, self.layout)


class LazyDecoder:
    """Defers an expensive listing (unpickling) until pixels are actually needed.

    Used when the class list came from a finished cache entry's ``meta.json``: normally the
    entry is then read and this decoder is never called. If it is, the listing must still
    agree with what the index promised.
    """

    def __init__(self, listing: Callable[[], tuple[list[str], list[int], Decoder]],
                 class_names: list[str], counts: list[int], source: str):
        self._listing, self._names, self._counts, self._source = listing, class_names, counts, source
        self._decoder: Decoder | None = None
        self._lock = threading.Lock()
        self.num_items = int(sum(counts))

    def decode(self, start: int, stop: int) -> np.ndarray:
        with self._lock:
            if self._decoder is None:
                names, counts, decoder = self._listing()
                if names != self._names or list(counts) != list(self._counts):
                    raise DataError(f"{self._source} changed while it was being read; run again")
                self._decoder = decoder
        return self._decoder.decode(start, stop)
