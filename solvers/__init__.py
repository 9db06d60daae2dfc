"""samplerbench solvers: noise schedules, one model interface, and every sampler behind `sample`."""
from .grids import GRIDS, make_grid
from .model import PREDICTIONS, Model, ModelOutputError
from .noise import per_sample_generators, randn, randn_like
from .registry import SampleInfo, SolverSpec, get_solver, list_solvers, sample, solver
from .schedules import FlowSchedule, Schedule, SubVPSchedule, VESchedule, VPSchedule

from . import dpm, dpmpp, unipc, adams, ode, sde, stochastic  # noqa: E402,F401,I001  (register the solvers, in listing order)
from .ode import reference_solution  # noqa: E402

__all__ = [
    "GRIDS", "PREDICTIONS", "FlowSchedule", "Model", "ModelOutputError", "SampleInfo", "Schedule", "SolverSpec",
    "SubVPSchedule", "VESchedule", "VPSchedule", "get_solver", "list_solvers", "make_grid", "per_sample_generators",
    "randn", "randn_like", "reference_solution", "sample", "solver",
]
