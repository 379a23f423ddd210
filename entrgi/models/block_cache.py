"""Fast-dLLM's approximate key/value cache for block-wise decoding (`model.cache`).

Wu et al. 2025, *Fast-dLLM: Training-free Acceleration of Diffusion LLM by Enabling KV Cache and
Parallel Decoding*, arXiv 2505.22618, §3.1. Under a semi-autoregressive schedule
(`schedule=low_confidence schedule.block_length=...`) a step commits positions of the current
block only. At a block's first step the whole canvas runs through the dLLM (those logits are
exact) and the keys/values of the columns that the block's other steps will not recompute are
kept, per layer:

* "prefix": the prompt and the finished blocks; the other steps run the block and everything
  after it, attending to the kept prefix;
* "dual": also the columns after the block; the other steps run the block alone, and the
  positions after it keep the logits of the block's first step.

Approximate by construction: attention is bidirectional, so the kept keys/values would change as
the block's tokens are committed (from the second layer on: a first layer's keys/values depend on
its own column's token only, so a one-layer dLLM is cached exactly). With the logit shift (Dream:
position j reads the output at j - 1) the column just before the block is recomputed at every step,
so the block's first position reads a fresh output rather than a cached one.
"""

from __future__ import annotations

import torch

from entrgi.models.diffusion_lm import CacheMode, DiffusionLM, KeysValues
from entrgi.schedule import UnmaskSchedule
from entrgi.validation import ConfigError


def check_cache(mode: CacheMode | str, schedule: UnmaskSchedule, length: int) -> None:
    """Raise ConfigError when `model.cache` is on and `schedule` has no blocks (`UnmaskSchedule.block_span`)."""
    if mode != CacheMode.none and schedule.block_span(length, 0) is None:
        raise ConfigError(f"model.cache={mode} needs a block-wise schedule (schedule=low_confidence); "
                          f"{type(schedule).__name__} has none")


class BlockCache:
    """The cache of one batch's denoising run; the sampler reorders its rows with the canvas's (`reorder`)."""

    def __init__(self, model: DiffusionLM, mode: CacheMode | str):
        self.model, self.mode = model, CacheMode(mode)
        self.block: tuple[int, int] | None = None  # canvas columns of the block the state was built at
        self.past: tuple[KeysValues, torch.Tensor] | None = None  # kept keys/values and their key mask [N, P]
        self.logits: torch.Tensor | None = None  # [N, L, V] the response logits of the block's first step

    def logits_and_width(
        self, canvas: torch.Tensor, attention: torch.Tensor, start: int, block: tuple[int, int] | None
    ) -> tuple[torch.Tensor, int]:
        """Float32 logits [N, S - start, V] of the response, as `DiffusionLM.logits`, and the number of canvas
        columns the forward ran over (`entrgi.compute`).

        `block`: the response columns (b0, b1) the step may commit (`UnmaskSchedule.block_span`); None, or
        `model.cache=none`: the full forward. A block other than the last one's rebuilds the cache.
        """
        width = canvas.shape[1]
        if self.mode == CacheMode.none or block is None:
            return self.model.logits(canvas, attention, start), width
        b0, b1 = start + block[0], start + block[1]
        q0 = max(b0 - int(self.model.logit_shift), 0)
        q1 = b1 if self.mode == CacheMode.dual else width
        if (b0, b1) != self.block:
            logits, keys_values = self.model.window_logits(canvas, attention, (0, width), (start, width))
            kept = [(torch.cat([k[:, :, :q0], k[:, :, q1:]], dim=2), torch.cat([v[:, :, :q0], v[:, :, q1:]], dim=2))
                    for k, v in keys_values]
            self.block, self.logits = (b0, b1), logits
            self.past = (kept, torch.cat([attention[:, :q0], attention[:, q1:]], dim=1))
            return logits, width
        fresh, _ = self.model.window_logits(canvas, attention, (q0, q1), (b0, q1), self.past)
        logits = torch.cat([self.logits[:, : b0 - start], fresh, self.logits[:, q1 - start :]], dim=1)
        return logits, q1 - q0

    def reorder(self, rows: torch.Tensor) -> None:
        """Gather the cached rows [N] as the canvas's were (a particle method's resampling)."""
        if self.past is None:
            return
        kept, key_mask = self.past
        self.past = ([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in kept],
                     key_mask.index_select(0, rows))
        self.logits = self.logits.index_select(0, rows)
