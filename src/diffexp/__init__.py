"""diffexp: config-driven diffusion-model experiments (schedules, objectives, samplers, FID/KID)."""

__version__ = "0.1.0"
