"""Guidance methods: none (Best-of-N), reward-gradient guidance (soft, APS, EntRGi), Feynman–Kac steering (fk),
and the two composed: a reward-gradient proposal inside FK SMC (entrgi-smc, soft-smc, aps-smc)."""

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
from entrgi.guidance.smc import SMCConfig, SMCGuidance

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
    "SMCConfig",
    "SMCGuidance",
    "Steered",
]
