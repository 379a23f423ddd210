"""Guidance methods: none (Best-of-N), reward-gradient guidance (soft, APS, EntRGi), Feynman–Kac steering (fk)."""

from entrgi.guidance.base import (
    Committed,
    Guidance,
    GuidanceConfig,
    GuidanceContext,
    NoGuidance,
    Resampling,
    Steered,
)
from entrgi.guidance.fk import FKConfig, FKGuidance
from entrgi.guidance.reward_gradient import RewardGradientConfig, RewardGradientGuidance

__all__ = [
    "Committed",
    "FKConfig",
    "FKGuidance",
    "Guidance",
    "GuidanceConfig",
    "GuidanceContext",
    "NoGuidance",
    "Resampling",
    "RewardGradientConfig",
    "RewardGradientGuidance",
    "Steered",
]
