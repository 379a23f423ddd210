"""Rewards: the reward model, the autoregressive-likelihood reward (`entrgi.rewards.ar_likelihood`), and text
scorers for Best-of-N and fk (`entrgi.rewards.text`)."""

from entrgi.rewards.ar_likelihood import ARLikelihood, ARLikelihoodConfig, ResponseTargets
from entrgi.rewards.function import FunctionReward, FunctionRewardConfig
from entrgi.rewards.length import LengthPenalty, LengthPenaltyConfig
from entrgi.rewards.patterns import RegexReward, RegexRewardConfig
from entrgi.rewards.reward_model import RewardModel, RewardModelConfig
from entrgi.rewards.text import DecodedText, TextReward, TextScorer, TextScorerConfig
from entrgi.rewards.toy_oracle import ToyOracleReward, ToyOracleRewardConfig
from entrgi.rewards.weighted_sum import WeightedSum, WeightedSumConfig

__all__ = [
    "ARLikelihood",
    "ARLikelihoodConfig",
    "DecodedText",
    "FunctionReward",
    "FunctionRewardConfig",
    "LengthPenalty",
    "LengthPenaltyConfig",
    "RegexReward",
    "RegexRewardConfig",
    "ResponseTargets",
    "RewardModel",
    "RewardModelConfig",
    "TextReward",
    "TextScorer",
    "TextScorerConfig",
    "ToyOracleReward",
    "ToyOracleRewardConfig",
    "WeightedSum",
    "WeightedSumConfig",
]
