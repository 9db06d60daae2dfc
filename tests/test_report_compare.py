"""The report's run comparison (sample-count effects, intervals, configuration differences), Markdown escaping and
the solvers' colours."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import colours
from bench.compare_runs import compare_section, config_differences
from bench.render import Section, Table, render_html, render_md
from bench.report_input import load_run
from bench.schema import conform, headline_metric

SOLVERS = {"ddim": ("ode", 1), "heun": ("ode", 2), "euler_maruyama": ("sde", 1)}
NFES = [6, 12, 24]
MODELS = {"digits": "fid", "moons": "swd"}


def cells(samples=1000, quality_factor=None, error_factor=None, rel_width=0.02, intervals=True) -> pd.DataFrame:
    """Rows of a small run: quality = floor + C/NFE, error = NFE^-order, each with a +-rel_width 95% interval.
    quality_factor / error_factor: solver -> multiplier (a change between runs)."""
    rows = []
    for model, metric in MODELS.items():
        for solver, (kind, order) in SOLVERS.items():
            for nfe, seed in itertools.product(NFES, (0, 1)):
                q = (2.0 + 10.0 / nfe) * (quality_factor or {}).get(solver, 1.0) * (1 + 0.002 * seed)
                r = dict(run_id="r", model=model, schedule="vp", prediction="eps", solver=solver, kind=kind,
                         order=float(order), nfe=nfe, nfe_used=nfe, steps=nfe, seed=seed, timesteps="logsnr",
                         options="{}", samples=samples, device="cpu", status="ok", message="", wall_s=0.01 * nfe)
                r[metric] = q
                if kind == "ode":
                    r["error_rmse"] = nfe ** -order * (error_factor or {}).get(solver, 1.0)
                if intervals:
                    for m in (metric, "error_rmse"):
                        if m in r:
                            r[f"{m}_lo"], r[f"{m}_hi"] = r[m] * (1 - rel_width), r[m] * (1 + rel_width)
                rows.append(r)
    frame = pd.DataFrame(rows)
    return conform(frame) if intervals else frame  # an old run's table: no interval columns at all


def write_run(path, rows: pd.DataFrame, samples=1000, torch="2.5.0", manifest=True):
    path.mkdir(parents=True)
    rows.to_parquet(path / "results.parquet")
    if manifest:
        (path / "manifest.json").write_text(json.dumps({
            "run_id": path.name, "config": {"models": list(MODELS), "nfe": NFES, "seeds": [0, 1], "samples": samples},
            "versions": {"torch": torch, "numpy": "2.0"}, "device": "cpu (synthetic)"}))
    return load_run(path)


def compare_md(runs, tol=0.05) -> tuple[str, str]:
    rows = pd.concat([r.rows.assign(run=r.label) for r in runs], ignore_index=True)
    rows["group"] = rows["model"]
    metrics = {g: headline_metric(rows[rows["group"] == g]) for g in MODELS}
    sec = compare_section(rows, metrics, runs, tol)
    return render_md("t", "m", [sec]), render_html("t", "m", [sec])


def verdict_rows(md: str, verdict: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith("| ") and ln.rstrip().endswith(f"| {verdict} |")]


def test_sample_count_is_named_and_not_a_regression(tmp_path):
    a = write_run(tmp_path / "a", cells(1000), 1000)
    # fewer samples: FID and SWD biased up by 6.7%, with intervals apart; the RMSE is unchanged
    b = write_run(tmp_path / "b", cells(500, quality_factor={s: 1.067 for s in SOLVERS}, rel_width=0.028), 500)
    md, html = compare_md([a, b])
    assert "config.samples (1000 vs 500)" in md and "versions.torch" not in md
    assert "Worse: none." in md and "**regression**" not in md and "class=bad" not in html
    assert "digits: FID not comparable: samples differ (1000 vs 500)" in md
    assert "moons: sliced Wasserstein not comparable: samples differ (1000 vs 500)" in md
    assert md.count("| not comparable: samples differ (1000 vs 500) |") == 0  # no cell changed beyond 5%
    assert "euler_maruyama" in next(ln for ln in md.splitlines() if ln.startswith("Not comparable"))
    # the same change with equal sample counts is a regression of every cell: the rule above is what kept it out
    b2 = write_run(tmp_path / "b2", cells(1000, quality_factor={s: 1.067 for s in SOLVERS}, rel_width=0.028), 1000)
    md2, _ = compare_md([a, b2])
    assert "Same configuration, versions and device." in md2
    assert len(verdict_rows(md2, "**regression**")) == len(MODELS) * len(SOLVERS) * len(NFES)


def test_rmse_still_compared_when_samples_differ(tmp_path):
    a = write_run(tmp_path / "a", cells(1000), 1000)
    b = write_run(tmp_path / "b", cells(500, quality_factor={"ddim": 1.3}, error_factor={"heun": 1.5}), 500)
    md, _ = compare_md([a, b])
    assert "Worse: heun." in md
    bad = verdict_rows(md, "**regression**")
    assert len(bad) == len(MODELS) * len(NFES) and all("| heun |" in ln for ln in bad)
    assert all("| not comparable: samples differ (1000 vs 500) | " in ln and "**+50.0%**" in ln for ln in bad)
    assert "median change of the RMSE against the reference +50.0%" in md


def test_regression_needs_intervals_apart(tmp_path):
    a = write_run(tmp_path / "a", cells(1000), 1000)
    b = write_run(tmp_path / "b", cells(1000, quality_factor={"heun": 1.3, "ddim": 0.75}), 1000, torch="2.6.0")
    md, html = compare_md([a, b])
    assert "versions.torch (2.5.0 vs 2.6.0)" in md and "config.samples" not in md
    assert "Worse: heun." in md and "Better: ddim." in md
    assert "do not overlap" in md  # the section states the rule
    bad = verdict_rows(md, "**regression**")
    assert len(bad) == len(MODELS) * len(NFES) and all("| heun |" in ln and "**+30.0%**" in ln for ln in bad)
    assert len(verdict_rows(md, "improved")) == len(MODELS) * len(NFES)
    assert "<td class=bad>+30.0%</td>" in html and "<td class=good>-25.0%</td>" in html
    # the same +8% change is a regression with tight intervals and only noise with wide ones
    tight = write_run(tmp_path / "tight", cells(1000, quality_factor={"heun": 1.08}, rel_width=0.02), 1000)
    wide_a = write_run(tmp_path / "wide_a", cells(1000, rel_width=0.10), 1000)
    wide_b = write_run(tmp_path / "wide_b", cells(1000, quality_factor={"heun": 1.08}, rel_width=0.10), 1000)
    assert "Worse: heun." in compare_md([a, tight])[0]
    md_wide, html_wide = compare_md([wide_a, wide_b])
    assert "Worse: none." in md_wide and "class=bad" not in html_wide
    assert len(verdict_rows(md_wide, "within the intervals")) == len(MODELS) * len(NFES)
    assert "heun: unchanged (median change of the headline metric +8.0%" in md_wide
    assert "the intervals overlap" in md_wide


def test_old_runs_without_intervals_use_the_tolerance(tmp_path):
    a = write_run(tmp_path / "a", cells(1000, intervals=False), 1000)
    b = write_run(tmp_path / "b", cells(1000, quality_factor={"heun": 1.08}, intervals=False), 1000, manifest=False)
    md, _ = compare_md([a, b])
    assert "No 95% intervals in a, b: regressions are judged by the ±5% tolerance alone." in md
    assert "Configuration differences unknown: no manifest.json for b." in md
    assert "Worse: heun." in md


def test_config_differences():
    a = {"config": {"samples": 1000, "nfe": [6, 12]}, "versions": {"torch": "2.5"}, "device": "cpu"}
    b = {"config": {"samples": 1000, "nfe": [6, 12, 24], "repeats": 3}, "versions": {"torch": "2.5"},
         "device": {"name": "H100"}}
    assert config_differences(a, b) == [("config.nfe", "[6, 12]", "[6, 12, 24]"), ("config.repeats", "—", "3"),
                                        ("device", "cpu", "—"), ("device.name", "—", "H100")]
    assert config_differences(a, dict(a)) == [] and config_differences(None, None) == []


def test_markdown_escapes_text_from_the_data():
    evil = "ModelOutputError: <script>alert(1)</script> a|b & c"
    sec = Section("Failed <b>", [evil, ("p", evil, "bad"), ("h3", evil),
                                 Table(["solver", "message"], [["my|solver", (evil, "bad")]], "solver")])
    md = render_md("title <i>", "meta", [sec])
    assert "<script>" not in md and "<b>" not in md and "<i>" not in md
    assert md.count("&lt;script&gt;alert(1)&lt;/script&gt; a\\|b &amp; c") == 4
    row = next(ln for ln in md.splitlines() if ln.startswith("| my"))
    # a table row of two cells has exactly three unescaped pipes
    assert len([i for i, ch in enumerate(row) if ch == "|" and row[i - 1] != "\\"]) == 3
    html = render_html("t", "m", [sec])
    assert "<script>" not in html and "&lt;script&gt;" in html


# ---- colours ------------------------------------------------------------------------------------------------------

def _lab(hex_colour: str) -> np.ndarray:
    """CIELAB (D65) of an sRGB hex colour."""
    rgb = np.array([int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ lin / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e2000(lab1, lab2) -> float:
    """CIEDE2000 colour difference (Sharma, Wu, Dalal 2005) of two CIELAB colours."""
    (L1, a1, b1), (L2, a2, b2) = lab1, lab2
    cbar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(cbar ** 7 / (cbar ** 7 + 25 ** 7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1p * c2p == 0 else (h2 - h1 + 180) % 360 - 180
    dH = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))
    lbar, cbp = (L1 + L2) / 2, (c1p + c2p) / 2
    hbar = h1 + h2 if c1p * c2p == 0 else (h1 + h2) / 2 + (180 if abs(h1 - h2) > 180 else 0)
    t = (1 - 0.17 * np.cos(np.radians(hbar - 30)) + 0.24 * np.cos(np.radians(2 * hbar))
         + 0.32 * np.cos(np.radians(3 * hbar + 6)) - 0.20 * np.cos(np.radians(4 * hbar - 63)))
    sl = 1 + 0.015 * (lbar - 50) ** 2 / np.sqrt(20 + (lbar - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    rt = -np.sin(np.radians(60 * np.exp(-(((hbar % 360) - 275) / 25) ** 2))) * 2 * np.sqrt(cbp ** 7 / (cbp ** 7 + 25 ** 7))
    dl, dc, dhh = (L2 - L1) / sl, (c2p - c1p) / sc, dH / sh
    return float(np.sqrt(dl ** 2 + dc ** 2 + dhh ** 2 + rt * dc * dhh))


def distance(c1: str, c2: str) -> float:
    return delta_e2000(_lab(c1), _lab(c2))


@pytest.mark.parametrize("lab1, lab2, expected", [  # Sharma, Wu, Dalal's test data: pairs 1, 7, 17, 25
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425), ((50, 0, 0), (50, -1, 2), 2.3669),
    ((50, 2.5, 0), (73, 25, -18), 27.1492), ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644)])
def test_delta_e2000_reference_values(lab1, lab2, expected):
    assert delta_e2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)
    assert _lab("#ffffff") == pytest.approx([100, 0, 0], abs=1e-3) and distance("#000000", "#ffffff") == pytest.approx(100)


ACROSS = 15.0  # CIEDE2000 between solvers of different families: clearly different at a glance
WITHIN = 10.0  # within a family: a visible lightness step, besides a different marker


def test_every_pair_of_known_solvers_is_distinguishable():
    names = [s for members in colours.FAMILIES.values() for s in members]
    assert len(names) == len(set(names)) >= 24
    family = {s: f for f, members in colours.FAMILIES.items() for s in members}
    for s, t in itertools.combinations(names, 2):
        a, b = colours.solver_style(s), colours.solver_style(t)
        d = distance(a.colour, b.colour)
        if family[s] == family[t]:
            assert a.marker != b.marker and d >= WITHIN, (s, t, d)
        else:
            assert d >= ACROSS, (s, t, a.colour, b.colour, d)
    for s in names:  # the palette of unknown names is disjoint from every family's colours
        for c in colours.UNKNOWN_COLOURS:
            assert distance(colours.solver_colour(s), c) >= ACROSS, (s, c)


def test_other_libraries_and_unknown_names():
    ddim, theirs = colours.solver_style("ddim"), colours.solver_style("diffusers.ddim")
    assert theirs.colour == ddim.colour and theirs.marker == ddim.marker
    assert theirs.hollow and not ddim.hollow and theirs.linestyle != ddim.linestyle
    new = colours.solver_style("my_new_solver")
    assert new == colours.solver_style("my_new_solver") and new.colour in colours.UNKNOWN_COLOURS
    assert colours.solver_colour("my_new_solver") == new.colour
    assert colours.solver_style("diffusers.my_new_solver").colour == new.colour
    assert len({colours.solver_colour(f"s{i}") for i in range(60)}) == len(colours.UNKNOWN_COLOURS)
    with pytest.raises(ValueError, match="solver name"):
        colours.solver_style("")


def test_legend_png(tmp_path):
    path = colours.legend_png(tmp_path / "legend.png")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 200).mean() > 0.01
