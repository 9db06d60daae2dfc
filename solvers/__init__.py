"""samplerbench solvers: noise schedules, one model interface, and every sampler behind `sample`."""
from .brownian import BrownianPaths, SeededNoise, brownian_paths, seeded_noise
from .grids import GRIDS, make_grid
from .guidance import GUIDANCE_KINDS, GuidedModel, cfg, classifier_guidance
from .model import PREDICTIONS, Model, ModelOutputError
from .noise import per_sample_generators, randn, randn_like
from .registry import SampleInfo, SolverSpec, get_solver, list_solvers, sample, solver
from .schedules import FlowSchedule, Schedule, SubVPSchedule, VESchedule, VPSchedule
from .thresholding import THRESHOLDINGS, threshold_x0

from . import dpm, dpmpp, unipc, adams, ode, sde, stochastic  # noqa: E402,F401,I001  (register the solvers, in listing order)
from .ode import reference_solution  # noqa: E402

__all__ = [
    "BrownianPaths", "GRIDS", "GUIDANCE_KINDS", "GuidedModel", "PREDICTIONS", "FlowSchedule", "Model", "ModelOutputError", "SampleInfo", "Schedule", "SeededNoise", "SolverSpec",
    "SubVPSchedule", "VESchedule", "VPSchedule", "brownian_paths", "get_solver", "list_solvers", "make_grid", "per_sample_generators",
    "THRESHOLDINGS", "cfg", "classifier_guidance",
    "randn", "randn_like", "reference_solution", "sample", "seeded_noise", "solver", "threshold_x0",
]
