"""The pretraining recipes, and how a config built in layers switches between them.

A recipe fills the pretraining fields a config leaves ``None`` (:class:`mtl.config.Pretrain`): ``pt``,
the official PyTorch code's recipe, and ``tf``, the TensorFlow code's (docs/algorithm.md §2). A
recipe switch resolves the same way on every path that builds a config (:func:`merge_layers`): a
YAML file and the files of its ``base:`` chain, ``--set``, a sweep's ``config:`` and ``space``,
:meth:`mtl.config.Config.with_overrides`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl.registry import RECIPES

# The official PyTorch code (run_pre.py, models/mtl.py; docs/algorithm.md §2): SGD Nesterov, step
# decay, crop + flip, an MLP pretraining head, the best epoch by few-shot probe.
RECIPES.register("pt")({"epochs": 110, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                        "nesterov": True, "weight_decay": 5e-4, "lr_step": 30, "lr_gamma": 0.2, "augment": True,
                        "dropout": 0.0, "head": "mlp", "selection": "best"})
# The TF code: Adam 1e-3 halved every 5k iterations, batch 64, the 10k-iteration snapshot (no
# selection), dropout 0.1 (keep 0.9), no augmentation, a linear head. In epochs of miniImageNet's
# 38,400 images: 10k it. = 16.7, 5k it. = 8.3.
RECIPES.register("tf")({"epochs": 17, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "momentum": 0.9,
                        "nesterov": False, "weight_decay": 0.0, "lr_step": 8, "lr_gamma": 0.5, "augment": False,
                        "dropout": 0.1, "head": "linear", "selection": "last"})
DEFAULT_RECIPE = "pt"
RECIPE_KEY = "pretrain.recipe"



def merge_layers(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Dotted layers, lowest first (a base file, the file, a sweep's ``config:``, ``--set``, a
    trial's searched values), merged into one: a later layer's value wins.

    A layer that changes ``pretrain.recipe`` also moves every recipe field that still holds the
    previous recipe's value, and is not set in that layer, to the new recipe's value. A resolved
    config carries no history, so "came from the recipe" can only mean "equals the recipe's value";
    applying the rule at every layer boundary makes every path agree. A value set on purpose
    stays, unless it equals the old recipe's: then set it again in the layer that switches.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        old = merged.get(RECIPE_KEY, DEFAULT_RECIPE)
        new = layer.get(RECIPE_KEY, old)
        if new != old and isinstance(old, str) and old in RECIPES:
            for k, v in RECIPES.get(old).items():
                key = f"pretrain.{k}"
                if key not in layer and key in merged and merged[key] == v:
                    del merged[key]  # the new recipe fills it
        merged.update(layer)
    return merged


def recipe_note(cfg: Any) -> str:
    """One line on where the recipe fields of a resolved :class:`mtl.config.Config` came from (``--dry-run``, the head
    of a saved config.yaml): those that hold the recipe's values, and those set otherwise."""
    p = cfg.pretrain
    values = RECIPES.get(p.recipe)
    same = [k for k, v in values.items() if p.get(k) == v]
    other = [f"{k}={p.get(k)}" for k in values if k not in same]
    return (f"pretrain.recipe {p.recipe} supplies {', '.join(same) or 'no field'}"
            + (f"; set otherwise: {', '.join(other)}" if other else ""))


