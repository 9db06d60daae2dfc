"""`bench run --guidance`: a guided axis of rows with exact references, per-sample labels, network-call counts, the
report's guidance section, solver variants (thresholding), and clear refusals."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from bench.__main__ import main
from bench.guidance import sample_labels
from bench.report import make_report
from bench.solver_variants import variant
from reference_models import load
from solvers import sample

ARGS = ["--models", "gmm2d", "--nfe", "4,8,16", "--samples", "48", "--repeats", "1", "--quiet"]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("guided") / "run"
    torch.set_num_threads(1)
    code = main(["run", *ARGS, "--guidance", "1,4", "--solvers", "ddim,dpmpp_2m,dpmpp_2m:thresholding=static:threshold_max=3.0",
                 "--out", str(out)])
    assert code == 0
    return out, pd.read_parquet(out / "results.parquet")


def test_every_scale_gets_its_rows_with_guidance_recorded(guided_run):
    _, df = guided_run
    assert sorted(df["guidance"].unique()) == [1.0, 4.0]
    assert set(df["guidance_kind"]) == {"cfg"}
    assert len(df) == 2 * 3 * 3 and (df["status"] == "ok").all()
    # classifier-free guidance with a null label: one batched network call per guided evaluation
    assert (df["network_calls"] == df["nfe_used"]).all() and (df["nfe_used"] == df["nfe"]).all()
    assert df["error_rmse"].map(math.isfinite).all() and df["nll_gap"].map(math.isfinite).all()
    assert df["label_error"].between(0, 1).all()


def test_errors_fall_with_nfe_against_each_scales_own_reference(guided_run):
    _, df = guided_run
    variant_rows = df[df["solver"].str.contains(":")]
    assert variant_rows["options"].str.contains('"thresholding": "static"').all()
    for (w, solver), g in df.groupby(["guidance", "solver"]):
        err = g.sort_values("nfe")["error_rmse"].to_numpy()
        assert err[-1] < err[0], (w, solver, err)


def test_strong_guidance_separates_the_classes_and_overshoots_their_modes(guided_run):
    """w = 4 pushes each sample away from the other classes: no more label errors than at w = 1, but past its own
    mode (the 8 modes sit on a circle), so the samples are less likely under p(x | c) than at w = 1 (NLL gap up)."""
    _, df = guided_run
    fine = df[(df["nfe"] == 16) & (df["solver"] == "ddim")].set_index("guidance")
    assert fine.loc[4.0, "label_error"] <= fine.loc[1.0, "label_error"]
    assert fine.loc[4.0, "nll_gap_lo"] > fine.loc[1.0, "nll_gap_hi"]


def test_the_report_has_a_guidance_section(guided_run):
    out, _ = guided_run
    md = (make_report(out, out / "rep", formats="md")).read_text()
    assert "Guidance: solvers across guidance scales" in md
    assert "measured order at each guidance scale" in md and "w=4" in md
    assert (out / "rep" / "guidance-gmm2d-cfg.png").exists()


def test_labels_come_from_the_seed_and_index_not_the_batch():
    a = sample_labels(0, range(10), 8)
    assert torch.equal(a[3:7], sample_labels(0, range(3, 7), 8))
    assert not torch.equal(a, sample_labels(1, range(10), 8))
    assert int(a.min()) >= 0 and int(a.max()) < 8


def test_guided_w1_reference_is_the_conditional_models_solution():
    """At w = 1 the CFG-guided exact model is the conditional mixture: same samples as a mixture of the label's
    components only (the guided model's reference is the conditional PF-ODE's)."""
    ref = load("gmm2d").guided(1.0, "cfg")
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref.model.labels = torch.tensor([0, 3, 3, 7])
    got = sample(ref.model, x_T, "dpmpp_2m", nfe=10)
    for i, c in enumerate([0, 3, 3, 7]):
        mix = ref.mixture
        single = type(mix)(mix.means[c:c + 1], torch.full((1,), 0.25**2))
        want = sample(single.model(ref.schedule, ref.model.prediction), x_T[i:i + 1], "dpmpp_2m", nfe=10)
        assert torch.allclose(got[i:i + 1], want, atol=1e-10)


def test_classifier_guidance_counts_two_network_calls(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--guidance", "2", "--guidance-kind", "classifier", "--solvers", "ddim",
                 "--nfe", "4", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert (df["status"] == "ok").all() and (df["network_calls"] == 2 * df["nfe_used"]).all()
    assert set(df["guidance_kind"]) == {"classifier"}


def test_unguided_rows_have_no_guidance(tmp_path):
    out = tmp_path / "run"
    assert main(["run", *ARGS, "--solvers", "ddim", "--nfe", "4", "--out", str(out)]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert df["guidance"].isna().all() and df["guidance_kind"].isna().all()
    assert (df["network_calls"] == df["nfe_used"]).all()


@pytest.mark.parametrize("argv, needle", [
    (["--models", "toy2d-8gaussians", "--guidance", "2"], "has no classes; valid: gmm2d, gmm-digits, digits-cond"),
    (["--models", "gmm2d", "--guidance", "-1"], "finite numbers >= 0"),
    (["--models", "gmm2d", "--guidance", "2", "--guidance-kind", "both"], "invalid choice"),
    (["--models", "gmm2d", "--solvers", "dpmpp_2m:thresholding=sometimes"], "thresholding"),
    (["--models", "gmm2d", "--solvers", "dpmpp_2m:nonsense=1"], "unknown option"),
    (["--models", "gmm2d", "--solvers", "dpmpp_2m:thresholding"], "OPTION=VALUE"),
])
def test_bad_guidance_arguments_exit_2_with_the_valid_choices(argv, needle, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        code = main(["run", *argv, "--samples", "8", "--out", str(out)])
        raise SystemExit(code)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_a_solver_variant_is_validated_by_the_registry():
    spec, options = variant("dpmpp_2m:thresholding=dynamic:threshold_ratio=0.9")
    assert spec.name == "dpmpp_2m" and options == {"thresholding": "dynamic", "threshold_ratio": 0.9}
    with pytest.raises(ValueError, match="unknown solver"):
        variant("nope:thresholding=dynamic")


def test_the_guidable_models_are_the_class_conditional_ones():
    from reference_models import list_models
    from reference_models.guided import CONDITIONAL_MODELS

    assert set(CONDITIONAL_MODELS) <= set(list_models())
    assert load("gmm2d").classes == 8 and load("gmm-digits").classes == 10
    assert load("gmm2d", "flow").classes == 8


def test_a_failure_is_an_error_rising_between_budgets_beyond_the_intervals():
    from bench.guidance_report import _failure

    def cells(errs, half):
        return pd.DataFrame({"status": "ok", "nfe": [5, 10, 20], "error_rmse": errs,
                             "error_rmse_lo": [e * (1 - half) for e in errs],
                             "error_rmse_hi": [e * (1 + half) for e in errs]})
    why, at = _failure(cells([8.3, 66.0, 0.03], 0.1))
    assert at == 10 and "8.3 at NFE 5 -> 66 at NFE 10" in why
    assert _failure(cells([1.0, 1.05, 0.5], 0.1)) == ("", None)  # within the intervals: noise, not a failure
    assert _failure(cells([1.0, 0.5, 0.2], 0.1)) == ("", None)
    failed = pd.DataFrame({"status": ["ok", "failed"], "nfe": [5, 10], "message": ["", "FloatingPointError: NaN"]})
    assert _failure(failed)[1] == 10


def test_label_error_has_a_wilson_interval_also_at_zero():
    from bench.metrics import Evaluator, Observation

    ev = Evaluator(None, None, 0, "2d")
    out = ev.measure(Observation(points=None, label_ok=np.ones(300)), 0)
    assert out["label_error"] == 0.0 and out["label_error_lo"] < 1e-12 and 0.005 < out["label_error_hi"] < 0.02
    out = ev.measure(Observation(points=None, label_ok=np.r_[np.ones(270), np.zeros(30)]), 0)
    assert out["label_error_lo"] < 0.1 < out["label_error_hi"]
