"""Which of our solvers runs the same algorithm as another library's contender: the one mapping, as data.

The plugin that registers the contenders (bench.contenders) and the report's "implementations compared" section
both read it; it imports nothing, so a report renders a run's rows without diffusers or the plugin.
"""
from __future__ import annotations

# contender name -> our solver of the same algorithm (pairs are compared where both are in a run)
COUNTERPARTS = {
    "diffusers.ddim": "ddim",  # DDIM, eta = 0
    "diffusers.euler": "ddim",  # Euler in x/alpha and sigma/alpha on a VP model is DDIM
    "diffusers.heun": "heun",  # EDM Heun (Algorithm 1)
    "diffusers.dpm_solver_2": "dpm_solver_2",  # singlestep DPM-Solver-2, noise prediction
    "diffusers.dpm_solver_3": "dpm_solver_3",  # singlestep DPM-Solver-3, noise prediction
    "diffusers.dpmpp_2s": "dpmpp_2s",  # singlestep DPM-Solver++(2S), data prediction
    "diffusers.dpmpp_2m": "dpmpp_2m",  # multistep DPM-Solver++(2M)
    "diffusers.dpmpp_3m": "dpmpp_3m",  # DPM-Solver++(3M); diffusers halves its x0'' term (ours: curvature="half")
    "diffusers.unipc": "unipc",  # UniPC (bh2) with the UniC corrector
    "diffusers.deis": "deis",  # DEIS log-rho, order 2 (ours: deis variant="logrho", order=2; default tAB, order 3)
    "diffusers.euler_ancestral": "euler_ancestral",  # ancestral sampling = DDIM eta = 1
}


def counterpart(name: str) -> str | None:
    """Our solver of the same algorithm as contender `name`, or None when it has none."""
    return COUNTERPARTS.get(name)
