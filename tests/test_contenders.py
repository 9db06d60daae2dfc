"""diffusers' schedulers as contenders (`--plugins diffusers`): same answers as ours on the same grid, exact NFE,
refused budgets and schedules, reproducible noise, and runs and reports like our own solvers."""
import importlib.util

import pandas as pd
import pytest
import torch

from bench import plugins, report, sections
from bench.__main__ import main
from bench.counterparts import COUNTERPARTS
from reference_models import load
from solvers import get_solver, list_solvers, per_sample_generators, registry, sample

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers")  # numpy 2 on torch, inside diffusers
F64 = torch.float64


@pytest.fixture
def contenders():
    plugins.load("diffusers")
    return [n for n in list_solvers() if n.startswith("diffusers.")]


@pytest.fixture(scope="module")
def gmm():
    """The exact 2-D mixture on score_sde's VP, and float64 prior samples."""
    return load("gmm2d", "vp").model, torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_every_contender_has_one_counterpart_entry(contenders):
    assert sorted(contenders) == sorted(COUNTERPARTS)
    assert len(contenders) >= 11
    for name in contenders:
        spec = get_solver(name)
        assert spec.schedules == ("vp",) and spec.default_grid == "uniform", name
        assert f"ours: {COUNTERPARTS[name]}" in spec.description, name


@pytest.mark.parametrize("theirs, ours, nfe", [("diffusers.ddim", "ddim", 20), ("diffusers.ddim", "ddim", 8),
                                               ("diffusers.euler", "ddim", 13), ("diffusers.heun", "heun", 12)])
def test_same_algorithm_same_grid_same_samples(contenders, gmm, theirs, ours, nfe):
    """On the grid diffusers visited, ours agrees to 1e-4 (float32 coefficients in diffusers: ~2e-6 here)."""
    model, x_T = gmm
    x, info = sample(model, x_T, theirs, nfe=nfe, return_info=True)
    assert info.grid.dtype == F64 and float(info.grid[0]) == 1.0 and float(info.grid[-1]) == 1e-3
    assert info.steps == (nfe // 2 if theirs == "diffusers.heun" else nfe) == len(info.grid) - 1
    assert torch.all(info.grid[1:] < info.grid[:-1])
    y = sample(model, x_T, ours, nfe=nfe, timesteps=info.grid)
    assert (x - y).abs().max() < 1e-4
    assert (x - sample(model, x_T, ours, nfe=nfe)).abs().max() > 1e-3  # on its own grid, ours differs: not vacuous


def test_the_wrapped_chain_is_dpm_solvers_discrete_time(contenders, gmm):
    """Timestep n is t = (n + 1) / N on the default interval: DDIM at 4 steps visits 999, 749, 499, 249, then 0."""
    model, x_T = gmm
    _, info = sample(model, x_T[:2], "diffusers.ddim", nfe=4, return_info=True)
    assert torch.allclose(info.grid, torch.tensor([1.0, 0.75, 0.5, 0.25, 1e-3], dtype=F64), rtol=0, atol=1e-15)
    _, info = sample(model, x_T[:2], "diffusers.ddim", nfe=4, t_end=1e-2, return_info=True)
    assert float(info.grid[-1]) == 1e-2


def test_every_contender_spends_exactly_its_budget(contenders, gmm):
    model, x_T = gmm
    for name in contenders:
        spec = get_solver(name)
        budgets = spec.budgets([1, 2, 3, 4, 7, 12, 31])
        assert len(budgets) >= 3, name
        for nfe in budgets:
            gens = per_sample_generators(range(len(x_T))) if spec.kind == "sde" else None
            before = model.nfe
            x, info = sample(model, x_T, name, nfe=nfe, generator=gens, return_info=True)
            assert model.nfe - before == nfe == info.nfe, (name, nfe)
            assert torch.isfinite(x).all() and x.dtype == F64, (name, nfe)
            assert float(info.grid[0]) == 1.0 and float(info.grid[-1]) == 1e-3, (name, nfe)


@pytest.mark.parametrize("name, nfe, message", [
    ("diffusers.heun", 7, r"needs an even budget \(2 NFE per step\), got 7; valid budgets: even, 2 to 1998"),
    ("diffusers.heun", 2000, r"takes at most 999 steps, got 2000; valid budgets: even, 2 to 1998"),
    ("diffusers.dpmpp_2m", 1000, (r"takes at most 999 steps, got 1000; valid budgets: 1 to 999 \(steps of the "
                                  r"1000-timestep chain\)$")),
    ("diffusers.euler", 0, r"nfe must be a positive integer"),
    ("diffusers.ddim", 61, (r"cannot spend 61 \(62 timesteps from diffusers\); valid budgets: 1 to 999 .* except "
                            r"61, 103, 121, 122, \.\.\. \(62 budgets at which diffusers' trailing spacing makes one "
                            r"timestep too many, at -1\)")),
])
def test_budgets_it_cannot_spend_are_refused_naming_the_valid_ones(contenders, gmm, name, nfe, message):
    model, x_T = gmm
    with pytest.raises(ValueError, match=message):
        sample(model, x_T, name, nfe=nfe)


def test_ve_and_foreign_grids_are_refused(contenders, gmm):
    ve = load("gmm2d", "ve").model
    _, x_T = gmm
    for name in contenders:
        with pytest.raises(ValueError, match=rf"solver '{name}' runs on vp schedules, not 've'"):
            sample(ve, x_T, name, nfe=4)
    with pytest.raises(ValueError, match=r"steps on diffusers' own timesteps .* timesteps='uniform'"):
        sample(gmm[0], x_T, "diffusers.dpmpp_2m", nfe=8, timesteps="logsnr")


def test_ancestral_noise_comes_from_the_generators(contenders, gmm):
    """Same seeds, same samples; a sample does not depend on its batch; other seeds, other samples."""
    model, x_T = gmm

    def draw(idx, x):
        return sample(model, x, "diffusers.euler_ancestral", nfe=6, generator=per_sample_generators(idx))

    a = draw(range(32), x_T)
    assert torch.equal(a, draw(range(32), x_T))
    assert torch.equal(a, torch.cat([draw(range(5), x_T[:5]), draw(range(5, 32), x_T[5:])]))
    assert not torch.allclose(a, draw(range(100, 132), x_T))
    with pytest.raises(ValueError, match="got 3 per-sample generators for a batch of 32"):
        sample(model, x_T, "diffusers.euler_ancestral", nfe=6, generator=per_sample_generators(range(3)))


def test_missing_diffusers_is_a_one_line_plugin_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    with pytest.raises(plugins.PluginError, match=r"plugin 'diffusers' failed to load: ImportError: the diffusers "
                                                  r"contenders need the diffusers package: pip install diffusers"):
        plugins.load("diffusers")


def test_run_and_report_them_beside_ours(tmp_path, monkeypatch):
    """`bench run --plugins diffusers` rows; the report compares implementations without the plugin loaded."""
    names = "ddim,diffusers.ddim,diffusers.euler,heun,diffusers.heun,diffusers.euler_ancestral,diffusers.unipc"
    out = tmp_path / "run"
    assert main(["run", "--plugins", "diffusers", "--models", "gmm2d", "--solvers", names, "--nfe", "4,8",
                 "--samples", "64", "--repeats", "1", "--out", str(out), "--quiet"]) == 0
    rows = pd.read_parquet(out / "results.parquet")
    assert set(rows["solver"]) == set(names.split(","))
    assert (rows["status"] == "ok").all(), rows[rows["status"] != "ok"][["solver", "message"]]
    assert (rows["nfe_used"] == rows["nfe"]).all()
    assert rows.loc[rows["solver"] == "diffusers.euler_ancestral", "kind"].eq("sde").all()
    assert rows.loc[rows["solver"] == "diffusers.heun", "steps"].tolist() == [2, 4]

    for name in [n for n in registry._REGISTRY if n.startswith("diffusers.")]:  # the report needs only the rows
        monkeypatch.delitem(registry._REGISTRY, name)
    md = report.make_report(out, tmp_path / "report", formats="md").read_text()
    section = md.split("## Implementations compared")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    pairs = {tuple(c.strip() for c in line.split("|")[1:4]) for line in table[1:]}
    assert pairs == {(ours, theirs, nfe) for ours, theirs in (("ddim", "diffusers.ddim"), ("ddim", "diffusers.euler"),
                                                              ("heun", "diffusers.heun")) for nfe in ("4", "8")}
    assert ("Not compared, ours not in the run: diffusers.unipc (ours: unipc); diffusers.euler_ancestral (ours: "
            "euler_ancestral).") in section


def test_no_contender_rows_no_section():
    rows = pd.DataFrame({"solver": ["ddim", "heun"], "run": ["a", "a"], "group": ["gmm2d", "gmm2d"]})
    assert sections.implementations_section(rows, {"gmm2d": "nll_gap"}, pairing=None) is None
