"""The public solver API (`@solvers.solver`) and plugins: registration rules, options, loading and its errors."""
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import solvers
from bench import plugins
from bench.__main__ import main
from reference_models import load
from solvers import get_solver, list_solvers, sample, solver

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).parent.parent
F64 = torch.float64


@pytest.fixture
def gmm():
    return load("gmm2d", "vp").model, torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


# --- the decorator ----------------------------------------------------------------------------------------------


def test_options_are_the_keyword_only_parameters(gmm):
    @solver("t_opts", order=1, nfe_per_step=1)
    def fn(model, x, grid, *, scale: float = 1.0, steps_back: int = 0, flag: bool = False, mode: str = "a"):
        for s, t in zip(grid[:-1].tolist(), grid[1:].tolist()):
            x = x + (t - s) * model.ode_drift(x, s) * scale
        return x

    spec = get_solver("t_opts")
    assert spec.options == {"scale": 1.0, "steps_back": 0, "flag": False, "mode": "a"}
    assert "t_opts" in list_solvers("ode") and not spec.takes_generator and spec.description == ""
    model, x = gmm
    assert torch.equal(sample(model, x, "t_opts", nfe=5, scale=1), sample(model, x, "euler", nfe=5))
    with pytest.raises(ValueError, match=r"unknown option\(s\) scal for solver 't_opts'; valid options: flag, mode, "
                                         r"scale, steps_back"):
        sample(model, x, "t_opts", nfe=5, scal=2.0)
    for bad, message in ((dict(scale="2"), "option scale must be a number"),
                         (dict(steps_back=1.5), "option steps_back must be an integer"),
                         (dict(flag=1), "option flag must be True or False"),
                         (dict(mode=3), "option mode must be a string")):
        with pytest.raises(ValueError, match=message):
            sample(model, x, "t_opts", nfe=5, **bad)


def test_steps_for_nfe_passes_the_budget_and_the_docstring_describes(gmm):
    seen = []

    def steps(nfe, options):
        if nfe < 2:
            raise ValueError(f"needs at least 2 evaluations, got {nfe}")
        return nfe - 1  # the last step costs two

    @solver("t_mixed", order=1, steps_for_nfe=steps, valid_nfe="integers >= 2")
    def fn(model, x, grid, *, nfe):
        """A test solver whose last step is evaluated twice."""
        seen.append(nfe)
        times = grid.tolist()
        for s, t in zip(times[:-1], times[1:]):
            x = x + (t - s) * model.ode_drift(x, s)
        model.eps(x, times[-1])
        return x

    model, x = gmm
    model.reset()
    sample(model, x, "t_mixed", nfe=7)
    assert seen == [7] and model.nfe == 7
    assert get_solver("t_mixed").description == "A test solver whose last step is evaluated twice."
    with pytest.raises(ValueError, match=r"solver 't_mixed' needs at least 2 evaluations, got 1; valid budgets: "
                                         r"integers >= 2"):
        sample(model, x, "t_mixed", nfe=1)


def test_sde_declares_weak_and_strong_orders():
    @solver("t_sde", kind="sde", weak_order=1, strong_order=0.5, nfe_per_step=1, default_grid="uniform")
    def fn(model, x, grid, *, generator=None):
        return x

    spec = get_solver("t_sde")
    assert (spec.order, spec.weak_order, spec.strong_order, spec.stochastic()) == (1, 1, 0.5, True)
    assert get_solver("heun").weak_order is None


@pytest.mark.parametrize("kwargs, fn_src, message", [
    (dict(order=1), "def f(model, x, grid): return x", r"exactly one NFE rule.*got none"),
    (dict(order=1, nfe_per_step=1, adaptive=True), "def f(model, x, grid): return x",
     r"exactly one NFE rule.*got nfe_per_step, adaptive=True"),
    (dict(nfe_per_step=1), "def f(model, x, grid): return x", r"needs a declared order"),
    (dict(order=0, nfe_per_step=1), "def f(model, x, grid): return x", r"order must be a number > 0"),
    (dict(order=1, nfe_per_step=0), "def f(model, x, grid): return x", r"nfe_per_step must be an integer >= 1"),
    (dict(order=1, nfe_per_step=1, kind="pde"), "def f(model, x, grid): return x", r"kind must be one of ode, sde"),
    (dict(order=1, nfe_per_step=1, strong_order=1), "def f(model, x, grid): return x", r"are for kind='sde'"),
    (dict(order=1, nfe_per_step=1, default_grid="cosine"), "def f(model, x, grid): return x",
     r"unknown default_grid 'cosine'; valid: uniform, logsnr, quadratic, karras"),
    (dict(order=1, nfe_per_step=1), "def f(model, x): return x", r"must take exactly \(model, x, grid\)"),
    (dict(order=1, nfe_per_step=1), "def f(model, x, grid, **kw): return x", r"takes \*\*kwargs"),
    (dict(order=1, nfe_per_step=1), "def f(model, x, grid, *, eta): return x", r"option\(s\) eta .* need a default"),
    (dict(order=1, nfe_per_step=1), "def f(model, x, grid, *, nfe): return x", r"takes `nfe`"),
    (dict(order=1, steps_for_nfe=lambda n, o: n), "def f(model, x, grid): return x", r"must take a keyword-only `nfe`"),
    (dict(order=1, nfe_per_step=1, kind="sde"), "def f(model, x, grid): return x", r"must take a keyword-only `generator`"),
    (dict(order=1, nfe_per_step=1, schedules=()), "def f(model, x, grid): return x", r"schedules must be"),
])
def test_bad_declarations_are_one_line_errors(kwargs, fn_src, message):
    namespace = {}
    exec(fn_src, namespace)
    with pytest.raises(ValueError, match=message):
        solver("t_bad", **kwargs)(namespace["f"])
    assert "t_bad" not in list_solvers()


def test_names_are_unique_and_valid():
    with pytest.raises(ValueError, match=r"solver 'ddim' is already registered \(by solvers\.dpm\.ddim\)"):
        solver("ddim", order=1, nfe_per_step=1)(lambda model, x, grid: x)
    for bad in ("", " x", "a,b", 3):
        with pytest.raises(ValueError, match="solver name must be"):
            solver(bad, order=1, nfe_per_step=1)


def test_schedules_restrict_where_a_solver_runs(gmm):
    @solver("t_vp_only", order=1, nfe_per_step=1, schedules="vp")
    def fn(model, x, grid):
        return x

    spec = get_solver("t_vp_only")
    assert spec.supports("vp") and not spec.supports("ve") and spec.supports(gmm[0].schedule)
    ve = load("gmm2d", "ve").model
    with pytest.raises(ValueError, match="solver 't_vp_only' runs on vp schedules, not 've'"):
        sample(ve, gmm[1], "t_vp_only", nfe=3)


def test_builtin_solvers_are_registered_through_the_decorator():
    """One way to register: every built-in entry is a function whose options are its keyword-only defaults."""
    import inspect

    for name in list_solvers():
        spec = get_solver(name)
        params = inspect.signature(spec.fn).parameters
        assert list(params)[:3] == ["model", "x", "grid"], name
        assert {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY
                and k not in ("generator", "nfe")} == spec.options, name
        assert spec.stochastic() == (spec.kind == "sde") and (spec.kind == "sde") <= spec.takes_generator
    assert solvers.solver is solver


# --- plugins ----------------------------------------------------------------------------------------------------


def test_plugin_file_registers_once():
    path = str(PLUGINS / "good_solver.py")
    module = plugins.load(path)
    assert "my_dpmpp_2m" in list_solvers() and plugins.load(path) == module  # a second load is a no-op
    assert str((PLUGINS / "good_solver.py").resolve()) in plugins.loaded()


def test_example_plugin_is_dpmpp_2m_and_second_order(gmm):
    """The README's example solver converges with order 2 (error ratio ~4 per doubling) to the PF-ODE solution."""
    plugins.load(str(PLUGINS / "good_solver.py"))
    model, _ = gmm
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = solvers.reference_solution(model, x_T)
    err = [float((sample(model, x_T, "my_dpmpp_2m", nfe=n) - ref).norm(dim=1).mean()) for n in (50, 100, 200)]
    assert 3.3 < err[0] / err[1] < 4.8 and 3.3 < err[1] / err[2] < 4.8, err


@pytest.mark.parametrize("plugin, message", [
    ("no_such_plugin_module", r"plugin 'no_such_plugin_module': no module named 'no_such_plugin_module'"),
    ("tests/plugins/missing.py", r"plugin 'tests/plugins/missing.py': no such file"),
    ("BROKEN", r"plugin '.*broken_plugin.py' failed to load: ZeroDivisionError: division by zero"),
    ("DUPLICATE", r"failed to load: ValueError: solver 'ddim' is already registered"),
])
def test_a_plugin_that_fails_to_load_is_a_one_line_error(tmp_path, capsys, plugin, message):
    if plugin == "BROKEN":
        plugin = str(tmp_path / "broken_plugin.py")
        Path(plugin).write_text("import solvers\nx = 1 / 0\n")
    if plugin == "DUPLICATE":
        plugin = str(tmp_path / "dup.py")
        Path(plugin).write_text("from solvers import solver\n\n@solver('ddim', order=1, nfe_per_step=1)\n"
                                "def f(model, x, grid):\n    return x\n")
    with pytest.raises(plugins.PluginError, match=message):
        plugins.load(plugin)
    for command in ("run", "check", "baseline"):
        assert main([command, "--plugins", plugin, "--solvers", "ddim"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "Traceback" not in err, err
        assert err.startswith(f"python -m bench {command}: error: plugin ") and re.search(message, err), err


def test_a_plugin_solver_is_a_valid_solver_name_for_run(tmp_path, capsys):
    """--solvers is validated after the plugins loaded, whichever comes first on the command line."""
    out = tmp_path / "run"
    args = ["run", "--solvers", "my_dpmpp_2m,ddim", "--plugins", str(PLUGINS / "good_solver.py"),
            "--models", "gmm2d", "--nfe", "8", "--samples", "40", "--repeats", "1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    import pandas as pd

    rows = pd.read_parquet(out / "results.parquet")
    assert set(rows["solver"]) == {"my_dpmpp_2m", "ddim"} and (rows["status"] == "ok").all()
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plugins"] == [str((PLUGINS / "good_solver.py").resolve())]


def test_without_its_plugin_a_plugin_solver_is_unknown(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's exit
        main(["run", "--solvers", "my_dpmpp_2m", "--models", "gmm2d", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "unknown solver 'my_dpmpp_2m'" in capsys.readouterr().err  # without the plugin: not a solver


def _installed_plugin(tmp_path: Path, value: str, body: str) -> dict:
    """A package on PYTHONPATH whose dist-info declares `value` in the entry-point group samplerbench.plugins."""
    (tmp_path / "sbplug_pkg.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "sbplug_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: sbplug-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\nmine = {value}\n")
    return {**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"}


GOOD_ENTRY = """
    from solvers import solver

    def register():
        @solver("entry_euler", order=1, nfe_per_step=1)
        def entry_euler(model, x, grid):
            times = grid.tolist()
            for s, t in zip(times[:-1], times[1:]):
                x = x + (t - s) * model.ode_drift(x, s)
            return x
"""


def test_entry_points_load_automatically(tmp_path):
    env = _installed_plugin(tmp_path, "sbplug_pkg:register", GOOD_ENTRY)
    code = ("from bench import plugins; import solvers; print(plugins.load_all([])); "
            "print('entry_euler' in solvers.list_solvers())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["['mine']", "True"]


def test_a_broken_entry_point_names_its_package(tmp_path):
    env = _installed_plugin(tmp_path, "sbplug_pkg", "raise ImportError('needs libfoo')\n")
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--solvers", "ddim"], env=env, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == ("python -m bench run: error: plugin entry point 'mine' of package 'sbplug-pkg' "
                                  "(sbplug_pkg) failed to load: ImportError: needs libfoo")


def test_readme_example_is_the_example_plugin():
    """The README's 'Adding a solver' code block is tests/plugins/good_solver.py, so the tests above hold it."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Adding a solver", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    plugin = (PLUGINS / "good_solver.py").read_text()
    assert block == plugin[plugin.index("import math"):]
    assert len(block.strip().splitlines()) <= 20


def test_run_skips_schedules_a_solver_does_not_support(tmp_path):
    plugin = tmp_path / "vp_only.py"
    plugin.write_text(textwrap.dedent("""
        from solvers import solver
        from solvers.dpm import first_update

        @solver("vp_only_ddim", order=1, nfe_per_step=1, schedules=("vp",))
        def vp_only_ddim(model, x, grid):
            times = grid.tolist()
            for s, t in zip(times[:-1], times[1:]):
                x = first_update(model, x, s, t)
            return x
    """))
    out = tmp_path / "run"
    assert main(["run", "--plugins", str(plugin), "--solvers", "vp_only_ddim", "--models", "gmm2d", "--schedules",
                 "vp,ve", "--nfe", "8", "--samples", "30", "--repeats", "1", "--out", str(out), "--quiet"]) == 0
    import pandas as pd

    rows = pd.read_parquet(out / "results.parquet").set_index("schedule")
    assert rows.loc["vp", "status"] == "ok"
    assert rows.loc["ve", "status"] == "skipped" and rows.loc["ve", "message"] == "runs on vp schedules only"
