"""Reward models."""

from entrgi.rewards.reward_model import RewardModel, RewardModelConfig

__all__ = ["RewardModel", "RewardModelConfig"]
