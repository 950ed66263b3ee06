"""A finished sweep as one self-contained HTML page: ``report.html`` in the sweep's folder.

``python -m mtl report STORAGE/NAME`` writes it from ``summary.json``, and every sweep at its end.
:mod:`mtl.report.html` makes the page, :mod:`mtl.report.figures` its figures (the same ones the
sweep's MLflow parent run holds). It reads :mod:`mtl.results` types only.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

from mtl.errors import ConfigError
from mtl.files import write_text_atomic
from mtl.report.html import FIGURE_TITLES, SECTIONS, render
from mtl.results import SweepSummary

REPORT_FILE = "report.html"
__all__ = ["FIGURE_TITLES", "REPORT_FILE", "SECTIONS", "load_summary", "write_report"]


def load_summary(folder: str | Path) -> SweepSummary:
    """summary.json of the finished sweep in ``folder``; a ConfigError naming the fix otherwise."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no finished sweep (no summary.json); give STORAGE/NAME of a sweep that "
                          "ran to its end, e.g. ray_results/smoke")
    return SweepSummary.load(path)


def write_report(summary: SweepSummary, folder: str | Path, figs: dict[str, Any] | None = None) -> Path:
    """Write ``folder/report.html`` for ``summary``; ``figs``: name -> matplotlib figure (default
    :func:`mtl.report.figures.figures`)."""
    if figs is None:
        from mtl.report.figures import figures

        figs = figures(summary)
    path = Path(folder) / REPORT_FILE
    write_text_atomic(path, render(summary, {name: _png(fig) for name, fig in figs.items()}))
    return path


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()
