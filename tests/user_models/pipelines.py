"""Tiny diffusers pipelines with random weights, saved as a user would have them (safetensors, model_index.json).

save_ddpm: DDPMPipeline (DDPMScheduler, any prediction type and beta schedule); save_ve: score_sde's
ScoreSdeVePipeline (a UNet with a Fourier time embedding, ScoreSdeVeScheduler). 3 x 8 x 8 samples; a
few milliseconds per evaluation on a CPU.
"""
from __future__ import annotations

import pathlib

import torch

SIZE, CHANNELS = 8, 3


def tiny_unet(time_embedding_type: str = "positional", seed: int = 0, out_channels: int = CHANNELS):
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=SIZE, in_channels=CHANNELS, out_channels=out_channels,
                           block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                           time_embedding_type=time_embedding_type)
    return unet.eval()


def save_ddpm(directory, prediction_type: str = "epsilon", beta_schedule: str = "linear", seed: int = 0,
              num_train_timesteps: int = 1000, out_channels: int = CHANNELS) -> pathlib.Path:
    """A DDPMPipeline directory (unet/, scheduler/, model_index.json); returns it."""
    from diffusers import DDPMPipeline, DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                          prediction_type=prediction_type)
    DDPMPipeline(unet=tiny_unet(seed=seed, out_channels=out_channels), scheduler=sched).save_pretrained(directory)
    return pathlib.Path(directory)


def save_ve(directory, seed: int = 0, sigma_min: float = 0.01, sigma_max: float = 50.0) -> pathlib.Path:
    """A ScoreSdeVePipeline directory (a Fourier-time UNet called with sigma, ScoreSdeVeScheduler); returns it."""
    from diffusers import ScoreSdeVePipeline, ScoreSdeVeScheduler

    sched = ScoreSdeVeScheduler(sigma_min=sigma_min, sigma_max=sigma_max)
    ScoreSdeVePipeline(unet=tiny_unet("fourier", seed), scheduler=sched).save_pretrained(directory)
    return pathlib.Path(directory)
