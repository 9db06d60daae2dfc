"""Flow matching: FlowSchedule (rectified flow), the "flow" (velocity) prediction, starts at t = 1 where alpha = 0,
the shifted grid, the exact mixture under flow, and trained flow models in the harness."""
import dataclasses
import math

import pytest
import torch
from test_schedules import SCHEDULES as DIFFUSION_SCHEDULES

from reference_models import GaussianMixture
from solvers import (
    FlowSchedule,
    Model,
    VPSchedule,
    get_solver,
    list_solvers,
    make_grid,
    reference_solution,
    sample,
    testing,
)

F64 = torch.float64
NFES = [40, 80, 160, 320, 640]
SCHEDULES = {**DIFFUSION_SCHEDULES, "flow": FlowSchedule()}
STARTS_AT_ONE = ["ddim", "euler", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m", "unipc"]  # fixed-budget solvers that start at t = 1


def mixture_2d() -> GaussianMixture:
    """The convergence problem of test_solvers: four unequal modes, variances 0.05-0.25."""
    ang = torch.arange(4, dtype=F64) * math.pi / 2
    means = 1.5 * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    return GaussianMixture(means, torch.tensor([0.05, 0.1, 0.15, 0.25]), weights=[0.1, 0.2, 0.3, 0.4])


# --- FlowSchedule -------------------------------------------------------------------------------


def test_flow_schedule_quantities():
    s = FlowSchedule()
    t = torch.linspace(1e-3, 0.999, 201, dtype=F64)
    assert torch.allclose(s.alpha(t), 1 - t, rtol=0, atol=1e-15) and torch.equal(s.sigma(t), t)
    assert torch.max(torch.abs(s.t_of_lambda(s.lambda_(t)) - t)) < 1e-12
    lam = s.lambda_(t)
    assert torch.all(lam[1:] < lam[:-1])
    h = 1e-6
    tt = t[5:-5]
    dlog_alpha = (s.log_alpha(tt + h) - s.log_alpha(tt - h)) / (2 * h)
    dvar = (s.sigma(tt + h) ** 2 - s.sigma(tt - h) ** 2) / (2 * h)
    assert torch.allclose(s.f(tt), dlog_alpha, rtol=1e-6, atol=1e-8)
    assert torch.allclose(s.g2(tt), dvar - 2 * s.f(tt) * s.sigma(tt) ** 2, rtol=1e-5, atol=1e-8)
    assert s.kind == "flow" and s.T == 1.0 and s.describe() == {"kind": "flow"} and "FlowSchedule" in repr(s)
    x = s.prior_sample((4000, 2), torch.Generator().manual_seed(0), dtype=F64)
    assert abs(float(x.std()) - 1.0) < 0.05


def test_flow_schedule_at_t_one_is_alpha_zero_without_nan():
    c = FlowSchedule().at(1.0)
    assert c.alpha == 0.0 and c.sigma == 1.0 and c.lam == -math.inf and c.log_alpha == -math.inf
    assert (c.d_alpha, c.d_sigma) == (-1.0, 1.0)
    assert not any(math.isnan(v) for v in (c.alpha, c.sigma, c.lam, c.f, c.g2, c.d_alpha, c.d_sigma))
    assert float(FlowSchedule().t_of_lambda(torch.tensor(-math.inf, dtype=F64))) == 1.0


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_alpha_sigma_derivatives_match_finite_differences(name):
    s = SCHEDULES[name]
    t = torch.linspace(0.05, s.T - 0.05, 41, dtype=F64)
    if name == "vp_discrete":  # piecewise linear log alpha: differentiate inside a segment
        t = (torch.arange(50, 950, 23, dtype=F64) + 1.5) / 1000
    h = 1e-6
    assert torch.allclose(s.d_alpha(t), (s.alpha(t + h) - s.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    assert torch.allclose(s.d_sigma(t), (s.sigma(t + h) - s.sigma(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)


# --- the "flow" prediction ----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_flow_prediction_round_trips_against_eps_and_x0(name):
    """A network that returns the true velocity alpha' x0 + sigma' eps gives back x0 and eps to 1e-10 (float64)."""
    sched = SCHEDULES[name]
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 3, generator=g, dtype=F64), torch.randn(8, 3, generator=g, dtype=F64)
    times = [sched.default_t_end, 0.3, 0.7, sched.T] + ([1.0] if name == "flow" else [])
    for t in times:
        c = sched.at(t)
        x = c.alpha * x0 + c.sigma * eps
        v = c.d_alpha * x0 + c.d_sigma * eps
        model = Model(lambda x_, t_, v=v: v, sched, prediction="flow")
        scale = 1.0 + float(x0.abs().max())
        assert torch.max(torch.abs(model.x0(x, t) - x0)) < 1e-10 * scale, t
        assert torch.max(torch.abs(model.eps(x, t) - eps)) < 1e-10 * scale, t
        assert torch.max(torch.abs(model.velocity(x, t) - v)) < 1e-10 * scale, t
        # and the other predictions' velocity agrees with the flow model's
        for pred, out in (("eps", eps), ("x0", x0), ("v", c.alpha * eps - c.sigma * x0)):
            if c.alpha == 0 and pred == "eps":
                continue
            other = Model(lambda x_, t_, out=out: out, sched, prediction=pred)
            assert torch.max(torch.abs(other.velocity(x, t) - v)) < 1e-10 * scale, (t, pred)


def test_rectified_flow_velocity_is_eps_minus_x0():
    sched = FlowSchedule()
    mix = mixture_2d()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    flow, eps, x0 = (mix.model(sched, p) for p in ("flow", "eps", "x0"))
    for t in (0.2, 0.6, 0.95):
        assert torch.allclose(flow.raw(x, t), eps.raw(x, t) - x0.raw(x, t), rtol=0, atol=1e-12)
        assert torch.allclose(flow.ode_drift(x, t), eps.ode_drift(x, t), rtol=0, atol=1e-10)


# --- starts at t = 1 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flow_problem():
    model = mixture_2d().model(FlowSchedule(), prediction="flow")
    x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference_solution(model, x_T, 1.0, 1e-3, rtol=1e-11, atol=1e-11)
    return model, x_T, ref


@pytest.mark.parametrize("name", list_solvers())
def test_every_solver_starts_at_one_or_refuses_before_evaluating(flow_problem, name):
    model, x_T, _ = flow_problem
    spec = get_solver(name)
    kw = {} if spec.adaptive else {"nfe": spec.budgets([6, 8, 12])[0]}
    model.reset()
    if spec.starts_at_alpha_zero:
        out = sample(model, x_T, name, generator=None, **kw)
        assert torch.isfinite(out).all() and model.nfe > 0
    else:
        with pytest.raises(ValueError, match=r"cannot start at t_start=1, where alpha = 0") as err:
            sample(model, x_T, name, **kw)
        assert "\n" not in str(err.value) and model.nfe == 0
    # an eps-prediction model gives no x0 at alpha = 0: every solver refuses it there, before evaluating
    eps_model = mixture_2d().model(FlowSchedule(), prediction="eps")
    with pytest.raises(ValueError, match=r"t_start=1") as err:
        sample(eps_model, x_T, name, **kw)
    assert "\n" not in str(err.value) and eps_model.nfe == 0
    # below t = 1 every solver runs on FlowSchedule, whatever the prediction
    out = sample(eps_model, x_T[:8], name, t_start=0.99, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.isfinite(out).all()


def test_which_solvers_start_at_alpha_zero():
    assert {n for n in list_solvers() if get_solver(n).starts_at_alpha_zero} >= {*STARTS_AT_ONE, "rk45"}
    assert not any(get_solver(n).starts_at_alpha_zero for n in ("heun", "dpm_solver_1", "dpm_solver_3m",
                                                                 "dpm_solver_adaptive", "euler_maruyama", "pc"))


def test_reference_solution_refuses_an_eps_model_at_alpha_zero():
    model = mixture_2d().model(FlowSchedule(), prediction="eps")
    with pytest.raises(ValueError, match="t_start=1"):
        reference_solution(model, torch.zeros(2, 2, dtype=F64))
    assert model.nfe == 0


@pytest.fixture(scope="module")
def flow_curves(flow_problem):
    model, x_T, ref = flow_problem
    return {name: testing.error_curve(name, model, x_T, NFES, reference=ref, t_start=1.0, t_end=1e-3,
                                      timesteps=get_solver(name).grid_for("flow")) for name in STARTS_AT_ONE}


@pytest.mark.parametrize("name", STARTS_AT_ONE)
def test_orders_from_t_one_on_flow(flow_problem, flow_curves, name):
    """Each solver's order from t = 1, on its default grid on FlowSchedule, lies in [p - 0.3, p + 0.5]."""
    outcome = testing.check_order(name, flow_problem[0], flow_problem[1], curve=flow_curves[name])
    assert outcome.status == "pass"


def test_dpmpp_3m_singlestep_start_keeps_order_three_from_t_one(flow_problem):
    model, x_T, ref = flow_problem
    outcome = testing.check_order("dpmpp_3m", model, x_T, NFES, reference=ref, t_start=1.0, t_end=1e-3,
                                  timesteps="logsnr", start="singlestep")
    assert outcome.status == "pass"


def test_unipc_order_three_from_t_one_needs_its_singlestep_start(flow_problem):
    """UniPC-3 with UniC (declared 4): from t = 1 the singlestep start measures 4.10. With the lower-order start,
    the DDIM first step, of fixed size about t_end on the grid from t = 1, leaves an error floor (5.2e-7 at NFE
    320 and 640, 8x the singlestep start's at 640): its order is not measurable there."""
    model, x_T, ref = flow_problem
    kw = {"reference": ref, "t_start": 1.0, "t_end": 1e-3, "timesteps": "logsnr", "order": 3}
    single = testing.error_curve("unipc", model, x_T, NFES, start="singlestep", **kw)
    assert testing.check_order("unipc", model, x_T, curve=single, start="singlestep", order=3).status == "pass"
    lower = testing.error_curve("unipc", model, x_T, NFES, **kw)
    assert lower.errors[-1] > 3 * single.errors[-1] and lower.errors[-1] > 0.5 * lower.errors[-2]


@pytest.mark.parametrize("name, options", [("ipndm", {}), ("ipndm", {"order": 4, "coefficients": "variable",
                                                                     "start": "singlestep"}),
                                           ("deis", {}), ("deis", {"variant": "logrho"})])
def test_orders_on_flow_below_t_one_of_solvers_that_cannot_start_there(name, options):
    """ipndm and deis work in sigma/alpha, infinite at t = 1: on FlowSchedule they start at t = 0.99, in band."""
    model = mixture_2d().model(FlowSchedule(), prediction="flow")
    x_T = 0.99 * torch.randn(128, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference_solution(model, x_T, 0.99, 1e-3, rtol=1e-11, atol=1e-11)
    outcome = testing.check_order(name, model, x_T, NFES, reference=ref, t_start=0.99, t_end=1e-3,
                                  timesteps="logsnr", **options)
    assert outcome.status == "pass", outcome.detail


def test_ddim_is_euler_on_rectified_flow(flow_problem):
    """DDIM in x0 form on alpha = 1 - t, sigma = t is the Euler step of the velocity, on any grid."""
    model, x_T, _ = flow_problem
    for grid in ("uniform", "logsnr", "shift"):
        a = sample(model, x_T, "ddim", nfe=13, timesteps=grid)
        b = sample(model, x_T, "euler", nfe=13, timesteps=grid)
        assert torch.max(torch.abs(a - b)) < 1e-12


def test_rk45_from_t_one_matches_dop853(flow_problem):
    model, x_T, ref = flow_problem
    x = sample(model, x_T, "rk45", rtol=1e-8, atol=1e-8)
    assert torch.max(torch.abs(x - ref)) < 1e-5


def test_default_grids_on_flow():
    """Uniform in t for the one-step-history solvers (ddim = euler there); logsnr for the multistep ones, which the
    uniform grid's long last steps in lambda destabilise (dpmpp_3m at NFE 10 on gmm2d: RMSE 2.8 vs 0.08)."""
    for name in ("euler", "ddim", "dpmpp_2s"):
        assert get_solver(name).grid_for("flow") == "uniform" and get_solver(name).grid_for("vp") == "logsnr"
    assert get_solver("dpmpp_2m").grid_for(FlowSchedule()) == get_solver("dpmpp_3m").grid_for("flow") == "logsnr"


# --- grids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logsnr", "karras", "uniform", "quadratic", "shift"])
def test_grids_from_t_one_are_finite_and_start_at_one(kind):
    s = FlowSchedule()
    for steps in (1, 2, 10, 100):
        g = make_grid(s, kind, steps, 1.0, 1e-3)
        assert g[0] == 1.0 and g[-1] == 1e-3 and len(g) == steps + 1
        assert torch.all(torch.isfinite(g)) and torch.all(g[1:] < g[:-1])


def test_logsnr_from_t_one_is_symmetric_in_lambda():
    s = FlowSchedule()
    g = make_grid(s, "logsnr", 20, 1.0, 1e-3)
    lam = s.lambda_(g[1:])
    step = (2 * float(s.lambda_(1e-3))) / 20
    assert torch.allclose(lam[1:] - lam[:-1], torch.full((19,), step, dtype=F64), rtol=1e-9, atol=0)
    assert math.isclose(float(lam[0]), -float(s.lambda_(1e-3)) + step, rel_tol=1e-9)


def test_shift_grid_values_monotone_and_exact_ends():
    s = FlowSchedule()
    steps = 8
    g = make_grid(s, "shift", steps, 1.0, 1e-3)
    assert g[0] == 1.0 and g[-1] == 1e-3 and torch.all(g[1:] < g[:-1])
    unshift = g / (3.0 - 2.0 * g)  # u = t / (s - (s - 1) t) for s = 3 is uniform
    assert torch.allclose(unshift[1:] - unshift[:-1], (unshift[-1] - unshift[0]).expand(steps) / steps, atol=1e-14)
    mid = 0.5 * (1.0 + 1e-3 / (3 - 2e-3))  # the middle of the unshifted range, shifted
    assert math.isclose(float(g[4]), 3 * mid / (1 + 2 * mid), rel_tol=1e-12)
    assert torch.all(g[1:-1] > make_grid(s, "uniform", steps, 1.0, 1e-3)[1:-1])  # s > 1: more steps at high noise
    assert torch.allclose(make_grid(s, "shift:1", steps, 1.0, 1e-3), make_grid(s, "uniform", steps, 1.0, 1e-3),
                          atol=1e-15)
    g2 = make_grid(VPSchedule.linear(), "shift:2.5", steps, 1.0, 1e-3)
    u = torch.linspace(1 / (2.5 - 1.5), 1e-3 / (2.5 - 1.5e-3), steps + 1, dtype=F64)
    assert torch.allclose(g2[1:-1], (2.5 * u / (1 + 1.5 * u))[1:-1], rtol=1e-14, atol=0)
    assert sample(mixture_2d().model(s, "flow"), torch.zeros(2, 2, dtype=F64), "euler", nfe=4, timesteps="shift:3",
                  return_info=True)[1].grid[1] > 0.75


@pytest.mark.parametrize("bad", ["shift:0", "shift:-1", "shift:x", "shift:inf", "shift:", "uniform:2", "shifty"])
def test_bad_shift_is_a_one_line_error_naming_the_grids(bad):
    with pytest.raises(ValueError, match=r"valid: uniform, logsnr, quadratic, karras, shift") as err:
        make_grid(FlowSchedule(), bad, 4, 1.0, 1e-3)
    assert "\n" not in str(err.value)


# --- the exact mixture under flow --------------------------------------------------------------


def test_mixture_score_under_flow_is_the_gradient_of_its_log_density():
    mix, s = mixture_2d(), FlowSchedule()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for t in (1e-3, 0.3, 0.8, 1.0):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(xr, s, t).sum(), xr)
        assert torch.allclose(mix.score(x, s, t), grad, rtol=1e-10, atol=1e-12), t
        model = mix.model(s, "score")
        assert torch.allclose(model.raw(x, t), grad, rtol=1e-10, atol=1e-12)


def test_mixture_at_t_one_predicts_the_mean():
    mix = mixture_2d()
    mean = (mix.log_weights.exp()[:, None] * mix.means).sum(0)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    for pred in ("x0", "v", "flow"):
        model = mix.model(FlowSchedule(), pred)
        assert torch.allclose(model.x0(x, 1.0), mean.expand(32, 2), rtol=0, atol=1e-12), pred
    assert torch.allclose(mix.model(FlowSchedule(), "flow").raw(x, 1.0), x - mean, rtol=0, atol=1e-12)
    assert torch.allclose(mix.score(x, FlowSchedule(), 1.0), -x, rtol=0, atol=1e-12)


# --- trained flow models and the harness -------------------------------------------------------


@pytest.mark.parametrize("schedule", ["flow", "vp", "ve"])
def test_flow_training_target_agrees_with_the_model_conversions(schedule):
    """A network that outputs exactly its flow-matching target gives back x0 and eps through solvers.Model."""
    from reference_models import train as tr

    den = tr.build_denoiser(tr.get_spec("toy2d-moons"), schedule, "flow", seed=0)
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(32, 2, generator=g, dtype=F64), torch.randn(32, 2, generator=g, dtype=F64)
    for t in (0.37, 1.0) if schedule == "flow" else (0.37,):
        tt = torch.full((32,), t, dtype=F64)
        c_out = den.coefficients(tt)[3][:, None]
        assert torch.isfinite(den.coefficients(tt)[4]).all()  # the noise level fed to the net is finite at t = 1
        model = Model(lambda x, t_, c_out=c_out: den.target(x0, eps, t_) * c_out, den.schedule, "flow")
        c = den.schedule.at(t)
        xt = c.alpha * x0 + c.sigma * eps
        torch.testing.assert_close(model.x0(xt, t), x0, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(model.eps(xt, t), eps, rtol=1e-9, atol=1e-9)
        if schedule == "flow":
            torch.testing.assert_close(den.target(x0, eps, tt) * c_out, eps - x0, rtol=1e-12, atol=1e-12)


def test_flow_training_draws_t_uniform_on_zero_one():
    from reference_models import train as tr

    den = tr.build_denoiser(tr.get_spec("toy2d-moons"), "flow", "flow", seed=0)
    t = tr.sample_times(den, 20000, torch.Generator().manual_seed(0))
    assert 0 <= float(t.min()) < 1e-3 and 1 - 1e-3 < float(t.max()) < 1 and abs(float(t.mean()) - 0.5) < 0.01


@pytest.mark.parametrize("name", ["toy2d-8gaussians", "digits"])
def test_bench_train_flow_trains_and_loads_back_as_flow(tmp_path, capsys, name):
    import reference_models as rm
    from bench.__main__ import main
    from reference_models import checkpoints
    from reference_models import train as tr
    from reference_models.cache import checkpoint_path

    assert main(["train", name, "--schedule", "flow", "--prediction", "flow", "--steps", "3",
                 "--cache-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert '"schedule": "flow"' in out and '"prediction": "flow"' in out and '"steps": 3' in out
    path = checkpoint_path(name, "flow", "flow", tmp_path)
    ref = rm.load(name, schedule="flow", prediction="flow", cache_dir=tmp_path, train=False)
    assert ref.model.prediction == "flow" and ref.schedule.kind == "flow" and ref.info["schedule"] == "flow"
    x_T = ref.schedule.prior_sample((4, *ref.shape), torch.Generator().manual_seed(0))
    assert torch.isfinite(sample(ref.model, x_T, "euler", nfe=3)).all()  # from t = 1
    spec = tr.get_spec(name)
    with pytest.raises(checkpoints.CheckpointError):  # a flow checkpoint is never taken for a VP one
        checkpoints.load_checkpoint(path, tr.expected_config(spec, "vp", "flow"))
    with pytest.raises(checkpoints.CheckpointError):
        checkpoints.load_checkpoint(path, tr.expected_config(spec, "flow", "eps"))
    with pytest.raises(FileNotFoundError):  # nor found under the VP name
        rm.load(name, schedule="vp", prediction="flow", cache_dir=tmp_path, train=False)


def test_registered_models_predict_the_velocity_on_flow_and_the_default_sweep_has_flow_models():
    from bench import model_specs
    from bench.sweep import Sweep
    from reference_models.registry import (
        DEFAULT_FLOW_MODELS,
        DEFAULT_MODELS,
        SCHEDULES,
        prediction_for,
    )

    assert "flow" in SCHEDULES and prediction_for("flow") == "flow" and prediction_for("vp", "x0") == "x0"
    assert set(DEFAULT_FLOW_MODELS) <= set(DEFAULT_MODELS) and "gmm2d" in DEFAULT_FLOW_MODELS
    planned = model_specs.plan(["gmm2d", "toy2d-moons"], None, {})
    assert [p.schedules for p in planned] == [["vp", "flow"], ["vp"]]
    assert [p.schedules for p in model_specs.plan(["gmm2d"], ["ve"], {})] == [["ve"]]
    cells = Sweep(["gmm2d", "toy2d-moons"], ["ddim"], [4], [0],
                  registered_schedules={p.name: p.schedules for p in planned}).cells()
    assert {(c.model, c.schedule, c.prediction) for c in cells} == {
        ("gmm2d", "vp", "eps"), ("gmm2d", "flow", "flow"), ("toy2d-moons", "vp", "eps")}


def test_bench_run_schedules_flow_writes_ok_rows(tmp_path):
    import pandas as pd

    from bench.__main__ import main

    out = tmp_path / "run"
    code = main(["run", "--models", "gmm2d", "--schedules", "flow", "--solvers", "ddim,euler,dpmpp_2m,heun",
                 "--nfe", "4", "--samples", "16", "--repeats", "1", "--out", str(out), "--quiet"])
    assert code == 0
    df = pd.read_csv(out / "results.csv")
    cells = df.drop_duplicates(["solver", "nfe"]).set_index("solver")
    assert set(df["schedule"]) == {"flow"} and set(df["prediction"]) == {"flow"}
    assert (cells.loc[["ddim", "euler", "dpmpp_2m"], "status"] == "ok").all()
    assert cells.loc["euler", "timesteps"] == "uniform" and cells.loc["dpmpp_2m", "timesteps"] == "logsnr"
    assert cells.loc["heun", "status"] == "skipped" and "t_start=1" in cells.loc["heun", "message"]
    ok = df[df["status"] == "ok"]
    assert ok["error_rmse"].notna().all() and (ok["error_rmse"] < 1.0).all() and ok["swd"].notna().all()


def test_baseline_and_check_measure_flow_for_the_solvers_that_start_at_one():
    from bench import check
    from bench.baseline_measure import measure

    starting = {n for n in list_solvers() if get_solver(n).starts_at_alpha_zero}
    current = measure(["gmm2d"], ["flow"], orders=False, progress=False)
    assert set(current["solver"]) == starting and set(current["schedule"]) == {"flow"}
    assert current["value"].notna().all() and (current["value"].abs() < 10).all()
    assert check._runs_on(get_solver("dpmpp_2m"), "flow") and not check._runs_on(get_solver("heun"), "flow")
    assert check._runs_on(get_solver("heun"), "vp")


def test_bench_run_trains_a_flow_model_on_first_use_and_samples_it_from_t_one(tmp_path, monkeypatch):
    import pandas as pd

    from bench.__main__ import main
    from reference_models import train as tr

    monkeypatch.setitem(tr.SPECS, "toy2d-8gaussians", dataclasses.replace(tr.SPECS["toy2d-8gaussians"], steps=3))
    out = tmp_path / "run"
    assert main(["run", "--models", "toy2d-8gaussians", "--schedules", "flow", "--solvers", "euler,dpmpp_2m,pc",
                 "--nfe", "4", "--samples", "16", "--repeats", "1", "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv").set_index("solver")
    assert set(df["prediction"]) == {"flow"} and set(df["schedule"]) == {"flow"}
    assert (df.loc[["euler", "dpmpp_2m"], "status"] == "ok").all() and df.loc[["euler", "dpmpp_2m"], "swd"].notna().all()
    assert df.loc["pc", "status"] == "skipped" and "t_start=1" in df.loc["pc", "message"]


def test_auto_reference_of_a_flow_network_on_cuda_is_rk45():
    import reference_models as rm
    from bench import references

    ref = rm.load("gmm2d", schedule="flow", prediction="flow")
    net = dataclasses.replace(ref, kind="trained")
    assert references.method("auto", net, "cuda") == ("rk45", references.NETWORK_TOL["rk45"])
    vp = dataclasses.replace(rm.load("gmm2d"), kind="trained")
    assert references.method("auto", vp, "cuda")[0] == "dpm_solver_adaptive"
    assert references.method("auto", ref, "cuda")[0] == "dop853"


def test_run_configuration_records_the_default_sweeps_flow_schedules():
    import argparse

    from bench import model_specs
    from bench.run import _schedules_of

    default = model_specs.plan(["gmm2d", "digits"], None, {})
    assert _schedules_of(argparse.Namespace(schedules=None), default) == {"gmm2d": ["vp", "flow"], "digits": ["vp"]}
    vp_only = model_specs.plan(["gmm2d"], ["vp"], {})
    assert _schedules_of(argparse.Namespace(schedules=None), vp_only) == ["vp"]
    assert _schedules_of(argparse.Namespace(schedules=["flow"]), vp_only) == ["flow"]


@pytest.mark.parametrize("name, options", [(n, {}) for n in STARTS_AT_ONE]
                         + [("dpmpp_3m", {"start": "singlestep"}), ("unipc", {"order": 3}),
                            ("unipc", {"order": 3, "start": "singlestep"}), ("unipc", {"variant": "bh1"})])
def test_finite_from_t_one_at_every_budget(flow_problem, name, options):
    """Every budget 1..60 from t = 1, to t_end and to a t_end near 0 (solvers.testing.check_finite)."""
    model, x_T, _ = flow_problem
    outcome = testing.check_finite(name, model, x_T[:16], range(1, 61), **options)
    assert outcome.status == "pass", outcome.detail
