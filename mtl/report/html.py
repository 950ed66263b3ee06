"""The HTML of report.html: one self-contained page for a :class:`~mtl.results.SweepSummary`.

The page has no script and no link to load: its figures are PNGs inlined as data URIs, its style
is inline, so it opens from disk anywhere (and as an artifact in MLflow's UI). Sections, in order:
the verdict (did searching help), the paired comparison on the same test episodes, the seed runs,
every trial (baseline and stopped-early ones marked), the figures, the winner's resolved config
and the commands that reproduce it.
"""

from __future__ import annotations

import html
from typing import Any

from mtl.results import SweepSummary, fmt, pct
from mtl.stats import in_words

SECTIONS = ("Verdict", "Race", "Paired comparison", "Seeds", "Trials", "Figures", "Winner's config", "Reproduce")
FIGURE_TITLES = {
    "validation_curves.png": "Validation accuracy of every trial, per epoch",
    "param_importance.png": "Hyperparameter importance (the figure the MLflow parent run holds)",
    "parallel_coordinates.png": "Searched parameters against the best validation accuracy",
    "paired_val_differences.png": "Winner minus each compared trial on the validation bank, per epoch",
}
WINNER_ROW, BASELINE_ROW, VERDICT_YES, VERDICT_NO = "#e8f4ea", "#fff7e0", "#2a8a3a", "#c77700"  # what a reader sees
_STYLE = f"""body{{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}}
h1{{font-size:1.6em}}h2{{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}}
table{{border-collapse:collapse;margin:.6em 0}}td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}}td.l,th.l{{text-align:left}}tr.baseline td{{background:{BASELINE_ROW}}}
tr.winner td{{background:{WINNER_ROW}}}
.verdict{{font-size:1.1em;padding:.8em 1em;border-left:12px solid #888;background:#f6f6f6}}
.yes{{border-color:{VERDICT_YES}}}.no{{border-color:{VERDICT_NO}}}.tag{{font-size:.8em;padding:0 .4em;border-radius:3px;
background:#ddd;margin-left:.3em}}.tag.b{{background:#f2c94c}}.tag.s{{background:#cfd8e3}}
pre{{background:#f6f6f6;padding:.8em;overflow-x:auto}}figure{{margin:1em 0}}figcaption{{color:#555}}
img{{max-width:100%}}"""
_EARLY = '<span class="tag s">stopped early</span>'
_FINISHED = '<span class="tag s">stopped in pretraining, trained to its end after the search</span>'


def _e(x: Any) -> str:
    return html.escape(str(x))


def _pct(acc: Any, ci: Any = None) -> str:
    return _e(pct(acc, ci))


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


def _h2(title: str) -> str:
    anchor = title.lower().replace("'", "").replace(" ", "-")
    return f'<h2 id="{anchor}">{title}</h2>'  # our own titles (SECTIONS): HTML already


def _diff(d: Any) -> str:
    """A paired difference in points with its interval: ``+1.50 [-0.22, +3.22]``."""
    return f"{100 * d.diff:+.2f} [{100 * d.ci_low:+.2f}, {100 * d.ci_high:+.2f}]"


def _verdict(s: SweepSummary) -> str:
    kind = "yes" if s.verdict.startswith("searching helped") else "no"
    return _h2("Verdict") + f'<p class="verdict {kind}">{_e(s.verdict)}</p>'


def _race(s: SweepSummary) -> str:
    r = s.race
    if r is None:
        return _h2("Race") + ("<p>No race (<code>tune.race_top: 0</code>, or no trial left a checkpoint): the "
                              "winner is the best validation accuracy of the search.</p>")
    out = _h2("Race") + (
            f"<p>The top {len(r.trials)} trials of the search by validation accuracy, each at the state it "
            f"selected, on {r.episodes} fresh validation episodes (none of them a task that selected it), all on "
            "the same episodes; the leader is the winner. The leader minus each: mean paired difference, its 95% "
            f't-interval, the paired t-test.</p><p class="verdict {"yes" if r.separated else "no"}">{_e(r.says)}</p>')
    rows, classes = [], []
    for i, e in enumerate(r.trials):
        d = e.vs_leader
        rows.append([_e(e.trial_id) + _tags(["winner"] if i == 0 else []), _pct(e.selection_val_acc),
                     _pct(e.val_acc, e.val_ci95), _diff(d) if d else "-",
                     f"{d.p:.3g}" if d else "-", ("yes" if d.significant else "no") if d else "-"])
        classes.append("winner" if i == 0 else "")
    return out + _table(["finalist", "val acc in the search", "val acc in the race (95% CI)",
                         "leader minus it, points [95% CI]", "p", "significant"], rows, classes)


def _comparison(s: SweepSummary) -> str:
    comp = s.comparison
    out = _h2("Paired comparison")
    if comp is None:
        return out + "<p>No trial left a checkpoint: nothing was tested.</p>"
    out += (f"<p>Each trial's best state on the same {comp.episodes} test episodes: mean accuracy with its 95% "
            "CI, and the winner minus each trial over the per-episode differences (95% t-interval, paired "
            "t-test).</p>")
    rows, classes, words = [], [], []
    for t in comp.trials:
        d = t.vs_winner
        diff = "-" if t.is_winner else "other episodes" if d is None else _diff(d)
        rows.append([_e(t.trial_id) + _tags(t.roles) + (_EARLY if t.stopped_early else _FINISHED if t.finished else ""),
                     _pct(t.val_acc),
                     _pct(t.test_acc, t.test_ci95), diff, f"{d.p:.3g}" if d else "-",
                     ("yes" if d.significant else "no") if d else "-"])
        classes.append("winner" if t.is_winner else "baseline" if "baseline" in t.roles else "")
        if d:
            words.append(in_words(f"winner vs {t.trial_id}" + (" (baseline)" if "baseline" in t.roles else ""), d))
    out += _table(["trial", "best val acc", "test acc (95% CI)", "winner minus it, points [95% CI]", "p",
                   "significant"], rows, classes)
    return out + "<ul>" + "".join(f"<li>{_e(w)}</li>" for w in words) + "</ul>"


def _seeds(s: SweepSummary) -> str:
    fs = s.final_seeds
    out = _h2("Seeds")
    if fs is None:
        return out + ("<p>One seed per config (<code>tune.final_seeds: 1</code>): the numbers above are single "
                      "runs; set <code>tune.final_seeds</code> to re-run the winner and the baseline.</p>")
    out += (f"<p>The winner's and the baseline's meta-training run with {fs.n} seeds in all (the search's "
            "own run and re-runs on the same pre-trained backbone), each tested on the same episodes.</p>")
    rows = []
    for t in fs.trials:
        runs = ", ".join(f"seed {r.seed}: {pct(r.test_acc)} ({r.epochs} epochs)" for r in t.runs)
        v, te, noise = t.val, t.test, t.reseed_vs_search
        rows.append([_e(t.trial_id) + _tags(t.roles), f"{100 * v.mean:.2f}% (sd {100 * v.sd:.2f})",
                     f"{100 * te.mean:.2f}% (sd {100 * te.sd:.2f}, {100 * te.min:.2f} to {100 * te.max:.2f})",
                     _e(runs), _e(in_words(f"seed {t.runs[1].seed} vs seed {t.runs[0].seed}", noise)) if noise else "-"])
    return out + _table(["trial", "best val acc over seeds", "test acc over seeds", "per seed",
                         "same config, another seed"], rows, left=5)


def _trials(s: SweepSummary) -> str:
    keys = list(s.space)
    tested = {t.trial_id: t for t in s.comparison.trials} if s.comparison else {}
    win = s.best.trial_id if s.best else None
    rows, classes = [], []
    ranked = s.ranked()
    for t in ranked:
        test = tested.get(t.trial_id)
        epochs = _e(t.reached)
        rows.append([_e(t.trial_id) + _tags(["baseline"] if t.baseline else []) + (_EARLY if t.stopped_early else ""),
                     *(_e(fmt(t.config.get(k))) for k in keys), _pct(t.best_val_acc, t.best_val_ci95), epochs,
                     _e(t.outcome), _pct(test.test_acc, test.test_ci95) if test else "-", _e(t.error or "")])
        classes.append("winner" if t.trial_id == win else "baseline" if t.baseline else "")
    head = ["trial", *(_e(k) for k in keys), "best val acc (95% CI)", "epochs", "outcome", "test acc", "error"]
    return (_h2("Trials") + f"<p>{len(ranked)} trials in the sweep's order (the race's finalists "
            "first, then by best validation accuracy); the winner is green, the baseline (the base config, run "
            "first) yellow.</p>" + _table(head, rows, classes))


def _figures(pngs: dict[str, str]) -> str:
    out = _h2("Figures")
    for name, title in FIGURE_TITLES.items():
        if name in pngs:
            out += (f'<figure id="{name.removesuffix(".png")}"><img alt="{_e(title)}" '
                    f'src="data:image/png;base64,{pngs[name]}"><figcaption>{_e(title)}</figcaption></figure>')
        else:
            out += f"<p>{_e(title)}: not drawn (too few trials or values to show).</p>"
    return out


def _winner(s: SweepSummary) -> str:
    import yaml

    b = s.best
    out = _h2("Winner's config")
    if b is None:
        return out + "<p>No winner.</p>"
    searched = ", ".join(f"{k}={fmt(v)}" for k, v in b.config.items())
    cfg = yaml.safe_dump(b.resolved_config, sort_keys=False)
    return out + f"<p>Trial {_e(b.trial_id)}: {_e(searched)}</p><pre>{_e(cfg)}</pre>"


def _reproduce(s: SweepSummary) -> str:
    b = s.best
    out = _h2("Reproduce")
    if b is None:
        return out + "<p>No winner to reproduce.</p>"
    cmds = [("pretrain and meta-train the winner's config from scratch",
             f"python -m mtl train {b.config_file} --out runs/{s.name}-winner"),
            ("test the winner's checkpoint again", f"python -m mtl evaluate {b.checkpoint} --set eval.episodes=2000"),
            ("this report", f"python -m mtl report {b.folder}")]
    return out + "".join(f"<p>{_e(what)}:</p><pre>{_e(cmd)}</pre>" for what, cmd in cmds)


def render(s: SweepSummary, pngs: dict[str, str]) -> str:
    """The page for ``s``; ``pngs``: figure file name -> base64 PNG."""
    b = s.best
    best = (f"Best trial {_e(b.trial_id)}: validation {_pct(b.val_acc, b.val_ci95)}, test "
            f"{_pct(b.test_acc, b.test_ci95)} over {b.test_episodes} episodes." if b else "No winner.")
    head = (f"<h1>Sweep {_e(s.name)}</h1><p>{len(s.trials)} trials of {_e(s.spec)} in {s.wall_s:.0f} s; searched: "
            f"{_e(', '.join(s.space))}. {best}</p>")
    nav = " · ".join(f'<a href="#{t.lower().replace(chr(39), "").replace(" ", "-")}">{_e(t)}</a>' for t in SECTIONS)
    body = "".join([head, f"<p>{nav}</p>", _verdict(s), _race(s), _comparison(s), _seeds(s), _trials(s),
                    _figures(pngs), _winner(s), _reproduce(s)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sweep {_e(s.name)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")
