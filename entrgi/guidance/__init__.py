"""Guidance methods: none (Best-of-N), and reward-gradient guidance (soft, APS, EntRGi)."""

from entrgi.guidance.base import Guidance, GuidanceConfig, GuidanceContext, NoGuidance, Steered
from entrgi.guidance.reward_gradient import RewardGradientConfig, RewardGradientGuidance

__all__ = [
    "Guidance",
    "GuidanceConfig",
    "GuidanceContext",
    "NoGuidance",
    "RewardGradientConfig",
    "RewardGradientGuidance",
    "Steered",
]
