"""A finished sweep as one self-contained HTML page: ``report.html`` in the sweep's folder.

``python -m mtl report STORAGE/NAME`` writes it from ``summary.json`` (and every sweep at its
end). The page has no script and no link to load: its figures are PNGs inlined as data URIs, its
style is inline, so it opens from disk anywhere (and as an artifact in MLflow's UI). Sections, in
order: the verdict (did searching help), the paired comparison on the same test episodes, the
seed runs, every trial (baseline and stopped-early ones marked), the figures (validation curves,
hyperparameter importance, parallel coordinates, per-epoch paired differences on the validation
bank), the winner's resolved config and the commands that reproduce it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

from mtl.errors import ConfigError
from mtl.files import write_text_atomic
from mtl.tune.stats import in_words

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SECTIONS = ("Verdict", "Paired comparison", "Seeds", "Trials", "Figures", "Winner's config", "Reproduce")
FIGURE_TITLES = {
    "validation_curves.png": "Validation accuracy of every trial, per epoch",
    "param_importance.png": "Hyperparameter importance (the figure the MLflow parent run holds)",
    "parallel_coordinates.png": "Searched parameters against the best validation accuracy",
    "paired_val_differences.png": "Winner minus each compared trial on the validation bank, per epoch",
}
_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.baseline td{background:#fff7e0}tr.winner td{background:#e8f4ea}
.verdict{font-size:1.1em;padding:.8em 1em;border-left:5px solid #888;background:#f6f6f6}
.yes{border-color:#2a8a3a}.no{border-color:#c77700}.tag{font-size:.8em;padding:0 .4em;border-radius:3px;
background:#ddd;margin-left:.3em}.tag.b{background:#f2c94c}.tag.s{background:#cfd8e3}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}figure{margin:1em 0}figcaption{color:#555}
img{max-width:100%}"""


def load_summary(folder: str | Path) -> dict[str, Any]:
    """summary.json of the finished sweep in ``folder``; a ConfigError naming the fix otherwise."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no finished sweep (no summary.json); give STORAGE/NAME of a sweep that "
                          "ran to its end, e.g. ray_results/smoke")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); run the sweep again with --resume") from None


def write_report(summary: dict[str, Any], folder: str | Path, figs: dict[str, Any] | None = None) -> Path:
    """Write ``folder/report.html`` for ``summary``; ``figs``: name -> matplotlib figure
    (default :func:`mtl.tune.summary.figures`, the figures the MLflow parent run holds)."""
    if figs is None:
        from mtl.tune.summary import figures

        figs = figures(summary)
    path = Path(folder) / REPORT_FILE
    write_text_atomic(path, render(summary, {name: _png(fig) for name, fig in figs.items()}))
    return path


def attach_to_run(summary: dict[str, Any], path: Path) -> str | None:
    """Log the report to the sweep's MLflow parent run (named in the summary); returns its id."""
    info = summary.get("mlflow") or {}
    if not info.get("parent_run_id"):
        return None
    from mlflow import MlflowClient

    from mtl.tracking.runlog import log_artifact

    log_artifact(MlflowClient(info["tracking_uri"]), info["parent_run_id"], REPORT_FILE, path)
    return info["parent_run_id"]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode()


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(acc: Any, ci: Any = None) -> str:
    if not isinstance(acc, (int, float)):
        return "-"
    return f"{100 * acc:.2f}%" + (f" &plusmn; {100 * ci:.2f}" if isinstance(ci, (int, float)) else "")


def _val(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else _e(v)


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None, left: int = 1) -> str:
    """An HTML table; cells are HTML already; the first ``left`` columns are left-aligned."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(head))
    body = "".join(f'<tr class="{(classes or [""] * len(rows))[j]}">'
                   + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r)) + "</tr>"
                   for j, r in enumerate(rows))
    return f"<table><tr>{th}</tr>{body}</table>"


def _tags(roles: list[str]) -> str:
    return "".join(f'<span class="tag{" b" if r == "baseline" else ""}">{_e(r.replace("_", "-"))}</span>'
                   for r in roles)


def _verdict(s: dict[str, Any]) -> str:
    text = s.get("verdict") or "no verdict (the summary predates it)"
    kind = "yes" if text.startswith("searching helped") else "no"
    return f'<h2 id="verdict">Verdict</h2><p class="verdict {kind}">{_e(text)}</p>'


def _comparison(s: dict[str, Any]) -> str:
    comp = s.get("comparison")
    out = '<h2 id="paired-comparison">Paired comparison</h2>'
    if not comp:
        return out + "<p>No trial left a checkpoint: nothing was tested.</p>"
    out += (f"<p>Each trial's best state on the same {comp['episodes']} test episodes: mean accuracy with its 95% "
            "CI, and the winner minus each trial over the per-episode differences (95% t-interval, paired "
            "t-test).</p>")
    rows, classes, words = [], [], []
    for t in comp["trials"]:
        d = t.get("vs_winner")
        diff = "-" if "vs_winner" not in t else "other episodes" if d is None else (
            f"{100 * d['diff']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}]")
        p = f"{d['p']:.3g}" if d else "-"
        early = '<span class="tag s">stopped early</span>' if t.get("stopped_early") else ""
        rows.append([_e(t["trial_id"]) + _tags(t["roles"]) + early, _pct(t["val_acc"]),
                     _pct(t["test_acc"], t["test_ci95"]),
                     diff, p, ("yes" if d["significant"] else "no") if d else "-"])
        classes.append("winner" if "winner" in t["roles"] else "baseline" if "baseline" in t["roles"] else "")
        if d:
            words.append(in_words(f"winner vs {t['trial_id']}" + (" (baseline)" if "baseline" in t["roles"] else ""),
                                  d))
    out += _table(["trial", "best val acc", "test acc (95% CI)", "winner minus it, points [95% CI]", "p",
                   "significant"], rows, classes)
    return out + "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in words) + "</ul>"


def _seeds(s: dict[str, Any]) -> str:
    fs = s.get("final_seeds")
    out = '<h2 id="seeds">Seeds</h2>'
    if not fs:
        return out + ("<p>One seed per config (<code>tune.final_seeds: 1</code>): the numbers above are single "
                      "runs; set <code>tune.final_seeds</code> to re-run the winner and the baseline.</p>")
    out += (f"<p>The winner's and the baseline's meta-training run with {fs['n']} seeds in all (the search's "
            "own run and re-runs on the same pre-trained backbone), each tested on the same episodes.</p>")
    rows = []
    for t in fs["trials"]:
        runs = ", ".join(f"seed {r['seed']}: {_pct(r['test_acc'])} ({r.get('epochs', '?')} epochs)"
                         for r in t["runs"])
        v, te = t["val"], t["test"]
        noise = t.get("reseed_vs_search")
        rows.append([_e(t["trial_id"]) + _tags(t["roles"]), f"{100 * v['mean']:.2f}% (sd {100 * v['sd']:.2f})",
                     (f"{100 * te['mean']:.2f}% (sd {100 * te['sd']:.2f}, {100 * te['min']:.2f} to "
                      f"{100 * te['max']:.2f})"), runs,
                     _e(in_words(f"seed {t['runs'][1]['seed']} vs seed {t['runs'][0]['seed']}", noise))
                     if noise else "-"])
    return out + _table(["trial", "best val acc over seeds", "test acc over seeds", "per seed",
                         "same config, another seed"], rows, left=5)


def _trials(s: dict[str, Any]) -> str:
    keys = list(s["space"])
    tested = {t["trial_id"]: t for t in (s.get("comparison") or {}).get("trials", [])}
    ranked = sorted(s["trials"], key=lambda t: -(t["best_val_acc"] if t["best_val_acc"] is not None else -1))
    rows, classes = [], []
    win = (s.get("best") or {}).get("trial_id")
    for t in ranked:
        tags = _tags(["baseline"] if t.get("baseline") else []) + (
            '<span class="tag s">stopped early</span>' if t.get("stopped_early") else "")
        test = tested.get(t["trial_id"])
        epochs = f"{t['epoch']}/{t['planned_epochs']}" if t.get("planned_epochs") else _e(t["epoch"])
        rows.append([_e(t["trial_id"]) + tags, *(_val(t["config"].get(k)) for k in keys),
                     _pct(t["best_val_acc"], t.get("best_val_ci95")), epochs, _e(t["outcome"]),
                     _pct(test["test_acc"], test["test_ci95"]) if test else "-", _e(t.get("error") or "")])
        classes.append("winner" if t["trial_id"] == win else "baseline" if t.get("baseline") else "")
    head = ["trial", *(_e(k) for k in keys), "best val acc (95% CI)", "epochs", "outcome", "test acc", "error"]
    return (f'<h2 id="trials">Trials</h2><p>{len(ranked)} trials, best validation accuracy first; the winner is '
            "green, the baseline (the base config, run first) yellow.</p>" + _table(head, rows, classes))


def _figures(pngs: dict[str, str]) -> str:
    out = '<h2 id="figures">Figures</h2>'
    for name, title in FIGURE_TITLES.items():
        if name in pngs:
            out += (f'<figure id="{name.removesuffix(".png")}"><img alt="{_e(title)}" '
                    f'src="data:image/png;base64,{pngs[name]}"><figcaption>{_e(title)}</figcaption></figure>')
        else:
            out += f"<p>{_e(title)}: not drawn (too few trials or values to show).</p>"
    return out


def _winner(s: dict[str, Any]) -> str:
    import yaml

    b = s.get("best")
    out = '<h2 id="winners-config">Winner\'s config</h2>'
    if not b:
        return out + "<p>No winner.</p>"
    searched = ", ".join(f"{k}={_val(v)}" for k, v in b["config"].items())
    cfg = yaml.safe_dump(b.get("resolved_config") or b["config"], sort_keys=False)
    return out + f"<p>Trial {_e(b['trial_id'])}: {searched}</p><pre>{_e(cfg)}</pre>"


def _reproduce(s: dict[str, Any]) -> str:
    b = s.get("best")
    out = '<h2 id="reproduce">Reproduce</h2>'
    if not b:
        return out + "<p>No winner to reproduce.</p>"
    name = s["name"]
    cmds = [("pretrain and meta-train the winner's config from scratch",
             f"python -m mtl train {b['config_file']} --out runs/{name}-winner"),
            ("test the winner's checkpoint again",
             f"python -m mtl evaluate {b['checkpoint']} --set eval.episodes=2000"),
            ("this report", f"python -m mtl report {Path(b['checkpoint']).parents[1]}")]
    return out + "".join(f"<p>{_e(what)}:</p><pre>{_e(cmd)}</pre>" for what, cmd in cmds)


def render(summary: dict[str, Any], pngs: dict[str, str]) -> str:
    """The page for ``summary``; ``pngs``: figure file name -> base64 PNG."""
    s = summary
    b = s.get("best") or {}
    head = (f"<h1>Sweep {_e(s['name'])}</h1><p>{len(s['trials'])} trials of {_e(s.get('spec', ''))} in "
            f"{s.get('wall_s', 0):.0f} s; searched: {_e(', '.join(s['space']))}. Best trial "
            f"{_e(b.get('trial_id', '-'))}: validation {_pct(b.get('val_acc'), b.get('val_ci95'))}, test "
            f"{_pct(b.get('test_acc'), b.get('test_ci95'))} over {_e(b.get('test_episodes', '-'))} episodes.</p>")
    nav = " · ".join(f'<a href="#{t.lower().replace(chr(39), "").replace(" ", "-")}">{_e(t)}</a>' for t in SECTIONS)
    body = "".join([head, f"<p>{nav}</p>", _verdict(s), _comparison(s), _seeds(s), _trials(s), _figures(pngs),
                    _winner(s), _reproduce(s)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sweep {_e(s["name"])}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")
