"""Pretrained diffusers UNets as solvers Models on the continuous-time wrapper of their discrete DDPM schedule.

As DPM-Solver wraps a discrete-time model (Lu et al. 2022, Appendix; its `model_wrapper` with
`model_type` and `NoiseScheduleVP('discrete')`): the schedule is VPSchedule.discrete(betas), and
continuous time t in [1/N, 1] reaches the network as the step index t_input = (t - 1/N) N
(0 .. N-1). The prediction kind comes from the scheduler's `prediction_type`. Weights are read
by diffusers: safetensors, or .bin through torch.load(weights_only=True).
"""
from __future__ import annotations

import pathlib

import torch

from solvers import Model, VPSchedule

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _layout(path_or_repo_id) -> tuple[str | None, str | None]:
    """(unet subfolder, scheduler subfolder): a pipeline has unet/ and scheduler/, a bare model has neither."""
    p = pathlib.Path(str(path_or_repo_id)).expanduser()
    if p.is_dir():
        unet = "unet" if (p / "unet" / "config.json").is_file() else None
        sched = "scheduler" if (p / "scheduler" / "scheduler_config.json").is_file() else None
        if sched is None and not (p / "scheduler_config.json").is_file():
            raise FileNotFoundError(f"{p} has no scheduler config (scheduler/scheduler_config.json or "
                                    "scheduler_config.json); the adapter needs the betas and the prediction type")
        return unet, sched
    return "unet", "scheduler"  # a hub repo id such as google/ddpm-cifar10-32 is a pipeline


def discrete_betas(scheduler_config: dict) -> torch.Tensor:
    """The N betas a DDPM-style scheduler config describes (beta_schedule, trained_betas...), float64."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    sched = DDPMScheduler(**{k: scheduler_config[k] for k in keys if scheduler_config.get(k) is not None})
    return sched.betas.to(torch.float64)


def from_diffusers(path_or_repo_id, device="cpu", dtype=torch.float32, **from_pretrained_kwargs) -> Model:
    """A solvers.Model from a diffusers UNet2DModel checkpoint and its scheduler config (local dir or hub id)."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet_sub, sched_sub = _layout(path_or_repo_id)
    config = DDPMScheduler.load_config(str(path_or_repo_id), subfolder=sched_sub)
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {kind!r}; valid: {', '.join(PREDICTION_TYPES)}")
    schedule = VPSchedule.discrete(discrete_betas(config))
    unet = UNet2DModel.from_pretrained(str(path_or_repo_id), subfolder=unet_sub, **from_pretrained_kwargs)
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    n = schedule.betas.numel()
    in_ch, out_ch = unet.config.in_channels, unet.config.out_channels
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"UNet has {out_ch} output channels for {in_ch} input channels; expected {in_ch} "
                         f"(or {2 * in_ch} with learned variances)")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_input = (t.to(torch.float64) - 1.0 / n) * n
        with torch.inference_mode():
            out = unet(x.to(device=device, dtype=dtype), t_input.to(device=device, dtype=dtype)).sample
        return out[:, :in_ch].to(device=x.device, dtype=x.dtype)  # learned-variance models: the mean part

    model = Model(fn, schedule, prediction=PREDICTION_TYPES[kind])
    model.source = str(path_or_repo_id)
    return model
