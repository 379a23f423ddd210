"""Masked diffusion language models."""

from entrgi.models.diffusion_lm import DiffusionLM, DiffusionLMConfig

__all__ = ["DiffusionLM", "DiffusionLMConfig"]
