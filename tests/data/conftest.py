"""Tiny datasets written in their genuine on-disk formats, one colour per class.

Each class's images are painted one solid colour, so after decoding, the pixel values
tell which class (and for CIFAR which source row) an image came from.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtl.config import Data

# ----------------------------------------------------------------------------- class folders

ANT, BEE, COW = (200, 30, 30), (100, 100, 100), (255, 255, 255)
FOLDER_COLOURS = {"train": {"ant": ANT, "bee": BEE, "cow": COW},
                  "val": {"dog": (10, 200, 10), "emu": (10, 10, 200)},
                  "test": {"fox": (120, 60, 0), "gnu": (0, 60, 120)}}
JUNK = (".DS_Store", "Thumbs.db", "notes.txt", "labels.csv", "info.json")


def _write_train(split_dir: Path) -> None:
    ant, bee, cow = (split_dir / c for c in ("ant", "bee", "cow"))
    for d in (ant, bee, cow):
        d.mkdir(parents=True)
    Image.new("RGB", (40, 24), ANT).save(ant / "a.png")
    Image.new("RGB", (50, 30), ANT).save(ant / "b.JPG", quality=95)
    Image.new("RGBA", (20, 20), ANT + (255,)).save(ant / "c.png")
    p = Image.new("P", (64, 64), 1)
    p.putpalette([0, 0, 0, *ANT])
    p.save(ant / "d.gif")
    Image.new("CMYK", (30, 30), (55, 225, 225, 0)).save(ant / "e.tif")
    Image.new("RGB", (17, 17), ANT).save(ant / "f.webp", lossless=True)
    Image.new("L", (30, 40), 100).save(bee / "a.png")
    Image.fromarray(np.full((24, 24), 25700, dtype=np.uint16)).save(bee / "b.png")  # I;16
    Image.new("LA", (24, 24), (100, 128)).save(bee / "c.png")
    Image.new("F", (12, 12), 100.0).save(bee / "d.tiff")
    Image.new("1", (33, 33), 1).save(cow / "a.png")
    Image.new("RGB", (24, 24), COW).save(cow / "b.bmp")
    p = Image.new("P", (24, 24), 0)
    p.putpalette([*COW, 0, 0, 0])
    p.save(cow / "c.png", transparency=1)
    for d in (ant, bee, cow):  # files that must be ignored
        for name in JUNK:
            (d / name).write_text("not an image")
        Image.new("RGB", (24, 24), (1, 2, 3)).save(d / ".hidden.png")
        (d / "subdir").mkdir()
    (split_dir / ".DS_Store").write_text("x")
    (split_dir / "README.txt").write_text("x")


def write_folder_dataset(root: Path) -> Path:
    _write_train(root / "train")
    for split in ("val", "test"):
        for name, colour in FOLDER_COLOURS[split].items():
            (root / split / name).mkdir(parents=True)
            for i in range(3 if name in ("emu", "gnu") else 2):
                Image.new("RGB", (20 + i, 28), colour).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return write_folder_dataset(tmp_path / "folder")


# ----------------------------------------------------------------------------- miniImageNet


MINI_CLASSES = {"train": ["n01532829", "n01558993", "n01704323"],
                "val": ["n01855672", "n09256479"], "test": ["n01930112", "n01981276"]}


def mini_colour(wnid: str) -> tuple[int, int, int]:
    v = int(wnid[1:]) % 251
    return (v, 255 - v, (7 * v) % 256)


def write_mini_csv(root: Path, per_class: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    for split, wnids in MINI_CLASSES.items():
        lines = ["filename,label"]
        for w in reversed(wnids):  # CSV not sorted by class: the reader must group
            for i in range(per_class):
                name = f"{w}{i + 1:08d}.jpg"
                Image.new("RGB", (84 + i, 84), mini_colour(w)).save(root / "images" / name, quality=98)
                lines.append(f"{name},{w}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_mini_pickles(root: Path, per_class: int = 3, size: int = 84) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, wnids in MINI_CLASSES.items():
        n = len(wnids) * per_class
        data = np.zeros((n, size, size, 3), dtype=np.uint8)
        class_dict = {}
        order = np.random.default_rng(0).permutation(n)  # rows of a class are scattered
        for k, w in enumerate(wnids):
            rows = sorted(order[k * per_class:(k + 1) * per_class].tolist())
            data[rows] = mini_colour(w)
            class_dict[w] = rows
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)
    return root


# ----------------------------------------------------------------------------- CIFAR-100

FINE = {  # coarse index -> its five fine classes (the real CIFAR-100 grouping)
    0: "beaver dolphin otter seal whale", 1: "aquarium_fish flatfish ray shark trout",
    2: "orchid poppy rose sunflower tulip", 3: "bottle bowl can cup plate",
    4: "apple mushroom orange pear sweet_pepper", 5: "clock keyboard lamp telephone television",
    6: "bed chair couch table wardrobe", 7: "bee beetle butterfly caterpillar cockroach",
    8: "bear leopard lion tiger wolf", 9: "bridge castle house road skyscraper",
    10: "cloud forest mountain plain sea", 11: "camel cattle chimpanzee elephant kangaroo",
    12: "fox porcupine possum raccoon skunk", 13: "crab lobster snail spider worm",
    14: "baby boy girl man woman", 15: "crocodile dinosaur lizard snake turtle",
    16: "hamster mouse rabbit shrew squirrel", 17: "maple_tree oak_tree palm_tree pine_tree willow_tree",
    18: "bicycle bus motorcycle pickup_truck train", 19: "lawn_mower rocket streetcar tank tractor",
}
COARSE_NAMES = ("aquatic_mammals fish flowers food_containers fruit_and_vegetables "
                "household_electrical_devices household_furniture insects large_carnivores "
                "large_man-made_outdoor_things large_natural_outdoor_scenes "
                "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people "
                "reptiles small_mammals trees vehicles_1 vehicles_2").split()
FINE_NAMES = sorted(n for names in FINE.values() for n in names.split())
COARSE_OF = {n: c for c, names in FINE.items() for n in names.split()}
CIFAR_TRAIN_PER_CLASS, CIFAR_TEST_PER_CLASS = 3, 1


def write_cifar100(root: Path, train_per: int = CIFAR_TRAIN_PER_CLASS, test_per: int = CIFAR_TEST_PER_CLASS) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` like the real files: protocol 2, bytes keys.

    Pixel (0, 0) of every image encodes its origin: R = fine index, G = 0 for train and 1
    for test, B = index of the image within its class in that file.
    """
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for part, per, g in (("train", train_per, 0), ("test", test_per, 1)):
        fine, coarse, rows = [], [], []
        for i in range(per):
            for f, name in enumerate(FINE_NAMES):  # interleaved, as the real files are shuffled
                img = np.full((3, 32, 32), 50, dtype=np.uint8)
                img[:, 0, 0] = (f, g, i)
                rows.append(img.reshape(-1))
                fine.append(f)
                coarse.append(COARSE_OF[name])
        blob = {b"filenames": [f"{i}.png".encode() for i in range(len(rows))], b"batch_label": b"x",
                b"fine_labels": fine, b"coarse_labels": coarse, b"data": np.stack(rows)}
        with open(d / part, "wb") as f_:
            pickle.dump(blob, f_, protocol=2)
    meta = {b"fine_label_names": [n.encode() for n in FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in COARSE_NAMES]}
    with open(d / "meta", "wb") as f_:
        pickle.dump(meta, f_, protocol=2)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar"))


# ----------------------------------------------------------------------------- MetaOptNet / RFS pickles

METAOPTNET_NAMES = {  # dataset -> split -> file name (as the MetaOptNet and RFS code bases name them)
    "mini": {"train": "miniImageNet_category_split_train_phase_train.pickle",
             "val": "miniImageNet_category_split_val.pickle", "test": "miniImageNet_category_split_test.pickle"},
    "cifar_fs": {s: f"CIFAR_FS_{s}.pickle" for s in ("train", "val", "test")},
    "fc100": {s: f"FC100_{s}.pickle" for s in ("train", "val", "test")},
}


def write_metaoptnet(root: Path, dataset: str, per_class: int = 3, size: int = 32) -> Path:
    """Python 2 style (protocol 2, bytes keys) dicts of data N x H x W x 3 and labels, classes
    interleaved; labels run on across splits as in the real files. Pixel (0, 0) holds
    (label, index within class, 7); miniImageNet files also carry catname2label."""
    root.mkdir(parents=True, exist_ok=True)
    label = 0
    for split, wnids in MINI_CLASSES.items():
        labels, rows = [], []
        for i in range(per_class):
            for k in range(len(wnids)):
                img = np.full((size, size, 3), 90, dtype=np.uint8)
                img[0, 0] = (label + k, i, 7)
                rows.append(img)
                labels.append(label + k)
        blob = {b"data": np.stack(rows), b"labels": labels}
        if dataset == "mini":
            blob[b"catname2label"] = {w.encode(): label + k for k, w in enumerate(wnids)}
        label += len(wnids)
        with open(root / METAOPTNET_NAMES[dataset][split], "wb") as f:
            pickle.dump(blob, f, protocol=2)
    return root


# ----------------------------------------------------------------------------- tieredImageNet pickles

TIERED_CLASSES = {"train": ["n01440764", "n01443537", "n01484850"], "val": ["n02085620", "n02085782"],
                  "test": ["n03000134", "n03014705"]}


def png_bytes(colour, size=(84, 84)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def write_tiered_pickles(root: Path, per_class: int = 3, as_arrays: bool = False) -> Path:
    """Ren et al.'s form: ``<split>_images_png.pkl`` (PNG bytes, or 1-D uint8 arrays as
    cv2.imencode gives) and ``<split>_labels.pkl``; the colour of an image tells its class."""
    root.mkdir(parents=True, exist_ok=True)
    for split, wnids in TIERED_CLASSES.items():
        blobs, specific = [], []
        for i in range(per_class):
            for k, w in enumerate(wnids):
                b = png_bytes(mini_colour(w), (84 + i, 84))
                blobs.append(np.frombuffer(b, dtype=np.uint8).copy() if as_arrays else b)
                specific.append(k)
        labels = {"label_specific": np.array(specific), "label_general": np.zeros(len(specific), dtype=np.int64),
                  "label_specific_str": list(wnids), "label_general_str": ["everything"]}
        with open(root / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(blobs, f, protocol=4)
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump(labels, f, protocol=4)
    return root


# ----------------------------------------------------------------------------- Omniglot

OMNIGLOT = {"images_background": {"Alpha": 2, "Beta": 2, "Gamma": 1, "Delta": 2},
            "images_evaluation": {"Kappa": 2, "Lambda": 1}}
OMNIGLOT_PER_CHARACTER = 3


def write_omniglot(root: Path, alphabets: dict | None = None, per_character: int = OMNIGLOT_PER_CHARACTER) -> Path:
    """``root/omniglot-py/images_{background,evaluation}/<alphabet>/character<NN>/<id>_<NN>.png``:
    105 px 1-bit images, white with a black stroke in the top-left corner (so a rotation shows)
    whose length is the character number. ``alphabets``: part -> alphabet -> characters (OMNIGLOT)."""
    base = root / "omniglot-py"
    for part, chars in (alphabets or OMNIGLOT).items():
        for a, n_chars in chars.items():
            for c in range(1, n_chars + 1):
                d = base / part / a / f"character{c:02d}"
                d.mkdir(parents=True)
                for i in range(per_character):
                    img = np.ones((105, 105), dtype=bool)
                    img[:30, :20 + 20 * c] = False
                    Image.fromarray(img).save(d / f"{c:04d}_{i + 1:02d}.png")
    return root


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def fakes():
    """This module (writers, colour tables, helpers), so tests need no import path tricks."""
    return sys.modules[__name__]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def data_for(dataset: str, root: Path | None, cache: Path, size: int = 24, **kw) -> Data:
    return Data(dataset=dataset, root=None if root is None else str(root), image_size=size,
                cache_dir=str(cache), **kw)


def entries(cache: Path) -> list[str]:
    """Finished cache entries (folders that are neither locks nor temporaries)."""
    if not cache.exists():
        return []
    return sorted(p.name for p in cache.iterdir() if p.is_dir() and ".tmp-" not in p.name)


def bump_mtime(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
