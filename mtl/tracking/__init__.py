"""Experiment tracking: MLflow parent/child runs of a sweep, and the sweep's summary figures.

Attributes load on first use, so ``import mtl.tracking`` costs nothing and never imports
mlflow (only the tracker's methods do), ray or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "resolve_tracking_uri": "mtl.tracking.uri",
    "check_tracking_uri": "mtl.tracking.uri",
    "SweepTracker": "mtl.tracking.mlflow",
    "SweepCallback": "mtl.tracking.callback",
    "plot_validation_curves": "mtl.tracking.plots",
    "plot_param_importance": "mtl.tracking.plots",
    "plot_parallel_coordinates": "mtl.tracking.plots",
    "plot_paired_differences": "mtl.tracking.plots",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mtl.tracking' has no attribute {name!r}")
