"""Masked diffusion language models."""

from entrgi.models.block_cache import BlockCache, check_cache
from entrgi.models.diffusion_lm import CacheMode, DiffusionLM, DiffusionLMConfig

__all__ = ["BlockCache", "CacheMode", "DiffusionLM", "DiffusionLMConfig", "check_cache"]
