"""Guidance methods: none (Best-of-N), and reward-gradient guidance (soft, APS, EntRGi)."""

from entrgi.guidance.base import Guidance, GuidanceConfig, GuidanceContext, NoGuidance, Steered

__all__ = ["Guidance", "GuidanceConfig", "GuidanceContext", "NoGuidance", "Steered"]
