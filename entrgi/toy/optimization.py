"""The optimiser both toy trainings use: AdamW, linear warm-up, cosine decay to 5 % of the peak rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Optimization:
    """How long and how fast a toy network trains."""

    steps: int = 3000
    batch_size: int = 64
    # 3e-3 learns the grammar as fast but delays by thousands of steps the moment the networks
    # learn to read attributes off the prompt (measured on this world).
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.01
    clip: float = 1.0


class Optimizer:
    """AdamW on a network's parameters with the warm-up/cosine schedule, one `step(loss)` per batch."""

    def __init__(self, network: torch.nn.Module, settings: Optimization):
        self.parameters = [p for p in network.parameters() if p.requires_grad]
        self.settings = settings
        self.adam = torch.optim.AdamW(self.parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                                      betas=(0.9, 0.98))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.adam, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.settings.warmup:
            return (step + 1) / self.settings.warmup
        progress = (step - self.settings.warmup) / max(1, self.settings.steps - self.settings.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def step(self, loss: torch.Tensor) -> None:
        self.adam.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.settings.clip)
        self.adam.step()
        self.schedule.step()
