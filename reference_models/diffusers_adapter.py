"""Pretrained diffusers UNets as solvers Models, on the continuous-time form of their scheduler.

DDPM-style schedulers (DDPM, DDIM, PNDM, DPM-Solver, Euler...: num_train_timesteps with beta_schedule
or trained_betas) are wrapped as DPM-Solver wraps a discrete-time model (Lu et al. 2022, Appendix;
its `model_wrapper` and `NoiseScheduleVP('discrete')`): the schedule is VPSchedule.discrete(betas),
and continuous time t in [1/N, 1] reaches the network as the step index t_input = (t - 1/N) N
(0 .. N-1); the prediction kind comes from `prediction_type`. Samples live in [-1, 1].

ScoreSdeVeScheduler (score_sde's VE pipelines): sigma(t) = sigma_min (sigma_max / sigma_min)^t, the
scheduler's own sigmas at its times t; the pipeline calls the UNet with sigma (a Fourier embedding
of log sigma; the UNet divides its output by sigma) and uses the output as the score, so here
fn(x, t) = unet(x, sigma(t)), prediction "score", VESchedule(sigma_min, sigma_max). The pipeline
clamps its samples to [0, 1].

Weights are read by diffusers without unpickling: .safetensors, or a .bin through
torch.load(weights_only=True) (diffusers' load_state_dict, torch >= 1.13).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re

import torch

from solvers import Model, VESchedule, VPSchedule

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VE_SCHEDULER = "ScoreSdeVeScheduler"
SUPPORTED_SCHEDULERS = ("DDPM-style discrete VP schedulers (DDPMScheduler, DDIMScheduler, PNDMScheduler, "
                        "DPMSolverMultistepScheduler, EulerDiscreteScheduler, ...: num_train_timesteps with "
                        f"beta_schedule or trained_betas) and {VE_SCHEDULER}")


LAYOUTS = ("a pipeline directory (unet/, scheduler/), a UNet directory with config.json and scheduler_config.json, "
           "or a hub id (needs the network, or the hub cache)")


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
    text = str(path_or_repo_id)
    if p.is_absolute() or text.startswith((".", "~")) or p.exists() or text.count("/") > 1 or "\\" in text:
        raise FileNotFoundError(f"no diffusers directory {p}")  # not a hub id (NAME or OWNER/NAME) either
    return "unet", "scheduler"  # a hub repo id such as google/ddpm-cifar10-32 is a pipeline


def discrete_betas(scheduler_config: dict) -> torch.Tensor:
    """The N betas a DDPM-style scheduler config describes (beta_schedule, trained_betas...), float64."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    sched = DDPMScheduler(**{k: scheduler_config[k] for k in keys if scheduler_config.get(k) is not None})
    return sched.betas.to(torch.float64)


def schedule_of(config: dict) -> tuple[VPSchedule | VESchedule, str, tuple[float, float]]:
    """(schedule, prediction kind, sample range) of a scheduler config; ValueError naming what is supported."""
    cls = config.get("_class_name", "?")
    if cls == VE_SCHEDULER:
        return VESchedule(config.get("sigma_min", 0.01), config.get("sigma_max", 1348.0)), "score", (0.0, 1.0)
    if "num_train_timesteps" not in config or not ("beta_schedule" in config or config.get("trained_betas")):
        raise ValueError(f"unsupported scheduler {cls}; supported: {SUPPORTED_SCHEDULERS}")
    if not config.get("trained_betas") and config["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(f"unsupported beta_schedule {config['beta_schedule']!r} of {cls}; valid: "
                         f"{', '.join(BETA_SCHEDULES)} (or trained_betas)")
    if config.get("rescale_betas_zero_snr"):
        raise ValueError(f"{cls} has rescale_betas_zero_snr=true (alpha reaches 0 at t=1); supported: the "
                         "schedules with positive terminal SNR")
    kind = config.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {kind!r}; valid: {', '.join(PREDICTION_TYPES)}")
    return VPSchedule.discrete(discrete_betas(config)), PREDICTION_TYPES[kind], (-1.0, 1.0)


def _load(path_or_repo_id, device, dtype, **from_pretrained_kwargs):
    """(Model, shape, sample range, fingerprint) of a diffusers UNet2DModel and its scheduler config."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet_sub, sched_sub = _layout(path_or_repo_id)
    sched_config = dict(DDPMScheduler.load_config(str(path_or_repo_id), subfolder=sched_sub))
    schedule, prediction, sample_range = schedule_of(sched_config)
    local = pathlib.Path(str(path_or_repo_id)).expanduser()
    if local.is_dir():
        unet_dir = local / unet_sub if unet_sub else local
        if not (unet_dir / "config.json").is_file():
            raise FileNotFoundError(f"{local} has no UNet config (unet/config.json or config.json)")
        unet_class = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "UNet2DModel")
        if unet_class != "UNet2DModel":
            raise ValueError(f"unsupported UNet class {unet_class}; supported: UNet2DModel (unconditional)")
        if any(unet_dir.glob("*.safetensors")):
            from_pretrained_kwargs.setdefault("use_safetensors", True)
    from_pretrained_kwargs.setdefault("low_cpu_mem_usage", False)  # loads without `accelerate`, and says nothing
    unet = UNet2DModel.from_pretrained(str(path_or_repo_id), subfolder=unet_sub, **from_pretrained_kwargs)
    if unet.config.get("num_class_embeds") or unet.config.get("class_embed_type"):
        raise ValueError("class-conditional UNets are not supported; supported: unconditional UNet2DModel")
    configs = {"unet": _meaningful(unet.config), "scheduler": _meaningful(sched_config)}
    h = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode())
    for key, t in unet.state_dict().items():  # the weights as loaded, whatever their file
        h.update(f"{key} {t.dtype} {list(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    unet = unet.to(device=device, dtype=dtype) if unet.dtype != dtype else unet.to(device=device)
    unet = unet.eval().requires_grad_(False)
    in_ch, out_ch = unet.config.in_channels, unet.config.out_channels
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(f"UNet has {out_ch} output channels for {in_ch} input channels; expected {in_ch} "
                         f"(or {2 * in_ch} with learned variances)")
    size = unet.config.sample_size
    shape = (in_ch, *((size, size) if isinstance(size, int) else size))

    if prediction == "score":
        def time_input(t: torch.Tensor) -> torch.Tensor:
            return schedule.sigma(t.to(torch.float64))
    else:
        n = schedule.betas.numel()

        def time_input(t: torch.Tensor) -> torch.Tensor:
            return (t.to(torch.float64) - 1.0 / n) * n

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = unet(x.to(device=device, dtype=dtype), time_input(t).to(device=device, dtype=dtype)).sample
        return out[:, :in_ch].to(device=x.device, dtype=x.dtype)  # learned-variance models: the mean part

    model = Model(fn, schedule, prediction=prediction)
    model.source = str(path_or_repo_id)
    return model, shape, sample_range, h.hexdigest()


def _meaningful(config) -> dict:
    """A config without diffusers' bookkeeping (_name_or_path, _diffusers_version, ...): what defines the model."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_") or k == "_class_name"}


def from_diffusers(path_or_repo_id, device="cpu", dtype=torch.float32, **from_pretrained_kwargs) -> Model:
    """A solvers.Model from a diffusers UNet2DModel checkpoint and its scheduler config (local dir or hub id)."""
    return _load(path_or_repo_id, device, dtype, **from_pretrained_kwargs)[0]


def diffusers_record(path_or_repo_id, device="cpu", dtype=torch.float32, name: str | None = None):
    """The ReferenceModel (kind "user", metric "image", no real data) of a diffusers UNet: named after the
    directory or repo (or `name`); fingerprint: sha256 of the UNet and scheduler configs and the loaded weights.
    Every failure is a one-line ModelSpecError."""
    from .registry import ReferenceModel
    from .user import ModelSpecError, _one_line, check_name

    spec = f"diffusers:{path_or_repo_id}"
    try:
        model, shape, sample_range, fingerprint = _load(path_or_repo_id, device, dtype)
    except ModelSpecError:
        raise
    except ValueError as e:  # names what is supported already
        raise ModelSpecError(f"model spec {spec!r}: {_one_line(e)}") from None
    except (OSError, ImportError, KeyError, RuntimeError) as e:
        raise ModelSpecError(f"model spec {spec!r}: {_one_line(e)}; valid: {LAYOUTS}") from None
    stem = pathlib.Path(str(path_or_repo_id).rstrip("/\\")).name
    name = check_name(name) if name is not None else re.sub(r"[^A-Za-z0-9._+-]", "-", stem).lstrip("._+-") or "diffusers"
    return ReferenceModel(name, model, shape, "user", "image", sample_range=sample_range, fingerprint=fingerprint,
                          source=spec, info={"diffusers": str(path_or_repo_id)})
