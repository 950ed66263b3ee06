"""Did searching help: the paired statistics, the baseline trial, the comparisons and seed runs
after the search (their bookkeeping, with stand-in tasks), the verdict in words, and the report
(in-process; the smoke sweep in test_tune_sweep.py runs all of it for real)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess

import pytest

from mtl.tune.stats import betainc, in_words, paired, spread, t_ppf, t_sf

# A fixed table of per-episode accuracies (5-way, 5 queries per class: steps of 0.04) of two configs
# on the same 8 episodes. By hand: differences d = a - b.
A = [0.60, 0.72, 0.48, 0.88, 0.64, 0.56, 0.80, 0.68]
B = [0.52, 0.72, 0.40, 0.80, 0.64, 0.48, 0.76, 0.56]


def test_paired_interval_and_p_value_match_a_hand_computation():
    d = [0.08, 0.0, 0.08, 0.08, 0.0, 0.08, 0.04, 0.12]
    n, mean = 8, 0.48 / 8  # 0.06
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))  # sqrt(0.0128 / 7)
    se = sd / math.sqrt(n)
    t = mean / se  # 3.9686
    t975 = 2.364624  # Student's t, 7 degrees of freedom, 0.975 quantile (any t table)
    # two-sided p for 7 df: the t CDF has a closed form for odd df (Abramowitz & Stegun 26.7.3)
    th = math.atan(t / math.sqrt(7))
    c = math.cos(th)
    cdf_mass = (2 / math.pi) * (th + math.sin(th) * (c + (2 / 3) * c ** 3 + (8 / 15) * c ** 5))
    p_hand = 1 - cdf_mass

    r = paired(A, B)
    assert r["episodes"] == 8
    assert r["diff"] == pytest.approx(mean, abs=1e-12)
    assert r["ci_low"] == pytest.approx(mean - t975 * se, abs=1e-6)
    assert r["ci_high"] == pytest.approx(mean + t975 * se, abs=1e-6)
    assert r["p"] == pytest.approx(p_hand, rel=1e-6) and 0.005 < r["p"] < 0.006
    assert r["significant"] is True
    assert in_words("winner vs baseline", r) == "winner vs baseline: +6.0 points (95% CI +2.4 to +9.6, p = 0.0054)"
    flipped = paired(B, A)
    assert flipped["diff"] == pytest.approx(-mean) and flipped["ci_high"] == pytest.approx(-r["ci_low"])


def test_identical_configs_give_an_interval_that_covers_zero():
    same = paired(A, list(A))
    assert same["diff"] == 0 and same["ci_low"] <= 0 <= same["ci_high"] and same["p"] == 1.0
    assert not same["significant"]
    assert in_words("winner vs t2", same).endswith(": not significant")
    # one episode apart in a hundred: a tiny, insignificant difference
    b = [*A * 12, 0.6, 0.6, 0.6, 0.6]
    a = [*A * 12, 0.6, 0.6, 0.6, 0.64]
    d = paired(a, b)
    assert d["ci_low"] < 0 < d["ci_high"] and d["p"] > 0.05 and not d["significant"]
    constant = paired([x + 0.04 for x in A], A)  # every episode exactly 4 points better: no spread
    assert constant["ci_low"] == constant["ci_high"] == pytest.approx(0.04) and constant["p"] == 0.0
    with pytest.raises(ValueError, match="equally long"):
        paired(A, B[:-1])


def test_t_distribution_matches_scipy_and_closed_forms():
    # df = 1 is Cauchy, df = 2 has a closed form
    for t in (0.3, 1.0, 2.5, 12.0):
        assert t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi, rel=1e-10)
        assert t_sf(t, 2) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)), rel=1e-10)
        assert t_sf(-t, 2) == pytest.approx(1 - t_sf(t, 2))
    assert t_ppf(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-9)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)
    stats = pytest.importorskip("scipy.stats")
    for df in (3, 7, 29, 599, 10_000):
        for t in (0.05, 1.3, 2.0, 4.5, 40.0):
            assert t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9, abs=1e-300)
        for q in (0.75, 0.975, 0.9995):
            assert t_ppf(q, df) == pytest.approx(stats.t.ppf(q, df), rel=1e-9)
    s = stats.ttest_rel(A, B)
    assert paired(A, B)["p"] == pytest.approx(s.pvalue, rel=1e-9)


def test_spread_over_seeds():
    s = spread([0.5, 0.52, 0.54])
    assert s["mean"] == pytest.approx(0.52) and s["sd"] == pytest.approx(0.02) and (s["min"], s["max"]) == (0.5, 0.54)
    assert spread([0.5])["sd"] == 0.0


# --- the baseline trial -------------------------------------------------------------------------

def _spec_file(tmp_path, space, tune=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(f"base: synthetic\nconfig: {{meta: {{inner_lr: 0.05}}}}\nspace:\n{space}{tune}")
    return path


def test_the_baseline_is_the_base_config_or_turned_off(tmp_path):
    from mtl.errors import ConfigError
    from mtl.tune.spec import load_spec

    space = "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n  meta.inner_steps: {int: [3, 12]}\n"
    spec = load_spec(_spec_file(tmp_path, space), [f"storage={tmp_path}"])
    assert spec.baseline_point() == {"meta.inner_lr": 0.05, "meta.inner_steps": 10}  # config: override, base value
    assert (spec.tune.compare_top, spec.tune.final_seeds) == (2, 1)
    outside = "  meta.inner_lr: {loguniform: [0.1, 0.5]}\n"
    with pytest.raises(ConfigError, match=r"^space meta.inner_lr: the base config's value 0.05 lies outside "
                                          r"loguniform\[0.1, 0.5\].*tune.baseline: false$"):
        load_spec(_spec_file(tmp_path, outside), [f"storage={tmp_path}"])
    off = load_spec(_spec_file(tmp_path, outside, "tune: {baseline: false}\n"), [f"storage={tmp_path}"])
    assert off.baseline_point() is None


def test_dry_run_states_what_runs_after_the_search(tmp_path):
    from mtl.tune.preflight import describe
    from mtl.tune.spec import load_spec

    spec = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"),
                     [f"storage={tmp_path}", "tune.final_seeds=3", "tune.num_samples=8", "meta.epochs=5"])
    text = describe(spec)
    assert "baseline: trial 1 is the base config (meta.inner_lr=0.05)" in text
    assert "the winner, the next 2 and the baseline tested on the same 600 test episodes (at most 4 test passes" in text
    assert ("final seeds: 3 per config: 4 more meta-trainings (2 each for the winner and the baseline, up to 5 epochs "
            "of 25 batches, no pretraining)") in text and "the cost of 4 of the 8 trials run to their end" in text
    off = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.2, 0.5]}\n", "tune: {baseline: false}\n"),
                    [f"storage={tmp_path}"])
    assert "baseline: none (tune.baseline: false)" in describe(off)
    assert "final seeds: 1 per config (the search's own runs" in describe(off)


def _row(tid, acc, seq, lr, ck=True, **kw):
    return {"trial_id": tid, "seq": seq, "config": {"meta.inner_lr": lr}, "best_val_acc": acc, "val_acc": acc,
            "best_val_ci95": 0.02, "val_ci95": 0.02, "checkpoint": f"/ck/{tid}" if ck else None, "epoch": 4,
            "planned_epochs": 4, "outcome": "completed", "stopped_early": False, "error": None, "train_loss": 1.0,
            "history": [{"epoch": e, "val_acc": acc - 0.01 * (4 - e)} for e in range(1, 5)] if acc else [], **kw}


def test_baseline_row_is_the_first_proposed_trial_with_the_base_values():
    from mtl.tune.summary import mark_baseline

    rows = [_row("b", 0.6, 2, 0.1), _row("a", 0.5, 1, 0.1), _row("c", 0.7, 3, 0.3)]
    assert mark_baseline(rows, {"meta.inner_lr": 0.1}) == "a"  # b drew the same value later
    assert [r["baseline"] for r in rows] == [False, True, False]
    never = [_row("x", None, None, 0.1, ck=False), _row("y", 0.7, 2, 0.3)]  # errored before its first report
    assert mark_baseline(never, {"meta.inner_lr": 0.1}) == "x"
    assert mark_baseline(rows, None) is None and not any(r["baseline"] for r in rows)


def test_compared_trials_are_the_winner_the_next_ones_and_the_baseline():
    from mtl.tune.finals import compared

    rows = [_row("base", 0.50, 1, 0.1), _row("w", 0.80, 2, 0.2), _row("r1", 0.78, 3, 0.3), _row("r2", 0.7, 4, 0.4),
            _row("r3", 0.6, 5, 0.5), _row("dead", None, 6, 0.6, ck=False)]
    got = [(t["trial_id"], roles) for t, roles in compared(rows, "base", 2)]
    assert got == [("w", ["winner"]), ("r1", ["runner_up"]), ("r2", ["runner_up"]), ("base", ["baseline"])]
    got = [(t["trial_id"], roles) for t, roles in compared(rows, "r1", 1)]
    assert got == [("w", ["winner"]), ("r1", ["runner_up", "baseline"])]
    assert [t["trial_id"] for t, _ in compared(rows, "w", 0)] == ["w"]


# --- the runs after the search, with stand-in tasks ---------------------------------------------

def _fake_tests(tid_accs):
    def compare(items, cache_root, export):
        return {tid: {"acc": sum(tid_accs[tid]) / len(tid_accs[tid]), "ci95": 0.05, "accs": tid_accs[tid],
                      "episodes_key": "same", "val_key": "v", "shared_features": False, "backbone_sha256": "bb",
                      "val_accs": [{"epoch": e, "accs": [a - 0.04 * (3 - e) for a in tid_accs[tid]]}
                                   for e in (1, 2, 3)]}
                for tid, _ in items}
    return compare


class Runner:
    """Runs the calls in-process, counting them by task."""

    def __init__(self, accs):
        self.calls: list[str] = []
        self.compare = _fake_tests(accs)

    def __call__(self, calls, done):
        for name, fn, args in calls:
            self.calls.append(fn.__name__)
            if fn.__name__ == "compare_task":
                done(name, self.compare(*args))
            else:
                _, _, seed = args
                tid = name.split(":")[0]
                done(name, {"seed": seed, "val_acc": 0.6 + seed / 100, "test_acc": 0.55 + seed / 100,
                            "test_ci95": 0.05, "accs": ACCS[tid], "epochs": 4, "backbone_sha256": "bb"})


ACCS = {"w": [*A, *A], "r1": [*B[:4], *A[4:], *A], "r2": [*B, *B], "base": [*B, *B]}


def _finals(tmp_path, runner, seeds=3):
    from mtl.tune.finals import comparison, run_finals
    from mtl.tune.spec import load_spec

    spec = load_spec(_spec_file(tmp_path, "  meta.inner_lr: {loguniform: [0.02, 0.5]}\n"),
                     [f"storage={tmp_path / 'res'}", f"tune.final_seeds={seeds}"])
    rows = [_row("base", 0.50, 1, 0.05), _row("w", 0.80, 2, 0.2), _row("r1", 0.78, 3, 0.3),
            _row("r2", 0.7, 4, 0.4, epoch=2, outcome="stopped_early", stopped_early=True)]
    exp = tmp_path / "exp"
    finals = run_finals(spec, rows, "base", str(tmp_path / "cache"), exp, runner)
    return exp, finals, comparison(finals, spec)


def test_finals_test_each_trial_once_and_rerun_winner_and_baseline_per_seed(tmp_path):
    runner = Runner(ACCS)
    exp, _, out = _finals(tmp_path, runner)
    # one test pass for all four, then (3 - 1) seeds x (winner, baseline) meta-trainings
    assert runner.calls == ["compare_task"] + ["seed_task"] * 4
    comp = out["comparison"]
    assert [(t["trial_id"], t["roles"]) for t in comp["trials"]] == [
        ("w", ["winner"]), ("r1", ["runner_up"]), ("r2", ["runner_up"]), ("base", ["baseline"])]
    assert comp["episodes"] == 16 and "vs_winner" not in comp["trials"][0]
    base = comp["trials"][3]
    assert base["vs_winner"] == paired(ACCS["w"], ACCS["base"]) and base["vs_winner"]["significant"]
    assert [p["epoch"] for p in base["val_vs_winner"]] == [1, 2, 3]
    assert base["val_vs_winner"][0]["diff"] == pytest.approx(paired(ACCS["w"], ACCS["base"])["diff"])
    seeds = out["final_seeds"]
    assert seeds["n"] == 3 and [t["trial_id"] for t in seeds["trials"]] == ["w", "base"]
    w = seeds["trials"][0]
    assert [r["seed"] for r in w["runs"]] == [0, 1, 2] and w["test"]["n"] == 3 and w["backbones"] == ["bb"]
    assert w["reseed_vs_search"]["diff"] == 0  # the stand-in re-run scored the same episodes alike
    assert sorted(p.name for p in (exp / "final").iterdir()) == sorted(
        [f"test-{t}.json" for t in ACCS] + [f"seed-{t}-{s}.json" for t in ("w", "base") for s in (1, 2)])

    # a resumed driver finds every result on disk: nothing runs twice, the same comparison comes out
    again = Runner(ACCS)
    _, _, out2 = _finals(tmp_path, again)
    assert again.calls == [] and out2 == json.loads(json.dumps(out))
    # a half-written result (a crash mid-write) is run again, alone
    (exp / "final" / "seed-w-2.json").write_text("{")
    third = Runner(ACCS)
    _finals(tmp_path, third)
    assert third.calls == ["seed_task"]


def test_one_seed_runs_nothing_more(tmp_path):
    runner = Runner(ACCS)
    _, _, out = _finals(tmp_path, runner, seeds=1)
    assert runner.calls == ["compare_task"] and "final_seeds" not in out


# --- the verdict and the printed table ----------------------------------------------------------

def _summary(tmp_path, accs=ACCS, baseline="base", seeds=3):
    from mtl.tune.summary import mark_baseline, ties, verdict

    exp, finals, out = _finals(tmp_path, Runner(accs), seeds)
    rows = [t for t, _ in finals["chosen"]]
    mark_baseline(rows, {"meta.inner_lr": 0.05} if baseline else None)
    win = rows[0]
    best = {"trial_id": win["trial_id"], "config": win["config"], "val_acc": win["best_val_acc"],
            "val_ci95": 0.02, "ties": ties(win, rows), "baseline": win["baseline"], "test_acc": 0.7,
            "test_ci95": 0.03, "test_episodes": 16, "checkpoint": str(exp / "best" / "meta_state.pt"),
            "config_file": str(exp / "best" / "config.yaml"), "resolved_config": {"meta": {"inner_lr": 0.2}}}
    s = {"name": "smoke", "spec": "search_spaces/smoke.yaml", "metric": "val_acc",
         "space": {"meta.inner_lr": {"loguniform": [0.02, 0.5]}}, "best": best, **out, "trials": rows,
         "baseline": {"trial_id": "base", "config": {"meta.inner_lr": 0.05}} if baseline else None,
         "wall_s": 12.0}
    s["verdict"] = verdict(s)
    return s


def test_the_table_says_in_words_whether_the_winner_beats_each_trial(tmp_path):
    from mtl.tune.summary import format_table, summary_metrics

    s = _summary(tmp_path)
    text = format_table(s)
    assert "paired comparison on the same 16 test episodes" in text
    assert "winner vs base (baseline): +6.0 points (95% CI +3.8 to +8.2, p < 0.001)" in text
    assert "winner vs r1: +1.5 points (95% CI -0.2 to +3.2, p = 0.083): not significant" in text
    assert "w (winner) over 3 seeds: test" in text
    assert "r2               test 61.00% ± 5.00 (stopped early by ASHA at epoch 2/4)" in text
    assert "verdict: searching helped: winner vs baseline: +6.0 points" in text
    assert "base baseline" in text  # the trials table marks it
    m = summary_metrics(s)
    assert m["winner_vs_baseline_diff"] == pytest.approx(0.06) and m["winner_vs_baseline_p"] < 0.001
    assert m["baseline_test_acc"] == pytest.approx(sum(ACCS["base"]) / 16) and "winner_seeds_test_sd" in m


def test_nothing_learnt_is_said_plainly_and_still_names_the_best_config(tmp_path):
    accs = {**ACCS, "base": [*A, *A[::-1]]}  # the baseline as good as the winner, on other episodes
    s = _summary(tmp_path, accs)
    assert s["verdict"].startswith("nothing was learnt by searching: no trial beats the baseline significantly")
    assert "not significant" in s["verdict"] and s["verdict"].endswith("the best config found is meta.inner_lr=0.2")
    assert "no baseline trial" in _summary(tmp_path / "x", baseline=None)["verdict"]


# --- the report ---------------------------------------------------------------------------------

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
    assert f"python -m mtl train {s['best']['config_file']} --out runs/smoke-winner" in page
    assert "inner_lr: 0.2" in page  # the resolved config


def test_report_command(tmp_path, capsys):
    from mtl.cli import main
    from mtl.files import write_json_atomic

    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no finished sweep (no summary.json)" in err[0]
    write_json_atomic(tmp_path / "summary.json", _summary(tmp_path / "s"))
    assert main(["report", str(tmp_path), "-q"]) == 0
    assert f"report: {tmp_path / 'report.html'}" in capsys.readouterr().out
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """The page as a browser draws it, from disk: Chromium's screenshot shows the figures (many
    colours), and its DOM after load holds every image decoded (naturalWidth > 0 is not visible
    headless without a script, so the screenshot's size and colours stand for it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium)")
    from PIL import Image

    from mtl.report import write_report

    path = write_report(_summary(tmp_path), tmp_path)
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,4200",
                    f"--screenshot={shot}", path.as_uri()], check=True, capture_output=True, timeout=120)
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 4200)
    colours = img.resize((300, 1050)).getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 200, "the screenshot shows no figures"
