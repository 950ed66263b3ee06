"""report.html of a finished sweep: every section, nothing to load, the command that writes it
again, and the page as Chromium draws it (CI installs Chromium, so the render test runs there)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from test_compare import _summary

from mtl.report.html import BASELINE_ROW, VERDICT_YES, WINNER_ROW


def test_report_holds_every_section_and_loads_nothing(tmp_path):
    from mtl.report import FIGURE_TITLES, SECTIONS, write_report

    s = _summary(tmp_path)
    path = write_report(s, tmp_path)
    page = path.read_text()
    for title in SECTIONS:
        assert f">{title}</h2>" in page, title
    for name in FIGURE_TITLES:  # every figure drawn, inline
        assert f'<figure id="{name.removesuffix(".png")}"><img' in page, name
    assert page.count('src="data:image/png;base64,') == len(FIGURE_TITLES)
    assert not re.search(r"(src|href)=\"(?!data:|#)", page) and "<script" not in page  # opens with no network
    assert "searching helped: winner vs baseline: +6.0 points" in page
    assert page.count('<span class="tag s">stopped early</span>') == 2  # r2, in the comparison and the trials
    assert f"python -m mtl train {s.best.config_file} --out runs/smoke-winner" in page
    assert "inner_lr: 0.2" in page  # the resolved config


def test_the_report_shows_the_race_and_the_sweeps_order(tmp_path):
    from test_race import A, B

    from mtl.report import write_report
    from mtl.tune.race import race, ranked
    from mtl.tune.tasks import Evaluated

    s = _summary(tmp_path)
    rows = {t.trial_id: t for t in s.trials}
    raced = race([rows["w"], rows["r1"]], {"w": Evaluated(acc=sum(A) / 12, ci95=0.03, accs=A, episodes_key="k"),
                                          "r1": Evaluated(acc=sum(B) / 12, ci95=0.03, accs=B, episodes_key="k")}, 12)
    s = s.model_copy(update={"race": raced, "trials": ranked(s.trials, raced)})
    page = write_report(s, tmp_path).read_text()
    race_html = page[page.index('<h2 id="race">'):page.index('<h2 id="paired-comparison">')]
    assert "the winner is separated from the runner-up on validation" in race_html
    assert race_html.index(">r1<") < race_html.index(">w<")  # the leader first: r1 won the race
    trials_html = page[page.index('<h2 id="trials">'):page.index('<h2 id="figures">')]
    assert trials_html.index(">r1<") < trials_html.index(">w<")  # and leads the sweep's order


def test_report_command(tmp_path, capsys):
    from mtl.cli import main

    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no finished sweep (no summary.json)" in err[0]
    (tmp_path / "summary.json").write_text('{"name": "half"}')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not the summary of a finished sweep" in err[0]
    _summary(tmp_path / "s").save(tmp_path / "summary.json")
    assert main(["report", str(tmp_path), "-q"]) == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "report.html").stat().st_size > 10_000


def _colour(hex_rgb: str) -> tuple[int, int, int]:
    return tuple(int(hex_rgb[i:i + 2], 16) for i in (1, 3, 5))


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """The page as a browser draws it, from disk: the top of Chromium's screenshot shows the verdict
    box with its "helped" bar and the comparison table with the winner's green and the baseline's
    yellow rows (a screenshot of any other page has none of these colours), and further down the
    figures (many colours)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    from PIL import Image

    from mtl.report import write_report

    path = write_report(_summary(tmp_path), tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,4200",
                    f"--screenshot={shot}", path.as_uri()], check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 4200)
    top = img.crop((0, 0, 1200, 900))
    counts = {rgb: n for n, rgb in top.getcolors(maxcolors=1 << 20)}
    for what, colour in (("the verdict's 'helped' bar", VERDICT_YES), ("the winner's row", WINNER_ROW),
                         ("the baseline's row", BASELINE_ROW)):
        assert counts.get(_colour(colour), 0) > 500, f"{what} ({colour}) is not on the page's first screen"
    colours = img.resize((300, 1050)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 200, "the screenshot shows no figures"
